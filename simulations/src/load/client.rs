//! The Pusher protocol v7 client side, over tokio-tungstenite: connect (from a chosen
//! source address), wait for `pusher:connection_established`, subscribe to public, private
//! and presence channels with auth signed locally from the app secret. Knows nothing of
//! the server behind the URL.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use relaymesh_proto::signing;
use serde_json::{json, Value};
use thiserror::Error;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket (plain `ws://`: the generator measures servers on this machine).
pub type Ws = WebSocketStream<TcpStream>;

/// Read buffer of each client socket: the default 128 KiB is allocated eagerly, which at
/// 10,000s of connections would measure the generator's memory rather than the server's.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Frames before `connection_established` or a subscription's answer that are skipped at
/// most; a server sending more is broken.
const FRAMES_BEFORE_ANSWER_MAX: usize = 64;

/// An application on the server under test.
#[derive(Clone, Debug)]
pub struct App {
    pub id: String,
    pub key: String,
    pub secret: String,
}

/// Where one group of clients connects.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The target's label (reports are broken down by it).
    pub label: String,
    pub addr: SocketAddr,
    /// Full WebSocket URL, `/app/{key}?protocol=7…` included.
    pub url: String,
}

impl Endpoint {
    /// `base` is `ws://host:port` (a path, if any, is replaced by the Pusher one).
    pub fn new(label: &str, base: &str, app_key: &str) -> Result<Endpoint, Failure> {
        let rest = base
            .strip_prefix("ws://")
            .or_else(|| base.strip_prefix("http://"))
            .ok_or_else(|| Failure::Url(format!("{base}: only ws:// URLs are measured")))?;
        let host = rest.split('/').next().unwrap_or_default();
        let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
            .map_err(|e| Failure::Url(format!("{base}: {e}")))?
            .next()
            .ok_or_else(|| Failure::Url(format!("{base}: no address")))?;
        Ok(Endpoint {
            label: label.to_owned(),
            addr,
            url: format!(
                "ws://{host}/app/{app_key}?protocol=7&client=relaymesh-sim&version=0.1.0&flash=false"
            ),
        })
    }
}

/// Why a connection, a subscription or a request failed. `key()` is how errors are
/// counted: by code, never by free text, so the count of keys stays small.
#[derive(Clone, Debug, Error)]
pub enum Failure {
    #[error("{0}")]
    Url(String),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("TCP connect: {0}")]
    Io(std::io::ErrorKind),
    /// The server refused the WebSocket upgrade with this HTTP status.
    #[error("handshake answered HTTP {0}")]
    Handshake(u16),
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// `pusher:error` with this code (`None`: `null` or absent).
    #[error("pusher:error {0:?}")]
    Pusher(Option<i64>),
    /// `pusher:subscription_error` with this status (or type).
    #[error("subscription_error {0}")]
    Subscription(String),
    /// The server closed the connection with this code.
    #[error("closed with {0:?}")]
    Closed(Option<u16>),
    #[error("protocol: {0}")]
    Protocol(&'static str),
}

impl Failure {
    pub fn key(&self) -> String {
        match self {
            Failure::Url(_) => "bad url".into(),
            Failure::Timeout(what) => format!("{what} timeout"),
            Failure::Io(kind) => format!("connect {kind}"),
            Failure::Handshake(status) => format!("handshake http {status}"),
            Failure::WebSocket(_) => "websocket error".into(),
            Failure::Pusher(code) => pusher_error_key(*code),
            Failure::Subscription(status) => format!("subscription_error {status}"),
            Failure::Closed(code) => close_key(*code),
            Failure::Protocol(what) => format!("protocol {what}"),
        }
    }
}

pub fn pusher_error_key(code: Option<i64>) -> String {
    match code {
        Some(code) => format!("pusher:error {code}"),
        None => "pusher:error null".into(),
    }
}

pub fn close_key(code: Option<u16>) -> String {
    match code {
        Some(code) => format!("close {code}"),
        None => "close without code".into(),
    }
}

impl From<tungstenite::Error> for Failure {
    fn from(e: tungstenite::Error) -> Failure {
        match e {
            tungstenite::Error::Http(response) => Failure::Handshake(response.status().as_u16()),
            tungstenite::Error::Io(e) => Failure::Io(e.kind()),
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                Failure::Closed(None)
            }
            other => Failure::WebSocket(other.to_string()),
        }
    }
}

/// A connected client: the socket and the id the server gave it.
pub struct Client {
    pub ws: Ws,
    pub socket_id: String,
}

/// Connects to `endpoint` (from `source`, if given) and waits for
/// `pusher:connection_established`, all within `timeout`.
pub async fn connect(
    endpoint: &Endpoint,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<Client, Failure> {
    tokio::time::timeout(timeout, connect_inner(endpoint, source))
        .await
        .map_err(|_| Failure::Timeout("connect"))?
}

async fn connect_inner(endpoint: &Endpoint, source: Option<IpAddr>) -> Result<Client, Failure> {
    let socket = match endpoint.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| Failure::Io(e.kind()))?;
    if let Some(ip) = source {
        // One source address gives ~28k ephemeral ports; binding spreads them over several.
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| Failure::Io(e.kind()))?;
    }
    let stream = socket
        .connect(endpoint.addr)
        .await
        .map_err(|e| Failure::Io(e.kind()))?;
    // Client frames are small and latency is measured: no Nagle delay.
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(endpoint.url.as_str(), stream, Some(config))
            .await?;
    let frame = answer(&mut ws, |f| f.event == "pusher:connection_established").await?;
    let socket_id = frame
        .data
        .get("socket_id")
        .and_then(Value::as_str)
        .ok_or(Failure::Protocol(
            "connection_established without socket_id",
        ))?
        .to_owned();
    Ok(Client { ws, socket_id })
}

impl Client {
    /// Subscribes and waits for the answer: the `subscription_succeeded` data (the roster on
    /// presence channels) or the refusal.
    pub async fn subscribe(
        &mut self,
        app: &App,
        channel: &str,
        channel_data: Option<&str>,
        timeout: Duration,
    ) -> Result<Value, Failure> {
        let frame = subscribe_frame(app, &self.socket_id, channel, channel_data);
        self.ws
            .send(Message::text(frame))
            .await
            .map_err(Failure::from)?;
        let ws = &mut self.ws;
        let got = tokio::time::timeout(
            timeout,
            answer(ws, |f| {
                f.channel.as_deref() == Some(channel)
                    && f.event == "pusher_internal:subscription_succeeded"
            }),
        )
        .await
        .map_err(|_| Failure::Timeout("subscribe"))??;
        Ok(got.data)
    }

    /// Sends a close frame and lets the socket go without waiting for the answer.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(200), self.ws.close(None)).await;
    }
}

/// `pusher:subscribe` with `auth` for private and presence channels, signed here.
pub fn subscribe_frame(
    app: &App,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    let needs_auth = channel.starts_with("private-") || channel.starts_with("presence-");
    let auth = if needs_auth {
        signing::sign_auth(
            &app.key,
            &app.secret,
            &signing::channel_string_to_sign(socket_id, channel, channel_data),
        )
    } else {
        String::new()
    };
    let mut data = json!({"channel": channel, "auth": auth});
    if let Some(cd) = channel_data {
        data["channel_data"] = Value::String(cd.to_owned());
    }
    json!({"event": "pusher:subscribe", "data": data}).to_string()
}

/// A decoded control frame. `data` is decoded once more when the server sent it as a JSON
/// string (Pusher's double encoding), so it is always the inner value.
#[derive(Debug, Default)]
pub struct Frame {
    pub event: String,
    pub channel: Option<String>,
    pub data: Value,
}

impl Frame {
    pub fn parse(text: &str) -> Option<Frame> {
        let mut v: Value = serde_json::from_str(text).ok()?;
        let event = v.get("event")?.as_str()?.to_owned();
        let channel = v.get("channel").and_then(Value::as_str).map(str::to_owned);
        let data = match v.get_mut("data").map(Value::take) {
            Some(Value::String(s)) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
            Some(other) => other,
            None => Value::Null,
        };
        Some(Frame {
            event,
            channel,
            data,
        })
    }

    /// The failure a `pusher:error` or `pusher:subscription_error` frame stands for.
    pub fn failure(&self) -> Option<Failure> {
        match self.event.as_str() {
            "pusher:error" => Some(Failure::Pusher(
                self.data.get("code").and_then(Value::as_i64),
            )),
            "pusher:subscription_error" | "pusher_internal:subscription_error" => {
                let status = self
                    .data
                    .get("status")
                    .map(|s| s.to_string())
                    .or_else(|| self.data.get("type").map(|t| t.to_string()))
                    .unwrap_or_else(|| "unknown".into());
                Some(Failure::Subscription(status.trim_matches('"').to_owned()))
            }
            _ => None,
        }
    }
}

/// The close code of a close frame.
pub fn close_code(frame: &Option<tungstenite::protocol::CloseFrame>) -> Option<u16> {
    frame.as_ref().map(|f| u16::from(f.code))
}

/// Reads until a frame `wanted` accepts, answering pings; errors and closes fail.
async fn answer(ws: &mut Ws, wanted: impl Fn(&Frame) -> bool) -> Result<Frame, Failure> {
    for _ in 0..FRAMES_BEFORE_ANSWER_MAX {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(close))) => return Err(Failure::Closed(close_code(&close))),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(Failure::Closed(None)),
        };
        let Some(frame) = Frame::parse(&text) else {
            continue;
        };
        if wanted(&frame) {
            return Ok(frame);
        }
        if let Some(failure) = frame.failure() {
            return Err(failure);
        }
        if frame.event == "pusher:ping" {
            ws.send(Message::text(relaymesh_proto::frame::PONG))
                .await
                .map_err(Failure::from)?;
        }
    }
    Err(Failure::Protocol("no answer among the first frames"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_double_encoded_data_and_failures() {
        let f = Frame::parse(
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"presence-x","data":"{\"presence\":{\"count\":1}}"}"#,
        )
        .unwrap();
        assert_eq!(f.data["presence"]["count"], 1);
        let e =
            Frame::parse(r#"{"event":"pusher:error","data":{"code":4301,"message":"m"}}"#).unwrap();
        assert_eq!(e.failure().unwrap().key(), "pusher:error 4301");
        let s = Frame::parse(
            r#"{"event":"pusher:subscription_error","channel":"private-x","data":{"type":"AuthError","error":"e","status":401}}"#,
        )
        .unwrap();
        assert_eq!(s.failure().unwrap().key(), "subscription_error 401");
    }

    #[test]
    fn signs_private_and_presence_subscriptions() {
        // protocol reference §16.1: the Pusher docs' known answer.
        let app = App {
            id: "1".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
        };
        let frame = subscribe_frame(&app, "1234.1234", "private-foobar", None);
        assert!(
            frame.contains("278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"),
            "{frame}"
        );
        let public = subscribe_frame(&app, "1.1", "public", None);
        assert!(public.contains(r#""auth":"""#), "{public}");
    }

    #[test]
    fn endpoint_builds_the_pusher_url() {
        let e = Endpoint::new("eu", "ws://127.0.0.1:6001", "app-key").unwrap();
        assert_eq!(e.addr, "127.0.0.1:6001".parse().unwrap());
        assert!(e
            .url
            .starts_with("ws://127.0.0.1:6001/app/app-key?protocol=7"));
        assert!(Endpoint::new("x", "wss://h:1", "k").is_err());
    }
}
