//! Many nodes registering at once (200 simulated registrants, each on its own connection)
//! converge to one view: the control plane lists them all active and every watcher ends
//! with the same view holding all of them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::support::*;

const NODES: usize = 200;
/// A debug build converges in a few seconds; a release build in about one.
const CONVERGE: Duration = Duration::from_secs(10);
const REGIONS: [&str; 4] = ["eu", "us", "ap", "sa"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_registrants_converge_to_one_view() {
    // CPU-heavy: not at the same time as the timing-sensitive lease test.
    let _exclusive = TIMING.lock().await;
    let dir = DataDir::new("storm");
    let cp = ControlPlane::start(&dir).await;
    let mut ops = cp.operator().await;
    let mut early = Watcher::open(&cp).await;
    let mut late = Watcher::open(&cp).await;

    // Each registrant behaves like a node: register, keep alive every heartbeat, and
    // register again if the lease is lost (which must not happen to a node that is on time).
    let lost = Arc::new(AtomicUsize::new(0));
    let mut registrants = JoinSet::new();
    for i in 0..NODES {
        let endpoint = cp.endpoint();
        let lost = lost.clone();
        registrants.spawn(async move {
            let client = membership(&endpoint, JOIN_TOKEN).await;
            let region = REGIONS[i % REGIONS.len()];
            loop {
                let mut node =
                    Registrant::register_with(client.clone(), &format!("sim-{i:03}"), region).await;
                let status = node.keep_alive_forever().await;
                assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
                lost.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    let expected: BTreeSet<String> = (0..NODES).map(|i| format!("sim-{i:03}")).collect();
    let storm = Instant::now();
    loop {
        let active: BTreeSet<String> = active_nodes(&mut ops).await.into_iter().collect();
        if active == expected {
            break;
        }
        assert!(
            storm.elapsed() < CONVERGE,
            "no convergence after {CONVERGE:?}: {} of {NODES} active, {} leases of \
             registrants keeping alive every heartbeat expired (and were registered again)",
            active.len(),
            lost.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let converged_after = storm.elapsed();
    assert!(
        registrants.try_join_next().is_none(),
        "a registrant failed or stopped"
    );
    let listed = list_nodes(&mut ops).await;
    assert_eq!(listed.nodes.len(), NODES);

    for watcher in [&mut early, &mut late] {
        watcher.until_version(listed.version).await;
        assert_eq!(watcher.view.version, listed.version);
    }
    assert_eq!(
        early.view, late.view,
        "the watchers ended with different views"
    );
    let watched: BTreeSet<String> = early.view.nodes.keys().cloned().collect();
    assert_eq!(watched, expected);
    assert_eq!(early.view.active(), NODES);
    // Every node kept its lease on time: none may have been expired during the storm.
    let lost = lost.load(Ordering::Relaxed);
    assert_eq!(
        lost, 0,
        "converged after {converged_after:?}, but {lost} leases of registrants that sent \
         their keepalives every heartbeat expired during the storm"
    );
    // 200 registrations and 200 activations, one version each (unless a watcher fell
    // behind and got a full view instead of deltas).
    if early.updates.iter().skip(1).all(|u| !u.full) {
        assert_eq!(listed.version - early.updates[0].version, 2 * NODES as u64);
    }

    registrants.abort_all();
    drop((early, late, ops));
    while registrants.join_next().await.is_some() {}
    cp.shutdown().await;
}
