//! Local subscriptions of one app and their fan-out.
//!
//! Channels live in shards keyed by a hash of the name, one lock each, so publishes to
//! different channels do not contend. Every change that other subscribers must see in
//! order (a join with its roster, a presence change, a cache replay, a publish) happens
//! under the channel's shard lock, so a joining presence member always gets its roster
//! before any member_added that follows it, and never misses one.

mod presence;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use relaymesh_proto::channel::{ChannelAuth, ChannelKind};
use relaymesh_proto::frame::{self, PresenceMember};

use crate::edge::outbox::{Conn, Pushed, SocketId};
use crate::edge::ws::codec;
use crate::webhooks::{WebhookEvent, Webhooks};
pub use presence::Roster;

const SHARDS: usize = 64;

/// Above this many subscribers a channel's count is sent at most every [`COUNT_INTERVAL`]
/// (protocol §13.1).
const COUNT_THROTTLE_SUBSCRIBERS: usize = 100;
const COUNT_INTERVAL: Duration = Duration::from_secs(5);

/// The last event published on a cache channel.
#[derive(Clone)]
pub struct CachedEvent {
    /// The encoded frame, replayed as is.
    pub frame: Bytes,
    /// The event's data string, for `GET /channels/{name}?info=cache`.
    pub data: Arc<str>,
    pub expires: Instant,
}

#[derive(Default)]
struct Channel {
    subscribers: HashMap<SocketId, Arc<Conn>>,
    /// Present on presence channels only.
    roster: Option<Roster>,
    /// When the subscription count was last sent (subscription counting).
    count_sent: Option<Instant>,
}

impl Channel {
    /// Sends the subscription count to every subscriber.
    fn send_count(&mut self, channel: &str, now: Instant, webhooks: &Webhooks) {
        self.count_sent = Some(now);
        let count = self.subscribers.len();
        let frame = codec::text_frame(&frame::subscription_count(channel, count));
        for conn in self.subscribers.values() {
            conn.push(frame.clone());
        }
        webhooks.raise(WebhookEvent::SubscriptionCount {
            channel: channel.into(),
            subscription_count: count,
        });
    }
}

#[derive(Default)]
struct Shard {
    channels: HashMap<Box<str>, Channel>,
    cache: HashMap<Box<str>, CachedEvent>,
    /// Channels whose count changed while throttled; flushed by `flush_subscription_counts`.
    count_pending: HashSet<Box<str>>,
}

/// Whether a channel's subscription count is sent when counting is on.
fn counted(kind: ChannelKind) -> bool {
    matches!(kind.auth, ChannelAuth::Public | ChannelAuth::Private)
}

/// Why a subscription was refused by the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    /// The presence channel already has its maximum of distinct members.
    PresenceFull(usize),
}

/// Occupancy of one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub subscription_count: usize,
    /// Distinct users, on presence channels.
    pub user_count: Option<usize>,
}

pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    webhooks: Webhooks,
    app_id: Arc<str>,
    cache_entries_per_shard: usize,
    subscriptions: AtomicI64,
}

/// After a subscription change: sends the count now, or marks it pending while throttled.
fn count_changed(
    state: &mut Channel,
    pending: &mut HashSet<Box<str>>,
    channel: &str,
    webhooks: &Webhooks,
) {
    let now = Instant::now();
    let throttled = state.subscribers.len() > COUNT_THROTTLE_SUBSCRIBERS
        && state.count_sent.is_some_and(|t| now < t + COUNT_INTERVAL);
    if throttled {
        pending.insert(channel.into());
    } else {
        pending.remove(channel);
        state.send_count(channel, now, webhooks);
    }
}

impl Hub {
    pub fn new(app_id: Arc<str>, webhooks: Webhooks, cache_entries_max: usize) -> Hub {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            webhooks,
            app_id,
            cache_entries_per_shard: cache_entries_max.div_ceil(SHARDS).max(1),
            subscriptions: AtomicI64::new(0),
        }
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, Shard> {
        let shard = &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS];
        // Critical sections only move entries between maps; a poisoned lock is still valid.
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn raise(&self, event: WebhookEvent) {
        self.webhooks.raise(event);
    }

    fn count_subscriptions(&self, delta: i64) {
        let now = self.subscriptions.fetch_add(delta, Ordering::Relaxed) + delta;
        metrics::gauge!(crate::telemetry::SUBSCRIPTIONS, "app" => self.app_id.clone())
            .set(now as f64);
    }

    /// Adds `conn` to `channel`, sends it `subscription_succeeded` (with the roster on
    /// presence channels), tells the other members about a new user and replays the cache.
    /// A presence channel holds at most `max_members` distinct users; with `count` the
    /// subscribers learn the new subscription count.
    pub fn subscribe(
        &self,
        channel: &str,
        kind: ChannelKind,
        conn: &Arc<Conn>,
        member: Option<PresenceMember>,
        max_members: usize,
        count: bool,
    ) -> Result<(), SubscribeError> {
        let mut shard = self.shard(channel);
        let shard = &mut *shard;
        let entry = shard.channels.entry(channel.into()).or_default();
        let newly_occupied = entry.subscribers.is_empty();
        if let Some(member) = member {
            let roster = entry.roster.get_or_insert_with(Roster::default);
            if !roster.contains(&member.user_id) && roster.len() >= max_members {
                if newly_occupied {
                    shard.channels.remove(channel);
                }
                return Err(SubscribeError::PresenceFull(max_members));
            }
            let user_id = member.user_id.clone();
            let first_connection = roster.join(member);
            conn.push_text(&frame::presence_subscription_succeeded(
                channel,
                roster.members(),
            ));
            if first_connection {
                if let Some(info) = roster.info(&user_id) {
                    let added = codec::text_frame(&frame::member_added(channel, &user_id, info));
                    for other in entry.subscribers.values() {
                        other.push(added.clone());
                    }
                }
                self.raise(WebhookEvent::MemberAdded {
                    channel: channel.into(),
                    user_id: user_id.into(),
                });
            }
        } else {
            conn.push_text(&frame::subscription_succeeded(channel));
        }
        entry.subscribers.insert(conn.socket_id, conn.clone());
        self.count_subscriptions(1);
        if newly_occupied {
            self.raise(WebhookEvent::ChannelOccupied {
                channel: channel.into(),
            });
        }
        if count && counted(kind) {
            count_changed(entry, &mut shard.count_pending, channel, &self.webhooks);
        }
        if kind.cache {
            match shard.cache.get(channel) {
                Some(cached) if cached.expires > Instant::now() => {
                    conn.push(cached.frame.clone());
                }
                _ => {
                    conn.push_text(&frame::cache_miss(channel));
                    self.raise(WebhookEvent::CacheMiss {
                        channel: channel.into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Sends `subscription_succeeded` again to a socket that re-subscribes, without side effects.
    pub fn acknowledge_again(&self, channel: &str, conn: &Conn) {
        let shard = self.shard(channel);
        match shard.channels.get(channel).and_then(|c| c.roster.as_ref()) {
            Some(roster) => conn.push_text(&frame::presence_subscription_succeeded(
                channel,
                roster.members(),
            )),
            None => conn.push_text(&frame::subscription_succeeded(channel)),
        };
    }

    /// Removes `socket` from `channel`; `user_id` is its presence identity there; with
    /// `count` the remaining subscribers learn the new subscription count.
    pub fn unsubscribe(&self, channel: &str, socket: SocketId, user_id: Option<&str>, count: bool) {
        let mut shard = self.shard(channel);
        let shard = &mut *shard;
        let Entry::Occupied(mut entry) = shard.channels.entry(channel.into()) else {
            return;
        };
        if entry.get_mut().subscribers.remove(&socket).is_none() {
            return;
        }
        self.count_subscriptions(-1);
        let state = entry.get_mut();
        if let (Some(user_id), Some(roster)) = (user_id, state.roster.as_mut()) {
            if roster.leave(user_id) {
                let removed = codec::text_frame(&frame::member_removed(channel, user_id));
                for other in state.subscribers.values() {
                    other.push(removed.clone());
                }
                self.raise(WebhookEvent::MemberRemoved {
                    channel: channel.into(),
                    user_id: user_id.into(),
                });
            }
        }
        if state.subscribers.is_empty() {
            entry.remove();
            shard.count_pending.remove(channel);
            self.raise(WebhookEvent::ChannelVacated {
                channel: channel.into(),
            });
        } else if count && counted(ChannelKind::of(channel)) {
            count_changed(state, &mut shard.count_pending, channel, &self.webhooks);
        }
    }

    /// Sends the counts that changed while throttled, once their interval has passed.
    pub fn flush_subscription_counts(&self, now: Instant) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            if shard.count_pending.is_empty() {
                continue;
            }
            let shard = &mut *shard;
            let channels = &mut shard.channels;
            let webhooks = &self.webhooks;
            shard
                .count_pending
                .retain(|name| match channels.get_mut(name) {
                    Some(state) if state.count_sent.is_some_and(|t| now < t + COUNT_INTERVAL) => {
                        true
                    }
                    Some(state) => {
                        state.send_count(name, now, webhooks);
                        false
                    }
                    None => false,
                });
        }
    }

    /// Sends one encoded frame to every subscriber but `except`; returns how many got it.
    /// With `cache` (the event's data and how long to keep it) on a cache channel, the frame
    /// also becomes the channel's cached event.
    pub fn publish(
        &self,
        channel: &str,
        frame: Bytes,
        cache: Option<(&str, Duration)>,
        except: Option<SocketId>,
    ) -> usize {
        let kind = ChannelKind::of(channel);
        let mut shard = self.shard(channel);
        if let (true, Some((data, ttl))) = (kind.cache, cache) {
            self.store_cache(&mut shard, channel, frame.clone(), data, ttl);
        }
        let Some(state) = shard.channels.get(channel) else {
            return 0;
        };
        let mut delivered = 0;
        for (socket, conn) in &state.subscribers {
            if Some(*socket) == except {
                continue;
            }
            if conn.push(frame.clone()) == Pushed::Queued {
                delivered += 1;
            }
        }
        delivered
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

    /// The cached event of `channel`, if one is live.
    pub fn cached(&self, channel: &str) -> Option<CachedEvent> {
        let shard = self.shard(channel);
        shard
            .cache
            .get(channel)
            .filter(|c| c.expires > Instant::now())
            .cloned()
    }

    pub fn stats(&self, channel: &str) -> ChannelStats {
        let shard = self.shard(channel);
        shard
            .channels
            .get(channel)
            .map_or_else(ChannelStats::default, |c| ChannelStats {
                subscription_count: c.subscribers.len(),
                user_count: c.roster.as_ref().map(Roster::len),
            })
    }

    /// The user ids of a presence channel.
    pub fn users(&self, channel: &str) -> Vec<String> {
        let shard = self.shard(channel);
        shard
            .channels
            .get(channel)
            .and_then(|c| c.roster.as_ref())
            .map(|r| r.members().map(|(id, _)| id.to_owned()).collect())
            .unwrap_or_default()
    }

    /// Occupied channels whose name starts with `prefix`, sorted by name.
    pub fn occupied(&self, prefix: &str) -> Vec<(String, ChannelStats)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (name, c) in &shard.channels {
                if name.starts_with(prefix) && !c.subscribers.is_empty() {
                    out.push((
                        name.to_string(),
                        ChannelStats {
                            subscription_count: c.subscribers.len(),
                            user_count: c.roster.as_ref().map(Roster::len),
                        },
                    ));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
