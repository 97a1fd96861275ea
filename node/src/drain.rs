//! Draining a node without losing what its clients are promised: it takes no new
//! connections, leaves the ring (marked draining at the control plane, it stays in the view
//! while its clients are still here), waits until its channels moved to their new owners,
//! then asks its clients to reconnect elsewhere (4200) and waits for them to go.

use std::sync::Arc;
use std::time::Duration;

use relaymesh_proto::codes::ErrorCode;
use relaymesh_proto::control::NodeState;

use crate::shared::Shared;

/// How long the handover of the node's channels may take before clients are sent away
/// anyway.
const HANDOVER_MAX: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// Drains the node; returns when its clients are gone or after `drain_timeout_secs`.
pub async fn drain(shared: Arc<Shared>) {
    shared.set_draining();
    if shared.config.control_plane.endpoint.is_some() {
        shared.request_drain();
        let handed_over = tokio::time::timeout(HANDOVER_MAX, async {
            loop {
                {
                    let view = shared.view.borrow();
                    let draining = view.state_of(&shared.node_id) == Some(NodeState::Draining);
                    if draining && shared.cluster().everyone_done() >= view.version {
                        return;
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        if handed_over.is_err() {
            tracing::warn!(
                "draining: the handover did not finish in time; sending clients away anyway"
            );
        }
    }
    tracing::info!("draining: asking clients to reconnect to another node");
    for app in shared.apps.all() {
        app.close_all(
            ErrorCode::ReconnectImmediately.as_u16(),
            "Node is draining: reconnect to another node",
        );
    }
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(shared.config.drain_timeout_secs);
    while shared.apps.all().iter().any(|a| a.connection_count() > 0) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("draining: clients still connected at the deadline");
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    shared.drained.send_replace(true);
}
