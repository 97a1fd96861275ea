//! relaymesh control plane: node membership (leases, keepalives, a versioned watch
//! stream), the app registry, and the ops API, over gRPC; durable state in a data dir.
//!
//! [`start`] takes the configuration and bound listeners (tests pass `127.0.0.1:0`) and
//! returns a [`Handle`] that must be held.

pub mod ctl;
pub mod registry;
pub mod server;
pub mod store;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use relaymesh_proto::control::membership_server::MembershipServer;
use relaymesh_proto::control::ops_server::OpsServer;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Request, Status};

use crate::server::{ControlPlane, Service};
use crate::store::Store;

/// Token nodes and operators use when none is configured; logged loudly at start-up.
pub const DEV_JOIN_TOKEN: &str = "dev-join-token";
pub const DEV_OPERATOR_TOKEN: &str = "dev-operator-token";

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Token nodes present to join (`authorization: Bearer …` on Membership calls).
    pub join_token: String,
    /// Token operators present to the Ops API.
    pub operator_token: String,
    /// A node missing keepalives for this long is removed.
    pub lease_ttl: Duration,
    /// How often nodes are told to send keepalives.
    pub heartbeat: Duration,
}

impl Config {
    pub fn for_test(data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            join_token: DEV_JOIN_TOKEN.into(),
            operator_token: DEV_OPERATOR_TOKEN.into(),
            lease_ttl: Duration::from_millis(1_000),
            heartbeat: Duration::from_millis(250),
        }
    }
}

/// Checks `authorization: Bearer <token>` in constant time.
fn bearer(expected: Arc<str>) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let denied = |why: &str| {
            metrics::counter!(telemetry::API_CALLS, "method" => "auth", "code" => "Unauthenticated").increment(1);
            Err(Status::unauthenticated(why.to_owned()))
        };
        match given {
            Some(token) if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) => Ok(request),
            Some(_) => denied("invalid token"),
            None => denied("missing authorization: Bearer <token>"),
        }
    }
}

pub struct Handle {
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Handle {
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Stops serving and waits for the servers to finish.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot read listener address: {0}")]
    Io(#[from] std::io::Error),
}

/// Starts the control plane: gRPC on `grpc`, `/metrics` on `http` if given.
pub fn start(
    config: Config,
    grpc: TcpListener,
    http: Option<TcpListener>,
) -> Result<Handle, StartError> {
    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.as_ref().map(|l| l.local_addr()).transpose()?;
    let (store, snapshot) = Store::open(&config.data_dir)?;
    let heartbeat = config.heartbeat;
    let join = bearer(config.join_token.as_str().into());
    let operator = bearer(config.operator_token.as_str().into());
    let (stop, stopped) = watch::channel(false);
    let control = Arc::new(ControlPlane::new(config, store, snapshot, stopped.clone()));
    control.startup()?;
    let metrics = telemetry::handle();
    let mut tasks = Vec::new();

    let expiry = control.clone();
    let mut expiry_stop = stopped.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval((heartbeat / 4).max(Duration::from_millis(10)));
        loop {
            tokio::select! {
                _ = tick.tick() => expiry.expire(),
                _ = expiry_stop.changed() => return,
            }
        }
    }));

    let mut grpc_stop = stopped.clone();
    let router = tonic::transport::Server::builder()
        .add_service(MembershipServer::with_interceptor(
            Service(control.clone()),
            join,
        ))
        .add_service(OpsServer::with_interceptor(Service(control), operator));
    tasks.push(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
        let shutdown = async move {
            let _ = grpc_stop.changed().await;
        };
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!(error = %e, "gRPC server failed");
        }
    }));

    if let Some(http) = http {
        let mut http_stop = stopped;
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        );
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = http_stop.changed().await;
            };
            if let Err(e) = axum::serve(http, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "metrics server failed");
            }
        }));
    }
    Ok(Handle {
        grpc_addr,
        http_addr,
        stop,
        tasks,
    })
}
