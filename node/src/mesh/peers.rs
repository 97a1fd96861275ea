//! The node's table of live links, one per peer: what the routing sends on. The task that
//! keeps it (dialing, accepting, forgetting links to nodes that left the view) is
//! `links.rs`, above the routing; the table stays here, below it, so that `route/` can
//! send without importing that task.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::link::{LinkSender, WeakLinkSender};

/// The node's current links, by peer node id.
#[derive(Default)]
pub struct Peers {
    links: Mutex<HashMap<String, LinkSender>>,
}

impl Peers {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, LinkSender>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The link to `node_id`, if it is up.
    pub fn link(&self, node_id: &str) -> Option<LinkSender> {
        self.lock().get(node_id).filter(|l| !l.is_closed()).cloned()
    }

    /// Makes `sender` the link to its peer (the link manager's `adopt` in `links.rs`, or a
    /// test's own in-memory link).
    pub fn insert(&self, sender: LinkSender) {
        self.lock().insert(sender.peer.clone(), sender);
    }

    /// Forgets the link to `node_id`; the link closes once no one holds its sender.
    pub fn remove(&self, node_id: &str) {
        self.lock().remove(node_id);
    }

    /// Peers with a live link, sorted.
    pub fn linked(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, l)| !l.is_closed())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Forgets the link to `node_id` if it is still `link`: a replaced link ending says
    /// nothing about the peer. Whether it was forgotten.
    pub fn remove_if_current(&self, node_id: &str, link: &WeakLinkSender) -> bool {
        let mut links = self.lock();
        let current = links.get(node_id).is_some_and(|l| link.same_link(l));
        if current {
            links.remove(node_id);
        }
        current
    }

    /// Every peer in the table, its link up or not.
    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Forgets every link (the node stops).
    pub fn clear(&self) {
        self.lock().clear();
    }
}
