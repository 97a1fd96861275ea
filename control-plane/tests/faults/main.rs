//! Multi-host fault tests (issue 6): every test builds its own hosts from Linux network
//! namespaces (a control plane and three or four nodes, each its own network stack on a
//! bridge), runs the real `relaymesh-control` and `relaymesh-node` binaries there, and
//! injects faults the way a network or an operator does: SIGKILL, SIGTERM, iptables cuts,
//! latency. Clients run in the test process (the root namespace).
//!
//! Every test checks the same promises: each event the HTTP API acknowledged with 200
//! reaches every subscriber that stayed connected (numbered events, counted lost and
//! duplicated), a publish that fails is answered 503 or 504, and presence (the HTTP API's
//! list and what each member was told) is the set of connected sockets. Measured figures
//! are printed (`[faults] …` lines on stderr, shown with `--nocapture`); violations are
//! collected and fail the test at the end, with the tails of the processes' logs.
//!
//! The hosts, processes, clients and checks are `relaymesh_sim::testbed` (shared with
//! `relaymesh-sim cluster`); this crate holds the tests and the helpers they share.
//!
//! Needs root and iproute2 / iptables / tc; without them every test fails and says why.
//! The tests run one at a time (they measure time on a small machine).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod join;
mod kill;
mod partition;
mod restart;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};

use relaymesh_proto::ring::Ring;
use relaymesh_sim::testbed::cluster::{Bins, Latencies, Spec};
use relaymesh_sim::testbed::latency::Latency;
use relaymesh_sim::testbed::Error;
pub use relaymesh_sim::testbed::{check, clients, cluster};

pub use crate::check::settle;
use crate::check::{ms, Findings};
use crate::clients::{Client, Nodes, Publisher};
use crate::cluster::{Cluster, APP};

/// One fault test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A channel starting with `prefix` that `ring` gives to `owner`.
pub fn owned_by(ring: &[&str], owner: &str, prefix: &str) -> String {
    let ring = Ring::new(ring.iter().copied());
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|c| ring.owner(APP, c) == Some(owner))
        .unwrap()
}

/// The owner of `channel` on the ring of `nodes`.
pub fn owner(nodes: &[&str], channel: &str) -> String {
    Ring::new(nodes.iter().copied())
        .owner(APP, channel)
        .unwrap()
        .to_owned()
}

/// The two binaries: next to the control plane binary cargo built for this test (same
/// target dir and profile), else `target/debug` of the workspace.
fn bins() -> Bins {
    let control = PathBuf::from(env!("CARGO_BIN_EXE_relaymesh-control"));
    let fallback = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug");
    let dirs = [control.parent().map(Path::to_path_buf), Some(fallback)];
    let found = dirs
        .iter()
        .flatten()
        .find(|dir| dir.join("relaymesh-node").exists());
    let Some(dir) = found else {
        panic!(
            "\n\n*** FAULT TESTS CANNOT RUN: no relaymesh-node binary in {dirs:?}; \
             build it first: cargo build -p relaymesh-node -p relaymesh-control \
             (scripts/test does) ***\n\n"
        )
    };
    let mut bins = Bins::in_dir(dir).unwrap_or_else(|e| {
        panic!("\n\n*** FAULT TESTS CANNOT RUN: {e} ***\n\n");
    });
    bins.control = control;
    bins
}

/// A fault test's cluster: nodes `n1`…`n{n}` (QUIC mesh, one region) and `latency`
/// between every two hosts.
fn spec(name: &str, n: usize, latency: Option<Latency>) -> Spec {
    Spec {
        name: name.to_owned(),
        log: "faults".into(),
        prefix: "rf".into(),
        nodes: (1..=n)
            .map(|i| (format!("n{i}"), "r1".to_owned()))
            .collect(),
        cp_region: "r1".into(),
        latency: latency.map_or(Latencies::None, Latencies::Uniform),
        transport: relaymesh_sim::mesh::Transport::Quic,
        bins: bins(),
        rust_log: "info,relaymesh_node=debug".into(),
        dir: None,
    }
}

/// Fails the test with the reason the testbed could not be built.
fn cannot_run(e: Error) -> ! {
    match e {
        Error::Unavailable(reason) => {
            panic!("\n\n*** FAULT TESTS CANNOT RUN: {reason} ***\n\n")
        }
        Error::Setup(reason) => panic!("\n\n*** FAULT TESTS CANNOT RUN: {reason} ***\n\n"),
        other => panic!("{other}"),
    }
}

/// The network, certificates and control plane of a cluster of `n` nodes; no node yet.
pub async fn new_cluster(name: &str, n: usize, latency: Option<Latency>) -> Cluster {
    Cluster::new(spec(name, n, latency))
        .await
        .unwrap_or_else(|e| cannot_run(e))
}

/// A control plane and `n` ready nodes.
pub async fn start_cluster(name: &str, n: usize, latency: Option<Latency>) -> Cluster {
    Cluster::start(spec(name, n, latency))
        .await
        .unwrap_or_else(|e| cannot_run(e))
}

/// A fresh cluster of three nodes (no latency) for the test `name`, and its findings.
pub async fn three_nodes(name: &str) -> (Cluster, Findings) {
    (start_cluster(name, 3, None).await, Findings::new(name))
}

/// The user names `users` as a set (what presence is compared with).
pub fn set(users: &[&str]) -> BTreeSet<String> {
    users.iter().map(|u| (*u).to_owned()).collect()
}

/// `count` subscribers of `channel` on each node of `on`, labelled `{label}-{i}@{node}`
/// (`{label}@{node}` when `count` is 1).
pub async fn subscribers(
    nodes: &Nodes,
    on: &[&str],
    count: usize,
    label: &str,
    channel: &str,
    reconnect: bool,
) -> Vec<Client> {
    let mut clients = Vec::new();
    for node in on {
        for i in 0..count {
            let label = if count == 1 {
                format!("{label}@{node}")
            } else {
                format!("{label}-{i}@{node}")
            };
            clients.push(
                Client::start(&label, nodes, node, channel, None, reconnect)
                    .await
                    .unwrap(),
            );
        }
    }
    clients
}

/// One subscriber labelled `{channel}-reader@{node}` per channel of `channels` and node of
/// `on`, channel by channel.
pub async fn readers_of_each(
    nodes: &Nodes,
    on: &[&str],
    channels: &[String],
    reconnect: bool,
) -> Vec<Client> {
    let mut readers = Vec::new();
    for channel in channels {
        let label = format!("{channel}-reader");
        readers.extend(subscribers(nodes, on, 1, &label, channel, reconnect).await);
    }
    readers
}

/// Presence members of `room`, user `u{i+1}` on the i-th node of `on`.
pub async fn members_on(nodes: &Nodes, on: &[&str], room: &str, reconnect: bool) -> Vec<Client> {
    let mut members = Vec::new();
    for (i, node) in on.iter().enumerate() {
        let user = format!("u{}", i + 1);
        let label = format!("{user}@{node}");
        members.push(
            Client::start(&label, nodes, node, room, Some(&user), reconnect)
                .await
                .unwrap(),
        );
    }
    members
}

/// Waits up to 3 s until every member of `members` was told of `expected`; how long it
/// took, or `None`.
pub async fn told_of(members: &[&Client], expected: &BTreeSet<String>) -> Option<Duration> {
    within(Duration::from_secs(3), || async {
        members.iter().all(|m| m.last().members().0 == *expected)
    })
    .await
}

/// How many member events each of `members` has seen so far, to tell later ones apart.
pub fn member_marks(members: &[&Client]) -> Vec<usize> {
    members
        .iter()
        .map(|m| m.last().member_events().len())
        .collect()
}

/// The member events `member` saw after `mark` (from [`member_marks`]).
pub fn member_events_since(member: &Client, mark: usize) -> Vec<String> {
    member.last().member_events()[mark..].to_vec()
}

/// Records a violation (worded by `describe`) for each member that saw a member event
/// since its mark, though nobody came or went; how many events that was.
pub fn no_member_events(
    f: &mut Findings,
    members: &[&Client],
    marks: &[usize],
    describe: impl Fn(&Client, &[String]) -> String,
) -> usize {
    let mut spurious = 0;
    for (member, mark) in members.iter().zip(marks) {
        let events = member_events_since(member, *mark);
        spurious += events.len();
        f.check(events.is_empty(), || describe(member, &events));
    }
    spurious
}

/// Publishes to `channels` through `node` every `interval`, and lets it run for 1 s so
/// that every subscriber receives before the fault.
pub async fn publish_through(
    cluster: &Cluster,
    node: &str,
    channels: &[String],
    interval: Duration,
) -> Publisher {
    let publisher = Publisher::start(&cluster.http, node, &cluster.base(node), channels, interval);
    tokio::time::sleep(Duration::from_secs(1)).await;
    publisher
}

/// Waits up to `timeout` for every node to be ready; records the time as `figure` (when
/// given) and a violation `{context}: {error}` if not.
pub async fn all_ready(
    cluster: &Cluster,
    f: &mut Findings,
    timeout: Duration,
    figure: Option<&str>,
    context: &str,
) {
    let ready = cluster.wait_ready(&cluster.nodes.clone(), timeout).await;
    if let Some(figure) = figure {
        f.figure(
            figure,
            ready
                .as_ref()
                .map_or_else(|e| format!("never: {e}"), |d| ms(*d).to_string()),
        );
    }
    f.check(ready.is_ok(), || format!("{context}: {ready:?}"));
}

/// The end of every test: no node of `nodes` fenced itself, and on a violation the
/// metrics and logs are printed as evidence.
pub async fn wrap_up(cluster: &mut Cluster, f: &mut Findings, nodes: &[&str]) {
    no_fencing(cluster, f, nodes);
    if !f.is_clean() {
        cluster.print_metrics().await;
        cluster.dump_logs(80);
    }
}

/// The nodes clients may connect to, by name.
pub fn nodes(cluster: &Cluster, names: &[&str]) -> Nodes {
    Arc::new(Mutex::new(
        names
            .iter()
            .map(|n| ((*n).to_owned(), cluster.ws_addr(n)))
            .collect(),
    ))
}

/// Polls `check` every 50 ms until it holds; how long that took, or `None` after
/// `timeout`.
pub async fn within<F, Fut>(timeout: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records a violation for each node of `nodes` whose log says it fenced itself ("lease
/// lost"): in these tests they keep their lease, and a fenced node drops the state of the
/// channels it owns.
pub fn no_fencing(cluster: &Cluster, f: &mut Findings, nodes: &[&str]) {
    for node in nodes {
        let lines = cluster.log_lines(node, "lease lost");
        f.check(lines.is_empty(), || {
            format!(
                "{node} fenced itself {} time(s) though it kept its lease: {:?}",
                lines.len(),
                &lines[..lines.len().min(3)]
            )
        });
    }
}
