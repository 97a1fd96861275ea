//! Subscribing to each channel type, and delivery of HTTP-published events.

use std::time::Duration;

use serde_json::json;

use super::support::*;

#[tokio::test]
async fn public_channel_receives_published_events_verbatim() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    let ack = a.subscribe("news").await;
    assert_eq!(ack.data, json!({}));
    node.trigger(&["news"], "my-event", r#"{"hello":"world"}"#)
        .await;
    let frame = a.next().await;
    assert_eq!(
        frame.raw,
        r#"{"event":"my-event","channel":"news","data":"{\"hello\":\"world\"}"}"#
    );
}

#[tokio::test]
async fn unsubscribed_sockets_receive_nothing() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    a.subscribe("news").await;
    a.send(json!({"event":"pusher:unsubscribe","data":{"channel":"news"}}))
        .await;
    // Unsubscribing from a channel the socket does not hold is silently ignored.
    a.send(json!({"event":"pusher:unsubscribe","data":{"channel":"other"}}))
        .await;
    a.send(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(a.next().await.event, "pusher:pong");
    node.trigger(&["news"], "my-event", "x").await;
    a.assert_silent(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn resubscribing_is_acknowledged_without_side_effects() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    a.subscribe("news").await;
    a.subscribe("news").await;
    let (status, info) = node
        .api(
            "GET",
            "/apps/app-id/channels/news",
            None,
            &[("info", "subscription_count")],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(info, json!({"occupied": true, "subscription_count": 1}));
}

#[tokio::test]
async fn private_channels_check_the_signature() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    a.subscribe("private-room").await;
    let mut b = node.connect().await;
    let wrong = b.sign(&format!("{}:private-room", a.socket_id));
    b.send(json!({"event":"pusher:subscribe","data":{"auth":wrong,"channel":"private-room"}}))
        .await;
    let refusal = b.next().await;
    assert_eq!(refusal.event, "pusher:subscription_error");
    assert_eq!(refusal.channel.as_deref(), Some("private-room"));
    assert_eq!(refusal.data["status"], 401);
    assert_eq!(refusal.data["type"], "AuthError");
    node.trigger(&["private-room"], "e", "1").await;
    assert_eq!(a.next().await.event, "e");
    b.assert_silent(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn encrypted_channels_relay_ciphertext_untouched() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    a.subscribe("private-encrypted-room").await;
    let data = r#"{"nonce":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYX","ciphertext":"cUvi6VQlRGyKCRRclUJdHUsGJzgoj596PYEg0Ekt7UbHsAQ="}"#;
    node.trigger(&["private-encrypted-room"], "secret", data)
        .await;
    let frame = a.next().await;
    assert_eq!(
        frame.data["ciphertext"],
        "cUvi6VQlRGyKCRRclUJdHUsGJzgoj596PYEg0Ekt7UbHsAQ="
    );
}

#[tokio::test]
async fn cache_channels_replay_the_last_event_or_report_a_miss() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    a.subscribe("cache-scores").await;
    let miss = a.next().await;
    assert_eq!(miss.event, "pusher:cache_miss");
    assert_eq!(miss.channel.as_deref(), Some("cache-scores"));
    node.trigger(&["cache-scores"], "score", "1").await;
    node.trigger(&["cache-scores"], "score", "2").await;
    assert_eq!(a.next().await.data, json!(1));
    assert_eq!(a.next().await.data, json!(2));
    let mut b = node.connect().await;
    b.subscribe("cache-scores").await;
    let replay = b.next().await;
    assert_eq!(
        replay.raw,
        r#"{"event":"score","channel":"cache-scores","data":"2"}"#
    );
    let (status, info) = node
        .api(
            "GET",
            "/apps/app-id/channels/cache-scores",
            None,
            &[("info", "cache")],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(info["cache"]["data"], "2");
    assert!(info["cache"]["ttl"].as_u64().unwrap() > 1700);
    // The cache outlives the subscribers.
    a.close().await;
    b.close().await;
    let mut c = node.connect().await;
    c.subscribe("private-cache-x").await;
    assert_eq!(c.next().await.event, "pusher:cache_miss");
    c.subscribe("cache-scores").await;
    assert_eq!(c.next().await.data, json!(2));
}

#[tokio::test]
async fn sign_in_and_server_to_user_channel() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    let user_data = r#"{"id":"u1","user_info":{"name":"A"}}"#;
    let ok = a.sign_in(user_data).await;
    assert_eq!(ok.event, "pusher:signin_success");
    assert_eq!(ok.data["user_data"], user_data);
    a.subscribe("#server-to-user-u1").await;
    // Another socket may not listen to u1's channel.
    let mut b = node.connect().await;
    b.send(json!({"event":"pusher:subscribe","data":{"auth":"","channel":"#server-to-user-u1"}}))
        .await;
    let refusal = b.next().await;
    assert_eq!(refusal.event, "pusher:subscription_error");
    assert_eq!(refusal.data["status"], 403);
    // sendToUser reaches every connection of the user.
    let mut a2 = node.connect().await;
    a2.sign_in(user_data).await;
    node.trigger(&["#server-to-user-u1"], "note", r#"{"x":1}"#)
        .await;
    assert_eq!(a.next().await.data, json!({"x": 1}));
    assert_eq!(a2.next().await.data, json!({"x": 1}));
    b.assert_silent(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn sign_in_failures_keep_the_socket_open() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    a.send(
        json!({"event":"pusher:signin","data":{"auth":"app-key:00","user_data":"{\"id\":\"u1\"}"}}),
    )
    .await;
    let error = a.next().await;
    assert_eq!(error.event, "pusher:error");
    assert_eq!(error.data["code"], 4009);
    assert_eq!(
        a.sign_in(r#"{"id":"u1"}"#).await.event,
        "pusher:signin_success"
    );
    let other = a.sign_in(r#"{"id":"u2"}"#).await;
    assert_eq!(other.event, "pusher:error");
    assert_eq!(other.data["code"], 4009);
    let numeric = a.sign_in(r#"{"id":5}"#).await;
    assert_eq!(numeric.data["code"], 4009);
}

#[tokio::test]
async fn terminate_connections_closes_the_users_sockets_with_4009() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    a.sign_in(r#"{"id":"u1"}"#).await;
    let mut other = node.connect().await;
    other.sign_in(r#"{"id":"u2"}"#).await;
    let (status, _) = node
        .api(
            "POST",
            "/apps/app-id/users/u1/terminate_connections",
            Some("{}"),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    let (closed, frames) = a.closed().await;
    assert_eq!(closed, Closed::Code(4009));
    assert!(frames
        .iter()
        .any(|f| f.event == "pusher:error" && f.data["code"] == 4009));
    other.send(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(other.next().await.event, "pusher:pong");
}

#[tokio::test]
async fn node_answers_pings_and_protocol_ping_frames() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    a.send(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(a.next().await.raw, r#"{"event":"pusher:pong","data":{}}"#);
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    a.ws.send(Message::Ping(b"hi".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, a.ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(b"hi".to_vec().into()));
}

#[tokio::test]
async fn shutdown_asks_clients_to_reconnect_now() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    a.subscribe("news").await;
    let TestNode { handle, .. } = node;
    let shutdown = tokio::spawn(handle.shutdown(Duration::from_secs(2)));
    let (closed, _) = a.closed().await;
    assert_eq!(closed, Closed::Code(4200));
    shutdown.await.unwrap();
}

#[tokio::test]
async fn watchlist_reports_online_and_offline() {
    let node = TestNode::start_with(|c| c.apps[0].watchlist_events = true).await;
    let mut bob = node.connect().await;
    bob.sign_in(r#"{"id":"bob"}"#).await;
    let mut alice = node.connect().await;
    let ok = alice
        .sign_in(r#"{"id":"alice","watchlist":["bob","carol"]}"#)
        .await;
    assert_eq!(ok.event, "pusher:signin_success");
    let status = alice.next().await;
    assert_eq!(status.event, "pusher_internal:watchlist_events");
    assert_eq!(
        status.data,
        json!({"events":[{"name":"online","user_ids":["bob"]},{"name":"offline","user_ids":["carol"]}]})
    );
    let mut carol = node.connect().await;
    carol.sign_in(r#"{"id":"carol"}"#).await;
    assert_eq!(
        alice.next().await.data,
        json!({"events":[{"name":"online","user_ids":["carol"]}]})
    );
    // A second connection of carol changes nothing; bob's only connection leaving does.
    let mut carol2 = node.connect().await;
    carol2.sign_in(r#"{"id":"carol"}"#).await;
    bob.close().await;
    assert_eq!(
        alice.next().await.data,
        json!({"events":[{"name":"offline","user_ids":["bob"]}]})
    );
}

#[tokio::test]
async fn authorized_connections_must_authorize_in_time() {
    let node = TestNode::start_with(|c| c.apps[0].authorization_timeout_secs = Some(1)).await;
    let mut idle = node.connect().await;
    idle.subscribe("public-only").await;
    let mut signed = node.connect().await;
    signed.sign_in(r#"{"id":"u"}"#).await;
    let mut private = node.connect().await;
    private.subscribe("private-a").await;
    let (closed, frames) = idle.closed().await;
    assert_eq!(closed, Closed::Code(4009));
    assert!(frames
        .iter()
        .any(|f| f.event == "pusher:error" && f.data["code"] == 4009));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for client in [&mut signed, &mut private] {
        client.send(json!({"event":"pusher:ping","data":{}})).await;
        assert_eq!(client.next().await.event, "pusher:pong");
    }
}

#[tokio::test]
async fn subscription_counting_tells_subscribers_and_throttles_big_channels() {
    let node = TestNode::start_with(|c| c.apps[0].subscription_count = true).await;
    let mut a = node.connect().await;
    a.subscribe("counted").await;
    let count = a.next().await;
    assert_eq!(
        count.raw,
        r#"{"event":"pusher_internal:subscription_count","channel":"counted","data":"{\"subscription_count\":1}"}"#
    );
    let mut b = node.connect().await;
    b.subscribe("counted").await;
    assert_eq!(b.next().await.data, json!({"subscription_count": 2}));
    assert_eq!(a.next().await.data, json!({"subscription_count": 2}));
    b.send(json!({"event":"pusher:unsubscribe","data":{"channel":"counted"}}))
        .await;
    assert_eq!(a.next().await.data, json!({"subscription_count": 1}));
    // Presence channels carry member counts instead.
    a.join("presence-counted", "1", json!({})).await;
    a.assert_silent(Duration::from_millis(150)).await;

    // Above 100 subscribers the count is sent at most every 5 s.
    let mut others = Vec::new();
    for _ in 0..101 {
        let mut c = node.connect().await;
        c.subscribe("counted").await;
        others.push(c);
    }
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    while seen.last() != Some(&100) {
        let frame = a.next().await;
        seen.push(frame.data["subscription_count"].as_u64().unwrap());
    }
    assert_eq!(
        seen,
        (2..=100).collect::<Vec<u64>>(),
        "sent at once up to 100 subscribers"
    );
    let mut late = node.connect().await;
    late.subscribe("counted").await;
    // Longer than `Client::next`'s own wait: the flush comes about 5 s after the last count.
    let throttled = loop {
        use futures_util::StreamExt;
        let message = tokio::time::timeout(Duration::from_secs(8), a.ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            break decode(&text);
        }
    };
    // 101, 102 and 103 fell inside one throttle window: one message with the latest count.
    assert_eq!(throttled.data, json!({"subscription_count": 103}));
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "sent after {:?}, not throttled",
        started.elapsed()
    );
}
