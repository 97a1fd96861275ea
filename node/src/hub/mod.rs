//! One app's local subscribers and their fan-out. The channel's owner (`owner/`) decides
//! who is subscribed and what they receive; the hub holds this node's sockets of each
//! channel and pushes the owner's frames into their send queues.
//!
//! A subscription is pending from the moment it is sent to the owner until the owner
//! answers: a pending socket gets none of the channel's frames, so what it receives starts
//! exactly where the owner's answer (and roster) was made. Channels live in shards keyed by
//! a hash of the name, one lock each.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod numbering;

use bytes::Bytes;
use relaymesh_proto::codes::ErrorCode;
use relaymesh_proto::mesh::{Deliver, Member};

use crate::outbox::{Conn, Pushed, SocketId};
pub use numbering::Remote;
use numbering::{Check, Numbering};

const SHARDS: usize = 64;

struct Pending {
    conn: Arc<Conn>,
    since: Instant,
    /// Sent instead of the owner's frames on acceptance (a sign-in's `signin_success`).
    on_accept: Option<Vec<Bytes>>,
    member: Option<Member>,
    /// The owner could not be reached yet: to be sent again.
    unsent: bool,
    /// Which subscription attempt of the socket this is (see `Subscribe.attempt`).
    attempt: u64,
    /// The new owner it went to in a resync: only that owner's answer counts (the
    /// previous owner's answer was made on a picture the new owner corrects).
    resynced_to: Option<Box<str>>,
}

/// A subscription to send (again) to its owner.
pub struct Unsent {
    pub channel: Box<str>,
    pub socket: SocketId,
    pub member: Option<Member>,
    pub attempt: u64,
}

#[derive(Default)]
struct Channel {
    subscribers: HashMap<SocketId, Arc<Conn>>,
    pending: HashMap<SocketId, Pending>,
    /// Presence channels: each subscribed socket's member, to rebuild the channel at a
    /// new owner.
    members: HashMap<SocketId, Member>,
    /// Presence channels: the members this node's subscribers were told about.
    told: HashSet<Box<str>>,
    /// The owner `told` was last sent to (a resync) and its view: member events from
    /// another node with an older view are late news from the previous owner, which the
    /// new owner corrects from `told` as it was sent, so they are dropped.
    resynced_to: Option<(Box<str>, u64)>,
    /// The numbers of the frames received from remote owners.
    numbering: Numbering,
    /// Subscribed sockets that asked again, with the attempt: the owner's answer to it is
    /// theirs (any other answer for a subscribed socket is a late duplicate).
    asked_again: HashMap<SocketId, u64>,
}

/// Who sent an edge-bound message: another node; `None` for this node's own owner (a
/// direct call, which cannot lose anything).
pub type Sender<'a> = Option<Remote<'a>>;

/// An owner's answer to a subscription.
pub struct Answer {
    pub socket: SocketId,
    /// The subscription attempt answered.
    pub attempt: u64,
    /// The node that answered.
    pub owner: Box<str>,
    pub accepted: bool,
    pub frames: Vec<Bytes>,
    pub roster: Vec<String>,
    /// The number of the last frame the owner sent this node for the channel.
    pub seq: u64,
}

/// This node's part of a channel, for its new owner.
pub struct ChannelPart {
    pub channel: Box<str>,
    pub sockets: Vec<(SocketId, Option<Member>)>,
    pub told: Vec<String>,
    /// Some socket was answered (the channel was occupied under its previous owner).
    pub occupied: bool,
}

/// A subscription the owner did not answer in time.
pub struct Expired {
    pub channel: Box<str>,
    pub conn: Arc<Conn>,
}

type Shard = HashMap<Box<str>, Channel>;

impl Channel {
    fn is_stale(&self, sender: Sender<'_>) -> bool {
        match (sender, &self.resynced_to) {
            (Some(from), Some((owner, resynced_at))) => {
                from.node != &**owner && from.view_version < *resynced_at
            }
            _ => false,
        }
    }

    /// Frames were lost for the subscribed sockets (but `spared`): they cannot get them
    /// back, so they are asked to reconnect, which gives their client a fresh start.
    fn lost_frames(&mut self, channel: &str, spared: Option<SocketId>) {
        let mut told = 0;
        for (socket, conn) in &self.subscribers {
            if Some(*socket) != spared {
                conn.close(
                    ErrorCode::ReconnectImmediately.as_u16(),
                    "Messages of a channel were lost: reconnect",
                );
                told += 1;
            }
        }
        if told > 0 {
            tracing::warn!(
                channel,
                clients = told,
                "frames from the channel's owner were lost"
            );
            metrics::counter!(crate::telemetry::DELIVERY_GAPS).increment(1);
            for _ in 0..told {
                crate::telemetry::count_error(
                    Some(ErrorCode::ReconnectImmediately.as_u16()),
                    "delivery_gap",
                );
            }
        }
    }
}

pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    app_id: Arc<str>,
    subscriptions: AtomicI64,
    /// Numbers subscription attempts.
    attempts: AtomicU64,
    /// Some pending subscription is marked to be sent again (spares the periodic retry a
    /// pass over every channel).
    any_unsent: AtomicBool,
    /// Sockets that left a channel while its owner could not be told: told again until
    /// it is, so that no ghost subscriber (or presence member) stays there.
    leaves_unsent: Mutex<BTreeSet<(Box<str>, SocketId)>>,
}

/// Leaves waiting for their owner; beyond, the owner finds out at the next resync.
const LEAVES_UNSENT_MAX: usize = 65_536;

impl Hub {
    pub fn new(app_id: Arc<str>) -> Hub {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            app_id,
            subscriptions: AtomicI64::new(0),
            attempts: AtomicU64::new(0),
            any_unsent: AtomicBool::new(false),
            leaves_unsent: Mutex::new(BTreeSet::new()),
        }
    }

    /// The newest subscription attempt number handed out: a socket's leave ends all of
    /// its attempts up to it.
    pub fn attempts_so_far(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// `socket` left `channel` but its owner could not be told: see [`Hub::take_unsent_leaves`].
    pub fn leave_unsent(&self, channel: &str, socket: SocketId) {
        let mut leaves = self.leaves_unsent.lock().unwrap_or_else(|e| e.into_inner());
        if leaves.len() < LEAVES_UNSENT_MAX {
            leaves.insert((channel.into(), socket));
        } else {
            metrics::counter!(crate::telemetry::LEAVES_DROPPED).increment(1);
        }
    }

    /// The leaves still to be sent to their owners, in (channel, socket) order.
    pub fn take_unsent_leaves(&self) -> BTreeSet<(Box<str>, SocketId)> {
        std::mem::take(&mut *self.leaves_unsent.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, Shard> {
        let shard = &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS];
        // Critical sections only move entries between maps; a poisoned lock is still valid.
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count_subscriptions(&self, delta: i64) {
        let now = self.subscriptions.fetch_add(delta, Ordering::Relaxed) + delta;
        metrics::gauge!(crate::telemetry::SUBSCRIPTIONS, "app" => self.app_id.clone())
            .set(now as f64);
    }

    /// Records a subscription about to be sent to the owner. A socket already subscribed
    /// stays subscribed (a repeated subscribe only gets the owner's answer again).
    pub fn begin(
        &self,
        now: Instant,
        channel: &str,
        conn: &Arc<Conn>,
        member: Option<Member>,
        on_accept: Option<Vec<Bytes>>,
    ) -> u64 {
        let attempt = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        // Joining again before the owner heard of the leave: the owner still has it.
        let mut leaves = self.leaves_unsent.lock().unwrap_or_else(|e| e.into_inner());
        if !leaves.is_empty() {
            leaves.remove(&(Box::from(channel), conn.socket_id));
        }
        drop(leaves);
        let mut shard = self.shard(channel);
        let entry = shard.entry(channel.into()).or_default();
        if entry.subscribers.contains_key(&conn.socket_id) {
            entry.asked_again.insert(conn.socket_id, attempt);
            return attempt;
        }
        let pending = Pending {
            conn: conn.clone(),
            since: now,
            on_accept,
            member,
            unsent: false,
            attempt,
            resynced_to: None,
        };
        entry.pending.insert(conn.socket_id, pending);
        attempt
    }

    /// The owner of a pending subscription could not be reached: it is sent again by
    /// [`Hub::take_unsent`]'s caller.
    pub fn mark_unsent(&self, channel: &str, socket: SocketId) {
        if let Some(pending) = self
            .shard(channel)
            .get_mut(channel)
            .and_then(|c| c.pending.get_mut(&socket))
        {
            pending.unsent = true;
            self.any_unsent.store(true, Ordering::Relaxed);
        }
    }

    /// The subscriptions still to be sent to their owners (now marked as sent), in
    /// (channel, socket) order.
    pub fn take_unsent(&self) -> Vec<Unsent> {
        let mut unsent = Vec::new();
        if !self.any_unsent.swap(false, Ordering::Relaxed) {
            return unsent;
        }
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (name, channel) in shard.iter_mut() {
                for (socket, pending) in channel.pending.iter_mut().filter(|(_, p)| p.unsent) {
                    pending.unsent = false;
                    unsent.push(Unsent {
                        channel: name.clone(),
                        socket: *socket,
                        member: pending.member.clone(),
                        attempt: pending.attempt,
                    });
                }
            }
        }
        // Sorted so that they go out in the same order on every run, not in hash order.
        unsent.sort_unstable_by(|a, b| (&a.channel, a.socket).cmp(&(&b.channel, b.socket)));
        unsent
    }

    /// The owner answered a subscription: the socket gets the answer's frames and, when
    /// accepted, the channel's frames from now on, which continue from the answer's `seq`.
    /// Nothing happens for a socket that left. `roster` is the presence roster the frames
    /// told the socket about. A socket that went to a new owner in a resync waits for that
    /// owner's answer.
    pub fn complete(&self, channel: &str, answer: Answer, sender: Sender<'_>) {
        let Answer {
            socket,
            owner,
            attempt,
            accepted,
            frames,
            roster,
            seq,
        } = answer;
        let mut shard = self.shard(channel);
        let Some(entry) = shard.get_mut(channel) else {
            return;
        };
        // An answer to an attempt the socket gave up, or from an owner its subscription
        // no longer waits for, is not its answer.
        let superseded = entry.pending.get(&socket).is_some_and(|p| {
            p.attempt != attempt || p.resynced_to.as_deref().is_some_and(|to| to != &*owner)
        });
        if superseded {
            return;
        }
        let (conn, frames) = match entry.pending.remove(&socket) {
            Some(pending) => {
                let frames = match (accepted, pending.on_accept) {
                    (true, Some(frames)) => frames,
                    _ => frames,
                };
                if accepted {
                    if let Some(from) = sender {
                        if entry.numbering.answer(from, seq) == Check::Gap {
                            entry.lost_frames(channel, None);
                        }
                    }
                    entry.subscribers.insert(socket, pending.conn.clone());
                    if let Some(member) = pending.member {
                        entry.members.insert(socket, member);
                    }
                    entry
                        .told
                        .extend(roster.into_iter().map(String::into_boxed_str));
                    self.count_subscriptions(1);
                }
                (pending.conn, frames)
            }
            None if entry.asked_again.get(&socket) == Some(&attempt) => {
                entry.asked_again.remove(&socket);
                match entry.subscribers.get(&socket) {
                    Some(conn) => (conn.clone(), frames),
                    None => return,
                }
            }
            None => return,
        };
        for frame in frames {
            conn.push(frame);
        }
        if entry.subscribers.is_empty() && entry.pending.is_empty() {
            shard.remove(channel);
        }
    }

    /// Removes a socket; true when it was subscribed or pending (the owner must be told).
    pub fn unsubscribe(&self, channel: &str, socket: SocketId) -> bool {
        let mut shard = self.shard(channel);
        let Some(entry) = shard.get_mut(channel) else {
            return false;
        };
        let subscribed = entry.subscribers.remove(&socket).is_some();
        entry.asked_again.remove(&socket);
        if subscribed {
            entry.members.remove(&socket);
            self.count_subscriptions(-1);
        }
        let known = subscribed || entry.pending.remove(&socket).is_some();
        if entry.subscribers.is_empty() && entry.pending.is_empty() {
            shard.remove(channel);
        }
        known
    }

    /// Whether the owner accepted `socket` on `channel`.
    pub fn is_subscribed(&self, channel: &str, socket: SocketId) -> bool {
        self.shard(channel)
            .get(channel)
            .is_some_and(|c| c.subscribers.contains_key(&socket))
    }

    /// Sends an owner's frame to every subscriber but the excluded one; returns how many
    /// got it.
    pub fn deliver(&self, channel: &str, deliver: &Deliver, sender: Sender<'_>) -> usize {
        let except = deliver.except.map(SocketId::from);
        let mut shard = self.shard(channel);
        let Some(state) = shard.get_mut(channel) else {
            return 0;
        };
        let probe = deliver.frame.is_empty();
        if let Some(from) = sender {
            if state.numbering.frame(from, deliver.seq, probe) == Check::Gap {
                state.lost_frames(channel, None);
            }
        }
        if probe {
            return 0;
        }
        let member_event = !deliver.member_added.is_empty() || !deliver.member_removed.is_empty();
        if member_event && state.is_stale(sender) {
            metrics::counter!(crate::telemetry::STALE_MEMBER_EVENTS).increment(1);
            return 0;
        }
        if !deliver.member_added.is_empty() {
            state.told.insert(deliver.member_added.as_str().into());
        }
        if !deliver.member_removed.is_empty() {
            state.told.remove(deliver.member_removed.as_str());
        }
        let mut delivered = 0;
        for (socket, conn) in &state.subscribers {
            if Some(*socket) != except && conn.push(deliver.frame.clone()) == Pushed::Queued {
                delivered += 1;
            }
        }
        delivered
    }

    /// This node's part of every channel `moved` selects (their owner changed): the
    /// subscribed sockets with their members and what they were told. Pending
    /// subscriptions of those channels are marked to be sent again, to the new owner,
    /// which `owner` names in view `view_version`. Sorted by channel, and each part's
    /// sockets and members too, so that the resyncs are the same on every run.
    pub fn parts(
        &self,
        moved: impl Fn(&str) -> Option<bool>,
        owner: impl Fn(&str) -> Option<String>,
        view_version: u64,
    ) -> Vec<ChannelPart> {
        let mut parts = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (name, channel) in shard.iter_mut() {
                let Some(owner_changed) = moved(name) else {
                    continue;
                };
                for pending in channel.pending.values_mut() {
                    pending.unsent = true;
                    self.any_unsent.store(true, Ordering::Relaxed);
                }
                let new_owner = owner(name);
                if let (true, Some(owner)) = (owner_changed, &new_owner) {
                    channel.numbering.expect_fresh(owner);
                }
                // Sockets whose connection is closing are as good as gone (their sessions
                // are leaving): naming them would bring them back at the new owner, with a
                // member_added and then a member_removed, and what their subscribers were
                // told says nothing about anyone still here.
                let staying = |conn: &Conn| !conn.is_closing();
                if !channel.subscribers.values().any(|c| staying(c))
                    && !channel.pending.values().any(|p| staying(&p.conn))
                {
                    continue;
                }
                channel.resynced_to = new_owner.map(|o| (o.into_boxed_str(), view_version));
                // Pending sockets too: the previous owner may have accepted them (and told
                // the others about their members) with its answer still on its way.
                for pending in channel.pending.values_mut() {
                    pending.resynced_to = channel.resynced_to.as_ref().map(|(o, _)| o.clone());
                }
                let occupied = channel.subscribers.values().any(|c| staying(c));
                let subscribed = channel.subscribers.iter().filter(|(_, c)| staying(c));
                let asked = channel.pending.iter().filter(|(_, p)| staying(&p.conn));
                let mut sockets: Vec<_> = subscribed
                    .map(|(s, _)| (*s, channel.members.get(s).cloned()))
                    .chain(asked.map(|(s, p)| (*s, p.member.clone())))
                    .collect();
                sockets.sort_unstable_by_key(|(socket, _)| *socket);
                let mut told: Vec<String> = channel.told.iter().map(|u| u.to_string()).collect();
                told.sort_unstable();
                parts.push(ChannelPart {
                    channel: name.clone(),
                    sockets,
                    told,
                    occupied,
                });
            }
        }
        parts.sort_unstable_by(|a, b| a.channel.cmp(&b.channel));
        parts
    }

    /// Closes every subscriber of `channel` with `code`.
    pub fn close_subscribers(&self, channel: &str, code: u16, reason: &'static str) -> usize {
        let shard = self.shard(channel);
        let Some(state) = shard.get(channel) else {
            return 0;
        };
        for conn in state.subscribers.values() {
            conn.close(code, reason);
        }
        state.subscribers.len()
    }

    /// Takes the subscriptions that waited longer than `timeout` for their owner, in
    /// (channel, socket) order.
    pub fn expire_pending(&self, now: Instant, timeout: Duration) -> Vec<Expired> {
        let mut expired = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (name, channel) in shard.iter_mut() {
                channel.pending.retain(|_, p| {
                    let keep = now.saturating_duration_since(p.since) < timeout;
                    if !keep {
                        expired.push(Expired {
                            channel: name.clone(),
                            conn: p.conn.clone(),
                        });
                    }
                    keep
                });
            }
            shard.retain(|_, c| !c.subscribers.is_empty() || !c.pending.is_empty());
        }
        expired.sort_unstable_by(|a, b| {
            (&a.channel, a.conn.socket_id).cmp(&(&b.channel, b.conn.socket_id))
        });
        expired
    }
}

#[cfg(test)]
mod tests;
