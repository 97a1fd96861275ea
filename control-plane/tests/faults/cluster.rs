//! A cluster of real processes on namespace hosts: `relaymesh-control serve` on host `cp`,
//! `relaymesh-node --config FILE` on hosts `n1`, `n2`, … (QUIC mesh, the test's cluster
//! CA). Each process's stdout and stderr go to `{dir}/{host}.log` (appended across
//! restarts); the tails are printed when a test fails, and the directory is kept then.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relaymesh_node::mesh::tls::ClusterCa;

use crate::netns::Net;
use crate::relay::Relays;

pub const APP: &str = "app-id";
pub const KEY: &str = "app-key";
pub const SECRET: &str = "app-secret";
pub const LEASE_TTL: Duration = Duration::from_millis(1000);
pub const HEARTBEAT: Duration = Duration::from_millis(250);
const CP_PORT: u16 = 7000;
const CP_HTTP_PORT: u16 = 7001;
const NODE_PORT: u16 = 6001;
const MESH_PORT: u16 = 7100;

/// Latency between every two hosts (one way) and loss, by `tc netem` or, where the kernel
/// has no netem, by relays in the test process.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub delay: Duration,
    pub loss_percent: f64,
}

/// The two binaries: next to the control plane binary cargo built for this test (same
/// target dir and profile), else `target/debug` of the workspace.
pub struct Bins {
    pub control: PathBuf,
    pub node: PathBuf,
}

pub fn bins() -> Bins {
    let control = PathBuf::from(env!("CARGO_BIN_EXE_relaymesh-control"));
    let fallback = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug");
    let node = [
        control.parent().map(Path::to_path_buf),
        Some(fallback.clone()),
    ]
    .into_iter()
    .flatten()
    .map(|dir| dir.join("relaymesh-node"))
    .find(|p| p.exists())
    .unwrap_or_else(|| {
        panic!(
            "\n\n*** FAULT TESTS CANNOT RUN: no relaymesh-node binary next to {} or in {}; \
                 build it first: cargo build -p relaymesh-node -p relaymesh-control \
                 (scripts/test does) ***\n\n",
            control.display(),
            fallback.display()
        )
    });
    assert!(
        control.exists(),
        "\n\n*** FAULT TESTS CANNOT RUN: no relaymesh-control binary at {} ***\n\n",
        control.display()
    );
    warn_if_stale(&node);
    Bins { control, node }
}

/// Says loudly when the node binary is older than the node's or the protocol's sources
/// (the tests would run yesterday's node).
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
                "\n[faults] WARNING: {} is older than the sources in node/ or proto/; \
                 these tests run the binary as built. Rebuild: cargo build -p relaymesh-node\n",
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

/// Wall-clock time as `HH:MM:SS.mmm` UTC, as in the processes' logs.
pub fn clock() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
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

/// The control plane and nodes of one test, on their own network.
pub struct Cluster {
    pub name: String,
    pub t0: Instant,
    dir: PathBuf,
    bins: Bins,
    ca_dir: PathBuf,
    procs: BTreeMap<String, Proc>,
    starts: BTreeMap<String, u32>,
    /// The node hosts, `n1`…
    pub nodes: Vec<String>,
    /// What nodes use to reach the control plane, and what each advertises as its mesh
    /// address (relays when latency is simulated without netem).
    cp_endpoint: String,
    advertise: BTreeMap<String, String>,
    pub http: reqwest::Client,
    keep_dir: bool,
    relays: Relays,
    pub net: Net,
}

impl Cluster {
    /// The network (a `cp` host and `hosts` node hosts `n1`…), certificates and the
    /// control plane; no node is started yet.
    pub async fn new(name: &str, hosts: usize, latency: Option<Latency>) -> Cluster {
        let bins = bins();
        let mut names = vec!["cp".to_owned()];
        names.extend((1..=hosts).map(|i| format!("n{i}")));
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let net = Net::new(&refs);
        let slug: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dir = std::env::temp_dir().join(format!("relaymesh-faults-{}-{slug}", net.tag()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_dir = dir.join("ca");
        ClusterCa::generate().unwrap().save(&ca_dir).unwrap();
        let cp_addr = SocketAddr::new(IpAddr::V4(net.host("cp").ip), CP_PORT);
        let mut cluster = Cluster {
            name: name.to_owned(),
            t0: Instant::now(),
            dir,
            bins,
            ca_dir,
            procs: BTreeMap::new(),
            starts: BTreeMap::new(),
            nodes: names[1..].to_vec(),
            cp_endpoint: format!("http://{cp_addr}"),
            advertise: BTreeMap::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            keep_dir: false,
            relays: Relays::default(),
            net,
        };
        eprintln!(
            "[faults] {name}: network {} (bridge {}), logs in {}",
            cluster.net.tag(),
            cluster.net.gateway,
            cluster.dir.display()
        );
        if let Some(latency) = latency {
            cluster.add_latency(latency, cp_addr).await;
        }
        cluster.start_cp().await;
        cluster
    }

    /// A control plane and `n` ready nodes.
    pub async fn start(name: &str, n: usize, latency: Option<Latency>) -> Cluster {
        let mut cluster = Cluster::new(name, n, latency).await;
        for node in cluster.nodes.clone() {
            cluster.start_node(&node);
        }
        let all = cluster.nodes.clone();
        if let Err(e) = cluster.wait_ready(&all, Duration::from_secs(15)).await {
            panic!("the cluster did not become ready: {e}");
        }
        eprintln!(
            "[faults] {name}: {n} nodes ready after {} ms",
            cluster.t0.elapsed().as_millis()
        );
        cluster
    }

    async fn add_latency(&mut self, latency: Latency, cp_addr: SocketAddr) {
        let mut netem_error = None;
        let hosts: Vec<String> = std::iter::once("cp".to_owned())
            .chain(self.nodes.iter().cloned())
            .collect();
        for host in &hosts {
            if let Err(e) = self.net.netem(host, latency.delay, latency.loss_percent) {
                netem_error = Some(e);
                break;
            }
        }
        let Some(error) = netem_error else {
            eprintln!(
                "[faults] {}: tc netem delay {:?} loss {}% on every host's egress",
                self.name, latency.delay, latency.loss_percent
            );
            return;
        };
        // Undo a partial set-up, then relay.
        for host in &hosts {
            let _ = self
                .net
                .exec(host, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
        }
        eprintln!(
            "\n[faults] {}: NOTE: `tc qdisc add … netem` failed here ({error}); this kernel \
             has no netem (CONFIG_NET_SCH_NETEM). Latency is simulated instead by relays in \
             the test process: the QUIC mesh (UDP, {}% loss) and the control-plane gRPC \
             (TCP) of every node go through a relay that delays each direction by {:?}. \
             Client traffic is not delayed.\n",
            self.name, latency.loss_percent, latency.delay
        );
        let gateway = IpAddr::V4(self.net.gateway);
        let relay = self.relays.tcp(gateway, cp_addr, latency.delay).await;
        self.cp_endpoint = format!("http://{relay}");
        for node in self.nodes.clone() {
            let mesh = SocketAddr::new(IpAddr::V4(self.net.host(&node).ip), MESH_PORT);
            let relay = self
                .relays
                .udp(gateway, mesh, latency.delay, latency.loss_percent / 100.0)
                .await;
            self.advertise.insert(node, relay.to_string());
        }
    }

    /// Now, as wall-clock time (as in the logs) and as time since the cluster started
    /// (as in the lost-event reports).
    pub fn at(&self) -> String {
        format!("{} UTC (t+{} ms)", clock(), self.t0.elapsed().as_millis())
    }

    pub fn ip(&self, host: &str) -> IpAddr {
        IpAddr::V4(self.net.host(host).ip)
    }

    /// `http://IP:6001` of a node.
    pub fn base(&self, node: &str) -> String {
        format!("http://{}:{NODE_PORT}", self.ip(node))
    }

    pub fn ws_addr(&self, node: &str) -> String {
        format!("{}:{NODE_PORT}", self.ip(node))
    }

    fn log_path(&self, host: &str) -> PathBuf {
        self.dir.join(format!("{host}.log"))
    }

    fn open_log(&mut self, host: &str) -> File {
        let starts = self.starts.entry(host.to_owned()).or_default();
        *starts += 1;
        let n = *starts;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(host))
            .unwrap();
        writeln!(
            file,
            "===== [faults] start #{n} of {host} at {} UTC =====",
            clock()
        )
        .unwrap();
        file
    }

    fn spawn(&mut self, host: &str, program: &Path, args: &[String]) {
        let log = self.open_log(host);
        let mut command = self.net.command(host, program);
        // The node reads every RELAYMESH_* variable as configuration (and refuses unknown
        // ones, such as this suite's RELAYMESH_FAULT_RUNS): the processes get none.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RELAYMESH_") {
                command.env_remove(key);
            }
        }
        let child = command
            .args(args)
            .env("RUST_LOG", "info,relaymesh_node=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} on {host}: {e}", program.display()));
        self.procs.insert(host.to_owned(), Proc { child });
    }

    /// Starts (or restarts, same address and data dir) the control plane and waits until
    /// its /metrics answers.
    pub async fn start_cp(&mut self) {
        let ip = self.ip("cp");
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
        self.spawn("cp", &control, &args);
        let url = format!("http://{ip}:{CP_HTTP_PORT}/metrics");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.exit_status("cp") {
                panic!("relaymesh-control exited at start: {status}");
            }
            let ok = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the control plane never answered on {url}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn node_config(&self, node: &str) -> PathBuf {
        let ip = self.ip(node);
        let advertise = self
            .advertise
            .get(node)
            .map(|a| format!("advertise = \"{a}\"\n"))
            .unwrap_or_default();
        let toml = format!(
            "listen = \"{ip}:{NODE_PORT}\"\n\
             \n\
             [control_plane]\n\
             endpoint = \"{endpoint}\"\n\
             node_id = \"{node}\"\n\
             region = \"r1\"\n\
             \n\
             [mesh]\n\
             listen = \"{ip}:{MESH_PORT}\"\n\
             {advertise}\
             transport = \"quic\"\n\
             dev_ca_dir = \"{ca}\"\n\
             \n\
             [[apps]]\n\
             id = \"{APP}\"\n\
             key = \"{KEY}\"\n\
             secret = \"{SECRET}\"\n",
            endpoint = self.cp_endpoint,
            ca = self.ca_dir.display(),
        );
        let path = self.dir.join(format!("{node}.toml"));
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// Starts (or restarts, same config and node id) a node; does not wait for it.
    pub fn start_node(&mut self, node: &str) {
        let config = self.node_config(node);
        let args = vec!["--config".to_owned(), config.display().to_string()];
        let binary = self.bins.node.clone();
        self.spawn(node, &binary, &args);
    }

    /// SIGKILL: no goodbye to anyone.
    pub fn kill(&mut self, host: &str) {
        if let Some(mut proc) = self.procs.remove(host) {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
    }

    /// SIGTERM: a node drains, then exits.
    pub fn terminate(&self, host: &str) {
        let pid = self.procs[host].child.id().to_string();
        crate::netns::must("kill", &["-TERM", &pid]).unwrap();
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
        let url = format!("http://{}:{CP_HTTP_PORT}/metrics", self.ip("cp"));
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
        for host in std::iter::once("cp".to_owned()).chain(self.nodes.clone()) {
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
