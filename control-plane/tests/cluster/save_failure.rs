//! A change the control plane cannot save (issue 12): the operator is told, and nothing of
//! it is listed, watched, or back after a restart; versions stay contiguous.

use relaymesh_proto::control::{App, CreateAppRequest, ListAppsRequest};
use tonic::Code;

use crate::support::*;

/// The store's temporary file as a non-empty directory: saves fail, even for root.
fn break_disk(dir: &DataDir) {
    std::fs::create_dir_all(dir.path().join("state.json.tmp").join("blocker")).unwrap();
}

fn repair_disk(dir: &DataDir) {
    std::fs::remove_dir_all(dir.path().join("state.json.tmp")).unwrap();
}

async fn create(ops: &mut Ops) -> Result<App, tonic::Status> {
    let created = ops.create_app(CreateAppRequest { settings: None }).await;
    created.map(tonic::Response::into_inner)
}

async fn app_ids(ops: &mut Ops) -> Vec<String> {
    let listed = ops.list_apps(ListAppsRequest {}).await.unwrap();
    let mut ids: Vec<String> = listed.into_inner().apps.into_iter().map(|a| a.id).collect();
    ids.sort();
    ids
}

fn save_failures(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("relaymesh_control_state_save_failures_total "))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_cannot_be_saved_is_refused_and_forgotten() {
    let dir = DataDir::new("save-failure");
    let cp = ControlPlane::start(&dir).await;
    let mut ops = cp.operator().await;
    let mut watcher = Watcher::open(&cp).await;
    let mut node = Registrant::register(&cp, "edge-a", "eu").await;
    let kept = create(&mut ops).await.unwrap();

    break_disk(&dir);
    let status = create(&mut ops).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().starts_with("cannot persist state: "),
        "{status:?}"
    );
    assert_eq!(app_ids(&mut ops).await, [kept.id.as_str()]);
    assert!(save_failures(&cp.metrics().await) >= 1.0);
    // The view goes on (a node activated by its keepalive is not saved at once), and the
    // watcher's next version follows the kept app's: the refused one took none.
    node.beat().await;
    let version = list_nodes(&mut ops).await.version;
    watcher.until_version(version).await;
    let apps_watched: Vec<&str> = watcher.updates[1..]
        .iter()
        .flat_map(|u| u.apps.iter().map(|a| a.id.as_str()))
        .collect();
    assert_eq!(apps_watched, [kept.id.as_str()], "{:?}", watcher.updates);
    cp.shutdown().await;

    repair_disk(&dir);
    let cp = ControlPlane::start(&dir).await;
    let mut ops = cp.operator().await;
    assert_eq!(
        app_ids(&mut ops).await,
        [kept.id.as_str()],
        "after a restart"
    );
    let mut watcher_after = Watcher::open(&cp).await;
    assert!(
        watcher_after.view.version > version,
        "versions only move forward"
    );
    let later = create(&mut ops).await.unwrap();
    watcher_after
        .until(WAIT, |view| view.apps.contains_key(&later.id))
        .await;
    let mut expected = vec![kept.id, later.id];
    expected.sort();
    assert_eq!(app_ids(&mut ops).await, expected);
    cp.shutdown().await;
}
