//! Hosts made of Linux network namespaces: one namespace per host, each joined by a veth
//! pair to a bridge in the root namespace, which has an address in the harness's own /24
//! so that the calling process reaches every host. Each host also has an alias address on
//! the bridge (`.100 + i`): relays in the calling process speak for the host from it (see
//! `latency.rs`), so a cut can drop the host's relayed traffic by source address too.
//! Faults: a cut between two hosts (iptables DROP on INPUT in both namespaces), a full
//! partition (the host's veth down), latency and loss (`tc netem` per destination, or
//! relays). Everything is removed on drop, also on a panic: the processes inside the
//! namespaces first, then the namespaces, the bridge and the firewall rule the harness
//! may have added.
//!
//! Names: `{prefix}{pid}x{k}` is the tag of one harness (a two-letter prefix per user —
//! `rf` the fault tests, `rc` the cluster runner —, process id, counter), the bridge is
//! `{tag}b`, the root side of host i's veth `{tag}v{i}` (inside: `eth0`), the namespaces
//! `{tag}-{host}`. All interface names stay within Linux's 15 characters.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::latency::Latency;
use super::Error;

/// Counts harnesses in this process (names and subnets differ per test).
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command; returns its output, or why it could not run.
pub fn run(program: &str, args: &[&str]) -> Result<Output, Error> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Command(format!("cannot run {program}: {e}")))
}

/// Runs a command that must succeed.
pub fn must(program: &str, args: &[&str]) -> Result<(), Error> {
    let out = run(program, args)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn stdout(program: &str, args: &[&str]) -> String {
    run(program, args)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Why a testbed cannot be built here, if it cannot. Callers fail with this message
/// instead of passing without testing anything.
pub fn unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("?");
    if uid != "0" {
        return Some(format!(
            "network namespaces need root (ip netns, veth, bridge, iptables, tc); \
             this process runs with effective uid {uid}. Run as root (CI does)."
        ));
    }
    for (tool, args) in [
        ("ip", &["netns", "list"][..]),
        ("iptables", &["--version"][..]),
        ("tc", &["-V"][..]),
    ] {
        match run(tool, args) {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Some(format!(
                    "`{tool} {}` fails ({}): {}; the testbed needs iproute2 with \
                     `ip netns`, iptables and tc",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
            Err(e) => {
                return Some(format!(
                    "{e}; the testbed needs iproute2 (`ip netns`, `tc`) and iptables \
                     (apt-get install -y iproute2 iptables)"
                ))
            }
        }
    }
    None
}

/// One host: a namespace with one interface on the harness's bridge.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    /// The host's address on the bridge, for relays that speak for it.
    pub alias: Ipv4Addr,
    /// The root namespace's end of the host's veth pair.
    pub veth: String,
}

/// A harness's network: a bridge and its hosts.
pub struct Net {
    tag: String,
    bridge: String,
    pub gateway: Ipv4Addr,
    hosts: Vec<Host>,
    /// Namespaces created so far (removed on drop even if setting one up failed).
    namespaces: Vec<String>,
    /// The FORWARD rule added for the bridge when bridged traffic passes iptables.
    forward_rule: Option<Vec<String>>,
}

/// Hosts one harness may have (addresses `.10 + i` and aliases `.100 + i`).
pub const HOSTS_MAX: usize = 40;

impl Net {
    /// A bridge and one namespace per name in `hosts` (at most [`HOSTS_MAX`]), each with
    /// its address on the bridge's /24 (`.10 + i`) and its alias (`.100 + i`), loopback
    /// up. `prefix` is two letters that name this kind of harness; `log` prefixes its
    /// messages. `Error::Unavailable` when this machine cannot host namespaces.
    pub fn new(prefix: &str, log: &str, hosts: &[&str]) -> Result<Net, Error> {
        if let Some(reason) = unavailable() {
            return Err(Error::Unavailable(reason));
        }
        if hosts.len() > HOSTS_MAX {
            return Err(Error::Setup(format!(
                "{} hosts, at most {HOSTS_MAX}",
                hosts.len()
            )));
        }
        clean_stale(prefix, log);
        let pid = std::process::id();
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{prefix}{pid}x{k}");
        if tag.len() + 3 > 15 {
            return Err(Error::Setup(format!(
                "tag {tag} too long for interface names"
            )));
        }
        let subnet = free_subnet(pid, k)?;
        let mut net = Net {
            bridge: format!("{tag}b"),
            tag,
            gateway: Ipv4Addr::new(10, subnet.0, subnet.1, 1),
            hosts: Vec::new(),
            namespaces: Vec::new(),
            forward_rule: None,
        };
        // On an error `net` is dropped here, which removes what was built.
        net.build(hosts, subnet)
            .map_err(|e| Error::Setup(format!("setting up the namespaces failed: {e}")))?;
        Ok(net)
    }

    fn build(&mut self, hosts: &[&str], subnet: (u8, u8)) -> Result<(), Error> {
        let bridge = self.bridge.clone();
        must("ip", &["link", "add", &bridge, "type", "bridge"])?;
        must(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", self.gateway),
                "dev",
                &bridge,
            ],
        )?;
        must("ip", &["link", "set", &bridge, "up"])?;
        // Where the kernel passes bridged frames through iptables (br_netfilter, as with
        // Docker, whose FORWARD policy is DROP), let this bridge's traffic through.
        let nf = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
            .unwrap_or_default();
        if nf.trim() == "1" {
            let rule: Vec<String> = ["FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let mut args = vec!["-I"];
            args.extend(rule.iter().map(String::as_str));
            must("iptables", &args)?;
            self.forward_rule = Some(rule);
        }
        for (i, name) in hosts.iter().enumerate() {
            let ns = format!("{}-{name}", self.tag);
            let veth = format!("{}v{i}", self.tag);
            let inner = format!("{}p{i}", self.tag);
            let ip = Ipv4Addr::new(10, subnet.0, subnet.1, 10 + i as u8);
            let alias = Ipv4Addr::new(10, subnet.0, subnet.1, 100 + i as u8);
            must("ip", &["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            must(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", &inner, "netns", &ns,
                ],
            )?;
            must("ip", &["link", "set", &veth, "master", &bridge])?;
            must("ip", &["link", "set", &veth, "up"])?;
            must("ip", &["-n", &ns, "link", "set", &inner, "name", "eth0"])?;
            must(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            )?;
            must("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            must("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            must(
                "ip",
                &["addr", "add", &format!("{alias}/24"), "dev", &bridge],
            )?;
            self.hosts.push(Host {
                name: (*name).to_owned(),
                ns,
                ip,
                alias,
                veth,
            });
        }
        Ok(())
    }

    pub fn host(&self, name: &str) -> Result<&Host, Error> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| Error::NoHost(name.to_owned()))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Runs `program args` inside `host`'s namespace.
    pub fn exec(&self, host: &str, program: &str, args: &[&str]) -> Result<Output, Error> {
        let ns = self.host(host)?.ns.clone();
        let mut all = vec!["netns", "exec", &ns, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn exec_ok(&self, host: &str, program: &str, args: &[&str]) -> Result<(), Error> {
        let ns = self.host(host)?.ns.clone();
        let mut all = vec!["netns", "exec", &ns, program];
        all.extend_from_slice(args);
        must("ip", &all)
    }

    /// A command that runs `program` inside `host`'s namespace.
    pub fn command(&self, host: &str, program: &std::path::Path) -> Result<Command, Error> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.host(host)?.ns])
            .arg(program);
        Ok(command)
    }

    /// The DROP rules of a cut: in each namespace, what comes from the other host directly
    /// or from its alias (its relays).
    fn cut_rules(&self, a: &str, b: &str) -> Result<Vec<(String, Ipv4Addr)>, Error> {
        let (ha, hb) = (self.host(a)?, self.host(b)?);
        Ok(vec![
            (ha.name.clone(), hb.ip),
            (ha.name.clone(), hb.alias),
            (hb.name.clone(), ha.ip),
            (hb.name.clone(), ha.alias),
        ])
    }

    /// Cuts `a` and `b` off from each other (both directions; packets vanish silently),
    /// leaving their other paths alone.
    pub fn cut(&mut self, a: &str, b: &str) -> Result<(), Error> {
        self.drop_rules("-I", a, b)
    }

    /// Removes the cut between `a` and `b`.
    pub fn heal(&mut self, a: &str, b: &str) -> Result<(), Error> {
        self.drop_rules("-D", a, b)
    }

    /// Inserts (`-I`) or deletes (`-D`) the DROP rules of a cut.
    fn drop_rules(&self, op: &str, a: &str, b: &str) -> Result<(), Error> {
        for (host, from) in self.cut_rules(a, b)? {
            self.exec_ok(
                &host,
                "iptables",
                &[op, "INPUT", "-s", &from.to_string(), "-j", "DROP"],
            )?;
        }
        Ok(())
    }

    /// Takes `host` off the network entirely (its veth down): a full partition, also from
    /// the calling process.
    pub fn isolate(&self, host: &str) -> Result<(), Error> {
        must("ip", &["link", "set", &self.host(host)?.veth, "down"])
    }

    pub fn reconnect(&self, host: &str) -> Result<(), Error> {
        must("ip", &["link", "set", &self.host(host)?.veth, "up"])
    }

    /// Delays (and drops a share of) what `host` sends to each address of `to` with
    /// `tc netem`: a `prio` root whose first band (every other destination, the calling
    /// process included) is not delayed, and one netem band per distinct latency, chosen
    /// by destination address. Between two hosts that both do this, a packet is delayed
    /// once each way. `Err` when the kernel has no netem (CONFIG_NET_SCH_NETEM) or tc
    /// refuses; the caller undoes with [`Net::clear_netem`].
    pub fn netem_to(&self, host: &str, to: &[(Ipv4Addr, Latency)]) -> Result<(), Error> {
        let mut bands: Vec<Latency> = Vec::new();
        for (_, latency) in to {
            if !bands.contains(latency) {
                bands.push(*latency);
            }
        }
        // prio has at most 16 bands; the first is the undelayed one.
        if bands.len() > 15 {
            return Err(Error::Setup(format!(
                "{} distinct latencies from {host}, at most 15",
                bands.len()
            )));
        }
        let count = (bands.len() + 1).max(2).to_string();
        let mut root = vec![
            "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "prio", "bands", &count,
            "priomap",
        ];
        root.extend(["0"; 16]);
        self.tc(host, &root)?;
        for (i, latency) in bands.iter().enumerate() {
            let parent = format!("1:{}", i + 2);
            let handle = format!("{}:", i + 10);
            let delay = format!("{}ms", latency.delay.as_millis());
            let loss = format!("{}%", latency.loss_percent);
            self.tc(
                host,
                &[
                    "qdisc", "add", "dev", "eth0", "parent", &parent, "handle", &handle, "netem",
                    "delay", &delay, "loss", &loss,
                ],
            )?;
        }
        for (ip, latency) in to {
            let band = bands.iter().position(|l| l == latency).unwrap_or(0);
            let flow = format!("1:{}", band + 2);
            let dst = format!("{ip}/32");
            self.tc(
                host,
                &[
                    "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio", "1",
                    "u32", "match", "ip", "dst", &dst, "flowid", &flow,
                ],
            )?;
        }
        Ok(())
    }

    /// Removes `host`'s root qdisc (and with it every netem band and filter).
    pub fn clear_netem(&self, host: &str) {
        let _ = self.exec(host, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
    }

    fn tc(&self, host: &str, args: &[&str]) -> Result<(), Error> {
        let out = self.exec(host, "tc", args)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Command(format!(
                "`tc {}` in {host}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Sends what `host` sends to `to` (`proto` "udp" or "tcp") to `via` instead (a relay),
    /// with iptables DNAT in `host`'s namespace; answers come back under `to`'s address.
    pub fn redirect(
        &self,
        host: &str,
        proto: &str,
        to: SocketAddr,
        via: SocketAddr,
    ) -> Result<(), Error> {
        self.exec_ok(
            host,
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-d",
                &to.ip().to_string(),
                "-p",
                proto,
                "--dport",
                &to.port().to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                &via.to_string(),
            ],
        )
    }

    /// The processes running in `host`'s namespace.
    pub fn pids(&self, host: &str) -> Vec<String> {
        self.host(host)
            .map(|h| {
                stdout("ip", &["netns", "pids", &h.ns])
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kills every process left in the namespaces (ours: nothing else runs there).
    pub fn kill_all(&self) {
        for ns in &self.namespaces {
            for pid in stdout("ip", &["netns", "pids", ns]).split_whitespace() {
                let _ = run("kill", &["-9", pid]);
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.kill_all();
        // Give the kernel a moment to tear the killed processes down.
        for _ in 0..50 {
            let left = self
                .namespaces
                .iter()
                .any(|ns| !stdout("ip", &["netns", "pids", ns]).trim().is_empty());
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for ns in &self.namespaces {
            let _ = run("ip", &["netns", "del", ns]);
        }
        for host in &self.hosts {
            // Normally gone with its namespace's end already.
            let _ = run("ip", &["link", "del", &host.veth]);
        }
        // The aliases go with the bridge.
        let _ = run("ip", &["link", "del", &self.bridge]);
        if let Some(rule) = &self.forward_rule {
            let mut args = vec!["-D"];
            args.extend(rule.iter().map(String::as_str));
            let _ = run("iptables", &args);
        }
    }
}

/// The namespaces whose names start with `tag` (what a harness leaves behind, if anything).
pub fn namespaces_of(tag: &str) -> Vec<String> {
    stdout("ip", &["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(tag))
        .map(str::to_owned)
        .collect()
}

/// Picks `10.(200 + k % 50).(pid % 250).0/24`, or the next third octet not already on an
/// interface of this machine.
fn free_subnet(pid: u32, k: u32) -> Result<(u8, u8), Error> {
    let used = stdout("ip", &["-o", "-4", "addr", "show"]);
    let second = 200 + (k % 50) as u8;
    (0..250u32)
        .map(|i| ((pid + i) % 250) as u8)
        .find(|third| !used.contains(&format!(" 10.{second}.{third}.")))
        .map(|third| (second, third))
        .ok_or_else(|| Error::Setup(format!("no free 10.{second}.x.0/24")))
}

/// Removes what an earlier process with the same `prefix` (one that was killed) left
/// behind: namespaces, interfaces and FORWARD rules named after a process that no longer
/// exists.
fn clean_stale(prefix: &str, log: &str) {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(prefix) else {
            return false;
        };
        let Some((pid, tail)) = rest.split_once('x') else {
            return false;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            return false;
        };
        tail.starts_with(|c: char| c.is_ascii_digit())
            && pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    };
    for ns in stdout("ip", &["netns", "list"]).lines() {
        let name = ns.split_whitespace().next().unwrap_or_default();
        if dead(name) {
            for pid in stdout("ip", &["netns", "pids", name]).split_whitespace() {
                let _ = run("kill", &["-9", pid]);
            }
            std::thread::sleep(Duration::from_millis(50));
            eprintln!("[{log}] removing stale namespace {name}");
            let _ = run("ip", &["netns", "del", name]);
        }
    }
    for line in stdout("ip", &["-o", "link", "show"]).lines() {
        // "12: rf123x0b: <BROADCAST,...", veths "13: rf123x0v0@if2: ..."
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or_default();
        if dead(name) {
            eprintln!("[{log}] removing stale interface {name}");
            let _ = run("ip", &["link", "del", name]);
        }
    }
    if let Ok(out) = run("iptables", &["-S", "FORWARD"]) {
        for rule in String::from_utf8_lossy(&out.stdout).lines() {
            let words: Vec<&str> = rule.split_whitespace().collect();
            let stale = words.windows(2).any(|w| w[0] == "-i" && dead(w[1]));
            if stale && words.first() == Some(&"-A") {
                let _ = run("iptables", &[&["-D"][..], &words[1..]].concat());
            }
        }
    }
}
