//! Webhooks delivered to a real local HTTP receiver: headers, signature, body shape, the
//! events of protocol §13, the vacate delay, batching and retries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use relaymesh_proto::signing;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::support::*;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Hook {
    content_type: Option<String>,
    key: Option<String>,
    signature: Option<String>,
    body: Vec<u8>,
    /// The status the receiver answered with.
    status: u16,
    at: Instant,
}

type Hooks = Arc<Mutex<Vec<Hook>>>;

#[derive(Clone)]
struct ReceiverState {
    hooks: Hooks,
    /// Requests still to be answered with 500.
    failures_left: Arc<AtomicUsize>,
}

struct Receiver {
    url: String,
    hooks: Hooks,
}

async fn receive(
    State(state): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let fail = state
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    state.hooks.lock().unwrap().push(Hook {
        content_type: header("content-type"),
        key: header("x-pusher-key"),
        signature: header("x-pusher-signature"),
        body: body.to_vec(),
        status: status.as_u16(),
        at: Instant::now(),
    });
    status
}

impl Receiver {
    /// A receiver answering 500 to its first `failures` requests, then 200.
    async fn start(failures: usize) -> Receiver {
        let hooks: Hooks = Arc::default();
        let state = ReceiverState {
            hooks: hooks.clone(),
            failures_left: Arc::new(AtomicUsize::new(failures)),
        };
        let router = Router::new()
            .route("/hook", post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Receiver {
            url: format!("http://{addr}/hook"),
            hooks,
        }
    }

    /// Every request so far, each checked for headers, signature and body shape.
    fn requests(&self) -> Vec<(Hook, Value)> {
        let hooks = self.hooks.lock().unwrap().clone();
        hooks
            .into_iter()
            .map(|hook| {
                let body = checked(&hook);
                (hook, body)
            })
            .collect()
    }

    /// The events of every answered-with-200 request, in arrival order.
    fn events(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|(hook, _)| hook.status == 200)
            .flat_map(|(_, body)| body["events"].as_array().unwrap().clone())
            .collect()
    }

    /// Delivered events named `name` on `channel`.
    fn named(&self, name: &str, channel: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["name"] == name && e["channel"] == channel)
            .collect()
    }

    /// Waits until an event named `name` on `channel` was delivered; returns when it arrived.
    async fn wait_for(&self, name: &str, channel: &str) -> (Value, Instant) {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self.requests().into_iter().find_map(|(hook, body)| {
                let event = body["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["name"] == name && e["channel"] == channel)
                    .cloned();
                event.filter(|_| hook.status == 200).map(|e| (e, hook.at))
            });
            if let Some(found) = found {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no {name} webhook for {channel}; got {:?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Checks one request as pusher-http-node's `webhook.isValid()` would, and returns its body.
fn checked(hook: &Hook) -> Value {
    assert_eq!(
        hook.content_type.as_deref(),
        Some("application/json"),
        "Content-Type"
    );
    assert_eq!(hook.key.as_deref(), Some("app-key"), "X-Pusher-Key");
    let expected = signing::webhook_signature("app-secret", &hook.body);
    assert_eq!(
        hook.signature.as_deref(),
        Some(expected.as_str()),
        "X-Pusher-Signature"
    );
    let body: Value = serde_json::from_slice(&hook.body).expect("webhook body is JSON");
    let time_ms = body["time_ms"].as_u64().expect("time_ms is an integer");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        time_ms <= now_ms && time_ms + 60_000 > now_ms,
        "time_ms {time_ms} is not now ({now_ms})"
    );
    let events = body["events"].as_array().expect("events is an array");
    assert!(!events.is_empty(), "a webhook with no events: {body}");
    for event in events {
        assert!(event["name"].is_string(), "{event}");
        assert!(event["channel"].is_string(), "{event}");
    }
    body
}

/// A node whose app posts its webhooks to `receiver`.
async fn node_for(receiver: &Receiver, batch_ms: u64, vacate_delay_ms: u64) -> TestNode {
    let url = receiver.url.clone();
    TestNode::start_with(move |config| {
        config.apps[0].webhooks = vec![url];
        config.webhooks.batch_ms = batch_ms;
        config.webhooks.vacate_delay_ms = vacate_delay_ms;
        config.webhooks.retry_base_ms = 50;
    })
    .await
}

async fn unsubscribe(client: &mut Client, channel: &str) {
    client
        .send(json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}))
        .await;
}

#[tokio::test]
async fn occupied_on_first_subscribe_and_vacated_after_the_delay() {
    let receiver = Receiver::start(0).await;
    let node = node_for(&receiver, 10, 400).await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    a.subscribe("room-1").await;
    let (occupied, _) = receiver.wait_for("channel_occupied", "room-1").await;
    assert_eq!(
        occupied,
        json!({"name": "channel_occupied", "channel": "room-1"})
    );
    // A second subscriber raises nothing; the first leaving while it stays raises nothing.
    b.subscribe("room-1").await;
    unsubscribe(&mut a, "room-1").await;
    still_alive(&mut a).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.named("channel_occupied", "room-1").len(), 1);
    assert!(
        receiver.named("channel_vacated", "room-1").is_empty(),
        "{:?}",
        receiver.events()
    );
    // The last one leaves (by disconnecting): vacated, after the delay.
    let left = Instant::now();
    b.close().await;
    let (vacated, at) = receiver.wait_for("channel_vacated", "room-1").await;
    assert_eq!(
        vacated,
        json!({"name": "channel_vacated", "channel": "room-1"})
    );
    let after = at - left;
    assert!(
        after >= Duration::from_millis(350),
        "vacated {after:?} after the channel emptied"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(receiver.named("channel_vacated", "room-1").len(), 1);
    assert_eq!(receiver.named("channel_occupied", "room-1").len(), 1);
}

/// The client is still connected (pusher:ping answered).
async fn still_alive(client: &mut Client) {
    client
        .send(json!({"event": "pusher:ping", "data": {}}))
        .await;
    assert_eq!(client.wait_for("pusher:pong").await.event, "pusher:pong");
}

#[tokio::test]
async fn resubscribe_within_the_delay_sends_neither_vacated_nor_occupied() {
    let receiver = Receiver::start(0).await;
    let node = node_for(&receiver, 10, 500).await;
    let mut a = node.connect().await;
    a.subscribe("room-2").await;
    receiver.wait_for("channel_occupied", "room-2").await;
    unsubscribe(&mut a, "room-2").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.subscribe("room-2").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        receiver.named("channel_occupied", "room-2").len(),
        1,
        "{:?}",
        receiver.events()
    );
    assert!(
        receiver.named("channel_vacated", "room-2").is_empty(),
        "{:?}",
        receiver.events()
    );
    // Leaving for good does send the vacated.
    unsubscribe(&mut a, "room-2").await;
    receiver.wait_for("channel_vacated", "room-2").await;
    assert_eq!(receiver.named("channel_occupied", "room-2").len(), 1);
}

#[tokio::test]
async fn members_are_added_and_removed_once_per_user() {
    let receiver = Receiver::start(0).await;
    let node = node_for(&receiver, 10, 300).await;
    let channel = "presence-room";
    let mut first = node.connect().await;
    let mut second = node.connect().await;
    let mut other = node.connect().await;
    first.join(channel, "u1", json!({"name": "One"})).await;
    second.join(channel, "u1", json!({"name": "One"})).await;
    other.join(channel, "u2", json!({})).await;
    let (added, _) = receiver.wait_for("member_added", channel).await;
    assert_eq!(
        added,
        json!({"name": "member_added", "channel": channel, "user_id": "u1"})
    );
    let u2 = |e: &Value| e["user_id"] == "u2";
    let deadline = Instant::now() + WAIT;
    while !receiver.named("member_added", channel).iter().any(u2) {
        assert!(
            Instant::now() < deadline,
            "no member_added for u2: {:?}",
            receiver.events()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // u1's first connection leaves: u1 is still a member through the second one. Meanwhile
    // u2 leaves and comes back within the delay: neither removed nor added again.
    first.close().await;
    unsubscribe(&mut other, channel).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    other.join(channel, "u2", json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        receiver.named("member_removed", channel).is_empty(),
        "{:?}",
        receiver.events()
    );
    // Its last connection leaves: member_removed, once.
    unsubscribe(&mut second, channel).await;
    let (removed, _) = receiver.wait_for("member_removed", channel).await;
    assert_eq!(
        removed,
        json!({"name": "member_removed", "channel": channel, "user_id": "u1"})
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let added: Vec<Value> = receiver.named("member_added", channel);
    assert_eq!(
        added.iter().filter(|e| e["user_id"] == "u1").count(),
        1,
        "{added:?}"
    );
    assert_eq!(added.iter().filter(|e| u2(e)).count(), 1, "{added:?}");
    assert_eq!(receiver.named("member_removed", channel).len(), 1);
    assert_eq!(receiver.named("channel_occupied", channel).len(), 1);
    assert!(
        receiver.named("channel_vacated", channel).is_empty(),
        "u2 is still there"
    );
}

#[tokio::test]
async fn client_events_raise_client_event_webhooks() {
    let receiver = Receiver::start(0).await;
    let node = node_for(&receiver, 10, 300).await;
    let mut sender = node.connect().await;
    let mut peer = node.connect().await;
    sender.subscribe("private-chat").await;
    peer.subscribe("private-chat").await;
    sender
        .send(
            json!({"event": "client-typing", "channel": "private-chat", "data": {"typing": true}}),
        )
        .await;
    assert_eq!(peer.next().await.event, "client-typing");
    let (event, _) = receiver.wait_for("client_event", "private-chat").await;
    assert_eq!(event["event"], "client-typing", "{event}");
    assert_eq!(event["socket_id"], sender.socket_id.as_str(), "{event}");
    let data = event["data"]
        .as_str()
        .expect("client_event data is a string");
    assert_eq!(
        serde_json::from_str::<Value>(data).unwrap(),
        json!({"typing": true})
    );
    assert!(
        event.get("user_id").is_none(),
        "user_id only on presence: {event}"
    );

    // On presence, with the sender's user id; string data stays the same string.
    sender.join("presence-chat", "u7", json!({})).await;
    peer.join("presence-chat", "u8", json!({})).await;
    sender
        .send(json!({"event": "client-hi", "channel": "presence-chat", "data": "plain text"}))
        .await;
    let relayed = peer.wait_for("client-hi").await;
    assert_eq!(relayed.user_id.as_deref(), Some("u7"));
    let (event, _) = receiver.wait_for("client_event", "presence-chat").await;
    assert_eq!(
        event,
        json!({
            "name": "client_event",
            "channel": "presence-chat",
            "event": "client-hi",
            "data": "plain text",
            "socket_id": sender.socket_id,
            "user_id": "u7",
        })
    );
    // A rejected client event (not subscribed) raises no webhook.
    sender
        .send(json!({"event": "client-x", "channel": "private-elsewhere", "data": {}}))
        .await;
    assert_eq!(sender.wait_for("pusher:error").await.data["code"], 4301);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        receiver
            .events()
            .iter()
            .filter(|e| e["name"] == "client_event")
            .count(),
        2
    );
}

#[tokio::test]
async fn cache_miss_on_subscribing_an_empty_cache_channel() {
    let receiver = Receiver::start(0).await;
    let node = node_for(&receiver, 10, 300).await;
    let mut client = node.connect().await;
    client.subscribe("cache-empty").await;
    let miss = client.next().await;
    assert_eq!(miss.event, "pusher:cache_miss", "{}", miss.raw);
    let (event, _) = receiver.wait_for("cache_miss", "cache-empty").await;
    assert_eq!(
        event,
        json!({"name": "cache_miss", "channel": "cache-empty"})
    );
    // A cache channel holding an event replays it and raises no cache_miss.
    node.trigger(&["cache-full"], "news", "{\"n\":1}").await;
    client.subscribe("cache-full").await;
    assert_eq!(client.next().await.event, "news");
    receiver.wait_for("channel_occupied", "cache-full").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        receiver.named("cache_miss", "cache-full").is_empty(),
        "{:?}",
        receiver.events()
    );
    assert_eq!(receiver.named("cache_miss", "cache-empty").len(), 1);
}

/// Protocol §9 / §13: the cache_miss webhook is de-duplicated when several clients hit the
/// same empty cache channel at once.
#[tokio::test]
async fn cache_miss_is_deduplicated_for_simultaneous_subscribers() {
    let receiver = Receiver::start(0).await;
    let node = node_for(&receiver, 100, 300).await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    let subscribe =
        json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": "cache-hot"}});
    a.send(subscribe.clone()).await;
    b.send(subscribe).await;
    for client in [&mut a, &mut b] {
        client
            .wait_for("pusher_internal:subscription_succeeded")
            .await;
        assert_eq!(client.next().await.event, "pusher:cache_miss");
    }
    receiver.wait_for("cache_miss", "cache-hot").await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        receiver.named("cache_miss", "cache-hot").len(),
        1,
        "two subscribers hitting the empty channel together: {:?}",
        receiver.events()
    );
}

#[tokio::test]
async fn events_raised_together_arrive_in_one_request() {
    let receiver = Receiver::start(0).await;
    let node = node_for(&receiver, 300, 300).await;
    let mut client = node.connect().await;
    let channels = ["batch-a", "batch-b", "batch-c"];
    for channel in channels {
        client
            .send(json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": channel}}))
            .await;
    }
    for _ in channels {
        assert_eq!(
            client.next().await.event,
            "pusher_internal:subscription_succeeded"
        );
    }
    receiver.wait_for("channel_occupied", "batch-a").await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let events = requests[0].1["events"].as_array().unwrap().clone();
    let expected: Vec<Value> = channels
        .iter()
        .map(|c| json!({"name": "channel_occupied", "channel": c}))
        .collect();
    assert_eq!(events, expected);
}

fn webhook_counter(metrics: &str, result: &str) -> f64 {
    let series = format!("relaymesh_webhook_requests_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_failing_receiver_gets_the_same_batch_again() {
    let receiver = Receiver::start(2).await;
    let node = node_for(&receiver, 10, 300).await;
    let metrics = node.metrics().await;
    let failed_before = webhook_counter(&metrics, "failed_attempt");
    let delivered_before = webhook_counter(&metrics, "delivered");
    let mut client = node.connect().await;
    client.subscribe("retry-me").await;
    receiver.wait_for("channel_occupied", "retry-me").await;
    let requests = receiver.requests();
    let statuses: Vec<u16> = requests.iter().map(|(h, _)| h.status).collect();
    assert_eq!(statuses, vec![500, 500, 200]);
    assert!(
        requests.iter().all(|(h, _)| h.body == requests[0].0.body),
        "a retry must resend the same batch: {requests:?}"
    );
    assert_eq!(
        requests[0].1["events"],
        json!([{"name": "channel_occupied", "channel": "retry-me"}])
    );
    // Backoff: the retries are spaced out.
    assert!(requests[1].0.at - requests[0].0.at >= Duration::from_millis(40));
    assert!(requests[2].0.at - requests[1].0.at >= Duration::from_millis(80));
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = node.metrics().await;
        let failed = webhook_counter(&metrics, "failed_attempt");
        let delivered = webhook_counter(&metrics, "delivered");
        if failed >= failed_before + 2.0 && delivered >= delivered_before + 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "webhook counters: failed_attempt {failed_before} -> {failed}, delivered {delivered_before} -> {delivered}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing more is sent once the batch is accepted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.requests().len(), 3);
}
