//! Who is in a channel: a socket subscribes (the presence limit, the roster, the answer
//! frames) or unsubscribes, with the member events, the count and the webhooks that
//! follow.

use std::collections::hash_map::Entry;
use std::time::Instant;

use relaymesh_proto::channel::ChannelKind;
use relaymesh_proto::frame;
use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::{Subscribe, SubscribeResult};

use super::channel::{OwnedChannel, Subscriber};
use super::counts::{count_changed, counted};
use super::presence::member_of;
use super::{Origin, Owner, Roster, Shard, Sink};
use crate::frames::text_frame;
use crate::outbox::SocketId;
use crate::telemetry;
use crate::webhooks::WebhookEvent;

impl Owner {
    /// Adds a socket of `origin`; answers it with `subscription_succeeded` (the roster on
    /// presence channels, the cached event on cache channels) or a refusal, and tells the
    /// other subscribers about a new member. A repeated subscription only gets its answer.
    pub(super) fn subscribe(
        &self,
        shard: &mut Shard,
        now: Instant,
        origin: Origin<'_>,
        channel: &str,
        subscribe: Subscribe,
        sink: &mut dyn Sink,
    ) {
        let Some(socket) = subscribe.socket.map(SocketId::from) else {
            return;
        };
        let attempt = subscribe.attempt;
        if shard.left.is_over(channel, socket, attempt, now) {
            tracing::debug!(channel, %socket, "a join that arrived after its leave");
            return;
        }
        let config = self.config.get();
        let kind = ChannelKind::of(channel);
        let entry = match shard.channels.entry(channel.into()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                self.count_owned(1.0);
                e.insert(OwnedChannel::default())
            }
        };
        // `seq`: the number of the last frame sent to the node, which its frames of the
        // channel continue from.
        let answer = |accepted, frames, roster, seq| {
            Body::SubscribeResult(SubscribeResult {
                socket: Some(socket.into()),
                accepted,
                frames,
                roster,
                seq,
                attempt,
            })
        };
        let sent = entry.sent_to(origin.node);
        if entry.sockets.contains_key(&socket) {
            let body = answer(
                true,
                vec![entry.succeeded_frame(channel)],
                entry.roster_ids(),
                sent,
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
                answer(false, vec![text_frame(&text)], Vec::new(), sent)
            };
            let refused = match member_of(subscribe.member) {
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
            node,
            incarnation: origin.incarnation,
            user,
            attempt,
        };
        entry.add_socket(socket, subscriber);
        if newly_occupied {
            sink.webhook(WebhookEvent::ChannelOccupied {
                channel: channel.into(),
            });
        }
        if config.subscription_count && counted(kind) {
            let pending = &mut shard.count_pending;
            let count = count_changed(pending, entry, channel, now, Some(socket), sink);
            frames.extend(count);
        }
        if kind.cache {
            match shard.cache.get(channel, now) {
                Some(cached) => frames.push(cached.frame.clone()),
                None => {
                    frames.push(text_frame(&frame::cache_miss(channel)));
                    sink.webhook(WebhookEvent::CacheMiss {
                        channel: channel.into(),
                    });
                }
            }
        }
        let sent = entry.sent_to(origin.node);
        sink.send(origin.node, channel, answer(true, frames, roster, sent));
    }

    /// Removes a socket: `member_removed` on its user's last connection in the mesh,
    /// `channel_vacated` when the channel empties. False for a socket it did not have.
    /// `channel_vacated` when the channel empties.
    pub(super) fn unsubscribe(
        &self,
        shard: &mut Shard,
        now: Instant,
        channel: &str,
        socket: SocketId,
        sink: &mut dyn Sink,
    ) -> bool {
        let config = self.config.get();
        let Entry::Occupied(mut entry) = shard.channels.entry(channel.into()) else {
            return false;
        };
        let state = entry.get_mut();
        let Some(gone) = state.sockets.remove(&socket) else {
            return false;
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
            count_changed(&mut shard.count_pending, state, channel, now, None, sink);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use crate::owner::testkit::{join, leave, owner};

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
}
