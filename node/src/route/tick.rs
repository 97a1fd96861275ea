//! The routing's ticker: throttled subscription counts, probes of lost sends, retries of
//! what could not reach its owner, subscriptions whose owner did not answer.

use std::sync::Weak;
use std::time::{Duration, Instant};

use relaymesh_proto::mesh::envelope::Body;

use super::dispatch::Dispatch;
use super::requests::{leave, to_owner};
use crate::app::App;
use crate::shared::Shared;
use crate::telemetry;

/// How long a subscription waits for its owner before the client gets an error.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

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
