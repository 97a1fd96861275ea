//! The WebSocket upgrade on `/app/{key}`: checks the HTTP side of the handshake, answers
//! 101, then takes the raw TCP stream back from hyper and hands it to the connection task.
//! Pusher-level refusals (unknown key, quota, protocol version) happen after the upgrade,
//! as a `pusher:error` frame and a close, which is what pusher-js understands (§2.2).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hyper_util::rt::TokioIo;
use relaymesh_proto::codes::ErrorCode;
use relaymesh_proto::signing::parse_query;
use sha1::{Digest, Sha1};
use tokio::net::TcpStream;

use crate::app::AdmitError;
use crate::edge::ws::{connection, session::Session};
use crate::outbox::Conn;
use crate::shared::Shared;

const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The Pusher protocol check of §2.1: `protocol` 4..=7 is accepted.
fn check_protocol(query: Option<&str>) -> Result<(), (ErrorCode, &'static str)> {
    let params = parse_query(query.unwrap_or(""));
    match params
        .iter()
        .find(|(k, _)| k == "protocol")
        .map(|(_, v)| v.as_str())
    {
        None => Err((ErrorCode::NoProtocol, "No protocol version supplied")),
        Some(v) if matches!(v.parse::<u8>(), Ok(4..=7)) => Ok(()),
        Some(_) => Err((
            ErrorCode::UnsupportedProtocol,
            "Unsupported protocol version",
        )),
    }
}

pub async fn upgrade(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let headers = request.headers();
    let is_websocket = header_has_token(headers, header::UPGRADE, "websocket")
        && header_has_token(headers, header::CONNECTION, "upgrade");
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let Some(client_key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| accept_key(k.as_bytes()))
    else {
        return (
            StatusCode::BAD_REQUEST,
            "Expected a WebSocket upgrade on /app/{key}\n",
        )
            .into_response();
    };
    if !is_websocket || !version_ok {
        return (
            StatusCode::BAD_REQUEST,
            "Expected a WebSocket upgrade (version 13) on /app/{key}\n",
        )
            .into_response();
    }
    let Ok(accept) = HeaderValue::from_str(&client_key) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let verdict = check_protocol(query.as_deref());
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(request).await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
        };
        let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => parts,
            Err(_) => return tracing::error!("upgraded connection is not a TCP stream"),
        };
        let stream = parts.io.into_inner();
        let _ = stream.set_nodelay(true);
        start_session(shared, key, verdict, stream, parts.read_buf).await;
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

async fn start_session(
    shared: Arc<Shared>,
    key: String,
    verdict: Result<(), (ErrorCode, &'static str)>,
    stream: TcpStream,
    leftover: bytes::Bytes,
) {
    if let Err((code, message)) = verdict {
        return connection::refuse(stream, code, message).await;
    }
    if shared.is_draining() {
        return connection::refuse(
            stream,
            ErrorCode::ReconnectImmediately,
            "Node is shutting down",
        )
        .await;
    }
    if shared.is_fenced() {
        return connection::refuse(
            stream,
            ErrorCode::ReconnectImmediately,
            "Node lost its cluster: reconnect to another node",
        )
        .await;
    }
    let Some(app) = shared.apps.by_key(&key) else {
        return connection::refuse(stream, ErrorCode::AppNotFound, "App key does not exist").await;
    };
    let conn = Arc::new(Conn::new(
        shared.next_socket_id(),
        shared.config.outbox_frames_max,
        shared.config.outbox_bytes_max,
    ));
    match app.admit(&conn) {
        Ok(()) => {}
        Err(AdmitError::Disabled) => {
            return connection::refuse(stream, ErrorCode::AppDisabled, "App is disabled").await;
        }
        Err(AdmitError::OverQuota) => {
            return connection::refuse(
                stream,
                ErrorCode::OverConnectionQuota,
                "App is over its connection quota",
            )
            .await;
        }
    }
    let established = relaymesh_proto::frame::connection_established(
        &conn.socket_id.to_string(),
        shared.config.activity_timeout_secs,
    );
    conn.push_text(&established);
    let session = Session::new(shared.clone(), app, conn);
    // A task of its own: the upgrade's state is freed instead of riding along for the
    // connection's whole life (about 600 bytes per idle connection).
    tokio::spawn(connection::run(stream, leftover, session, shared));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_rfc6455_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn protocol_versions() {
        assert!(check_protocol(Some("protocol=7&client=js")).is_ok());
        assert!(check_protocol(Some("protocol=4")).is_ok());
        assert_eq!(check_protocol(None).unwrap_err().0, ErrorCode::NoProtocol);
        assert_eq!(
            check_protocol(Some("protocol=3")).unwrap_err().0,
            ErrorCode::UnsupportedProtocol
        );
        assert_eq!(
            check_protocol(Some("protocol=x")).unwrap_err().0,
            ErrorCode::UnsupportedProtocol
        );
    }
}
