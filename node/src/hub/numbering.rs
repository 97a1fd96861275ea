//! What this node received of one channel from each remote owner process: the number of
//! the last frame, so that a frame that never arrived (a broken or full link) shows as a
//! gap instead of being lost without anyone knowing.

/// Owners a channel had recently (more only during handovers that follow each other).
const OWNERS_MAX: usize = 4;

/// Who sent an edge-bound message: another node's process, with its view.
#[derive(Debug, Clone, Copy)]
pub struct Remote<'a> {
    pub node: &'a str,
    pub incarnation: u64,
    pub view_version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The next frame, or a probe that says nothing was missed.
    InOrder,
    /// Frames were lost: the subscribers that had the owner's earlier frames missed some.
    Gap,
}

#[derive(Debug)]
struct Stream {
    owner: Box<str>,
    incarnation: u64,
    last: u64,
}

/// The numbering of one channel's frames, per owner process.
#[derive(Debug, Default)]
pub struct Numbering {
    streams: Vec<Stream>,
    /// The channel moved to this node in this node's view: it rebuilt the channel from
    /// this node's resync, so its numbers may start over. Any other owner that starts
    /// over forgot this node's sockets, and frames were lost.
    fresh_from: Option<Box<str>>,
}

impl Numbering {
    /// The channel moved to `owner`, which numbers anew.
    pub fn expect_fresh(&mut self, owner: &str) {
        self.fresh_from = Some(owner.into());
    }

    /// Whether `from` may start over now (once).
    fn fresh(&mut self, from: Remote<'_>) -> bool {
        let fresh = self.fresh_from.as_deref() == Some(from.node);
        if fresh {
            self.fresh_from = None;
        }
        fresh
    }

    fn stream(&mut self, from: Remote<'_>) -> Option<&mut Stream> {
        self.streams
            .iter_mut()
            .find(|s| &*s.owner == from.node && s.incarnation == from.incarnation)
    }

    fn start(&mut self, from: Remote<'_>, last: u64) {
        if self.streams.len() >= OWNERS_MAX {
            self.streams.remove(0);
        }
        self.streams.push(Stream {
            owner: from.node.into(),
            incarnation: from.incarnation,
            last,
        });
    }

    /// A frame numbered `seq` (a probe repeats the last number without a frame). The
    /// owner numbers from 1 when this node gets its first subscriber there; starting over
    /// (it forgot this node's sockets) is a gap too.
    pub fn frame(&mut self, from: Remote<'_>, seq: u64, probe: bool) -> Check {
        if seq == 0 {
            return Check::InOrder;
        }
        let expected = |last: u64| if probe { last } else { last + 1 };
        // The expectation goes with the owner's first frame, whatever it is.
        let fresh = self.fresh(from);
        let started_over = seq == 1 && !probe && fresh;
        self.advance(
            from,
            seq,
            |last| seq == expected(last) || started_over,
            seq == 1 && !probe,
        )
    }

    /// A subscription answer: the node's frames continue from `seq`. A different number
    /// than the last one received means the subscribers that were there before missed
    /// frames (or were forgotten by the owner).
    pub fn answer(&mut self, from: Remote<'_>, seq: u64) -> Check {
        let fresh = self.fresh(from);
        self.advance(from, seq, |last| last == seq || fresh, true)
    }

    /// Records `seq` as the last number from `from`: in order when `continues` accepts
    /// the previous last number; from an owner not heard of yet, when `first_ok`.
    fn advance(
        &mut self,
        from: Remote<'_>,
        seq: u64,
        continues: impl Fn(u64) -> bool,
        first_ok: bool,
    ) -> Check {
        let in_order = match self.stream(from) {
            Some(stream) => {
                let in_order = continues(stream.last);
                stream.last = seq;
                in_order
            }
            None => {
                self.start(from, seq);
                first_ok
            }
        };
        if in_order {
            Check::InOrder
        } else {
            Check::Gap
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Remote = Remote {
        node: "a",
        incarnation: 1,
        view_version: 1,
    };
    const A_RESTARTED: Remote = Remote {
        node: "a",
        incarnation: 2,
        view_version: 2,
    };
    const B: Remote = Remote {
        node: "b",
        incarnation: 1,
        view_version: 2,
    };

    #[test]
    fn frames_in_order_pass_and_a_skipped_number_is_a_gap() {
        let mut numbering = Numbering::default();
        assert_eq!(numbering.answer(A, 0), Check::InOrder);
        assert_eq!(numbering.frame(A, 1, false), Check::InOrder);
        assert_eq!(numbering.frame(A, 2, false), Check::InOrder);
        assert_eq!(numbering.frame(A, 2, true), Check::InOrder, "a probe");
        assert_eq!(numbering.frame(A, 4, false), Check::Gap);
        assert_eq!(numbering.frame(A, 5, false), Check::InOrder);
        assert_eq!(
            numbering.frame(A, 7, true),
            Check::Gap,
            "a probe past the last"
        );
    }

    #[test]
    fn an_owner_that_starts_over_or_a_new_owner_that_missed_its_start_is_a_gap() {
        let mut numbering = Numbering::default();
        numbering.frame(A, 1, false);
        numbering.frame(A, 2, false);
        assert_eq!(
            numbering.frame(A, 1, false),
            Check::Gap,
            "a forgot this node"
        );
        assert_eq!(numbering.frame(B, 1, false), Check::InOrder, "a new owner");
        assert_eq!(numbering.frame(A_RESTARTED, 3, false), Check::Gap);
        // A late frame of the previous owner continues its own numbering.
        assert_eq!(numbering.frame(A, 2, false), Check::InOrder);
        // A subscription answer that does not continue the numbering.
        assert_eq!(numbering.answer(B, 1), Check::InOrder);
        assert_eq!(numbering.answer(B, 3), Check::Gap);
    }

    #[test]
    fn an_owner_the_channel_moved_back_to_may_start_over_once() {
        let mut numbering = Numbering::default();
        numbering.frame(A, 1, false);
        numbering.frame(A, 2, false);
        numbering.frame(B, 1, false);
        // The channel moves back to a, which rebuilds it from this node's resync.
        numbering.expect_fresh("a");
        assert_eq!(
            numbering.frame(B, 2, false),
            Check::InOrder,
            "b's late frame"
        );
        assert_eq!(numbering.frame(A, 1, false), Check::InOrder);
        assert_eq!(numbering.frame(A, 2, false), Check::InOrder);
        assert_eq!(numbering.frame(A, 1, false), Check::Gap, "only once");
    }
}
