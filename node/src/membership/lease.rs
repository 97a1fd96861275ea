//! The node's lease as the node sees it: when it was last renewed and until when the
//! control plane counts it as a member. Fencing (`rebalance::must_fence`) reads it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Lease {
    state: Mutex<LeaseState>,
}

#[derive(Default)]
struct LeaseState {
    /// When the last renewal was answered; `None` before the first registration.
    renewed_at: Option<Instant>,
    ttl: Duration,
    heartbeat: Duration,
    registrations: u64,
    /// When this node last saw the control plane out for everyone.
    outage_seen_at: Option<Instant>,
    /// The node dropped its owner state (fenced) since it last registered.
    state_lost: bool,
}

impl Lease {
    fn lock(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A registration or keepalive was answered.
    pub fn renewed(&self, ttl: Duration, heartbeat: Duration) {
        let mut state = self.lock();
        state.renewed_at = Some(Instant::now());
        state.ttl = ttl;
        state.heartbeat = heartbeat;
    }

    /// Counts a registration; true when the node had registered before (it comes back).
    pub fn registered_before(&self) -> bool {
        let mut state = self.lock();
        state.registrations += 1;
        state.registrations > 1
    }

    /// The node dropped its owner state: its next registration says so.
    pub fn state_lost(&self) {
        self.lock().state_lost = true;
    }

    /// Whether the node dropped its owner state since it last registered.
    pub fn lost_state(&self) -> bool {
        self.lock().state_lost
    }

    /// A registration that said so was answered.
    pub fn state_reported(&self) {
        self.lock().state_lost = false;
    }

    /// When the lease was last renewed.
    pub fn renewed_at(&self) -> Option<Instant> {
        self.lock().renewed_at
    }

    /// Whether no renewal came for half the TTL: the node may be cut off, before the
    /// control plane expires it.
    pub fn in_doubt(&self) -> bool {
        let state = self.lock();
        state
            .renewed_at
            .is_some_and(|at| at.elapsed() > state.ttl / 2)
    }

    pub fn ttl(&self) -> Duration {
        self.lock().ttl
    }

    /// No member renewed its lease for a TTL: the control plane is out for everyone.
    pub fn outage_seen(&self, at: Instant) {
        self.lock().outage_seen_at = Some(at);
    }

    pub fn outage_seen_at(&self) -> Option<Instant> {
        self.lock().outage_seen_at
    }

    /// The keepalive interval, to tell a member that renews from one that stopped.
    pub fn heartbeat(&self) -> Duration {
        self.lock().heartbeat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_in_doubt_after_half_its_ttl() {
        let lease = Lease::default();
        assert!(!lease.in_doubt(), "no lease yet is not a lost one");
        lease.renewed(Duration::ZERO, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1));
        assert!(lease.in_doubt());
        lease.renewed(Duration::from_secs(60), Duration::from_secs(15));
        assert!(!lease.in_doubt());
        assert!(!lease.registered_before());
        assert!(lease.registered_before());
    }
}
