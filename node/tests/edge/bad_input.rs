//! Bad input from clients and API callers: each gets the error code or HTTP status of the
//! protocol reference, is counted in /metrics, and never disturbs another client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::SinkExt;
use relaymesh_node::config::AppConfig;
use relaymesh_proto::signing;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use super::support::*;

/// The value of one counter series whose labels include all of `labels` (summed over the
/// series that match); 0 when absent. Metrics are process-wide, so tests compare deltas.
fn counter(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, l)) => (n, l),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().unwrap_or(0.0))
        })
        .sum()
}

fn errors(metrics: &str, code: &str, reason: &str) -> f64 {
    counter(
        metrics,
        "relaymesh_errors_total",
        &[("code", code), ("reason", reason)],
    )
}

fn api_status(metrics: &str, status: &str) -> f64 {
    counter(
        metrics,
        "relaymesh_http_requests_total",
        &[("kind", "api"), ("status", status)],
    )
}

/// Polls /metrics until `errors{code,reason}` has grown by `by` from `before`.
async fn assert_error_counted(node: &TestNode, code: &str, reason: &str, before: f64, by: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = errors(&node.metrics().await, code, reason);
        if now >= before + by {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "relaymesh_errors_total{{code={code:?},reason={reason:?}}} is {now}, expected at least {}",
            before + by
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client subscribed to a public channel, to prove others are not disturbed.
async fn bystander(node: &TestNode, channel: &str) -> Client {
    let mut client = node.connect().await;
    client.subscribe(channel).await;
    client
}

/// The bystander still gets what is published to its channel.
async fn still_served(node: &TestNode, client: &mut Client, channel: &str) {
    node.trigger(&[channel], "still-here", "{\"ok\":true}")
        .await;
    let frame = client.wait_for("still-here").await;
    assert_eq!(frame.channel.as_deref(), Some(channel));
    assert_eq!(frame.data, json!({"ok": true}));
}

/// The connection is still open and answered: a pusher:ping gets a pusher:pong.
async fn still_open(client: &mut Client) {
    client
        .send(json!({"event": "pusher:ping", "data": {}}))
        .await;
    let frame = client.next().await;
    assert_eq!(frame.event, "pusher:pong", "{}", frame.raw);
}

fn assert_error_frame(frame: &Frame, code: Option<u64>) {
    assert_eq!(frame.event, "pusher:error", "{}", frame.raw);
    match code {
        None => assert!(
            frame.data["code"].is_null(),
            "code should be null: {}",
            frame.raw
        ),
        Some(code) => assert_eq!(frame.data["code"].as_u64(), Some(code), "{}", frame.raw),
    }
    assert!(frame.data["message"].is_string(), "{}", frame.raw);
}

// ---- WebSocket frames -------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_gets_an_error_and_the_connection_stays_open() {
    let node = TestNode::start().await;
    let mut other = bystander(&node, "calm-json").await;
    let before = errors(&node.metrics().await, "null", "malformed_json");
    let mut client = node.connect().await;
    for text in ["{not json", "[1,2", "\"just a string\"", "{\"data\":{}}"] {
        client.send_text(text).await;
        let frame = client.next().await;
        assert_error_frame(&frame, None);
        still_open(&mut client).await;
    }
    assert_error_counted(&node, "null", "malformed_json", before, 4.0).await;
    still_served(&node, &mut other, "calm-json").await;
    other.assert_silent(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn unknown_event_gets_an_error_and_the_connection_stays_open() {
    let node = TestNode::start().await;
    let mut other = bystander(&node, "calm-unknown").await;
    let before = errors(&node.metrics().await, "null", "unknown_event");
    let mut client = node.connect().await;
    client
        .send(json!({"event": "pusher:bogus", "data": {}}))
        .await;
    assert_error_frame(&client.next().await, None);
    client
        .send(json!({"event": "hello", "channel": "calm-unknown", "data": "x"}))
        .await;
    assert_error_frame(&client.next().await, None);
    still_open(&mut client).await;
    assert_error_counted(&node, "null", "unknown_event", before, 2.0).await;
    still_served(&node, &mut other, "calm-unknown").await;
    other.assert_silent(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn binary_frame_gets_an_error_and_the_connection_stays_open() {
    let node = TestNode::start().await;
    let mut other = bystander(&node, "calm-binary").await;
    let before = errors(&node.metrics().await, "null", "binary_frame");
    let mut client = node.connect().await;
    client
        .ws
        .send(Message::binary(vec![0x7b, 0x00, 0xff, 0x10]))
        .await
        .unwrap();
    assert_error_frame(&client.next().await, None);
    still_open(&mut client).await;
    client.subscribe("calm-binary").await;
    assert_error_counted(&node, "null", "binary_frame", before, 1.0).await;
    still_served(&node, &mut other, "calm-binary").await;
    client.wait_for("still-here").await;
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let node = TestNode::start_with(|c| c.client_message_bytes_max = 1024).await;
    let mut other = bystander(&node, "calm-big").await;
    let before = errors(&node.metrics().await, "1009", "message_too_big");
    let mut client = node.connect().await;
    // Just under the limit is fine.
    let fits = json!({"event": "pusher:ping", "data": {"pad": "x".repeat(900)}}).to_string();
    assert!(fits.len() < 1024);
    client.send_text(&fits).await;
    assert_eq!(client.next().await.event, "pusher:pong");
    let big = json!({"event": "pusher:ping", "data": {"pad": "x".repeat(2000)}}).to_string();
    client.send_text(&big).await;
    let (closed, frames) = client.closed().await;
    assert_eq!(
        closed,
        Closed::Code(1009),
        "frames before the close: {frames:?}"
    );
    assert!(
        frames.iter().all(|f| f.event != "pusher:pong"),
        "the oversized ping was answered"
    );
    assert_error_counted(&node, "1009", "message_too_big", before, 1.0).await;
    still_served(&node, &mut other, "calm-big").await;
}

// ---- subscriptions ----------------------------------------------------------------------

#[tokio::test]
async fn invalid_channel_names_get_subscription_errors() {
    let node = TestNode::start().await;
    let mut other = bystander(&node, "calm-names").await;
    let before = errors(&node.metrics().await, "400", "invalid_channel");
    let mut client = node.connect().await;
    let too_long = "a".repeat(201);
    let fits = "b".repeat(200);
    for name in ["with space", "#x", too_long.as_str(), "", "ümlaut", "a:b"] {
        client
            .send(json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": name}}))
            .await;
        let frame = client.next().await;
        assert_eq!(
            frame.event, "pusher:subscription_error",
            "{name:?}: {}",
            frame.raw
        );
        assert_eq!(frame.channel.as_deref(), Some(name), "{}", frame.raw);
        assert!(frame.data["type"].is_string(), "{}", frame.raw);
        assert!(frame.data["error"].is_string(), "{}", frame.raw);
        assert!(frame.data["status"].is_u64(), "{}", frame.raw);
    }
    still_open(&mut client).await;
    // The limit itself is fine, and the refused names were not subscribed.
    client.subscribe(&fits).await;
    let (status, reply) = node.api("GET", "/apps/app-id/channels", None, &[]).await;
    assert_eq!(status, 200, "{reply}");
    let mut occupied: Vec<&String> = reply["channels"].as_object().unwrap().keys().collect();
    occupied.sort();
    assert_eq!(occupied, vec![&fits, &"calm-names".to_owned()], "{reply}");
    assert_error_counted(&node, "400", "invalid_channel", before, 6.0).await;
    still_served(&node, &mut other, "calm-names").await;
}

#[tokio::test]
async fn refused_subscriptions_get_401_or_400_and_the_connection_stays_open() {
    let node = TestNode::start().await;
    let mut other = bystander(&node, "calm-auth").await;
    let metrics = node.metrics().await;
    let (before_401, before_400) = (
        errors(&metrics, "401", "subscription_refused"),
        errors(&metrics, "400", "subscription_refused"),
    );
    let mut client = node.connect().await;
    let sid = client.socket_id.clone();
    let good_hex = |s: &str| client.sign(s).split_once(':').unwrap().1.to_owned();

    let refuse = |channel: &str, auth: String, channel_data: Option<String>| {
        let mut data = json!({"auth": auth, "channel": channel});
        if let Some(cd) = channel_data {
            data["channel_data"] = Value::String(cd);
        }
        json!({"event": "pusher:subscribe", "data": data})
    };
    let cases: Vec<(&str, Value, u64)> = vec![
        // Signature over the wrong socket id.
        (
            "private-a",
            refuse("private-a", client.sign("1.1:private-a"), None),
            401,
        ),
        // Not hex at all.
        (
            "private-a",
            refuse("private-a", "app-key:nothex".into(), None),
            401,
        ),
        // No auth.
        (
            "private-a",
            json!({"event": "pusher:subscribe", "data": {"channel": "private-a"}}),
            401,
        ),
        // A valid signature, but under another app key.
        (
            "private-a",
            refuse(
                "private-a",
                format!("other-key:{}", good_hex(&format!("{sid}:private-a"))),
                None,
            ),
            401,
        ),
        // Presence: the signature does not cover the channel_data sent.
        (
            "presence-a",
            refuse(
                "presence-a",
                client.sign(&format!("{sid}:presence-a:{{\"user_id\":\"1\"}}")),
                Some("{\"user_id\":\"2\"}".into()),
            ),
            401,
        ),
        // Presence: correctly signed channel_data that is not JSON.
        (
            "presence-a",
            refuse(
                "presence-a",
                client.sign(&format!("{sid}:presence-a:not json")),
                Some("not json".into()),
            ),
            400,
        ),
        // Presence: correctly signed channel_data without a user_id.
        (
            "presence-a",
            refuse(
                "presence-a",
                client.sign(&format!("{sid}:presence-a:{{\"user_info\":{{}}}}")),
                Some("{\"user_info\":{}}".into()),
            ),
            400,
        ),
        // Presence: a user_id that is neither a string nor an integer.
        (
            "presence-a",
            refuse(
                "presence-a",
                client.sign(&format!("{sid}:presence-a:{{\"user_id\":[1]}}")),
                Some("{\"user_id\":[1]}".into()),
            ),
            400,
        ),
    ];
    let (mut n401, mut n400) = (0.0, 0.0);
    for (channel, message, status) in cases {
        client.send(message.clone()).await;
        let frame = client.next().await;
        assert_eq!(
            frame.event, "pusher:subscription_error",
            "{message}: {}",
            frame.raw
        );
        assert_eq!(frame.channel.as_deref(), Some(channel), "{}", frame.raw);
        assert_eq!(
            frame.data["status"].as_u64(),
            Some(status),
            "{message}: {}",
            frame.raw
        );
        if status == 401 {
            assert_eq!(frame.data["type"], "AuthError", "{}", frame.raw);
            n401 += 1.0;
        } else {
            n400 += 1.0;
        }
    }
    still_open(&mut client).await;
    // The refusals left no trace: a correct subscription still works and nobody joined.
    client.subscribe("private-a").await;
    let (status, reply) = node
        .api("GET", "/apps/app-id/channels/presence-a/users", None, &[])
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["users"], json!([]), "{reply}");
    assert_error_counted(&node, "401", "subscription_refused", before_401, n401).await;
    assert_error_counted(&node, "400", "subscription_refused", before_400, n400).await;
    still_served(&node, &mut other, "calm-auth").await;
}

// ---- connection refusals ----------------------------------------------------------------

/// Opens a socket on `url` and returns the first frame and the close code.
async fn refused(node: &TestNode, url: &str) -> (Frame, Closed) {
    let mut client = node.connect_raw(url).await;
    let (closed, frames) = client.closed().await;
    assert_eq!(
        frames.len(),
        1,
        "exactly one frame before the close: {frames:?}"
    );
    (frames[0].clone(), closed)
}

#[tokio::test]
async fn refused_connections_get_the_code_first_then_the_close() {
    let node = TestNode::start_with(|config| {
        config.apps[0].max_connections = Some(2);
        config.apps.push(AppConfig {
            id: "off-id".into(),
            key: "off-key".into(),
            secret: "off-secret".into(),
            enabled: false,
            ..AppConfig::default()
        });
    })
    .await;
    let mut first = bystander(&node, "calm-refused").await;
    let metrics = node.metrics().await;
    let before: Vec<f64> = ["4001", "4003", "4004", "4007", "4008"]
        .iter()
        .map(|code| errors(&metrics, code, "connection_refused"))
        .collect();
    let base = format!("ws://{}", node.addr);
    let cases: [(String, u64); 7] = [
        (node.ws_url("no-such-key"), 4001),
        (node.ws_url("off-key"), 4003),
        (
            format!("{base}/app/app-key?client=js&version=8.6.0&flash=false"),
            4008,
        ),
        (format!("{base}/app/app-key"), 4008),
        (
            format!("{base}/app/app-key?protocol=3&client=js&version=8.6.0"),
            4007,
        ),
        (format!("{base}/app/app-key?protocol=8"), 4007),
        (format!("{base}/app/app-key?protocol=seven"), 4007),
    ];
    for (url, code) in &cases {
        let (frame, closed) = refused(&node, url).await;
        assert_error_frame(&frame, Some(*code));
        assert_eq!(closed, Closed::Code(*code as u16), "{url}");
    }
    // protocol 4..=7 are all accepted.
    let mut second = node
        .connect_raw(&format!("{base}/app/app-key?protocol=4"))
        .await;
    assert_eq!(second.next().await.event, "pusher:connection_established");
    // The quota (2) is now reached.
    let (frame, closed) = refused(&node, &node.ws_url("app-key")).await;
    assert_error_frame(&frame, Some(4004));
    assert_eq!(closed, Closed::Code(4004));
    // A freed slot is usable again.
    second.close().await;
    let mut third = None;
    for _ in 0..50 {
        let mut client = node.connect_raw(&node.ws_url("app-key")).await;
        let frame = client.next().await;
        if frame.event == "pusher:connection_established" {
            third = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut third = third.expect("the closed connection's slot was never freed");
    still_open(&mut third).await;
    still_open(&mut first).await;
    let metrics = node.metrics().await;
    for (i, (code, n)) in [
        ("4001", 1.0),
        ("4003", 1.0),
        ("4004", 1.0),
        ("4007", 3.0),
        ("4008", 2.0),
    ]
    .iter()
    .enumerate()
    {
        let now = errors(&metrics, code, "connection_refused");
        assert!(
            now >= before[i] + n,
            "errors{{code={code}}}: {now} < {} + {n}",
            before[i]
        );
    }
    // The disabled app's HTTP API answers 403, even to a correctly signed request.
    let body = json!({"name": "ev", "data": "{}", "channels": ["calm-refused"]}).to_string();
    let (status, reply) = node
        .api_as(
            "off-key",
            "off-secret",
            "POST",
            "/apps/off-id/events",
            Some(&body),
            &[],
        )
        .await;
    assert_eq!(status, 403, "{reply}");
    still_served(&node, &mut first, "calm-refused").await;
}

// ---- HTTP API -----------------------------------------------------------------------------

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn bad_api_requests_get_their_status_and_publish_nothing() {
    let node = TestNode::start().await;
    let mut other = bystander(&node, "calm-api").await;
    let path = "/apps/app-id/events";
    let good = json!({"name": "ev", "data": "{}", "channels": ["calm-api"]}).to_string();
    let metrics = node.metrics().await;
    let before: Vec<f64> = ["400", "401", "404", "413"]
        .iter()
        .map(|s| api_status(&metrics, s))
        .collect();
    let mut expected = [0.0f64; 4];
    let mut expect = |status: u16, got: (u16, Value), what: &str| {
        assert_eq!(got.0, status, "{what}: {}", got.1);
        let i = match status {
            400 => 0,
            401 => 1,
            404 => 2,
            413 => 3,
            _ => unreachable!(),
        };
        expected[i] += 1.0;
    };

    // 401: signature, timestamp, body_md5, key.
    let got = node
        .api_as("app-key", "wrong-secret", "POST", path, Some(&good), &[])
        .await;
    expect(401, got, "bad signature");
    let stale = now_secs() - 700;
    let query = signing::sign_request(
        "app-key",
        "app-secret",
        "POST",
        path,
        &[],
        good.as_bytes(),
        stale,
    );
    expect(
        401,
        node.raw_http("POST", &format!("{path}?{query}"), &good)
            .await,
        "stale timestamp",
    );
    let future = now_secs() + 700;
    let query = signing::sign_request(
        "app-key",
        "app-secret",
        "POST",
        path,
        &[],
        good.as_bytes(),
        future,
    );
    expect(
        401,
        node.raw_http("POST", &format!("{path}?{query}"), &good)
            .await,
        "future timestamp",
    );
    let other_body =
        json!({"name": "ev", "data": "{\"x\":1}", "channels": ["calm-api"]}).to_string();
    let query = signing::sign_request(
        "app-key",
        "app-secret",
        "POST",
        path,
        &[],
        good.as_bytes(),
        now_secs(),
    );
    expect(
        401,
        node.raw_http("POST", &format!("{path}?{query}"), &other_body)
            .await,
        "body_md5 mismatch",
    );
    let query = signing::sign_request("app-key", "app-secret", "POST", path, &[], b"", now_secs());
    expect(
        401,
        node.raw_http("POST", &format!("{path}?{query}"), &good)
            .await,
        "body without body_md5",
    );
    let got = node
        .api_as("other-key", "app-secret", "POST", path, Some(&good), &[])
        .await;
    expect(401, got, "key of no app");
    expect(401, node.raw_http("POST", path, &good).await, "unsigned");

    // 404: unknown app id.
    let got = node
        .api("POST", "/apps/no-such-app/events", Some(&good), &[])
        .await;
    expect(404, got, "unknown app id");

    // 413: data over max_event_bytes (10 KB).
    let big = json!({"name": "ev", "data": "x".repeat(10 * 1024 + 1), "channels": ["calm-api"]})
        .to_string();
    expect(
        413,
        node.api("POST", path, Some(&big), &[]).await,
        "data too large",
    );

    // 400s.
    let many: Vec<String> = (0..101).map(|i| format!("calm-api-{i}")).collect();
    let mut many_with_ours = many.clone();
    many_with_ours[100] = "calm-api".into();
    let body = json!({"name": "ev", "data": "{}", "channels": many_with_ours}).to_string();
    expect(
        400,
        node.api("POST", path, Some(&body), &[]).await,
        "101 channels",
    );
    let item = json!({"channel": "calm-api", "name": "ev", "data": "{}"});
    let body = json!({"batch": vec![item.clone(); 11]}).to_string();
    expect(
        400,
        node.api("POST", "/apps/app-id/batch_events", Some(&body), &[])
            .await,
        "batch of 11",
    );
    for socket_id in ["abc", "1.2.3", "1.", "-1.2", ""] {
        let body =
            json!({"name": "ev", "data": "{}", "channels": ["calm-api"], "socket_id": socket_id})
                .to_string();
        expect(
            400,
            node.api("POST", path, Some(&body), &[]).await,
            &format!("socket_id {socket_id:?}"),
        );
    }
    for body in [
        "{not json",
        "[]",
        "{\"name\":\"ev\",\"channels\":[\"calm-api\"]}",
    ] {
        expect(
            400,
            node.api("POST", path, Some(body), &[]).await,
            &format!("body {body}"),
        );
    }
    for name in ["pusher:ev", "pusher_internal:subscription_succeeded"] {
        let body = json!({"name": name, "data": "{}", "channels": ["calm-api"]}).to_string();
        expect(
            400,
            node.api("POST", path, Some(&body), &[]).await,
            &format!("event name {name}"),
        );
    }
    let body =
        json!({"name": "ev", "data": "{}", "channels": ["calm-api", "bad channel"]}).to_string();
    expect(
        400,
        node.api("POST", path, Some(&body), &[]).await,
        "one invalid channel",
    );
    // One bad item fails the whole batch, before anything is published.
    let body = json!({"batch": [item, {"channel": "calm-api", "name": "pusher:x", "data": "{}"}]})
        .to_string();
    expect(
        400,
        node.api("POST", "/apps/app-id/batch_events", Some(&body), &[])
            .await,
        "batch with a bad item",
    );

    // Nothing reached the subscriber, and the counters moved.
    other.assert_silent(Duration::from_millis(200)).await;
    let metrics = node.metrics().await;
    for (i, status) in ["400", "401", "404", "413"].iter().enumerate() {
        let now = api_status(&metrics, status);
        assert!(
            now >= before[i] + expected[i],
            "http_requests_total{{kind=api,status={status}}}: {now} < {} + {}",
            before[i],
            expected[i]
        );
    }
    still_served(&node, &mut other, "calm-api").await;
    let (status, reply) = node.api("POST", path, Some(&good), &[]).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        other.wait_for("ev").await.channel.as_deref(),
        Some("calm-api")
    );
}

// ---- floods and slow readers --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_event_flood_is_rate_limited_with_4301_and_stays_open() {
    let node = TestNode::start().await;
    let before = errors(&node.metrics().await, "4301", "client_event_rate_limit");
    let mut sender = node.connect().await;
    let mut receiver = node.connect().await;
    sender.subscribe("private-flood").await;
    receiver.subscribe("private-flood").await;
    const SENT: usize = 25;
    for i in 0..SENT {
        sender
            .send(json!({"event": "client-burst", "channel": "private-flood", "data": {"n": i}}))
            .await;
    }
    sender
        .send(json!({"event": "pusher:ping", "data": {}}))
        .await;
    let mut rejected = 0;
    loop {
        let frame = sender.next().await;
        match frame.event.as_str() {
            "pusher:pong" => break,
            "pusher:error" => {
                assert_error_frame(&frame, Some(4301));
                rejected += 1;
            }
            other => panic!("unexpected {other}: {}", frame.raw),
        }
    }
    let mut delivered = Vec::new();
    while delivered.len() < SENT - rejected {
        let frame = receiver.next().await;
        assert_eq!(frame.event, "client-burst", "{}", frame.raw);
        delivered.push(frame.data["n"].as_u64().unwrap() as usize);
    }
    receiver.assert_silent(Duration::from_millis(150)).await;
    assert!(rejected >= 1, "no event of a burst of {SENT} was rejected");
    assert!(
        delivered.len() >= 10,
        "only {} of the burst got through",
        delivered.len()
    );
    assert!(delivered.len() < SENT);
    // The allowed ones arrive in order, starting with the first.
    assert_eq!(delivered[..10], (0..10).collect::<Vec<_>>()[..]);
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "{delivered:?}");
    assert_error_counted(
        &node,
        "4301",
        "client_event_rate_limit",
        before,
        rejected as f64,
    )
    .await;
    // The budget refills: after a second the sender may send again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sender
        .send(json!({"event": "client-burst", "channel": "private-flood", "data": {"n": 999}}))
        .await;
    assert_eq!(receiver.next().await.data["n"], 999);
    still_open(&mut sender).await;
}

/// A WebSocket client written by hand on a raw TCP socket with a tiny receive buffer.
struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    async fn connect(node: &TestNode) -> RawClient {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(node.addr).await.unwrap();
        let request = format!(
            "GET /app/app-key?protocol=7&client=raw&version=1.0 HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            node.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        RawClient { stream }
    }

    async fn send_text(&mut self, text: &str) {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    /// Reads one frame: (opcode, payload).
    async fn read_frame(&mut self) -> (u8, Vec<u8>) {
        tokio::time::timeout(WAIT, async {
            let b0 = self.stream.read_u8().await.unwrap();
            let len = match self.stream.read_u8().await.unwrap() & 0x7f {
                126 => self.stream.read_u16().await.unwrap() as usize,
                127 => self.stream.read_u64().await.unwrap() as usize,
                n => n as usize,
            };
            let mut payload = vec![0; len];
            self.stream.read_exact(&mut payload).await.unwrap();
            (b0 & 0x0f, payload)
        })
        .await
        .expect("timed out reading a frame")
    }

    async fn read_text(&mut self) -> Frame {
        let (opcode, payload) = self.read_frame().await;
        assert_eq!(opcode, 1);
        decode(std::str::from_utf8(&payload).unwrap())
    }
}

/// How the slow socket ended once read: the bytes of a 4100 close frame were seen, or the
/// socket was reset / ended.
async fn drain_raw(stream: &mut TcpStream) -> (bool, bool) {
    let close_4100 = [0x88u8, 0, 0x10, 0x04];
    let mut tail: Vec<u8> = Vec::new();
    let mut saw_close = false;
    let mut buf = vec![0u8; 256 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    tail.extend_from_slice(&buf[..n]);
                    if tail.windows(4).any(|w| {
                        w[0] == close_4100[0] && w[2] == close_4100[2] && w[3] == close_4100[3]
                    }) {
                        saw_close = true;
                    }
                    let keep = tail.len().saturating_sub(3);
                    tail.drain(..keep);
                }
            }
        }
    })
    .await
    .is_ok();
    (saw_close, ended)
}

async fn subscription_count(node: &TestNode, channel: &str) -> u64 {
    let path = format!("/apps/app-id/channels/{channel}");
    let (status, reply) = node
        .api("GET", &path, None, &[("info", "subscription_count")])
        .await;
    assert_eq!(status, 200, "{reply}");
    reply["subscription_count"].as_u64().unwrap_or(0)
}

/// A node where a reader falls behind quickly, a normal subscriber reading in the background
/// (it returns the event indices it saw, up to the `done` event), and a slow raw client
/// subscribed to the same channel that never reads again.
struct SlowReaderSetup {
    node: TestNode,
    /// The normal subscriber's task: the event indices it saw up to `done`, and the client.
    reader: tokio::task::JoinHandle<(Vec<usize>, Client)>,
    /// How many events the normal subscriber has seen so far.
    progress: Arc<AtomicUsize>,
    slow: RawClient,
}

async fn slow_reader_setup(channel: &'static str) -> SlowReaderSetup {
    let node = TestNode::start_with(|config| {
        config.outbox_frames_max = 64;
        config.outbox_bytes_max = 1 << 20;
        config.http_body_bytes_max = 1 << 20;
        config.apps[0].max_event_bytes = 64 * 1024;
    })
    .await;
    let mut normal = node.connect().await;
    normal.subscribe(channel).await;
    let progress = Arc::new(AtomicUsize::new(0));
    let seen_so_far = progress.clone();
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let frame = normal.next().await;
            match frame.event.as_str() {
                "done" => return (seen, normal),
                "big" => {
                    seen.push(frame.data["n"].as_u64().unwrap() as usize);
                    seen_so_far.store(seen.len(), Ordering::SeqCst);
                }
                other => panic!("unexpected {other}: {}", frame.raw),
            }
        }
    });
    let mut slow = RawClient::connect(&node).await;
    let established = slow.read_text().await;
    assert_eq!(
        established.event, "pusher:connection_established",
        "{}",
        established.raw
    );
    slow.send_text(
        &json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": channel}}).to_string(),
    )
    .await;
    let ok = slow.read_text().await;
    assert_eq!(
        ok.event, "pusher_internal:subscription_succeeded",
        "{}",
        ok.raw
    );
    assert_eq!(subscription_count(&node, channel).await, 2);
    SlowReaderSetup {
        node,
        reader,
        progress,
        slow,
    }
}

/// Publishes `rounds` batches of 10 events of ~50 KB each, each batch once the normal
/// subscriber has the one before last (so only the slow one falls behind); returns how many
/// were sent.
async fn flood(node: &TestNode, channel: &str, progress: &AtomicUsize, rounds: usize) -> usize {
    let pad = "x".repeat(50 * 1024);
    let mut n = 0;
    for _ in 0..rounds {
        let deadline = tokio::time::Instant::now() + WAIT;
        while progress.load(Ordering::SeqCst) + 10 < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the normal subscriber stalled"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let batch: Vec<Value> = (0..10)
            .map(|i| {
                let data = json!({"n": n + i, "pad": pad}).to_string();
                json!({"channel": channel, "name": "big", "data": data})
            })
            .collect();
        let body = json!({"batch": batch}).to_string();
        let (status, reply) = node
            .api("POST", "/apps/app-id/batch_events", Some(&body), &[])
            .await;
        assert_eq!(status, 200, "{reply}");
        n += 10;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_cut_off_with_4100_and_others_get_everything() {
    let channel = "firehose-a";
    let SlowReaderSetup {
        node,
        reader,
        progress,
        mut slow,
    } = slow_reader_setup(channel).await;
    let before = errors(&node.metrics().await, "4100", "slow_consumer");
    // ~10 MB: more than the kernel buffers of the slow socket can absorb.
    let sent = flood(&node, channel, &progress, 20).await;
    node.trigger(&[channel], "done", "{}").await;
    let (seen, mut normal) = tokio::time::timeout(Duration::from_secs(15), reader)
        .await
        .expect("the normal subscriber did not get every event in time")
        .unwrap();
    assert_eq!(
        seen,
        (0..sent).collect::<Vec<_>>(),
        "the normal subscriber missed or reordered events"
    );
    assert_error_counted(&node, "4100", "slow_consumer", before, 1.0).await;
    // Reading the slow socket now shows the 4100 close (or a reset / end of stream).
    let (saw_close, ended) = drain_raw(&mut slow.stream).await;
    assert!(ended, "the slow socket was never closed");
    assert!(
        saw_close,
        "the slow socket ended without a 4100 close frame"
    );
    // It left its channel; the node is healthy and serves the rest.
    let mut count = subscription_count(&node, channel).await;
    for _ in 0..100 {
        if count == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        count = subscription_count(&node, channel).await;
    }
    assert_eq!(count, 1, "the slow consumer is still subscribed");
    still_open(&mut normal).await;
    still_served(&node, &mut normal, channel).await;
    let (status, _) = node.raw_http("GET", "/healthz", "").await;
    assert_eq!(status, 200);
    let mut fresh = node.connect().await;
    fresh.subscribe(channel).await;
    still_served(&node, &mut fresh, channel).await;
}

/// A slow consumer that never reads again must still be released by the node (it leaves its
/// channels and its connection slot), not kept until it happens to read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_that_never_reads_is_released() {
    let channel = "firehose-b";
    let SlowReaderSetup {
        node,
        reader,
        progress,
        mut slow,
    } = slow_reader_setup(channel).await;
    let sent = flood(&node, channel, &progress, 20).await;
    node.trigger(&[channel], "done", "{}").await;
    let (seen, _normal) = tokio::time::timeout(Duration::from_secs(15), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.len(), sent);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut count = subscription_count(&node, channel).await;
    while count != 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        count = subscription_count(&node, channel).await;
    }
    // Whether or not it was released, it did overflow: reading it shows the 4100 close.
    let (saw_close, ended) = drain_raw(&mut slow.stream).await;
    assert!(
        saw_close && ended,
        "the slow consumer was not cut off (close seen: {saw_close}, ended: {ended})"
    );
    assert_eq!(
        count, 1,
        "a slow consumer that does not read stays subscribed (and connected) after its queue overflowed; \
         it is only closed once it reads again"
    );
}

// ---- liveness -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_gets_ping_then_4201_while_a_ponging_client_stays() {
    let node = TestNode::start_with(|config| {
        config.activity_timeout_secs = 1;
        config.pong_timeout_secs = 1;
    })
    .await;
    let before = errors(&node.metrics().await, "4201", "pong_timeout");
    let mut silent = node.connect().await;
    let mut lively = node.connect().await;
    let silent_side = async {
        let started = tokio::time::Instant::now();
        let ping = silent.next().await;
        assert_eq!(ping.event, "pusher:ping", "{}", ping.raw);
        let pinged_after = started.elapsed();
        assert!(
            pinged_after >= Duration::from_millis(800),
            "pinged after {pinged_after:?}"
        );
        let (closed, frames) = silent.closed().await;
        let closed_after = started.elapsed();
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_error_frame(&frames[0], Some(4201));
        assert_eq!(closed, Closed::Code(4201));
        assert!(
            closed_after >= pinged_after + Duration::from_millis(800),
            "closed after {closed_after:?}"
        );
    };
    let lively_side = async {
        let mut pings = 0;
        let until = tokio::time::Instant::now() + Duration::from_millis(3500);
        while tokio::time::Instant::now() < until {
            match tokio::time::timeout_at(until, lively.next()).await {
                Err(_) => break,
                Ok(frame) => {
                    assert_eq!(frame.event, "pusher:ping", "{}", frame.raw);
                    pings += 1;
                    lively
                        .send(json!({"event": "pusher:pong", "data": {}}))
                        .await;
                }
            }
        }
        assert!(
            pings >= 2,
            "the lively client was pinged {pings} times in 3.5 s"
        );
    };
    tokio::join!(silent_side, lively_side);
    still_open(&mut lively).await;
    assert_error_counted(&node, "4201", "pong_timeout", before, 1.0).await;
}
