//! The control plane's durable changes against a disk that refuses them.

use std::path::{Path, PathBuf};

use tokio::sync::broadcast::error::TryRecvError;
use tonic::Code;

use super::*;
use relaymesh_proto::control::ops_server::Ops;

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let name = format!("relaymesh-server-{:016x}", rand::random::<u64>());
        Dir(std::env::temp_dir().join(name))
    }

    /// The store's temporary file as a non-empty directory: saves fail, even for root.
    fn break_disk(&self) {
        std::fs::create_dir_all(self.0.join("state.json.tmp").join("blocker")).unwrap();
    }

    fn repair_disk(&self) {
        std::fs::remove_dir_all(self.0.join("state.json.tmp")).unwrap();
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(dir: &Path) -> Service {
    let (store, snapshot) = Store::open(dir).unwrap();
    let (_, stopping) = watch::channel(false);
    let control = ControlPlane::new(Config::for_test(dir.to_owned()), store, snapshot, stopping);
    control.startup().unwrap();
    Service(Arc::new(control))
}

async fn create(cp: &Service) -> Result<App, Status> {
    let request = Request::new(CreateAppRequest { settings: None });
    cp.create_app(request).await.map(Response::into_inner)
}

async fn apps(cp: &Service) -> Vec<App> {
    let listed = cp.list_apps(Request::new(ListAppsRequest {})).await;
    let mut apps = listed.unwrap().into_inner().apps;
    apps.sort_by(|a, b| a.id.cmp(&b.id));
    apps
}

fn register_request(node_id: &str) -> Request<RegisterRequest> {
    Request::new(RegisterRequest {
        node: Some(NodeInfo {
            node_id: node_id.into(),
            region: "eu".into(),
            ..NodeInfo::default()
        }),
        state_lost: false,
    })
}

#[tokio::test]
async fn a_durable_change_that_cannot_be_saved_is_neither_kept_nor_broadcast() {
    let dir = Dir::new();
    let cp = start(&dir.0);
    let mut updates = cp.updates.subscribe();
    let kept = create(&cp).await.unwrap();
    let version = updates.try_recv().unwrap().version;

    dir.break_disk();
    let app_id = kept.id.clone();
    let refused = [
        create(&cp).await.map(drop),
        cp.update_app(Request::new(UpdateAppRequest {
            app_id: app_id.clone(),
            settings: Some(AppSettings {
                enabled: Some(false),
                ..AppSettings::default()
            }),
        }))
        .await
        .map(drop),
        cp.rotate_secret(Request::new(RotateSecretRequest {
            app_id: app_id.clone(),
        }))
        .await
        .map(drop),
        cp.delete_app(Request::new(DeleteAppRequest { app_id }))
            .await
            .map(drop),
        cp.register(register_request("a")).await.map(drop),
    ];
    for result in refused {
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().starts_with("cannot persist state: "),
            "{status:?}"
        );
    }
    assert_eq!(apps(&cp).await, vec![kept.clone()], "nothing changed");
    assert_eq!(cp.lock().registry.nodes().count(), 0);
    assert_eq!(cp.lock().registry.version(), version);
    assert_eq!(updates.try_recv().unwrap_err(), TryRecvError::Empty);

    dir.repair_disk();
    let later = create(&cp).await.unwrap();
    assert_eq!(
        updates.try_recv().unwrap().version,
        version + 1,
        "the refused changes took no version"
    );
    let restarted = start(&dir.0);
    let mut expected = vec![kept, later];
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(apps(&restarted).await, expected, "what was saved, only");
    assert!(restarted.lock().registry.version() > version + 1);
}

#[tokio::test]
async fn membership_is_saved_by_a_tick_once_the_disk_takes_it() {
    let dir = Dir::new();
    let cp = start(&dir.0);
    let lease_id = cp
        .register(register_request("a"))
        .await
        .unwrap()
        .into_inner()
        .lease_id;
    let mut updates = cp.updates.subscribe();
    let saved_in_view = || Store::open(&dir.0).unwrap().1.in_view;
    assert_eq!(
        saved_in_view(),
        [StoredViewNode::new("a", NodeState::Joining)]
    );

    dir.break_disk();
    // A membership change goes on without a save, on a version reserved before.
    let drain = DrainNodeRequest {
        node_id: "a".into(),
    };
    cp.drain_node(Request::new(drain)).await.unwrap();
    assert!(updates.try_recv().is_ok());
    cp.expire();
    assert!(cp.lock().nodes_dirty, "a failed save is tried again");
    assert_eq!(
        saved_in_view(),
        [StoredViewNode::new("a", NodeState::Joining)]
    );
    // Leaving is not refused: its version was reserved when the registration was saved.
    cp.leave(Request::new(LeaveRequest { lease_id }))
        .await
        .unwrap();

    dir.repair_disk();
    cp.expire();
    assert!(!cp.lock().nodes_dirty);
    assert_eq!(saved_in_view(), []);
}

#[test]
fn a_copy_reserves_versions_that_the_state_gets_only_with_it() {
    let dir = Dir::new();
    let (store, snapshot) = Store::open(&dir.0).unwrap();
    let (_, stopping) = watch::channel(false);
    let control = ControlPlane::new(Config::for_test(dir.0.clone()), store, snapshot, stopping);
    let app = App {
        id: "1".into(),
        key: "k".into(),
        ..App::default()
    };
    let mut state = control.lock();
    let mut next = state.next();
    assert_eq!(next.snapshot.version_ceiling, VERSION_RESERVATION);
    assert!(next.registry.put_app(app.clone()).is_ok());
    assert_eq!(
        state.registry.put_app(app.clone()).unwrap_err(),
        RegistryError::Unreserved,
        "not saved yet"
    );
    dir.break_disk();
    assert!(control.save(&mut state, next).is_err());
    assert_eq!(state.snapshot.version_ceiling, 0);
    assert!(state.registry.put_app(app.clone()).is_err());
    dir.repair_disk();
    let next = state.next();
    control.save(&mut state, next).unwrap();
    assert_eq!(state.snapshot.version_ceiling, VERSION_RESERVATION);
    assert_eq!(state.registry.put_app(app).unwrap().version, 1);
}
