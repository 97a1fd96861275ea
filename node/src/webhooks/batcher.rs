//! Sans-IO webhook batching (protocol §13): events raised within a window go out together,
//! and channel_vacated / member_removed wait out a delay in which a returning channel or
//! member cancels both the removal and the re-addition.

use std::time::{Duration, Instant};

use super::WebhookEvent;

pub struct Batcher {
    window: Duration,
    delay: Duration,
    /// Bound on events held (ready plus delayed).
    events_max: usize,
    ready: Vec<WebhookEvent>,
    /// When the first ready event arrived: the batch closes one window later.
    batch_opened: Option<Instant>,
    /// Removals waiting out the delay, in arrival order.
    delayed: Vec<(Instant, WebhookEvent)>,
}

impl Batcher {
    pub fn new(window: Duration, delay: Duration, events_max: usize) -> Batcher {
        Batcher {
            window,
            delay,
            events_max: events_max.max(1),
            ready: Vec::new(),
            batch_opened: None,
            delayed: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.delayed.is_empty()
    }

    /// Takes an event; false when it was dropped because the batcher is full.
    pub fn push(&mut self, now: Instant, event: WebhookEvent) -> bool {
        let cancels = |pending: &WebhookEvent| match (&event, pending) {
            (
                WebhookEvent::ChannelOccupied { channel },
                WebhookEvent::ChannelVacated { channel: c },
            ) => c == channel,
            (
                WebhookEvent::MemberAdded { channel, user_id },
                WebhookEvent::MemberRemoved {
                    channel: c,
                    user_id: u,
                },
            ) => c == channel && u == user_id,
            _ => false,
        };
        if let Some(i) = self
            .delayed
            .iter()
            .position(|(_, pending)| cancels(pending))
        {
            self.delayed.remove(i);
            return true;
        }
        if matches!(event, WebhookEvent::CacheMiss { .. }) && self.ready.contains(&event) {
            // Several clients hitting one empty cache channel at once raise one cache_miss.
            return true;
        }
        if self.ready.len() + self.delayed.len() >= self.events_max {
            return false;
        }
        match event {
            WebhookEvent::ChannelVacated { .. } | WebhookEvent::MemberRemoved { .. } => {
                self.delayed.push((now + self.delay, event));
            }
            event => {
                self.batch_opened.get_or_insert(now);
                self.ready.push(event);
            }
        }
        true
    }

    /// The next time [`Batcher::poll`] may return a batch.
    pub fn next_deadline(&self) -> Option<Instant> {
        let batch = self.batch_opened.map(|t| t + self.window);
        let delayed = self.delayed.iter().map(|(due, _)| *due).min();
        match (batch, delayed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A batch whose window has closed, if any.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<WebhookEvent>> {
        let mut i = 0;
        while i < self.delayed.len() {
            if self.delayed[i].0 <= now {
                let (due, event) = self.delayed.remove(i);
                self.batch_opened.get_or_insert(due);
                self.ready.push(event);
            } else {
                i += 1;
            }
        }
        match self.batch_opened {
            Some(opened) if opened + self.window <= now && !self.ready.is_empty() => {
                self.batch_opened = None;
                Some(std::mem::take(&mut self.ready))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occupied(c: &str) -> WebhookEvent {
        WebhookEvent::ChannelOccupied { channel: c.into() }
    }
    fn vacated(c: &str) -> WebhookEvent {
        WebhookEvent::ChannelVacated { channel: c.into() }
    }

    #[test]
    fn batches_within_the_window() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Batcher::new(ms(50), ms(3000), 100);
        b.push(t0, occupied("a"));
        b.push(t0 + ms(10), occupied("b"));
        assert_eq!(b.next_deadline(), Some(t0 + ms(50)));
        assert!(b.poll(t0 + ms(49)).is_none());
        assert_eq!(
            b.poll(t0 + ms(50)).unwrap(),
            vec![occupied("a"), occupied("b")]
        );
        assert!(b.is_empty());
    }

    #[test]
    fn vacated_waits_and_a_return_cancels_both() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Batcher::new(ms(50), ms(3000), 100);
        b.push(t0, vacated("a"));
        assert!(b.poll(t0 + ms(100)).is_none());
        b.push(t0 + ms(200), occupied("a"));
        assert!(b.is_empty(), "the channel came back: neither event is sent");
        b.push(t0, vacated("b"));
        assert_eq!(b.next_deadline(), Some(t0 + ms(3000)));
        assert!(
            b.poll(t0 + ms(3000)).is_none(),
            "the delayed event opens a new window"
        );
        assert_eq!(b.poll(t0 + ms(3050)).unwrap(), vec![vacated("b")]);
    }

    #[test]
    fn member_return_cancels_removal() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Duration::ZERO, Duration::from_secs(3), 100);
        b.push(
            t0,
            WebhookEvent::MemberRemoved {
                channel: "p".into(),
                user_id: "1".into(),
            },
        );
        b.push(
            t0,
            WebhookEvent::MemberAdded {
                channel: "p".into(),
                user_id: "1".into(),
            },
        );
        assert!(b.is_empty());
    }

    #[test]
    fn cache_misses_are_deduplicated_within_a_batch() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Duration::from_millis(50), Duration::from_secs(3), 100);
        let miss = || WebhookEvent::CacheMiss {
            channel: "cache-a".into(),
        };
        b.push(t0, miss());
        b.push(t0, miss());
        assert_eq!(
            b.poll(t0 + Duration::from_millis(50)).unwrap(),
            vec![miss()]
        );
    }

    #[test]
    fn bounded() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Duration::from_millis(50), Duration::from_secs(3), 2);
        assert!(b.push(t0, occupied("a")));
        assert!(b.push(t0, vacated("b")));
        assert!(!b.push(t0, occupied("c")));
    }
}
