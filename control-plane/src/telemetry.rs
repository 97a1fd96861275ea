//! The control plane's own Prometheus metrics.

use std::collections::BTreeMap;
use std::sync::Mutex;

use metrics_exporter_prometheus::PrometheusHandle;
use relaymesh_proto::control::NodeState;

use crate::registry::Registry;

/// Registered nodes, by state and region.
pub const NODES: &str = "relaymesh_control_nodes";
/// The current view version.
pub const VIEW_VERSION: &str = "relaymesh_control_view_version";
/// Apps in the registry.
pub const APPS: &str = "relaymesh_control_apps";
/// Leases that ran out (nodes removed without leaving).
pub const LEASE_EXPIRIES: &str = "relaymesh_control_lease_expiries_total";
/// gRPC calls, by method and status code.
pub const API_CALLS: &str = "relaymesh_control_api_calls_total";
/// Failed saves of the state file: a durable change refused, or membership left unsaved
/// until a later tick.
pub const SAVE_FAILURES: &str = "relaymesh_control_state_save_failures_total";

/// Label sets of [`NODES`] emitted so far, so a vanished one is set back to zero.
static NODE_LABELS: Mutex<BTreeMap<(String, String), ()>> = Mutex::new(BTreeMap::new());

/// The process-wide Prometheus recorder's handle.
pub fn handle() -> PrometheusHandle {
    relaymesh_proto::observe::prometheus()
}

fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Joining => "joining",
        NodeState::Active => "active",
        NodeState::Draining => "draining",
        NodeState::Unspecified => "unspecified",
    }
}

/// Publishes the gauges that describe the view.
pub fn view(registry: &Registry) {
    metrics::gauge!(VIEW_VERSION).set(registry.version() as f64);
    metrics::gauge!(APPS).set(registry.apps().count() as f64);
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for m in registry.nodes() {
        *counts
            .entry((state_name(m.state).to_owned(), m.info.region.clone()))
            .or_default() += 1;
    }
    let mut emitted = NODE_LABELS.lock().unwrap_or_else(|e| e.into_inner());
    for (state, region) in emitted.keys() {
        if !counts.contains_key(&(state.clone(), region.clone())) {
            metrics::gauge!(NODES, "state" => state.clone(), "region" => region.clone()).set(0.0);
        }
    }
    for ((state, region), n) in counts {
        metrics::gauge!(NODES, "state" => state.clone(), "region" => region.clone()).set(n as f64);
        emitted.insert((state, region), ());
    }
}
