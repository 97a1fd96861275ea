//! Rebuilding a channel that moved to this node. Each node with subscribers sends its
//! part in [`Resync`]s; until every node said it is done (or a deadline passes) the
//! channel is *settling* and holds its messages back, so that nothing is decided on a
//! partial picture. Settling then corrects what each node's subscribers were told and
//! handles the held messages in order.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use relaymesh_proto::channel::ChannelKind;
use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::Resync;
use std::collections::HashSet;

use super::channel::{OwnedChannel, Subscriber};
use super::presence::member_of;
use super::{Origin, Owner, Roster, Shard, Sink};
use crate::outbox::SocketId;
use crate::webhooks::WebhookEvent;

/// Most messages a settling channel holds back; beyond, they are handled at once.
const SETTLING_QUEUE_MAX: usize = 4096;

/// A channel this node took over, rebuilt from the nodes' [`Resync`]s: until every node
/// said it is done (or a deadline passes) the channel's messages wait, so that nothing
/// is decided on a partial picture.
pub(super) struct Settling {
    /// Per node, the members its subscribers were told about by the previous owner (they
    /// can differ: a node cut off from a change did not hear of it). Ordered, so that the
    /// corrections go out in the same order on every run.
    told: BTreeMap<Arc<str>, BTreeSet<Box<str>>>,
    queued: Vec<(Arc<str>, u64, Body)>,
    /// Some node had an answered socket: the previous owner told the app the channel is
    /// occupied (else settling does, if anyone is subscribed).
    occupied: bool,
    /// The newest view a resync came from: the channel settles once every node is done
    /// with it.
    view_version: u64,
    since: Instant,
}

impl Settling {
    /// Whether every node is done with the channel's view, or it started settling at or
    /// before `overdue`.
    fn due(&self, done_version: u64, overdue: Option<Instant>) -> bool {
        self.view_version <= done_version || overdue.is_some_and(|at| self.since <= at)
    }
}

impl OwnedChannel {
    /// A channel that starts settling at `now`, for resyncs of `view_version`.
    fn settling(view_version: u64, now: Instant) -> OwnedChannel {
        let settling = Settling {
            told: BTreeMap::new(),
            queued: Vec::new(),
            occupied: false,
            view_version,
            since: now,
        };
        OwnedChannel {
            settling: Some(Box::new(settling)),
            ..OwnedChannel::default()
        }
    }
}

impl Owner {
    /// Holds `body` back while `channel` settles; a channel without state that may have
    /// subscribers on their way (it just moved here) starts settling first. Returns the
    /// body when it is to be handled now.
    pub(super) fn hold(
        &self,
        shard: &mut Shard,
        now: Instant,
        origin: Origin<'_>,
        channel: &str,
        body: Body,
    ) -> Option<Body> {
        if !shard.channels.contains_key(channel) {
            // A sender with a newer view than this node's may know that the channel moved
            // here before this node does: hold it the same way.
            let ahead = (origin.view_version > self.view_version.load(Ordering::Relaxed))
                .then_some(origin.view_version);
            if let Some(version) = self.taken_over(channel).or(ahead) {
                self.count_owned(1.0);
                let held = OwnedChannel::settling(version, now);
                shard.channels.insert(channel.into(), held);
            }
        }
        let settling = shard
            .channels
            .get_mut(channel)
            .and_then(|c| c.settling.as_mut())
            .filter(|s| s.queued.len() < SETTLING_QUEUE_MAX);
        let Some(settling) = settling else {
            return Some(body);
        };
        let node = origin.node.into();
        settling.queued.push((node, origin.incarnation, body));
        None
    }

    /// Adds a node's sockets after the channel's owner changed. A channel this node did
    /// not hold yet settles (see [`Settling`]): its sockets join without events. Sockets
    /// added to a live channel are joins like any other, without an answer.
    pub(super) fn resync(
        &self,
        shard: &mut Shard,
        now: Instant,
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
                e.insert(OwnedChannel::settling(origin.view_version, now))
            }
        };
        let node = entry.node_key(origin.node);
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
        let named_now: Vec<SocketId> = resync
            .sockets
            .iter()
            .filter_map(|s| s.socket.map(SocketId::from))
            .collect();
        for subscribe in resync.sockets {
            let Some(socket) = subscribe.socket.map(SocketId::from) else {
                continue;
            };
            // A resync is no join: it cannot bring back a socket that already left.
            if entry.sockets.contains_key(&socket) || shard.left.is_over(channel, socket, 0, now) {
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
                attempt: 0,
            };
            entry.add_socket(socket, subscriber);
        }
        if let Some(settling) = entry.settling.as_mut() {
            settling.view_version = settling.view_version.max(origin.view_version);
            settling.occupied |= resync.occupied;
            settling
                .told
                .entry(node.clone())
                .or_default()
                .extend(resync.told_members.into_iter().map(String::into_boxed_str));
        }
        if resync.first {
            entry.resyncing.insert(node.clone(), HashSet::new());
        }
        if let Some(named) = entry.resyncing.get_mut(&node) {
            named.extend(&named_now);
        }
        if resync.last {
            self.drop_unnamed(shard, now, channel, &node, resync.attempts_so_far, sink);
        }
    }

    /// The node's resync is complete: its sockets the resync did not name left the channel
    /// while this owner could not be told.
    fn drop_unnamed(
        &self,
        shard: &mut Shard,
        now: Instant,
        channel: &str,
        node: &Arc<str>,
        attempts_so_far: u64,
        sink: &mut dyn Sink,
    ) {
        let Some(entry) = shard.channels.get_mut(channel) else {
            return;
        };
        let Some(named) = entry.resyncing.remove(node) else {
            return;
        };
        let mut gone: Vec<SocketId> = entry
            .sockets
            .iter()
            .filter(|(socket, s)| {
                s.node == *node && !named.contains(*socket) && s.attempt <= attempts_so_far
            })
            .map(|(socket, _)| *socket)
            .collect();
        gone.sort_unstable();
        if !gone.is_empty() {
            tracing::debug!(
                channel,
                node = &**node,
                sockets = gone.len(),
                "dropping sockets a resync did not name"
            );
        }
        if entry.settling.is_some() {
            // Settling corrects the members from what every node resynced.
            for socket in gone {
                if let Some(subscriber) = entry.sockets.remove(&socket) {
                    entry.remove_interest(&subscriber.node);
                    if let (Some(user), Some(roster)) = (subscriber.user, entry.roster.as_mut()) {
                        roster.leave(&user);
                    }
                }
            }
        } else {
            for socket in gone {
                self.unsubscribe(shard, now, channel, socket, sink);
            }
            // Where the node's frames stand: after a broken link it sees what it missed.
            if let Some(entry) = shard.channels.get(channel) {
                entry.probe(node, channel, sink);
            }
        }
    }

    /// Ends the settling channels whose nodes are all done (every node finished view
    /// `done_version`) or that started settling at or before `overdue` (the cluster core
    /// says when the settle deadline passed): members the nodes' subscribers knew and
    /// that have no socket left are removed (once), members nobody was told about are
    /// added, an empty channel is vacated; then the messages that waited are handled in
    /// order. Channels settle in name order, whatever shard they are in.
    pub fn settle(
        &self,
        now: Instant,
        done_version: u64,
        overdue: Option<Instant>,
        sink: &mut dyn Sink,
    ) {
        let due = |c: &OwnedChannel| {
            let settling = c.settling.as_ref();
            settling.is_some_and(|s| s.due(done_version, overdue))
        };
        let names = self.sorted_names(|shard, names| {
            let settled = shard.channels.iter().filter(|(_, c)| due(c));
            names.extend(settled.map(|(name, _)| name.clone()));
        });
        for name in names {
            let mut shard = self.shard(&name);
            // The shard was let go meanwhile: the channel may have changed.
            if shard.channels.get(&name).is_some_and(due) {
                self.settle_channel(&mut shard, now, &name, sink);
            }
        }
    }

    fn settle_channel(&self, shard: &mut Shard, now: Instant, channel: &str, sink: &mut dyn Sink) {
        let Some(state) = shard.channels.get_mut(channel) else {
            return;
        };
        let Some(settling) = state.settling.take() else {
            return;
        };
        let Settling {
            told,
            queued,
            occupied,
            view_version,
            since,
        } = *settling;
        tracing::debug!(
            channel,
            view_version,
            waited_ms = now.saturating_duration_since(since).as_millis() as u64,
            nodes = ?told.keys().collect::<Vec<_>>(),
            queued = queued.len(),
            "settled a rebuilt channel"
        );
        let members: BTreeSet<Box<str>> = state
            .roster_ids()
            .into_iter()
            .map(String::into_boxed_str)
            .collect();
        // The cluster's change, once: webhooks.
        let known: BTreeSet<&Box<str>> = told.values().flatten().collect();
        for gone in known.iter().filter(|u| !members.contains(**u)) {
            sink.webhook(WebhookEvent::MemberRemoved {
                channel: channel.into(),
                user_id: (**gone).clone(),
            });
        }
        for new in members.iter().filter(|u| !known.contains(u)) {
            sink.webhook(WebhookEvent::MemberAdded {
                channel: channel.into(),
                user_id: new.clone(),
            });
        }
        // Each node's subscribers: what they were told, corrected to what is.
        for (node, told) in &told {
            for gone in told.iter().filter(|u| !members.contains(*u)) {
                let deliver = OwnedChannel::member_removed_frame(channel, gone);
                state.send_to(node, channel, deliver, sink);
            }
            for new in members.iter().filter(|u| !told.contains(*u)) {
                if let Some(deliver) = state.member_added_frame(channel, new) {
                    state.send_to(node, channel, deliver, sink);
                }
            }
        }
        if state.sockets.is_empty() {
            shard.channels.remove(channel);
            self.count_owned(-1.0);
            // Only a channel with an answered socket was occupied before; a placeholder held
            // for a takeover was not (a false vacated would cancel the occupied after it).
            if occupied {
                sink.webhook(WebhookEvent::ChannelVacated {
                    channel: channel.into(),
                });
            }
        } else if !occupied {
            // Its first subscribers came while it had no owner: nobody said so yet.
            sink.webhook(WebhookEvent::ChannelOccupied {
                channel: channel.into(),
            });
        }
        for (node, incarnation, body) in queued {
            let origin = Origin {
                node: &node,
                incarnation,
                view_version: 0,
            };
            self.handle_locked(shard, now, origin, channel, body, sink);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::frames;
    use crate::owner::testkit::{epoch, join, member, origin, owner, resync, socket, Recorded};
    use relaymesh_proto::mesh::{Publish, Query, Subscribe};

    fn query_users(owner: &Owner, channel: &str) -> Vec<String> {
        let mut sink = Recorded::default();
        let query = Body::Query(Query {
            request_id: 1,
            users: true,
        });
        owner.handle(epoch(), origin("a"), channel, query, &mut sink);
        sink.sent
            .iter()
            .find_map(|(_, _, b)| match b {
                Body::Reply(r) => Some(r.users.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_whole_resync_drops_the_sockets_it_does_not_name() {
        let owner = owner(100);
        let room = "presence-live";
        join(&owner, "a", room, 1, Some("u1"));
        join(&owner, "a", room, 2, Some("u2"));
        join(&owner, "b", room, 3, Some("u3"));
        // Socket 4 joined after a took its part (attempt 9 > 5): its join overtook the
        // part, which cannot name it.
        let late = Body::Subscribe(Subscribe {
            socket: Some(socket(4).into()),
            member: Some(member("u4")),
            attempt: 9,
        });
        owner.handle(epoch(), origin("a"), room, late, &mut Recorded::default());
        // a's part, in two messages: socket 2 left while the leave could not get here.
        let part = |seq: u64, user: &str, first, last| Resync {
            sockets: vec![Subscribe {
                socket: Some(socket(seq).into()),
                member: Some(member(user)),
                ..Subscribe::default()
            }],
            first,
            last,
            attempts_so_far: 5,
            ..Resync::default()
        };
        let mut sink = Recorded::default();
        let first = Body::Resync(part(1, "u1", true, false));
        owner.handle(epoch(), origin("a"), room, first, &mut sink);
        assert!(sink.sent.is_empty(), "nothing is decided on part of a part");
        let last = Body::Resync(part(1, "u1", false, true));
        owner.handle(epoch(), origin("a"), room, last, &mut sink);
        let removed: Vec<String> = sink
            .delivered()
            .into_iter()
            .filter(|(_, f)| f.contains("member_removed"))
            .map(|(_, f)| f)
            .collect();
        assert_eq!(removed.len(), 2, "to a and b: {removed:?}");
        assert!(removed.iter().all(|f| f.contains("u2")));
        assert_eq!(sink.webhook_names(), ["member_removed"]);
        // b's socket was not a's to name.
        let users = query_users(&owner, room);
        assert_eq!(users, ["u1", "u3", "u4"]);
    }

    #[test]
    fn a_rebuilt_channel_removes_only_the_members_that_left() {
        let owner = owner(100);
        let room = "presence-moved";
        let mut sink = Recorded::default();
        // u3 was only on a node that died: nobody resyncs it.
        let told = ["u1", "u2", "u3"];
        resync(&owner, &mut sink, "a", room, &[(1, "u1")], &told);
        resync(&owner, &mut sink, "b", room, &[(2, "u2"), (3, "u1")], &told);
        let publish = Publish {
            frame: frames::text_frame("{}"),
            ..Publish::default()
        };
        let body = Body::Publish(publish);
        owner.handle(epoch(), origin("c"), room, body, &mut sink);
        assert!(
            sink.sent.is_empty(),
            "a settling channel holds messages back"
        );

        owner.settle(epoch(), 0, None, &mut sink);
        assert!(
            sink.sent.is_empty(),
            "not every node is done with view 1 yet"
        );
        owner.settle(epoch(), 1, None, &mut sink);
        let delivered = sink.delivered();
        assert_eq!(delivered.len(), 4, "{delivered:?}");
        assert!(delivered[..2]
            .iter()
            .all(|(_, f)| f.contains("member_removed") && f.contains("u3")));
        assert!(delivered[2..].iter().all(|(_, f)| f == "{}"));
        assert_eq!(sink.webhook_names(), ["member_removed"]);
    }

    #[test]
    fn a_channel_whose_first_subscribers_came_without_an_owner_is_occupied_as_it_settles() {
        let owner = owner(100);
        let mut sink = Recorded::default();
        // Only a subscription nobody answered (its owner was gone): not occupied yet.
        let part = Resync {
            sockets: vec![Subscribe {
                socket: Some(socket(1).into()),
                ..Subscribe::default()
            }],
            first: true,
            last: true,
            ..Resync::default()
        };
        owner.handle(epoch(), origin("a"), "c-new", Body::Resync(part), &mut sink);
        owner.settle(epoch(), 1, None, &mut sink);
        assert_eq!(sink.webhook_names(), ["channel_occupied"]);
        // An answered socket means the previous owner said so already.
        let mut sink = Recorded::default();
        resync(&owner, &mut sink, "a", "c-old", &[(2, "u1")], &[]);
        owner.settle(epoch(), 1, None, &mut sink);
        assert!(sink.webhooks.is_empty(), "{:?}", sink.webhook_names());
    }

    #[test]
    fn a_channel_settles_when_overdue_even_if_a_node_is_not_done() {
        let owner = owner(100);
        let mut sink = Recorded::default();
        resync(&owner, &mut sink, "a", "presence-late", &[(1, "u1")], &[]);
        let before = epoch().checked_sub(Duration::from_millis(1));
        owner.settle(epoch(), 0, before, &mut sink);
        assert!(sink.webhooks.is_empty(), "still settling");
        owner.settle(epoch(), 0, Some(epoch()), &mut sink);
        // Nobody was told about u1: it is added, once for the cluster and to node a.
        assert_eq!(sink.webhook_names(), ["member_added"]);
        assert_eq!(sink.delivered().len(), 1);
    }
}
