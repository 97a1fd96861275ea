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
//!
//! `channel.rs` holds one channel's state, `subscribe.rs` and `requests.rs` what the
//! messages about one channel do to it, `counts.rs` and `cache.rs` the subscription counts
//! and the cached events, `settle.rs` and `view.rs` the rebuilding of channels that moved
//! here and the following of views. The owner never reads the clock: every call that
//! depends on time takes `now`. What goes to the sink depends only on the calls and their
//! order: the passes over every channel go in name order, not hash order. (Which cached
//! event a full cache drops still depends on the shards' hashing: the bound is per shard.)

mod cache;
mod channel;
mod counts;
mod left;
mod presence;
mod requests;
mod settle;
mod subscribe;
#[cfg(test)]
mod testkit;
mod view;

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::{ChannelEntry, Reply};

use crate::cluster::Takeover;
use crate::config::SharedAppConfig;
use crate::outbox::SocketId;
use crate::telemetry;
use crate::webhooks::WebhookEvent;
use cache::Cache;
use channel::OwnedChannel;
use left::Left;
pub use presence::Roster;
use requests::terminate;

const SHARDS: usize = 64;

/// Where the owner's decisions go.
pub trait Sink {
    /// A message for the edge of `node` (this node included).
    fn send(&mut self, node: &str, channel: &str, body: Body);
    fn webhook(&mut self, event: WebhookEvent);
}

#[derive(Default)]
struct Shard {
    channels: HashMap<Box<str>, OwnedChannel>,
    cache: Cache,
    /// Channels whose count changed while throttled; flushed by `flush_subscription_counts`.
    count_pending: HashSet<Box<str>>,
    /// Sockets that left before this owner saw them join.
    left: Left,
}

/// The owned channels of one app.
pub struct Owner {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    app_id: Arc<str>,
    config: SharedAppConfig,
    cache_entries_per_shard: usize,
    /// The cluster core's takeover, while it lasts.
    takeover: Mutex<Option<Arc<Takeover>>>,
    /// The view this node follows.
    view_version: AtomicU64,
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
            view_version: AtomicU64::new(0),
        }
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

    /// The channel names `pick` takes from every shard, sorted. The rare passes over many
    /// channels go in this order, so that what they send does not depend on the hashes
    /// that place channels in shards and maps; each channel is then handled under its
    /// shard's lock again, which lets the hot path in between.
    fn sorted_names(&self, mut pick: impl FnMut(&mut Shard, &mut Vec<Box<str>>)) -> Vec<Box<str>> {
        let mut names = Vec::new();
        for mut shard in self.shards() {
            pick(&mut shard, &mut names);
        }
        names.sort_unstable();
        names
    }

    fn count_owned(&self, delta: f64) {
        metrics::gauge!(telemetry::OWNED_CHANNELS, "app" => self.app_id.clone()).increment(delta);
    }

    /// Repeats to `node` the number of the last frame of `channel` sent to it (after a
    /// send failed), so that it sees what it missed even if no frame follows.
    pub fn probe(&self, channel: &str, node: &str, sink: &mut dyn Sink) {
        if let Some(state) = self.shard(channel).channels.get(channel) {
            state.probe(node, channel, sink);
        }
    }

    /// Handles one owner-bound message about `channel` from `origin`, at `now`.
    pub fn handle(
        &self,
        now: Instant,
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
            return self.resync(&mut shard, now, origin, channel, resync, sink);
        }
        if let Some(body) = self.hold(&mut shard, now, origin, channel, body) {
            self.handle_locked(&mut shard, now, origin, channel, body, sink);
        }
    }

    fn handle_locked(
        &self,
        shard: &mut Shard,
        now: Instant,
        origin: Origin<'_>,
        channel: &str,
        body: Body,
        sink: &mut dyn Sink,
    ) {
        match body {
            Body::Subscribe(s) => self.subscribe(shard, now, origin, channel, s, sink),
            Body::Unsubscribe(u) => {
                if let Some(socket) = u.socket.map(SocketId::from) {
                    self.unsubscribe(shard, now, channel, socket, sink);
                    shard.left.record(channel, socket, u.attempt, now);
                }
            }
            Body::Publish(p) => self.publish(shard, now, origin.node, channel, p, sink),
            Body::Query(q) => self.query(shard, now, origin.node, channel, q, sink),
            Body::Terminate(t) => terminate(shard, origin.node, channel, t, sink),
            Body::ListChannels(_)
            | Body::Resync(_)
            | Body::Synced(_)
            | Body::SubscribeResult(_)
            | Body::Deliver(_)
            | Body::Reply(_)
            | Body::CloseSockets(_) => {}
        }
    }

    /// Owned channels whose name starts with `prefix`, with their occupancy, by name.
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
        out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use relaymesh_proto::mesh::ListChannels;

    use super::*;
    use crate::config::AppConfig;
    use crate::owner::testkit::{epoch, origin, owner_with, resync, subscribe, view, Recorded};

    /// Feeds `owner` joins on many channels from several nodes, a view without one of
    /// them, resyncs of channels that moved here, a settle, a count flush and a listing;
    /// returns everything it sent, as text.
    fn run(owner: &Owner) -> String {
        let mut sink = Recorded::default();
        let at = |secs| epoch() + Duration::from_secs(secs);
        for i in 0..50 {
            let channel = format!("presence-{i}");
            // c and d come first in the channel's interest: the order in which their
            // sockets leave decides the order of the nodes left.
            let joins = [
                ("c", "u3"),
                ("d", "u6"),
                ("a", "u1"),
                ("b", "u2"),
                ("c", "u4"),
                ("b", "u5"),
            ];
            for (seq, (node, user)) in (1..).zip(joins) {
                let body = subscribe(seq, Some(user));
                owner.handle(at(0), origin(node), &channel, body, &mut sink);
            }
            // Only c subscribed here: vacated when c goes.
            let body = subscribe(1, None);
            owner.handle(at(0), origin("c"), &format!("c-{i}"), body, &mut sink);
        }
        // Counted channels over the throttle threshold: their last count waits for a flush.
        for i in 0..10 {
            for seq in 1..=102 {
                let node = ["a", "b"][seq as usize % 2];
                let body = subscribe(seq, None);
                owner.handle(at(0), origin(node), &format!("count-{i}"), body, &mut sink);
            }
        }
        // c and d are gone: their users leave every channel this node still owns.
        let next = view(&[("a", 1), ("b", 1)]);
        owner.follow_view("a", &next, &mut sink);
        for i in 0..50 {
            let channel = format!("presence-moved-{i}");
            // u7 and u9 are gone, u8 is new to everyone, u2 to node b.
            let (told, on_a) = (["u1", "u2", "u7", "u9"], [(1, "u1"), (2, "u8")]);
            resync(owner, &mut sink, "a", &channel, &on_a, &told);
            resync(owner, &mut sink, "b", &channel, &[(3, "u2")], &told[..1]);
        }
        owner.settle(at(2), 1, None, &mut sink);
        owner.flush_subscription_counts(at(10), &mut sink);
        let list = Body::ListChannels(ListChannels::default());
        owner.handle(at(10), origin("b"), "", list, &mut sink);
        let sent: Vec<_> = sink
            .sent
            .iter()
            .map(|(node, channel, body)| format!("{node} {channel} {body:?}"))
            .collect();
        format!("{sent:#?}\n{:#?}", sink.webhooks)
    }

    #[test]
    fn the_same_calls_send_the_same_messages_and_webhooks() {
        let config = AppConfig {
            subscription_count: true,
            ..AppConfig::development()
        };
        // Each owner hashes with its own keys: its shards and maps iterate in another order.
        let first = run(&owner_with(config.clone()));
        let second = run(&owner_with(config));
        for what in [
            "member_removed",
            "MemberAdded",
            "subscription_count",
            "ChannelVacated",
        ] {
            assert!(first.contains(what), "{what} was not exercised");
        }
        // Not assert_eq: the texts are long.
        assert!(first == second, "the runs differ");
    }
}
