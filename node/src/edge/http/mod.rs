//! The Pusher HTTP API (§11) and the ops endpoints, on the same port as the WebSocket side.
//!
//! Every API call is authenticated here, once, by [`signed`]: app lookup, body limit and
//! the request signature with its timestamp window. Handlers get the app and the body.

mod channels;
mod events;
mod ops;
mod users;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use relaymesh_proto::signing::{self, SignedRequest};
use serde::Serialize;

use crate::app::App;
use crate::edge::ws::handshake;
use crate::shared::Shared;
use crate::telemetry;

/// An API failure: its status and a message a developer can act on.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

/// A channel's owner could not take or answer the call: never a silent success.
impl From<crate::route::RouteError> for ApiError {
    fn from(e: crate::route::RouteError) -> ApiError {
        use crate::route::RouteError;
        let status = match e {
            RouteError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            RouteError::Unreachable(_)
            | RouteError::Busy(_)
            | RouteError::TooManyRequests
            | RouteError::UnknownApp(_)
            | RouteError::NotInCluster
            | RouteError::Fenced(_)
            | RouteError::Moving(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        crate::telemetry::count_error(Some(status.as_u16()), "owner_unavailable");
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            code: u16,
        }
        let body = serde_json::to_vec(&Body {
            error: &self.message,
            code: self.status.as_u16(),
        })
        .unwrap_or_default();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// A JSON 200 response.
pub fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// An authenticated API request.
pub struct Signed {
    pub app: Arc<App>,
    pub body: Bytes,
    /// The decoded query parameters (auth parameters included).
    pub query: Vec<(String, String)>,
}

impl Signed {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Authenticates an API request for `app_id`.
pub async fn signed(shared: &Shared, app_id: &str, request: Request) -> Result<Signed, ApiError> {
    let app = shared.apps.by_id(app_id).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("Unknown app id {app_id:?}"))
    })?;
    let (parts, body) = request.into_parts();
    let limit = shared.config.http_body_bytes_max;
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body is over {limit} bytes"),
        )
    })?;
    let raw_query = parts.uri.query().unwrap_or("");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let request = SignedRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        raw_query,
        body: &body,
    };
    let config = app.config();
    signing::verify_request(
        request,
        &config.key,
        &config.secret,
        now,
        shared.config.timestamp_window_secs,
    )
    .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))?;
    if !config.enabled {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "App is disabled"));
    }
    Ok(Signed {
        app,
        query: signing::parse_query(raw_query),
        body,
    })
}

/// Counts every answered request by the kind of route and status.
async fn count_requests(State(_): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let kind = match request.uri().path() {
        p if p.starts_with("/apps/") => "api",
        p if p.starts_with("/app/") => "websocket",
        _ => "ops",
    };
    let response = next.run(request).await;
    metrics::counter!(telemetry::HTTP_REQUESTS, "kind" => kind, "status" => response.status().as_u16().to_string())
        .increment(1);
    response
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "No such endpoint")
}

/// The node's whole HTTP surface.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/app/{key}", get(handshake::upgrade))
        .route("/apps/{app_id}/events", post(events::events))
        .route("/apps/{app_id}/batch_events", post(events::batch_events))
        .route("/apps/{app_id}/channels", get(channels::list))
        .route("/apps/{app_id}/channels/{channel}", get(channels::info))
        .route(
            "/apps/{app_id}/channels/{channel}/users",
            get(channels::users),
        )
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            post(users::terminate),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            count_requests,
        ))
        .with_state(shared)
}

/// Rejects bodies that are not a JSON object of type `T`.
pub fn parse_body<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}")))
}
