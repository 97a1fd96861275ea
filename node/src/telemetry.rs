//! Prometheus metrics. Names are constants so call sites and docs agree; the recorder is
//! process-wide (the `metrics` crate has one global recorder), so nodes started in one
//! test process share it.

use std::sync::atomic::AtomicU64;

use metrics_exporter_prometheus::PrometheusHandle;

/// Open WebSocket connections, by app.
pub const CONNECTIONS: &str = "relaymesh_connections";
/// WebSocket connections accepted since start, by app.
pub const CONNECTIONS_TOTAL: &str = "relaymesh_connections_total";
/// Channel subscriptions held by local sockets, by app.
pub const SUBSCRIPTIONS: &str = "relaymesh_subscriptions";
/// Frames received from clients, by app.
pub const MESSAGES_IN: &str = "relaymesh_messages_in_total";
/// Frames queued to clients, by app.
pub const MESSAGES_OUT: &str = "relaymesh_messages_out_total";
/// Events published through the HTTP API or as client events, by app and source.
pub const EVENTS_PUBLISHED: &str = "relaymesh_events_published_total";
/// Errors sent to clients or closes, by Pusher / WebSocket code and reason.
pub const ERRORS: &str = "relaymesh_errors_total";
/// HTTP requests answered, by route kind and status.
pub const HTTP_REQUESTS: &str = "relaymesh_http_requests_total";
/// Webhook requests, by result (delivered, failed attempt, dropped).
pub const WEBHOOKS: &str = "relaymesh_webhook_requests_total";
/// Whether the mesh link to a peer is up (1) or down (0), by peer node id.
pub const MESH_LINK_UP: &str = "relaymesh_mesh_link_up";
/// Frames and bytes received over mesh links, by peer.
pub const MESH_FRAMES_IN: &str = "relaymesh_mesh_frames_in_total";
pub const MESH_BYTES_IN: &str = "relaymesh_mesh_bytes_in_total";
/// Mesh dial attempts, by result.
pub const MESH_DIALS: &str = "relaymesh_mesh_dials_total";
/// Incoming QUIC mesh connections, by result of their handshake (ok, timeout, failed,
/// refused: too many handshakes in progress).
pub const MESH_ACCEPTS: &str = "relaymesh_mesh_accepts_total";
/// Frames and bytes sent over mesh links, by peer.
pub const MESH_FRAMES_OUT: &str = "relaymesh_mesh_frames_out_total";
pub const MESH_BYTES_OUT: &str = "relaymesh_mesh_bytes_out_total";
/// Mesh messages that could not be sent or used, by peer (or "-") and reason.
pub const MESH_DROPPED: &str = "relaymesh_mesh_dropped_total";
/// Messages passed on to the owner of a newer view.
pub const MESH_FORWARDED: &str = "relaymesh_mesh_forwarded_total";
/// Member events from a channel's previous owner that arrived after this node resynced
/// the channel to its new owner (which corrects the members from the resync instead).
pub const STALE_MEMBER_EVENTS: &str = "relaymesh_stale_member_events_total";
/// Frames of a channel that an owner sent this node and that never arrived (a broken or
/// full link): the channel's subscribers here are told to reconnect (4200).
pub const DELIVERY_GAPS: &str = "relaymesh_delivery_gaps_total";
/// Unsubscribes that waited for an unreachable owner beyond the bound; the owner drops
/// the sockets at the node's next resync instead.
pub const LEAVES_DROPPED: &str = "relaymesh_leaves_dropped_total";
/// 1 while the node has lost its lease and acts as owner of nothing.
pub const FENCED: &str = "relaymesh_fenced";
/// Channels this node owns that have subscribers somewhere, by app.
pub const OWNED_CHANNELS: &str = "relaymesh_owned_channels";
/// From sending an HTTP publish to its owner until the owner accepted it, by owner
/// (local or remote).
pub const PUBLISH_TO_OWNER: &str = "relaymesh_publish_to_owner_seconds";
/// Webhook events dropped because the queue was full, by app.
pub const WEBHOOK_EVENTS_DROPPED: &str = "relaymesh_webhook_events_dropped_total";

/// The process-wide Prometheus recorder's handle.
pub fn handle() -> PrometheusHandle {
    relaymesh_proto::observe::prometheus()
}

/// Counts an error sent to a client, labelled by its code.
pub fn count_error(code: Option<u16>, reason: &'static str) {
    let code = code.map_or_else(|| "null".to_owned(), |c| c.to_string());
    metrics::counter!(ERRORS, "code" => code, "reason" => reason).increment(1);
}

/// Counters of one node, read for the load it reports to the control plane.
#[derive(Debug, Default)]
pub struct NodeStats {
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
}
