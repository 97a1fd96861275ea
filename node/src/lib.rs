//! relaymesh edge node: the Pusher Channels protocol v7 over WebSocket and the Pusher HTTP
//! API, with local fan-out, webhooks and metrics.
//!
//! [`start`] takes a configuration and an already bound listener (so tests bind
//! `127.0.0.1:0`) and returns a [`NodeHandle`] that must be held; dropping it or calling
//! [`NodeHandle::shutdown`] stops the node.

pub mod app;
pub mod cluster;
pub mod config;
pub mod drain;
pub mod edge;
pub mod frames;
pub mod hub;
pub mod membership;
pub mod mesh;
pub mod outbox;
pub mod owner;
pub mod rebalance;
pub mod route;
pub mod telemetry;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use relaymesh_proto::codes::ErrorCode;
use relaymesh_proto::mesh::Reply;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::app::Apps;
use crate::cluster::{ClusterView, Core, Readiness};
use crate::config::Config;
use crate::outbox::SocketId;
use crate::telemetry::NodeStats;

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
    pub peers: mesh::peers::Peers,
    /// Random per process: tells a restarted node from the one before it.
    pub incarnation: u64,
    /// The cluster core: lease, fencing, other nodes' progress, waiting requests. Its
    /// shell is `rebalance.rs`.
    cluster: Mutex<Core<oneshot::Sender<Reply>>>,
    /// Where the node's time comes from.
    clock: Clock,
    /// Frames an owner here could not send to a node: probed on the next tick.
    pub lost_sends: route::LostSends,
    /// Set when the node wants the control plane to mark it draining.
    pub drain_requested: watch::Sender<bool>,
    /// Set when a drain finished: the process may exit.
    pub drained: watch::Sender<bool>,
    /// First half of every socket id of this node: random, so ids differ across nodes.
    socket_node: u64,
    next_socket: AtomicU64,
    draining: AtomicBool,
}

/// The time every decision of the node is made at: the system's, or one a deterministic
/// test moves by hand.
pub enum Clock {
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
    pub fn new(config: Config, identity: Identity, clock: Clock) -> std::io::Result<Shared> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.webhooks.timeout_ms))
            .build()
            .map_err(std::io::Error::other)?;
        let stats = Arc::new(NodeStats::default());
        let node_id = config
            .control_plane
            .node_id
            .clone()
            .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()));
        let standalone = config.control_plane.endpoint.is_none();
        Ok(Shared {
            apps: Apps::new(&config, &http, stats.clone()),
            config,
            metrics: telemetry::handle(),
            cluster: Mutex::new(Core::new(node_id.clone(), standalone)),
            node_id,
            view: watch::Sender::new(Arc::new(ClusterView::default())),
            stats,
            peers: mesh::peers::Peers::default(),
            incarnation: identity.incarnation,
            clock,
            lost_sends: route::LostSends::default(),
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

/// A running node. Dropping it stops the node without waiting.
pub struct NodeHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept: Option<JoinHandle<()>>,
    membership: Option<JoinHandle<()>>,
    mesh: Option<JoinHandle<()>>,
    rebalance: Option<JoinHandle<()>>,
}

impl NodeHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, asks every client to reconnect elsewhere (4200) and waits up to
    /// `grace` for the connections to close.
    pub async fn shutdown(mut self, grace: Duration) {
        self.shared.set_draining();
        let _ = self.stop.send(true);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        if let Some(membership) = self.membership.take() {
            let _ = membership.await;
        }
        if let Some(mesh) = self.mesh.take() {
            let _ = mesh.await;
        }
        if let Some(rebalance) = self.rebalance.take() {
            let _ = rebalance.await;
        }
        for app in self.shared.apps.all() {
            app.close_all(
                ErrorCode::ReconnectImmediately.as_u16(),
                "Node is shutting down",
            );
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self
            .shared
            .apps
            .all()
            .iter()
            .any(|a| a.connection_count() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        if let Some(membership) = self.membership.take() {
            membership.abort();
        }
        if let Some(mesh) = self.mesh.take() {
            mesh.abort();
        }
        if let Some(rebalance) = self.rebalance.take() {
            rebalance.abort();
        }
    }
}

/// Starts a node on `listener`. Must be called inside a tokio runtime.
pub fn start(config: Config, listener: TcpListener) -> std::io::Result<NodeHandle> {
    let local_addr = listener.local_addr()?;
    let shared = Arc::new(Shared::new(config, Identity::random(), Clock::System)?);
    let (stop, stopped) = watch::channel(false);
    let mut mesh_addr = None;
    let mut mesh_task = None;
    if let Some(listen) = shared.config.mesh.listen {
        let endpoint = mesh::endpoint::Endpoint::bind(&shared.config.mesh, listen, &shared.node_id)
            .map_err(std::io::Error::other)?;
        let bound = endpoint.local_addr().map_err(std::io::Error::other)?;
        mesh_addr = Some(
            shared
                .config
                .mesh
                .advertise
                .clone()
                .unwrap_or_else(|| bound.to_string()),
        );
        mesh_task = Some(mesh::peers::spawn(
            shared.clone(),
            Arc::new(endpoint),
            stopped.clone(),
        ));
    }
    route::spawn_ticker(Arc::downgrade(&shared));
    let rebalance = rebalance::spawn(shared.clone(), stopped.clone());
    let membership = membership::spawn(shared.clone(), local_addr, mesh_addr, stopped.clone());
    let accept = tokio::spawn(accept_loop(listener, shared.clone(), stopped));
    Ok(NodeHandle {
        local_addr,
        shared,
        stop,
        accept: Some(accept),
        membership,
        mesh: mesh_task,
        rebalance: Some(rebalance),
    })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let service = TowerToHyperService::new(edge::http::router(shared));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "http connection ended");
            }
        });
    }
}
