//! The task that keeps a node in the cluster: register, send keepalives with the node's
//! load, apply the watch stream, leave on shutdown. Any failure (control plane gone, lease
//! lost, a gap in the stream) ends the session; the task registers again after a jittered,
//! capped backoff while the node keeps serving with its last view.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use relaymesh_proto::bearer::BearerToken;
use relaymesh_proto::control::membership_client::MembershipClient;
use relaymesh_proto::control::{
    DrainSelfRequest, KeepAliveRequest, LeaveRequest, NodeInfo, NodeLoad, NodeState,
    RegisterRequest, WatchRequest,
};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;

use crate::cluster::view::{ClusterView, ViewError};
use crate::cluster::Input;
use crate::rebalance;
use crate::shared::Shared;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Short: a node that cannot reach the control plane while others do is fenced, so it must
/// notice quickly that the control plane is back.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
enum FollowError {
    #[error("cannot reach the control plane: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("control plane refused: {0}")]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    View(#[from] ViewError),
    #[error("the join token is not printable ASCII")]
    Token,
    #[error("the {0} stream ended")]
    Ended(&'static str),
}

/// Starts following the control plane named in the config; returns `None` without one.
pub fn spawn(
    shared: Arc<Shared>,
    client_addr: String,
    mesh_addr: Option<String>,
    stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let endpoint = shared.config.control_plane.endpoint.clone()?;
    Some(tokio::spawn(run(
        shared,
        endpoint,
        client_addr,
        mesh_addr.unwrap_or_default(),
        stop,
    )))
}

async fn run(
    shared: Arc<Shared>,
    endpoint: String,
    client_addr: String,
    mesh_addr: String,
    mut stop: watch::Receiver<bool>,
) {
    let cp = &shared.config.control_plane;
    let info = NodeInfo {
        node_id: shared.node_id.clone(),
        region: cp.region.clone(),
        client_addr,
        mesh_addr,
        version: env!("CARGO_PKG_VERSION").into(),
        capacity: cp.capacity,
        incarnation: shared.incarnation,
    };
    let mut backoff = BACKOFF_FIRST;
    loop {
        let mut registered = false;
        match follow(&shared, &endpoint, &info, &mut stop, &mut registered).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, endpoint, "control plane session ended; the node keeps its last view")
            }
        }
        if registered {
            backoff = BACKOFF_FIRST;
        }
        // A node whose lease is in doubt retries every heartbeat: when the control plane
        // comes back, the last node to register again is the one that may be fenced.
        let heartbeat = {
            let core = shared.cluster();
            core.lease_in_doubt(shared.now()).then(|| core.heartbeat())
        };
        if let Some(heartbeat) = heartbeat {
            backoff = backoff.min(heartbeat.max(BACKOFF_FIRST));
        }
        let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.5));
        tokio::select! {
            _ = tokio::time::sleep(jittered) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Rates of the node's message counters between two keepalives.
struct LoadMeter {
    at: Instant,
    messages_in: u64,
    messages_out: u64,
}

impl LoadMeter {
    fn new(shared: &Shared) -> LoadMeter {
        LoadMeter {
            at: Instant::now(),
            messages_in: shared.stats.messages_in.load(Ordering::Relaxed),
            messages_out: shared.stats.messages_out.load(Ordering::Relaxed),
        }
    }

    fn sample(&mut self, shared: &Shared) -> NodeLoad {
        let now = LoadMeter::new(shared);
        let secs = now.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let load = NodeLoad {
            connections: shared
                .apps
                .all()
                .iter()
                .map(|a| a.connection_count() as u64)
                .sum(),
            messages_in_per_sec: (now.messages_in - self.messages_in) as f64 / secs,
            messages_out_per_sec: (now.messages_out - self.messages_out) as f64 / secs,
        };
        *self = now;
        load
    }
}

/// One session with the control plane; returns `Ok` only when the node stops.
async fn follow(
    shared: &Arc<Shared>,
    endpoint: &str,
    info: &NodeInfo,
    stop: &mut watch::Receiver<bool>,
    registered: &mut bool,
) -> Result<(), FollowError> {
    let channel = Endpoint::from_shared(endpoint.to_owned())?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await?;
    let token = BearerToken::new(&shared.config.control_plane.join_token)
        .map_err(|_| FollowError::Token)?;
    let mut client = MembershipClient::with_interceptor(channel, token);
    let state_lost = shared.cluster().state_lost();
    let lease = client
        .register(RegisterRequest {
            node: Some(info.clone()),
            state_lost,
        })
        .await?
        .into_inner();
    *registered = true;
    let ttl = Duration::from_millis(lease.ttl_ms);
    let heartbeat = Duration::from_millis(lease.heartbeat_ms.max(10));
    let answered = Input::Registered {
        ttl,
        heartbeat,
        reported_state_lost: state_lost,
    };
    rebalance::input(shared, shared.now(), answered);
    tracing::info!(
        node_id = info.node_id,
        ttl_ms = lease.ttl_ms,
        "registered with the control plane"
    );
    let (beats, beats_rx) = mpsc::channel(4);
    let mut answers = client
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(beats_rx))
        .await?
        .into_inner();
    let mut updates = client.watch(WatchRequest {}).await?.into_inner();
    let mut ticker = tokio::time::interval(heartbeat);
    let mut meter = LoadMeter::new(shared);
    let mut drain_requested = shared.drain_requested.subscribe();
    let mut drain_sent = false;
    let mut view = ClusterView::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let beat = KeepAliveRequest { lease_id: lease.lease_id.clone(), load: Some(meter.sample(shared)) };
                beats.send(beat).await.map_err(|_| FollowError::Ended("keepalive"))?;
            }
            answer = answers.message() => {
                answer?.ok_or(FollowError::Ended("keepalive"))?;
                rebalance::input(shared, shared.now(), Input::Renewed);
            }
            update = updates.message() => {
                let update = update?.ok_or(FollowError::Ended("watch"))?;
                let apps_changed = update.full || !update.apps.is_empty() || !update.removed_apps.is_empty();
                view.apply(update)?;
                if apps_changed {
                    shared.apps.sync_registry(view.app_configs());
                }
                if view.state_of(&info.node_id) == Some(NodeState::Draining) && !shared.is_draining() {
                    tracing::warn!("the control plane marked this node draining: moving its clients elsewhere");
                    shared.set_draining();
                    tokio::spawn(crate::drain::drain(shared.clone()));
                }
                shared.view.send_replace(Arc::new(view.clone()));
            }
            _ = async { drain_requested.wait_for(|d| *d).await.map(|_| ()) }, if !drain_sent => {
                drain_sent = true;
                client.drain_self(DrainSelfRequest { lease_id: lease.lease_id.clone() }).await?;
            }
            _ = stop.changed() => {
                let leave = client.leave(LeaveRequest { lease_id: lease.lease_id.clone() });
                let _ = tokio::time::timeout(CONNECT_TIMEOUT, leave).await;
                return Ok(());
            }
        }
    }
}
