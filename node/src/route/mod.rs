//! Routing between this node's edge, the owners of channels and the mesh.
//!
//! An edge (a socket's session or an HTTP call) sends an owner-bound message with
//! [`to_owner`] or [`begin`] (`requests.rs`): the ring of the current view names the owner;
//! this node's own [`Owner`](crate::owner::Owner) handles it at once, any other goes over
//! the owner's link. What an owner decides goes through the owner's sink (`dispatch.rs`):
//! to this node's hub directly, to other nodes over their links, in the order the owner
//! decided it. Frames from links arrive in [`receive`] (`receive.rs`), which forwards or
//! refuses what this node does not own. [`tick`] (`tick.rs`) flushes counts, probes lost
//! sends and retries. Without `[mesh]` the node owns every channel, so a standalone node
//! takes the same path without a single encoded message.

mod dispatch;
mod receive;
mod requests;
mod tick;

pub(crate) use dispatch::owner_sink;
pub use receive::receive;
pub use requests::{begin, leave, list_channels, request, to_owner, Waiting};
pub use tick::{retry_unsent, spawn_ticker, tick, TICK};

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::Envelope;
use thiserror::Error;

use crate::cluster::requests::RequestError;
use crate::owner::Origin;
use crate::shared::Shared;
use crate::telemetry;

/// How long an HTTP call waits for the owner's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("the owner of the channel, node {0}, cannot be reached")]
    Unreachable(String),
    #[error("the mesh link to node {0} is full")]
    Busy(String),
    #[error("node {0} did not answer within {REPLY_TIMEOUT:?}")]
    Timeout(String),
    #[error("too many requests are waiting for channel owners")]
    TooManyRequests,
    #[error("node {0} does not know this app yet")]
    UnknownApp(String),
    #[error("this node has not joined its cluster yet")]
    NotInCluster,
    #[error("node {0} lost its lease with the control plane and owns no channel until it registers again")]
    Fenced(String),
    #[error("the channel's owner is changing (reported by node {0}); retry")]
    Moving(String),
}

impl From<RequestError> for RouteError {
    fn from(e: RequestError) -> RouteError {
        match e {
            RequestError::TooMany => RouteError::TooManyRequests,
        }
    }
}

/// Which node owns `channel`: `None` for this node.
fn owner_of(shared: &Shared, app_id: &str, channel: &str) -> Result<Option<String>, RouteError> {
    // Without links this node is alone: it owns everything.
    if shared.config.mesh.listen.is_none() {
        return Ok(None);
    }
    let view = shared.view.borrow();
    // Before its first view, or while no node is active yet, there is no owner.
    match view.owner_of(app_id, channel) {
        None => Err(RouteError::NotInCluster),
        Some(owner) if owner == shared.node_id && shared.is_fenced() => {
            Err(RouteError::Fenced(owner.to_owned()))
        }
        Some(owner) if owner == shared.node_id => Ok(None),
        Some(owner) => Ok(Some(owner.to_owned())),
    }
}

/// A message of this node.
fn envelope(shared: &Shared, app_id: &str, channel: &str, body: Body) -> Envelope {
    Envelope {
        view_version: shared.view.borrow().version,
        origin: shared.node_id.clone(),
        hops: 0,
        app_id: app_id.to_owned(),
        channel: channel.to_owned(),
        incarnation: shared.incarnation,
        body: Some(body),
    }
}

/// This node as the origin of its own messages.
fn me(shared: &Shared) -> Origin<'_> {
    // Without a mesh the node owns everything whatever the view: no view to compare.
    let view_version = match shared.config.mesh.listen {
        Some(_) => shared.view.borrow().version,
        None => 0,
    };
    Origin {
        node: &shared.node_id,
        incarnation: shared.incarnation,
        view_version,
    }
}

pub(crate) fn dropped(peer: &str, reason: &'static str) {
    metrics::counter!(telemetry::MESH_DROPPED, "peer" => peer.to_owned(), "reason" => reason)
        .increment(1);
}

/// Queues one message on the link to `node`.
fn send(shared: &Shared, node: &str, envelope: &Envelope) -> Result<(), RouteError> {
    let Some(link) = shared.peers.link(node) else {
        dropped(node, "no_link");
        return Err(RouteError::Unreachable(node.to_owned()));
    };
    let frame = Bytes::from(envelope.encode_to_vec());
    let len = frame.len() as u64;
    link.try_send(frame).map_err(|e| {
        dropped(node, "send_failed");
        match e {
            crate::mesh::link::LinkError::Full => RouteError::Busy(node.to_owned()),
            _ => RouteError::Unreachable(node.to_owned()),
        }
    })?;
    metrics::counter!(telemetry::MESH_FRAMES_OUT, "peer" => node.to_owned()).increment(1);
    metrics::counter!(telemetry::MESH_BYTES_OUT, "peer" => node.to_owned()).increment(len);
    Ok(())
}

/// Sends `body` to every other node of the view that has a link.
pub(crate) fn to_every_node(shared: &Shared, body: Body) {
    let nodes: Vec<String> = shared
        .view
        .borrow()
        .nodes
        .keys()
        .filter(|id| **id != shared.node_id)
        .cloned()
        .collect();
    let envelope = envelope(shared, "", "", body);
    for node in nodes {
        // A node without a link is settled by the deadline instead.
        let _ = send(shared, &node, &envelope);
    }
}
