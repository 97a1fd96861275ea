//! The HTTP API: events, batches, socket_id exclusion, info, channel queries.

use serde_json::json;

use super::support::*;

#[tokio::test]
async fn events_to_several_channels_with_socket_exclusion() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    for c in [&mut a, &mut b] {
        c.subscribe("one").await;
        c.subscribe("two").await;
    }
    let body =
        json!({"name":"e","data":"d","channels":["one","two"],"socket_id":a.socket_id}).to_string();
    let (status, reply) = node
        .api("POST", "/apps/app-id/events", Some(&body), &[])
        .await;
    assert_eq!((status, reply), (200, json!({})));
    assert_eq!(b.next().await.channel.as_deref(), Some("one"));
    assert_eq!(b.next().await.channel.as_deref(), Some("two"));
    a.assert_silent(std::time::Duration::from_millis(150)).await;
}

#[tokio::test]
async fn events_answer_requested_info() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    a.join("presence-i", "1", json!({})).await;
    a.subscribe("plain").await;
    let body = json!({"name":"e","data":"d","channels":["presence-i","plain"],"info":"user_count,subscription_count"})
        .to_string();
    let (status, reply) = node
        .api("POST", "/apps/app-id/events", Some(&body), &[])
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        reply,
        json!({"channels":{"presence-i":{"user_count":1,"subscription_count":1},"plain":{"subscription_count":1}}})
    );
}

#[tokio::test]
async fn batch_events_publish_in_order() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    a.subscribe("b1").await;
    a.subscribe("b2").await;
    let batch = json!({"batch":[
        {"channel":"b1","name":"first","data":"1"},
        {"channel":"b2","name":"second","data":"2","info":"subscription_count"},
    ]})
    .to_string();
    let (status, reply) = node
        .api("POST", "/apps/app-id/batch_events", Some(&batch), &[])
        .await;
    assert_eq!(status, 200);
    assert_eq!(reply, json!({"batch":[{},{"subscription_count":1}]}));
    assert_eq!(a.next().await.event, "first");
    assert_eq!(a.next().await.event, "second");
}

#[tokio::test]
async fn channel_queries() {
    let node = TestNode::start().await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    a.join("presence-lobby", "1", json!({})).await;
    a.join("presence-other", "1", json!({})).await;
    b.join("presence-lobby", "2", json!({})).await;
    b.subscribe("news").await;

    let (status, list) = node.api("GET", "/apps/app-id/channels", None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        list,
        json!({"channels":{"news":{},"presence-lobby":{},"presence-other":{}}})
    );

    let (_, presence) = node
        .api(
            "GET",
            "/apps/app-id/channels",
            None,
            &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        )
        .await;
    assert_eq!(
        presence,
        json!({"channels":{"presence-lobby":{"user_count":2},"presence-other":{"user_count":1}}})
    );

    let (status, _) = node
        .api(
            "GET",
            "/apps/app-id/channels",
            None,
            &[("info", "user_count")],
        )
        .await;
    assert_eq!(status, 400, "user_count needs the presence- prefix filter");

    let (_, info) = node
        .api(
            "GET",
            "/apps/app-id/channels/presence-lobby",
            None,
            &[("info", "user_count,subscription_count")],
        )
        .await;
    assert_eq!(
        info,
        json!({"occupied":true,"user_count":2,"subscription_count":2})
    );

    let (_, empty) = node
        .api("GET", "/apps/app-id/channels/nobody", None, &[])
        .await;
    assert_eq!(empty, json!({"occupied":false}));

    let (status, _) = node
        .api(
            "GET",
            "/apps/app-id/channels/news",
            None,
            &[("info", "user_count")],
        )
        .await;
    assert_eq!(status, 400);

    let (_, users) = node
        .api(
            "GET",
            "/apps/app-id/channels/presence-lobby/users",
            None,
            &[],
        )
        .await;
    assert_eq!(users, json!({"users":[{"id":"1"},{"id":"2"}]}));
    let (status, _) = node
        .api("GET", "/apps/app-id/channels/news/users", None, &[])
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn ops_endpoints() {
    let node = TestNode::start().await;
    assert_eq!(node.raw_http("GET", "/healthz", "").await.0, 200);
    assert_eq!(node.raw_http("GET", "/readyz", "").await.0, 200);
    let mut a = node.connect().await;
    a.subscribe("m").await;
    node.trigger(&["m"], "e", "d").await;
    a.next().await;
    let metrics = node.metrics().await;
    for name in [
        "relaymesh_connections",
        "relaymesh_subscriptions",
        "relaymesh_messages_in_total",
        "relaymesh_messages_out_total",
        "relaymesh_http_requests_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert_eq!(node.raw_http("GET", "/nope", "").await.0, 404);
}
