//! The cluster's state as plain data: nodes with their leases, apps, and the view
//! version. Sans-IO: every method takes the time and returns the [`ViewUpdate`] it caused,
//! which the service persists and broadcasts. Every change moves the version by one, and
//! only to a version reserved on disk ([`Registry::reserve`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use relaymesh_proto::control::{
    App, ClusterNode, NodeInfo, NodeLoad, NodeState, ViewUpdate, OUTAGE_GRACE,
};
use relaymesh_proto::ring::Ring;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegistryError {
    #[error("unknown or expired lease")]
    UnknownLease,
    #[error("no node {0:?}")]
    UnknownNode(String),
    #[error("no app {0:?}")]
    UnknownApp(String),
    #[error("an app with key {0:?} exists")]
    DuplicateKey(String),
    #[error("no view version is reserved on disk")]
    Unreserved,
}

/// A registered node and its lease.
#[derive(Debug, Clone)]
pub struct LeasedNode {
    pub info: NodeInfo,
    pub state: NodeState,
    pub lease_id: String,
    pub lease_expires: Instant,
    pub registered: Instant,
    pub load: NodeLoad,
}

impl LeasedNode {
    fn cluster_node(&self) -> ClusterNode {
        ClusterNode {
            node: Some(self.info.clone()),
            state: self.state as i32,
        }
    }
}

/// Cloned to make a change on a copy, which replaces the original once it is saved.
#[derive(Clone)]
pub struct Registry {
    version: u64,
    /// The highest version reserved on disk. None above it is handed out: a control plane
    /// restarted from the disk continues from the reservation and must not reuse one.
    reserved: u64,
    lease_ttl: Duration,
    nodes: BTreeMap<String, LeasedNode>,
    /// When a lease was last renewed or granted; nodes go quiet all at once when this
    /// control plane is the one cut off (or just restarted), and then nobody is expired.
    last_renewal: Instant,
    /// No node renewed for half the TTL: the next renewal gives every node
    /// [`OUTAGE_GRACE`] to reach this control plane again.
    stalled: bool,
    /// Lease id → node id.
    leases: HashMap<String, String>,
    apps: BTreeMap<String, App>,
    /// The ring of active nodes: built on first use after the active set changed, so a
    /// registration storm does not rebuild it per event; shared by copies.
    ring: Arc<OnceLock<Ring>>,
}

impl Registry {
    /// A registry that continues from `version` (never reusing one) with persisted `apps`;
    /// it changes nothing until versions above `version` are reserved.
    pub fn new(version: u64, lease_ttl: Duration, apps: Vec<App>) -> Registry {
        Registry {
            version,
            reserved: version,
            lease_ttl,
            nodes: BTreeMap::new(),
            last_renewal: Instant::now(),
            stalled: false,
            leases: HashMap::new(),
            apps: apps.into_iter().map(|a| (a.id.clone(), a)).collect(),
            ring: Arc::default(),
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// Versions up to `ceiling` are reserved on disk and may be handed out.
    pub fn reserve(&mut self, ceiling: u64) {
        self.reserved = self.reserved.max(ceiling);
    }

    /// Refuses a change, before anything changed, when no reserved version is left for it.
    fn check_reserved(&self) -> Result<(), RegistryError> {
        if self.version < self.reserved {
            Ok(())
        } else {
            Err(RegistryError::Unreserved)
        }
    }

    fn next(&mut self) -> ViewUpdate {
        debug_assert!(self.version < self.reserved, "every change checks first");
        self.version += 1;
        ViewUpdate {
            version: self.version,
            ..ViewUpdate::default()
        }
    }

    /// Forgets the ring; called whenever the set of active nodes may have changed.
    fn active_set_changed(&mut self) {
        self.ring = Arc::default();
    }

    fn ring(&self) -> &Ring {
        self.ring.get_or_init(|| {
            let active = self
                .nodes
                .values()
                .filter(|m| m.state == NodeState::Active)
                .map(|m| m.info.node_id.as_str());
            Ring::new(active)
        })
    }

    /// The whole state as a `full` update at the current version.
    pub fn full_view(&self) -> ViewUpdate {
        ViewUpdate {
            version: self.version,
            full: true,
            nodes: self.nodes.values().map(LeasedNode::cluster_node).collect(),
            apps: self.apps.values().cloned().collect(),
            ..ViewUpdate::default()
        }
    }

    /// Registers (or re-registers) a node with a new lease. A new node, a new process of
    /// one (another incarnation), or one that lost its owner state joins as `Joining`; the
    /// same process registering again with its state (after a control-plane outage or
    /// restart) keeps its state, so the ring stays.
    pub fn register(
        &mut self,
        now: Instant,
        info: NodeInfo,
        lease_id: String,
        state_lost: bool,
    ) -> Result<ViewUpdate, RegistryError> {
        self.check_reserved()?;
        self.renewal(now);
        let mut state = NodeState::Joining;
        if let Some(old) = self.nodes.get(&info.node_id) {
            self.leases.remove(&old.lease_id);
            let same_process =
                old.info.incarnation == info.incarnation && old.info.mesh_addr == info.mesh_addr;
            if same_process && !state_lost {
                state = old.state;
            } else if old.state == NodeState::Active {
                self.active_set_changed();
            }
        }
        self.leases.insert(lease_id.clone(), info.node_id.clone());
        let record = LeasedNode {
            info: info.clone(),
            state,
            lease_id,
            lease_expires: now + self.lease_ttl,
            registered: now,
            load: NodeLoad::default(),
        };
        let mut update = self.next();
        update.nodes.push(record.cluster_node());
        self.nodes.insert(info.node_id, record);
        Ok(update)
    }

    /// Renews a lease. The first keepalive makes a joining node active (a view change); with
    /// no reserved version left it stays joining, its lease renewed, until one is reserved.
    pub fn keep_alive(
        &mut self,
        now: Instant,
        lease_id: &str,
        load: NodeLoad,
    ) -> Result<(NodeState, Option<ViewUpdate>), RegistryError> {
        let node_id = self
            .leases
            .get(lease_id)
            .ok_or(RegistryError::UnknownLease)?
            .clone();
        if !self.nodes.contains_key(&node_id) {
            return Err(RegistryError::UnknownLease);
        }
        self.renewal(now);
        let ttl = self.lease_ttl;
        let can_change = self.check_reserved().is_ok();
        let record = self
            .nodes
            .get_mut(&node_id)
            .ok_or(RegistryError::UnknownLease)?;
        record.lease_expires = now + ttl;
        record.load = load;
        if record.state != NodeState::Joining || !can_change {
            return Ok((record.state, None));
        }
        record.state = NodeState::Active;
        let entry = record.cluster_node();
        let mut update = self.next();
        update.nodes.push(entry);
        self.active_set_changed();
        Ok((NodeState::Active, Some(update)))
    }

    /// Removes the node holding `lease_id`.
    pub fn leave(&mut self, lease_id: &str) -> Result<ViewUpdate, RegistryError> {
        if !self.leases.contains_key(lease_id) {
            return Err(RegistryError::UnknownLease);
        }
        self.check_reserved()?;
        let node_id = self
            .leases
            .remove(lease_id)
            .ok_or(RegistryError::UnknownLease)?;
        self.nodes.remove(&node_id);
        let mut update = self.next();
        update.removed_nodes.push(node_id);
        self.active_set_changed();
        Ok(update)
    }

    /// Drains the node holding `lease_id`.
    pub fn drain_lease(&mut self, lease_id: &str) -> Result<Option<ViewUpdate>, RegistryError> {
        let node_id = self
            .leases
            .get(lease_id)
            .ok_or(RegistryError::UnknownLease)?
            .clone();
        self.drain(&node_id)
    }

    /// Nodes known before a restart, restored from the state file: they keep their
    /// state without a lease, and have [`OUTAGE_GRACE`] beyond the TTL to register again,
    /// so the ring does not change while they come back one by one.
    pub fn restore(
        &mut self,
        now: Instant,
        in_view: impl IntoIterator<Item = (NodeInfo, NodeState)>,
    ) {
        for (info, state) in in_view {
            let record = LeasedNode {
                info: info.clone(),
                state,
                lease_id: String::new(),
                lease_expires: now + self.lease_ttl + OUTAGE_GRACE,
                registered: now,
                load: NodeLoad::default(),
            };
            self.nodes.insert(info.node_id, record);
        }
        self.last_renewal = now;
        self.active_set_changed();
    }

    /// A lease was granted or renewed. The first after a stall gives every node the
    /// grace to come back: they were cut off from this control plane, not from each other.
    fn renewal(&mut self, now: Instant) {
        if self.stalled {
            self.stalled = false;
            let until = now + self.lease_ttl + OUTAGE_GRACE;
            for record in self.nodes.values_mut() {
                record.lease_expires = record.lease_expires.max(until);
            }
        }
        self.last_renewal = now;
    }

    /// Removes every node whose lease ran out; one update for all of them. When no node
    /// renewed for half the TTL, this control plane is the one cut off (or
    /// every node died at once, and then there is no one to hand channels to): nobody is
    /// expired until renewals resume. Nor while no reserved version is left.
    pub fn expire(&mut self, now: Instant) -> Option<(Vec<String>, ViewUpdate)> {
        if !self.nodes.is_empty()
            && now.saturating_duration_since(self.last_renewal) >= self.lease_ttl / 2
        {
            self.stalled = true;
        }
        if self.stalled || self.check_reserved().is_err() {
            return None;
        }
        let expired: Vec<String> = self
            .nodes
            .values()
            .filter(|m| m.lease_expires <= now)
            .map(|m| m.info.node_id.clone())
            .collect();
        if expired.is_empty() {
            return None;
        }
        for node_id in &expired {
            if let Some(record) = self.nodes.remove(node_id) {
                self.leases.remove(&record.lease_id);
            }
        }
        let mut update = self.next();
        update.removed_nodes = expired.clone();
        self.active_set_changed();
        Some((expired, update))
    }

    /// Marks a node draining: it leaves the ring.
    pub fn drain(&mut self, node_id: &str) -> Result<Option<ViewUpdate>, RegistryError> {
        let reserved = self.check_reserved();
        let record = self
            .nodes
            .get_mut(node_id)
            .ok_or_else(|| RegistryError::UnknownNode(node_id.to_owned()))?;
        if record.state == NodeState::Draining {
            return Ok(None);
        }
        reserved?;
        record.state = NodeState::Draining;
        let entry = record.cluster_node();
        let mut update = self.next();
        update.nodes.push(entry);
        self.active_set_changed();
        Ok(Some(update))
    }

    pub fn nodes(&self) -> impl Iterator<Item = &LeasedNode> {
        self.nodes.values()
    }

    /// The owner of a channel under the current view.
    pub fn owner(&self, app_id: &str, channel: &str) -> Option<&NodeInfo> {
        let node_id = self.ring().owner(app_id, channel)?;
        self.nodes.get(node_id).map(|m| &m.info)
    }

    pub fn apps(&self) -> impl Iterator<Item = &App> {
        self.apps.values()
    }

    pub fn app(&self, id: &str) -> Option<&App> {
        self.apps.get(id)
    }

    /// Adds or replaces an app (same id); keys are unique across apps.
    pub fn put_app(&mut self, app: App) -> Result<ViewUpdate, RegistryError> {
        if self
            .apps
            .values()
            .any(|a| a.key == app.key && a.id != app.id)
        {
            return Err(RegistryError::DuplicateKey(app.key));
        }
        self.check_reserved()?;
        let mut update = self.next();
        update.apps.push(app.clone());
        self.apps.insert(app.id.clone(), app);
        Ok(update)
    }

    pub fn delete_app(&mut self, id: &str) -> Result<ViewUpdate, RegistryError> {
        if !self.apps.contains_key(id) {
            return Err(RegistryError::UnknownApp(id.to_owned()));
        }
        self.check_reserved()?;
        self.apps.remove(id);
        let mut update = self.next();
        update.removed_apps.push(id.to_owned());
        Ok(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry with every version reserved.
    fn registry(version: u64, ttl: Duration) -> Registry {
        let mut r = Registry::new(version, ttl, Vec::new());
        r.reserve(u64::MAX);
        r
    }

    fn info(id: &str) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            region: "eu".into(),
            ..NodeInfo::default()
        }
    }

    #[test]
    fn lease_lifecycle_moves_the_version_once_per_change() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(1);
        let mut r = registry(10, ttl);
        let u = r.register(t0, info("a"), "lease-a".into(), false).unwrap();
        assert_eq!(u.version, 11);
        assert!(r.owner("app", "c").is_none(), "a joining node owns nothing");
        let (state, u) = r.keep_alive(t0, "lease-a", NodeLoad::default()).unwrap();
        assert_eq!((state, u.unwrap().version), (NodeState::Active, 12));
        assert_eq!(r.owner("app", "c").unwrap().node_id, "a");
        let (_, u) = r
            .keep_alive(t0 + ttl / 2, "lease-a", NodeLoad::default())
            .unwrap();
        assert!(u.is_none(), "a renewal is not a view change");
        assert!(r.expire(t0 + ttl * 3 / 4).is_none(), "renewed at ttl/2");
        // a stops renewing while b (registered, then renewing) goes on.
        r.register(t0 + ttl, info("b"), "lease-b".into(), false)
            .unwrap();
        let (_, u) = r
            .keep_alive(t0 + ttl + ttl / 4, "lease-b", NodeLoad::default())
            .unwrap();
        assert_eq!(u.unwrap().version, 14);
        let (expired, u) = r.expire(t0 + ttl + ttl / 2).unwrap();
        assert_eq!((expired, u.version), (vec!["a".to_owned()], 15));
        assert_eq!(
            r.keep_alive(t0, "lease-a", NodeLoad::default())
                .unwrap_err(),
            RegistryError::UnknownLease
        );
    }

    #[test]
    fn re_registering_replaces_the_old_lease() {
        let t0 = Instant::now();
        let mut r = registry(0, Duration::from_secs(1));
        r.register(t0, info("a"), "old".into(), false).unwrap();
        r.register(t0, info("a"), "new".into(), false).unwrap();
        assert!(r.keep_alive(t0, "old", NodeLoad::default()).is_err());
        assert!(r.keep_alive(t0, "new", NodeLoad::default()).is_ok());
        assert_eq!(r.full_view().nodes.len(), 1);
        assert!(r.leave("new").unwrap().removed_nodes == vec!["a".to_owned()]);
    }

    #[test]
    fn the_same_process_registering_again_keeps_its_place() {
        let t0 = Instant::now();
        let mut r = registry(0, Duration::from_secs(1));
        let mut a = info("a");
        a.incarnation = 1;
        r.register(t0, a.clone(), "l1".into(), false).unwrap();
        r.keep_alive(t0, "l1", NodeLoad::default()).unwrap();
        let u = r.register(t0, a.clone(), "l2".into(), false).unwrap();
        assert_eq!(u.nodes[0].state, NodeState::Active as i32);
        assert_eq!(r.owner("app", "c").unwrap().node_id, "a");
        let u = r.register(t0, a.clone(), "l3".into(), true).unwrap();
        assert_eq!(
            u.nodes[0].state,
            NodeState::Joining as i32,
            "a node that lost its owner state joins again"
        );
        r.keep_alive(t0, "l3", NodeLoad::default()).unwrap();
        a.incarnation = 2;
        let u = r.register(t0, a, "l4".into(), false).unwrap();
        assert_eq!(
            u.nodes[0].state,
            NodeState::Joining as i32,
            "a new process joins"
        );
        assert!(r.owner("app", "c").is_none());
    }

    #[test]
    fn restored_nodes_keep_the_ring_and_get_the_grace() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(1);
        let mut r = registry(0, ttl);
        r.restore(
            t0,
            [
                (info("a"), NodeState::Active),
                (info("b"), NodeState::Active),
            ],
        );
        assert!(
            r.owner("app", "c").is_some(),
            "restored active nodes own channels"
        );
        let u = r.register(t0, info("a"), "la".into(), false).unwrap();
        assert_eq!(u.nodes[0].state, NodeState::Active as i32);
        // a renews; b never comes back and expires after the TTL and the grace.
        let mut t = t0;
        while t < t0 + ttl + OUTAGE_GRACE {
            r.keep_alive(t, "la", NodeLoad::default()).unwrap();
            assert!(
                r.expire(t).is_none(),
                "b is within its grace at {:?}",
                t - t0
            );
            t += ttl / 4;
        }
        r.keep_alive(t, "la", NodeLoad::default()).unwrap();
        let (expired, _) = r.expire(t + ttl / 8).unwrap();
        assert_eq!(expired, vec!["b".to_owned()]);
    }

    #[test]
    fn nobody_expires_while_nobody_renews() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(1);
        let mut r = registry(0, ttl);
        for id in ["a", "b"] {
            r.register(t0, info(id), id.into(), false).unwrap();
            r.keep_alive(t0, id, NodeLoad::default()).unwrap();
        }
        // The control plane hears from no one for 10 TTLs: it is the one cut off.
        assert!(r.expire(t0 + ttl * 10).is_none());
        // a is back and renews; b gets the grace from then on, then expires.
        let back = t0 + ttl * 10;
        let mut t = back;
        while t < back + ttl + OUTAGE_GRACE {
            r.keep_alive(t, "a", NodeLoad::default()).unwrap();
            assert!(r.expire(t).is_none(), "b is within its grace");
            t += ttl / 4;
        }
        r.keep_alive(t, "a", NodeLoad::default()).unwrap();
        assert_eq!(r.expire(t).unwrap().0, vec!["b".to_owned()]);
    }

    #[test]
    fn draining_leaves_the_ring() {
        let t0 = Instant::now();
        let mut r = registry(0, Duration::from_secs(1));
        for id in ["a", "b"] {
            r.register(t0, info(id), id.into(), false).unwrap();
            r.keep_alive(t0, id, NodeLoad::default()).unwrap();
        }
        r.drain("a").unwrap();
        for i in 0..100 {
            assert_eq!(r.owner("app", &format!("c{i}")).unwrap().node_id, "b");
        }
        assert!(r.drain("a").unwrap().is_none());
        assert_eq!(
            r.drain("zz").unwrap_err(),
            RegistryError::UnknownNode("zz".into())
        );
    }

    #[test]
    fn apps_keys_are_unique() {
        let mut r = registry(0, Duration::from_secs(1));
        let app = |id: &str, key: &str| App {
            id: id.into(),
            key: key.into(),
            ..App::default()
        };
        r.put_app(app("1", "k")).unwrap();
        assert_eq!(
            r.put_app(app("2", "k")).unwrap_err(),
            RegistryError::DuplicateKey("k".into())
        );
        r.put_app(app("1", "k")).unwrap();
        assert_eq!(
            r.delete_app("1").unwrap().removed_apps,
            vec!["1".to_owned()]
        );
        assert!(r.delete_app("1").is_err());
    }

    #[test]
    fn only_reserved_versions_are_handed_out() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(1);
        let app = App {
            id: "1".into(),
            key: "k".into(),
            ..App::default()
        };
        let mut r = Registry::new(10, ttl, Vec::new());
        // Nothing reserved yet: a change is refused before it changed anything.
        assert_eq!(
            r.register(t0, info("a"), "la".into(), false).unwrap_err(),
            RegistryError::Unreserved
        );
        assert_eq!(
            r.put_app(app.clone()).unwrap_err(),
            RegistryError::Unreserved
        );
        let empty = r.full_view();
        assert_eq!(
            (empty.version, empty.nodes.len(), empty.apps.len()),
            (10, 0, 0)
        );

        r.reserve(13);
        r.register(t0, info("a"), "la".into(), false).unwrap();
        r.register(t0, info("b"), "lb".into(), false).unwrap();
        assert_eq!(r.put_app(app).unwrap().version, 13);
        // Used up: a keepalive renews the lease without activating, other changes wait.
        let later = t0 + ttl * 3 / 4;
        let (state, update) = r.keep_alive(later, "la", NodeLoad::default()).unwrap();
        assert_eq!((state, update), (NodeState::Joining, None));
        for refused in [
            r.delete_app("1").map(|_| ()),
            r.leave("la").map(|_| ()),
            r.drain("a").map(|_| ()),
            r.register(later, info("c"), "lc".into(), false).map(|_| ()),
        ] {
            assert_eq!(refused.unwrap_err(), RegistryError::Unreserved);
        }
        assert!(
            r.expire(t0 + ttl).is_none(),
            "b expires only with a version"
        );
        let view = r.full_view();
        assert_eq!(
            (view.version, view.nodes.len(), view.apps.len()),
            (13, 2, 1)
        );
        assert!(r.keep_alive(later, "la", NodeLoad::default()).is_ok());

        r.reserve(20);
        let (expired, update) = r.expire(t0 + ttl).unwrap();
        assert_eq!((expired, update.version), (vec!["b".to_owned()], 14));
        let (state, update) = r.keep_alive(later, "la", NodeLoad::default()).unwrap();
        assert_eq!((state, update.unwrap().version), (NodeState::Active, 15));
        r.reserve(1);
        assert_eq!(
            r.delete_app("1").unwrap().version,
            16,
            "a reservation never shrinks"
        );
    }
}
