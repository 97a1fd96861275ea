//! The last event published on each cache channel of a shard, for subscribers that join
//! later and for queries, until its TTL runs out. Bounded per shard, so that an app
//! publishing on countless cache channels cannot grow the owner without limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The last event published on a cache channel.
pub(super) struct CachedEvent {
    pub(super) frame: Bytes,
    pub(super) data: Arc<str>,
    pub(super) expires: Instant,
}

#[derive(Default)]
pub(super) struct Cache {
    events: HashMap<Box<str>, CachedEvent>,
}

impl Cache {
    /// The channel's event while it lasts.
    pub(super) fn get(&self, channel: &str, now: Instant) -> Option<&CachedEvent> {
        self.events.get(channel).filter(|c| c.expires > now)
    }

    /// Makes `frame` the channel's event until `now + ttl`. When `max` events are held,
    /// the expired ones go first, then the one that expires soonest (the oldest).
    pub(super) fn store(
        &mut self,
        channel: &str,
        frame: Bytes,
        data: &str,
        now: Instant,
        ttl: Duration,
        max: usize,
    ) {
        if self.events.len() >= max && !self.events.contains_key(channel) {
            self.events.retain(|_, c| c.expires > now);
            if self.events.len() >= max {
                // The name breaks ties, so that hash order does not pick among events
                // stored at the same instant.
                let oldest = self
                    .events
                    .iter()
                    .min_by_key(|(name, c)| (c.expires, *name))
                    .map(|(name, _)| name.clone());
                if let Some(oldest) = oldest {
                    self.events.remove(&oldest);
                }
            }
        }
        let event = CachedEvent {
            frame,
            data: data.into(),
            expires: now + ttl,
        };
        self.events.insert(channel.into(), event);
    }

    pub(super) fn remove(&mut self, channel: &str) {
        self.events.remove(channel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::testkit::epoch;

    const TTL: Duration = Duration::from_secs(10);

    fn store(cache: &mut Cache, channel: &str, now: Instant) {
        cache.store(channel, Bytes::new(), channel, now, TTL, 2);
    }

    #[test]
    fn an_event_lasts_its_ttl() {
        let now = epoch();
        let mut cache = Cache::default();
        store(&mut cache, "cache-a", now);
        assert!(cache
            .get("cache-a", now + TTL - Duration::from_millis(1))
            .is_some());
        assert!(cache.get("cache-a", now + TTL).is_none());
    }

    #[test]
    fn a_full_cache_drops_the_expired_then_the_oldest_then_by_name() {
        let now = epoch();
        let mut cache = Cache::default();
        store(&mut cache, "cache-b", now);
        store(&mut cache, "cache-a", now);
        // Both stored at once: the name decides.
        store(&mut cache, "cache-c", now);
        assert!(cache.get("cache-a", now).is_none());
        assert!(cache.get("cache-b", now).is_some());
        // Replacing a held event takes no room.
        store(&mut cache, "cache-b", now + Duration::from_secs(1));
        assert!(cache.get("cache-c", now).is_some());
        // Once cache-c expired, it goes; cache-b lasts a second longer.
        store(&mut cache, "cache-d", now + TTL);
        assert!(cache.get("cache-b", now + TTL).is_some());
        assert!(cache.get("cache-d", now + TTL).is_some());
        assert_eq!(cache.events.len(), 2);
    }
}
