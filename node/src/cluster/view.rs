//! The cluster view as a node holds it, rebuilt from the control plane's updates.
//! Sans-IO: `apply` takes one update and says whether it fit.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use relaymesh_proto::control::{App, ClusterNode, NodeState, ViewUpdate};
use relaymesh_proto::ring::Ring;
use thiserror::Error;

use crate::config::AppConfig;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ViewError {
    #[error("update {got} does not follow version {have}")]
    Gap { have: u64, got: u64 },
}

#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub version: u64,
    pub nodes: BTreeMap<String, ClusterNode>,
    pub apps: BTreeMap<String, App>,
    /// The ring of active nodes, built on first use after the active set changed (a
    /// registration storm changes the view thousands of times); shared by clones.
    ring: Arc<OnceLock<Ring>>,
}

impl ClusterView {
    /// Applies a full view or the delta that follows the current version.
    pub fn apply(&mut self, update: ViewUpdate) -> Result<(), ViewError> {
        if update.full {
            self.nodes.clear();
            self.apps.clear();
        } else if update.version != self.version + 1 {
            return Err(ViewError::Gap {
                have: self.version,
                got: update.version,
            });
        }
        self.version = update.version;
        let active = NodeState::Active as i32;
        let mut active_set_changed = update.full;
        for id in update.removed_nodes {
            if let Some(old) = self.nodes.remove(&id) {
                active_set_changed |= old.state == active;
            }
        }
        for entry in update.nodes {
            if let Some(node) = &entry.node {
                let was_active = self
                    .nodes
                    .get(&node.node_id)
                    .is_some_and(|m| m.state == active);
                active_set_changed |= was_active != (entry.state == active);
                self.nodes.insert(node.node_id.clone(), entry);
            }
        }
        if active_set_changed {
            self.ring = Arc::new(OnceLock::new());
        }
        for id in update.removed_apps {
            self.apps.remove(&id);
        }
        for app in update.apps {
            self.apps.insert(app.id.clone(), app);
        }
        Ok(())
    }

    /// The node that owns `channel` of `app`: the only place that names an owner. `None`
    /// while no node is active.
    pub fn owner_of(&self, app_id: &str, channel: &str) -> Option<&str> {
        self.ring().owner(app_id, channel)
    }

    /// Whether `channel` of `app` has another owner in this view than in `previous`, or an
    /// owner that restarted (a new process knows nothing of the channel).
    pub fn moved_since(&self, previous: &ClusterView, app_id: &str, channel: &str) -> bool {
        let before = previous.owner_of(app_id, channel);
        let after = self.owner_of(app_id, channel);
        before != after
            || after.is_some_and(|o| previous.incarnation_of(o) != self.incarnation_of(o))
    }

    /// Whether no node is active (so no channel has an owner).
    pub fn has_no_owner(&self) -> bool {
        self.ring().is_empty()
    }

    /// The ring of the active nodes.
    fn ring(&self) -> &Ring {
        self.ring.get_or_init(|| {
            let active = self
                .nodes
                .iter()
                .filter(|(_, m)| m.state == NodeState::Active as i32)
                .map(|(id, _)| id.as_str());
            Ring::new(active)
        })
    }

    /// The process a node runs as (`NodeInfo::incarnation`).
    pub fn incarnation_of(&self, node_id: &str) -> Option<u64> {
        Some(self.nodes.get(node_id)?.node.as_ref()?.incarnation)
    }

    pub fn state_of(&self, node_id: &str) -> Option<NodeState> {
        self.nodes
            .get(node_id)
            .and_then(|m| NodeState::try_from(m.state).ok())
    }

    /// The apps as node settings; what the control plane does not carry keeps its default.
    pub fn app_configs(&self) -> Vec<AppConfig> {
        self.apps
            .values()
            .map(|a| AppConfig {
                id: a.id.clone(),
                key: a.key.clone(),
                secret: a.secret.clone(),
                enabled: a.enabled,
                client_events: a.client_events,
                client_event_rate: a.client_event_rate.max(1),
                max_connections: (a.max_connections > 0).then_some(a.max_connections as usize),
                max_presence_members: a.max_presence_members.max(1) as usize,
                max_event_bytes: a.max_event_bytes as usize,
                webhooks: a.webhooks.clone(),
                ..AppConfig::default()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaymesh_proto::control::NodeInfo;

    fn node(id: &str, state: NodeState) -> ClusterNode {
        ClusterNode {
            node: Some(NodeInfo {
                node_id: id.into(),
                ..NodeInfo::default()
            }),
            state: state as i32,
        }
    }

    #[test]
    fn full_then_deltas_in_order() {
        let mut view = ClusterView::default();
        view.apply(ViewUpdate {
            version: 7,
            full: true,
            nodes: vec![node("a", NodeState::Active)],
            apps: vec![App {
                id: "1".into(),
                key: "k".into(),
                max_connections: 0,
                ..App::default()
            }],
            ..ViewUpdate::default()
        })
        .unwrap();
        assert_eq!(view.owner_of("1", "c"), Some("a"));
        assert_eq!(view.app_configs()[0].max_connections, None);
        view.apply(ViewUpdate {
            version: 8,
            nodes: vec![node("b", NodeState::Joining)],
            removed_apps: vec!["1".into()],
            ..ViewUpdate::default()
        })
        .unwrap();
        assert_eq!(view.nodes.len(), 2);
        assert!(view.apps.is_empty());
        assert_eq!(view.ring().nodes(), ["a"], "joining nodes own nothing");
        let gap = view.apply(ViewUpdate {
            version: 10,
            ..ViewUpdate::default()
        });
        assert_eq!(gap, Err(ViewError::Gap { have: 8, got: 10 }));
        view.apply(ViewUpdate {
            version: 9,
            removed_nodes: vec!["a".into()],
            ..ViewUpdate::default()
        })
        .unwrap();
        assert_eq!(view.state_of("a"), None);
        assert_eq!(view.state_of("b"), Some(NodeState::Joining));
        assert!(view.has_no_owner());
    }
}
