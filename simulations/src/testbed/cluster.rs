//! A cluster of real processes on namespace hosts: `relaymesh-control serve` on host `cp`,
//! `relaymesh-node --config FILE` on one host per node (named after the node id), each in
//! its region, with the mesh transport asked for and a cluster CA made for the run. Each
//! process's stdout and stderr go to `{dir}/{host}.log` (appended across restarts); the
//! tails are printed when something failed, and the directory is kept then.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relaymesh_node::mesh::tls::ClusterCa;

use super::latency::{self, Latency, Mode, Service};
use super::netns::{must, Net};
use super::relay::Relays;
use super::Error;
use crate::mesh::Transport;

pub const APP: &str = "app-id";
pub const KEY: &str = "app-key";
pub const SECRET: &str = "app-secret";
pub const LEASE_TTL: Duration = Duration::from_millis(1000);
pub const HEARTBEAT: Duration = Duration::from_millis(250);
const CP_PORT: u16 = 7000;
const CP_HTTP_PORT: u16 = 7001;
const NODE_PORT: u16 = 6001;
const MESH_PORT: u16 = 7100;
/// The control plane's host name.
pub const CP: &str = "cp";

/// Latency between hosts.
#[derive(Debug, Clone)]
pub enum Latencies {
    None,
    /// The same between every two hosts.
    Uniform(Latency),
    /// Between regions (key: the two region names, sorted); none within a region.
    ByRegion(BTreeMap<(String, String), Latency>),
}

impl Latencies {
    /// Between hosts in `a` and `b` (regions).
    pub fn between(&self, a: &str, b: &str) -> Option<Latency> {
        match self {
            Latencies::None => None,
            Latencies::Uniform(l) => Some(*l),
            Latencies::ByRegion(_) if a == b => None,
            Latencies::ByRegion(map) => {
                let key = if a < b { (a, b) } else { (b, a) };
                map.get(&(key.0.to_owned(), key.1.to_owned())).copied()
            }
        }
    }
}

/// The two binaries.
#[derive(Debug, Clone)]
pub struct Bins {
    pub control: PathBuf,
    pub node: PathBuf,
}

impl Bins {
    /// `relaymesh-control` and `relaymesh-node` in `dir`; says loudly when the node binary
    /// is older than the sources.
    pub fn in_dir(dir: &Path) -> Result<Bins, Error> {
        let bins = Bins {
            control: dir.join("relaymesh-control"),
            node: dir.join("relaymesh-node"),
        };
        for bin in [&bins.control, &bins.node] {
            if !bin.is_file() {
                return Err(Error::Setup(format!(
                    "no {} binary; build it first: cargo build -p relaymesh-node -p relaymesh-control",
                    bin.display()
                )));
            }
        }
        warn_if_stale(&bins.node);
        Ok(bins)
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Names the run in messages and in its log folder.
    pub name: String,
    /// Prefixes messages (`faults`, `cluster`).
    pub log: String,
    /// Two letters naming this kind of harness in namespace and interface names.
    pub prefix: String,
    /// Node ids and their regions, in start order.
    pub nodes: Vec<(String, String)>,
    pub cp_region: String,
    pub latency: Latencies,
    pub transport: Transport,
    pub bins: Bins,
    /// RUST_LOG of the processes.
    pub rust_log: String,
    /// Where the logs go and stay; `None`: a temporary folder, kept only on failure.
    pub dir: Option<PathBuf>,
}
/// Wall-clock time as `HH:MM:SS.mmm` UTC, as in the processes' logs.
pub fn clock() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        now.subsec_millis()
    )
}

struct Proc {
    child: Child,
}

/// The control plane and nodes of one run, on their own network.
pub struct Cluster {
    pub name: String,
    pub t0: Instant,
    log: String,
    dir: PathBuf,
    bins: Bins,
    ca_dir: PathBuf,
    procs: BTreeMap<String, Proc>,
    starts: BTreeMap<String, u32>,
    /// The node hosts, in start order.
    pub nodes: Vec<String>,
    /// Each host's region (`cp` included).
    pub regions: BTreeMap<String, String>,
    /// Each host's address, so that lookups by name need no fallible call.
    ips: BTreeMap<String, IpAddr>,
    transport: Transport,
    rust_log: String,
    /// How latency is simulated, and the sentence that says so.
    pub latency_mode: Mode,
    pub latency_note: String,
    pub http: reqwest::Client,
    keep_dir: bool,
    relays: Relays,
    pub net: Net,
}

impl Cluster {
    /// The network (a `cp` host and one host per node), certificates, latency and the
    /// control plane; no node is started yet.
    pub async fn new(spec: Spec) -> Result<Cluster, Error> {
        let mut names = vec![CP.to_owned()];
        names.extend(spec.nodes.iter().map(|(id, _)| id.clone()));
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let net = Net::new(&spec.prefix, &spec.log, &refs)?;
        let slug: String = spec
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let keep_dir = spec.dir.is_some();
        let dir = spec.dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("relaymesh-{}-{}-{slug}", spec.log, net.tag()))
        });
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let ca_dir = dir.join("ca");
        ClusterCa::generate()
            .and_then(|ca| ca.save(&ca_dir))
            .map_err(|e| {
                Error::Setup(format!(
                    "making the cluster CA in {}: {e}",
                    ca_dir.display()
                ))
            })?;
        let mut regions: BTreeMap<String, String> = spec.nodes.iter().cloned().collect();
        regions.insert(CP.to_owned(), spec.cp_region.clone());
        let ips = net
            .hosts()
            .iter()
            .map(|h| (h.name.clone(), IpAddr::V4(h.ip)))
            .collect();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Setup(format!("an HTTP client: {e}")))?;
        let mut cluster = Cluster {
            name: spec.name.clone(),
            t0: Instant::now(),
            log: spec.log.clone(),
            dir,
            bins: spec.bins.clone(),
            ca_dir,
            procs: BTreeMap::new(),
            starts: BTreeMap::new(),
            nodes: names[1..].to_vec(),
            regions,
            ips,
            transport: spec.transport,
            rust_log: spec.rust_log.clone(),
            latency_mode: Mode::None,
            latency_note: String::new(),
            http,
            keep_dir,
            relays: Relays::default(),
            net,
        };
        eprintln!(
            "[{}] {}: network {} (bridge {}), logs in {}",
            cluster.log,
            cluster.name,
            cluster.net.tag(),
            cluster.net.gateway,
            cluster.dir.display()
        );
        cluster.add_latency(&spec.latency).await?;
        cluster.start_cp().await?;
        Ok(cluster)
    }

    /// A control plane and every node of `spec`, ready within 15 s.
    pub async fn start(spec: Spec) -> Result<Cluster, Error> {
        let n = spec.nodes.len();
        let mut cluster = Cluster::new(spec).await?;
        for node in cluster.nodes.clone() {
            cluster.start_node(&node)?;
        }
        let all = cluster.nodes.clone();
        if let Err(e) = cluster.wait_ready(&all, Duration::from_secs(15)).await {
            return Err(Error::Process(format!(
                "the cluster did not become ready: {e}"
            )));
        }
        eprintln!(
            "[{}] {}: {n} nodes ready after {} ms",
            cluster.log,
            cluster.name,
            cluster.t0.elapsed().as_millis()
        );
        Ok(cluster)
    }

    async fn add_latency(&mut self, latencies: &Latencies) -> Result<(), Error> {
        let hosts: Vec<String> = std::iter::once(CP.to_owned())
            .chain(self.nodes.iter().cloned())
            .collect();
        let regions = self.regions.clone();
        let region = |h: &str| regions.get(h).cloned().unwrap_or_default();
        let paths = latency::paths(&hosts, &|a, b| latencies.between(&region(a), &region(b)));
        let transport = self.transport;
        let services = |host: &str| {
            if host == CP {
                vec![Service {
                    proto: "tcp",
                    port: CP_PORT,
                }]
            } else {
                vec![Service {
                    proto: match transport {
                        Transport::Quic => "udp",
                        Transport::Grpc => "tcp",
                    },
                    port: MESH_PORT,
                }]
            }
        };
        let (mode, note) = latency::apply(&self.net, &mut self.relays, &paths, &services).await?;
        if mode == Mode::Relays {
            eprintln!("\n[{}] {}: {note}\n", self.log, self.name);
        } else {
            eprintln!("[{}] {}: {note}", self.log, self.name);
        }
        self.latency_mode = mode;
        self.latency_note = note;
        Ok(())
    }

    /// Now, as wall-clock time (as in the logs) and as time since the cluster started
    /// (as in the lost-event reports).
    pub fn at(&self) -> String {
        format!("{} UTC (t+{} ms)", clock(), self.t0.elapsed().as_millis())
    }

    /// A host's address (`0.0.0.0` for a name that is none: connecting there fails).
    pub fn ip(&self, host: &str) -> IpAddr {
        self.ips
            .get(host)
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// `http://IP:6001` of a node.
    pub fn base(&self, node: &str) -> String {
        format!("http://{}:{NODE_PORT}", self.ip(node))
    }

    pub fn ws_addr(&self, node: &str) -> String {
        format!("{}:{NODE_PORT}", self.ip(node))
    }

    /// The folder of the logs, the CA and the configs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn log_path(&self, host: &str) -> PathBuf {
        self.dir.join(format!("{host}.log"))
    }

    fn open_log(&mut self, host: &str) -> Result<File, Error> {
        let starts = self.starts.entry(host.to_owned()).or_default();
        *starts += 1;
        let n = *starts;
        let path = self.log_path(host);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        writeln!(
            file,
            "===== [{}] start #{n} of {host} at {} UTC =====",
            self.log,
            clock()
        )
        .map_err(|e| Error::io(&path, e))?;
        Ok(file)
    }

    fn spawn(&mut self, host: &str, program: &Path, args: &[String]) -> Result<(), Error> {
        let log = self.open_log(host)?;
        let err = log
            .try_clone()
            .map_err(|e| Error::io(&self.log_path(host), e))?;
        let mut command = self.net.command(host, program)?;
        // The node reads every RELAYMESH_* variable as configuration (and refuses unknown
        // ones, such as the fault suite's RELAYMESH_FAULT_RUNS): the processes get none.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RELAYMESH_") {
                command.env_remove(key);
            }
        }
        let child = command
            .args(args)
            .env("RUST_LOG", &self.rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| {
                Error::Process(format!("cannot start {} on {host}: {e}", program.display()))
            })?;
        self.procs.insert(host.to_owned(), Proc { child });
        Ok(())
    }

    /// Starts (or restarts, same address and data dir) the control plane and waits until
    /// its /metrics answers (10 s at most).
    pub async fn start_cp(&mut self) -> Result<(), Error> {
        let ip = self.ip(CP);
        let data = self.dir.join("cp-data");
        let args: Vec<String> = [
            "serve".to_owned(),
            "--listen".into(),
            format!("{ip}:{CP_PORT}"),
            "--http-listen".into(),
            format!("{ip}:{CP_HTTP_PORT}"),
            "--data-dir".into(),
            data.display().to_string(),
            "--heartbeat-ms".into(),
            HEARTBEAT.as_millis().to_string(),
            "--lease-ttl-ms".into(),
            LEASE_TTL.as_millis().to_string(),
        ]
        .into();
        let control = self.bins.control.clone();
        self.spawn(CP, &control, &args)?;
        let url = format!("http://{ip}:{CP_HTTP_PORT}/metrics");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.exit_status(CP) {
                return Err(Error::Process(format!(
                    "relaymesh-control exited at start: {status}"
                )));
            }
            let ok = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Process(format!(
                    "the control plane never answered on {url}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn node_config(&self, node: &str) -> Result<PathBuf, Error> {
        let ip = self.ip(node);
        let region = self.regions.get(node).map_or("r1", String::as_str);
        // Nodes dial the control plane's own address; with relays, DNAT in their
        // namespace sends it through the relay.
        let toml = format!(
            "listen = \"{ip}:{NODE_PORT}\"\n\
             \n\
             [control_plane]\n\
             endpoint = \"http://{cp}:{CP_PORT}\"\n\
             node_id = \"{node}\"\n\
             region = \"{region}\"\n\
             \n\
             [mesh]\n\
             listen = \"{ip}:{MESH_PORT}\"\n\
             transport = \"{transport}\"\n\
             dev_ca_dir = \"{ca}\"\n\
             \n\
             [[apps]]\n\
             id = \"{APP}\"\n\
             key = \"{KEY}\"\n\
             secret = \"{SECRET}\"\n",
            cp = self.ip(CP),
            transport = self.transport.name(),
            ca = self.ca_dir.display(),
        );
        let path = self.dir.join(format!("{node}.toml"));
        std::fs::write(&path, toml).map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }

    /// Starts (or restarts, same config and node id) a node; does not wait for it.
    pub fn start_node(&mut self, node: &str) -> Result<(), Error> {
        let config = self.node_config(node)?;
        let args = vec!["--config".to_owned(), config.display().to_string()];
        let binary = self.bins.node.clone();
        self.spawn(node, &binary, &args)
    }

    /// SIGKILL: no goodbye to anyone.
    pub fn kill(&mut self, host: &str) {
        if let Some(mut proc) = self.procs.remove(host) {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
    }

    /// Whether `host`'s process was started and not yet reaped.
    pub fn running(&self, host: &str) -> bool {
        self.procs.contains_key(host)
    }

    /// SIGTERM: a node drains, then exits.
    pub fn terminate(&self, host: &str) -> Result<(), Error> {
        let proc = self
            .procs
            .get(host)
            .ok_or_else(|| Error::Process(format!("{host} is not running")))?;
        must("kill", &["-TERM", &proc.child.id().to_string()])
    }

    /// The exit status of `host`'s process, if it exited.
    pub fn exit_status(&mut self, host: &str) -> Option<ExitStatus> {
        self.procs.get_mut(host)?.child.try_wait().ok().flatten()
    }

    /// Waits for `host`'s process to exit; `None` if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, host: &str, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status(host) {
                self.procs.remove(host);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET /readyz: status and body (`None`: no answer).
    pub async fn readyz(&self, node: &str) -> Option<(u16, String)> {
        let response = self
            .http
            .get(format!("{}/readyz", self.base(node)))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.unwrap_or_default()))
    }

    /// Waits until every node of `nodes` answers /readyz 200; the time it took, or what
    /// each node said at the deadline.
    pub async fn wait_ready(
        &self,
        nodes: &[String],
        timeout: Duration,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let mut pending = Vec::new();
            for node in nodes {
                match self.readyz(node).await {
                    Some((200, _)) => {}
                    Some((status, body)) => {
                        pending.push(format!("{node}: {status} {}", body.trim()))
                    }
                    None => pending.push(format!("{node}: no answer")),
                }
            }
            if pending.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return Err(format!("after {timeout:?}: {}", pending.join("; ")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of the metric line starting with `series` (e.g. `relaymesh_fenced` or
    /// `relaymesh_mesh_link_up{peer="n2"}`).
    pub async fn metric(&self, node: &str, series: &str) -> Option<f64> {
        metric_at(&self.http, &self.base(node), series).await
    }

    /// The lines of `host`'s log (every start of it) that contain `needle`.
    pub fn log_lines(&self, host: &str, needle: &str) -> Vec<String> {
        std::fs::read_to_string(self.log_path(host))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// How many nodes the control plane lists as active (its /metrics), if it answers.
    pub async fn cp_active(&self) -> Option<f64> {
        let url = format!("http://{}:{CP_HTTP_PORT}/metrics", self.ip(CP));
        let text = get_text(&self.http, &url).await?;
        Some(
            text.lines()
                .filter(|l| {
                    l.starts_with("relaymesh_control_nodes{") && l.contains("state=\"active\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// Whether `node` says it is fenced (`relaymesh_fenced` 1; a node that never fenced
    /// itself may not show the gauge at all).
    pub async fn fenced(&self, node: &str) -> bool {
        self.metric(node, "relaymesh_fenced").await.unwrap_or(0.0) != 0.0
    }

    /// Prints each running node's mesh and fencing metrics (links up, messages dropped by
    /// peer and reason, fenced), as evidence next to the logs.
    pub async fn print_metrics(&self) {
        for node in &self.nodes {
            if !self.procs.contains_key(node) {
                continue;
            }
            let Ok(response) = self
                .http
                .get(format!("{}/metrics", self.base(node)))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            else {
                continue;
            };
            let text = response.text().await.unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| {
                    [
                        "relaymesh_mesh_link_up",
                        "relaymesh_mesh_dropped_total",
                        "relaymesh_fenced",
                    ]
                    .iter()
                    .any(|m| l.starts_with(m))
                })
                .collect();
            eprintln!("----- metrics of {node} -----\n{}", lines.join("\n"));
        }
    }

    /// Prints the last lines of every process's log (to the test's stderr), a message
    /// repeated in them shown once (its last time) with its count.
    pub fn dump_logs(&mut self, lines: usize) {
        self.keep_dir = true;
        for host in std::iter::once(CP.to_owned()).chain(self.nodes.clone()) {
            let path = self.log_path(&host);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            // The message without its timestamp (the first word).
            let message = |l: &str| l.split_once(' ').map_or(l, |(_, m)| m).to_owned();
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for line in &all {
                *counts.entry(message(line)).or_default() += 1;
            }
            let mut shown: Vec<String> = Vec::new();
            let mut done = std::collections::HashSet::new();
            for line in all.iter().rev() {
                let m = message(line);
                if done.insert(m.clone()) {
                    let n = counts[&m];
                    shown.push(if n > 1 {
                        format!("{line}   [×{n}]")
                    } else {
                        (*line).to_owned()
                    });
                    if shown.len() == lines {
                        break;
                    }
                }
            }
            shown.reverse();
            eprintln!(
                "----- last {} distinct lines of {} -----",
                shown.len(),
                path.display()
            );
            for line in &shown {
                eprintln!("{line}");
            }
        }
        eprintln!("----- full logs kept in {} -----", self.dir.display());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut proc) in std::mem::take(&mut self.procs) {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
        if std::thread::panicking() && !self.keep_dir {
            self.dump_logs(60);
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        // Then `relays` and `net` (namespaces, bridge) go.
    }
}

/// The value of the metric line starting with `series` on the node at `base`.
pub async fn metric_at(http: &reqwest::Client, base: &str, series: &str) -> Option<f64> {
    let text = get_text(http, &format!("{base}/metrics")).await?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(series).is_some_and(|rest| {
                rest.starts_with(' ') || (rest.starts_with('{') && !series.contains('{'))
            })
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The body of a GET of `url`, if it answers within 2 s.
async fn get_text(http: &reqwest::Client, url: &str) -> Option<String> {
    http.get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// Says loudly when the node binary is older than the node's or the protocol's sources
/// (a run would measure yesterday's node).
fn warn_if_stale(node: &Path) {
    let built = std::fs::metadata(node).and_then(|m| m.modified()).ok();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest = ["node/src", "proto/src", "proto/proto"]
        .iter()
        .filter_map(|d| newest_mtime(&root.join(d)))
        .max();
    if let (Some(built), Some(newest)) = (built, newest) {
        if newest > built {
            eprintln!(
                "\nWARNING: {} is older than the sources in node/ or proto/; it runs as \
                 built. Rebuild: cargo build -p relaymesh-node\n",
                node.display()
            );
        }
    }
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(time);
    }
    newest
}
