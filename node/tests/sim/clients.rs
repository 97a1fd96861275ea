//! Simulated Pusher clients on the nodes' real sessions, the publisher on the real HTTP
//! path (`route::begin`), and what really happened (who was subscribed when), which the
//! checks compare with what each client received.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use relaymesh_node::edge::ws::session::Session;
use relaymesh_node::frames;
use relaymesh_node::outbox::Conn;
use relaymesh_node::route::{self, Waiting};
use relaymesh_proto::frame;
use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::Publish as PublishBody;
use relaymesh_proto::signing;
use serde_json::Value;

use super::world::{app, World};

/// One channel as a client sees it.
#[derive(Default, Debug)]
pub struct Subscription {
    pub succeeded_at: Option<Duration>,
    /// The publish ids received, in order.
    pub events: Vec<u64>,
    /// The presence roster as the client's frames built it.
    pub roster: BTreeSet<String>,
    /// When the client last learned that each user was present / absent.
    pub learned: BTreeMap<String, Duration>,
}

pub struct Client {
    pub node: usize,
    pub user: String,
    session: Session,
    pub conn: Arc<Conn>,
    pub connected: bool,
    /// Channels subscribed to (or asked for) and not left.
    pub channels: BTreeMap<String, Subscription>,
    /// Channels left, with what they received while subscribed.
    pub left: Vec<(String, Subscription)>,
    pub closed_with: Option<u16>,
    /// Its node dropped out of the view at some point: the cluster took its subscriptions
    /// away, so it did not stay connected to a node that stayed.
    pub interrupted: bool,
    /// Whether its subscriptions count as present in the cluster (its node is in the view).
    counted: bool,
}

/// A publish through the HTTP API path of a node.
pub struct Publish {
    pub id: u64,
    pub channel: String,
    pub sent_at: Duration,
    waiting: Option<Waiting>,
    /// `Some(true)` once acknowledged, `Some(false)` once refused or failed.
    pub acked: Option<bool>,
    pub acked_at: Option<Duration>,
}

/// A count that changes over time, with its history.
#[derive(Default)]
pub struct Counted {
    now: u32,
    /// (when, the count from then on).
    history: Vec<(Duration, u32)>,
}

impl Counted {
    fn change(&mut self, delta: i32, at: Duration) {
        let next = (self.now as i32 + delta).max(0) as u32;
        if next != self.now {
            self.now = next;
            self.history.push((at, next));
        }
    }

    /// Whether the count met `test` at some moment from `from` on.
    fn ever_since(&self, from: Duration, test: impl Fn(u32) -> bool) -> bool {
        let at_from = self
            .history
            .iter()
            .rev()
            .find(|(at, _)| *at <= from)
            .map_or(0, |(_, count)| *count);
        test(at_from) || self.history.iter().any(|(at, c)| *at > from && test(*c))
    }
}

/// For each presence channel and user: its subscribed sockets (answered) and its
/// subscriptions asked for (answered or not) over time, so that member events can be told
/// real from spurious.
#[derive(Default)]
pub struct Truth {
    pub present: BTreeMap<(String, String), Counted>,
    pub asked: BTreeMap<(String, String), Counted>,
}

impl Truth {
    fn ask(&mut self, channel: &str, user: &str, delta: i32, now: Duration) {
        let key = (channel.to_owned(), user.to_owned());
        self.asked.entry(key).or_default().change(delta, now);
    }

    fn change(&mut self, channel: &str, user: &str, delta: i32, now: Duration) {
        let key = (channel.to_owned(), user.to_owned());
        self.present.entry(key).or_default().change(delta, now);
    }

    /// A member_added since `since` is real if the user had a subscription asked for, or
    /// a subscribed socket, at some moment since.
    fn may_have_come(&self, key: &(String, String), since: Duration) -> bool {
        let any = |c: Option<&Counted>| c.is_some_and(|c| c.ever_since(since, |n| n > 0));
        any(self.asked.get(key)) || any(self.present.get(key))
    }

    /// A member_removed since `since` is real if the user had no subscribed socket, or
    /// nothing asked for, at some moment since.
    fn may_have_gone(&self, key: &(String, String), since: Duration) -> bool {
        let none = |c: Option<&Counted>| c.is_none_or(|c| c.ever_since(since, |n| n == 0));
        none(self.present.get(key)) || none(self.asked.get(key))
    }
}

#[derive(Default)]
pub struct Population {
    pub clients: Vec<Client>,
    pub publishes: Vec<Publish>,
    pub truth: Truth,
    /// Problems seen as frames arrived (a member event that contradicts the roster).
    pub violations: Vec<String>,
}

fn frame_text(frame: &Bytes) -> Option<String> {
    let start = match frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    String::from_utf8(frame.get(start..)?.to_vec()).ok()
}

/// The publish id of the event a mesh frame delivers, if it is one.
pub fn event_id_of_deliver(frame: &Bytes) -> Option<u64> {
    use prost::Message;
    let envelope = relaymesh_proto::mesh::Envelope::decode(frame.clone()).ok()?;
    let Some(Body::Deliver(deliver)) = envelope.body else {
        return None;
    };
    let json: Value = serde_json::from_str(&frame_text(&deliver.frame)?).ok()?;
    (json["event"] == "ev").then(|| json["data"].as_str()?.parse().ok())?
}

/// How much earlier than a client learned of a member's last change the owner may have
/// decided it: what happened to the user in between may explain the next event. (A few
/// link latencies; a flap with nothing near it is still caught.)
const DECIDED_BEFORE_LEARNED: Duration = Duration::from_millis(10);

fn learned_at(sub: &Subscription, user: &str) -> Duration {
    sub.learned.get(user).map_or(Duration::ZERO, |at| {
        at.saturating_sub(DECIDED_BEFORE_LEARNED)
    })
}

impl Population {
    pub fn connect(&mut self, world: &mut World, node: usize) -> usize {
        let shared = world.nodes[node].shared.clone();
        let app = shared.apps.by_key(&app().key).expect("the app");
        let conn = Arc::new(Conn::new(shared.next_socket_id(), 100_000, 64 << 20));
        if app.admit(&conn).is_err() {
            panic!("admission refused");
        }
        let session = Session::new(shared, app, conn.clone());
        let index = self.clients.len();
        self.clients.push(Client {
            node,
            user: format!("u{}", index % 7),
            session,
            conn,
            connected: true,
            channels: BTreeMap::new(),
            left: Vec::new(),
            closed_with: None,
            interrupted: false,
            counted: true,
        });
        world.log(format!("c{index} connects to n{node}"));
        index
    }

    pub fn subscribe(&mut self, world: &mut World, client: usize, channel: &str) {
        let c = &mut self.clients[client];
        if !c.connected || c.channels.contains_key(channel) {
            return;
        }
        let socket_id = c.conn.socket_id.to_string();
        let text = if channel.starts_with("presence-") {
            let data = format!(r#"{{"user_id":"{}"}}"#, c.user);
            let to_sign = signing::channel_string_to_sign(&socket_id, channel, Some(&data));
            let auth = signing::sign_auth(&app().key, &app().secret, &to_sign);
            serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": data}})
        } else {
            serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}})
        };
        c.channels
            .insert(channel.to_owned(), Subscription::default());
        world.log(format!("c{client} subscribes {channel}"));
        world.nodes[c.node].shared.set_now(world.at());
        c.session.on_text(&text.to_string());
        if channel.starts_with("presence-") {
            let user = c.user.clone();
            self.truth.ask(channel, &user, 1, world.now);
        }
    }

    pub fn unsubscribe(&mut self, world: &mut World, client: usize, channel: &str) {
        let c = &mut self.clients[client];
        let Some(sub) = c.channels.remove(channel) else {
            return;
        };
        let was_member = sub.succeeded_at.is_some();
        c.left.push((channel.to_owned(), sub));
        let text = serde_json::json!({"event": "pusher:unsubscribe", "data": {"channel": channel}});
        world.log(format!("c{client} unsubscribes {channel}"));
        world.nodes[c.node].shared.set_now(world.at());
        c.session.on_text(&text.to_string());
        if channel.starts_with("presence-") {
            let user = c.user.clone();
            self.truth.ask(channel, &user, -1, world.now);
            if was_member && c.counted {
                self.truth.change(channel, &user, -1, world.now);
            }
        }
    }

    /// The client goes away (its connection task would end the session the same way).
    pub fn disconnect(&mut self, world: &mut World, client: usize) {
        if !self.clients[client].connected {
            return;
        }
        world.log(format!("c{client} disconnects"));
        let node = self.clients[client].node;
        world.nodes[node].shared.set_now(world.at());
        self.clients[client].session.end();
        self.lose(world, client);
    }

    /// The client is gone without its session ending (its node died).
    fn lose(&mut self, world: &World, client: usize) {
        let c = &mut self.clients[client];
        c.connected = false;
        let counted = std::mem::replace(&mut c.counted, false);
        let channels: Vec<(String, bool)> = c
            .channels
            .iter()
            .filter(|(c, _)| c.starts_with("presence-"))
            .map(|(c, s)| (c.clone(), s.succeeded_at.is_some()))
            .collect();
        let user = c.user.clone();
        for (channel, was_member) in channels {
            self.truth.ask(&channel, &user, -1, world.now);
            if was_member && counted {
                self.truth.change(&channel, &user, -1, world.now);
            }
        }
    }

    /// The clients of a killed node are gone with it.
    pub fn node_died(&mut self, world: &World, node: usize) {
        for client in 0..self.clients.len() {
            if self.clients[client].node == node && self.clients[client].connected {
                self.lose(world, client);
            }
        }
    }

    pub fn publish(&mut self, world: &mut World, node: usize, channel: &str) {
        let id = self.publishes.len() as u64 + 1;
        let shared = world.nodes[node].shared.clone();
        shared.set_now(world.at());
        let app = shared.apps.by_key(&app().key).expect("the app");
        let text = frame::channel_event("ev", channel, &id.to_string(), None);
        let frame = frames::text_frame(&text);
        let waiting = route::begin(&shared, &app, channel, |request_id| {
            Body::Publish(PublishBody {
                request_id,
                frame,
                data: id.to_string(),
                ..PublishBody::default()
            })
        });
        world.log(format!("publish {id} on {channel} from n{node}"));
        let (waiting, acked) = match waiting {
            Ok(waiting) => (Some(waiting), None),
            Err(_) => (None, Some(false)),
        };
        self.publishes.push(Publish {
            id,
            channel: channel.to_owned(),
            sent_at: world.now,
            waiting,
            acked,
            acked_at: None,
        });
    }

    /// Asks the owner of `channel`, through `node`, for its count and users.
    pub fn query(
        &self,
        world: &mut World,
        node: usize,
        channel: &str,
    ) -> Result<Waiting, route::RouteError> {
        let shared = world.nodes[node].shared.clone();
        shared.set_now(world.at());
        let app = shared.apps.by_key(&app().key).expect("the app");
        route::begin(&shared, &app, channel, |request_id| {
            Body::Query(relaymesh_proto::mesh::Query {
                request_id,
                users: true,
            })
        })
    }

    /// Takes the publishes' answers and every client's frames.
    pub fn poll(&mut self, world: &mut World) {
        for p in &mut self.publishes {
            if let Some(waiting) = p.waiting.as_mut() {
                if let Some(answer) = waiting.try_answer() {
                    p.acked = Some(answer.is_ok());
                    p.acked_at = Some(world.now);
                    p.waiting = None;
                }
            }
        }
        // Membership first: a node that left the view took its users with it before any
        // frame about them is read.
        for index in 0..self.clients.len() {
            if self.clients[index].connected {
                self.follow_membership(world, index);
            }
        }
        // Frames before closes: what a node sent before closing a client was real then.
        for index in 0..self.clients.len() {
            if self.clients[index].connected {
                for frame in self.clients[index].conn.take_queued() {
                    self.read(world, index, &frame);
                }
            }
        }
        for index in 0..self.clients.len() {
            if !self.clients[index].connected {
                continue;
            }
            if let Some(close) = self.clients[index].conn.closing() {
                let node = self.clients[index].node;
                world.log(format!("c{index} closed by n{node} with {}", close.code));
                self.clients[index].closed_with = Some(close.code);
                world.nodes[node].shared.set_now(world.at());
                self.clients[index].session.end();
                self.lose(world, index);
            }
        }
    }

    /// A client whose node left the view is no longer present in the cluster; it is again
    /// once its node is back.
    fn follow_membership(&mut self, world: &World, client: usize) {
        let c = &mut self.clients[client];
        let in_view = world.in_cluster(c.node);
        if in_view == c.counted {
            return;
        }
        c.counted = in_view;
        c.interrupted |= !in_view;
        let delta = if in_view { 1 } else { -1 };
        let user = c.user.clone();
        let present: Vec<String> = c
            .channels
            .iter()
            .filter(|(name, s)| name.starts_with("presence-") && s.succeeded_at.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        for channel in present {
            self.truth.change(&channel, &user, delta, world.now);
        }
    }

    fn read(&mut self, world: &World, client: usize, frame: &Bytes) {
        let Some(text) = frame_text(frame) else {
            self.violations
                .push(format!("c{client}: an unreadable frame"));
            return;
        };
        let Ok(json) = serde_json::from_str::<Value>(&text) else {
            self.violations.push(format!("c{client}: not JSON: {text}"));
            return;
        };
        let event = json["event"].as_str().unwrap_or_default();
        let channel = json["channel"].as_str().unwrap_or_default().to_owned();
        let data: Value = json["data"]
            .as_str()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null);
        let now = world.now;
        let c = &mut self.clients[client];
        let Some(sub) = c.channels.get_mut(&channel) else {
            return;
        };
        match event {
            "pusher_internal:subscription_succeeded" => {
                if sub.succeeded_at.is_some() {
                    self.violations
                        .push(format!("c{client}: {channel} succeeded twice at {now:?}"));
                }
                sub.succeeded_at = Some(now);
                if c.counted && channel.starts_with("presence-") {
                    let user = c.user.clone();
                    self.truth.change(&channel, &user, 1, now);
                }
                let Some(sub) = self.clients[client].channels.get_mut(&channel) else {
                    return;
                };
                if let Some(ids) = data["presence"]["ids"].as_array() {
                    sub.roster = ids
                        .iter()
                        .filter_map(|i| i.as_str())
                        .map(str::to_owned)
                        .collect();
                    for user in &sub.roster {
                        sub.learned.insert(user.clone(), now);
                    }
                }
            }
            "pusher_internal:member_added" => {
                let user = data["user_id"].as_str().unwrap_or_default().to_owned();
                let key = (channel.clone(), user.clone());
                let since = learned_at(sub, &user);
                // Asked for, or back with its node.
                let came = self.truth.may_have_come(&key, since);
                if sub.roster.contains(&user) || !came {
                    self.violations.push(format!(
                        "c{client}: spurious member_added {user} on {channel} at {now:?} (roster {:?}, known since {since:?})",
                        sub.roster,
                    ));
                }
                sub.roster.insert(user.clone());
                sub.learned.insert(user, now);
            }
            "pusher_internal:member_removed" => {
                let user = data["user_id"].as_str().unwrap_or_default().to_owned();
                let key = (channel.clone(), user.clone());
                let since = learned_at(sub, &user);
                let went = self.truth.may_have_gone(&key, since);
                if !sub.roster.contains(&user) || !went {
                    self.violations.push(format!(
                        "c{client}: spurious member_removed {user} on {channel} at {now:?} (roster {:?})",
                        sub.roster
                    ));
                }
                sub.roster.remove(&user);
                sub.learned.insert(user, now);
            }
            "ev" => {
                let id = json["data"]
                    .as_str()
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0);
                sub.events.push(id);
            }
            "pusher:subscription_error" => {
                // Refused (an owner that did not answer in time): the client gave up on it.
                let sub = c.channels.remove(&channel).unwrap_or_default();
                let was_member = sub.succeeded_at.is_some();
                c.left.push((channel.clone(), sub));
                if channel.starts_with("presence-") {
                    let user = c.user.clone();
                    self.truth.ask(&channel, &user, -1, now);
                    if was_member && c.counted {
                        self.truth.change(&channel, &user, -1, now);
                    }
                }
            }
            _ => {}
        }
    }
}
