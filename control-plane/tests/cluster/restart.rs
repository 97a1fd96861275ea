//! Restarts: the apps (ids, keys, secrets, settings) survive, view versions only move
//! forward, a following node keeps serving while the control plane is away and registers
//! again by itself when it returns.

use std::time::Duration;

use relaymesh_proto::control::{
    App, AppSettings, CreateAppRequest, ListAppsRequest, NodeState, WatchRequest,
};

use crate::support::*;

/// What the cluster looked like before the restart.
struct Before {
    apps: Vec<App>,
    node: Node,
    /// The highest view version anyone saw.
    max_version: u64,
}

async fn before_restart(endpoint: &str) -> Before {
    let mut ops = ops(endpoint, OPERATOR_TOKEN).await;
    let mut watcher = Watcher::open_at(endpoint).await;
    let plain = ops
        .create_app(CreateAppRequest { settings: None })
        .await
        .unwrap()
        .into_inner();
    let tuned = ops
        .create_app(CreateAppRequest {
            settings: Some(AppSettings {
                client_events: Some(false),
                max_connections: Some(50),
                webhooks: vec!["http://127.0.0.1:9/hook".into()],
                set_webhooks: true,
                ..AppSettings::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let node = Node::start(endpoint, "edge-restart", "eu").await;
    wait_active(&mut ops, &node.id).await;
    // Some more versions: a registrant that joins, becomes active and leaves.
    let mut registrant =
        Registrant::register_with(membership(endpoint, JOIN_TOKEN).await, "passer-by", "us").await;
    registrant.beat().await;
    registrant.leave().await;
    eventually("the node serves the apps", WAIT, || async {
        let served = node.handle.shared().apps.by_key(&tuned.key).is_some();
        served.then_some(())
    })
    .await;
    node.connect(&plain.key).await;
    let listed = list_nodes(&mut ops).await.version;
    watcher.until_version(listed).await;
    let node_version = node.handle.shared().view.borrow().version;
    let max_version = watcher
        .updates
        .iter()
        .map(|u| u.version)
        .chain([listed, node_version])
        .max()
        .unwrap();
    let mut apps = vec![plain, tuned];
    apps.sort_by(|a, b| a.id.cmp(&b.id));
    Before {
        apps,
        node,
        max_version,
    }
}

/// While the control plane is away the node keeps serving with its last view.
async fn node_serves_without_control_plane(before: &Before) {
    for app in &before.apps {
        before.node.connect(&app.key).await;
    }
    let app = &before.apps[0];
    assert_eq!(
        before.node.publish(&app.id, &app.key, &app.secret).await,
        200,
        "publishing while the control plane is down"
    );
}

async fn after_restart(endpoint: &str, before: Before) {
    let mut ops = ops(endpoint, OPERATOR_TOKEN).await;
    // The apps are back, byte for byte.
    let mut apps = ops
        .list_apps(ListAppsRequest {})
        .await
        .unwrap()
        .into_inner()
        .apps;
    apps.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(apps, before.apps, "apps after the restart");

    // Versions only move forward: the first one a new watcher sees is above all earlier.
    let mut client = membership(endpoint, JOIN_TOKEN).await;
    let mut stream = client.watch(WatchRequest {}).await.unwrap().into_inner();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.full);
    assert!(
        first.version > before.max_version,
        "first version after the restart {} is not above {} seen before",
        first.version,
        before.max_version
    );
    assert_eq!(first.apps.len(), 2);

    // The node registers again by itself and follows the new view.
    let node = before.node;
    eventually(
        "the node to re-register",
        Duration::from_secs(10),
        || async {
            let mut ops = ops.clone();
            (node_state(&mut ops, &node.id).await == Some(NodeState::Active)).then_some(())
        },
    )
    .await;
    eventually("the node to follow the new view", WAIT, || async {
        (node.handle.shared().view.borrow().version > before.max_version).then_some(())
    })
    .await;
    for app in &apps {
        node.connect(&app.key).await;
    }
    let app = &apps[0];
    assert_eq!(node.publish(&app.id, &app.key, &app.secret).await, 200);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_down_control_plane_restarts_with_its_apps_and_newer_versions() {
    let dir = DataDir::new("restart");
    let cp = ControlPlane::start(&dir).await;
    let addr = cp.addr;
    let before = before_restart(&cp.endpoint()).await;
    // Shut down while the node follows (it holds a watch and a keepalive stream).
    cp.shutdown().await;
    node_serves_without_control_plane(&before).await;
    let cp = ControlPlane::start_at(&dir, addr).await;
    assert_eq!(cp.addr, addr);
    after_restart(&cp.endpoint(), before).await;
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_control_plane_restarts_with_its_apps_and_newer_versions() {
    let dir = DataDir::new("crash");
    let process = ServeProcess::start(&dir, free_addr().await).await;
    let addr = process.addr;
    let before = before_restart(&process.endpoint()).await;
    process.kill();
    // The node notices the loss; it keeps serving meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    node_serves_without_control_plane(&before).await;
    let process = ServeProcess::start(&dir, addr).await;
    after_restart(&process.endpoint(), before).await;
    process.kill();
}
