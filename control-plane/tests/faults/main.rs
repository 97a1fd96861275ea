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
//! Needs root and iproute2 / iptables / tc; without them every test fails and says why.
//! The tests run one at a time (they measure time on a small machine).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod check;
mod clients;
mod cluster;
mod netns;
mod relay;

mod join;
mod kill;
mod partition;
mod restart;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relaymesh_proto::ring::Ring;

use crate::check::{Delivery, Findings};
use crate::clients::{Client, Nodes, Publish};
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

/// The nodes clients may connect to, by name.
pub fn nodes(cluster: &Cluster, names: &[&str]) -> Nodes {
    Arc::new(Mutex::new(
        names
            .iter()
            .map(|n| ((*n).to_owned(), cluster.ws_addr(n)))
            .collect(),
    ))
}

/// Waits until every acknowledged event reached its subscribers (or `timeout`), so that
/// events still in flight are not counted as lost.
pub async fn settle(pubs: &[Publish], clients: &[&Client], margin: Duration, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if Delivery::of(pubs, clients, margin).lost.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
