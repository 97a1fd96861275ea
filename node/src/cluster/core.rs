//! The cluster core: what one node knows and decides about its cluster, as plain data.
//!
//! It holds the view the node follows, each other node's progress (the view it finished
//! resyncing, when it last renewed its lease), this node's lease and fence state, whether
//! its part of every channel still has to reach the owners, the takeover of the channels
//! the last view moved here and the settle deadline of rebuilt channels, and the table of
//! requests waiting for an owner's reply. [`Core::handle`] takes the time and one [`Input`] and
//! returns the [`Output`]s for the shell (`rebalance.rs`) to carry out: no clock reads, no
//! locks, no tasks here, so a test drives it step by step with a simulated clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relaymesh_proto::control::{NodeState, OUTAGE_GRACE};
use relaymesh_proto::mesh::Synced;

use super::requests::{Requests, Waiter};
use super::takeover::Takeover;
use super::view::ClusterView;

/// How long a fenced node keeps its clients, in case it registers again at once.
pub const FENCED_CLIENTS_GRACE: Duration = Duration::from_secs(5);
/// How often (in ticks) every other node hears when this node renewed its lease.
const LEASE_NEWS_EVERY: u32 = 2;

/// What the core is told.
#[derive(Debug)]
pub enum Input {
    /// The control plane answered a registration (which said whether the node had
    /// dropped its owner state).
    Registered {
        ttl: Duration,
        heartbeat: Duration,
        reported_state_lost: bool,
    },
    /// The control plane answered a keepalive.
    Renewed,
    /// The node follows a new view.
    View(Arc<ClusterView>),
    /// The shell sent this node's part of the channels of a [`Output::Resync`]; `complete`
    /// is false when an owner could not be reached (everything goes again on a tick).
    Resynced {
        version: u64,
        complete: bool,
    },
    /// Another node finished resyncing `version` and renewed its lease `renewed_ago`.
    Synced {
        from: String,
        version: u64,
        renewed_ago: Option<Duration>,
    },
    /// A mesh link to `node` came up or went down.
    LinkUp(String),
    LinkDown(String),
    /// The periodic check (fencing, lease news, settling deadlines, retries).
    Tick,
}

/// What the shell must do, in order.
#[derive(Debug)]
pub enum Output {
    /// Owners drop what moved away and the sockets of gone nodes; edges send their part
    /// of every moved channel (every channel when `all`) to its owner in `view`, then
    /// report [`Input::Resynced`].
    Resync {
        previous: Arc<ClusterView>,
        view: Arc<ClusterView>,
        all: bool,
    },
    /// Subscriptions whose owner could not be reached go again.
    RetryUnsent,
    /// A link came back: this node's part of every channel `owner` owns goes to it again,
    /// whole, since frames in flight when the link broke may be lost either way (the
    /// owner then drops the sockets the part does not name, and tells where its frames
    /// to this node stand).
    ResyncOwnedBy(String),
    /// To every other node of the view.
    TellNodes(Synced),
    /// Owners hold back the first messages of channels that moved here (`Some`), or no
    /// longer (`None`). Comes before the [`Output::Resync`] of the view it takes over.
    TakeOver(Option<Arc<Takeover>>),
    /// Rebuilt channels whose nodes are all done with `done`, or that started settling at
    /// or before `overdue` (the settle deadline ago), settle.
    Settle { done: u64, overdue: Option<Instant> },
    /// The node lost its lease while the cluster goes on: owners drop every channel.
    Fence,
    /// The node holds its lease again.
    Unfence,
    /// Fenced for [`FENCED_CLIENTS_GRACE`]: clients are asked to reconnect elsewhere.
    SendClientsAway,
}

/// Whether the node serves its clients fully, by the rule of [`Core::readiness`].
#[derive(Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Active and linked to every active node of its region; `elsewhere` are active nodes
    /// of other regions it has no link to (their channels wait, the node still serves).
    Ready { elsewhere: Vec<String> },
    /// Not (yet, or no longer) active in its view.
    NotActive,
    /// Active nodes of its own region it has no link to.
    Unlinked(Vec<String>),
}

/// What this node heard from another node.
#[derive(Debug, Clone, Copy)]
struct Heard {
    /// The newest view it finished resyncing.
    done: u64,
    /// When it last renewed its lease, as far as this node can tell.
    renewed_at: Option<Instant>,
    /// When this node heard it: old news says nothing about now.
    heard_at: Instant,
}

/// This node's lease as the node sees it.
#[derive(Debug, Default)]
struct Lease {
    /// When the last renewal was answered; `None` before the first registration.
    renewed_at: Option<Instant>,
    ttl: Duration,
    heartbeat: Duration,
    registrations: u64,
    /// When this node last saw the control plane out for everyone.
    outage_seen_at: Option<Instant>,
    /// The node dropped its owner state (fenced) since it last registered.
    state_lost: bool,
}

/// One node's cluster state. `W` is what a waiting request is answered through.
pub struct Core<W> {
    me: String,
    /// Without a control plane the node is alone: never fenced, nothing to resync.
    standalone: bool,
    view: Arc<ClusterView>,
    /// Bounded by the view: nodes that left are forgotten on the next view.
    heard: HashMap<String, Heard>,
    lease: Lease,
    fenced: bool,
    fenced_since: Option<Instant>,
    /// The newest view whose resyncs this node all sent.
    resynced: u64,
    /// This node's part of every channel goes to its owner at the next tick (after a
    /// re-registration, or when a resync could not be sent).
    resync_all: bool,
    /// Nodes with a live link (a node with none is cut off from the cluster).
    linked: BTreeMap<String, ()>,
    takeover: Option<Arc<Takeover>>,
    /// The node dropped every channel since the last view: the next one moves them all here.
    forgot_all: bool,
    /// How long a rebuilt channel waits for nodes that are not done with its view.
    settle_deadline: Duration,
    ticks: u32,
    pub requests: Requests<W>,
}

impl<W: Waiter> Core<W> {
    pub fn new(me: String, standalone: bool, settle_deadline: Duration) -> Core<W> {
        Core {
            me,
            standalone,
            view: Arc::default(),
            heard: HashMap::new(),
            lease: Lease::default(),
            fenced: false,
            fenced_since: None,
            resynced: 0,
            resync_all: false,
            linked: BTreeMap::new(),
            takeover: None,
            forgot_all: false,
            settle_deadline,
            ticks: 0,
            requests: Requests::default(),
        }
    }

    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Registered {
                ttl,
                heartbeat,
                reported_state_lost,
            } => {
                // A fenced node whose lease ran out was expired by the control plane: the
                // owners dropped its sockets, and whatever they published meanwhile never
                // reached its clients. They are told to reconnect (and get a fresh start).
                let expired = self.fenced
                    && self
                        .lease
                        .renewed_at
                        .is_some_and(|at| now.saturating_duration_since(at) > self.lease.ttl);
                if expired {
                    out.push(Output::SendClientsAway);
                }
                self.lease.renewed_at = Some(now);
                self.lease.ttl = ttl;
                self.lease.heartbeat = heartbeat;
                if reported_state_lost {
                    self.lease.state_lost = false;
                }
                self.lease.registrations += 1;
                // At once: owners that see this node again may send it their parts now.
                self.check_fence(now, &mut out);
                if self.lease.registrations > 1 {
                    // Owners may have removed this node's sockets while it was away.
                    self.resync_all = true;
                }
            }
            Input::Renewed => self.lease.renewed_at = Some(now),
            Input::View(view) => {
                let previous = std::mem::replace(&mut self.view, view.clone());
                self.heard.retain(|id, _| view.nodes.contains_key(id));
                // Requests waiting for a node that left will not be answered.
                for gone in previous.nodes.keys() {
                    if !view.nodes.contains_key(gone) {
                        self.requests.fail_node(gone);
                    }
                }
                if !self.standalone {
                    let owned_under = if std::mem::take(&mut self.forgot_all) {
                        Arc::default()
                    } else {
                        previous.clone()
                    };
                    let me = self.me.as_str().into();
                    let takeover = Takeover::new(me, owned_under, view.clone(), now);
                    self.takeover = Some(Arc::new(takeover));
                    out.push(Output::TakeOver(self.takeover.clone()));
                    let all = std::mem::take(&mut self.resync_all);
                    out.push(Output::Resync {
                        previous,
                        view,
                        all,
                    });
                }
            }
            Input::Resynced { version, complete } => {
                if complete {
                    self.resynced = self.resynced.max(version);
                } else {
                    // Everything again on the next tick (owners ignore sockets they already
                    // have); until then this node does not say it is done with the view.
                    self.resync_all = true;
                }
                out.push(Output::RetryUnsent);
                let me = self.me.clone();
                self.record(&me, self.resynced, self.lease.renewed_at, now);
                out.push(self.lease_news(now));
                self.settle(now, &mut out);
            }
            Input::Synced {
                from,
                version,
                renewed_ago,
            } => {
                let renewed_at = renewed_ago.and_then(|ago| now.checked_sub(ago));
                self.record(&from, version, renewed_at, now);
                self.settle(now, &mut out);
            }
            Input::LinkUp(node) => {
                self.linked.insert(node.clone(), ());
                out.push(Output::RetryUnsent);
                if !self.standalone && self.view.nodes.contains_key(&node) {
                    out.push(Output::ResyncOwnedBy(node));
                }
            }
            Input::LinkDown(node) => {
                self.linked.remove(&node);
                self.requests.fail_node(&node);
            }
            Input::Tick => self.tick(now, &mut out),
        }
        out
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.ticks = self.ticks.wrapping_add(1);
        self.requests.sweep();
        if self.standalone {
            return;
        }
        if self.ticks % LEASE_NEWS_EVERY == 0 {
            out.push(self.lease_news(now));
        }
        self.check_fence(now, out);
        if self.fenced {
            let since = *self.fenced_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= FENCED_CLIENTS_GRACE {
                out.push(Output::SendClientsAway);
                // Again only after another grace: new clients are refused while fenced.
                self.fenced_since = Some(now);
            }
        } else {
            self.fenced_since = None;
            if self.resync_all {
                self.resync_all = false;
                out.push(Output::Resync {
                    previous: self.view.clone(),
                    view: self.view.clone(),
                    all: true,
                });
            }
        }
        self.settle(now, out);
    }

    /// Ends the takeover once it is over, and lets the rebuilt channels that are due settle.
    fn settle(&mut self, now: Instant, out: &mut Vec<Output>) {
        let done = self.everyone_done();
        let deadline = self.settle_deadline;
        if self
            .takeover
            .as_ref()
            .is_some_and(|t| t.over(now, done, deadline))
        {
            self.takeover = None;
            out.push(Output::TakeOver(None));
        }
        let overdue = now.checked_sub(deadline);
        out.push(Output::Settle { done, overdue });
    }

    fn record(&mut self, node: &str, version: u64, renewed_at: Option<Instant>, now: Instant) {
        let done = self
            .heard
            .get(node)
            .map_or(version, |h| h.done.max(version));
        let heard = Heard {
            done,
            renewed_at,
            heard_at: now,
        };
        self.heard.insert(node.to_owned(), heard);
    }

    fn lease_news(&self, now: Instant) -> Output {
        Output::TellNodes(Synced {
            view_version: self.resynced,
            lease_renewed_ms_ago: self
                .lease
                .renewed_at
                .map(|at| now.saturating_duration_since(at).as_millis() as u64),
        })
    }

    fn check_fence(&mut self, now: Instant, out: &mut Vec<Output>) {
        let fence = self.must_fence(now);
        if fence == self.fenced {
            return;
        }
        self.fenced = fence;
        if fence {
            // Others send their parts again only on a view change: registering as a node
            // that lost its state makes one, even if the lease has not run out.
            self.lease.state_lost = true;
            self.forgot_all = true;
            out.push(Output::Fence);
        } else {
            out.push(Output::Unfence);
        }
    }

    /// Whether this node must stop owning channels. It has not renewed its lease for half
    /// the TTL (so it stops before the control plane expires it and gives its channels to
    /// others), and either the cluster goes on without it (another node renewed two
    /// heartbeats after this node last did) or it can reach no other node. A control plane
    /// that is down for everyone fences no one: nobody renews, and the data plane keeps
    /// going with the last view. When it comes back, nodes register again one after
    /// another; the control plane gives every node [`OUTAGE_GRACE`] for that, so a node
    /// that is not yet back is not left behind during half of it.
    fn must_fence(&mut self, now: Instant) -> bool {
        if self.standalone || !self.lease_in_doubt(now) {
            return false;
        }
        let Some(renewed_at) = self.lease.renewed_at else {
            return false;
        };
        let others: Vec<&String> = self
            .view
            .nodes
            .keys()
            .filter(|id| **id != self.me)
            .collect();
        if others.is_empty() {
            return false;
        }
        if others.iter().all(|id| !self.linked.contains_key(*id)) {
            return true;
        }
        // Past the TTL by every node's word: the control plane saw no renewal for half of
        // it (their news lags by less than that), so it holds everyone's lease for the grace.
        // Only fresh news counts: nodes that dropped this one (it was expired) stop telling
        // it anything, and that silence is no outage.
        let fresh = self.heard.iter().any(|(id, h)| {
            *id != self.me && now.saturating_duration_since(h.heard_at) <= self.lease.ttl / 2
        });
        let outage = fresh
            && now.checked_sub(self.lease.ttl).is_some_and(|long_ago| {
                renewed_at < long_ago && !self.another_renewed_since(long_ago)
            });
        if outage {
            self.lease.outage_seen_at = Some(now);
        }
        let coming_back = self
            .lease
            .outage_seen_at
            .is_some_and(|at| now.saturating_duration_since(at) < OUTAGE_GRACE / 2);
        let left_behind = self.another_renewed_since(renewed_at + 2 * self.lease.heartbeat);
        left_behind && !coming_back
    }

    fn another_renewed_since(&self, after: Instant) -> bool {
        self.heard
            .iter()
            .any(|(id, h)| *id != self.me && h.renewed_at.is_some_and(|at| at > after))
    }

    /// The newest view every node of the view (this one included) is done with.
    pub fn everyone_done(&self) -> u64 {
        self.view
            .nodes
            .keys()
            .map(|id| self.heard.get(id).map_or(0, |h| h.done))
            .min()
            .unwrap_or(0)
    }

    /// Whether no renewal came for half the TTL: the node may be cut off, before the
    /// control plane expires it.
    pub fn lease_in_doubt(&self, now: Instant) -> bool {
        self.lease
            .renewed_at
            .is_some_and(|at| now.saturating_duration_since(at) > self.lease.ttl / 2)
    }

    /// The keepalive interval, to retry registering at that pace while in doubt.
    pub fn heartbeat(&self) -> Duration {
        self.lease.heartbeat
    }

    /// Whether the next registration must say the node dropped its owner state.
    pub fn state_lost(&self) -> bool {
        self.lease.state_lost
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Ready means: active in the view, and linked to every active node of its own region
    /// (`region`). A partition between regions leaves each region's nodes ready for their
    /// local clients (what is owned across the cut waits, with 503s for publishes); a
    /// node cut off inside its region is not, so a load balancer moves its clients to a
    /// node that reaches its region. Without links (`meshed` false) being active is enough.
    pub fn readiness(&self, region: &str, meshed: bool) -> Readiness {
        let active = NodeState::Active as i32;
        if self
            .view
            .nodes
            .get(&self.me)
            .is_none_or(|m| m.state != active)
        {
            return Readiness::NotActive;
        }
        let mut unlinked = Vec::new();
        let mut elsewhere = Vec::new();
        if meshed {
            for (id, node) in &self.view.nodes {
                if *id == self.me || node.state != active || self.linked.contains_key(id) {
                    continue;
                }
                let same_region = node.node.as_ref().is_some_and(|n| n.region == region);
                if same_region {
                    unlinked.push(id.clone());
                } else {
                    elsewhere.push(id.clone());
                }
            }
        }
        if unlinked.is_empty() {
            Readiness::Ready { elsewhere }
        } else {
            Readiness::Unlinked(unlinked)
        }
    }
}

#[cfg(test)]
mod tests;
