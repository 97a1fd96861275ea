//! Health, readiness and metrics endpoints for operators and orchestrators.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::Shared;

/// The process is up and serving HTTP.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// The node takes new connections (not while draining) and, in a cluster, is active and
/// linked to every other active member.
pub async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if shared.is_fenced() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "fenced: this node lost its lease with the control plane\n",
        )
            .into_response()
    } else if !shared.is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not active in the cluster or not linked to every active member\n",
        )
            .into_response()
    } else {
        "ready\n".into_response()
    }
}

pub async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}
