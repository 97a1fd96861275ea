//! `POST /users/{user_id}/terminate_connections` (§11.7).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use relaymesh_proto::codes::ErrorCode;

use super::{json, signed, ApiError};
use crate::Shared;

pub async fn terminate(
    State(shared): State<Arc<Shared>>,
    Path((app_id, user_id)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let signed = signed(&shared, &app_id, request).await?;
    for conn in signed.app.user_connections(&user_id) {
        crate::telemetry::count_error(Some(ErrorCode::Unauthorized.as_u16()), "terminated_by_app");
        conn.close(
            ErrorCode::Unauthorized.as_u16(),
            "You got disconnected by the app.",
        );
    }
    Ok(json(&serde_json::json!({})))
}
