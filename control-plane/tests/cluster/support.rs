//! A real control plane on a free loopback port with a throw-away data dir, in-process
//! edge nodes following it, raw gRPC clients (registrants, watchers), WebSocket and signed
//! HTTP clients of the nodes, and the `relaymesh-control ctl` binary.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Once;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use relaymesh_control::Config;
use relaymesh_node::NodeHandle;
use relaymesh_proto::bearer::BearerToken;
use relaymesh_proto::control::membership_client::MembershipClient;
use relaymesh_proto::control::ops_client::OpsClient;
use relaymesh_proto::control::{
    App, ClusterNode, KeepAliveRequest, KeepAliveResponse, LeaveRequest, ListNodesRequest,
    ListNodesResponse, NodeInfo, NodeState, RegisterRequest, ViewUpdate, WatchRequest,
};
use relaymesh_proto::signing;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Streaming;

pub const JOIN_TOKEN: &str = relaymesh_control::DEV_JOIN_TOKEN;
pub const OPERATOR_TOKEN: &str = relaymesh_control::DEV_OPERATOR_TOKEN;
/// How long a single expected thing may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

pub type Membership = MembershipClient<InterceptedService<Channel, BearerToken>>;
pub type Ops = OpsClient<InterceptedService<Channel, BearerToken>>;

/// Held by tests that measure time and by tests that load the CPU, so that they do not run
/// at the same time (the test harness runs tests in parallel).
pub static TIMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The `metrics` crate has one global recorder per process, and both the control plane
/// and the node try to install theirs. The control plane's /metrics only renders when its
/// recorder is the installed one, so it is installed before any node of any test starts
/// (every test starts its control plane first, through here).
fn install_control_plane_recorder() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        relaymesh_control::telemetry::handle();
    });
}

/// A fresh directory under the system temp dir, removed on drop (also when a test fails).
pub struct DataDir(PathBuf);

impl DataDir {
    pub fn new(name: &str) -> DataDir {
        let path = std::env::temp_dir().join(format!(
            "relaymesh-cluster-{name}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        DataDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running control plane with its gRPC and /metrics listeners.
pub struct ControlPlane {
    handle: Option<relaymesh_control::Handle>,
    pub addr: SocketAddr,
    pub http_addr: SocketAddr,
}

impl ControlPlane {
    pub async fn start(dir: &DataDir) -> ControlPlane {
        ControlPlane::start_at(dir, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr` (port 0 for a free one); retries a busy port for a while, as a
    /// restarted control plane binds the port its predecessor just released.
    pub async fn start_at(dir: &DataDir, addr: SocketAddr) -> ControlPlane {
        install_control_plane_recorder();
        let deadline = Instant::now() + WAIT;
        let grpc = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if Instant::now() < deadline => {
                    note(&format!("bind {addr}: {e}; retrying"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot bind {addr}: {e}"),
            }
        };
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handle =
            relaymesh_control::start(Config::for_test(dir.path().to_owned()), grpc, Some(http))
                .expect("control plane starts");
        ControlPlane {
            addr: handle.grpc_addr(),
            http_addr: handle.http_addr().expect("http listener"),
            handle: Some(handle),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        channel(&self.endpoint()).await
    }

    pub async fn membership(&self, token: &str) -> Membership {
        membership(&self.endpoint(), token).await
    }

    pub async fn ops(&self, token: &str) -> Ops {
        ops(&self.endpoint(), token).await
    }

    pub async fn operator(&self) -> Ops {
        self.ops(OPERATOR_TOKEN).await
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.http_addr);
        let response = reqwest::get(url).await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.text().await.unwrap()
    }

    /// Stops the control plane; fails the test if it does not stop within [`WAIT`].
    pub async fn shutdown(mut self) {
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(WAIT, handle.shutdown())
                .await
                .expect("the control plane shuts down within 5 s");
        }
    }

    /// Runs `relaymesh-control ctl --endpoint … --token TOKEN ARGS…`.
    pub async fn ctl(&self, token: &str, args: &[&str]) -> Output {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_relaymesh-control"));
        command
            .args(["ctl", "--endpoint", &self.endpoint(), "--token", token])
            .args(args)
            .env("RUST_LOG", "warn");
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .expect("run relaymesh-control");
        output
    }

    /// `ctl --json ARGS…` with the operator token; asserts success and parses stdout.
    pub async fn ctl_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = self.ctl(OPERATOR_TOKEN, &all).await;
        assert!(
            output.status.success(),
            "ctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "ctl {args:?} printed invalid JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}

fn note(message: &str) {
    eprintln!("[cluster test] {message}");
}

pub async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_owned())
        .unwrap()
        .connect_timeout(WAIT)
        .connect()
        .await
        .expect("connect to the control plane")
}

pub async fn membership(endpoint: &str, token: &str) -> Membership {
    MembershipClient::with_interceptor(channel(endpoint).await, BearerToken::new(token).unwrap())
}

pub async fn ops(endpoint: &str, token: &str) -> Ops {
    OpsClient::with_interceptor(channel(endpoint).await, BearerToken::new(token).unwrap())
}

pub async fn list_nodes(ops: &mut Ops) -> ListNodesResponse {
    ops.list_nodes(ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The state of `node_id` in ListNodes, if listed.
pub async fn node_state(ops: &mut Ops, node_id: &str) -> Option<NodeState> {
    list_nodes(ops)
        .await
        .nodes
        .into_iter()
        .filter_map(|n| n.node)
        .find(|m| m.node.as_ref().is_some_and(|n| n.node_id == node_id))
        .map(|m| NodeState::try_from(m.state).unwrap())
}

/// Ids of the nodes listed as active.
pub async fn active_nodes(ops: &mut Ops) -> Vec<String> {
    list_nodes(ops)
        .await
        .nodes
        .into_iter()
        .filter_map(|n| n.node)
        .filter(|m| m.state == NodeState::Active as i32)
        .filter_map(|m| m.node.map(|n| n.node_id))
        .collect()
}

/// Polls `check` every 20 ms until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_active(ops: &mut Ops, node_id: &str) {
    eventually(&format!("{node_id} active"), WAIT, || {
        let mut ops = ops.clone();
        let id = node_id.to_owned();
        async move { (node_state(&mut ops, &id).await == Some(NodeState::Active)).then_some(()) }
    })
    .await
}

pub fn node_info(node_id: &str, region: &str) -> NodeInfo {
    NodeInfo {
        node_id: node_id.into(),
        region: region.into(),
        client_addr: "127.0.0.1:1".into(),
        mesh_addr: String::new(),
        version: "test".into(),
        capacity: 10,
        incarnation: 1,
    }
}

/// A node simulated with raw Membership calls: it keeps alive only when told to.
pub struct Registrant {
    pub client: Membership,
    pub lease_id: String,
    pub heartbeat: Duration,
    beats: mpsc::Sender<KeepAliveRequest>,
    answers: Streaming<KeepAliveResponse>,
}

impl Registrant {
    pub async fn register(cp: &ControlPlane, node_id: &str, region: &str) -> Registrant {
        Registrant::register_with(cp.membership(JOIN_TOKEN).await, node_id, region).await
    }

    pub async fn register_with(mut client: Membership, node_id: &str, region: &str) -> Registrant {
        let lease = client
            .register(RegisterRequest {
                node: Some(node_info(node_id, region)),
                state_lost: false,
            })
            .await
            .expect("register")
            .into_inner();
        assert!(!lease.lease_id.is_empty());
        let (beats, rx) = mpsc::channel(4);
        let answers = client
            .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("keepalive stream")
            .into_inner();
        Registrant {
            client,
            lease_id: lease.lease_id,
            heartbeat: Duration::from_millis(lease.heartbeat_ms),
            beats,
            answers,
        }
    }

    /// Sends one keepalive and waits for its answer; fails the test unless accepted.
    pub async fn beat(&mut self) -> KeepAliveResponse {
        self.try_beat()
            .await
            .expect("keepalive accepted")
            .expect("keepalive stream open")
    }

    /// Sends one keepalive and returns the answer as received (`None`: stream ended).
    pub async fn try_beat(&mut self) -> Result<Option<KeepAliveResponse>, tonic::Status> {
        self.beats
            .send(KeepAliveRequest {
                lease_id: self.lease_id.clone(),
                load: None,
            })
            .await
            .expect("keepalive stream open");
        tokio::time::timeout(WAIT, self.answers.message())
            .await
            .expect("keepalive answered in time")
    }

    /// Keeps the lease like a node does: a keepalive every heartbeat, on a fixed schedule
    /// whatever the answers take. Returns how the lease was lost.
    pub async fn keep_alive_forever(&mut self) -> tonic::Status {
        let mut ticker = tokio::time::interval(self.heartbeat);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let beat = KeepAliveRequest { lease_id: self.lease_id.clone(), load: None };
                    if self.beats.send(beat).await.is_err() {
                        // The request side closed: the answer side says why.
                        return match self.answers.message().await {
                            Err(status) => status,
                            Ok(_) => tonic::Status::cancelled("keepalive stream closed"),
                        };
                    }
                }
                answer = self.answers.message() => match answer {
                    Ok(Some(_)) => {}
                    Ok(None) => return tonic::Status::cancelled("keepalive stream ended"),
                    Err(status) => return status,
                },
            }
        }
    }

    pub async fn leave(mut self) {
        self.client
            .leave(LeaveRequest {
                lease_id: self.lease_id.clone(),
            })
            .await
            .expect("leave");
    }
}

/// The view as a watcher rebuilds it from the stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub version: u64,
    pub nodes: BTreeMap<String, ClusterNode>,
    pub apps: BTreeMap<String, App>,
}

impl View {
    /// Applies one update; a delta must follow the current version by exactly one.
    pub fn apply(&mut self, update: &ViewUpdate) {
        if update.full {
            assert!(
                update.version >= self.version,
                "a full view went back from {} to {}",
                self.version,
                update.version
            );
            self.nodes.clear();
            self.apps.clear();
        } else {
            assert_eq!(
                update.version,
                self.version + 1,
                "a delta does not follow version {}",
                self.version
            );
        }
        self.version = update.version;
        for id in &update.removed_nodes {
            self.nodes.remove(id);
        }
        for entry in &update.nodes {
            let id = entry
                .node
                .as_ref()
                .expect("a view entry has a node")
                .node_id
                .clone();
            self.nodes.insert(id, entry.clone());
        }
        for id in &update.removed_apps {
            self.apps.remove(id);
        }
        for app in &update.apps {
            self.apps.insert(app.id.clone(), app.clone());
        }
    }

    pub fn active(&self) -> usize {
        self.nodes
            .values()
            .filter(|m| m.state == NodeState::Active as i32)
            .count()
    }
}

/// A raw Watch stream with everything it delivered.
pub struct Watcher {
    stream: Streaming<ViewUpdate>,
    pub updates: Vec<ViewUpdate>,
    /// When each update arrived.
    pub arrivals: Vec<Instant>,
    pub view: View,
}

impl Watcher {
    /// Opens a watch; returns once the full view arrived.
    pub async fn open(cp: &ControlPlane) -> Watcher {
        Watcher::open_at(&cp.endpoint()).await
    }

    pub async fn open_at(endpoint: &str) -> Watcher {
        let mut client = membership(endpoint, JOIN_TOKEN).await;
        let stream = client
            .watch(WatchRequest {})
            .await
            .expect("watch")
            .into_inner();
        let mut watcher = Watcher {
            stream,
            updates: Vec::new(),
            arrivals: Vec::new(),
            view: View::default(),
        };
        let first = watcher.next().await;
        assert!(first.full, "the first update of a watch is full: {first:?}");
        watcher
    }

    pub async fn next(&mut self) -> ViewUpdate {
        let update = tokio::time::timeout(WAIT, self.stream.message())
            .await
            .expect("timed out waiting for a view update")
            .expect("watch stream failed")
            .expect("watch stream ended");
        self.view.apply(&update);
        self.updates.push(update.clone());
        self.arrivals.push(Instant::now());
        update
    }

    /// Reads updates until the view reaches `version`.
    pub async fn until_version(&mut self, version: u64) {
        while self.view.version < version {
            self.next().await;
        }
    }

    /// Reads updates until `done` holds for the view; fails after `timeout`.
    pub async fn until(&mut self, timeout: Duration, done: impl Fn(&View) -> bool) {
        tokio::time::timeout(timeout, async {
            while !done(&self.view) {
                self.next().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("watched view never got there; now {:?}", self.view))
    }
}

/// An in-process edge node following the control plane, serving only its apps.
pub struct Node {
    pub handle: NodeHandle,
    pub addr: SocketAddr,
    pub id: String,
}

impl Node {
    pub async fn start(cp_endpoint: &str, node_id: &str, region: &str) -> Node {
        Node::start_with_token(cp_endpoint, node_id, region, JOIN_TOKEN).await
    }

    pub async fn start_with_token(
        cp_endpoint: &str,
        node_id: &str,
        region: &str,
        join_token: &str,
    ) -> Node {
        Node::start_configured(cp_endpoint, node_id, region, join_token, |_| {}).await
    }

    /// A node with its config adjusted by `configure` before it starts.
    pub async fn start_configured(
        cp_endpoint: &str,
        node_id: &str,
        region: &str,
        join_token: &str,
        configure: impl FnOnce(&mut relaymesh_node::config::Config),
    ) -> Node {
        let mut config = relaymesh_node::config::Config::for_test();
        config.apps = vec![];
        config.control_plane.endpoint = Some(cp_endpoint.to_owned());
        config.control_plane.node_id = Some(node_id.to_owned());
        config.control_plane.region = region.to_owned();
        config.control_plane.join_token = join_token.to_owned();
        configure(&mut config);
        config.validate().expect("test node config is valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handle = relaymesh_node::start(config, listener).expect("node starts");
        Node {
            addr: handle.local_addr(),
            handle,
            id: node_id.to_owned(),
        }
    }

    pub async fn shutdown(self) {
        self.handle.shutdown(Duration::from_millis(500)).await;
    }

    pub fn ws_url(&self, key: &str) -> String {
        format!(
            "ws://{}/app/{key}?protocol=7&client=js&version=8.6.0&flash=false",
            self.addr
        )
    }

    /// Opens a WebSocket for `key` and reads the first frame.
    pub async fn try_connect(&self, key: &str) -> (Client, Frame) {
        let (ws, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(self.ws_url(key)))
                .await
                .expect("websocket handshake in time")
                .expect("websocket handshake");
        let mut client = Client {
            ws,
            socket_id: String::new(),
        };
        let first = client.next().await;
        if first.event == "pusher:connection_established" {
            client.socket_id = first.data["socket_id"].as_str().unwrap().to_owned();
        }
        (client, first)
    }

    /// Connects a client of `key`, asserting connection_established.
    pub async fn connect(&self, key: &str) -> Client {
        let (client, first) = self.try_connect(key).await;
        assert_eq!(
            first.event, "pusher:connection_established",
            "{}",
            first.raw
        );
        client
    }

    /// A signed `POST /apps/{id}/events`; returns the HTTP status.
    pub async fn publish(&self, app_id: &str, key: &str, secret: &str) -> u16 {
        let path = format!("/apps/{app_id}/events");
        let body = r#"{"name":"greeting","channels":["news"],"data":"{\"hello\":1}"}"#;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let query = signing::sign_request(key, secret, "POST", &path, &[], body.as_bytes(), now);
        let response = reqwest::Client::new()
            .post(format!("http://{}{path}?{query}", self.addr))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    }

    /// The node's /metrics text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn readyz(&self) -> u16 {
        reqwest::get(format!("http://{}/readyz", self.addr))
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// One decoded server frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub event: String,
    /// `data`, decoded from its string form when it holds JSON.
    pub data: Value,
    pub raw: String,
}

pub fn decode(text: &str) -> Frame {
    let value: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("server sent invalid JSON {text}: {e}"));
    let data = match &value["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
        other => other.clone(),
    };
    Frame {
        event: value["event"].as_str().unwrap_or_default().to_owned(),
        data,
        raw: text.to_owned(),
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub socket_id: String,
}

impl Client {
    pub async fn send(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .unwrap();
    }

    /// The next text frame; fails the test after [`WAIT`].
    pub async fn next(&mut self) -> Frame {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection ended")
                .expect("websocket error");
            if let Message::Text(text) = message {
                return decode(&text);
            }
        }
    }

    /// The next text frame within `window`, if any.
    pub async fn next_within(&mut self, window: Duration) -> Option<Frame> {
        tokio::time::timeout(window, self.next()).await.ok()
    }

    /// Reads until the server closes; returns the close code (None without one) and the
    /// text frames before it.
    pub async fn closed(&mut self) -> (Option<u16>, Vec<Frame>) {
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for the close")
            {
                Some(Ok(Message::Text(text))) => frames.push(decode(&text)),
                Some(Ok(Message::Close(Some(close)))) => {
                    return (Some(u16::from(close.code)), frames)
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return (None, frames),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Subscribes to a private channel with an auth signed by `key`/`secret`.
    pub async fn subscribe_private(&mut self, key: &str, secret: &str, channel: &str) {
        let auth = signing::sign_auth(key, secret, &format!("{}:{channel}", self.socket_id));
        self.send(
            serde_json::json!({"event":"pusher:subscribe","data":{"auth":auth,"channel":channel}}),
        )
        .await;
        let frame = self.next().await;
        assert_eq!(
            frame.event, "pusher_internal:subscription_succeeded",
            "{}",
            frame.raw
        );
    }
}

/// `relaymesh-control serve` as a child process, for restarts that are crashes (SIGKILL).
pub struct ServeProcess {
    child: std::process::Child,
    pub addr: SocketAddr,
}

impl ServeProcess {
    /// Starts `serve` on `addr` with the test timings and waits until it answers.
    pub async fn start(dir: &DataDir, addr: SocketAddr) -> ServeProcess {
        install_control_plane_recorder();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relaymesh-control"))
            .args(["serve", "--listen", &addr.to_string()])
            .args(["--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args([
                "--join-token",
                JOIN_TOKEN,
                "--operator-token",
                OPERATOR_TOKEN,
            ])
            .args(["--lease-ttl-ms", "1000", "--heartbeat-ms", "250"])
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn relaymesh-control serve");
        let endpoint = format!("http://{addr}");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("relaymesh-control serve exited early: {status}");
            }
            if let Ok(channel) = Channel::from_shared(endpoint.clone())
                .unwrap()
                .connect()
                .await
            {
                let mut ops =
                    OpsClient::with_interceptor(channel, BearerToken::new(OPERATOR_TOKEN).unwrap());
                if ops.list_nodes(ListNodesRequest {}).await.is_ok() {
                    return ServeProcess { child, addr };
                }
            }
            assert!(
                Instant::now() < deadline,
                "relaymesh-control serve never answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL: no shutdown, no goodbye to anyone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address with a port that was free a moment ago.
pub async fn free_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A TCP proxy in front of a server, which a test can cut (existing connections are
/// dropped and new ones refused) and mend: a partition between one node and the server.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    continue; // dropped: refused
                }
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Proxy { addr, cut, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }

    pub fn mend(&self) {
        let _ = self.cut.send(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
