//! Subscription counting (protocol §13.1): after a subscription change the channel's
//! count goes to its subscribers and to the `subscription_count` webhook, at most every
//! [`COUNT_INTERVAL`] once a channel has more than [`COUNT_THROTTLE_SUBSCRIBERS`]
//! subscribers; the changes held back meanwhile go out with
//! [`Owner::flush_subscription_counts`].

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use relaymesh_proto::channel::{ChannelAuth, ChannelKind};
use relaymesh_proto::frame;

use super::channel::OwnedChannel;
use super::{Owner, Sink};
use crate::frames;
use crate::outbox::SocketId;
use crate::webhooks::WebhookEvent;

const COUNT_THROTTLE_SUBSCRIBERS: usize = 100;
const COUNT_INTERVAL: Duration = Duration::from_secs(5);

/// Whether a channel's subscription count is sent when counting is on.
pub(super) fn counted(kind: ChannelKind) -> bool {
    matches!(kind.auth, ChannelAuth::Public | ChannelAuth::Private)
}

impl OwnedChannel {
    fn count_frame(&mut self, channel: &str, now: Instant, sink: &mut dyn Sink) -> Bytes {
        self.count_sent = Some(now);
        let count = self.sockets.len();
        sink.webhook(WebhookEvent::SubscriptionCount {
            channel: channel.into(),
            subscription_count: count,
        });
        frames::text_frame(&frame::subscription_count(channel, count))
    }

    /// Whether a count change must wait for the throttle interval.
    fn count_throttled(&self, now: Instant) -> bool {
        self.sockets.len() > COUNT_THROTTLE_SUBSCRIBERS
            && self
                .count_sent
                .is_some_and(|t| now.saturating_duration_since(t) < COUNT_INTERVAL)
    }
}

/// The count of `channel` changed: it goes now to every node with subscribers but
/// `except`'s, or, while throttled, waits in `pending` for the flush. Returns the frame
/// when it was sent.
pub(super) fn count_changed(
    pending: &mut HashSet<Box<str>>,
    state: &mut OwnedChannel,
    channel: &str,
    now: Instant,
    except: Option<SocketId>,
    sink: &mut dyn Sink,
) -> Option<Bytes> {
    if state.count_throttled(now) {
        if !pending.contains(channel) {
            pending.insert(channel.into());
        }
        return None;
    }
    pending.remove(channel);
    let count = state.count_frame(channel, now, sink);
    state.deliver(channel, count.clone(), except, sink);
    Some(count)
}

impl Owner {
    /// Sends the counts that changed while throttled, once their interval has passed,
    /// in channel order.
    pub fn flush_subscription_counts(&self, now: Instant, sink: &mut dyn Sink) {
        let due = self.sorted_names(|shard, due| {
            let channels = &shard.channels;
            // Gone channels have no count to send (settling may drop a channel).
            shard
                .count_pending
                .retain(|name| channels.contains_key(name));
            let ready = |name: &str| channels.get(name).is_some_and(|c| !c.count_throttled(now));
            due.extend(shard.count_pending.iter().filter(|n| ready(n)).cloned());
        });
        for name in due {
            let mut shard = self.shard(&name);
            let shard = &mut *shard;
            // A subscription change may have sent the count since the names were taken.
            if !shard.count_pending.contains(&name) {
                continue;
            }
            if let Some(state) = shard.channels.get_mut(&name) {
                count_changed(&mut shard.count_pending, state, &name, now, None, sink);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AppConfig;
    use crate::owner::testkit::{epoch, join_at, owner_with, Recorded};

    #[test]
    fn counts_of_a_large_channel_wait_for_the_interval_and_then_flush() {
        let owner = owner_with(AppConfig {
            subscription_count: true,
            ..AppConfig::development()
        });
        let count = |sink: &Recorded| -> Vec<usize> {
            sink.webhooks
                .iter()
                .filter_map(|w| match w {
                    WebhookEvent::SubscriptionCount {
                        subscription_count, ..
                    } => Some(*subscription_count),
                    _ => None,
                })
                .collect()
        };
        for seq in 1..=100 {
            let sink = join_at(&owner, epoch(), "a", "news", seq, None);
            assert_eq!(count(&sink), [seq as usize]);
        }
        // Over the threshold within the interval: held back.
        let sink = join_at(&owner, epoch(), "a", "news", 101, None);
        assert!(count(&sink).is_empty());
        let mut sink = Recorded::default();
        owner.flush_subscription_counts(epoch() + Duration::from_secs(4), &mut sink);
        assert!(sink.sent.is_empty() && sink.webhooks.is_empty());
        owner.flush_subscription_counts(epoch() + COUNT_INTERVAL, &mut sink);
        assert_eq!(count(&sink), [101]);
        assert_eq!(sink.delivered().len(), 1, "to node a");
        // Sent: nothing left to flush.
        let mut sink = Recorded::default();
        owner.flush_subscription_counts(epoch() + 2 * COUNT_INTERVAL, &mut sink);
        assert!(sink.webhooks.is_empty());
    }
}
