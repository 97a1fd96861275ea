//! Durable state in `--data-dir`: one JSON snapshot (apps, node records, the view version
//! ceiling), replaced atomically (write a temporary file, fsync, rename, fsync the folder),
//! so a crash leaves either the old or the new snapshot, never a torn one.
//!
//! The version ceiling is a reservation: versions up to it may be handed out without a
//! write, and a restarted control plane continues from it, so no version is ever reused.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use relaymesh_proto::control::{App, NodeInfo, NodeState};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const FILE: &str = "state.json";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot use data dir {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid state file: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// An app as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredApp {
    pub id: String,
    pub key: String,
    pub secret: String,
    pub enabled: bool,
    pub client_events: bool,
    pub client_event_rate: u32,
    pub max_connections: u64,
    pub max_presence_members: u64,
    pub max_event_bytes: u64,
    pub webhooks: Vec<String>,
}

impl From<&App> for StoredApp {
    fn from(a: &App) -> Self {
        StoredApp {
            id: a.id.clone(),
            key: a.key.clone(),
            secret: a.secret.clone(),
            enabled: a.enabled,
            client_events: a.client_events,
            client_event_rate: a.client_event_rate,
            max_connections: a.max_connections,
            max_presence_members: a.max_presence_members,
            max_event_bytes: a.max_event_bytes,
            webhooks: a.webhooks.clone(),
        }
    }
}

impl From<StoredApp> for App {
    fn from(a: StoredApp) -> Self {
        App {
            id: a.id,
            key: a.key,
            secret: a.secret,
            enabled: a.enabled,
            client_events: a.client_events,
            client_event_rate: a.client_event_rate,
            max_connections: a.max_connections,
            max_presence_members: a.max_presence_members,
            max_event_bytes: a.max_event_bytes,
            webhooks: a.webhooks,
        }
    }
}

/// A node that has registered at some point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    pub region: String,
    pub client_addr: String,
    pub mesh_addr: String,
    pub version: String,
    pub capacity: u64,
    pub last_registered_unix_ms: u64,
    /// Absent in files written before incarnations were kept.
    #[serde(default)]
    pub incarnation: u64,
}

impl NodeRecord {
    pub fn new(info: &NodeInfo, now_unix_ms: u64) -> NodeRecord {
        NodeRecord {
            node_id: info.node_id.clone(),
            region: info.region.clone(),
            client_addr: info.client_addr.clone(),
            mesh_addr: info.mesh_addr.clone(),
            version: info.version.clone(),
            capacity: info.capacity,
            last_registered_unix_ms: now_unix_ms,
            incarnation: info.incarnation,
        }
    }
}

/// A node of the view as of the last save: restored on start (with the node's record)
/// so that a restarted control plane serves the same ring while its nodes register again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredViewNode {
    pub node_id: String,
    /// "joining", "active" or "draining".
    pub state: String,
}

impl StoredViewNode {
    pub fn new(node_id: &str, state: NodeState) -> StoredViewNode {
        let state = match state {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Joining | NodeState::Unspecified => "joining",
        };
        StoredViewNode {
            node_id: node_id.to_owned(),
            state: state.into(),
        }
    }

    /// The node as the registry holds it, from its node's record; `None` without a
    /// record or for a state this version does not know.
    pub fn restore(&self, records: &[NodeRecord]) -> Option<(NodeInfo, NodeState)> {
        let state = match self.state.as_str() {
            "active" => NodeState::Active,
            "draining" => NodeState::Draining,
            "joining" => NodeState::Joining,
            _ => return None,
        };
        let record = records.iter().find(|r| r.node_id == self.node_id)?;
        let info = NodeInfo {
            node_id: record.node_id.clone(),
            region: record.region.clone(),
            client_addr: record.client_addr.clone(),
            mesh_addr: record.mesh_addr.clone(),
            version: record.version.clone(),
            capacity: record.capacity,
            incarnation: record.incarnation,
        };
        Some((info, state))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version_ceiling: u64,
    pub apps: Vec<StoredApp>,
    pub nodes: Vec<NodeRecord>,
    /// The view's nodes and their states. Absent in files written before they were kept;
    /// `members` in files written before a cluster node stopped being called a member.
    #[serde(default, alias = "members")]
    pub in_view: Vec<StoredViewNode>,
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating) the data dir and reads its snapshot, if any.
    pub fn open(dir: &Path) -> Result<(Store, Snapshot), StoreError> {
        let io = |source| StoreError::Io {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(FILE);
        let snapshot = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot::default(),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        Ok((
            Store {
                dir: dir.to_owned(),
            },
            snapshot,
        ))
    }

    pub fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let path = self.dir.join(FILE);
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(snapshot).map_err(|source| StoreError::Corrupt {
            path: path.clone(),
            source,
        })?;
        let mut file = File::create(&tmp).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("relaymesh-store-{}", rand::random::<u64>()));
        let (store, empty) = Store::open(&dir).unwrap();
        assert_eq!(empty, Snapshot::default());
        let snapshot = Snapshot {
            version_ceiling: 2000,
            apps: vec![StoredApp::from(&App {
                id: "1".into(),
                key: "k".into(),
                ..App::default()
            })],
            nodes: vec![NodeRecord::new(
                &NodeInfo {
                    node_id: "a".into(),
                    incarnation: 7,
                    ..NodeInfo::default()
                },
                1,
            )],
            in_view: vec![StoredViewNode::new("a", NodeState::Draining)],
        };
        store.save(&snapshot).unwrap();
        let (info, state) = snapshot.in_view[0].restore(&snapshot.nodes).unwrap();
        assert_eq!((info.incarnation, state), (7, NodeState::Draining));
        assert_eq!(Store::open(&dir).unwrap().1, snapshot);
        // A save that fails (its temporary file cannot be created, even by root) leaves the
        // last snapshot in place.
        fs::create_dir_all(dir.join(format!("{FILE}.tmp")).join("blocker")).unwrap();
        let newer = Snapshot {
            version_ceiling: 3000,
            ..Snapshot::default()
        };
        assert!(matches!(store.save(&newer), Err(StoreError::Io { .. })));
        assert_eq!(Store::open(&dir).unwrap().1, snapshot);
        fs::write(dir.join(FILE), b"{not json").unwrap();
        assert!(matches!(Store::open(&dir), Err(StoreError::Corrupt { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_calls_the_view_nodes_members_still_loads() {
        let old = r#"{"version_ceiling": 5, "apps": [], "nodes": [],
            "members": [{"node_id": "a", "state": "active"}]}"#;
        let snapshot: Snapshot = serde_json::from_str(old).unwrap();
        assert_eq!(
            snapshot.in_view,
            [StoredViewNode::new("a", NodeState::Active)]
        );
    }
}
