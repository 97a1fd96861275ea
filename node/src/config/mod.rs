//! Node configuration: a TOML file, then `RELAYMESH_*` environment variables, then flags.
//! Layered once at start-up; an unknown key or a bad value stops the node with a message
//! naming it, never a silent fallback.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The whole node configuration. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the WebSocket endpoint, the HTTP API and the ops endpoints (one port).
    pub listen: SocketAddr,
    /// `host:port` at which clients and operators reach `listen`, reported to the control
    /// plane (`ctl nodes`, `ctl owner`); the bound address when absent. Required in a
    /// cluster when `listen` is unspecified (`0.0.0.0`, `::`).
    pub advertise: Option<String>,
    /// Seconds of client silence before the node pings it; sent in connection_established.
    pub activity_timeout_secs: u64,
    /// Seconds the node waits for any frame after its ping before closing with 4201.
    pub pong_timeout_secs: u64,
    /// Frames a connection may have queued before it is closed as a slow consumer (4100).
    pub outbox_frames_max: usize,
    /// Bytes a connection may have queued before it is closed as a slow consumer (4100).
    pub outbox_bytes_max: usize,
    /// Largest WebSocket message a client may send; larger ones close the socket (1009).
    pub client_message_bytes_max: usize,
    /// Largest HTTP API request body (413 beyond).
    pub http_body_bytes_max: usize,
    /// Accepted clock skew of signed HTTP API requests, in seconds.
    pub timestamp_window_secs: u64,
    /// Cache channel entries kept per app; the oldest are evicted beyond it.
    pub cache_entries_max: usize,
    /// Seconds a draining node (SIGTERM, or drained by an operator) waits for its clients
    /// to move to other nodes before it exits anyway.
    pub drain_timeout_secs: u64,
    pub webhooks: WebhookConfig,
    /// Joining a cluster: without an endpoint the node runs standalone.
    pub control_plane: ControlPlaneConfig,
    /// Links to the other nodes of the cluster.
    pub mesh: MeshConfig,
    /// The apps this node serves. Empty means the development app, unless a control plane
    /// is set: then its registry's apps are served beside these.
    pub apps: Vec<AppConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 6001)),
            advertise: None,
            activity_timeout_secs: 120,
            drain_timeout_secs: 30,
            pong_timeout_secs: 30,
            outbox_frames_max: 1024,
            outbox_bytes_max: 1 << 20,
            client_message_bytes_max: 64 * 1024,
            http_body_bytes_max: 256 * 1024,
            timestamp_window_secs: 600,
            cache_entries_max: 100_000,
            webhooks: WebhookConfig::default(),
            control_plane: ControlPlaneConfig::default(),
            mesh: MeshConfig::default(),
            apps: Vec::new(),
        }
    }
}

/// How the node joins a control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneConfig {
    /// gRPC endpoint, e.g. `http://127.0.0.1:7000`; flag `--control-plane`.
    pub endpoint: Option<String>,
    /// Region label reported to the control plane; flag `--region`.
    pub region: String,
    /// Stable node id; a random one is chosen when absent.
    pub node_id: Option<String>,
    /// Token the control plane expects from joining nodes.
    pub join_token: String,
    /// Connections the node is sized for, reported to operators.
    pub capacity: u64,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        ControlPlaneConfig {
            endpoint: None,
            region: "local".into(),
            node_id: None,
            join_token: "dev-join-token".into(),
            capacity: 100_000,
        }
    }
}

/// Which transport carries mesh links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeshTransport {
    Quic,
    Grpc,
}

/// Mesh links. Off unless `listen` is set (and a control plane says who the peers are).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// Address of the mesh endpoint (UDP for QUIC, TCP for gRPC).
    pub listen: Option<SocketAddr>,
    /// `ip:port` peers dial, reported to the control plane; the bound address when absent.
    /// Required when `listen` is unspecified (`0.0.0.0`, `::`).
    pub advertise: Option<String>,
    pub transport: MeshTransport,
    /// Production: a folder with `ca.pem`, `node.pem`, `node.key`
    /// (`relaymesh-node certs node`).
    pub certs_dir: Option<std::path::PathBuf>,
    /// Development: a folder with the cluster CA (`ca.pem`, `ca.key`, from
    /// `relaymesh-node certs ca`); the node issues its own certificate at start.
    pub dev_ca_dir: Option<std::path::PathBuf>,
    /// How long a channel's new owner waits for every node's part before it decides on
    /// the rebuilt channel (default 2,000). Raise it where regions are far apart; 0
    /// decides at once on what arrived, at the price of spurious presence events.
    pub settle_deadline_ms: u64,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            listen: None,
            advertise: None,
            transport: MeshTransport::Quic,
            certs_dir: None,
            dev_ca_dir: None,
            settle_deadline_ms: 2_000,
        }
    }
}

impl MeshConfig {
    pub fn settle_deadline(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.settle_deadline_ms)
    }
}

/// Command-line settings that override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub control_plane: Option<String>,
    pub region: Option<String>,
    pub node_id: Option<String>,
}

/// Webhook delivery (shared by all apps; the URLs are per app).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Events raised within this window go out in one request.
    pub batch_ms: u64,
    /// Events waiting for delivery per app; more are dropped and counted.
    pub queue_max: usize,
    /// Delivery attempts per request before it is dropped and counted.
    pub attempts_max: u32,
    /// First retry delay; doubles on every further attempt.
    pub retry_base_ms: u64,
    /// Per-request timeout.
    pub timeout_ms: u64,
    /// Delay of channel_vacated and member_removed; cancelled if the channel or member returns.
    pub vacate_delay_ms: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            batch_ms: 50,
            queue_max: 10_000,
            attempts_max: 5,
            retry_base_ms: 500,
            timeout_ms: 5_000,
            vacate_delay_ms: 3_000,
        }
    }
}

/// One app: its credentials and limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppConfig {
    pub id: String,
    pub key: String,
    pub secret: String,
    /// A disabled app refuses connections (4003) and API calls (403).
    pub enabled: bool,
    /// Whether clients may send `client-` events.
    pub client_events: bool,
    /// Client events per second per connection.
    pub client_event_rate: u32,
    /// Concurrent connections; `None` is unlimited.
    pub max_connections: Option<usize>,
    /// Distinct users per presence channel.
    pub max_presence_members: usize,
    /// Largest event `data` (HTTP API and client events), in bytes.
    pub max_event_bytes: usize,
    /// Largest presence / sign-in `user_info`, in bytes.
    pub max_user_info_bytes: usize,
    /// How long a cache channel keeps its last event, in seconds.
    pub cache_ttl_secs: u64,
    /// Webhook URLs; empty disables webhooks.
    pub webhooks: Vec<String>,
    /// "Authorized connections": seconds a connection has to sign in or join a private or
    /// presence channel before it is closed with 4009. `None` disables the check.
    pub authorization_timeout_secs: Option<u64>,
    /// Send `pusher_internal:watchlist_events` to signed-in users with a watchlist.
    pub watchlist_events: bool,
    /// "Subscription counting": tell subscribers of non-presence channels the channel's
    /// subscription count on every change (every 5 s at most above 100 subscribers), and
    /// raise `subscription_count` webhooks.
    pub subscription_count: bool,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            id: String::new(),
            key: String::new(),
            secret: String::new(),
            enabled: true,
            client_events: true,
            client_event_rate: 10,
            max_connections: None,
            max_presence_members: 100,
            max_event_bytes: 10 * 1024,
            max_user_info_bytes: 1024,
            cache_ttl_secs: 1800,
            webhooks: Vec::new(),
            authorization_timeout_secs: None,
            watchlist_events: false,
            subscription_count: false,
        }
    }
}

impl AppConfig {
    /// The development app served when no app is configured.
    pub fn development() -> Self {
        AppConfig {
            id: "app-id".into(),
            key: "app-key".into(),
            secret: "app-secret".into(),
            ..AppConfig::default()
        }
    }
}

/// An app's settings, replaceable while it runs (the control plane updates them); readers
/// take a snapshot. Here rather than in `app.rs` because the owner and the webhooks read it
/// too, and they sit below `app` in the layers (ARCHITECTURE.md).
#[derive(Clone)]
pub struct SharedAppConfig(Arc<RwLock<Arc<AppConfig>>>);

impl SharedAppConfig {
    pub fn new(config: AppConfig) -> SharedAppConfig {
        SharedAppConfig(Arc::new(RwLock::new(Arc::new(config))))
    }

    pub fn get(&self) -> Arc<AppConfig> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the settings (an app update from the control plane, in `app.rs`).
    pub(crate) fn set(&self, config: AppConfig) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
}

const ENV_PREFIX: &str = "RELAYMESH_";

/// Whether `key`, a variable's name after `RELAYMESH_` in any case, has the shape of the
/// variables Kubernetes injects for every Service of the namespace (a Service named
/// `relaymesh-control` gives `RELAYMESH_CONTROL_PORT=tcp://10.0.0.1:7000`):
/// `{SVC}_SERVICE_HOST`, `{SVC}_SERVICE_PORT[_{PORT_NAME}]`, `{SVC}_PORT` and
/// `{SVC}_PORT_{N}_{TCP|UDP|SCTP}[_PROTO|_PORT|_ADDR]`. No node setting has that shape (a
/// test checks), so a misspelt setting still stops the node instead of being ignored.
fn is_service_link(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let words: Vec<&str> = key.split('_').collect();
    let service_host = words.ends_with(&["service", "host"]);
    let service_port = words.windows(2).any(|w| w == ["service", "port"]);
    let port = words.last() == Some(&"port");
    let number = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
    let protocol = |w: &str| matches!(w, "tcp" | "udp" | "sctp");
    let protocol_port = (0..words.len()).any(|i| match words[i..] {
        ["port", n, p] | ["port", n, p, "proto" | "port" | "addr"] => number(n) && protocol(p),
        _ => false,
    });
    service_host || service_port || port || protocol_port
}

/// The names among `names` that `Config::load` ignores as Kubernetes service variables.
fn service_link_variables(names: impl Iterator<Item = std::ffi::OsString>) -> Vec<String> {
    names
        .filter_map(|name| name.into_string().ok())
        .filter(|name| {
            name.get(..ENV_PREFIX.len())
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case(ENV_PREFIX))
                && is_service_link(&name[ENV_PREFIX.len()..])
        })
        .collect()
}

/// Checks that the address a node reports for `listen` can be reached by others: `key`
/// when set (`ip:port` only if `ip_only`: peers dial it without a name lookup), else the
/// listen address itself, which must then not be unspecified (`0.0.0.0`, `::`).
fn check_advertised(
    key: &str,
    advertise: Option<&str>,
    listen: SocketAddr,
    ip_only: bool,
) -> Result<(), ConfigError> {
    let Some(advertise) = advertise else {
        if listen.ip().is_unspecified() {
            return Err(ConfigError::Invalid(format!(
                "{key} must be set: the node listens on {listen}, which is no address others \
                 can reach (in Kubernetes: the pod IP, `$(POD_IP):{}`)",
                listen.port()
            )));
        }
        return Ok(());
    };
    let invalid = |why: &str| Err(ConfigError::Invalid(format!("{key} {advertise:?} {why}")));
    let (host, port) = match advertise.parse::<SocketAddr>() {
        Ok(addr) => (Some(addr.ip()), addr.port()),
        Err(_) if ip_only => return invalid("is not ip:port (peers dial it as it is)"),
        Err(_) => match advertise.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
                Ok(port) => (host.parse().ok(), port),
                Err(_) => return invalid("is not host:port"),
            },
            _ => return invalid("is not host:port"),
        },
    };
    if port == 0 || host.is_some_and(|ip: std::net::IpAddr| ip.is_unspecified()) {
        return invalid("is unspecified: others cannot reach it");
    }
    Ok(())
}

impl Config {
    /// Layers `file` (if any), then `RELAYMESH_*` variables (`__` separates nested keys,
    /// e.g. `RELAYMESH_WEBHOOKS__BATCH_MS`), then the command line (`overrides`).
    pub fn load(
        file: Option<&std::path::Path>,
        overrides: Overrides,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        // The control plane's own variables share the prefix; they are not node settings.
        // Neither are the service variables Kubernetes injects into pods (`is_service_link`).
        let env = Env::prefixed(ENV_PREFIX)
            .ignore(&["control_join_token", "control_operator_token"])
            .filter(|key| !is_service_link(key.as_str()))
            .split("__");
        let ignored = service_link_variables(std::env::vars_os().map(|(name, _)| name));
        if !ignored.is_empty() {
            // Names only: a value could be anything the environment holds.
            tracing::info!(
                variables = %ignored.join(" "),
                "ignoring Kubernetes service variables: they are not node settings"
            );
        }
        figment = figment.merge(env);
        if let Some(listen) = overrides.listen {
            figment = figment.merge(("listen", listen));
        }
        if let Some(endpoint) = overrides.control_plane {
            figment = figment.merge(("control_plane.endpoint", endpoint));
        }
        if let Some(region) = overrides.region {
            figment = figment.merge(("control_plane.region", region));
        }
        if let Some(node_id) = overrides.node_id {
            figment = figment.merge(("control_plane.node_id", node_id));
        }
        let mut config: Config = figment.extract().map_err(Box::new)?;
        if config.control_plane.endpoint.is_none() && config.apps.is_empty() {
            config.apps.push(AppConfig::development());
        }
        config.validate()?;
        Ok(config)
    }

    /// A single-node configuration for tests: the development app, defaults elsewhere.
    pub fn for_test() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            apps: vec![AppConfig::development()],
            ..Config::default()
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let mut ids = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for app in &self.apps {
            if app.id.is_empty() || app.key.is_empty() || app.secret.is_empty() {
                return invalid(format!(
                    "app {:?}: id, key and secret must all be set",
                    app.id
                ));
            }
            if !ids.insert(&app.id) {
                return invalid(format!("app id {:?} appears twice", app.id));
            }
            if !keys.insert(&app.key) {
                return invalid(format!("app key {:?} appears twice", app.key));
            }
            if app.client_event_rate == 0 {
                return invalid(format!(
                    "app {:?}: client_event_rate must be at least 1",
                    app.id
                ));
            }
            for url in &app.webhooks {
                match reqwest::Url::parse(url) {
                    Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                    _ => {
                        return invalid(format!(
                            "app {:?}: webhook URL {url:?} is not an http(s) URL",
                            app.id
                        ))
                    }
                }
            }
        }
        if self.activity_timeout_secs == 0 {
            return invalid(
                "activity_timeout_secs must be at least 1 (pusher-js refuses 0)".into(),
            );
        }
        if self.mesh.listen.is_some() {
            if self.control_plane.endpoint.is_none() {
                return invalid(
                    "mesh.listen needs control_plane.endpoint: peers come from the control plane"
                        .into(),
                );
            }
            if self.mesh.certs_dir.is_none() == self.mesh.dev_ca_dir.is_none() {
                return invalid(
                    "mesh needs exactly one of mesh.certs_dir (ca.pem, node.pem, node.key) or mesh.dev_ca_dir \
                     (ca.pem, ca.key); `relaymesh-node certs ca --out DIR` makes a development CA"
                        .into(),
                );
            }
        }
        // In a cluster the node reports where it is reached: `0.0.0.0` is nowhere.
        if self.control_plane.endpoint.is_some() {
            check_advertised("advertise", self.advertise.as_deref(), self.listen, false)?;
            if let Some(listen) = self.mesh.listen {
                check_advertised(
                    "mesh.advertise",
                    self.mesh.advertise.as_deref(),
                    listen,
                    true,
                )?;
            }
        }
        if self.outbox_frames_max == 0 || self.outbox_bytes_max == 0 {
            return invalid("outbox_frames_max and outbox_bytes_max must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
// figment::Jail's closures return figment's (large) error type.
#[allow(clippy::result_large_err)]
mod tests;
