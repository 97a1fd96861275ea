//! The gRPC services over the [`Registry`]: one lock around the registry, every change
//! persisted (when durable state changed) and broadcast to watchers while the lock is held,
//! so every watcher sees the versions in order.
//!
//! A durable change (apps, registrations) is made on a copy of the state, which replaces it
//! only once saved: a change that cannot be saved is neither kept nor broadcast, and the
//! operator is told. Membership changes (activations, leaves, drains, expiries) are made in
//! place and saved within a tick; they use only versions already reserved on disk.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use relaymesh_proto::control::membership_server::Membership;
use relaymesh_proto::control::*;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::registry::{Registry, RegistryError};
use crate::store::{NodeRecord, Snapshot, Store, StoreError, StoredApp, StoredViewNode};
use crate::telemetry;
use crate::Config;

/// Versions reserved per ceiling write; more are reserved once half are used, so that
/// membership changes, which are not saved as they happen, rarely wait for a reservation.
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

#[derive(Clone)]
struct State {
    registry: Registry,
    /// As last saved; its apps and nodes are taken from the registry on every save.
    snapshot: Snapshot,
    /// Membership changed since the last save; flushed by [`ControlPlane::expire`]'s tick.
    nodes_dirty: bool,
}

impl State {
    fn reservation_due(&self) -> bool {
        self.registry.version() + VERSION_RESERVATION / 2 >= self.snapshot.version_ceiling
    }

    /// A copy to change and save in place of this state. It reserves more versions when
    /// due, which the copy's registry may hand out as they are saved with it.
    fn next(&self) -> State {
        let mut next = self.clone();
        if next.reservation_due() {
            next.snapshot.version_ceiling = next.registry.version() + VERSION_RESERVATION;
            next.registry.reserve(next.snapshot.version_ceiling);
        }
        next
    }
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

/// What the caller of a change that could not be saved is told.
fn unavailable(e: &dyn std::fmt::Display) -> Status {
    Status::unavailable(format!("cannot persist state: {e}"))
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Status {
        match e {
            RegistryError::UnknownLease => Status::not_found(e.to_string()),
            RegistryError::UnknownNode(_) | RegistryError::UnknownApp(_) => {
                Status::not_found(e.to_string())
            }
            RegistryError::DuplicateKey(_) => Status::already_exists(e.to_string()),
            RegistryError::Unreserved => unavailable(&e),
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
        let in_view: Vec<_> = snapshot
            .in_view
            .iter()
            .filter_map(|n| n.restore(&snapshot.nodes))
            .collect();
        registry.restore(Instant::now(), in_view);
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

    /// Reserves versions on disk before the first is used.
    pub fn startup(&self) -> Result<(), StoreError> {
        let mut state = self.lock();
        let next = state.next();
        self.save(&mut state, next)?;
        telemetry::view(&state.registry);
        Ok(())
    }

    /// Saves `next` (from [`State::next`]) and only then makes it the state: after a failed
    /// save the state is as it was, and a version `next` took is the next change's.
    fn save(&self, state: &mut State, mut next: State) -> Result<(), StoreError> {
        next.snapshot.apps = next.registry.apps().map(StoredApp::from).collect();
        next.snapshot.in_view = next
            .registry
            .nodes()
            .map(|m| StoredViewNode::new(&m.info.node_id, m.state))
            .collect();
        if let Err(e) = self.store.save(&next.snapshot) {
            metrics::counter!(telemetry::SAVE_FAILURES).increment(1);
            tracing::error!(error = %e, "cannot persist state");
            return Err(e);
        }
        next.nodes_dirty = false;
        *state = next;
        Ok(())
    }

    /// Makes a durable change on a copy of the state, saves it, and only then makes it the
    /// state and broadcasts it. Called with the lock held.
    fn change_durably<T>(
        &self,
        state: &mut State,
        change: impl FnOnce(&mut State) -> Result<(T, ViewUpdate), Status>,
    ) -> Result<T, Status> {
        let mut next = state.next();
        let (value, update) = change(&mut next)?;
        self.save(state, next).map_err(|e| unavailable(&e))?;
        self.publish(state, update);
        Ok(value)
    }

    /// Broadcasts a membership change made in place; it is saved by the next tick. Called
    /// with the lock held.
    fn publish_membership(&self, state: &mut State, update: ViewUpdate) {
        state.nodes_dirty = true;
        self.publish(state, update);
    }

    fn publish(&self, state: &State, update: ViewUpdate) {
        telemetry::view(&state.registry);
        // No receiver is fine: nobody watches yet.
        let _ = self.updates.send(Arc::new(update));
    }

    /// Saves changed membership and reserves versions when due, then removes expired
    /// leases; called periodically.
    pub fn expire(&self) {
        let mut state = self.lock();
        if state.nodes_dirty || state.reservation_due() {
            let next = state.next();
            // Logged and counted; tried again on the next tick.
            let _ = self.save(&mut state, next);
        }
        if let Some((expired, update)) = state.registry.expire(Instant::now()) {
            for node_id in &expired {
                tracing::warn!(node_id, "lease expired");
            }
            metrics::counter!(telemetry::LEASE_EXPIRIES).increment(expired.len() as u64);
            self.publish_membership(&mut state, update);
        }
    }

    /// Adds or replaces an app, durably.
    fn put_app(&self, state: &mut State, app: App) -> Result<App, Status> {
        self.change_durably(state, |next| {
            let update = next.registry.put_app(app.clone())?;
            Ok((app, update))
        })
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
                let (node_id, region) = (info.node_id.clone(), info.region.clone());
                let mut state = self.lock();
                self.change_durably(&mut state, |next| {
                    let nodes = &mut next.snapshot.nodes;
                    let record = NodeRecord::new(&info, unix_ms());
                    nodes.retain(|n| n.node_id != record.node_id);
                    nodes.push(record);
                    if nodes.len() > NODE_RECORDS_MAX {
                        // Pushed in registration order: the front is the least recent.
                        let excess = nodes.len() - NODE_RECORDS_MAX;
                        nodes.drain(..excess);
                    }
                    let update = next.registry.register(
                        Instant::now(),
                        info,
                        lease_id.clone(),
                        state_lost,
                    )?;
                    Ok(((), update))
                })?;
                tracing::info!(node_id, region, "node registered");
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
                                control.publish_membership(&mut state, update);
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
                self.publish_membership(&mut state, update);
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
                    self.publish_membership(&mut state, update);
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

mod ops;
#[cfg(test)]
mod tests;
