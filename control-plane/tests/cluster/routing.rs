//! Routing across a mesh (issue 5): three nodes and a control plane on loopback, the
//! channel's owner chosen by the ring, subscribers and publishers on the other nodes, on
//! both transports.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relaymesh_node::config::{AppConfig, MeshTransport};
use relaymesh_node::mesh::tls::ClusterCa;
use relaymesh_proto::ring::Ring;
use relaymesh_proto::signing;
use serde_json::{json, Value};

use crate::support::*;

pub(crate) const APP: &str = "app-id";
pub(crate) const KEY: &str = "app-key";
pub(crate) const SECRET: &str = "app-secret";
/// How long a client must stay silent to show that something was not sent.
const QUIET: Duration = Duration::from_millis(300);

pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Node>,
    pub(crate) cp: ControlPlane,
    ca_dir: std::path::PathBuf,
    transport: MeshTransport,
    _dir: DataDir,
}

impl Cluster {
    /// A control plane and three mesh nodes (`a`, `b`, `c`) serving the development app
    /// (adjusted by `app`), ready: active and linked to each other.
    pub(crate) async fn start(transport: MeshTransport, app: impl Fn(&mut AppConfig)) -> Cluster {
        let mut cluster = Cluster::empty(transport).await;
        for id in ["a", "b", "c"] {
            cluster.add_node(id, &app).await;
        }
        cluster.ready().await;
        cluster
    }

    /// A control plane without nodes.
    pub(crate) async fn empty(transport: MeshTransport) -> Cluster {
        let dir = DataDir::new("routing");
        let ca_dir = dir.path().join("ca");
        ClusterCa::generate().unwrap().save(&ca_dir).unwrap();
        let cp = ControlPlane::start(&dir).await;
        Cluster {
            nodes: Vec::new(),
            cp,
            ca_dir,
            transport,
            _dir: dir,
        }
    }

    /// Starts one more node (not waiting for it to be ready).
    pub(crate) async fn add_node(&mut self, id: &str, app: impl Fn(&mut AppConfig)) {
        let endpoint = self.cp.endpoint();
        self.add_node_at(id, &endpoint, app).await;
    }

    /// Starts one more node that reaches the control plane at `endpoint`.
    pub(crate) async fn add_node_at(
        &mut self,
        id: &str,
        endpoint: &str,
        app: impl Fn(&mut AppConfig),
    ) {
        let (ca_dir, transport) = (self.ca_dir.clone(), self.transport);
        let node = Node::start_configured(endpoint, id, "eu", JOIN_TOKEN, |config| {
            let mut dev = AppConfig::development();
            app(&mut dev);
            config.apps = vec![dev];
            config.mesh.listen = Some("127.0.0.1:0".parse().unwrap());
            config.mesh.dev_ca_dir = Some(ca_dir);
            config.mesh.transport = transport;
        })
        .await;
        self.nodes.push(node);
    }

    /// Waits until every node is active and linked to every other.
    pub(crate) async fn ready(&self) {
        for node in &self.nodes {
            eventually(
                &format!("node {} ready", node.id),
                Duration::from_secs(10),
                || async { (node.readyz().await == 200).then_some(()) },
            )
            .await;
        }
    }

    pub(crate) fn node(&self, id: &str) -> &Node {
        self.nodes.iter().find(|n| n.id == id).unwrap()
    }

    pub(crate) async fn shutdown(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
        self.cp.shutdown().await;
    }
}

/// A channel name starting with `prefix` that the ring of a, b, c gives to `owner`.
pub(crate) fn owned_by(owner: &str, prefix: &str) -> String {
    let ring = Ring::new(["a", "b", "c"]);
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|name| ring.owner(APP, name) == Some(owner))
        .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signed call of the HTTP API; returns the status and the JSON answer.
pub(crate) async fn api(
    node: &Node,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let path = format!("/apps/{APP}{path}");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let query = signing::sign_request(KEY, SECRET, method, &path, params, body.as_bytes(), now());
    let url = format!("http://{}{path}?{query}", node.addr);
    let client = reqwest::Client::new();
    let request = match method {
        "POST" => client
            .post(url)
            .header("content-type", "application/json")
            .body(body),
        _ => client.get(url),
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `GET /channels/{channel}` with `info` (comma-separated attributes, or empty).
pub(crate) async fn channel_info(node: &Node, channel: &str, info: &str) -> (u16, Value) {
    let params: &[(&str, &str)] = if info.is_empty() {
        &[]
    } else {
        &[("info", info)]
    };
    api(node, "GET", &format!("/channels/{channel}"), params, None).await
}

/// `GET /channels/{channel}/users`.
pub(crate) async fn channel_users(node: &Node, channel: &str) -> (u16, Value) {
    api(
        node,
        "GET",
        &format!("/channels/{channel}/users"),
        &[],
        None,
    )
    .await
}

pub(crate) async fn trigger(
    node: &Node,
    channels: &[&str],
    event: &str,
    data: &str,
) -> (u16, Value) {
    let body = json!({"name": event, "channels": channels, "data": data});
    api(node, "POST", "/events", &[], Some(body)).await
}

pub(crate) async fn subscribe_public(client: &mut Client, channel: &str) {
    client
        .send(json!({"event":"pusher:subscribe","data":{"channel":channel}}))
        .await;
    let frame = client.next().await;
    assert_eq!(
        frame.event, "pusher_internal:subscription_succeeded",
        "{}",
        frame.raw
    );
}

/// Joins a presence channel as `user`; returns the roster's user ids.
pub(crate) async fn join_presence(client: &mut Client, channel: &str, user: &str) -> Vec<String> {
    let channel_data = json!({"user_id": user, "user_info": {"name": user}}).to_string();
    let to_sign = signing::channel_string_to_sign(&client.socket_id, channel, Some(&channel_data));
    let auth = signing::sign_auth(KEY, SECRET, &to_sign);
    client
        .send(json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth,"channel_data":channel_data}}))
        .await;
    let frame = client.next().await;
    assert_eq!(
        frame.event, "pusher_internal:subscription_succeeded",
        "{}",
        frame.raw
    );
    let mut ids: Vec<String> = frame.data["presence"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

pub(crate) async fn expect_event(client: &mut Client, event: &str) -> Frame {
    let frame = client.next().await;
    assert_eq!(frame.event, event, "{}", frame.raw);
    frame
}

pub(crate) async fn expect_quiet(client: &mut Client) {
    if let Some(frame) = client.next_within(QUIET).await {
        panic!("expected nothing, got {}", frame.raw);
    }
}

async fn publish_reaches_every_node(transport: MeshTransport) {
    let cluster = Cluster::start(transport, |_| {}).await;
    let channel = owned_by("c", "news-");
    let mut on_a = cluster.node("a").connect(KEY).await;
    let mut on_c = cluster.node("c").connect(KEY).await;
    subscribe_public(&mut on_a, &channel).await;
    subscribe_public(&mut on_c, &channel).await;

    let body =
        json!({"name":"greeting","channels":[channel],"data":"hi","info":"subscription_count"});
    let (status, answer) = api(cluster.node("b"), "POST", "/events", &[], Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["channels"][&channel]["subscription_count"], 2,
        "{answer}"
    );
    for client in [&mut on_a, &mut on_c] {
        let frame = expect_event(client, "greeting").await;
        assert_eq!(frame.data, "hi");
        assert_eq!(frame.raw.matches("greeting").count(), 1);
        expect_quiet(client).await;
    }

    // Cluster-wide queries from the node that has no subscriber.
    let b = cluster.node("b");
    let (status, info) = channel_info(b, &channel, "subscription_count").await;
    assert_eq!(status, 200);
    assert_eq!(info, json!({"occupied": true, "subscription_count": 2}));
    let other = owned_by("a", "other-");
    let mut on_b = b.connect(KEY).await;
    subscribe_public(&mut on_b, &other).await;
    let (status, list) = api(
        b,
        "GET",
        "/channels",
        &[("info", "subscription_count")],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        list,
        json!({"channels": {channel.clone(): {"subscription_count": 2}, other.clone(): {"subscription_count": 1}}})
    );

    // Leaving empties the channel cluster-wide.
    on_a.send(json!({"event":"pusher:unsubscribe","data":{"channel":channel}}))
        .await;
    drop(on_c);
    eventually("the channel to be vacated", WAIT, || async {
        let (_, info) = channel_info(b, &channel, "").await;
        (info == json!({"occupied": false})).then_some(())
    })
    .await;
    let metrics = b.metrics().await;
    for name in [
        "relaymesh_mesh_frames_out_total",
        "relaymesh_mesh_bytes_out_total",
        "relaymesh_publish_to_owner_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from {metrics}");
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn publish_reaches_every_node_over_quic() {
    publish_reaches_every_node(MeshTransport::Quic).await;
}

#[tokio::test]
async fn publish_reaches_every_node_over_grpc() {
    publish_reaches_every_node(MeshTransport::Grpc).await;
}

async fn presence_is_held_by_the_owner(transport: MeshTransport) {
    let cluster = Cluster::start(transport, |_| {}).await;
    let channel = owned_by("c", "presence-room-");
    let mut u1_on_a = cluster.node("a").connect(KEY).await;
    let mut u2_on_b = cluster.node("b").connect(KEY).await;
    let mut u1_on_c = cluster.node("c").connect(KEY).await;

    assert_eq!(join_presence(&mut u1_on_a, &channel, "u1").await, ["u1"]);
    assert_eq!(
        join_presence(&mut u2_on_b, &channel, "u2").await,
        ["u1", "u2"]
    );
    let added = expect_event(&mut u1_on_a, "pusher_internal:member_added").await;
    assert_eq!(added.data["user_id"], "u2");
    // A second connection of u1, on another node: no member_added anywhere.
    assert_eq!(
        join_presence(&mut u1_on_c, &channel, "u1").await,
        ["u1", "u2"]
    );
    expect_quiet(&mut u1_on_a).await;
    expect_quiet(&mut u2_on_b).await;

    let (status, users) = channel_users(cluster.node("a"), &channel).await;
    assert_eq!(status, 200);
    assert_eq!(users, json!({"users": [{"id": "u1"}, {"id": "u2"}]}));
    let (_, info) =
        channel_info(cluster.node("b"), &channel, "user_count,subscription_count").await;
    assert_eq!(
        info,
        json!({"occupied": true, "user_count": 2, "subscription_count": 3})
    );

    // u1 leaves on c but stays on a: no member_removed. Then its last connection goes.
    drop(u1_on_c);
    expect_quiet(&mut u2_on_b).await;
    drop(u1_on_a);
    let removed = expect_event(&mut u2_on_b, "pusher_internal:member_removed").await;
    assert_eq!(removed.data["user_id"], "u1");
    expect_quiet(&mut u2_on_b).await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn presence_is_held_by_the_owner_over_quic() {
    presence_is_held_by_the_owner(MeshTransport::Quic).await;
}

#[tokio::test]
async fn presence_is_held_by_the_owner_over_grpc() {
    presence_is_held_by_the_owner(MeshTransport::Grpc).await;
}

#[tokio::test]
async fn client_events_cross_nodes() {
    let cluster = Cluster::start(MeshTransport::Quic, |_| {}).await;
    let channel = owned_by("a", "private-chat-");
    let mut clients = Vec::new();
    for id in ["a", "b", "c"] {
        let mut client = cluster.node(id).connect(KEY).await;
        client.subscribe_private(KEY, SECRET, &channel).await;
        clients.push(client);
    }
    clients[1]
        .send(json!({"event":"client-typing","channel":channel,"data":{"who":"b"}}))
        .await;
    for i in [0, 2] {
        let frame = expect_event(&mut clients[i], "client-typing").await;
        assert_eq!(frame.data, json!({"who": "b"}));
    }
    expect_quiet(&mut clients[1]).await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn ten_thousand_events_from_one_publisher_keep_their_order() {
    let cluster = Cluster::start(MeshTransport::Quic, |_| {}).await;
    let channel = owned_by("c", "ticker-");
    let mut on_a = cluster.node("a").connect(KEY).await;
    subscribe_public(&mut on_a, &channel).await;
    let b = cluster.node("b");
    let reader = tokio::spawn(async move {
        for expected in 0..10_000u32 {
            let frame = on_a.next().await;
            assert_eq!(frame.event, "tick", "{}", frame.raw);
            assert_eq!(frame.data, json!(expected), "event {expected} out of order");
        }
        expect_quiet(&mut on_a).await;
    });
    for first in (0..10_000u32).step_by(10) {
        let batch: Vec<Value> = (first..first + 10)
            .map(|n| json!({"name": "tick", "channel": channel, "data": n.to_string()}))
            .collect();
        let (status, answer) = api(
            b,
            "POST",
            "/batch_events",
            &[],
            Some(json!({"batch": batch})),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    reader.await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test]
async fn users_and_cache_channels_work_across_nodes() {
    let cluster = Cluster::start(MeshTransport::Quic, |_| {}).await;
    let (a, b, c) = (cluster.node("a"), cluster.node("b"), cluster.node("c"));

    // Sign in on a; server-to-user events and terminate_connections from other nodes.
    let mut user = a.connect(KEY).await;
    let user_data = json!({"id": "alice"}).to_string();
    let to_sign = signing::user_string_to_sign(&user.socket_id, &user_data);
    let auth = signing::sign_auth(KEY, SECRET, &to_sign);
    user.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}}))
        .await;
    expect_event(&mut user, "pusher:signin_success").await;
    let (status, _) = trigger(b, &["#server-to-user-alice"], "note", "for alice").await;
    assert_eq!(status, 200);
    assert_eq!(expect_event(&mut user, "note").await.data, "for alice");

    // A cache channel's last event is kept by its owner and replayed on any node.
    let cached = owned_by("c", "cache-scores-");
    let (status, _) = trigger(b, &[&cached], "score", "3:1").await;
    assert_eq!(status, 200);
    let mut fan = a.connect(KEY).await;
    subscribe_public(&mut fan, &cached).await;
    assert_eq!(expect_event(&mut fan, "score").await.data, "3:1");
    let (_, info) = channel_info(a, &cached, "cache").await;
    assert_eq!(info["cache"]["data"], "3:1", "{info}");

    let (status, _) = api(
        c,
        "POST",
        "/users/alice/terminate_connections",
        &[],
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200);
    let (code, _) = user.closed().await;
    assert_eq!(code, Some(4009));
    cluster.shutdown().await;
}

/// Webhooks of channel and presence changes come once per cluster, from the owner.
#[tokio::test]
async fn webhooks_fire_once_per_cluster() {
    let (url, hooks) = webhook_receiver().await;
    let cluster = Cluster::start(MeshTransport::Quic, |app| app.webhooks = vec![url.clone()]).await;
    let channel = owned_by("b", "presence-lobby-");
    let mut clients = Vec::new();
    for (node, user) in [("a", "u1"), ("b", "u2"), ("c", "u1")] {
        let mut client = cluster.node(node).connect(KEY).await;
        join_presence(&mut client, &channel, user).await;
        clients.push(client);
    }
    drop(clients);
    // Vacated and member_removed wait 3 s in case the channel comes back.
    let expected = vec![
        ("channel_occupied", None),
        ("channel_vacated", None),
        ("member_added", Some("u1")),
        ("member_added", Some("u2")),
        ("member_removed", Some("u1")),
        ("member_removed", Some("u2")),
    ];
    let seen = eventually("every webhook", Duration::from_secs(8), || {
        let hooks = hooks.clone();
        let expected = expected.clone();
        let channel = channel.clone();
        async move {
            let mut seen: Vec<(String, Option<String>)> = hooks
                .lock()
                .unwrap()
                .iter()
                .flat_map(|body| body["events"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["channel"] == channel.as_str())
                .map(|e| {
                    (
                        e["name"].as_str().unwrap().to_owned(),
                        e["user_id"].as_str().map(str::to_owned),
                    )
                })
                .collect();
            seen.sort();
            (seen.len() >= expected.len()).then_some(seen)
        }
    })
    .await;
    let expected: Vec<(String, Option<String>)> = expected
        .into_iter()
        .map(|(n, u)| (n.to_owned(), u.map(str::to_owned)))
        .collect();
    assert_eq!(seen, expected);
    tokio::time::sleep(QUIET).await;
    cluster.shutdown().await;
}

type Hooks = Arc<Mutex<Vec<Value>>>;

/// A local webhook receiver; returns its URL and the bodies it received.
async fn webhook_receiver() -> (String, Hooks) {
    use axum::routing::post;
    let hooks: Hooks = Arc::default();
    let state = hooks.clone();
    let app = axum::Router::new().route(
        "/hooks",
        post(move |body: String| {
            let state = state.clone();
            async move {
                state
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap_or(Value::Null));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hooks)
}

/// A publish whose owner cannot be reached is answered with an error, never a false
/// success; once the owner's lease expires, its channels move and publishes succeed again.
#[tokio::test]
async fn a_publish_to_an_unreachable_owner_is_an_error() {
    let cluster = Cluster::start(MeshTransport::Quic, |_| {}).await;
    // A node the others cannot link to (it advertises no mesh address): in the ring,
    // unreachable, as after a partition.
    let mut d = Registrant::register(&cluster.cp, "d", "eu").await;
    let keepalive = tokio::spawn(async move { d.keep_alive_forever().await });
    let b = cluster.node("b");
    eventually("b to see d in the ring and to be unready", WAIT, || async {
        (b.readyz().await == 503).then_some(())
    })
    .await;
    let ring = Ring::new(["a", "b", "c", "d"]);
    let channel = (0..)
        .map(|i| format!("doomed-{i}"))
        .find(|name| ring.owner(APP, name) == Some("d"))
        .unwrap();
    let (status, answer) = trigger(b, &[&channel], "lost", "x").await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("node d"),
        "{answer}"
    );

    keepalive.abort();
    eventually(
        "d's lease to expire and its channels to move",
        WAIT,
        || async { (trigger(b, &[&channel], "found", "x").await.0 == 200).then_some(()) },
    )
    .await;
    assert_eq!(b.readyz().await, 200);
    cluster.shutdown().await;
}

/// A publish of `text` for `channel` as if b had sent it with an old view, `hops` hops ago.
fn stale_publish(channel: &str, text: &str, hops: u32) -> Vec<u8> {
    use prost::Message as _;
    use relaymesh_proto::mesh::envelope::Body;
    use relaymesh_proto::mesh::{Envelope, Publish};
    let envelope = Envelope {
        view_version: 0,
        origin: "b".into(),
        hops,
        app_id: APP.into(),
        channel: channel.into(),
        incarnation: 1,
        body: Some(Body::Publish(Publish {
            request_id: 7,
            frame: relaymesh_node::frames::text_frame(text),
            ..Publish::default()
        })),
    };
    envelope.encode_to_vec()
}

/// A message that reaches a node which does not own the channel in its (newer) view is
/// passed on to the owner it knows; one that has used up its hops is refused rather than
/// decided by a node that does not hold the channel.
#[tokio::test]
async fn a_message_for_another_owner_is_forwarded() {
    let cluster = Cluster::start(MeshTransport::Quic, |_| {}).await;
    let channel = owned_by("a", "forwarded-");
    let mut on_a = cluster.node("a").connect(KEY).await;
    subscribe_public(&mut on_a, &channel).await;
    let c = cluster.node("c");
    let moved = format!(r#"{{"event":"moved","channel":"{channel}","data":"via c"}}"#);
    let late = format!(r#"{{"event":"late","channel":"{channel}","data":"hops used up"}}"#);
    // As if b, with an older view that named c the owner, sent it to c.
    relaymesh_node::rebalance::receive(
        c.handle.shared(),
        std::time::Instant::now(),
        "b",
        stale_publish(&channel, &late, 2).into(),
    );
    relaymesh_node::rebalance::receive(
        c.handle.shared(),
        std::time::Instant::now(),
        "b",
        stale_publish(&channel, &moved, 0).into(),
    );
    assert_eq!(expect_event(&mut on_a, "moved").await.data, "via c");
    let metrics = c.metrics().await;
    assert!(
        metrics.contains("relaymesh_mesh_forwarded_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"reason="moving""#),
        "the refused message is counted: {metrics}"
    );
    cluster.shutdown().await;
}
