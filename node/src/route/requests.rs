//! Requests from this node's edge to the owners of channels: sending owner-bound messages,
//! waiting for replies ([`Waiting`]), leaves, and the listing gathered from every node.

use std::time::Instant;

use relaymesh_proto::control::NodeState;
use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::{reply, ChannelEntry, ListChannels, Reply};
use tokio::sync::oneshot;

use super::dispatch::owner_receive;
use super::{envelope, me, owner_of, send, RouteError, REPLY_TIMEOUT};
use crate::app::App;
use crate::cluster::requests::Waiter;
use crate::outbox::SocketId;
use crate::shared::Shared;
use crate::telemetry;

impl Waiter for oneshot::Sender<Reply> {
    fn answer(self, reply: Reply) {
        let _ = self.send(reply);
    }

    fn is_gone(&self) -> bool {
        self.is_closed()
    }
}

/// Registers a request to `node`: its id and where its answer arrives.
fn register(shared: &Shared, node: &str) -> Result<(u64, oneshot::Receiver<Reply>), RouteError> {
    let (tx, rx) = oneshot::channel();
    let id = shared.cluster().requests.register(node, tx)?;
    Ok((id, rx))
}

/// Sends an owner-bound message about `channel` from this node's edge.
pub fn to_owner(shared: &Shared, app: &App, channel: &str, body: Body) -> Result<(), RouteError> {
    match owner_of(shared, &app.id, channel)? {
        None => {
            owner_receive(shared, app, shared.now(), me(shared), channel, body);
            Ok(())
        }
        Some(node) => send(shared, &node, &envelope(shared, &app.id, channel, body)),
    }
}

/// A request sent to an owner, waiting for its answer.
pub struct Waiting {
    id: u64,
    node: String,
    answer: oneshot::Receiver<Reply>,
    sent: Instant,
    local: bool,
}

/// Sends a request (`make` gets its id) to the owner of `channel`; [`Waiting::answer`]
/// waits for the reply. Several requests can be sent before waiting for any.
pub fn begin(
    shared: &Shared,
    app: &App,
    channel: &str,
    make: impl FnOnce(u64) -> Body,
) -> Result<Waiting, RouteError> {
    let owner = owner_of(shared, &app.id, channel)?;
    let node = owner.as_deref().unwrap_or(&shared.node_id);
    let (id, answer) = register(shared, node)?;
    let waiting = Waiting {
        id,
        node: node.to_owned(),
        answer,
        sent: Instant::now(),
        local: owner.is_none(),
    };
    if let Err(e) = to_owner(shared, app, channel, make(id)) {
        shared.cluster().requests.cancel(id);
        return Err(e);
    }
    Ok(waiting)
}

impl Waiting {
    pub async fn answer(self, shared: &Shared) -> Result<Reply, RouteError> {
        let reply = match tokio::time::timeout(REPLY_TIMEOUT, self.answer).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(RouteError::Unreachable(self.node)),
            Err(_) => {
                shared.cluster().requests.cancel(self.id);
                return Err(RouteError::Timeout(self.node));
            }
        };
        let reply = checked(reply, &self.node)?;
        let owner = if self.local { "local" } else { "remote" };
        metrics::histogram!(telemetry::PUBLISH_TO_OWNER, "owner" => owner)
            .record(self.sent.elapsed().as_secs_f64());
        Ok(reply)
    }

    /// The answer if it came (a deterministic test polls instead of waiting); `None`
    /// while it is still awaited.
    pub fn try_answer(&mut self) -> Option<Result<Reply, RouteError>> {
        match self.answer.try_recv() {
            Ok(reply) => Some(checked(reply, &self.node)),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => {
                Some(Err(RouteError::Unreachable(self.node.clone())))
            }
        }
    }
}

/// A reply's refusal as an error.
fn checked(reply: Reply, node: &str) -> Result<Reply, RouteError> {
    match reply::Status::try_from(reply.status) {
        Ok(reply::Status::UnknownApp) => Err(RouteError::UnknownApp(node.to_owned())),
        Ok(reply::Status::Fenced) => Err(RouteError::Fenced(node.to_owned())),
        Ok(reply::Status::Moving) => Err(RouteError::Moving(node.to_owned())),
        _ => Ok(reply),
    }
}

/// Tells the owner of `channel` that `socket` left it; until it can be told, the hub
/// keeps the leave and it goes again on the next retry.
pub fn leave(shared: &Shared, app: &App, channel: &str, socket: SocketId) {
    // A retried leave still covers every attempt: one made since would have cancelled it.
    let body = Body::Unsubscribe(relaymesh_proto::mesh::Unsubscribe {
        socket: Some(socket.into()),
        attempt: app.hub.attempts_so_far(),
    });
    if let Err(e) = to_owner(shared, app, channel, body) {
        tracing::debug!(channel, error = %e, "the owner will hear of the leave later");
        app.hub.leave_unsent(channel, socket);
    }
}

/// Sends a request to the owner of `channel` and waits for the answer.
pub async fn request(
    shared: &Shared,
    app: &App,
    channel: &str,
    make: impl FnOnce(u64) -> Body,
) -> Result<Reply, RouteError> {
    begin(shared, app, channel, make)?.answer(shared).await
}

/// The occupied channels of `app` starting with `prefix`, gathered from every node (each
/// answers for the channels it owns). Fails when a node of the view cannot be asked.
pub async fn list_channels(
    shared: &Shared,
    app: &App,
    prefix: &str,
) -> Result<Vec<ChannelEntry>, RouteError> {
    let mut nodes = vec![shared.node_id.clone()];
    if shared.config.mesh.listen.is_some() {
        if shared.view.borrow().has_no_owner() {
            return Err(RouteError::NotInCluster);
        }
        // Active nodes own channels; draining ones may still hold theirs. Joining
        // nodes own nothing yet.
        let holders = [NodeState::Active as i32, NodeState::Draining as i32];
        let view = shared.view.borrow();
        nodes.extend(
            view.nodes
                .iter()
                .filter(|(id, m)| **id != shared.node_id && holders.contains(&m.state))
                .map(|(id, _)| id.clone()),
        );
    }
    let mut asked = Vec::with_capacity(nodes.len());
    for node in nodes {
        let (id, answer) = register(shared, &node)?;
        let body = Body::ListChannels(ListChannels {
            request_id: id,
            prefix: prefix.to_owned(),
        });
        let local = node == shared.node_id;
        if local {
            owner_receive(shared, app, shared.now(), me(shared), "", body);
        } else if let Err(e) = send(shared, &node, &envelope(shared, &app.id, "", body)) {
            shared.cluster().requests.cancel(id);
            return Err(e);
        }
        asked.push(Waiting {
            id,
            node,
            answer,
            sent: Instant::now(),
            local,
        });
    }
    let mut channels = Vec::new();
    for waiting in asked {
        channels.extend(waiting.answer(shared).await?.channels);
    }
    Ok(channels)
}
