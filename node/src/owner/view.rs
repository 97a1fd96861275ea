//! Following the cluster's views: channels that moved to another node are dropped, the
//! sockets of nodes that left or restarted are removed, and the channels that moved here
//! are held (the core's [`Takeover`]) until their nodes resynced them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use super::{Owner, Shard, Sink};
use crate::cluster::{ClusterView, Takeover};
use crate::outbox::SocketId;
use crate::webhooks::WebhookEvent;

impl Owner {
    fn takeover(&self) -> MutexGuard<'_, Option<Arc<Takeover>>> {
        self.takeover.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The view version to settle `channel` at, when it just moved to this node.
    pub(super) fn taken_over(&self, channel: &str) -> Option<u64> {
        let takeover = self.takeover();
        takeover.as_ref()?.moved_here(&self.app_id, channel)
    }

    /// The cluster core's takeover: the channels that just moved here, while it lasts.
    pub fn take_over(&self, takeover: Option<Arc<Takeover>>) {
        *self.takeover() = takeover;
    }

    /// Follows a new view: channels another node owns now are dropped without a word
    /// (their nodes rebuild them at the new owner), and the sockets of nodes that left
    /// the view or restarted (a new incarnation) are removed like unsubscribes. Channels
    /// go in name order, and within one the sockets in id order, so that the removals go
    /// out in the same order on every run.
    pub fn follow_view(&self, me: &str, view: &ClusterView, sink: &mut dyn Sink) {
        self.view_version.store(view.version, Ordering::Relaxed);
        let alive = |node: &str, incarnation: u64| {
            node == me
                || view
                    .nodes
                    .get(node)
                    .and_then(|m| m.node.as_ref())
                    .is_some_and(|n| n.incarnation == incarnation)
        };
        let names = self.sorted_names(|shard, names| names.extend(shard.channels.keys().cloned()));
        for name in names {
            let mut shard = self.shard(&name);
            let shard = &mut *shard;
            // The shard was let go since the names were taken: the channel may be gone.
            let Some(state) = shard.channels.get_mut(&name) else {
                continue;
            };
            let newer = state.newest_view > view.version;
            let elsewhere = view.owner_of(&self.app_id, &name).is_some_and(|o| o != me);
            if elsewhere && !newer {
                shard.channels.remove(&name);
                shard.count_pending.remove(&name);
                shard.cache.remove(&name);
                self.count_owned(-1.0);
                continue;
            }
            let mut dead: Vec<SocketId> = state
                .sockets
                .iter()
                .filter(|(_, s)| !alive(&s.node, s.incarnation))
                .map(|(id, _)| *id)
                .collect();
            // In socket order: the order of the removals decides the order of the nodes
            // left in the interest list, and of the users removed.
            dead.sort_unstable();
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
                sink.webhook(WebhookEvent::ChannelVacated { channel: name });
            }
        }
    }

    /// Drops every channel at once (the node lost its lease and may no longer own any).
    pub fn forget_all(&self) {
        for mut shard in self.shards() {
            let owned = shard.channels.len();
            *shard = Shard::default();
            self.count_owned(-(owned as f64));
        }
    }
}

#[cfg(test)]
mod tests {
    use relaymesh_proto::mesh::envelope::Body;
    use relaymesh_proto::mesh::Query;
    use relaymesh_proto::ring::Ring;

    use crate::owner::testkit::{epoch, join, origin, owner, view, Recorded};

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
        owner.follow_view("a", &next, &mut sink);
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
        let mut sink = Recorded::default();
        let q = Body::Query(Query {
            request_id: 1,
            users: true,
        });
        owner.handle(epoch(), origin("a"), &mine, q.clone(), &mut sink);
        owner.handle(epoch(), origin("a"), &theirs, q, &mut sink);
        let users: Vec<Vec<String>> = sink
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
