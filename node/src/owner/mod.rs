//! The owner side of channels: what the single serialization point of a channel holds and
//! decides. Every node runs one [`Owner`] per app and acts as owner for the channels the
//! ring gives it (all of them when it is alone).
//!
//! Per channel the owner keeps the subscribed sockets of every node (so it knows which
//! nodes need each event), the presence roster (so member_added / member_removed and the
//! webhooks fire once per user across the mesh), a sequence number, the cache and the
//! subscription count. Sans-IO: each call takes one message and writes what follows to a
//! [`Sink`] (messages to nodes, webhooks) while the channel's shard lock is held, so every
//! node receives one channel's messages in the owner's order.

mod presence;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use relaymesh_proto::channel::{ChannelAuth, ChannelKind};
use relaymesh_proto::codes::ErrorCode;
use relaymesh_proto::frame::{self, PresenceMember};
use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::{
    self, ChannelEntry, ChannelStats, CloseSockets, Deliver, Publish, Query, Reply, Resync,
    SubscribeResult,
};
use serde_json::value::RawValue;

use crate::app::SharedAppConfig;
use crate::cluster::ClusterView;
use crate::edge::outbox::SocketId;
use crate::edge::ws::codec;
use crate::telemetry;
use crate::webhooks::WebhookEvent;
pub use presence::Roster;

const SHARDS: usize = 64;

/// Above this many subscribers a channel's count is sent at most every [`COUNT_INTERVAL`]
/// (protocol §13.1).
const COUNT_THROTTLE_SUBSCRIBERS: usize = 100;
const COUNT_INTERVAL: Duration = Duration::from_secs(5);

/// Where the owner's decisions go.
pub trait Sink {
    /// A message for the edge of `node` (this node included).
    fn send(&mut self, node: &str, channel: &str, body: Body);
    fn webhook(&mut self, event: WebhookEvent);
}

/// The last event published on a cache channel.
struct CachedEvent {
    frame: Bytes,
    data: Arc<str>,
    expires: Instant,
}

struct Subscriber {
    node: Arc<str>,
    /// The node's process (its incarnation) that holds the socket.
    incarnation: u64,
    /// The presence user the socket joined as.
    user: Option<Box<str>>,
}

/// How long after a takeover a message for an unknown channel is held back.
const TAKEOVER_HOLD: Duration = Duration::from_secs(2);
/// Most messages a settling channel holds back; beyond, they are handled at once.
const SETTLING_QUEUE_MAX: usize = 4096;

/// A channel this node took over, rebuilt from the nodes' [`Resync`]s: until every node
/// said it is done (or a deadline passes) the channel's messages wait, so that nothing
/// is decided on a partial picture.
struct Settling {
    /// Per node, the members its subscribers were told about by the previous owner (they
    /// can differ: a node cut off from a change did not hear of it).
    told: HashMap<Arc<str>, HashSet<Box<str>>>,
    queued: Vec<(Arc<str>, u64, Body)>,
    /// The newest view a resync came from: the channel settles once every node is done
    /// with it.
    view_version: u64,
    since: Instant,
}

#[derive(Default)]
struct OwnedChannel {
    /// Numbers every frame the owner sends for the channel.
    seq: u64,
    sockets: HashMap<SocketId, Subscriber>,
    /// Nodes with subscribers and how many each has.
    interest: Vec<(Arc<str>, u32)>,
    /// Present on presence channels only.
    roster: Option<Roster>,
    /// When the subscription count was last sent (subscription counting).
    count_sent: Option<Instant>,
    settling: Option<Box<Settling>>,
    /// The newest view a node subscribed or resynced with: a view older than that does
    /// not take the channel away (this node just has not seen the newer one yet).
    newest_view: u64,
}

impl OwnedChannel {
    fn stats(&self) -> ChannelStats {
        ChannelStats {
            subscription_count: self.sockets.len() as u32,
            user_count: self.roster.as_ref().map(|r| r.len() as u32),
        }
    }

    /// The node's shared id, from the interest list when it is there.
    fn node_key(&self, node: &str) -> Arc<str> {
        self.interest
            .iter()
            .find(|(n, _)| &**n == node)
            .map_or_else(|| node.into(), |(n, _)| n.clone())
    }

    fn add_interest(&mut self, node: &Arc<str>) {
        match self.interest.iter_mut().find(|(n, _)| n == node) {
            Some((_, count)) => *count += 1,
            None => self.interest.push((node.clone(), 1)),
        }
    }

    fn remove_interest(&mut self, node: &str) {
        if let Some(i) = self.interest.iter().position(|(n, _)| &**n == node) {
            self.interest[i].1 -= 1;
            if self.interest[i].1 == 0 {
                self.interest.swap_remove(i);
            }
        }
    }

    /// Sends one frame to every node with subscribers, numbered.
    /// Sends one frame to every node with subscribers, numbered.
    fn deliver(
        &mut self,
        channel: &str,
        frame: Bytes,
        except: Option<SocketId>,
        sink: &mut dyn Sink,
    ) {
        let deliver = Deliver {
            frame,
            except: except.map(Into::into),
            ..Deliver::default()
        };
        self.send_to_interest(channel, deliver, sink);
    }

    /// Sends `deliver`, numbered, to one node.
    fn send_to(&mut self, node: &str, channel: &str, deliver: Deliver, sink: &mut dyn Sink) {
        self.seq += 1;
        let body = Body::Deliver(Deliver {
            seq: self.seq,
            ..deliver
        });
        sink.send(node, channel, body);
    }

    /// Sends `deliver`, numbered, to every node with subscribers.
    fn send_to_interest(&mut self, channel: &str, deliver: Deliver, sink: &mut dyn Sink) {
        self.seq += 1;
        for (node, _) in &self.interest {
            let body = Body::Deliver(Deliver {
                seq: self.seq,
                ..deliver.clone()
            });
            sink.send(node, channel, body);
        }
    }

    fn member_added(
        &mut self,
        channel: &str,
        user_id: &str,
        except: Option<SocketId>,
        sink: &mut dyn Sink,
    ) {
        let Some(info) = self.roster.as_ref().and_then(|r| r.info(user_id)) else {
            return;
        };
        let deliver = Deliver {
            frame: codec::text_frame(&frame::member_added(channel, user_id, info)),
            except: except.map(Into::into),
            member_added: user_id.to_owned(),
            ..Deliver::default()
        };
        self.send_to_interest(channel, deliver, sink);
        sink.webhook(WebhookEvent::MemberAdded {
            channel: channel.into(),
            user_id: user_id.into(),
        });
    }

    fn member_removed(&mut self, channel: &str, user_id: &str, sink: &mut dyn Sink) {
        let deliver = Deliver {
            frame: codec::text_frame(&frame::member_removed(channel, user_id)),
            member_removed: user_id.to_owned(),
            ..Deliver::default()
        };
        self.send_to_interest(channel, deliver, sink);
        sink.webhook(WebhookEvent::MemberRemoved {
            channel: channel.into(),
            user_id: user_id.into(),
        });
    }

    fn roster_ids(&self) -> Vec<String> {
        self.roster
            .as_ref()
            .map(|r| r.members().map(|(id, _)| id.to_owned()).collect())
            .unwrap_or_default()
    }

    fn count_frame(&mut self, channel: &str, now: Instant, sink: &mut dyn Sink) -> Bytes {
        self.count_sent = Some(now);
        let count = self.sockets.len();
        sink.webhook(WebhookEvent::SubscriptionCount {
            channel: channel.into(),
            subscription_count: count,
        });
        codec::text_frame(&frame::subscription_count(channel, count))
    }

    /// Whether a count change must wait for the throttle interval.
    fn count_throttled(&self, now: Instant) -> bool {
        self.sockets.len() > COUNT_THROTTLE_SUBSCRIBERS
            && self.count_sent.is_some_and(|t| now < t + COUNT_INTERVAL)
    }

    fn succeeded_frame(&self, channel: &str) -> Bytes {
        let text = match &self.roster {
            Some(roster) => frame::presence_subscription_succeeded(channel, roster.members()),
            None => frame::subscription_succeeded(channel),
        };
        codec::text_frame(&text)
    }
}

#[derive(Default)]
struct Shard {
    channels: HashMap<Box<str>, OwnedChannel>,
    cache: HashMap<Box<str>, CachedEvent>,
    /// Channels whose count changed while throttled; flushed by `flush_subscription_counts`.
    count_pending: HashSet<Box<str>>,
}

/// Whether a channel's subscription count is sent when counting is on.
fn counted(kind: ChannelKind) -> bool {
    matches!(kind.auth, ChannelAuth::Public | ChannelAuth::Private)
}

/// The member a Subscribe carries; `None` when it is missing or its info is not JSON.
fn member_of(member: Option<mesh::Member>) -> Option<PresenceMember> {
    let member = member?;
    let user_info = if member.info.is_empty() {
        None
    } else {
        let text = String::from_utf8(member.info.to_vec()).ok()?;
        Some(RawValue::from_string(text).ok()?)
    };
    Some(PresenceMember {
        user_id: member.user_id,
        user_info,
    })
}

/// The owned channels of one app.
pub struct Owner {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    app_id: Arc<str>,
    config: SharedAppConfig,
    cache_entries_per_shard: usize,
    takeover: Mutex<Option<Takeover>>,
    forgot_all: std::sync::atomic::AtomicBool,
    /// The view this node follows.
    view_version: std::sync::atomic::AtomicU64,
}

/// Channels this node took over with a view: until every member is done with that view,
/// a channel it has no state for yet may have subscribers whose nodes have not resynced,
/// so its first message starts a settling channel instead of being decided on nothing.
struct Takeover {
    me: Arc<str>,
    version: u64,
    previous: ClusterView,
    current: ClusterView,
    since: Instant,
}

/// Who sent an owner-bound message: a node and its process.
#[derive(Clone, Copy)]
pub struct Origin<'a> {
    pub node: &'a str,
    pub incarnation: u64,
    /// The sender's view.
    pub view_version: u64,
}

impl Owner {
    pub fn new(app_id: Arc<str>, config: SharedAppConfig, cache_entries_max: usize) -> Owner {
        Owner {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            app_id,
            config,
            cache_entries_per_shard: cache_entries_max.div_ceil(SHARDS).max(1),
            takeover: Mutex::new(None),
            forgot_all: std::sync::atomic::AtomicBool::new(false),
            view_version: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn takeover(&self) -> MutexGuard<'_, Option<Takeover>> {
        self.takeover.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The view version to settle `channel` at, when it just moved to this node.
    fn taken_over(&self, channel: &str, deadline: Duration) -> Option<u64> {
        let takeover = self.takeover();
        let t = takeover.as_ref()?;
        let me = Some(&*t.me);
        let moved_here = t.previous.owner_of(&self.app_id, channel) != me
            && t.current.owner_of(&self.app_id, channel) == me;
        (moved_here && t.since.elapsed() < deadline).then_some(t.version)
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, Shard> {
        let shard = &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS];
        // Critical sections only move entries between maps; a poisoned lock is still valid.
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shards(&self) -> impl Iterator<Item = MutexGuard<'_, Shard>> {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn count_owned(&self, delta: f64) {
        metrics::gauge!(telemetry::OWNED_CHANNELS, "app" => self.app_id.clone()).increment(delta);
    }

    /// Handles one owner-bound message about `channel` from `origin`.
    pub fn handle(
        &self,
        _now: Instant,
        origin: Origin<'_>,
        channel: &str,
        body: Body,
        sink: &mut dyn Sink,
    ) {
        if let Body::ListChannels(l) = body {
            let answer = Reply {
                request_id: l.request_id,
                channels: self.occupied(&l.prefix),
                ..Reply::default()
            };
            return sink.send(origin.node, "", Body::Reply(answer));
        }
        let mut shard = self.shard(channel);
        if let Body::Resync(resync) = body {
            return self.resync(&mut shard, origin, channel, resync, sink);
        }
        if !shard.channels.contains_key(channel) {
            // A sender with a newer view than this node's may know that the channel moved
            // here before this node does: hold it the same way.
            let ahead = (origin.view_version > self.view_version.load(Ordering::Relaxed))
                .then_some(origin.view_version);
            if let Some(version) = self.taken_over(channel, TAKEOVER_HOLD).or(ahead) {
                self.count_owned(1.0);
                let settling = Settling {
                    told: HashMap::new(),
                    queued: Vec::new(),
                    view_version: version,
                    since: Instant::now(),
                };
                let held = OwnedChannel {
                    settling: Some(Box::new(settling)),
                    ..OwnedChannel::default()
                };
                shard.channels.insert(channel.into(), held);
            }
        }
        if let Some(settling) = shard
            .channels
            .get_mut(channel)
            .and_then(|c| c.settling.as_mut())
            .filter(|s| s.queued.len() < SETTLING_QUEUE_MAX)
        {
            settling
                .queued
                .push((origin.node.into(), origin.incarnation, body));
            return;
        }
        self.handle_locked(&mut shard, origin, channel, body, sink);
    }

    fn handle_locked(
        &self,
        shard: &mut Shard,
        origin: Origin<'_>,
        channel: &str,
        body: Body,
        sink: &mut dyn Sink,
    ) {
        match body {
            Body::Subscribe(s) => {
                if let Some(socket) = s.socket.map(SocketId::from) {
                    self.subscribe(shard, origin, channel, socket, s.member, sink);
                }
            }
            Body::Unsubscribe(u) => {
                if let Some(socket) = u.socket.map(SocketId::from) {
                    self.unsubscribe(shard, channel, socket, sink);
                }
            }
            Body::Publish(p) => self.publish(shard, origin.node, channel, p, sink),
            Body::Query(q) => self.query(shard, origin.node, channel, q, sink),
            Body::Terminate(t) => {
                let stats = close_sockets(shard, channel, sink);
                reply(origin.node, channel, t.request_id, Some(stats), sink);
            }
            Body::ListChannels(_)
            | Body::Resync(_)
            | Body::Synced(_)
            | Body::SubscribeResult(_)
            | Body::Deliver(_)
            | Body::Reply(_)
            | Body::CloseSockets(_) => {}
        }
    }

    /// Adds a socket of `origin`; answers it with `subscription_succeeded` (the roster on
    /// presence channels, the cached event on cache channels) or a refusal, and tells the
    /// other subscribers about a new member. A repeated subscription only gets its answer.
    fn subscribe(
        &self,
        shard: &mut Shard,
        origin: Origin<'_>,
        channel: &str,
        socket: SocketId,
        member: Option<mesh::Member>,
        sink: &mut dyn Sink,
    ) {
        let config = self.config.get();
        let kind = ChannelKind::of(channel);
        let entry = match shard.channels.entry(channel.into()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                self.count_owned(1.0);
                e.insert(OwnedChannel::default())
            }
        };
        let answer = |accepted, frames, roster| {
            Body::SubscribeResult(SubscribeResult {
                socket: Some(socket.into()),
                accepted,
                frames,
                roster,
            })
        };
        if entry.sockets.contains_key(&socket) {
            let body = answer(
                true,
                vec![entry.succeeded_frame(channel)],
                entry.roster_ids(),
            );
            sink.send(origin.node, channel, body);
            return;
        }
        let newly_occupied = entry.sockets.is_empty();
        let node = entry.node_key(origin.node);
        entry.newest_view = entry.newest_view.max(origin.view_version);
        let mut user = None;
        if kind.is_presence() {
            let refuse = |message: &str, status: u16, error: &str| {
                telemetry::count_error(Some(status), "presence_refused");
                let text = frame::subscription_error(channel, error, message, status);
                answer(false, vec![codec::text_frame(&text)], Vec::new())
            };
            let refused = match member_of(member) {
                None => Err(refuse("Invalid presence member", 400, "InvalidChannelData")),
                Some(member) => {
                    let roster = entry.roster.get_or_insert_with(Roster::default);
                    let max = config.max_presence_members;
                    if !roster.contains(&member.user_id) && roster.len() >= max {
                        let message = format!("Presence channel is full: at most {max} members");
                        // Over a limit, in the subscription_error shape of soketi.
                        Err(refuse(&message, 4100, "LimitReached"))
                    } else {
                        Ok(member)
                    }
                }
            };
            let member = match refused {
                Ok(member) => member,
                Err(body) => {
                    if newly_occupied {
                        shard.channels.remove(channel);
                        self.count_owned(-1.0);
                    }
                    return sink.send(origin.node, channel, body);
                }
            };
            let user_id = member.user_id.clone();
            if entry
                .roster
                .get_or_insert_with(Roster::default)
                .join(member)
            {
                entry.member_added(channel, &user_id, Some(socket), sink);
            }
            user = Some(user_id.into_boxed_str());
        }
        let mut frames = vec![entry.succeeded_frame(channel)];
        let roster = entry.roster_ids();
        let subscriber = Subscriber {
            node: node.clone(),
            incarnation: origin.incarnation,
            user,
        };
        entry.sockets.insert(socket, subscriber);
        entry.add_interest(&node);
        if newly_occupied {
            sink.webhook(WebhookEvent::ChannelOccupied {
                channel: channel.into(),
            });
        }
        if config.subscription_count && counted(kind) {
            let now = Instant::now();
            if entry.count_throttled(now) {
                shard.count_pending.insert(channel.into());
            } else {
                shard.count_pending.remove(channel);
                let count = entry.count_frame(channel, now, sink);
                entry.deliver(channel, count.clone(), Some(socket), sink);
                frames.push(count);
            }
        }
        if kind.cache {
            match shard.cache.get(channel) {
                Some(cached) if cached.expires > Instant::now() => {
                    frames.push(cached.frame.clone())
                }
                _ => {
                    frames.push(codec::text_frame(&frame::cache_miss(channel)));
                    sink.webhook(WebhookEvent::CacheMiss {
                        channel: channel.into(),
                    });
                }
            }
        }
        sink.send(origin.node, channel, answer(true, frames, roster));
    }

    /// Removes a socket: `member_removed` on its user's last connection in the mesh,
    /// `channel_vacated` when the channel empties.
    fn unsubscribe(&self, shard: &mut Shard, channel: &str, socket: SocketId, sink: &mut dyn Sink) {
        let config = self.config.get();
        let Entry::Occupied(mut entry) = shard.channels.entry(channel.into()) else {
            return;
        };
        let state = entry.get_mut();
        let Some(gone) = state.sockets.remove(&socket) else {
            return;
        };
        state.remove_interest(&gone.node);
        if let (Some(user_id), Some(roster)) = (gone.user, state.roster.as_mut()) {
            if roster.leave(&user_id) {
                state.member_removed(channel, &user_id, sink);
            }
        }
        if state.sockets.is_empty() {
            entry.remove();
            shard.count_pending.remove(channel);
            self.count_owned(-1.0);
            sink.webhook(WebhookEvent::ChannelVacated {
                channel: channel.into(),
            });
        } else if config.subscription_count && counted(ChannelKind::of(channel)) {
            let now = Instant::now();
            if state.count_throttled(now) {
                shard.count_pending.insert(channel.into());
            } else {
                shard.count_pending.remove(channel);
                let count = state.count_frame(channel, now, sink);
                state.deliver(channel, count, None, sink);
            }
        }
    }

    /// Numbers the event and sends it once to every node with subscribers; on cache
    /// channels it becomes the cached event.
    fn publish(
        &self,
        shard: &mut Shard,
        origin: &str,
        channel: &str,
        publish: Publish,
        sink: &mut dyn Sink,
    ) {
        let ttl = Duration::from_secs(self.config.get().cache_ttl_secs);
        if publish.cache && ChannelKind::of(channel).cache {
            self.store_cache(shard, channel, publish.frame.clone(), &publish.data, ttl);
        }
        let stats = match shard.channels.get_mut(channel) {
            Some(state) => {
                state.deliver(
                    channel,
                    publish.frame,
                    publish.except.map(SocketId::from),
                    sink,
                );
                Some(state.stats())
            }
            None => None,
        };
        reply(origin, channel, publish.request_id, stats, sink);
    }

    fn query(
        &self,
        shard: &mut Shard,
        origin: &str,
        channel: &str,
        query: Query,
        sink: &mut dyn Sink,
    ) {
        let state = shard.channels.get(channel);
        let users = match (query.users, state) {
            (true, Some(state)) => state.roster_ids(),
            _ => Vec::new(),
        };
        let now = Instant::now();
        let cache = shard
            .cache
            .get(channel)
            .filter(|c| c.expires > now)
            .map(|c| mesh::CachedEvent {
                data: c.data.to_string(),
                ttl_secs: c.expires.saturating_duration_since(now).as_secs(),
            });
        let answer = Reply {
            request_id: query.request_id,
            stats: state.map(OwnedChannel::stats),
            users,
            cache,
            ..Reply::default()
        };
        sink.send(origin, channel, Body::Reply(answer));
    }

    /// Adds a node's sockets after the channel's owner changed. A channel this node did
    /// not hold yet settles (see [`Settling`]): its sockets join without events. Sockets
    /// added to a live channel are joins like any other, without an answer.
    fn resync(
        &self,
        shard: &mut Shard,
        origin: Origin<'_>,
        channel: &str,
        resync: Resync,
        sink: &mut dyn Sink,
    ) {
        let kind = ChannelKind::of(channel);
        let entry = match shard.channels.entry(channel.into()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                self.count_owned(1.0);
                let settling = Settling {
                    told: HashMap::new(),
                    queued: Vec::new(),
                    view_version: origin.view_version,
                    since: Instant::now(),
                };
                e.insert(OwnedChannel {
                    settling: Some(Box::new(settling)),
                    ..OwnedChannel::default()
                })
            }
        };
        let node = entry.node_key(origin.node);
        tracing::debug!(
            channel,
            from = origin.node,
            view_version = origin.view_version,
            sockets = resync.sockets.len(),
            settling = entry.settling.is_some(),
            "resync"
        );
        entry.newest_view = entry.newest_view.max(origin.view_version);
        let settling = entry.settling.is_some();
        tracing::debug!(
            channel,
            from = origin.node,
            view_version = origin.view_version,
            sockets = resync.sockets.len(),
            settling,
            "resync"
        );
        for subscribe in resync.sockets {
            let Some(socket) = subscribe.socket.map(SocketId::from) else {
                continue;
            };
            if entry.sockets.contains_key(&socket) {
                continue;
            }
            let mut user = None;
            if kind.is_presence() {
                let Some(member) = member_of(subscribe.member) else {
                    continue;
                };
                let user_id = member.user_id.clone();
                let first = entry
                    .roster
                    .get_or_insert_with(Roster::default)
                    .join(member);
                if first && !settling {
                    entry.member_added(channel, &user_id, Some(socket), sink);
                }
                user = Some(user_id.into_boxed_str());
            }
            let subscriber = Subscriber {
                node: node.clone(),
                incarnation: origin.incarnation,
                user,
            };
            entry.sockets.insert(socket, subscriber);
            entry.add_interest(&node);
        }
        if let Some(settling) = entry.settling.as_mut() {
            settling.view_version = settling.view_version.max(origin.view_version);
            settling
                .told
                .entry(node)
                .or_default()
                .extend(resync.told_members.into_iter().map(String::into_boxed_str));
        }
    }

    /// Ends the settling channels whose nodes are all done (every node finished view
    /// `done_version`) or that waited `deadline`: members the nodes' subscribers knew and
    /// that have no socket left are removed (once), members nobody was told about are
    /// added, an empty channel is vacated; then the messages that waited are handled in
    /// order.
    pub fn settle(
        &self,
        _now: Instant,
        done_version: u64,
        deadline: Duration,
        sink: &mut dyn Sink,
    ) {
        let now = Instant::now();
        {
            let mut takeover = self.takeover();
            if takeover
                .as_ref()
                .is_some_and(|t| t.version <= done_version || now >= t.since + deadline)
            {
                *takeover = None;
            }
        }
        for mut shard in self.shards() {
            let settling: Vec<Box<str>> = shard
                .channels
                .iter()
                .filter(|(_, c)| {
                    c.settling.as_ref().is_some_and(|s| {
                        s.view_version <= done_version || now >= s.since + deadline
                    })
                })
                .map(|(name, _)| name.clone())
                .collect();
            for name in settling {
                self.settle_channel(&mut shard, &name, sink);
            }
        }
    }

    fn settle_channel(&self, shard: &mut Shard, channel: &str, sink: &mut dyn Sink) {
        let Some(state) = shard.channels.get_mut(channel) else {
            return;
        };
        let Some(settling) = state.settling.take() else {
            return;
        };
        let Settling {
            told,
            queued,
            view_version,
            since,
        } = *settling;
        tracing::debug!(
            channel,
            view_version,
            waited_ms = since.elapsed().as_millis() as u64,
            nodes = ?told.keys().collect::<Vec<_>>(),
            queued = queued.len(),
            "settled a rebuilt channel"
        );
        let now_members: HashSet<Box<str>> = state
            .roster_ids()
            .into_iter()
            .map(String::into_boxed_str)
            .collect();
        // The cluster's change, once: webhooks.
        let known: HashSet<&Box<str>> = told.values().flatten().collect();
        for gone in known.iter().filter(|u| !now_members.contains(**u)) {
            sink.webhook(WebhookEvent::MemberRemoved {
                channel: channel.into(),
                user_id: (**gone).clone(),
            });
        }
        for new in now_members.iter().filter(|u| !known.contains(u)) {
            sink.webhook(WebhookEvent::MemberAdded {
                channel: channel.into(),
                user_id: new.clone(),
            });
        }
        // Each node's subscribers: what they were told, corrected to what is.
        for (node, told) in &told {
            for gone in told.iter().filter(|u| !now_members.contains(*u)) {
                let frame = codec::text_frame(&frame::member_removed(channel, gone));
                let deliver = Deliver {
                    frame,
                    member_removed: gone.to_string(),
                    ..Deliver::default()
                };
                state.send_to(node, channel, deliver, sink);
            }
            for new in now_members.iter().filter(|u| !told.contains(*u)) {
                let Some(info) = state.roster.as_ref().and_then(|r| r.info(new)) else {
                    continue;
                };
                let deliver = Deliver {
                    frame: codec::text_frame(&frame::member_added(channel, new, info)),
                    member_added: new.to_string(),
                    ..Deliver::default()
                };
                state.send_to(node, channel, deliver, sink);
            }
        }
        if state.sockets.is_empty() {
            shard.channels.remove(channel);
            self.count_owned(-1.0);
            // Only a channel some node resynced was occupied before; a placeholder held
            // for a takeover was not (a false vacated would cancel the occupied after it).
            if !told.is_empty() {
                sink.webhook(WebhookEvent::ChannelVacated {
                    channel: channel.into(),
                });
            }
        }
        for (node, incarnation, body) in queued {
            let origin = Origin {
                node: &node,
                incarnation,
                view_version: 0,
            };
            self.handle_locked(shard, origin, channel, body, sink);
        }
    }

    /// Follows a new view: channels another node owns now are dropped without a word
    /// (their nodes rebuild them at the new owner), and the sockets of nodes that left
    /// the view or restarted (a new incarnation) are removed like unsubscribes.
    pub fn follow_view(
        &self,
        _now: Instant,
        me: &str,
        previous: &ClusterView,
        view: &ClusterView,
        sink: &mut dyn Sink,
    ) {
        let forgot = self
            .forgot_all
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        self.view_version.store(view.version, Ordering::Relaxed);
        *self.takeover() = Some(Takeover {
            me: me.into(),
            version: view.version,
            previous: if forgot {
                ClusterView::default()
            } else {
                previous.clone()
            },
            current: view.clone(),
            since: Instant::now(),
        });
        let alive = |node: &str, incarnation: u64| {
            node == me
                || view
                    .members
                    .get(node)
                    .and_then(|m| m.node.as_ref())
                    .is_some_and(|n| n.incarnation == incarnation)
        };
        for mut shard in self.shards() {
            let names: Vec<Box<str>> = shard.channels.keys().cloned().collect();
            for name in names {
                let newer = shard
                    .channels
                    .get(&name)
                    .is_some_and(|c| c.newest_view > view.version);
                let elsewhere = view.owner_of(&self.app_id, &name).is_some_and(|o| o != me);
                if elsewhere && !newer {
                    shard.channels.remove(&name);
                    shard.count_pending.remove(&name);
                    shard.cache.remove(&name);
                    self.count_owned(-1.0);
                    continue;
                }
                let Some(state) = shard.channels.get_mut(&name) else {
                    continue;
                };
                let dead: Vec<SocketId> = state
                    .sockets
                    .iter()
                    .filter(|(_, s)| !alive(&s.node, s.incarnation))
                    .map(|(id, _)| *id)
                    .collect();
                // The gone nodes lose their interest first, so that nothing is sent to them.
                let mut gone_users = Vec::new();
                for socket in dead {
                    if let Some(gone) = state.sockets.remove(&socket) {
                        state.remove_interest(&gone.node);
                        gone_users.extend(gone.user);
                    }
                }
                for user_id in gone_users {
                    if state.roster.as_mut().is_some_and(|r| r.leave(&user_id)) {
                        state.member_removed(&name, &user_id, sink);
                    }
                }
                if state.sockets.is_empty() {
                    shard.channels.remove(&name);
                    shard.count_pending.remove(&name);
                    self.count_owned(-1.0);
                    sink.webhook(WebhookEvent::ChannelVacated {
                        channel: name.clone(),
                    });
                }
            }
        }
    }

    /// Drops every channel at once (the node lost its lease and may no longer own any).
    pub fn forget_all(&self) {
        // The next view's channels are all new to this node, whatever it owned before.
        self.forgot_all
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for mut shard in self.shards() {
            let owned = shard.channels.len();
            *shard = Shard::default();
            self.count_owned(-(owned as f64));
        }
    }

    /// Sends the counts that changed while throttled, once their interval has passed.
    pub fn flush_subscription_counts(&self, now: Instant, sink: &mut dyn Sink) {
        for mut shard in self.shards() {
            if shard.count_pending.is_empty() {
                continue;
            }
            let shard = &mut *shard;
            let channels = &mut shard.channels;
            shard
                .count_pending
                .retain(|name| match channels.get_mut(name) {
                    Some(state) if state.count_throttled(now) => true,
                    Some(state) => {
                        let count = state.count_frame(name, now, sink);
                        state.deliver(name, count, None, sink);
                        false
                    }
                    None => false,
                });
        }
    }

    fn store_cache(
        &self,
        shard: &mut Shard,
        channel: &str,
        frame: Bytes,
        data: &str,
        ttl: Duration,
    ) {
        let now = Instant::now();
        if shard.cache.len() >= self.cache_entries_per_shard && !shard.cache.contains_key(channel) {
            shard.cache.retain(|_, c| c.expires > now);
            if shard.cache.len() >= self.cache_entries_per_shard {
                let oldest = shard
                    .cache
                    .iter()
                    .min_by_key(|(_, c)| c.expires)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    shard.cache.remove(&oldest);
                }
            }
        }
        shard.cache.insert(
            channel.into(),
            CachedEvent {
                frame,
                data: data.into(),
                expires: now + ttl,
            },
        );
    }

    /// Owned channels whose name starts with `prefix`, with their occupancy.
    fn occupied(&self, prefix: &str) -> Vec<ChannelEntry> {
        let mut out = Vec::new();
        for shard in self.shards() {
            for (name, state) in &shard.channels {
                if name.starts_with(prefix) && !state.sockets.is_empty() {
                    out.push(ChannelEntry {
                        name: name.to_string(),
                        stats: Some(state.stats()),
                    });
                }
            }
        }
        out
    }
}

/// Asks every node with subscribers of `channel` to close them (terminate_connections
/// on a user's `#server-to-user-` channel).
fn close_sockets(shard: &Shard, channel: &str, sink: &mut dyn Sink) -> ChannelStats {
    let Some(state) = shard.channels.get(channel) else {
        return ChannelStats::default();
    };
    for (node, _) in &state.interest {
        let close = CloseSockets {
            code: ErrorCode::Unauthorized.as_u16().into(),
            reason: "You got disconnected by the app.".into(),
        };
        sink.send(node, channel, Body::CloseSockets(close));
    }
    state.stats()
}

/// Answers a request that asked for one (`request_id` non-zero).
fn reply(
    origin: &str,
    channel: &str,
    request_id: u64,
    stats: Option<ChannelStats>,
    sink: &mut dyn Sink,
) {
    if request_id != 0 {
        let answer = Reply {
            request_id,
            stats,
            ..Reply::default()
        };
        sink.send(origin, channel, Body::Reply(answer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AppConfig;
    use relaymesh_proto::mesh::{Subscribe, Unsubscribe};
    use relaymesh_proto::ring::Ring;

    #[derive(Default)]
    struct Recorded {
        sent: Vec<(String, String, Body)>,
        webhooks: Vec<WebhookEvent>,
    }

    impl Sink for Recorded {
        fn send(&mut self, node: &str, channel: &str, body: Body) {
            self.sent.push((node.into(), channel.into(), body));
        }
        fn webhook(&mut self, event: WebhookEvent) {
            self.webhooks.push(event);
        }
    }

    impl Recorded {
        fn take(&mut self) -> Recorded {
            std::mem::take(self)
        }

        /// The frames delivered to each node, as text.
        fn delivered(&self) -> Vec<(String, String)> {
            self.sent
                .iter()
                .filter_map(|(node, _, body)| match body {
                    Body::Deliver(d) => Some((node.clone(), frame_text(&d.frame))),
                    _ => None,
                })
                .collect()
        }

        fn result(&self) -> (bool, Vec<String>) {
            self.sent
                .iter()
                .find_map(|(_, _, body)| match body {
                    Body::SubscribeResult(r) => {
                        Some((r.accepted, r.frames.iter().map(frame_text).collect()))
                    }
                    _ => None,
                })
                .expect("a subscribe result")
        }

        fn webhook_names(&self) -> Vec<String> {
            self.webhooks
                .iter()
                .map(|w| {
                    let json = serde_json::to_value(w).unwrap();
                    json["name"].as_str().unwrap_or("?").to_owned()
                })
                .collect()
        }
    }

    /// The text of a server frame (unmasked, short payloads in these tests).
    fn frame_text(frame: &Bytes) -> String {
        let start = match frame[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        String::from_utf8(frame[start..].to_vec()).unwrap()
    }

    fn owner(max_members: usize) -> Owner {
        let config = AppConfig {
            max_presence_members: max_members,
            ..AppConfig::development()
        };
        let owner = Owner::new("app-id".into(), SharedAppConfig::new(config), 100);
        // The view the test's messages come with (Origin::view_version 1).
        owner.view_version.store(1, Ordering::Relaxed);
        owner
    }

    fn socket(seq: u64) -> SocketId {
        SocketId { node: 1, seq }
    }

    fn join(owner: &Owner, node: &str, channel: &str, seq: u64, user: Option<&str>) -> Recorded {
        let mut sink = Recorded::default();
        let member = user.map(|id| mesh::Member {
            user_id: id.into(),
            info: Bytes::new(),
        });
        let body = Body::Subscribe(Subscribe {
            socket: Some(socket(seq).into()),
            member,
        });
        owner.handle(Instant::now(), origin(node), channel, body, &mut sink);
        sink
    }

    fn origin(node: &str) -> Origin<'_> {
        Origin {
            node,
            incarnation: 1,
            view_version: 1,
        }
    }

    fn leave(owner: &Owner, channel: &str, seq: u64) -> Recorded {
        let mut sink = Recorded::default();
        let body = Body::Unsubscribe(Unsubscribe {
            socket: Some(socket(seq).into()),
        });
        owner.handle(Instant::now(), origin("any"), channel, body, &mut sink);
        sink
    }

    #[test]
    fn presence_events_fire_once_per_user_across_nodes() {
        let owner = owner(100);
        let room = "presence-room";
        let first = join(&owner, "a", room, 1, Some("u1"));
        assert!(first.result().0);
        assert!(
            first.result().1[0].contains(r#"\"ids\":[\"u1\"]"#),
            "{:?}",
            first.result()
        );
        assert_eq!(first.webhook_names(), ["member_added", "channel_occupied"]);

        // The same user on another node: no member_added, no webhook.
        let again = join(&owner, "b", room, 2, Some("u1"));
        assert!(again.delivered().is_empty());
        assert!(again.webhooks.is_empty());

        // A new user: member_added once to each node with subscribers.
        let second = join(&owner, "b", room, 3, Some("u2"));
        let delivered = second.delivered();
        assert_eq!(delivered.len(), 2, "{delivered:?}");
        assert!(delivered
            .iter()
            .all(|(_, f)| f.contains("member_added") && f.contains("u2")));
        let nodes: Vec<&str> = delivered.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(nodes, ["a", "b"]);

        // u1 leaves on a but stays on b: nothing; a has no subscriber left.
        let gone = leave(&owner, room, 1);
        assert!(gone.delivered().is_empty() && gone.webhooks.is_empty());
        let last = leave(&owner, room, 2);
        assert_eq!(
            last.delivered(),
            [("b".to_owned(), last.delivered()[0].1.clone())]
        );
        assert!(last.delivered()[0].1.contains("member_removed"));
        assert_eq!(last.webhook_names(), ["member_removed"]);
        assert_eq!(
            leave(&owner, room, 3).webhook_names(),
            ["member_removed", "channel_vacated"]
        );
    }

    #[test]
    fn publish_is_numbered_and_sent_once_per_interested_node() {
        let owner = owner(100);
        for (node, seq) in [("a", 1), ("a", 2), ("b", 3)] {
            join(&owner, node, "news", seq, None);
        }
        let mut sink = Recorded::default();
        for _ in 0..2 {
            let publish = Publish {
                request_id: 7,
                frame: codec::text_frame("{}"),
                ..Publish::default()
            };
            owner.handle(
                Instant::now(),
                origin("c"),
                "news",
                Body::Publish(publish),
                &mut sink,
            );
        }
        let sent = sink.take().sent;
        let seqs: Vec<(String, u64)> = sent
            .iter()
            .filter_map(|(n, _, b)| match b {
                Body::Deliver(d) => Some((n.clone(), d.seq)),
                _ => None,
            })
            .collect();
        assert_eq!(
            seqs,
            [
                ("a".into(), 1),
                ("b".into(), 1),
                ("a".into(), 2),
                ("b".into(), 2)
            ]
        );
        let replies: Vec<(String, u32)> = sent
            .iter()
            .filter_map(|(n, _, b)| match b {
                Body::Reply(r) => Some((n.clone(), r.stats.unwrap().subscription_count)),
                _ => None,
            })
            .collect();
        assert_eq!(replies, [("c".into(), 3), ("c".into(), 3)]);
    }

    #[test]
    fn a_full_channel_refuses_and_a_repeat_changes_nothing() {
        let owner = owner(1);
        join(&owner, "a", "presence-x", 1, Some("u1"));
        let full = join(&owner, "b", "presence-x", 2, Some("u2"));
        let (accepted, frames) = full.result();
        assert!(!accepted);
        assert!(frames[0].contains("subscription_error") && frames[0].contains("4100"));
        // The same user may still open more connections.
        assert!(join(&owner, "b", "presence-x", 3, Some("u1")).result().0);
        // A repeated subscription is answered again without events.
        let repeat = join(&owner, "a", "presence-x", 1, Some("u1"));
        assert!(repeat.result().0 && repeat.delivered().is_empty() && repeat.webhooks.is_empty());
        // Unknown sockets leave without effect.
        let unknown = leave(&owner, "presence-x", 2);
        assert!(unknown.sent.is_empty() && unknown.webhooks.is_empty());
    }

    fn resync(owner: &Owner, node: &str, channel: &str, sockets: &[(u64, &str)], told: &[&str]) {
        let resync = Resync {
            sockets: sockets
                .iter()
                .map(|(seq, user)| Subscribe {
                    socket: Some(socket(*seq).into()),
                    member: Some(mesh::Member {
                        user_id: (*user).into(),
                        info: Bytes::new(),
                    }),
                })
                .collect(),
            told_members: told.iter().map(|u| (*u).to_owned()).collect(),
        };
        owner.handle(
            Instant::now(),
            origin(node),
            channel,
            Body::Resync(resync),
            &mut Recorded::default(),
        );
    }

    #[test]
    fn a_rebuilt_channel_removes_only_the_members_that_left() {
        let owner = owner(100);
        let room = "presence-moved";
        // u3 was only on a node that died: nobody resyncs it.
        resync(&owner, "a", room, &[(1, "u1")], &["u1", "u2", "u3"]);
        resync(
            &owner,
            "b",
            room,
            &[(2, "u2"), (3, "u1")],
            &["u1", "u2", "u3"],
        );
        let mut held = Recorded::default();
        let publish = Publish {
            frame: codec::text_frame("{}"),
            ..Publish::default()
        };
        owner.handle(
            Instant::now(),
            origin("c"),
            room,
            Body::Publish(publish),
            &mut held,
        );
        assert!(
            held.sent.is_empty(),
            "a settling channel holds messages back"
        );

        let mut settled = Recorded::default();
        owner.settle(Instant::now(), 0, Duration::from_secs(60), &mut settled);
        assert!(
            settled.sent.is_empty(),
            "not every node is done with view 1 yet"
        );
        owner.settle(Instant::now(), 1, Duration::from_secs(60), &mut settled);
        let delivered = settled.delivered();
        assert_eq!(delivered.len(), 4, "{delivered:?}");
        assert!(delivered[..2]
            .iter()
            .all(|(_, f)| f.contains("member_removed") && f.contains("u3")));
        assert!(delivered[2..].iter().all(|(_, f)| f == "{}"));
        assert_eq!(settled.webhook_names(), ["member_removed"]);
    }

    fn view(members: &[(&str, u64)]) -> ClusterView {
        use relaymesh_proto::control::{Member, NodeInfo, NodeState, ViewUpdate};
        let mut view = ClusterView::default();
        let members = members
            .iter()
            .map(|(id, incarnation)| Member {
                node: Some(NodeInfo {
                    node_id: (*id).into(),
                    incarnation: *incarnation,
                    ..NodeInfo::default()
                }),
                state: NodeState::Active as i32,
            })
            .collect();
        let update = ViewUpdate {
            version: 1,
            full: true,
            members,
            ..ViewUpdate::default()
        };
        view.apply(update).unwrap();
        view
    }

    #[test]
    fn a_new_view_drops_moved_channels_and_the_sockets_of_gone_nodes() {
        let owner = owner(100);
        let ring = Ring::new(["a", "b"]);
        let mine = (0..)
            .map(|i| format!("presence-{i}"))
            .find(|c| ring.owner("app-id", c) == Some("a"))
            .unwrap();
        let theirs = (0..)
            .map(|i| format!("presence-{i}"))
            .find(|c| ring.owner("app-id", c) == Some("b"))
            .unwrap();
        join(&owner, "a", &mine, 1, Some("u1"));
        join(&owner, "b", &mine, 2, Some("u2"));
        join(&owner, "c", &mine, 3, Some("u3"));
        join(&owner, "a", &theirs, 4, Some("u1"));
        // c is gone, b restarted (another incarnation), a is this node.
        let mut sink = Recorded::default();
        let next = view(&[("a", 1), ("b", 2)]);
        owner.follow_view(Instant::now(), "a", &next, &next, &mut sink);
        // One member_removed per user, only to the node still there, one webhook each.
        let removed: Vec<(String, String)> = sink
            .delivered()
            .into_iter()
            .filter(|(_, f)| f.contains("member_removed"))
            .collect();
        let to = |user: &str| -> Vec<&str> {
            removed
                .iter()
                .filter(|(_, f)| f.contains(user))
                .map(|(n, _)| n.as_str())
                .collect()
        };
        assert_eq!((to("u3"), to("u2")), (vec!["a"], vec!["a"]));
        assert_eq!(sink.webhook_names(), ["member_removed", "member_removed"]);
        let mut query = Recorded::default();
        let q = Body::Query(Query {
            request_id: 1,
            users: true,
        });
        owner.handle(Instant::now(), origin("a"), &mine, q.clone(), &mut query);
        owner.handle(Instant::now(), origin("a"), &theirs, q, &mut query);
        let users: Vec<Vec<String>> = query
            .sent
            .iter()
            .filter_map(|(_, _, b)| match b {
                Body::Reply(r) => Some(r.users.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(users, [vec!["u1".to_owned()], vec![]]);
    }
}
