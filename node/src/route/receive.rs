//! Frames from other nodes: edge-bound ones to the hub, owner-bound ones to this node's
//! owner, forwarded to the owner of a newer view, or refused.

use std::time::Instant;

use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::{reply, Envelope, Reply};

use super::dispatch::{edge_receive, owner_receive};
use super::{dropped, envelope, owner_of, send, RouteError};
use crate::frames;
use crate::hub::Remote;
use crate::owner::Origin;
use crate::shared::Shared;
use crate::telemetry;

/// Forwards of one message; views that disagree for longer cannot bounce it forever.
const HOPS_MAX: u32 = 2;

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
