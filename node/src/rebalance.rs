//! Following membership changes: when the view changes, channels move between owners.
//!
//! On every new view each node, as an owner, drops the channels it no longer owns and the
//! sockets of nodes that left or restarted (`Owner::follow_view`); as an edge, it sends
//! its part of every channel whose owner changed to the new owner (`Resync`: its sockets,
//! their presence members, the members its subscribers were told about), asks again for
//! its pending subscriptions, and then tells every member it is done (`Synced`). A new
//! owner holds a rebuilt channel's messages back until every member is done with that
//! view, or [`SETTLE_DEADLINE`] passed, then settles it (`Owner::settle`): only the
//! members that really left are removed, so no one sees a spurious member_removed or
//! member_added. Edges are the truth for their own sockets; owner state is rebuilt from
//! them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use relaymesh_proto::control::OUTAGE_GRACE;
use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::{Resync, Subscribe, Synced};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::membership::ClusterView;
use crate::{route, Shared};

/// How long a rebuilt channel waits for members that do not say they are done.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(2);
/// How often the lease is checked for fencing, and settling deadlines.
const FENCE_CHECK: Duration = Duration::from_millis(100);
/// How long a fenced node keeps its clients, in case it registers again at once.
const FENCED_CLIENTS_GRACE: Duration = Duration::from_secs(5);
/// How often (in fence checks) every member hears when this node renewed its lease.
const LEASE_NEWS_EVERY: u32 = 2;
/// Sockets per Resync message, to stay far below the mesh frame limit.
const SOCKETS_PER_RESYNC: usize = 256;

/// What each member last said: the view it is done with, whether it holds its lease.
#[derive(Default)]
pub struct Progress {
    members: Mutex<HashMap<String, Heard>>,
}

#[derive(Clone, Copy)]
struct Heard {
    done: u64,
    /// When the member last renewed its lease, as far as this node can tell.
    renewed_at: Option<Instant>,
}

impl Progress {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Heard>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, node: &str, version: u64, renewed_at: Option<Instant>) {
        let mut members = self.lock();
        let before = members.get(node).map(|h| h.done);
        let done = before.map_or(version, |d| d.max(version));
        if before != Some(done) {
            tracing::debug!(node, done, "member done with a view");
        }
        // Bounded by the view: members that left are forgotten in `forget_gone`.
        members.insert(node.to_owned(), Heard { done, renewed_at });
    }

    fn forget_gone(&self, view: &ClusterView) {
        self.lock().retain(|id, _| view.members.contains_key(id));
    }

    /// The newest view every member of `view` (this node included) is done with.
    pub(crate) fn everyone_done(&self, view: &ClusterView) -> u64 {
        let members = self.lock();
        view.members
            .keys()
            .map(|id| members.get(id).map_or(0, |h| h.done))
            .min()
            .unwrap_or(0)
    }

    /// Whether another member renewed its lease after `after`.
    fn renewed_since(&self, me: &str, after: Instant) -> bool {
        self.lock()
            .iter()
            .any(|(id, h)| id != me && h.renewed_at.is_some_and(|at| at > after))
    }
}

/// A member is done with `version` and last renewed its lease `renewed_ago`.
pub fn synced(shared: &Shared, node: &str, version: u64, renewed_ago: Option<Duration>) {
    let renewed_at = renewed_ago.and_then(|ago| Instant::now().checked_sub(ago));
    shared.progress.record(node, version, renewed_at);
    settle(shared);
}

/// Whether this node must stop owning channels. It has not renewed its lease for half
/// the TTL (so it stops before the control plane expires it and gives its channels to
/// others), and either the cluster goes on without it (another member renewed two
/// heartbeats after this node last did) or it can reach no other member. A control plane
/// that is down for everyone fences no one: nobody renews, and the data plane keeps going
/// with the last view. When it comes back, nodes register again one after another; the
/// control plane gives every member [`OUTAGE_GRACE`] for that, so a node that is not yet
/// back is not left behind during half of it.
pub fn must_fence(shared: &Shared) -> bool {
    if shared.config.control_plane.endpoint.is_none() || !shared.lease.in_doubt() {
        return false;
    }
    let Some(renewed_at) = shared.lease.renewed_at() else {
        return false;
    };
    let view = shared.view.borrow();
    let others: Vec<&String> = view
        .members
        .keys()
        .filter(|id| **id != shared.node_id)
        .collect();
    if others.is_empty() {
        return false;
    }
    let cut_off = others.iter().all(|id| shared.peers.link(id).is_none());
    if cut_off {
        return true;
    }
    let now = Instant::now();
    // Past the TTL by every member's word: the control plane saw no renewal for half of it
    // (their news lags by less than that), so it holds everyone's lease for the grace.
    let outage = now.checked_sub(shared.lease.ttl()).is_some_and(|long_ago| {
        renewed_at < long_ago && !shared.progress.renewed_since(&shared.node_id, long_ago)
    });
    if outage {
        shared.lease.outage_seen(now);
    }
    let coming_back = shared
        .lease
        .outage_seen_at()
        .is_some_and(|at| now.saturating_duration_since(at) < OUTAGE_GRACE / 2);
    let left_behind = shared
        .progress
        .renewed_since(&shared.node_id, renewed_at + 2 * shared.lease.heartbeat());
    left_behind && !coming_back
}

/// Settles the rebuilt channels whose members are all done, or that waited too long.
pub fn settle(shared: &Shared) {
    let done = shared.progress.everyone_done(&shared.view.borrow());
    for app in shared.apps.all() {
        app.owner.settle(
            Instant::now(),
            done,
            SETTLE_DEADLINE,
            &mut route::owner_sink(shared, &app),
        );
    }
}

/// Follows the view until `stop`.
pub fn spawn(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut views = shared.view.subscribe();
        let mut previous = views.borrow_and_update().clone();
        let mut tick = tokio::time::interval(FENCE_CHECK);
        let mut ticks = 0u32;
        let mut fenced_since = None;
        metrics::gauge!(crate::telemetry::FENCED).set(0.0);
        loop {
            tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let view = views.borrow_and_update().clone();
                    follow(&shared, &previous, &view);
                    previous = view;
                }
                _ = tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    if ticks % LEASE_NEWS_EVERY == 0 {
                        tell_members(&shared);
                    }
                    fence(&shared);
                    send_clients_away_when_fenced_long(&shared, &mut fenced_since);
                    if !shared.is_fenced() && shared.resync_all.load(Ordering::Relaxed) {
                        follow(&shared, &previous, &previous.clone());
                    }
                    settle(&shared);
                }
                _ = stop.changed() => return,
            }
        }
    })
}

/// A node that lost its lease drops every channel it owned (others own them now) and
/// says so in its metrics and /readyz; once it registers again, it sends its part of
/// every channel to the owners (the follower asks for that).
pub fn fence(shared: &Shared) {
    let now = must_fence(shared);
    if shared.fenced.swap(now, Ordering::Relaxed) == now {
        return;
    }
    metrics::gauge!(crate::telemetry::FENCED).set(if now { 1.0 } else { 0.0 });
    if now {
        tracing::warn!("lease lost: this node owns no channel until it registers again");
        for app in shared.apps.all() {
            app.owner.forget_all();
        }
        // Members send their parts again only on a view change: registering as a node that
        // lost its state makes one, even if the lease has not run out.
        shared.lease.state_lost();
    } else {
        tracing::info!("lease regained: owning channels again");
    }
}

/// A node fenced for longer than a control-plane restart takes has been out of the
/// cluster for its peers (they removed its sockets): its clients get nothing more here, so
/// they are asked to reconnect (4200), to a node in the cluster.
fn send_clients_away_when_fenced_long(shared: &Shared, fenced_since: &mut Option<Instant>) {
    if !shared.is_fenced() {
        *fenced_since = None;
        return;
    }
    let since = *fenced_since.get_or_insert_with(Instant::now);
    if since.elapsed() >= FENCED_CLIENTS_GRACE {
        tracing::warn!(
            "fenced for {FENCED_CLIENTS_GRACE:?}: asking clients to reconnect to another node"
        );
        for app in shared.apps.all() {
            app.close_all(
                relaymesh_proto::codes::ErrorCode::ReconnectImmediately.as_u16(),
                "Node lost its cluster: reconnect to another node",
            );
        }
        // Again only after another grace: new clients are refused while fenced anyway.
        *fenced_since = Some(Instant::now());
    }
}

/// Whether `channel` of `app` has another owner, or an owner that restarted, in `view`.
fn moved(previous: &ClusterView, view: &ClusterView, app: &str, channel: &str) -> bool {
    let before = previous.ring().owner(app, channel);
    let after = view.ring().owner(app, channel);
    before != after || after.is_some_and(|o| previous.incarnation_of(o) != view.incarnation_of(o))
}

fn follow(shared: &Shared, previous: &ClusterView, view: &ClusterView) {
    if shared.config.mesh.listen.is_none() {
        return;
    }
    let all = shared.resync_all.swap(false, Ordering::Relaxed);
    let mut complete = true;
    for app in shared.apps.all() {
        app.owner.follow_view(
            Instant::now(),
            &shared.node_id,
            previous,
            view,
            &mut route::owner_sink(shared, &app),
        );
        let parts = app.hub.parts(
            |channel| all || moved(previous, view, &app.id, channel),
            |channel| view.ring().owner(&app.id, channel).map(str::to_owned),
            view.version,
        );
        for part in parts {
            let mut told = part.told;
            for sockets in part.sockets.chunks(SOCKETS_PER_RESYNC) {
                let resync = Resync {
                    sockets: sockets
                        .iter()
                        .map(|(socket, member)| Subscribe {
                            socket: Some((*socket).into()),
                            member: member.clone(),
                        })
                        .collect(),
                    told_members: std::mem::take(&mut told),
                };
                if let Err(e) = route::to_owner(shared, &app, &part.channel, Body::Resync(resync)) {
                    tracing::debug!(channel = &*part.channel, error = %e, "resync waits for its owner");
                    complete = false;
                }
            }
        }
    }
    // Requests waiting for a member that left will not be answered.
    for gone in previous
        .members
        .keys()
        .filter(|id| !view.members.contains_key(*id))
    {
        shared.requests.fail_node(gone);
    }
    route::retry_unsent(shared);
    shared.progress.forget_gone(view);
    if complete {
        shared.resynced.fetch_max(view.version, Ordering::Relaxed);
    } else {
        // Everything again on the next tick (owners ignore sockets they already have);
        // until then this node does not say it is done with the view.
        shared.resync_all.store(true, Ordering::Relaxed);
    }
    let done = shared.resynced.load(Ordering::Relaxed);
    shared
        .progress
        .record(&shared.node_id, done, shared.lease.renewed_at());
    tell_members(shared);
    settle(shared);
}

/// Tells every member which view this node finished resyncing and when it last renewed
/// its lease.
fn tell_members(shared: &Shared) {
    let synced = Synced {
        view_version: shared.resynced.load(Ordering::Relaxed),
        lease_renewed_ms_ago: shared
            .lease
            .renewed_at()
            .map(|at| at.elapsed().as_millis() as u64),
    };
    route::to_every_member(shared, Body::Synced(synced));
}
