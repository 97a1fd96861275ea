//! The shell of the cluster core (`cluster/core.rs`): it feeds the core the view changes,
//! lease news, links and ticks, and carries out what the core decides.
//!
//! When the view changes, channels move between owners. Each node, as an owner, drops
//! the channels it no longer owns and the sockets of nodes that left or restarted
//! (`Owner::follow_view`); as an edge, it sends its part of every channel whose owner
//! changed to the new owner (`Resync`: its sockets, their presence members, the members
//! its subscribers were told about), asks again for its pending subscriptions, and then
//! tells every other node it is done (`Synced`). A new owner holds a rebuilt channel's
//! messages back until every node is done with that view, or `mesh.settle_deadline_ms` passed,
//! then settles it (`Owner::settle`): only the members that really left are removed, so no
//! one sees a spurious member_removed or member_added. Edges are the truth for their own
//! sockets; owner state is rebuilt from them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use relaymesh_proto::codes::ErrorCode;
use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::{Envelope, Resync, Subscribe};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::cluster::{ClusterView, Input, Output};
use crate::shared::Shared;
use crate::{route, telemetry};

/// How often the core ticks: fencing, lease news, settling deadlines.
pub const TICK: Duration = Duration::from_millis(100);
/// Sockets per Resync message, to stay far below the mesh frame limit.
const SOCKETS_PER_RESYNC: usize = 256;

/// Tells the core `input` at `now` and carries out what it decides.
pub fn input(shared: &Shared, now: Instant, input: Input) {
    let outputs = shared.cluster().handle(now, input);
    for output in outputs {
        carry_out(shared, now, output);
    }
}

fn carry_out(shared: &Shared, now: Instant, output: Output) {
    match output {
        Output::Resync {
            previous,
            view,
            all,
        } => {
            let complete = resync(shared, &previous, &view, all);
            let version = view.version;
            input(shared, now, Input::Resynced { version, complete });
        }
        Output::RetryUnsent => route::retry_unsent(shared),
        Output::ResyncOwnedBy(node) => {
            let view = shared.view.borrow().clone();
            for app in shared.apps.all() {
                let owned_there = |channel: &str| {
                    (view.owner_of(&app.id, channel) == Some(node.as_str())).then_some(false)
                };
                send_parts(shared, &app, &view, owned_there);
            }
        }
        Output::TellNodes(synced) => route::to_every_node(shared, Body::Synced(synced)),
        Output::TakeOver(takeover) => {
            for app in shared.apps.all() {
                app.owner.take_over(takeover.clone());
            }
        }
        Output::Settle { done, overdue } => {
            for app in shared.apps.all() {
                let mut sink = route::owner_sink(shared, &app);
                app.owner.settle(now, done, overdue, &mut sink);
            }
        }
        Output::Fence => {
            metrics::gauge!(telemetry::FENCED).set(1.0);
            tracing::warn!("lease lost: this node owns no channel until it registers again");
            for app in shared.apps.all() {
                app.owner.forget_all();
            }
        }
        Output::Unfence => {
            metrics::gauge!(telemetry::FENCED).set(0.0);
            tracing::info!("lease regained: owning channels again");
        }
        Output::SendClientsAway => {
            // Out of the cluster for its peers (they removed its sockets): its clients get
            // nothing more here, so they are asked to reconnect to a node in the cluster.
            tracing::warn!("fenced too long: asking clients to reconnect to another node");
            for app in shared.apps.all() {
                app.close_all(
                    ErrorCode::ReconnectImmediately.as_u16(),
                    "Node lost its cluster: reconnect to another node",
                );
            }
        }
    }
}

/// One frame from the link to `peer`: lease news go to the core, the rest to routing.
pub fn receive(shared: &Shared, now: Instant, peer: &str, frame: Bytes) {
    let mut envelope = match Envelope::decode(frame) {
        Ok(envelope) => envelope,
        Err(e) => {
            tracing::warn!(peer, error = %e, "undecodable mesh message");
            return route::dropped(peer, "malformed");
        }
    };
    match envelope.body.take() {
        None => route::dropped(peer, "empty"),
        Some(Body::Synced(synced)) => {
            let news = Input::Synced {
                from: envelope.origin,
                version: synced.view_version,
                renewed_ago: synced.lease_renewed_ms_ago.map(Duration::from_millis),
            };
            input(shared, now, news);
        }
        Some(body) => route::receive(shared, now, peer, envelope, body),
    }
}

/// Follows the view until `stop`, and ticks the core.
pub fn spawn(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut views = shared.view.subscribe();
        let mut tick = tokio::time::interval(TICK);
        metrics::gauge!(telemetry::FENCED).set(0.0);
        loop {
            tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let view = views.borrow_and_update().clone();
                    input(&shared, shared.now(), Input::View(view));
                }
                _ = tick.tick() => input(&shared, shared.now(), Input::Tick),
                _ = stop.changed() => return,
            }
        }
    })
}

/// Owners follow `view`; this node's part of every channel that moved since `previous`
/// (every channel when `all`) goes to its owner. False when an owner could not be reached.
fn resync(shared: &Shared, previous: &ClusterView, view: &ClusterView, all: bool) -> bool {
    if shared.config.mesh.listen.is_none() {
        return true;
    }
    let mut complete = true;
    for app in shared.apps.all() {
        let mut sink = route::owner_sink(shared, &app);
        app.owner.follow_view(&shared.node_id, view, &mut sink);
        let moved = |channel: &str| {
            let moved = view.moved_since(previous, &app.id, channel);
            (all || moved).then_some(moved)
        };
        complete &= send_parts(shared, &app, view, moved);
    }
    complete
}

/// Sends this node's part of every channel `select` picks (saying whether its owner
/// changed) to the channel's owner in `view`, whole: first to last message. False when
/// an owner could not be reached.
fn send_parts(
    shared: &Shared,
    app: &App,
    view: &ClusterView,
    select: impl Fn(&str) -> Option<bool>,
) -> bool {
    let mut complete = true;
    let attempts_so_far = app.hub.attempts_so_far();
    let parts = app.hub.parts(
        select,
        |channel| view.owner_of(&app.id, channel).map(str::to_owned),
        view.version,
    );
    for part in parts {
        let mut told = part.told;
        let chunks = part.sockets.chunks(SOCKETS_PER_RESYNC).count();
        for (i, sockets) in part.sockets.chunks(SOCKETS_PER_RESYNC).enumerate() {
            let resync = Resync {
                first: i == 0,
                last: i + 1 == chunks,
                attempts_so_far,
                sockets: sockets
                    .iter()
                    .map(|(socket, member)| Subscribe {
                        socket: Some((*socket).into()),
                        member: member.clone(),
                        ..Subscribe::default()
                    })
                    .collect(),
                told_members: std::mem::take(&mut told),
                occupied: part.occupied,
            };
            if let Err(e) = route::to_owner(shared, app, &part.channel, Body::Resync(resync)) {
                tracing::debug!(channel = &*part.channel, error = %e, "resync waits for its owner");
                complete = false;
            }
        }
    }
    complete
}
