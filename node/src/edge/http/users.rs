//! `POST /users/{user_id}/terminate_connections` (§11.7): the owner of the user's
//! `#server-to-user-` channel closes the user's sockets on every node.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use relaymesh_proto::channel::SERVER_TO_USER_PREFIX;
use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::Terminate;

use super::{json, signed, ApiError};
use crate::route;
use crate::shared::Shared;

pub async fn terminate(
    State(shared): State<Arc<Shared>>,
    Path((app_id, user_id)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let signed = signed(&shared, &app_id, request).await?;
    let channel = format!("{SERVER_TO_USER_PREFIX}{user_id}");
    route::request(&shared, &signed.app, &channel, |request_id| {
        Body::Terminate(Terminate { request_id })
    })
    .await?;
    Ok(json(&serde_json::json!({})))
}
