//! Client events: relayed to the others, never echoed, user_id on presence, the rules.

use std::time::Duration;

use serde_json::json;

use super::support::*;

#[tokio::test]
async fn relayed_to_others_not_echoed() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    a.subscribe("private-chat").await;
    b.subscribe("private-chat").await;
    a.send(json!({"event":"client-typing","channel":"private-chat","data":{"typing":true}}))
        .await;
    let frame = b.next().await;
    assert_eq!(
        frame.raw,
        r#"{"event":"client-typing","channel":"private-chat","data":"{\"typing\":true}"}"#
    );
    a.assert_silent(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn presence_relay_carries_the_senders_user_id() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    a.join("presence-chat", "alice", json!({})).await;
    b.join("presence-chat", "bob", json!({})).await;
    a.wait_for("pusher_internal:member_added").await;
    a.send(json!({"event":"client-hi","channel":"presence-chat","data":"plain"}))
        .await;
    let frame = b.next().await;
    assert_eq!(frame.event, "client-hi");
    assert_eq!(frame.user_id.as_deref(), Some("alice"));
    assert_eq!(frame.data, json!("plain"));
}

#[tokio::test]
async fn refused_where_the_rules_say() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    a.subscribe("public").await;
    a.subscribe("private-encrypted-x").await;
    for channel in ["public", "private-encrypted-x", "private-not-subscribed"] {
        a.send(json!({"event":"client-x","channel":channel,"data":{}}))
            .await;
        let error = a.next().await;
        assert_eq!(error.event, "pusher:error", "{channel}");
        assert_eq!(error.data["code"], 4301, "{channel}");
    }
    let off = TestNode::start_with(|c| c.apps[0].client_events = false).await;
    let mut c = off.connect().await;
    c.subscribe("private-x").await;
    c.send(json!({"event":"client-x","channel":"private-x","data":{}}))
        .await;
    assert_eq!(c.next().await.data["code"], 4301);
}

#[tokio::test]
async fn rate_limited_per_connection() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    a.subscribe("private-burst").await;
    b.subscribe("private-burst").await;
    for i in 0..12 {
        a.send(json!({"event":"client-n","channel":"private-burst","data":{"i":i}}))
            .await;
    }
    let mut errors = 0;
    for _ in 0..2 {
        let error = a.next().await;
        assert_eq!(error.data["code"], 4301);
        errors += 1;
    }
    assert_eq!(errors, 2);
    for i in 0..10 {
        assert_eq!(b.next().await.data, json!({"i": i}));
    }
    b.assert_silent(Duration::from_millis(150)).await;
}
