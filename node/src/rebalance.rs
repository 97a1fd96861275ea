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
use std::time::Duration;

use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::{Resync, Subscribe, Synced};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::membership::ClusterView;
use crate::{route, Shared};

/// How long a rebuilt channel waits for members that do not say they are done.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(2);
/// Sockets per Resync message, to stay far below the mesh frame limit.
const SOCKETS_PER_RESYNC: usize = 256;

/// Which view each member is done with.
#[derive(Default)]
pub struct Progress {
    done: Mutex<HashMap<String, u64>>,
}

impl Progress {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.done.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, node: &str, version: u64) {
        let mut done = self.lock();
        let entry = done.entry(node.to_owned()).or_default();
        *entry = (*entry).max(version);
    }

    /// The newest view every member of `view` (this node included) is done with.
    fn everyone_done(&self, view: &ClusterView) -> u64 {
        let done = self.lock();
        view.members
            .keys()
            .map(|id| done.get(id).copied().unwrap_or(0))
            .min()
            .unwrap_or(0)
    }
}

/// A member is done with `version`.
pub fn synced(shared: &Shared, node: &str, version: u64) {
    shared.progress.record(node, version);
    settle(shared);
}

/// Settles the rebuilt channels whose members are all done, or that waited too long.
pub fn settle(shared: &Shared) {
    let done = shared.progress.everyone_done(&shared.view.borrow());
    for app in shared.apps.all() {
        app.owner
            .settle(done, SETTLE_DEADLINE, &mut route::owner_sink(shared, &app));
    }
}

/// Follows the view until `stop`.
pub fn spawn(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut views = shared.view.subscribe();
        let mut previous = views.borrow_and_update().clone();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
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
                    if shared.resync_all.load(Ordering::Relaxed) {
                        follow(&shared, &previous, &previous.clone());
                    }
                    settle(&shared);
                }
                _ = stop.changed() => return,
            }
        }
    })
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
        app.owner
            .follow_view(&shared.node_id, view, &mut route::owner_sink(shared, &app));
        let parts = app
            .hub
            .parts(|channel| all || moved(previous, view, &app.id, channel));
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
    if !complete {
        // Everything again on the next tick: the owner ignores sockets it already has.
        shared.resync_all.store(true, Ordering::Relaxed);
    }
    route::retry_unsent(shared);
    shared.progress.record(&shared.node_id, view.version);
    route::to_every_member(
        shared,
        Body::Synced(Synced {
            view_version: view.version,
        }),
    );
    settle(shared);
}
