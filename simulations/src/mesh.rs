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
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use relaymesh_proto::ring::Ring;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::{load, procstat};

const APP_ID: &str = "app-id";
const APP_KEY: &str = "app-key";
const APP_SECRET: &str = "app-secret";
/// Event name of the benchmark's events (their data is `load`'s `~b~SEQ~SENT_US~…`).
const EVENT: &str = "rmb";
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
    pub fn name(self) -> &'static str {
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

/// One mode on one target: a publish run through `load`'s publisher and recorder, with the
/// nodes' CPU and mesh bytes around it.
async fn measure(
    args: &Args,
    target: &Target,
    session: &load::Session,
    subs: &load::Opened,
    channel: &str,
    http: &reqwest::Client,
    mode: Mode,
) -> Result<Figures> {
    // Each mode has its own sequence numbers, so a late delivery of one is never counted
    // in the other.
    let first = mode.index() as u64 * args.events;
    let channel = channel.to_owned();
    let plan = load::Plan {
        seqs: first..first + args.events,
        rate: match mode {
            Mode::Closed => 0.0,
            Mode::Paced => args.rate,
        },
        inflight: match mode {
            Mode::Closed => args.inflight,
            Mode::Paced => PACED_INFLIGHT_MAX,
        },
        payload_bytes: args.data_bytes,
        event_name: EVENT.into(),
        channel_of: Arc::new(move |_| channel.clone()),
    };
    let subscribers = subs.conns.len() as u64;
    let pusher_errors_before = session.errors.total_of("pusher:error");
    let bytes_before = mesh_bytes(http, &target.nodes).await?;
    let cpu_before = cpu(target)?;
    let load::Measured {
        published,
        delivery,
        ..
    } = load::measure(
        session,
        &subs.conns,
        &plan,
        0,
        Duration::from_millis(args.settle_ms),
        &|_| subscribers,
    )
    .await;
    let cpu_after = cpu(target)?;
    let bytes_after = mesh_bytes(http, &target.nodes).await?;
    Ok(Figures {
        target: target.name.clone(),
        mode,
        events: args.events,
        publish_failed: args.events - published.acked_ok,
        expected: delivery.expected,
        unique: delivery.delivered_unique,
        lost: delivery.lost,
        duplicates: delivery.duplicates,
        unexpected: delivery.out_of_range + delivery.delivered_for_unacked,
        closed_subs: subs.conns.iter().filter(|c| !c.is_open()).count(),
        pusher_errors: session.errors.total_of("pusher:error") - pusher_errors_before,
        publish_s: published.last_ack_us.saturating_sub(published.t0_us) as f64 / 1e6,
        span_s: delivery.window_s,
        delivered_per_s: delivery.delivered_per_s,
        p50_ms: delivery.latency.p50_ms,
        p99_ms: delivery.latency.p99_ms,
        max_ms: delivery.latency.max_ms,
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
) -> Result<Vec<Figures>> {
    let targets = load::Targets {
        app: load::App {
            id: APP_ID.into(),
            key: APP_KEY.into(),
            secret: APP_SECRET.into(),
        },
        ws: vec![load::Target {
            label: target.name.clone(),
            url: format!("ws://{}", target.sub_addr),
        }],
        api: vec![load::Target {
            label: target.name.clone(),
            url: format!("http://{}", target.pub_addr),
        }],
    };
    let options = load::Options {
        time_limit: Duration::from_secs(args.time_limit),
        connect_concurrency: CONNECTING_MAX,
        connect_timeout: HANDSHAKE_WAIT,
        source_ips: 1,
        inflight_hint: args.inflight,
        ..load::Options::default()
    };
    let session = load::Session::new(&targets, &options)?;
    let subs = session
        .open(args.subs as u64, &|_| Some((channel.to_owned(), 0)))
        .await;
    ensure!(
        subs.stats.subscribed == args.subs as u64,
        "{}: {} of {} subscribers subscribed (is `ulimit -n` high enough?); errors: {:?}",
        target.name,
        subs.stats.subscribed,
        args.subs,
        session.errors.by_code()
    );
    println!(
        "{}: {} subscribers on {} in {:.2} s; publishing on {}",
        target.name,
        subs.conns.len(),
        target.sub_addr,
        subs.stats.wall_s,
        target.pub_addr
    );
    // Open the publisher's keep-alive connections before measuring.
    load::warm_up(&session, channel, 0, args.inflight).await;
    let mut figures = Vec::new();
    for mode in Mode::ALL {
        let f = measure(args, target, &session, &subs, channel, http, mode).await?;
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
        all.extend(run_target(args, &target, &channel, &http).await?);
    }
    for transport in &args.transports {
        // One cluster at a time: the previous target's processes are gone before this one.
        let target = start_mesh(args, &work.0, &ca_dir, *transport, &http).await?;
        all.extend(run_target(args, &target, &channel, &http).await?);
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
    fn the_channel_is_owned_by_c() {
        let channel = channel_owned_by_c().unwrap();
        assert_eq!(
            Ring::new(["a", "b", "c"]).owner(APP_ID, &channel),
            Some("c")
        );
    }
}
