//! The node-wide state every task, handler and owner of one node holds ([`Shared`]), the
//! clock its decisions are made at and what tells its process apart. Its own module, below
//! the routing and the edge that use it, rather than in `lib.rs`, so that no module has to
//! import the crate root (ARCHITECTURE.md, "Layers").

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use relaymesh_proto::mesh::Reply;
use tokio::sync::{oneshot, watch};

use crate::app::Apps;
use crate::cluster::{ClusterView, Core, Readiness};
use crate::config::Config;
use crate::mesh::peers::Peers;
use crate::outbox::SocketId;
use crate::telemetry::{self, NodeStats};
use crate::webhooks::{Outlet, Recorded};

/// State shared by every connection and request of one node.
pub struct Shared {
    pub config: Config,
    pub apps: Apps,
    pub metrics: PrometheusHandle,
    /// This node's id in the cluster.
    pub node_id: String,
    /// The last cluster view from the control plane (empty when standalone).
    pub view: watch::Sender<Arc<ClusterView>>,
    /// Message counters for the load reported to the control plane.
    pub stats: Arc<NodeStats>,
    /// Mesh links to the other nodes (empty without `[mesh]`).
    pub peers: Peers,
    /// Random per process: tells a restarted node from the one before it.
    pub incarnation: u64,
    /// The cluster core: lease, fencing, other nodes' progress, waiting requests. Its
    /// shell is `rebalance.rs`.
    cluster: Mutex<Core<oneshot::Sender<Reply>>>,
    /// Where the node's time comes from.
    clock: Clock,
    /// Frames an owner here could not send to a node: probed on the next tick.
    pub lost_sends: LostSends,
    /// Set when the node wants the control plane to mark it draining.
    pub drain_requested: watch::Sender<bool>,
    /// Set when a drain finished: the process may exit.
    pub drained: watch::Sender<bool>,
    /// First half of every socket id of this node: random, so ids differ across nodes.
    socket_node: u64,
    next_socket: AtomicU64,
    draining: AtomicBool,
}

/// How a node meets time and the outside world.
pub enum Drive {
    /// The system clock; each app's tasks batch and send its webhooks.
    Real,
    /// A deterministic test moves the clock (from the given time) and reads the webhooks
    /// as raised: nothing here runs on its own.
    ByHand(Instant, Recorded),
}

/// The time every decision of the node is made at.
enum Clock {
    System,
    Manual(Mutex<Instant>),
}

/// What tells one node's process apart; random unless a deterministic test chooses.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub incarnation: u64,
    /// First half of every socket id of this node.
    pub socket_node: u64,
}

impl Identity {
    pub fn random() -> Identity {
        Identity {
            incarnation: rand::random::<u64>() | 1,
            socket_node: rand::random::<u32>() as u64,
        }
    }
}

impl Shared {
    /// The node's state before any task runs: `start` spawns the tasks around it, and a
    /// deterministic test drives it by hand.
    pub fn new(config: Config, identity: Identity, drive: Drive) -> std::io::Result<Shared> {
        let (clock, outlet) = match drive {
            Drive::Real => {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_millis(config.webhooks.timeout_ms))
                    .build()
                    .map_err(std::io::Error::other)?;
                (Clock::System, Outlet::Send(http))
            }
            Drive::ByHand(at, recorded) => {
                (Clock::Manual(Mutex::new(at)), Outlet::Record(recorded))
            }
        };
        let stats = Arc::new(NodeStats::default());
        let node_id = config
            .control_plane
            .node_id
            .clone()
            .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()));
        let standalone = config.control_plane.endpoint.is_none();
        let core = Core::new(node_id.clone(), standalone, config.mesh.settle_deadline());
        Ok(Shared {
            apps: Apps::new(&config, outlet, stats.clone()),
            config,
            metrics: telemetry::handle(),
            cluster: Mutex::new(core),
            node_id,
            view: watch::Sender::new(Arc::new(ClusterView::default())),
            stats,
            peers: Peers::default(),
            incarnation: identity.incarnation,
            clock,
            lost_sends: LostSends::default(),
            drain_requested: watch::Sender::new(false),
            drained: watch::Sender::new(false),
            socket_node: identity.socket_node,
            next_socket: AtomicU64::new(1),
            draining: AtomicBool::new(false),
        })
    }

    pub fn now(&self) -> Instant {
        match &self.clock {
            Clock::System => Instant::now(),
            Clock::Manual(at) => *at.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Moves a manual clock to `at` (a system clock ignores it).
    pub fn set_now(&self, at: Instant) {
        if let Clock::Manual(now) = &self.clock {
            *now.lock().unwrap_or_else(|e| e.into_inner()) = at;
        }
    }

    /// The cluster core; held only for one decision, never across an await.
    pub fn cluster(&self) -> MutexGuard<'_, Core<oneshot::Sender<Reply>>> {
        // Each decision leaves the core consistent: a poisoned lock is still valid.
        self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn next_socket_id(&self) -> SocketId {
        SocketId {
            node: self.socket_node,
            seq: self.next_socket.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the node takes new connections: not draining, not fenced, and standalone or
    /// ready in its cluster by [`Core::readiness`] (its own region linked).
    pub fn readiness(&self) -> Result<Readiness, &'static str> {
        if self.is_draining() {
            return Err("draining");
        }
        if self.config.control_plane.endpoint.is_none() {
            return Ok(Readiness::Ready {
                elsewhere: Vec::new(),
            });
        }
        let core = self.cluster();
        if core.is_fenced() {
            return Err("fenced: this node lost its lease with the control plane");
        }
        let meshed = self.config.mesh.listen.is_some();
        Ok(core.readiness(&self.config.control_plane.region, meshed))
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.readiness(), Ok(Readiness::Ready { .. }))
    }

    /// Lost its lease while the cluster goes on: another node may own its channels now,
    /// so it must not act as an owner until it registers again.
    pub fn is_fenced(&self) -> bool {
        self.cluster().is_fenced()
    }

    /// Stops taking new connections (`/readyz` answers 503).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Asks the control plane (through the follower) to mark this node draining.
    pub fn request_drain(&self) {
        self.drain_requested.send_replace(true);
    }
}

/// An app's channel and the node a numbered frame of it could not be sent to.
type LostSend = (Arc<str>, Box<str>, Box<str>);

/// Channels whose numbered frame could not be sent to a node. The routing fills it and
/// probes them on its tick; it is kept here, with the state that holds it, because `route/`
/// sits above `shared.rs`.
#[derive(Default)]
pub struct LostSends(Mutex<BTreeSet<LostSend>>);

/// Beyond this many, a loss is found with the channel's next frame only.
const LOST_SENDS_MAX: usize = 65_536;

impl LostSends {
    pub(crate) fn add(&self, app_id: &Arc<str>, channel: &str, node: &str) {
        let mut lost = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lost.len() < LOST_SENDS_MAX {
            lost.insert((app_id.clone(), channel.into(), node.into()));
        }
    }

    pub(crate) fn take(&self) -> BTreeSet<LostSend> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
