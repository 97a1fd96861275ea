//! `relaymesh-sim mesh`: what the mesh costs. On this machine and in one run, the same
//! workload goes to one standalone node (baseline) and to a three-node cluster per mesh
//! transport, started as real processes from the release binaries. In the cluster the
//! subscribers sit on node `a`, the ring gives the channel to `c` and events are published
//! on `b`, so every event crosses two links (b → c → a). Reports delivered events/s,
//! publish→delivery latency, losses and duplicates, server and load-generator CPU, and mesh
//! bytes per event.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use futures_util::{SinkExt, StreamExt};
use relaymesh_proto::ring::Ring;
use relaymesh_proto::signing;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::procstat;

const APP_ID: &str = "app-id";
const APP_KEY: &str = "app-key";
const APP_SECRET: &str = "app-secret";
/// Event name of the benchmark's events; their data starts with [`MARK`].
const EVENT: &str = "rmb";
/// Prefix of an event's data: `rmb:{mode}:{seq}:{sent µs}:{padding}`. A fixed prefix lets
/// subscribers read a delivery without a JSON parse, so the load generator's CPU goes to
/// the sockets.
const MARK: &str = "\"data\":\"rmb:";
const MESH_BYTES_OUT: &str = "relaymesh_mesh_bytes_out_total";
/// WebSocket handshakes in flight while subscribers connect.
const CONNECTING_MAX: usize = 64;
/// Paced publishes in flight at most; beyond, pacing slows down rather than piling up.
const PACED_INFLIGHT_MAX: usize = 1024;
/// How long each process may take to become ready.
const READY_WAIT: Duration = Duration::from_secs(60);
/// How long one handshake or subscription may take.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Quic,
    Grpc,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Grpc => "grpc",
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Folder of the relaymesh-node and relaymesh-control binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Mesh transports measured, comma separated; each gets its own cluster.
    #[arg(long, value_delimiter = ',', default_value = "quic,grpc")]
    transports: Vec<Transport>,
    /// WebSocket subscribers of the one channel.
    #[arg(long, default_value_t = 1000)]
    subs: usize,
    /// Events published in each mode (closed loop, then paced).
    #[arg(long, default_value_t = 2000)]
    events: u64,
    /// HTTP publishes outstanding in the closed-loop mode.
    #[arg(long, default_value_t = 16)]
    inflight: usize,
    /// Events per second of the paced mode.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Bytes of each event's `data` (a prefix with sequence number and send time, padded).
    #[arg(long, default_value_t = 100)]
    data_bytes: usize,
    /// A mode ends this long after the last new delivery if some are still missing.
    #[arg(long, default_value_t = 3000)]
    settle_ms: u64,
    /// RUST_LOG of the started processes.
    #[arg(long, default_value = "warn")]
    child_log: String,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Stop with an error (and stop every started process) after this many seconds.
    #[arg(long = "time-limit", value_name = "SECS", default_value_t = 300)]
    time_limit: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Closed,
    Paced,
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::Closed, Mode::Paced];

    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Closed => "closed",
            Mode::Paced => "paced",
        }
    }
}

/// A scratch folder removed when dropped.
struct Workdir(PathBuf);

impl Workdir {
    fn new() -> Result<Workdir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let path =
            std::env::temp_dir().join(format!("relaymesh-sim-mesh-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Workdir(path))
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The processes of one target; dropping it kills them (on success, error, time limit or
/// Ctrl-C alike, since each of those drops the run's future).
struct Procs {
    children: Vec<(String, Child, PathBuf)>,
    /// RUST_LOG of the started processes.
    log_level: String,
}

impl Procs {
    fn spawn(&mut self, name: &str, program: &Path, args: &[String], log: PathBuf) -> Result<u32> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", &self.log_level)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id();
        self.children.push((name.to_owned(), child, log));
        Ok(pid)
    }

    /// Fails if a started process has exited, with the end of its log.
    fn check_alive(&mut self) -> Result<()> {
        for (name, child, log) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited ({status}); its log ends with:\n{}",
                    tail(log)
                );
            }
        }
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.children {
            let _ = child.kill();
        }
        for (_, child, _) in &mut self.children {
            let _ = child.wait();
        }
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn free_port() -> Result<u16> {
    // The port is free when read; the started process binds it a moment later.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A TOML basic string (JSON's escaping is a subset of TOML's).
fn toml_str(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// One target's running processes and where the workload goes.
struct Target {
    name: String,
    /// Held for its `Drop`, which stops the target.
    _procs: Procs,
    /// Subscribers connect here.
    sub_addr: SocketAddr,
    /// Events are published here.
    pub_addr: SocketAddr,
    nodes: Vec<(SocketAddr, u32)>,
    control_plane: Option<u32>,
}

async fn wait_ready(procs: &mut Procs, http: &reqwest::Client, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + READY_WAIT;
    loop {
        procs.check_alive()?;
        let answer = http.get(format!("http://{addr}/readyz")).send().await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} did not answer /readyz with 200 within {READY_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_baseline(args: &Args, work: &Path, http: &reqwest::Client) -> Result<Target> {
    let mut procs = Procs {
        children: Vec::new(),
        log_level: args.child_log.clone(),
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let pid = procs.spawn(
        "baseline node",
        &args.bin_dir.join("relaymesh-node"),
        &["--listen".into(), addr.to_string()],
        work.join("baseline-node.log"),
    )?;
    wait_ready(&mut procs, http, addr).await?;
    Ok(Target {
        name: "baseline".into(),
        _procs: procs,
        sub_addr: addr,
        pub_addr: addr,
        nodes: vec![(addr, pid)],
        control_plane: None,
    })
}

async fn start_mesh(
    args: &Args,
    work: &Path,
    ca_dir: &Path,
    transport: Transport,
    http: &reqwest::Client,
) -> Result<Target> {
    let name = transport.name();
    let mut procs = Procs {
        children: Vec::new(),
        log_level: args.child_log.clone(),
    };
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let data_dir = work.join(format!("{name}-control"));
    let cp_pid = procs.spawn(
        "control plane",
        &args.bin_dir.join("relaymesh-control"),
        &[
            "serve".into(),
            "--listen".into(),
            grpc.to_string(),
            "--http-listen".into(),
            metrics.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ],
        work.join(format!("{name}-control.log")),
    )?;
    // Nodes retry with backoff; starting them once the control plane listens saves a retry.
    let deadline = Instant::now() + READY_WAIT;
    while TcpStream::connect(grpc).await.is_err() {
        procs.check_alive()?;
        if Instant::now() > deadline {
            bail!("the control plane did not listen on {grpc} within {READY_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = format!(
            "[control_plane]\nendpoint = {}\nnode_id = {}\nregion = \"bench\"\n\n\
             [mesh]\nlisten = \"127.0.0.1:0\"\ntransport = {}\ndev_ca_dir = {}\n\n\
             [[apps]]\nid = {}\nkey = {}\nsecret = {}\n",
            toml_str(&format!("http://{grpc}")),
            toml_str(id),
            toml_str(name),
            toml_str(&ca_dir.display().to_string()),
            toml_str(APP_ID),
            toml_str(APP_KEY),
            toml_str(APP_SECRET),
        );
        let file = work.join(format!("{name}-{id}.toml"));
        std::fs::write(&file, config).with_context(|| format!("writing {}", file.display()))?;
        let pid = procs.spawn(
            &format!("{name} node {id}"),
            &args.bin_dir.join("relaymesh-node"),
            &[
                "--config".into(),
                file.display().to_string(),
                "--listen".into(),
                addr.to_string(),
            ],
            work.join(format!("{name}-{id}.log")),
        )?;
        nodes.push((addr, pid));
    }
    for (addr, _) in &nodes {
        wait_ready(&mut procs, http, *addr).await?;
    }
    Ok(Target {
        name: name.into(),
        _procs: procs,
        sub_addr: nodes[0].0,
        pub_addr: nodes[1].0,
        nodes,
        control_plane: Some(cp_pid),
    })
}

/// The deliveries one subscriber saw in one mode.
#[derive(Default)]
struct Tally {
    seen: Vec<bool>,
    unique: u64,
    duplicates: u64,
    /// Sequence numbers out of range or unreadable data.
    unexpected: u64,
    latency_us: Vec<u32>,
    last_us: u64,
}

#[derive(Default)]
struct SubState {
    tallies: [Tally; 2],
    /// Why the connection ended during the run, if it did.
    closed: Option<String>,
    pusher_errors: u64,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Reads text frames until one whose event is `event`, answering pings; fails on errors.
async fn expect_event(ws: &mut Ws, event: &str) -> Result<Value> {
    loop {
        let message = tokio::time::timeout(HANDSHAKE_WAIT, ws.next())
            .await
            .with_context(|| format!("no {event} within {HANDSHAKE_WAIT:?}"))?
            .with_context(|| format!("connection ended before {event}"))??;
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text)
            .with_context(|| format!("server sent invalid JSON: {text}"))?;
        match frame["event"].as_str() {
            Some(e) if e == event => return Ok(frame),
            Some("pusher:ping") => {
                ws.send(Message::text(relaymesh_proto::frame::PONG)).await?;
            }
            Some("pusher:error" | "pusher_internal:subscription_error") => {
                bail!("waiting for {event}: {text}")
            }
            _ => {}
        }
    }
}

async fn connect_subscriber(url: String, channel: String) -> Result<Ws> {
    let (mut ws, _) = tokio::time::timeout(HANDSHAKE_WAIT, tokio_tungstenite::connect_async(url))
        .await
        .context("WebSocket handshake timed out")?
        .context("WebSocket handshake (is `ulimit -n` high enough?)")?;
    expect_event(&mut ws, "pusher:connection_established").await?;
    let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": channel}});
    ws.send(Message::text(subscribe.to_string())).await?;
    expect_event(&mut ws, "pusher_internal:subscription_succeeded").await?;
    Ok(ws)
}

/// A benchmark event's mode, sequence number and send time, from a frame's text.
fn parse_delivery(text: &str) -> Option<(usize, u64, u64)> {
    let at = text.find(MARK)?;
    let rest = &text[at + MARK.len()..];
    let mut parts = rest.split(':');
    let mode = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let sent = parts.next()?.parse().ok()?;
    Some((mode, seq, sent))
}

/// Unique deliveries so far, per mode, over every subscriber.
#[derive(Default)]
struct Progress {
    unique: [AtomicU64; 2],
}

async fn read_events(
    mut ws: Ws,
    state: Arc<Mutex<SubState>>,
    progress: Arc<Progress>,
    epoch: Instant,
) {
    let ended = loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(close))) => break format!("closed by the server: {close:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => break format!("error: {e}"),
            None => break "connection ended".to_owned(),
        };
        if let Some((mode, seq, sent)) = parse_delivery(&text) {
            let now = epoch.elapsed().as_micros() as u64;
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            let Some(tally) = state.tallies.get_mut(mode) else {
                continue;
            };
            match tally.seen.get_mut(seq as usize) {
                None => tally.unexpected += 1,
                Some(true) => tally.duplicates += 1,
                Some(seen) => {
                    *seen = true;
                    tally.unique += 1;
                    tally
                        .latency_us
                        .push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
                    tally.last_us = tally.last_us.max(now);
                    progress.unique[mode].fetch_add(1, Ordering::Relaxed);
                }
            }
            continue;
        }
        let event = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["event"].as_str().map(str::to_owned));
        match event.as_deref() {
            Some("pusher:ping") => {
                if let Err(e) = ws.send(Message::text(relaymesh_proto::frame::PONG)).await {
                    break format!("error answering a ping: {e}");
                }
            }
            Some("pusher:error") => {
                state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pusher_errors += 1;
            }
            _ => {}
        }
    };
    state.lock().unwrap_or_else(|e| e.into_inner()).closed = Some(ended);
}

/// Signs and sends events to the HTTP API of one node.
struct Publisher {
    http: reqwest::Client,
    base: String,
    channel: String,
    /// `data_bytes` of padding; each event takes what its prefix leaves.
    padding: String,
    epoch: Instant,
}

impl Publisher {
    async fn publish(&self, mode: Mode, seq: u64) -> Result<()> {
        let sent = self.epoch.elapsed().as_micros();
        let mut data = format!("rmb:{}:{seq}:{sent}:", mode.index());
        let pad = self.padding.len().saturating_sub(data.len());
        data.push_str(&self.padding[..pad]);
        let body = json!({"name": EVENT, "channels": [self.channel], "data": data}).to_string();
        let path = format!("/apps/{APP_ID}/events");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let query = signing::sign_request(
            APP_KEY,
            APP_SECRET,
            "POST",
            &path,
            &[],
            body.as_bytes(),
            now,
        );
        let response = self
            .http
            .post(format!("{}{path}?{query}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        ensure!(status.is_success(), "publish answered {status}");
        Ok(())
    }
}

/// Publishes `events` with `inflight` requests outstanding; returns the failed publishes.
async fn closed_loop(publisher: Arc<Publisher>, events: u64, inflight: usize) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..inflight {
        let (publisher, next, failed) = (publisher.clone(), next.clone(), failed.clone());
        tasks.spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= events {
                    return;
                }
                if publisher.publish(Mode::Closed, seq).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    failed.load(Ordering::Relaxed)
}

/// Publishes `events` at `rate` per second, each without waiting for the previous answer;
/// returns the failed publishes.
async fn paced(publisher: Arc<Publisher>, events: u64, rate: f64) -> u64 {
    let failed = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(Semaphore::new(PACED_INFLIGHT_MAX));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut tasks = JoinSet::new();
    for seq in 0..events {
        tick.tick().await;
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (publisher, failed) = (publisher.clone(), failed.clone());
        tasks.spawn(async move {
            if publisher.publish(Mode::Paced, seq).await.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            drop(slot);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    failed.load(Ordering::Relaxed)
}

/// Sums every series of the counter `name` in Prometheus text.
fn sum_series(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                // Label values may hold spaces; the value follows the closing brace.
                &rest[rest.rfind('}')? + 1..]
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None; // another metric whose name starts with `name`
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

async fn mesh_bytes(http: &reqwest::Client, nodes: &[(SocketAddr, u32)]) -> Result<f64> {
    let mut total = 0.0;
    for (addr, _) in nodes {
        let text = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        total += sum_series(&text, MESH_BYTES_OUT);
    }
    Ok(total)
}

/// CPU seconds of the node processes, the control plane, this process and the whole
/// machine.
fn cpu(target: &Target) -> Result<[f64; 4]> {
    let mut nodes = 0.0;
    for (_, pid) in &target.nodes {
        nodes += procstat::sample(*pid)?.0;
    }
    let control = match target.control_plane {
        Some(pid) => procstat::sample(pid)?.0,
        None => 0.0,
    };
    let sim = procstat::sample(std::process::id())?.0;
    Ok([nodes, control, sim, procstat::machine_busy()?])
}

fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// The figures of one target in one mode.
struct Figures {
    target: String,
    mode: Mode,
    events: u64,
    publish_failed: u64,
    expected: u64,
    unique: u64,
    lost: u64,
    duplicates: u64,
    unexpected: u64,
    closed_subs: usize,
    pusher_errors: u64,
    publish_s: f64,
    span_s: f64,
    delivered_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    node_cpu_s: f64,
    control_cpu_s: f64,
    sim_cpu_s: f64,
    /// CPU seconds of everything else on the machine during the mode (other people's
    /// work disturbs the figures when this is large).
    other_cpu_s: f64,
    mesh_bytes: f64,
}

impl Figures {
    fn mesh_bytes_per_delivery(&self) -> f64 {
        self.mesh_bytes / self.unique.max(1) as f64
    }

    fn mesh_bytes_per_event(&self) -> f64 {
        self.mesh_bytes / self.events.max(1) as f64
    }

    fn node_cpu_us_per_delivery(&self) -> f64 {
        self.node_cpu_s * 1e6 / self.unique.max(1) as f64
    }

    fn to_json(&self) -> Value {
        json!({
            "target": self.target,
            "mode": self.mode.name(),
            "events": self.events,
            "publish_failed": self.publish_failed,
            "expected_deliveries": self.expected,
            "unique_deliveries": self.unique,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "unexpected": self.unexpected,
            "closed_subscribers": self.closed_subs,
            "pusher_errors": self.pusher_errors,
            "publish_s": self.publish_s,
            "span_s": self.span_s,
            "delivered_per_s": self.delivered_per_s,
            "latency_ms": {"p50": self.p50_ms, "p99": self.p99_ms, "max": self.max_ms},
            "node_cpu_s": self.node_cpu_s,
            "control_plane_cpu_s": self.control_cpu_s,
            "sim_cpu_s": self.sim_cpu_s,
            "other_cpu_s": self.other_cpu_s,
            "node_cpu_us_per_delivery": self.node_cpu_us_per_delivery(),
            "mesh_bytes_out": self.mesh_bytes,
            "mesh_bytes_per_delivery": self.mesh_bytes_per_delivery(),
            "mesh_bytes_per_event": self.mesh_bytes_per_event(),
        })
    }
}

/// The subscribers of one target.
struct Subscribers {
    states: Vec<Arc<Mutex<SubState>>>,
    progress: Arc<Progress>,
    /// The reading tasks; dropped (aborted) with the target.
    _readers: JoinSet<()>,
}

async fn connect_all(
    args: &Args,
    target: &Target,
    channel: &str,
    epoch: Instant,
) -> Result<Subscribers> {
    let url = format!(
        "ws://{}/app/{APP_KEY}?protocol=7&client=relaymesh-sim&version=0.1.0",
        target.sub_addr
    );
    let mut connecting = JoinSet::new();
    let mut sockets = Vec::with_capacity(args.subs);
    for _ in 0..args.subs {
        if connecting.len() >= CONNECTING_MAX {
            if let Some(ws) = connecting.join_next().await {
                sockets.push(ws??);
            }
        }
        connecting.spawn(connect_subscriber(url.clone(), channel.to_owned()));
    }
    while let Some(ws) = connecting.join_next().await {
        sockets.push(ws??);
    }
    let progress = Arc::new(Progress::default());
    let mut readers = JoinSet::new();
    let mut states = Vec::with_capacity(sockets.len());
    for ws in sockets {
        let state = Arc::new(Mutex::new(SubState::default()));
        states.push(state.clone());
        readers.spawn(read_events(ws, state, progress.clone(), epoch));
    }
    Ok(Subscribers {
        states,
        progress,
        _readers: readers,
    })
}

async fn measure(
    args: &Args,
    target: &Target,
    subs: &Subscribers,
    publisher: &Arc<Publisher>,
    http: &reqwest::Client,
    mode: Mode,
) -> Result<Figures> {
    let m = mode.index();
    for state in &subs.states {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.tallies[m] = Tally {
            seen: vec![false; args.events as usize],
            latency_us: Vec::with_capacity(args.events as usize),
            ..Tally::default()
        };
    }
    let bytes_before = mesh_bytes(http, &target.nodes).await?;
    let cpu_before = cpu(target)?;
    let first_us = publisher.epoch.elapsed().as_micros() as u64;
    let publish_failed = match mode {
        Mode::Closed => closed_loop(publisher.clone(), args.events, args.inflight).await,
        Mode::Paced => paced(publisher.clone(), args.events, args.rate).await,
    };
    let publish_s = (publisher.epoch.elapsed().as_micros() as u64 - first_us) as f64 / 1e6;
    // Wait for every delivery, or until none came for `settle_ms`.
    let expected = args.events * subs.states.len() as u64;
    let settle = Duration::from_millis(args.settle_ms);
    let (mut seen, mut since) = (0, Instant::now());
    loop {
        let now = subs.progress.unique[m].load(Ordering::Relaxed);
        if now >= expected {
            break;
        }
        if now != seen {
            (seen, since) = (now, Instant::now());
        } else if since.elapsed() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let cpu_after = cpu(target)?;
    let bytes_after = mesh_bytes(http, &target.nodes).await?;

    let (mut unique, mut duplicates, mut unexpected, mut last_us) = (0, 0, 0, first_us);
    let (mut closed_subs, mut pusher_errors) = (0, 0);
    let mut latency = Vec::with_capacity(expected as usize);
    for state in &subs.states {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        closed_subs += usize::from(state.closed.is_some());
        pusher_errors += state.pusher_errors;
        let tally = std::mem::take(&mut state.tallies[m]);
        unique += tally.unique;
        duplicates += tally.duplicates;
        unexpected += tally.unexpected;
        last_us = last_us.max(tally.last_us);
        latency.extend_from_slice(&tally.latency_us);
    }
    latency.sort_unstable();
    let span_s = (last_us - first_us) as f64 / 1e6;
    Ok(Figures {
        target: target.name.clone(),
        mode,
        events: args.events,
        publish_failed,
        expected,
        unique,
        lost: expected.saturating_sub(unique),
        duplicates,
        unexpected,
        closed_subs,
        pusher_errors,
        publish_s,
        span_s,
        delivered_per_s: if span_s > 0.0 {
            unique as f64 / span_s
        } else {
            0.0
        },
        p50_ms: percentile_ms(&latency, 0.5),
        p99_ms: percentile_ms(&latency, 0.99),
        max_ms: percentile_ms(&latency, 1.0),
        node_cpu_s: cpu_after[0] - cpu_before[0],
        control_cpu_s: cpu_after[1] - cpu_before[1],
        sim_cpu_s: cpu_after[2] - cpu_before[2],
        other_cpu_s: {
            let ours: f64 = (0..3).map(|i| cpu_after[i] - cpu_before[i]).sum();
            (cpu_after[3] - cpu_before[3] - ours).max(0.0)
        },
        mesh_bytes: bytes_after - bytes_before,
    })
}

/// The workload on one started target: subscribers, then each mode.
async fn run_target(
    args: &Args,
    target: &Target,
    channel: &str,
    http: &reqwest::Client,
    epoch: Instant,
) -> Result<Vec<Figures>> {
    let started = Instant::now();
    let subs = connect_all(args, target, channel, epoch).await?;
    println!(
        "{}: {} subscribers on {} in {:.2} s; publishing on {}",
        target.name,
        subs.states.len(),
        target.sub_addr,
        started.elapsed().as_secs_f64(),
        target.pub_addr
    );
    let publisher = Arc::new(Publisher {
        http: http.clone(),
        base: format!("http://{}", target.pub_addr),
        channel: channel.to_owned(),
        padding: "x".repeat(args.data_bytes),
        epoch,
    });
    // Open the publisher's keep-alive connections before measuring.
    let mut warm = JoinSet::new();
    for _ in 0..args.inflight {
        let request = http.get(format!("http://{}/healthz", target.pub_addr));
        warm.spawn(async move { request.send().await.map(|_| ()) });
    }
    while let Some(done) = warm.join_next().await {
        done??;
    }
    let mut figures = Vec::new();
    for mode in Mode::ALL {
        let f = measure(args, target, &subs, &publisher, http, mode).await?;
        println!(
            "  {:<6} {:>10.0} delivered/s  p50 {:.2} ms  p99 {:.2} ms  lost {}  dup {}",
            mode.name(),
            f.delivered_per_s,
            f.p50_ms,
            f.p99_ms,
            f.lost,
            f.duplicates
        );
        figures.push(f);
    }
    Ok(figures)
}

/// The first channel name the ring of a, b, c gives to `c`.
fn channel_owned_by_c() -> Result<String> {
    let ring = Ring::new(["a", "b", "c"]);
    (0..100_000)
        .map(|i| format!("mesh-bench-{i}"))
        .find(|name| ring.owner(APP_ID, name) == Some("c"))
        .context("no channel name owned by c")
}

pub async fn run(args: Args) -> Result<()> {
    ensure!(
        args.subs > 0 && args.events > 0 && args.inflight > 0,
        "--subs, --events and --inflight must be at least 1"
    );
    // Each subscriber keeps a seen flag and a latency per event: bound the product.
    ensure!(
        (args.subs as u64).saturating_mul(args.events) <= 50_000_000,
        "--subs × --events must be at most 50,000,000"
    );
    ensure!(
        args.rate > 0.0 && args.rate <= 100_000.0,
        "--rate must be in (0, 100000]"
    );
    ensure!(
        args.data_bytes <= 8192,
        "--data-bytes must be at most 8192 (the app's limit is 10 KiB)"
    );
    for bin in ["relaymesh-node", "relaymesh-control"] {
        let path = args.bin_dir.join(bin);
        ensure!(
            path.is_file(),
            "{} is missing; build it with `cargo build --release -p relaymesh-node -p relaymesh-control` or pass --bin-dir",
            path.display()
        );
    }
    let limit = Duration::from_secs(args.time_limit);
    // Every started process belongs to the run's future: the time limit and Ctrl-C drop it,
    // which kills them.
    tokio::select! {
        result = tokio::time::timeout(limit, run_all(&args)) => match result {
            Ok(result) => result,
            Err(_) => bail!("time limit of {} s reached", args.time_limit),
        },
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

async fn run_all(args: &Args) -> Result<()> {
    let work = Workdir::new()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let channel = channel_owned_by_c()?;
    let epoch = Instant::now();

    let ca_dir = work.0.join("ca");
    let made = Command::new(args.bin_dir.join("relaymesh-node"))
        .args(["certs", "ca", "--out"])
        .arg(&ca_dir)
        .output()
        .context("running relaymesh-node certs ca")?;
    ensure!(
        made.status.success(),
        "relaymesh-node certs ca failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );

    let mut all = Vec::new();
    {
        let target = start_baseline(args, &work.0, &http).await?;
        all.extend(run_target(args, &target, &channel, &http, epoch).await?);
    }
    for transport in &args.transports {
        // One cluster at a time: the previous target's processes are gone before this one.
        let target = start_mesh(args, &work.0, &ca_dir, *transport, &http).await?;
        all.extend(run_target(args, &target, &channel, &http, epoch).await?);
    }

    print!("{}", table(args, &channel, &all));
    if let Some(path) = &args.json {
        let comparisons: Vec<Value> = all
            .iter()
            .filter(|f| f.target != "baseline")
            .filter_map(|f| {
                let base = baseline_of(&all, f.mode)?;
                Some(json!({
                    "target": f.target,
                    "mode": f.mode.name(),
                    "throughput_ratio": f.delivered_per_s / base.delivered_per_s,
                    "p99_diff_ms": f.p99_ms - base.p99_ms,
                }))
            })
            .collect();
        let figures = json!({
            "subs": args.subs,
            "events": args.events,
            "inflight": args.inflight,
            "rate": args.rate,
            "data_bytes": args.data_bytes,
            "channel": channel,
            "results": all.iter().map(Figures::to_json).collect::<Vec<_>>(),
            "comparisons": comparisons,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn baseline_of(all: &[Figures], mode: Mode) -> Option<&Figures> {
    all.iter()
        .find(|f| f.target == "baseline" && f.mode == mode)
}

fn table(args: &Args, channel: &str, all: &[Figures]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{} subscribers on one channel ({channel}), {} events per mode of {} data bytes; \
         closed loop: {} in flight; paced: {} events/s",
        args.subs, args.events, args.data_bytes, args.inflight, args.rate
    );
    let _ = writeln!(
        out,
        "| target | mode | delivered/s | × baseline | p50 ms | p99 ms | Δp99 ms | max ms | lost | dup | node CPU s | node µs/delivery | control CPU s | sim CPU s | other CPU s | mesh B/delivery | mesh B/event |"
    );
    let _ = writeln!(out, "|{}", " --- |".repeat(17));
    for f in all {
        let (ratio, diff) = match baseline_of(all, f.mode) {
            Some(base) if f.target != "baseline" => (
                format!("{:.2}", f.delivered_per_s / base.delivered_per_s),
                format!("{:+.2}", f.p99_ms - base.p99_ms),
            ),
            _ => ("".into(), "".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {ratio} | {:.2} | {:.2} | {diff} | {:.1} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} |",
            f.target,
            f.mode.name(),
            f.delivered_per_s,
            f.p50_ms,
            f.p99_ms,
            f.max_ms,
            f.lost,
            f.duplicates,
            f.node_cpu_s,
            f.node_cpu_us_per_delivery(),
            f.control_cpu_s,
            f.sim_cpu_s,
            f.other_cpu_s,
            f.mesh_bytes_per_delivery(),
            f.mesh_bytes_per_event(),
        );
    }
    let problems: Vec<String> = all
        .iter()
        .filter(|f| f.publish_failed + f.unexpected + f.pusher_errors > 0 || f.closed_subs > 0)
        .map(|f| {
            format!(
                "{} {}: {} publishes failed, {} unexpected deliveries, {} pusher:error, {} subscribers closed",
                f.target,
                f.mode.name(),
                f.publish_failed,
                f.unexpected,
                f.pusher_errors,
                f.closed_subs
            )
        })
        .collect();
    for p in problems {
        let _ = writeln!(out, "! {p}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_series_of_a_counter() {
        let text = "# TYPE relaymesh_mesh_bytes_out_total counter\n\
                    relaymesh_mesh_bytes_out_total{peer=\"a b\"} 100\n\
                    relaymesh_mesh_bytes_out_total{peer=\"c\"} 23\n\
                    relaymesh_mesh_bytes_out_total_other 7\n\
                    relaymesh_mesh_bytes_in_total{peer=\"c\"} 5\n";
        assert_eq!(sum_series(text, MESH_BYTES_OUT), 123.0);
        assert_eq!(
            sum_series("relaymesh_mesh_bytes_out_total 9\n", MESH_BYTES_OUT),
            9.0
        );
        assert_eq!(sum_series("", MESH_BYTES_OUT), 0.0);
    }

    #[test]
    fn reads_a_delivery_without_json() {
        let text = r#"{"event":"rmb","channel":"c","data":"rmb:1:42:123456:xxxx"}"#;
        assert_eq!(parse_delivery(text), Some((1, 42, 123456)));
        assert_eq!(parse_delivery(r#"{"event":"pusher:ping","data":{}}"#), None);
    }

    #[test]
    fn the_channel_is_owned_by_c() {
        let channel = channel_owned_by_c().unwrap();
        assert_eq!(
            Ring::new(["a", "b", "c"]).owner(APP_ID, &channel),
            Some("c")
        );
    }
}
