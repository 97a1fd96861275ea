//! Sockets that left a channel, remembered for a while. A node's messages about a socket
//! can take two paths for a moment (one forwarded under an older view, one direct under
//! the newer): a join that arrives after its leave must not bring the socket back as a
//! ghost subscriber (and presence member) that nothing will ever remove.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::outbox::SocketId;

/// Longer than any message takes over two hops.
const REMEMBERED_FOR: Duration = Duration::from_secs(30);
/// Per shard; beyond, the oldest are forgotten first.
const REMEMBERED_MAX: usize = 1024;

type Key = (Box<str>, SocketId);

#[derive(Default)]
pub(super) struct Left {
    /// (channel, socket) → the newest attempt the leave covers.
    sockets: HashMap<Key, u64>,
    /// In the order they left, with until when they are remembered.
    order: VecDeque<(Instant, Key)>,
}

impl Left {
    pub(super) fn record(&mut self, channel: &str, socket: SocketId, attempt: u64, now: Instant) {
        while let Some((until, _)) = self.order.front() {
            if *until > now && self.order.len() < REMEMBERED_MAX {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.sockets.remove(&key);
            }
        }
        let key: Key = (channel.into(), socket);
        if self.sockets.insert(key.clone(), attempt).is_none() {
            self.order.push_back((now + REMEMBERED_FOR, key));
        }
    }

    /// Whether a join of `socket` (its attempt) came after the socket had already left.
    pub(super) fn is_over(
        &self,
        channel: &str,
        socket: SocketId,
        attempt: u64,
        now: Instant,
    ) -> bool {
        if self.sockets.is_empty() {
            return false;
        }
        let remembered =
            self.order.front().is_some_and(|(until, _)| *until > now) || self.order.len() > 1;
        remembered
            && self
                .sockets
                .get(&(Box::from(channel), socket))
                .is_some_and(|over| attempt <= *over)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_after_its_leave_is_over_and_a_newer_one_is_not() {
        let t0 = Instant::now();
        let socket = SocketId { node: 1, seq: 1 };
        let mut left = Left::default();
        assert!(!left.is_over("c", socket, 3, t0));
        left.record("c", socket, 5, t0);
        assert!(left.is_over("c", socket, 3, t0));
        assert!(left.is_over("c", socket, 5, t0));
        assert!(
            !left.is_over("c", socket, 6, t0),
            "joined again after the leave"
        );
        assert!(!left.is_over("other", socket, 3, t0));
        // Forgotten once another leave comes after the time is up.
        left.record("c", SocketId { node: 1, seq: 2 }, 1, t0 + REMEMBERED_FOR);
        assert!(!left.is_over("c", socket, 3, t0 + REMEMBERED_FOR));
    }

    #[test]
    fn it_is_bounded() {
        let t0 = Instant::now();
        let mut left = Left::default();
        for seq in 0..(REMEMBERED_MAX as u64 * 2) {
            left.record("c", SocketId { node: 1, seq }, 1, t0);
        }
        assert_eq!(left.sockets.len(), REMEMBERED_MAX);
        assert_eq!(left.order.len(), REMEMBERED_MAX);
    }
}
