//! A real node on a free loopback port, and protocol clients to drive it.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use relaymesh_node::config::{AppConfig, Config};
use relaymesh_node::NodeHandle;
use relaymesh_proto::signing;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestNode {
    pub handle: NodeHandle,
    pub addr: SocketAddr,
    pub app: AppConfig,
}

impl TestNode {
    pub async fn start() -> TestNode {
        TestNode::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestNode {
        let mut config = Config::for_test();
        configure(&mut config);
        config.validate().expect("test config is valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = config.apps[0].clone();
        let handle = relaymesh_node::start(config, listener).unwrap();
        let addr = handle.local_addr();
        TestNode { handle, addr, app }
    }

    pub fn ws_url(&self, key: &str) -> String {
        format!(
            "ws://{}/app/{key}?protocol=7&client=js&version=8.6.0&flash=false",
            self.addr
        )
    }

    /// Connects a client of the first app and reads its connection_established.
    pub async fn connect(&self) -> Client {
        let mut client = self.connect_raw(&self.ws_url(&self.app.key)).await;
        let frame = client.next().await;
        assert_eq!(
            frame.event, "pusher:connection_established",
            "{}",
            frame.raw
        );
        client.socket_id = frame.data["socket_id"].as_str().unwrap().to_owned();
        assert!(frame.data["activity_timeout"].as_u64().unwrap() > 0);
        client
    }

    /// Opens a WebSocket without reading anything.
    pub async fn connect_raw(&self, url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client {
            ws,
            socket_id: String::new(),
            key: self.app.key.clone(),
            secret: self.app.secret.clone(),
        }
    }

    /// A signed HTTP API call; returns the status and the JSON body (Null if not JSON).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        params: &[(&str, &str)],
    ) -> (u16, Value) {
        self.api_as(&self.app.key, &self.app.secret, method, path, body, params)
            .await
    }

    pub async fn api_as(
        &self,
        key: &str,
        secret: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
        params: &[(&str, &str)],
    ) -> (u16, Value) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let body = body.unwrap_or("");
        let query = signing::sign_request(key, secret, method, path, params, body.as_bytes(), now);
        self.raw_http(method, &format!("{path}?{query}"), body)
            .await
    }

    /// An HTTP request exactly as given (no signing).
    pub async fn raw_http(&self, method: &str, path_and_query: &str, body: &str) -> (u16, Value) {
        let url = format!("http://{}{path_and_query}", self.addr);
        let request = reqwest::Client::new()
            .request(method.parse().unwrap(), url)
            .header("content-type", "application/json");
        let request = if body.is_empty() {
            request
        } else {
            request.body(body.to_owned())
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Publishes one event through the HTTP API and asserts it was accepted.
    pub async fn trigger(&self, channels: &[&str], name: &str, data: &str) {
        let body = json!({"name": name, "data": data, "channels": channels}).to_string();
        let (status, reply) = self
            .api("POST", "/apps/app-id/events", Some(&body), &[])
            .await;
        assert_eq!(status, 200, "{reply}");
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.addr);
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }
}

/// One decoded server frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub event: String,
    pub channel: Option<String>,
    /// `data`, decoded from its string form when it holds JSON.
    pub data: Value,
    pub user_id: Option<String>,
    pub raw: String,
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub socket_id: String,
    key: String,
    secret: String,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Code(u16),
    NoCode,
}

impl Client {
    pub async fn send(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    /// The next text frame; fails the test after [`WAIT`].
    pub async fn next(&mut self) -> Frame {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection ended")
                .expect("websocket error");
            if let Message::Text(text) = message {
                return decode(&text);
            }
        }
    }

    /// Skips frames until one named `event` arrives.
    pub async fn wait_for(&mut self, event: &str) -> Frame {
        loop {
            let frame = self.next().await;
            if frame.event == event {
                return frame;
            }
        }
    }

    /// Asserts that no text frame arrives within `window`.
    pub async fn assert_silent(&mut self, window: Duration) {
        match tokio::time::timeout(window, self.ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Text(text)))) => panic!("unexpected frame {text}"),
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn closed(&mut self) -> (Closed, Vec<Frame>) {
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close")
            {
                Some(Ok(Message::Text(text))) => frames.push(decode(&text)),
                Some(Ok(Message::Close(Some(close)))) => {
                    return (Closed::Code(u16::from(close.code)), frames)
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    return (Closed::NoCode, frames)
                }
                Some(Ok(_)) => {}
            }
        }
    }

    pub fn sign(&self, string_to_sign: &str) -> String {
        signing::sign_auth(&self.key, &self.secret, string_to_sign)
    }

    pub async fn subscribe(&mut self, channel: &str) -> Frame {
        let auth = match channel {
            c if c.starts_with("private-") => self.sign(&format!("{}:{c}", self.socket_id)),
            _ => String::new(),
        };
        self.send(json!({"event":"pusher:subscribe","data":{"auth":auth,"channel":channel}}))
            .await;
        let frame = self.succeeded().await;
        assert_eq!(frame.channel.as_deref(), Some(channel));
        frame
    }

    /// The next frame, which must be `pusher_internal:subscription_succeeded`.
    async fn succeeded(&mut self) -> Frame {
        let frame = self.next().await;
        assert_eq!(
            frame.event, "pusher_internal:subscription_succeeded",
            "{}",
            frame.raw
        );
        frame
    }

    /// Joins a presence channel as `user_id`; returns the subscription_succeeded frame.
    pub async fn join(&mut self, channel: &str, user_id: &str, info: Value) -> Frame {
        let channel_data = json!({"user_id": user_id, "user_info": info}).to_string();
        let auth = self.sign(&format!("{}:{channel}:{channel_data}", self.socket_id));
        self.send(json!({"event":"pusher:subscribe","data":{"auth":auth,"channel":channel,"channel_data":channel_data}}))
            .await;
        self.succeeded().await
    }

    pub async fn sign_in(&mut self, user_data: &str) -> Frame {
        let auth = self.sign(&format!("{}::user::{user_data}", self.socket_id));
        self.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}}))
            .await;
        self.next().await
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while self.ws.next().await.is_some() {}
        })
        .await;
    }
}

pub fn decode(text: &str) -> Frame {
    let value: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("server sent invalid JSON {text}: {e}"));
    let data = match &value["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
        other => other.clone(),
    };
    Frame {
        event: value["event"].as_str().unwrap_or_default().to_owned(),
        channel: value["channel"].as_str().map(str::to_owned),
        data,
        user_id: value["user_id"].as_str().map(str::to_owned),
        raw: text.to_owned(),
    }
}
