//! Presence channels: rosters, member_added / member_removed once per user, the limit.

use std::time::Duration;

use serde_json::json;

use super::support::*;

#[tokio::test]
async fn roster_and_member_events_across_connections_and_users() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    let ack = a.join("presence-room", "1", json!({"name":"A"})).await;
    assert_eq!(ack.data["presence"]["count"], 1);
    assert_eq!(ack.data["presence"]["hash"]["1"]["name"], "A");

    // A second connection of user 1: no member_added for anyone.
    let mut a2 = node.connect().await;
    let ack = a2.join("presence-room", "1", json!({"name":"A"})).await;
    assert_eq!(ack.data["presence"]["count"], 1);
    a.assert_silent(Duration::from_millis(150)).await;

    // User 2 joins: both connections of user 1 hear it once; user 2 gets the roster.
    let mut b = node.connect().await;
    let ack = b.join("presence-room", "2", json!({"name":"B"})).await;
    assert_eq!(ack.data["presence"]["count"], 2);
    assert_eq!(ack.data["presence"]["ids"], json!(["1", "2"]));
    for client in [&mut a, &mut a2] {
        let added = client.next().await;
        assert_eq!(added.event, "pusher_internal:member_added");
        assert_eq!(added.data, json!({"user_id":"2","user_info":{"name":"B"}}));
    }
    b.assert_silent(Duration::from_millis(100)).await;

    // User 1's first connection leaves: user 1 is still present through a2.
    a.close().await;
    b.assert_silent(Duration::from_millis(150)).await;
    let (_, users) = node
        .api(
            "GET",
            "/apps/app-id/channels/presence-room/users",
            None,
            &[],
        )
        .await;
    assert_eq!(users, json!({"users":[{"id":"1"},{"id":"2"}]}));

    // Its last connection leaves: member_removed exactly once.
    a2.send(json!({"event":"pusher:unsubscribe","data":{"channel":"presence-room"}}))
        .await;
    let removed = b.next().await;
    assert_eq!(removed.event, "pusher_internal:member_removed");
    assert_eq!(removed.data, json!({"user_id":"1"}));
    b.assert_silent(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn numeric_user_ids_become_strings() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    let channel_data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
    let auth = a.sign(&format!("{}:presence-n:{channel_data}", a.socket_id));
    a.send(json!({"event":"pusher:subscribe","data":{"auth":auth,"channel":"presence-n","channel_data":channel_data}}))
        .await;
    let ack = a.next().await;
    assert_eq!(ack.data["presence"]["ids"], json!(["10"]));
}

#[tokio::test]
async fn signed_in_users_join_without_channel_data() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    a.sign_in(r#"{"id":"u7","user_info":{"name":"Seven"}}"#)
        .await;
    let auth = a.sign(&format!("{}:presence-s", a.socket_id));
    a.send(json!({"event":"pusher:subscribe","data":{"auth":auth,"channel":"presence-s"}}))
        .await;
    let ack = a.next().await;
    assert_eq!(ack.event, "pusher_internal:subscription_succeeded");
    assert_eq!(ack.data["presence"]["hash"]["u7"]["name"], "Seven");
}

#[tokio::test]
async fn the_member_limit_refuses_new_users_only() {
    let node = TestNode::start_with(|c| c.apps[0].max_presence_members = 2).await;
    let mut a = node.connect().await;
    a.join("presence-full", "1", json!({})).await;
    let mut b = node.connect().await;
    b.join("presence-full", "2", json!({})).await;
    let mut c = node.connect().await;
    let channel_data = r#"{"user_id":"3"}"#;
    let auth = c.sign(&format!("{}:presence-full:{channel_data}", c.socket_id));
    c.send(json!({"event":"pusher:subscribe","data":{"auth":auth,"channel":"presence-full","channel_data":channel_data}}))
        .await;
    let refusal = c.next().await;
    assert_eq!(refusal.event, "pusher:subscription_error");
    assert_eq!(refusal.data["type"], "LimitReached");
    assert_eq!(refusal.data["status"], 4100);
    // Another connection of a present user still joins.
    let mut a2 = node.connect().await;
    assert_eq!(
        a2.join("presence-full", "1", json!({})).await.data["presence"]["count"],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_give_every_member_the_complete_list() {
    let node = TestNode::start().await;
    let members = 60;
    let mut clients = Vec::new();
    for _ in 0..members {
        clients.push(node.connect().await);
    }
    let joins = clients.into_iter().enumerate().map(|(i, mut client)| {
        tokio::spawn(async move {
            let ack = client
                .join("presence-storm", &i.to_string(), json!({}))
                .await;
            let mut known: std::collections::BTreeSet<String> = ack.data["presence"]["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            while known.len() < members {
                let frame = client.next().await;
                assert_eq!(frame.event, "pusher_internal:member_added");
                let id = frame.data["user_id"].as_str().unwrap().to_owned();
                assert!(known.insert(id), "member_added twice");
            }
            client
        })
    });
    let joined = futures_util::future::join_all(joins).await;
    assert_eq!(joined.into_iter().filter(|r| r.is_ok()).count(), members);
}
