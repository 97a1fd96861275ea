//! A live client connection: one task reads its socket (recording deliveries, answering
//! pings, following a presence roster, counting errors and closes) and writes what the
//! scenario queues for it (client events, subscriptions).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::client::{close_code, close_key, Client, Failure, Frame};
use super::recorder::{now_us, parse_mark, Errors, Receiver, Recorder, Seen};

/// Frames a scenario may queue for one connection before `send` waits.
const OUTGOING_MAX: usize = 16;

/// The scenario's half of a connection.
pub struct Conn {
    pub index: usize,
    /// Index of the target label it connected to.
    pub label: usize,
    pub socket_id: String,
    /// Channel index it subscribed to while opening, if it did (misrouting check).
    pub channel: Option<u64>,
    out: mpsc::Sender<Outgoing>,
    state: Mutex<ConnState>,
}

enum Outgoing {
    Text(String),
    /// A subscription whose answer the reader hands back.
    Subscribe {
        channel: String,
        frame: String,
        answer: oneshot::Sender<Result<Value, Failure>>,
    },
}

/// What the reader keeps for the scenario.
#[derive(Default)]
pub struct ConnState {
    /// The publish run being measured, this connection's record of it and who it is.
    pub delivery: Option<(Arc<Recorder>, Seen, Receiver)>,
    pub presence: Option<Presence>,
    pending: Option<(String, oneshot::Sender<Result<Value, Failure>>)>,
    /// Why the connection ended, once it has.
    pub closed: Option<String>,
}

/// One member's view of a presence channel whose users are `u0 … u{members-1}`.
pub struct Presence {
    pub channel: String,
    /// This member's own user index.
    pub me: u64,
    /// Users this member knows (from subscription_succeeded, then added / removed).
    pub known: Seen,
    /// Joined: when its own subscription_succeeded arrived.
    pub joined_us: Option<u64>,
    pub last_change_us: u64,
    /// member_added that came before its own subscription_succeeded (pusher-js drops those).
    pub early: Vec<u64>,
    pub added: u64,
    pub removed: u64,
    pub self_added: u64,
    pub dup_added: u64,
    pub early_added: u64,
    /// Ids that are no user of this run.
    pub foreign: u64,
    /// `presence.count` of subscription_succeeded differed from its ids.
    pub count_mismatch: bool,
    /// Per user: members that received its member_removed (shared by every member).
    pub removals_seen: Arc<Vec<AtomicU32>>,
}

impl Presence {
    pub fn new(channel: &str, me: u64, members: u64, removals_seen: Arc<Vec<AtomicU32>>) -> Self {
        Presence {
            channel: channel.to_owned(),
            me,
            known: Seen::new(members),
            joined_us: None,
            last_change_us: 0,
            early: Vec::new(),
            added: 0,
            removed: 0,
            self_added: 0,
            dup_added: 0,
            early_added: 0,
            foreign: 0,
            count_mismatch: false,
            removals_seen,
        }
    }

    fn user(&mut self, data: &Value) -> Option<u64> {
        let id = data.get("user_id").and_then(|v| {
            v.as_str()
                .map(str::to_owned)
                .or_else(|| v.as_u64().map(|n| n.to_string()))
        });
        let index = id
            .as_deref()
            .and_then(|id| id.strip_prefix('u'))
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|&n| n < self.removals_seen.len() as u64);
        if index.is_none() {
            self.foreign += 1;
        }
        index
    }

    fn succeeded(&mut self, data: &Value) {
        let presence = &data["presence"];
        let ids = presence["ids"].as_array().cloned().unwrap_or_default();
        for id in &ids {
            if let Some(user) = self.user(&serde_json::json!({ "user_id": id })) {
                self.known.insert(user);
            }
        }
        for user in std::mem::take(&mut self.early) {
            self.known.insert(user);
        }
        self.count_mismatch = presence["count"]
            .as_u64()
            .is_some_and(|c| c != ids.len() as u64);
        let now = now_us();
        self.joined_us = Some(now);
        self.last_change_us = now;
    }

    fn member_added(&mut self, data: &Value) {
        self.added += 1;
        let Some(user) = self.user(data) else {
            return;
        };
        if user == self.me {
            self.self_added += 1;
        }
        if self.joined_us.is_none() {
            self.early_added += 1;
            if self.early.len() < self.removals_seen.len() {
                self.early.push(user);
            }
            return;
        }
        if !self.known.insert(user) {
            self.dup_added += 1;
        }
        self.last_change_us = now_us();
    }

    fn member_removed(&mut self, data: &Value) {
        self.removed += 1;
        if let Some(user) = self.user(data) {
            self.known.remove(user);
            if let Some(n) = self.removals_seen.get(user as usize) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.last_change_us = now_us();
    }
}

impl Conn {
    /// Hands `client` to a reader task in `tasks`.
    pub fn spawn(
        client: Client,
        index: usize,
        label: usize,
        channel: Option<u64>,
        errors: Arc<Errors>,
        tasks: &mut JoinSet<()>,
    ) -> Arc<Conn> {
        let (out, rx) = mpsc::channel(OUTGOING_MAX);
        let conn = Arc::new(Conn {
            index,
            label,
            socket_id: client.socket_id.clone(),
            channel,
            out,
            state: Mutex::new(ConnState::default()),
        });
        tasks.spawn(read(client, conn.clone(), errors, rx));
        conn
    }

    pub fn state(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_open(&self) -> bool {
        self.state().closed.is_none()
    }

    /// Queues a text frame; false when the connection has ended.
    pub async fn send(&self, text: String) -> bool {
        self.out.send(Outgoing::Text(text)).await.is_ok()
    }

    /// Sends a subscription (frame built by the caller) and waits for its answer.
    pub async fn subscribe(&self, channel: &str, frame: String) -> Result<Value, Failure> {
        let (answer, rx) = oneshot::channel();
        self.out
            .send(Outgoing::Subscribe {
                channel: channel.to_owned(),
                frame,
                answer,
            })
            .await
            .map_err(|_| Failure::Closed(None))?;
        rx.await.map_err(|_| Failure::Closed(None))?
    }
}

async fn read(
    mut client: Client,
    conn: Arc<Conn>,
    errors: Arc<Errors>,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    let ended = loop {
        tokio::select! {
            message = client.ws.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(close))) => {
                        let key = close_key(close_code(&close));
                        errors.count(&key);
                        break key;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        let key = Failure::from(e).key();
                        errors.count(&key);
                        break key;
                    }
                    None => {
                        errors.count("connection ended");
                        break "connection ended".to_owned();
                    }
                };
                if let Some(pong) = on_text(&conn, &errors, &text) {
                    if let Err(e) = client.ws.send(Message::text(pong)).await {
                        break Failure::from(e).key();
                    }
                }
            }
            Some(out) = rx.recv() => {
                let text = match out {
                    Outgoing::Text(text) => text,
                    Outgoing::Subscribe { channel, frame, answer } => {
                        conn.state().pending = Some((channel, answer));
                        frame
                    }
                };
                if let Err(e) = client.ws.send(Message::text(text)).await {
                    let key = Failure::from(e).key();
                    errors.count(&key);
                    break key;
                }
            }
        }
    };
    let mut state = conn.state();
    if let Some((_, answer)) = state.pending.take() {
        let _ = answer.send(Err(Failure::Closed(None)));
    }
    state.closed = Some(ended);
}

/// Handles one text frame; returns a frame to send back (a pong).
fn on_text(conn: &Conn, errors: &Errors, text: &str) -> Option<String> {
    if let Some((seq, sent)) = parse_mark(text) {
        let now = now_us();
        let mut state = conn.state();
        if let Some((recorder, seen, who)) = state.delivery.as_mut() {
            recorder.deliver(who, seen, seq, sent, now);
        }
        return None;
    }
    let frame = Frame::parse(text)?;
    match frame.event.as_str() {
        "pusher:ping" => return Some(relaymesh_proto::frame::PONG.to_owned()),
        "pusher_internal:subscription_succeeded" => {
            let mut state = conn.state();
            let pending = state
                .pending
                .take_if(|(ch, _)| frame.channel.as_ref() == Some(ch));
            if let Some(p) = state.presence.as_mut() {
                if frame.channel.as_ref() == Some(&p.channel) {
                    p.succeeded(&frame.data);
                }
            }
            if let Some((_, answer)) = pending {
                let _ = answer.send(Ok(frame.data));
            }
        }
        "pusher_internal:member_added" | "pusher_internal:member_removed" => {
            let mut state = conn.state();
            if let Some(p) = state.presence.as_mut() {
                if frame.channel.as_ref() == Some(&p.channel) {
                    if frame.event.ends_with("added") {
                        p.member_added(&frame.data);
                    } else {
                        p.member_removed(&frame.data);
                    }
                }
            }
        }
        _ => {
            if let Some(failure) = frame.failure() {
                errors.count(&failure.key());
                let mut state = conn.state();
                // A subscription error names its channel; a pusher:error while a
                // subscription waits is taken as its answer (Pusher and sockudo send those).
                let pending = state.pending.take_if(|(ch, _)| {
                    frame.channel.is_none() || frame.channel.as_ref() == Some(ch)
                });
                if let Some((_, answer)) = pending {
                    let _ = answer.send(Err(failure));
                }
            }
        }
    }
    None
}
