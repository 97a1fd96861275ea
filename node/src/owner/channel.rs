//! One owned channel: its sockets on every node, the nodes that need its frames
//! (interest), the numbering of those frames and the member events.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use relaymesh_proto::frame;
use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::{ChannelStats, Deliver};

use super::settle::Settling;
use super::{Roster, Sink};
use crate::frames;
use crate::outbox::SocketId;
use crate::webhooks::WebhookEvent;

pub(super) struct Subscriber {
    pub(super) node: Arc<str>,
    /// The node's process (its incarnation) that holds the socket.
    pub(super) incarnation: u64,
    /// The presence user the socket joined as.
    pub(super) user: Option<Box<str>>,
    /// Its subscription attempt (0 when it came in a resync).
    pub(super) attempt: u64,
}

/// A node with subscribers of the channel.
#[derive(Debug, PartialEq)]
pub(super) struct Interest {
    pub(super) node: Arc<str>,
    pub(super) sockets: u32,
    /// Frames sent to the node for the channel since it got its first subscriber: the
    /// number of the last one, which lets the node see a frame that never arrived.
    pub(super) sent: u64,
}

#[derive(Default)]
pub(super) struct OwnedChannel {
    pub(super) sockets: HashMap<SocketId, Subscriber>,
    /// Nodes with subscribers. A list, not a map: frames go to the nodes in its order,
    /// which then follows the order of the subscriptions.
    pub(super) interest: Vec<Interest>,
    /// Present on presence channels only.
    pub(super) roster: Option<Roster>,
    /// When the subscription count was last sent (subscription counting).
    pub(super) count_sent: Option<Instant>,
    pub(super) settling: Option<Box<Settling>>,
    /// Per node whose resync is arriving in parts, the sockets named so far.
    pub(super) resyncing: HashMap<Arc<str>, HashSet<SocketId>>,
    /// The newest view a node subscribed or resynced with: a view older than that does
    /// not take the channel away (this node just has not seen the newer one yet).
    pub(super) newest_view: u64,
}

impl OwnedChannel {
    pub(super) fn stats(&self) -> ChannelStats {
        ChannelStats {
            subscription_count: self.sockets.len() as u32,
            user_count: self.roster.as_ref().map(|r| r.len() as u32),
        }
    }

    /// The node's shared id, from the interest list when it is there.
    pub(super) fn node_key(&self, node: &str) -> Arc<str> {
        self.interest
            .iter()
            .find(|i| &*i.node == node)
            .map_or_else(|| node.into(), |i| i.node.clone())
    }

    pub(super) fn add_interest(&mut self, node: &Arc<str>) {
        match self.interest.iter_mut().find(|i| &i.node == node) {
            Some(interest) => interest.sockets += 1,
            None => self.interest.push(Interest {
                node: node.clone(),
                sockets: 1,
                sent: 0,
            }),
        }
    }

    pub(super) fn remove_interest(&mut self, node: &str) {
        if let Some(i) = self.interest.iter().position(|i| &*i.node == node) {
            self.interest[i].sockets -= 1;
            if self.interest[i].sockets == 0 {
                self.interest.swap_remove(i);
            }
        }
    }

    /// The number of the last frame sent to `node` (0 before the first, or without
    /// subscribers there).
    pub(super) fn sent_to(&self, node: &str) -> u64 {
        self.interest
            .iter()
            .find(|i| &*i.node == node)
            .map_or(0, |i| i.sent)
    }

    /// Adds a socket of `node` and the node's interest.
    pub(super) fn add_socket(&mut self, socket: SocketId, subscriber: Subscriber) {
        self.add_interest(&subscriber.node);
        self.sockets.insert(socket, subscriber);
    }

    /// Sends one frame to every node with subscribers, numbered.
    pub(super) fn deliver(
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

    /// Sends `deliver`, numbered, to one node (unnumbered to a node without subscribers).
    pub(super) fn send_to(
        &mut self,
        node: &str,
        channel: &str,
        deliver: Deliver,
        sink: &mut dyn Sink,
    ) {
        let seq = match self.interest.iter_mut().find(|i| &*i.node == node) {
            Some(interest) => {
                interest.sent += 1;
                interest.sent
            }
            None => 0,
        };
        sink.send(node, channel, Body::Deliver(Deliver { seq, ..deliver }));
    }

    /// Sends `deliver`, numbered, to every node with subscribers.
    fn send_to_interest(&mut self, channel: &str, deliver: Deliver, sink: &mut dyn Sink) {
        for interest in &mut self.interest {
            interest.sent += 1;
            let body = Body::Deliver(Deliver {
                seq: interest.sent,
                ..deliver.clone()
            });
            sink.send(&interest.node, channel, body);
        }
    }

    /// Repeats the number of the last frame sent to `node`, after a send to it failed: a
    /// node that missed frames learns it even when no other frame follows.
    pub(super) fn probe(&self, node: &str, channel: &str, sink: &mut dyn Sink) {
        let seq = self.sent_to(node);
        if seq > 0 {
            let probe = Deliver {
                seq,
                ..Deliver::default()
            };
            sink.send(node, channel, Body::Deliver(probe));
        }
    }

    /// The frame that tells a node's subscribers about a new member; `None` for a user
    /// who is not in the roster.
    pub(super) fn member_added_frame(&self, channel: &str, user_id: &str) -> Option<Deliver> {
        let info = self.roster.as_ref()?.info(user_id)?;
        Some(Deliver {
            frame: frames::text_frame(&frame::member_added(channel, user_id, info)),
            member_added: user_id.to_owned(),
            ..Deliver::default()
        })
    }

    pub(super) fn member_removed_frame(channel: &str, user_id: &str) -> Deliver {
        Deliver {
            frame: frames::text_frame(&frame::member_removed(channel, user_id)),
            member_removed: user_id.to_owned(),
            ..Deliver::default()
        }
    }

    pub(super) fn member_added(
        &mut self,
        channel: &str,
        user_id: &str,
        except: Option<SocketId>,
        sink: &mut dyn Sink,
    ) {
        let Some(deliver) = self.member_added_frame(channel, user_id) else {
            return;
        };
        let deliver = Deliver {
            except: except.map(Into::into),
            ..deliver
        };
        self.send_to_interest(channel, deliver, sink);
        sink.webhook(WebhookEvent::MemberAdded {
            channel: channel.into(),
            user_id: user_id.into(),
        });
    }

    pub(super) fn member_removed(&mut self, channel: &str, user_id: &str, sink: &mut dyn Sink) {
        let deliver = Self::member_removed_frame(channel, user_id);
        self.send_to_interest(channel, deliver, sink);
        sink.webhook(WebhookEvent::MemberRemoved {
            channel: channel.into(),
            user_id: user_id.into(),
        });
    }

    /// The roster's user ids, in the roster's (sorted) order.
    pub(super) fn roster_ids(&self) -> Vec<String> {
        self.roster
            .as_ref()
            .map(|r| r.members().map(|(id, _)| id.to_owned()).collect())
            .unwrap_or_default()
    }

    pub(super) fn succeeded_frame(&self, channel: &str) -> Bytes {
        let text = match &self.roster {
            Some(roster) => frame::presence_subscription_succeeded(channel, roster.members()),
            None => frame::subscription_succeeded(channel),
        };
        frames::text_frame(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_numbered_once_per_send_and_go_to_nodes_in_subscription_order() {
        use super::super::testkit::Recorded;
        let mut channel = OwnedChannel::default();
        for (seq, node) in [(1, "b"), (2, "a"), (3, "b")] {
            let subscriber = Subscriber {
                node: channel.node_key(node),
                incarnation: 1,
                user: None,
                attempt: 0,
            };
            channel.add_socket(SocketId { node: 1, seq }, subscriber);
        }
        let interest = |c: &OwnedChannel| -> Vec<(String, u32)> {
            c.interest
                .iter()
                .map(|i| (i.node.to_string(), i.sockets))
                .collect()
        };
        assert_eq!(interest(&channel), [("b".into(), 2), ("a".into(), 1)]);
        let mut sink = Recorded::default();
        channel.deliver("news", Bytes::from_static(b"x"), None, &mut sink);
        channel.send_to("a", "news", Deliver::default(), &mut sink);
        let sent: Vec<(String, u64)> = sink
            .sent
            .iter()
            .filter_map(|(node, _, body)| match body {
                Body::Deliver(d) => Some((node.clone(), d.seq)),
                _ => None,
            })
            .collect();
        // Each node's frames are numbered on their own: a gap means a lost frame.
        assert_eq!(sent, [("b".into(), 1), ("a".into(), 1), ("a".into(), 2)]);
        channel.remove_interest("b");
        channel.remove_interest("b");
        assert_eq!(interest(&channel), [("a".into(), 1)]);
        assert_eq!(channel.sent_to("a"), 2);
        assert_eq!(
            channel.sent_to("b"),
            0,
            "b starts again from 1 when it comes back"
        );
    }
}
