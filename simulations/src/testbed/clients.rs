//! Clients in the test process: Pusher WebSocket subscribers that record every event they
//! receive (and reconnect elsewhere when asked to), presence members, and a publisher that
//! sends a numbered event every few milliseconds through the signed HTTP API and records
//! every answer.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use relaymesh_proto::signing;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::load::client::{self, Ws};

use super::cluster::{APP, KEY, SECRET};

const WAIT: Duration = Duration::from_secs(5);

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Node name → `IP:port` of the nodes a client may (re)connect to.
pub type Nodes = Arc<Mutex<Vec<(String, String)>>>;

#[derive(Debug, Clone)]
pub enum Seen {
    /// A published event (`tick`) with its sequence number.
    Tick(u64, Instant),
    Added(String, Instant),
    Removed(String, Instant),
    Other(String, Instant),
}

/// One connection of a client, from its subscription_succeeded to its end.
#[derive(Debug, Clone)]
pub struct Session {
    pub node: String,
    pub socket_id: String,
    pub subscribed_at: Instant,
    /// Presence: the roster's user ids in subscription_succeeded.
    pub roster: Vec<String>,
    pub seen: Vec<Seen>,
    /// The close code (None: no close frame, the connection just ended) and when.
    pub closed: Option<(Option<u16>, Instant)>,
}

impl Session {
    /// A session that never was (closed from the start), for a client without any.
    fn none(channel: &str) -> Session {
        let now = Instant::now();
        Session {
            node: format!("(none: {channel})"),
            socket_id: String::new(),
            subscribed_at: now,
            roster: Vec::new(),
            seen: Vec::new(),
            closed: Some((None, now)),
        }
    }

    pub fn ticks(&self) -> impl Iterator<Item = u64> + '_ {
        self.seen.iter().filter_map(|s| match s {
            Seen::Tick(seq, _) => Some(*seq),
            _ => None,
        })
    }

    pub fn member_events(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter_map(|s| match s {
                Seen::Added(u, _) => Some(format!("+{u}")),
                Seen::Removed(u, _) => Some(format!("-{u}")),
                _ => None,
            })
            .collect()
    }

    /// Presence: the members this connection was told about (roster, then each event
    /// applied), and the events that did not fit (an add of a present member, a remove of
    /// an absent one).
    pub fn members(&self) -> (BTreeSet<String>, Vec<String>) {
        let mut members: BTreeSet<String> = self.roster.iter().cloned().collect();
        let mut spurious = Vec::new();
        for s in &self.seen {
            match s {
                Seen::Added(u, _) if !members.insert(u.clone()) => {
                    spurious.push(format!("member_added {u} who was already a member"))
                }
                Seen::Removed(u, _) if !members.remove(u) => {
                    spurious.push(format!("member_removed {u} who was not a member"))
                }
                _ => {}
            }
        }
        (members, spurious)
    }
}

/// A Pusher client subscribed to one channel.
pub struct Client {
    pub label: String,
    pub channel: String,
    pub sessions: Arc<Mutex<Vec<Session>>>,
    task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Open {
    ws: Ws,
    session: Session,
}

/// Connects to `addr`, subscribes (as `user` on a presence channel), and returns the open
/// socket with its session.
async fn open(node: &str, addr: &str, channel: &str, user: Option<&str>) -> Result<Open, String> {
    let app = client::App {
        id: APP.into(),
        key: KEY.into(),
        secret: SECRET.into(),
    };
    let endpoint = client::Endpoint::new(node, &format!("ws://{addr}"), KEY)
        .map_err(|e| format!("{node} ({addr}): {e}"))?;
    let mut connection = client::connect(&endpoint, None, WAIT)
        .await
        .map_err(|e| format!("connecting to {node} ({addr}): {e}"))?;
    let channel_data =
        user.map(|user| json!({"user_id": user, "user_info": {"name": user}}).to_string());
    let data = connection
        .subscribe(&app, channel, channel_data.as_deref(), WAIT)
        .await
        .map_err(|e| format!("subscribing to {channel} on {node}: {e}"))?;
    let subscribed_at = Instant::now();
    let mut roster: Vec<String> = data["presence"]["ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    roster.sort();
    Ok(Open {
        ws: connection.ws,
        session: Session {
            node: node.to_owned(),
            socket_id: connection.socket_id,
            subscribed_at,
            roster,
            seen: Vec::new(),
            closed: None,
        },
    })
}

fn seen(text: &str) -> Seen {
    let now = Instant::now();
    let value: Value = serde_json::from_str(text).unwrap_or_default();
    let data: Value = value["data"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    match value["event"].as_str().unwrap_or_default() {
        "tick" => match data["seq"].as_u64() {
            Some(seq) => Seen::Tick(seq, now),
            None => Seen::Other(text.to_owned(), now),
        },
        "pusher_internal:member_added" => {
            Seen::Added(data["user_id"].as_str().unwrap_or("?").to_owned(), now)
        }
        "pusher_internal:member_removed" => {
            Seen::Removed(data["user_id"].as_str().unwrap_or("?").to_owned(), now)
        }
        _ => Seen::Other(text.to_owned(), now),
    }
}

impl Client {
    /// Connects to `node`, subscribes to `channel` (presence: as `user`); why not, if that
    /// fails. With `reconnect`, a closed connection is replaced by one to another node of
    /// `nodes` (each a new session); without, the client ends with its connection.
    pub async fn start(
        label: &str,
        nodes: &Nodes,
        node: &str,
        channel: &str,
        user: Option<&str>,
        reconnect: bool,
    ) -> Result<Client, String> {
        let addr = lock(nodes)
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, a)| a.clone())
            .ok_or_else(|| format!("client {label}: no node {node}"))?;
        let open = open(node, &addr, channel, user)
            .await
            .map_err(|e| format!("client {label}: {e}"))?;
        let sessions = Arc::new(Mutex::new(vec![open.session]));
        let task = tokio::spawn(run(
            open.ws,
            sessions.clone(),
            nodes.clone(),
            channel.to_owned(),
            user.map(str::to_owned),
            reconnect,
        ));
        Ok(Client {
            label: label.to_owned(),
            channel: channel.to_owned(),
            sessions,
            task,
        })
    }

    pub fn sessions(&self) -> Vec<Session> {
        lock(&self.sessions).clone()
    }

    pub fn last(&self) -> Session {
        // `start` puts the first session in before anyone can look: never empty.
        lock(&self.sessions)
            .last()
            .cloned()
            .unwrap_or_else(|| Session::none(&self.channel))
    }

    /// Whether the last connection is still open.
    pub fn connected(&self) -> bool {
        lock(&self.sessions)
            .last()
            .is_some_and(|s| s.closed.is_none())
    }
}

async fn run(
    mut ws: Ws,
    sessions: Arc<Mutex<Vec<Session>>>,
    nodes: Nodes,
    channel: String,
    user: Option<String>,
    reconnect: bool,
) {
    loop {
        let closed = loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let s = seen(&text);
                    if let Some(session) = lock(&sessions).last_mut() {
                        session.seen.push(s);
                    }
                }
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break None,
            }
        };
        let left = {
            let mut sessions = lock(&sessions);
            let Some(last) = sessions.last_mut() else {
                return;
            };
            last.closed = Some((closed, Instant::now()));
            last.node.clone()
        };
        if !reconnect {
            return;
        }
        // Another node, as a load balancer would pick; try the others in turn.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut attempt = 0usize;
        ws = loop {
            let candidates: Vec<(String, String)> = lock(&nodes)
                .iter()
                .filter(|(n, _)| *n != left)
                .cloned()
                .collect();
            if !candidates.is_empty() {
                let (node, addr) = &candidates[attempt % candidates.len()];
                attempt += 1;
                match open(node, addr, &channel, user.as_deref()).await {
                    Ok(open) => {
                        lock(&sessions).push(open.session);
                        break open.ws;
                    }
                    Err(e) => eprintln!("[faults] reconnect to {node} failed: {e}"),
                }
            }
            if Instant::now() >= deadline {
                eprintln!("[faults] a client of {left} found no node to reconnect to in 20 s");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
    }
}

/// One publish of the publisher.
#[derive(Debug, Clone)]
pub struct Publish {
    pub seq: u64,
    pub channel: String,
    pub via: String,
    pub sent: Instant,
    /// When the answer (or the error) came.
    pub done: Option<Instant>,
    /// The HTTP status, or why there was none.
    pub outcome: Option<Result<u16, String>>,
}

impl Publish {
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Some(Ok(200)))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// A signed call of the HTTP API on `base` (`http://IP:port`): status and JSON answer.
pub async fn api(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let path = format!("/apps/{APP}{path}");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let query = signing::sign_request(KEY, SECRET, method, &path, &[], body.as_bytes(), now_secs());
    let url = format!("{base}{path}?{query}");
    let request = match method {
        "POST" => http
            .post(url)
            .header("content-type", "application/json")
            .body(body),
        _ => http.get(url),
    };
    let response = request.send().await.map_err(|e| format!("{e}"))?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| format!("{e}"))?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// The user ids of a presence channel, as the HTTP API gives them.
pub async fn users(
    http: &reqwest::Client,
    base: &str,
    channel: &str,
) -> Result<BTreeSet<String>, String> {
    let (status, answer) = api(
        http,
        base,
        "GET",
        &format!("/channels/{channel}/users"),
        None,
    )
    .await?;
    if status != 200 {
        return Err(format!("{status} {answer}"));
    }
    Ok(answer["users"]
        .as_array()
        .map(|u| {
            u.iter()
                .filter_map(|u| u["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Publishes `tick` events, each with the next sequence number, to each of its channels
/// every `interval` (one request per channel, not waiting for earlier answers) through
/// its target node.
pub struct Publisher {
    records: Arc<Mutex<Vec<Publish>>>,
    target: Arc<Mutex<(String, String)>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Publisher {
    pub fn start(
        http: &reqwest::Client,
        node: &str,
        base: &str,
        channels: &[String],
        interval: Duration,
    ) -> Publisher {
        let records: Arc<Mutex<Vec<Publish>>> = Arc::default();
        let target = Arc::new(Mutex::new((node.to_owned(), base.to_owned())));
        let (stop, mut stop_rx) = watch::channel(false);
        let (http, channels) = (http.clone(), channels.to_vec());
        let (recs, tgt) = (records.clone(), target.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u64;
            let mut inflight: Vec<JoinHandle<()>> = Vec::new();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop_rx.changed() => break,
                }
                let (via, base) = lock(&tgt).clone();
                for channel in &channels {
                    seq += 1;
                    let index = {
                        let mut recs = lock(&recs);
                        recs.push(Publish {
                            seq,
                            channel: channel.clone(),
                            via: via.clone(),
                            sent: Instant::now(),
                            done: None,
                            outcome: None,
                        });
                        recs.len() - 1
                    };
                    let body = json!({"name": "tick", "channels": [channel], "data": json!({"seq": seq}).to_string()});
                    let (http, base, recs) = (http.clone(), base.clone(), recs.clone());
                    inflight.retain(|t| !t.is_finished());
                    inflight.push(tokio::spawn(async move {
                        let outcome = api(&http, &base, "POST", "/events", Some(body))
                            .await
                            .map(|(s, _)| s);
                        let mut recs = lock(&recs);
                        recs[index].done = Some(Instant::now());
                        recs[index].outcome = Some(outcome);
                    }));
                }
            }
            for task in inflight {
                let _ = task.await;
            }
        });
        Publisher {
            records,
            target,
            stop,
            task,
        }
    }

    /// Publishes through another node from now on.
    pub fn retarget(&self, node: &str, base: &str) {
        *lock(&self.target) = (node.to_owned(), base.to_owned());
    }

    pub fn records(&self) -> Vec<Publish> {
        lock(&self.records).clone()
    }

    /// Stops publishing and waits for every answer.
    pub async fn stop(self) -> Vec<Publish> {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
        lock(&self.records).clone()
    }
}
