//! Where an owner's decisions go (the owner's [`Sink`]): this node's hub, or the link to
//! another node, in the order the owner decided; and the edge side of what owners send.

use std::time::Instant;

use relaymesh_proto::codes::ErrorCode;
use relaymesh_proto::mesh::envelope::Body;

use super::{envelope, send};
use crate::app::App;
use crate::hub::{Answer, Sender};
use crate::outbox::SocketId;
use crate::owner::{Origin, Sink};
use crate::shared::Shared;
use crate::telemetry;
use crate::webhooks::WebhookEvent;

/// Where an owner's decisions go: this node's hub, or the link to another node.
pub(super) struct Dispatch<'a> {
    pub(super) shared: &'a Shared,
    pub(super) app: &'a App,
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

pub(super) fn owner_receive(
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
pub(super) fn edge_receive(
    shared: &Shared,
    app: &App,
    channel: &str,
    body: Body,
    sender: Sender<'_>,
) {
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

/// Carries an owner's decisions outside a request (view changes, settling).
pub(crate) fn owner_sink<'a>(shared: &'a Shared, app: &'a App) -> impl Sink + 'a {
    Dispatch { shared, app }
}
