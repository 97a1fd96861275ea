//! Routing between this node's edge, the owners of channels and the mesh.
//!
//! An edge (a socket's session or an HTTP call) sends an owner-bound message with
//! [`to_owner`] or [`begin`]: the ring of the current view names the owner; this node's own
//! [`Owner`](crate::owner::Owner) handles it at once, any other goes over the owner's link.
//! What an owner decides goes through [`Dispatch`]: to this node's hub directly, to other
//! nodes over their links, in the order the owner decided it. Frames from links arrive in
//! [`receive`]. Without `[mesh]` the node owns every channel, so a standalone node takes
//! the same path without a single encoded message.

use std::sync::Weak;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use relaymesh_proto::codes::ErrorCode;
use relaymesh_proto::control::NodeState;
use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::{reply, ChannelEntry, Envelope, ListChannels, Reply};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::app::App;
use crate::cluster::requests::{RequestError, Waiter};
use crate::frames;
use crate::hub::{Answer, Remote, Sender};
use crate::outbox::SocketId;
use crate::owner::{Origin, Sink};
use crate::shared::Shared;
use crate::telemetry;
use crate::webhooks::WebhookEvent;

/// How long an HTTP call waits for the owner's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Forwards of one message; views that disagree for longer cannot bounce it forever.
const HOPS_MAX: u32 = 2;
/// How long a subscription waits for its owner before the client gets an error.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

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

impl Waiter for oneshot::Sender<Reply> {
    fn answer(self, reply: Reply) {
        let _ = self.send(reply);
    }

    fn is_gone(&self) -> bool {
        self.is_closed()
    }
}

impl From<RequestError> for RouteError {
    fn from(e: RequestError) -> RouteError {
        match e {
            RequestError::TooMany => RouteError::TooManyRequests,
        }
    }
}

/// Registers a request to `node`: its id and where its answer arrives.
fn register(shared: &Shared, node: &str) -> Result<(u64, oneshot::Receiver<Reply>), RouteError> {
    let (tx, rx) = oneshot::channel();
    let id = shared.cluster().requests.register(node, tx)?;
    Ok((id, rx))
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
/// answers for the channels it owns). Fails when a member of the view cannot be asked.
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
        // Active members own channels; draining ones may still hold theirs. Joining
        // members own nothing yet.
        let holders = [NodeState::Active as i32, NodeState::Draining as i32];
        let view = shared.view.borrow();
        nodes.extend(
            view.members
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

/// Where an owner's decisions go: this node's hub, or the link to another node.
struct Dispatch<'a> {
    shared: &'a Shared,
    app: &'a App,
}

impl Sink for Dispatch<'_> {
    fn send(&mut self, node: &str, channel: &str, body: Body) {
        if node == self.shared.node_id {
            edge_receive(self.shared, self.app, channel, body, None);
        } else {
            let numbered = matches!(&body, Body::Deliver(d) if d.seq > 0);
            let envelope = envelope(self.shared, &self.app.id, channel, body);
            // The node sees the gap in the numbers with the channel's next frame, or with
            // the probe the next tick sends it.
            if send(self.shared, node, &envelope).is_err() && numbered {
                self.shared.lost_sends.add(&self.app.id, channel, node);
            }
        }
    }

    fn webhook(&mut self, event: WebhookEvent) {
        self.app.webhooks.raise(event);
    }
}

fn owner_receive(
    shared: &Shared,
    app: &App,
    now: Instant,
    origin: Origin<'_>,
    channel: &str,
    body: Body,
) {
    let mut dispatch = Dispatch { shared, app };
    app.owner.handle(now, origin, channel, body, &mut dispatch);
}

/// An edge-bound message from an owner (this node's or another's).
fn edge_receive(shared: &Shared, app: &App, channel: &str, body: Body, sender: Sender<'_>) {
    match body {
        Body::Deliver(deliver) => {
            let delivered = app.hub.deliver(channel, &deliver, sender);
            app.count_delivered(delivered);
        }
        Body::SubscribeResult(result) => {
            if let Some(socket) = result.socket.map(SocketId::from) {
                let answer = Answer {
                    socket,
                    attempt: result.attempt,
                    owner: sender.map_or(&*shared.node_id, |s| s.node).into(),
                    accepted: result.accepted,
                    frames: result.frames,
                    roster: result.roster,
                    seq: result.seq,
                };
                app.hub.complete(channel, answer, sender);
            }
        }
        Body::Reply(reply) => shared.cluster().requests.complete(reply),
        Body::CloseSockets(_) => {
            let code = ErrorCode::Unauthorized.as_u16();
            let closed =
                app.hub
                    .close_subscribers(channel, code, "You got disconnected by the app.");
            for _ in 0..closed {
                telemetry::count_error(Some(code), "terminated_by_app");
            }
        }
        Body::Subscribe(_)
        | Body::Unsubscribe(_)
        | Body::Publish(_)
        | Body::Query(_)
        | Body::Terminate(_)
        | Body::ListChannels(_)
        | Body::Resync(_)
        | Body::Synced(_) => {}
    }
}

fn is_owner_bound(body: &Body) -> bool {
    matches!(
        body,
        Body::Subscribe(_)
            | Body::Unsubscribe(_)
            | Body::Publish(_)
            | Body::Query(_)
            | Body::Terminate(_)
            | Body::Resync(_)
    )
}

fn request_id(body: &Body) -> u64 {
    match body {
        Body::Publish(p) => p.request_id,
        Body::Query(q) => q.request_id,
        Body::Terminate(t) => t.request_id,
        Body::ListChannels(l) => l.request_id,
        _ => 0,
    }
}

/// One message from another node (`rebalance::receive` decoded it and took the lease
/// news): edge-bound ones go to the hub, owner-bound ones to the owner, or on to the owner
/// of this node's newer view (at most [`HOPS_MAX`] hops).
pub fn receive(shared: &Shared, now: Instant, peer: &str, envelope: Envelope, body: Body) {
    let Some(app) = shared.apps.by_id(&envelope.app_id) else {
        dropped(peer, "unknown_app");
        let id = request_id(&body);
        if id != 0 {
            let answer = Reply {
                request_id: id,
                status: reply::Status::UnknownApp as i32,
                ..Reply::default()
            };
            let answer = self::envelope(shared, &envelope.app_id, "", Body::Reply(answer));
            let _ = send(shared, &envelope.origin, &answer);
        }
        return;
    };
    let origin = Origin {
        node: &envelope.origin,
        incarnation: envelope.incarnation,
        view_version: envelope.view_version,
    };
    if matches!(body, Body::ListChannels(_)) {
        return owner_receive(shared, &app, now, origin, "", body);
    }
    if !is_owner_bound(&body) {
        let sender = Some(Remote {
            node: &envelope.origin,
            incarnation: envelope.incarnation,
            view_version: envelope.view_version,
        });
        return edge_receive(shared, &app, &envelope.channel, body, sender);
    }
    // A resync numbers nothing: keep it, the sender's view is newer than this node's.
    if shared.is_fenced() && !matches!(body, Body::Resync(_)) {
        return refuse(shared, &envelope, &body, Refusal::Fenced);
    }
    let view_version = shared.view.borrow().version;
    if let Ok(Some(owner)) = owner_of(shared, &app.id, &envelope.channel) {
        if view_version >= envelope.view_version {
            if envelope.hops >= HOPS_MAX {
                // Views in flight disagree about the owner; accepting here would decide
                // on a channel this node no longer holds.
                return refuse(shared, &envelope, &body, Refusal::Moving);
            }
            let mut envelope = envelope.clone();
            envelope.hops += 1;
            // The owner may not have this view yet: it must hold the channel for the
            // resyncs of this view (a sender whose view is ahead) rather than send it back.
            envelope.view_version = view_version;
            envelope.body = Some(body);
            metrics::counter!(telemetry::MESH_FORWARDED).increment(1);
            // Unsent, the origin's request times out into an error.
            let _ = send(shared, &owner, &envelope);
            return;
        }
    }
    owner_receive(shared, &app, now, origin, &envelope.channel, body);
}

/// Why an owner-bound message is refused.
#[derive(Clone, Copy)]
enum Refusal {
    Fenced,
    Moving,
}

/// Answers what asks for an answer with an error and drops the rest.
fn refuse(shared: &Shared, envelope: &Envelope, body: &Body, why: Refusal) {
    let (reason, status, error) = match why {
        Refusal::Fenced => (
            "fenced",
            reply::Status::Fenced,
            RouteError::Fenced(shared.node_id.clone()),
        ),
        Refusal::Moving => (
            "moving",
            reply::Status::Moving,
            RouteError::Moving(shared.node_id.clone()),
        ),
    };
    dropped(&envelope.origin, reason);
    let id = request_id(body);
    let answer = match body {
        _ if id != 0 => Body::Reply(Reply {
            request_id: id,
            status: status as i32,
            ..Reply::default()
        }),
        // The edge asks again for its pending subscriptions when its view changes, and
        // a view change is on its way.
        Body::Subscribe(_) if matches!(why, Refusal::Moving) => return,
        Body::Subscribe(subscribe) => {
            let text = relaymesh_proto::frame::subscription_error(
                &envelope.channel,
                "ServiceUnavailable",
                &error.to_string(),
                503,
            );
            Body::SubscribeResult(relaymesh_proto::mesh::SubscribeResult {
                socket: subscribe.socket,
                accepted: false,
                frames: vec![frames::text_frame(&text)],
                roster: Vec::new(),
                seq: 0,
                attempt: subscribe.attempt,
            })
        }
        _ => return,
    };
    let answer = self::envelope(shared, &envelope.app_id, &envelope.channel, answer);
    let _ = send(shared, &envelope.origin, &answer);
}

/// Sends `body` to every other node of the view that has a link.
pub(crate) fn to_every_node(shared: &Shared, body: Body) {
    let nodes: Vec<String> = shared
        .view
        .borrow()
        .members
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

/// Carries an owner's decisions outside a request (view changes, settling).
pub(crate) fn owner_sink<'a>(shared: &'a Shared, app: &'a App) -> impl Sink + 'a {
    Dispatch { shared, app }
}

/// How often throttled counts are flushed and late subscriptions failed.
pub const TICK: Duration = Duration::from_secs(1);

/// Every [`TICK`]: [`tick`]. Ends with the node.
pub fn spawn_ticker(shared: Weak<Shared>) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(TICK);
        loop {
            interval.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            tick(&shared, shared.now());
        }
    });
}

/// Sends throttled subscription counts, probes the nodes that frames could not be sent to,
/// sends again what could not reach its owner, and fails subscriptions whose owner did not
/// answer.
pub fn tick(shared: &Shared, now: Instant) {
    retry_unsent(shared);
    for (app_id, channel, node) in shared.lost_sends.take() {
        if let Some(app) = shared.apps.by_id(&app_id) {
            let mut dispatch = Dispatch { shared, app: &app };
            app.owner.probe(&channel, &node, &mut dispatch);
        }
    }
    for app in shared.apps.all() {
        tick_app(shared, &app, now);
    }
}

/// Sends the subscriptions whose owner could not be reached again (on every tick and
/// when a link comes up).
pub fn retry_unsent(shared: &Shared) {
    for app in shared.apps.all() {
        for (channel, socket) in app.hub.take_unsent_leaves() {
            leave(shared, &app, &channel, socket);
        }
        for unsent in app.hub.take_unsent() {
            let body = Body::Subscribe(relaymesh_proto::mesh::Subscribe {
                socket: Some(unsent.socket.into()),
                member: unsent.member,
                attempt: unsent.attempt,
            });
            if to_owner(shared, &app, &unsent.channel, body).is_err() {
                app.hub.mark_unsent(&unsent.channel, unsent.socket);
            }
        }
    }
}

fn tick_app(shared: &Shared, app: &App, now: Instant) {
    if app.config().subscription_count {
        let mut dispatch = Dispatch { shared, app };
        app.owner.flush_subscription_counts(now, &mut dispatch);
    }
    for expired in app.hub.expire_pending(now, SUBSCRIBE_TIMEOUT) {
        telemetry::count_error(Some(503), "owner_did_not_answer");
        let text = relaymesh_proto::frame::subscription_error(
            &expired.channel,
            "ServiceUnavailable",
            "The channel's owner node did not answer; subscribe again",
            503,
        );
        expired.conn.push_text(&text);
        leave(shared, app, &expired.channel, expired.conn.socket_id);
    }
}
