//! Health, readiness and metrics endpoints for operators and orchestrators.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::cluster::Readiness;
use crate::shared::Shared;

/// The process is up and serving HTTP.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// The node takes new connections: not draining, not fenced, and in a cluster active and
/// linked to every active node of its own region (`Core::readiness`; nodes of other
/// regions it cannot reach are named, but do not make it unready).
pub async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let unavailable = |text: String| (StatusCode::SERVICE_UNAVAILABLE, text).into_response();
    match shared.readiness() {
        Err(why) => unavailable(format!("{why}\n")),
        Ok(Readiness::NotActive) => unavailable("not active in the cluster\n".into()),
        Ok(Readiness::Unlinked(nodes)) => unavailable(format!(
            "not linked to active nodes of its region: {}\n",
            nodes.join(", ")
        )),
        Ok(Readiness::Ready { elsewhere }) if elsewhere.is_empty() => "ready\n".into_response(),
        Ok(Readiness::Ready { elsewhere }) => format!(
            "ready (not linked to nodes of other regions: {})\n",
            elsewhere.join(", ")
        )
        .into_response(),
    }
}

pub async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}
