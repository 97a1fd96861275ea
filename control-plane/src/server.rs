//! The gRPC services over the [`Registry`]: one lock around the registry, every change
//! persisted (when durable state changed) and broadcast to watchers while the lock is held,
//! so every watcher sees the versions in order.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use relaymesh_proto::control::membership_server::Membership;
use relaymesh_proto::control::ops_server::Ops;
use relaymesh_proto::control::*;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::registry::{Registry, RegistryError};
use crate::store::{NodeRecord, Snapshot, Store, StoredApp, StoredMember};
use crate::telemetry;
use crate::Config;

/// Versions reserved per ceiling write.
const VERSION_RESERVATION: u64 = 1_000;
/// Updates a watcher may fall behind before it is sent a full view instead. Deltas are
/// small; a full view of a large cluster is not, so the backlog is deep enough for a
/// registration storm (every node of a 1,000-node cluster re-registering) to stay deltas.
const WATCH_BACKLOG: usize = 16_384;
/// Node records kept; the least recently registered are forgotten beyond it (nodes that
/// restart with a fresh random id would otherwise grow the state file forever).
const NODE_RECORDS_MAX: usize = 10_000;
/// Messages buffered per stream towards one client.
const STREAM_BUFFER: usize = 64;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

struct State {
    registry: Registry,
    snapshot: Snapshot,
    /// Node records changed since the last save; flushed by [`ControlPlane::expire`]'s tick.
    nodes_dirty: bool,
}

/// The gRPC face of a shared [`ControlPlane`].
#[derive(Clone)]
pub struct Service(pub Arc<ControlPlane>);

impl std::ops::Deref for Service {
    type Target = ControlPlane;
    fn deref(&self) -> &ControlPlane {
        &self.0
    }
}

pub struct ControlPlane {
    state: Mutex<State>,
    store: Store,
    updates: broadcast::Sender<Arc<ViewUpdate>>,
    config: Config,
    /// Turns true on shutdown: long-lived streams end so the server can stop.
    stopping: watch::Receiver<bool>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(&mut buf[..]);
    hex::encode(buf)
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Status {
        match e {
            RegistryError::UnknownLease => Status::not_found(e.to_string()),
            RegistryError::UnknownNode(_) | RegistryError::UnknownApp(_) => {
                Status::not_found(e.to_string())
            }
            RegistryError::DuplicateKey(_) => Status::already_exists(e.to_string()),
        }
    }
}

impl ControlPlane {
    pub fn new(
        config: Config,
        store: Store,
        snapshot: Snapshot,
        stopping: watch::Receiver<bool>,
    ) -> ControlPlane {
        let apps = snapshot.apps.iter().cloned().map(App::from).collect();
        let mut registry = Registry::new(snapshot.version_ceiling, config.lease_ttl, apps);
        let members: Vec<_> = snapshot
            .members
            .iter()
            .filter_map(|m| m.restore(&snapshot.nodes))
            .collect();
        registry.restore(Instant::now(), members);
        let (updates, _) = broadcast::channel(WATCH_BACKLOG);
        ControlPlane {
            state: Mutex::new(State {
                registry,
                snapshot,
                nodes_dirty: false,
            }),
            store,
            updates,
            config,
            stopping,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the registry consistent; a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves versions on disk before the first is used, then publishes the update.
    pub fn startup(&self) -> Result<(), crate::store::StoreError> {
        let mut state = self.lock();
        let ceiling = state.registry.version() + VERSION_RESERVATION;
        state.snapshot.version_ceiling = ceiling;
        self.store.save(&state.snapshot)?;
        telemetry::view(&state.registry);
        Ok(())
    }

    /// Persists what `durable` changed (and a new version reservation when needed), then
    /// broadcasts the update. Called with the lock held.
    fn commit(&self, state: &mut State, update: ViewUpdate, durable: bool) -> Result<(), Status> {
        let mut save = durable;
        if !update.members.is_empty() || !update.removed_nodes.is_empty() {
            state.snapshot.members = state
                .registry
                .members()
                .map(|m| StoredMember::new(&m.info.node_id, m.state))
                .collect();
            // Membership is saved within a tick, not on every keepalive that changes it.
            state.nodes_dirty = true;
        }
        if update.version >= state.snapshot.version_ceiling {
            state.snapshot.version_ceiling = update.version + VERSION_RESERVATION;
            save = true;
        }
        if durable {
            state.snapshot.apps = state.registry.apps().map(StoredApp::from).collect();
        }
        if save {
            state.nodes_dirty = false;
            self.store.save(&state.snapshot).map_err(|e| {
                tracing::error!(error = %e, "cannot persist state");
                Status::unavailable(format!("cannot persist state: {e}"))
            })?;
        }
        telemetry::view(&state.registry);
        // No receiver is fine: nobody watches yet.
        let _ = self.updates.send(Arc::new(update));
        Ok(())
    }

    /// Removes expired leases and saves changed node records; called periodically.
    pub fn expire(&self) {
        let mut state = self.lock();
        if state.nodes_dirty {
            // Node records are informational: saved within a tick, not on every registration.
            match self.store.save(&state.snapshot) {
                Ok(()) => state.nodes_dirty = false,
                Err(e) => tracing::error!(error = %e, "cannot persist node records"),
            }
        }
        if let Some((expired, update)) = state.registry.expire(Instant::now()) {
            for node_id in &expired {
                tracing::warn!(node_id, "lease expired");
            }
            metrics::counter!(telemetry::LEASE_EXPIRIES).increment(expired.len() as u64);
            let _ = self.commit(&mut state, update, false);
        }
    }

    fn app_from_settings(&self, base: App, settings: Option<AppSettings>) -> Result<App, Status> {
        let mut app = base;
        if let Some(s) = settings {
            if let Some(v) = s.enabled {
                app.enabled = v;
            }
            if let Some(v) = s.client_events {
                app.client_events = v;
            }
            if let Some(v) = s.client_event_rate {
                app.client_event_rate = v;
            }
            if let Some(v) = s.max_connections {
                app.max_connections = v;
            }
            if let Some(v) = s.max_presence_members {
                app.max_presence_members = v;
            }
            if let Some(v) = s.max_event_bytes {
                app.max_event_bytes = v;
            }
            if s.set_webhooks {
                app.webhooks = s.webhooks;
            }
        }
        validate_app(&app)?;
        Ok(app)
    }
}

/// Rejects settings no node could serve.
fn validate_app(app: &App) -> Result<(), Status> {
    if app.client_event_rate == 0 {
        return Err(Status::invalid_argument(
            "client_event_rate must be at least 1",
        ));
    }
    if app.max_presence_members == 0 {
        return Err(Status::invalid_argument(
            "max_presence_members must be at least 1",
        ));
    }
    if app.max_event_bytes == 0 || app.max_event_bytes > 1 << 20 {
        return Err(Status::invalid_argument(
            "max_event_bytes must be 1 to 1048576",
        ));
    }
    for url in &app.webhooks {
        match reqwest::Url::parse(url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => {
                return Err(Status::invalid_argument(format!(
                    "webhook {url:?} is not an http(s) URL"
                )))
            }
        }
    }
    Ok(())
}

fn require(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    if value.len() > 256 {
        return Err(Status::invalid_argument(format!(
            "{field} is longer than 256 bytes"
        )));
    }
    Ok(())
}

/// A stream fed by a task through a bounded channel.
fn channel_stream<T: Send + 'static>() -> (mpsc::Sender<Result<T, Status>>, BoxStream<T>) {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    (
        tx,
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
}

/// Wraps a handler: counts the call by method and status code.
fn observed<T>(method: &'static str, result: Result<T, Status>) -> Result<T, Status> {
    let code = match &result {
        Ok(_) => "ok".to_owned(),
        Err(status) => format!("{:?}", status.code()),
    };
    metrics::counter!(telemetry::API_CALLS, "method" => method, "code" => code).increment(1);
    result
}

#[tonic::async_trait]
impl Membership for Service {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        observed(
            "Register",
            (|| {
                let request = request.into_inner();
                let state_lost = request.state_lost;
                let info = request
                    .node
                    .ok_or_else(|| Status::invalid_argument("node is required"))?;
                require("node_id", &info.node_id)?;
                require("region", &info.region)?;
                let lease_id = random_hex(16);
                let mut state = self.lock();
                let record = NodeRecord::new(&info, unix_ms());
                state.snapshot.nodes.retain(|n| n.node_id != record.node_id);
                state.snapshot.nodes.push(record);
                if state.snapshot.nodes.len() > NODE_RECORDS_MAX {
                    // Pushed in registration order: the front is the least recent.
                    let excess = state.snapshot.nodes.len() - NODE_RECORDS_MAX;
                    state.snapshot.nodes.drain(..excess);
                }
                tracing::info!(
                    node_id = info.node_id,
                    region = info.region,
                    "node registered"
                );
                let update =
                    state
                        .registry
                        .register(Instant::now(), info, lease_id.clone(), state_lost);
                self.commit(&mut state, update, true)?;
                Ok(Response::new(RegisterResponse {
                    lease_id,
                    ttl_ms: self.config.lease_ttl.as_millis() as u64,
                    heartbeat_ms: self.config.heartbeat.as_millis() as u64,
                }))
            })(),
        )
    }

    type KeepAliveStream = BoxStream<KeepAliveResponse>;

    async fn keep_alive(
        &self,
        request: Request<Streaming<KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, stream) = channel_stream();
        let control = self.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            loop {
                let beat = tokio::select! {
                    beat = incoming.message() => match beat {
                        Ok(Some(beat)) => beat,
                        _ => return,
                    },
                    _ = stopping.changed() => return,
                };
                let result = {
                    let mut state = control.lock();
                    let load = beat.load.unwrap_or_default();
                    match state
                        .registry
                        .keep_alive(Instant::now(), &beat.lease_id, load)
                    {
                        Ok((node_state, update)) => {
                            if let Some(update) = update {
                                let _ = control.commit(&mut state, update, false);
                            }
                            Ok(KeepAliveResponse {
                                ttl_ms: control.config.lease_ttl.as_millis() as u64,
                                state: node_state as i32,
                            })
                        }
                        Err(e) => Err(Status::from(e)),
                    }
                };
                let failed = result.is_err();
                let _ = observed(
                    "KeepAlive",
                    result.as_ref().map(|_| ()).map_err(Clone::clone),
                );
                if tx.send(result).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn leave(
        &self,
        request: Request<LeaveRequest>,
    ) -> Result<Response<LeaveResponse>, Status> {
        observed(
            "Leave",
            (|| {
                let mut state = self.lock();
                let update = state.registry.leave(&request.get_ref().lease_id)?;
                self.commit(&mut state, update, false)?;
                Ok(Response::new(LeaveResponse {}))
            })(),
        )
    }

    async fn drain_self(
        &self,
        request: Request<DrainSelfRequest>,
    ) -> Result<Response<DrainSelfResponse>, Status> {
        observed(
            "DrainSelf",
            (|| {
                let mut state = self.lock();
                if let Some(update) = state.registry.drain_lease(&request.get_ref().lease_id)? {
                    self.commit(&mut state, update, false)?;
                }
                Ok(Response::new(DrainSelfResponse {}))
            })(),
        )
    }

    type WatchStream = BoxStream<ViewUpdate>;

    async fn watch(
        &self,
        _request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (mut updates, full) = {
            let state = self.lock();
            (self.updates.subscribe(), state.registry.full_view())
        };
        let (tx, stream) = channel_stream();
        let control = self.clone();
        tokio::spawn(async move {
            let mut sent = full.version;
            if tx.send(Ok(full)).await.is_err() {
                return;
            }
            let mut stopping = control.stopping.clone();
            loop {
                let received = tokio::select! {
                    received = updates.recv() => received,
                    _ = stopping.changed() => return,
                };
                let update = match received {
                    Ok(update) if update.version <= sent => continue,
                    Ok(update) => ViewUpdate::clone(&update),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too far behind for deltas: start again from the whole view.
                        let state = control.lock();
                        updates = control.updates.subscribe();
                        state.registry.full_view()
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                sent = update.version;
                if tx.send(Ok(update)).await.is_err() {
                    return;
                }
            }
        });
        let _ = observed("Watch", Ok(()));
        Ok(Response::new(stream))
    }
}

#[tonic::async_trait]
impl Ops for Service {
    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let state = self.lock();
        let now = Instant::now();
        let nodes = state
            .registry
            .members()
            .map(|m| NodeStatus {
                member: Some(Member {
                    node: Some(m.info.clone()),
                    state: m.state as i32,
                }),
                lease_age_ms: now.saturating_duration_since(m.registered).as_millis() as u64,
                load: Some(m.load),
            })
            .collect();
        observed(
            "ListNodes",
            Ok(Response::new(ListNodesResponse {
                version: state.registry.version(),
                nodes,
            })),
        )
    }

    async fn drain_node(
        &self,
        request: Request<DrainNodeRequest>,
    ) -> Result<Response<DrainNodeResponse>, Status> {
        observed(
            "DrainNode",
            (|| {
                let mut state = self.lock();
                if let Some(update) = state.registry.drain(&request.get_ref().node_id)? {
                    self.commit(&mut state, update, false)?;
                }
                Ok(Response::new(DrainNodeResponse {}))
            })(),
        )
    }

    async fn channel_owner(
        &self,
        request: Request<ChannelOwnerRequest>,
    ) -> Result<Response<ChannelOwnerResponse>, Status> {
        observed(
            "ChannelOwner",
            (|| {
                let request = request.get_ref();
                require("app_id", &request.app_id)?;
                relaymesh_proto::channel::validate_channel_name(&request.channel)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let state = self.lock();
                let owner = state
                    .registry
                    .owner(&request.app_id, &request.channel)
                    .cloned()
                    .ok_or_else(|| Status::failed_precondition("no active node"))?;
                Ok(Response::new(ChannelOwnerResponse {
                    version: state.registry.version(),
                    owner: Some(owner),
                }))
            })(),
        )
    }

    async fn create_app(
        &self,
        request: Request<CreateAppRequest>,
    ) -> Result<Response<App>, Status> {
        observed(
            "CreateApp",
            (|| {
                let mut state = self.lock();
                let id = loop {
                    let id = rand::rng().random_range(100_000..10_000_000u32).to_string();
                    if state.registry.app(&id).is_none() {
                        break id;
                    }
                };
                let defaults = App {
                    id,
                    key: random_hex(10),
                    secret: random_hex(16),
                    enabled: true,
                    client_events: true,
                    client_event_rate: 10,
                    max_connections: 0,
                    max_presence_members: 100,
                    max_event_bytes: 10 * 1024,
                    webhooks: Vec::new(),
                };
                let app = self.app_from_settings(defaults, request.into_inner().settings)?;
                let update = state.registry.put_app(app.clone())?;
                self.commit(&mut state, update, true)?;
                tracing::info!(app_id = app.id, "app created");
                Ok(Response::new(app))
            })(),
        )
    }

    async fn list_apps(
        &self,
        _: Request<ListAppsRequest>,
    ) -> Result<Response<ListAppsResponse>, Status> {
        let apps = self.lock().registry.apps().cloned().collect();
        observed("ListApps", Ok(Response::new(ListAppsResponse { apps })))
    }

    async fn update_app(
        &self,
        request: Request<UpdateAppRequest>,
    ) -> Result<Response<App>, Status> {
        observed(
            "UpdateApp",
            (|| {
                let request = request.into_inner();
                let mut state = self.lock();
                let current = state
                    .registry
                    .app(&request.app_id)
                    .cloned()
                    .ok_or_else(|| Status::not_found(format!("no app {:?}", request.app_id)))?;
                let app = self.app_from_settings(current, request.settings)?;
                let update = state.registry.put_app(app.clone())?;
                self.commit(&mut state, update, true)?;
                Ok(Response::new(app))
            })(),
        )
    }

    async fn delete_app(
        &self,
        request: Request<DeleteAppRequest>,
    ) -> Result<Response<DeleteAppResponse>, Status> {
        observed(
            "DeleteApp",
            (|| {
                let mut state = self.lock();
                let update = state.registry.delete_app(&request.get_ref().app_id)?;
                self.commit(&mut state, update, true)?;
                Ok(Response::new(DeleteAppResponse {}))
            })(),
        )
    }

    async fn rotate_secret(
        &self,
        request: Request<RotateSecretRequest>,
    ) -> Result<Response<App>, Status> {
        observed(
            "RotateSecret",
            (|| {
                let mut state = self.lock();
                let mut app = state
                    .registry
                    .app(&request.get_ref().app_id)
                    .cloned()
                    .ok_or_else(|| {
                        Status::not_found(format!("no app {:?}", request.get_ref().app_id))
                    })?;
                app.secret = random_hex(16);
                let update = state.registry.put_app(app.clone())?;
                self.commit(&mut state, update, true)?;
                Ok(Response::new(app))
            })(),
        )
    }

    async fn cluster_totals(
        &self,
        _: Request<ClusterTotalsRequest>,
    ) -> Result<Response<ClusterTotalsResponse>, Status> {
        let state = self.lock();
        let mut totals = ClusterTotalsResponse {
            version: state.registry.version(),
            apps: state.registry.apps().count() as u64,
            ..ClusterTotalsResponse::default()
        };
        for m in state.registry.members() {
            totals.nodes += 1;
            totals.connections += m.load.connections;
            totals.messages_in_per_sec += m.load.messages_in_per_sec;
            totals.messages_out_per_sec += m.load.messages_out_per_sec;
        }
        observed("ClusterTotals", Ok(Response::new(totals)))
    }
}
