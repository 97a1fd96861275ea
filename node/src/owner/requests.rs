//! The requests about one channel that leave the owner's subscribers as they are:
//! publish (the event, numbered, to every node with subscribers; kept on cache channels),
//! query, and terminate (the nodes close the channel's sockets), each answered with a
//! [`Reply`] when the sender asked for one.

use std::time::{Duration, Instant};

use relaymesh_proto::channel::ChannelKind;
use relaymesh_proto::codes::ErrorCode;
use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::{self, ChannelStats, CloseSockets, Publish, Query, Reply, Terminate};

use super::channel::OwnedChannel;
use super::{Owner, Shard, Sink};
use crate::outbox::SocketId;

impl Owner {
    /// Numbers the event and sends it once to every node with subscribers; on cache
    /// channels it becomes the cached event.
    pub(super) fn publish(
        &self,
        shard: &mut Shard,
        now: Instant,
        origin: &str,
        channel: &str,
        publish: Publish,
        sink: &mut dyn Sink,
    ) {
        if publish.cache && ChannelKind::of(channel).cache {
            let ttl = Duration::from_secs(self.config.get().cache_ttl_secs);
            let frame = publish.frame.clone();
            let max = self.cache_entries_per_shard;
            shard
                .cache
                .store(channel, frame, &publish.data, now, ttl, max);
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

    pub(super) fn query(
        &self,
        shard: &Shard,
        now: Instant,
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
        let cache = shard.cache.get(channel, now).map(|c| mesh::CachedEvent {
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
}

/// Asks every node with subscribers of `channel` to close them (terminate_connections
/// on a user's `#server-to-user-` channel).
pub(super) fn terminate(
    shard: &Shard,
    origin: &str,
    channel: &str,
    terminate: Terminate,
    sink: &mut dyn Sink,
) {
    let state = shard.channels.get(channel);
    for node in state.iter().flat_map(|s| &s.interest).map(|i| &i.node) {
        let close = CloseSockets {
            code: ErrorCode::Unauthorized.as_u16().into(),
            reason: "You got disconnected by the app.".into(),
        };
        sink.send(node, channel, Body::CloseSockets(close));
    }
    let stats = state.map(OwnedChannel::stats).unwrap_or_default();
    reply(origin, channel, terminate.request_id, Some(stats), sink);
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
    use crate::frames;
    use crate::owner::testkit::{epoch, join, join_at, origin, owner, Recorded};

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
                frame: frames::text_frame("{}"),
                ..Publish::default()
            };
            let body = Body::Publish(publish);
            owner.handle(epoch(), origin("c"), "news", body, &mut sink);
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
    fn a_cached_event_is_answered_until_its_ttl_runs_out() {
        let owner = owner(100);
        let channel = "cache-news";
        let publish = Publish {
            frame: frames::text_frame("{\"cached\":1}"),
            data: "1".into(),
            cache: true,
            ..Publish::default()
        };
        let mut sink = Recorded::default();
        let body = Body::Publish(publish);
        owner.handle(epoch(), origin("c"), channel, body, &mut sink);
        let query = || {
            Body::Query(Query {
                request_id: 1,
                users: false,
            })
        };
        let later = epoch() + Duration::from_secs(10);
        owner.handle(later, origin("c"), channel, query(), &mut sink);
        let Some((_, _, Body::Reply(reply))) = sink.sent.last() else {
            panic!("a reply: {:?}", sink.sent);
        };
        let ttl = owner.config.get().cache_ttl_secs - 10;
        assert_eq!(reply.cache.as_ref().map(|c| c.ttl_secs), Some(ttl));
        let fresh = join_at(&owner, later, "a", channel, 1, None);
        assert_eq!(fresh.result().1[1], "{\"cached\":1}");
        let expired = later + Duration::from_secs(ttl);
        let missed = join_at(&owner, expired, "a", channel, 2, None);
        assert!(missed.result().1[1].contains("cache_miss"));
        assert_eq!(missed.webhook_names(), ["cache_miss"]);
    }
}
