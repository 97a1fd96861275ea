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
pub mod links;
pub mod membership;
pub mod mesh;
pub mod outbox;
pub mod owner;
pub mod rebalance;
pub mod route;
pub mod shared;
pub mod telemetry;
pub mod webhooks;

// The node's state lives in `shared.rs` (below the modules that use it); re-exported here
// for the other crates and the tests, which name it `relaymesh_node::Shared`.
pub use shared::{Drive, Identity, Shared};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use relaymesh_proto::codes::ErrorCode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;

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
    let shared = Arc::new(Shared::new(config, Identity::random(), Drive::Real)?);
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
        mesh_task = Some(links::spawn(
            shared.clone(),
            Arc::new(endpoint),
            stopped.clone(),
        ));
    }
    route::spawn_ticker(Arc::downgrade(&shared));
    let rebalance = rebalance::spawn(shared.clone(), stopped.clone());
    let client_addr = shared
        .config
        .advertise
        .clone()
        .unwrap_or_else(|| local_addr.to_string());
    let membership = membership::spawn(shared.clone(), client_addr, mesh_addr, stopped.clone());
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
