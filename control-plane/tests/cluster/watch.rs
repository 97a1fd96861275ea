//! Several watchers, opened at different times, see the same versions in the same order:
//! after its full view each sees every later version exactly once, with identical content.

use relaymesh_proto::control::{CreateAppRequest, DeleteAppRequest, NodeState};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_opened_at_different_times_see_the_same_versions_in_order() {
    let dir = DataDir::new("watch");
    let cp = ControlPlane::start(&dir).await;
    let mut ops = cp.operator().await;

    let mut first = Watcher::open(&cp).await;
    let mut a = Registrant::register(&cp, "node-a", "eu").await;
    a.beat().await;
    let app1 = ops
        .create_app(CreateAppRequest { settings: None })
        .await
        .unwrap()
        .into_inner();

    let mut second = Watcher::open(&cp).await;
    let mut b = Registrant::register(&cp, "node-b", "us").await;
    b.beat().await;
    a.beat().await; // a renewal: no new version
    a.leave().await;
    let app2 = ops
        .create_app(CreateAppRequest { settings: None })
        .await
        .unwrap()
        .into_inner();

    let mut third = Watcher::open(&cp).await;
    let mut c = Registrant::register(&cp, "node-c", "ap").await;
    c.beat().await;
    b.beat().await;
    ops.delete_app(DeleteAppRequest {
        app_id: app1.id.clone(),
    })
    .await
    .unwrap();
    let app3 = ops
        .create_app(CreateAppRequest { settings: None })
        .await
        .unwrap()
        .into_inner();
    b.leave().await;

    let last = list_nodes(&mut ops).await.version;
    let watchers = [&mut first, &mut second, &mut third];
    for w in watchers {
        w.until_version(last).await;
    }
    let starts: Vec<u64> = [&first, &second, &third]
        .iter()
        .map(|w| w.updates[0].version)
        .collect();
    assert!(
        starts[0] < starts[1] && starts[1] < starts[2],
        "watchers joined at different versions: {starts:?}"
    );
    // Every watcher saw each version from its full view on, once and in order.
    for w in [&first, &second, &third] {
        let versions: Vec<u64> = w.updates.iter().map(|u| u.version).collect();
        let expected: Vec<u64> = (versions[0]..=last).collect();
        assert_eq!(versions, expected, "not every version once, in order");
        assert!(
            w.updates[1..].iter().all(|u| !u.full),
            "only the first is full"
        );
    }
    assert_eq!(
        last - starts[0],
        12,
        "one version per change: 3 registrations, 3 activations, 2 leaves, 3 creates, 1 delete (renewals are none)"
    );
    // Identical updates where they overlap.
    for later in [&second, &third] {
        let offset = (later.updates[0].version - starts[0]) as usize;
        assert_eq!(
            &first.updates[offset + 1..],
            &later.updates[1..],
            "watchers disagree on the deltas"
        );
    }
    // And the same resulting view, which is the control plane's.
    assert_eq!(first.view, second.view);
    assert_eq!(first.view, third.view);
    let in_view: Vec<&String> = first.view.nodes.keys().collect();
    assert_eq!(in_view, ["node-c"]);
    assert_eq!(first.view.nodes["node-c"].state, NodeState::Active as i32);
    let mut apps: Vec<&String> = first.view.apps.keys().collect();
    apps.sort();
    let mut expected = vec![&app2.id, &app3.id];
    expected.sort();
    assert_eq!(apps, expected);

    drop((first, second, third, c, ops));
    cp.shutdown().await;
}
