//! Lease expiry: a node that stops sending keepalives (without leaving) is removed within
//! TTL plus one heartbeat, every watcher sees it, and the expiry is counted in /metrics.

use std::time::{Duration, Instant};

use relaymesh_proto::control::NodeState;

use crate::support::*;

/// `Config::for_test`: lease TTL and heartbeat.
const TTL: Duration = Duration::from_millis(1_000);
const HEARTBEAT: Duration = Duration::from_millis(250);
/// Scheduling slack on a loaded test machine.
const SLACK: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_keeping_its_lease_is_removed_within_ttl_plus_one_heartbeat() {
    let _exclusive = TIMING.lock().await;
    let dir = DataDir::new("lease");
    let cp = ControlPlane::start(&dir).await;
    let mut ops = cp.operator().await;
    let mut watcher = Watcher::open(&cp).await;

    // An in-process node that keeps its lease throughout: only the dead node may go.
    let survivor = Node::start(&cp.endpoint(), "survivor", "eu").await;
    wait_active(&mut ops, "survivor").await;

    // The victim registers and keeps alive a few times, like a healthy node.
    let mut victim = Registrant::register(&cp, "victim", "us").await;
    assert_eq!(
        victim.heartbeat, HEARTBEAT,
        "heartbeat handed out at register"
    );
    assert_eq!(
        node_state(&mut ops, "victim").await,
        Some(NodeState::Joining)
    );
    let mut last_sent = Instant::now();
    let mut last_answered = last_sent;
    for i in 0..4 {
        if i > 0 {
            tokio::time::sleep(HEARTBEAT).await;
        }
        last_sent = Instant::now();
        let answer = victim.beat().await;
        last_answered = Instant::now();
        assert_eq!(answer.state, NodeState::Active as i32);
        assert_eq!(answer.ttl_ms, TTL.as_millis() as u64);
    }
    assert_eq!(
        node_state(&mut ops, "victim").await,
        Some(NodeState::Active)
    );
    watcher
        .until(WAIT, |v| {
            v.nodes
                .get("victim")
                .is_some_and(|m| m.state == NodeState::Active as i32)
        })
        .await;

    // Killed: no more keepalives, no Leave (the keepalive stream stays open, like a hung
    // process).
    watcher
        .until(TTL * 3, |v| !v.nodes.contains_key("victim"))
        .await;
    let removed_at = *watcher.arrivals.last().unwrap();
    let removal = watcher.updates.last().unwrap().clone();
    assert!(!removal.full, "removal arrives as a delta: {removal:?}");
    assert_eq!(removal.removed_nodes, vec!["victim".to_owned()]);
    let after_last_beat = removed_at.duration_since(last_sent);
    assert!(
        after_last_beat <= TTL + HEARTBEAT + SLACK,
        "removed {after_last_beat:?} after the last keepalive, more than TTL + heartbeat + {SLACK:?}"
    );
    let after_last_answer = removed_at.duration_since(last_answered);
    assert!(
        after_last_answer >= TTL - HEARTBEAT,
        "removed only {after_last_answer:?} after the last keepalive: not a lease expiry"
    );

    // The control plane agrees; the survivor is untouched.
    assert_eq!(node_state(&mut ops, "victim").await, None);
    assert_eq!(
        node_state(&mut ops, "survivor").await,
        Some(NodeState::Active)
    );
    assert!(watcher.view.nodes.contains_key("survivor"));

    // A keepalive on the expired lease is refused and ends the stream (NOT_FOUND).
    let refused = victim.try_beat().await;
    assert_eq!(
        refused
            .expect_err("a keepalive of the expired lease is refused")
            .code(),
        tonic::Code::NotFound
    );

    // The expiry is counted on the control plane's own /metrics.
    let metrics = cp.metrics().await;
    let expiries: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("relaymesh_control_lease_expiries_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    assert!(
        expiries >= 1.0,
        "relaymesh_control_lease_expiries_total missing or zero in:\n{metrics}"
    );

    drop((victim, watcher, ops));
    survivor.shutdown().await;
    cp.shutdown().await;
}
