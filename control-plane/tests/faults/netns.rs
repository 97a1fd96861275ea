//! Hosts made of Linux network namespaces: one namespace per host, each joined by a veth
//! pair to a bridge in the root namespace, which has an address in the test's own /24 so
//! that the test process reaches every host. Faults: a cut between two hosts (iptables
//! DROP on INPUT in both namespaces), a full partition (the host's veth down), latency and
//! loss (`tc netem` on each host's egress). Everything is removed on drop, also when the
//! test panics: the processes inside the namespaces first, then the namespaces, the bridge
//! and the firewall rule the harness may have added.
//!
//! Names: `rf{pid}x{k}` is the tag of one harness (test process id, counter), the bridge is
//! `{tag}b`, the root side of host i's veth `{tag}v{i}` (inside: `eth0`), the namespaces
//! `{tag}-{host}`. All interface names stay within Linux's 15 characters.

use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Counts harnesses in this process (names and subnets differ per test).
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command; returns its output, or why it could not run.
pub fn run(program: &str, args: &[&str]) -> Result<Output, String> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))
}

/// Runs a command that must succeed.
pub fn must(program: &str, args: &[&str]) -> Result<(), String> {
    let out = run(program, args)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn stdout(program: &str, args: &[&str]) -> String {
    run(program, args)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Why the harness cannot run here, if it cannot. Every fault test fails with this
/// message instead of passing without testing anything.
pub fn unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("?");
    if uid != "0" {
        return Some(format!(
            "the fault tests need root (network namespaces, veth, bridge, iptables, tc); \
             this process runs with effective uid {uid}. Run them as root (CI does)."
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
                    "`{tool} {}` fails ({}): {}; the fault tests need iproute2 with \
                     `ip netns`, iptables and tc",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
            Err(e) => {
                return Some(format!(
                    "{e}; the fault tests need iproute2 (`ip netns`, `tc`) and iptables \
                     (apt-get install -y iproute2 iptables)"
                ))
            }
        }
    }
    None
}

/// One host: a namespace with one interface on the test's bridge.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    /// The root namespace's end of the host's veth pair.
    pub veth: String,
}

/// The test's network: a bridge and its hosts.
pub struct Net {
    tag: String,
    bridge: String,
    pub gateway: Ipv4Addr,
    hosts: Vec<Host>,
    /// Namespaces created so far (removed on drop even if setting one up failed).
    namespaces: Vec<String>,
    /// The FORWARD rule added for the bridge when bridged traffic passes iptables.
    forward_rule: Option<Vec<String>>,
    /// Cuts in place: (namespace, source address) of each DROP rule.
    cuts: Vec<(String, Ipv4Addr)>,
}

impl Net {
    /// A bridge and one namespace per name in `hosts` (at most 40), each with its address
    /// on the bridge's /24 (`.10 + i`), loopback up. Panics with the reason when the
    /// harness cannot run.
    pub fn new(hosts: &[&str]) -> Net {
        if let Some(reason) = unavailable() {
            panic!("\n\n*** FAULT TESTS CANNOT RUN: {reason} ***\n\n");
        }
        assert!(hosts.len() <= 40);
        clean_stale();
        let pid = std::process::id();
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("rf{pid}x{k}");
        assert!(
            tag.len() + 3 <= 15,
            "tag {tag} too long for interface names"
        );
        let subnet = free_subnet(pid, k);
        let mut net = Net {
            bridge: format!("{tag}b"),
            tag,
            gateway: Ipv4Addr::new(10, subnet.0, subnet.1, 1),
            hosts: Vec::new(),
            namespaces: Vec::new(),
            forward_rule: None,
            cuts: Vec::new(),
        };
        if let Err(e) = net.build(hosts, subnet) {
            panic!("\n\n*** FAULT TESTS CANNOT RUN: setting up the namespaces failed: {e} ***\n\n");
        }
        net
    }

    fn build(&mut self, hosts: &[&str], subnet: (u8, u8)) -> Result<(), String> {
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
            self.hosts.push(Host {
                name: (*name).to_owned(),
                ns,
                ip,
                veth,
            });
        }
        Ok(())
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Runs `program args` inside `host`'s namespace.
    pub fn exec(&self, host: &str, program: &str, args: &[&str]) -> Result<Output, String> {
        let ns = self.host(host).ns.clone();
        let mut all = vec!["netns", "exec", &ns, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn exec_ok(&self, host: &str, program: &str, args: &[&str]) {
        let ns = self.host(host).ns.clone();
        let mut all = vec!["netns", "exec", &ns, program];
        all.extend_from_slice(args);
        must("ip", &all).unwrap_or_else(|e| panic!("{e}"));
    }

    /// A command that runs `program` inside `host`'s namespace.
    pub fn command(&self, host: &str, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.host(host).ns])
            .arg(program);
        command
    }

    /// Cuts `a` and `b` off from each other (both directions; packets vanish silently),
    /// leaving their other paths alone.
    pub fn cut(&mut self, a: &str, b: &str) {
        let (ha, hb) = (self.host(a).clone(), self.host(b).clone());
        for (ns_host, from) in [(&ha, hb.ip), (&hb, ha.ip)] {
            self.exec_ok(
                &ns_host.name,
                "iptables",
                &["-I", "INPUT", "-s", &from.to_string(), "-j", "DROP"],
            );
            self.cuts.push((ns_host.name.clone(), from));
        }
    }

    /// Removes the cut between `a` and `b`.
    pub fn heal(&mut self, a: &str, b: &str) {
        let (ha, hb) = (self.host(a).clone(), self.host(b).clone());
        for (ns_host, from) in [(&ha, hb.ip), (&hb, ha.ip)] {
            self.exec_ok(
                &ns_host.name,
                "iptables",
                &["-D", "INPUT", "-s", &from.to_string(), "-j", "DROP"],
            );
            self.cuts
                .retain(|(h, ip)| !(h == &ns_host.name && *ip == from));
        }
    }

    /// Takes `host` off the network entirely (its veth down): a full partition, also from
    /// the test process.
    pub fn isolate(&self, host: &str) {
        must("ip", &["link", "set", &self.host(host).veth, "down"])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn reconnect(&self, host: &str) {
        must("ip", &["link", "set", &self.host(host).veth, "up"]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Adds `delay` and `loss_percent` to everything `host` sends (`tc netem` on its
    /// egress): between two hosts a packet is delayed once each way. `Err` when the kernel
    /// has no netem (CONFIG_NET_SCH_NETEM) or tc refuses.
    pub fn netem(&self, host: &str, delay: Duration, loss_percent: f64) -> Result<(), String> {
        let delay = format!("{}ms", delay.as_millis());
        let loss = format!("{loss_percent}%");
        let out = self.exec(
            host,
            "tc",
            &[
                "qdisc", "add", "dev", "eth0", "root", "netem", "delay", &delay, "loss", &loss,
            ],
        )?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
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
        let _ = run("ip", &["link", "del", &self.bridge]);
        if let Some(rule) = &self.forward_rule {
            let mut args = vec!["-D"];
            args.extend(rule.iter().map(String::as_str));
            let _ = run("iptables", &args);
        }
    }
}

/// Picks `10.(200 + k % 50).(pid % 250).0/24`, or the next third octet not already on an
/// interface of this machine.
fn free_subnet(pid: u32, k: u32) -> (u8, u8) {
    let used = stdout("ip", &["-o", "-4", "addr", "show"]);
    let second = 200 + (k % 50) as u8;
    (0..250u32)
        .map(|i| ((pid + i) % 250) as u8)
        .find(|third| !used.contains(&format!(" 10.{second}.{third}.")))
        .map(|third| (second, third))
        .expect("a free 10.x.y.0/24")
}

/// Removes what an earlier test process (one that was killed) left behind: namespaces,
/// interfaces and FORWARD rules named after a process that no longer exists.
fn clean_stale() {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix("rf") else {
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
            eprintln!("[faults] removing stale namespace {name}");
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
            eprintln!("[faults] removing stale interface {name}");
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
