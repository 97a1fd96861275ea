//! The channels a view change moved to this node, while their nodes may still be
//! resyncing them: a channel this node has no state for yet may have subscribers whose
//! nodes have not sent their part, so its first message starts a settling channel
//! instead of being decided on nothing. The core starts a takeover with each view and
//! ends it (see [`Takeover::over`]); owners only ask [`Takeover::moved_here`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::view::ClusterView;

/// How long after a view change a message for an unknown channel that moved here is held
/// back at most (the settle deadline ends it sooner when it is shorter).
pub const TAKEOVER_HOLD: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Takeover {
    me: Arc<str>,
    previous: Arc<ClusterView>,
    current: Arc<ClusterView>,
    since: Instant,
}

impl Takeover {
    /// A takeover of `current` at `now`; `previous` is the view this node owned channels
    /// under (the empty view after it dropped them all).
    pub fn new(
        me: Arc<str>,
        previous: Arc<ClusterView>,
        current: Arc<ClusterView>,
        now: Instant,
    ) -> Takeover {
        Takeover {
            me,
            previous,
            current,
            since: now,
        }
    }

    /// The view version to settle `channel` of `app` at, when it moved to this node.
    pub fn moved_here(&self, app: &str, channel: &str) -> Option<u64> {
        let me = Some(&*self.me);
        let moved =
            self.previous.owner_of(app, channel) != me && self.current.owner_of(app, channel) == me;
        moved.then_some(self.current.version)
    }

    /// Over once every node is done with its view (`done`), or after the shorter of
    /// [`TAKEOVER_HOLD`] and the settle `deadline`.
    pub fn over(&self, now: Instant, done: u64, deadline: Duration) -> bool {
        self.current.version <= done
            || now.saturating_duration_since(self.since) >= deadline.min(TAKEOVER_HOLD)
    }
}
