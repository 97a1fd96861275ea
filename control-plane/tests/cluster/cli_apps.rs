//! An app's life through the CLI binary, as a node serving it sees it: created (usable
//! within a second), updated, secret rotated, deleted (refused, clients closed with 4001).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// A node serves a created app within this long (issue 4).
const PROPAGATION: Duration = Duration::from_secs(1);

fn field<'a>(app: &'a Value, name: &str) -> &'a str {
    app[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {app}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_created_updated_rotated_and_deleted_with_the_cli_reaches_the_node() {
    let dir = DataDir::new("cli-apps");
    let cp = ControlPlane::start(&dir).await;
    let mut ops = cp.operator().await;
    let node = Node::start(&cp.endpoint(), "edge-cli", "eu").await;
    wait_active(&mut ops, &node.id).await;

    // Create: the JSON carries what a publisher and a client need.
    let created = cp.ctl_json(&["apps", "create"]).await;
    let created_at = Instant::now();
    let app = created
        .as_array()
        .and_then(|a| a.first())
        .unwrap_or_else(|| panic!("apps create --json printed {created}"))
        .clone();
    let (id, key, secret) = (field(&app, "id"), field(&app, "key"), field(&app, "secret"));
    assert!(
        !id.is_empty() && key.len() >= 16 && secret.len() >= 32,
        "{app}"
    );
    assert_eq!(app["client_events"], json!(true));

    // Usable within a second: a WebSocket connects and a signed publish is accepted.
    let mut client = eventually("the new app to accept connections", PROPAGATION, || async {
        let (client, first) = node.try_connect(key).await;
        (first.event == "pusher:connection_established").then_some(client)
    })
    .await;
    eventually("the new app to accept publishes", PROPAGATION, || async {
        (node.publish(id, key, secret).await == 200).then_some(())
    })
    .await;
    let usable_after = created_at.elapsed();
    assert!(
        usable_after <= PROPAGATION,
        "usable only {usable_after:?} after creation"
    );

    // Client events are on by default: a second client receives the first one's.
    let mut peer = node.connect(key).await;
    client.subscribe_private(key, secret, "private-room").await;
    peer.subscribe_private(key, secret, "private-room").await;
    let client_event = json!({"event":"client-typing","channel":"private-room","data":{"who":"a"}});
    client.send(client_event.clone()).await;
    let got = peer.next().await;
    assert_eq!(got.event, "client-typing", "{}", got.raw);

    // Update: client events off reaches the node; the sender is told so.
    let updated = cp
        .ctl_json(&["apps", "update", id, "--client-events", "false"])
        .await;
    assert_eq!(updated[0]["client_events"], json!(false), "{updated}");
    assert_eq!(
        field(&updated[0], "secret"),
        secret,
        "update keeps the secret"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        client.send(client_event.clone()).await;
        if let Some(frame) = client.next_within(Duration::from_millis(150)).await {
            assert_eq!(frame.event, "pusher:error", "{}", frame.raw);
            let message = frame.data["message"].as_str().unwrap_or_default();
            if message.contains("not enabled") {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "client events still allowed 2 s after the update"
        );
    }
    // Events sent before the update took effect may still reach the peer; from now on
    // nothing does.
    while peer.next_within(Duration::from_millis(200)).await.is_some() {}
    client.send(client_event.clone()).await;
    let refused = client.next().await;
    assert_eq!(refused.event, "pusher:error", "{}", refused.raw);
    assert!(
        peer.next_within(Duration::from_millis(200)).await.is_none(),
        "a refused client event was delivered"
    );

    // Rotate: the old secret is refused by the node's HTTP API, the new one accepted.
    let rotated = cp.ctl_json(&["apps", "rotate-secret", id]).await;
    let new_secret = field(&rotated[0], "secret");
    assert_ne!(new_secret, secret);
    assert_eq!(field(&rotated[0], "key"), key, "rotation keeps the key");
    eventually(
        "the old secret to be refused",
        Duration::from_secs(2),
        || async { (node.publish(id, key, secret).await == 401).then_some(()) },
    )
    .await;
    assert_eq!(node.publish(id, key, new_secret).await, 200);
    // The listing agrees.
    let listed = cp.ctl_json(&["apps", "list"]).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(field(&listed[0], "secret"), new_secret);

    // Delete: open connections are closed with 4001, new ones refused with 4001.
    let deleted = cp.ctl_json(&["apps", "delete", id]).await;
    assert_eq!(deleted["deleted"], json!(id), "{deleted}");
    let (code, _) = peer.closed().await;
    assert_eq!(code, Some(4001), "an open connection of a deleted app");
    let (code, _) = client.closed().await;
    assert_eq!(code, Some(4001), "an open connection of a deleted app");
    let (mut refused, first) = node.try_connect(key).await;
    assert_eq!(first.event, "pusher:error", "{}", first.raw);
    assert_eq!(first.data["code"], json!(4001), "{}", first.raw);
    let (code, _) = refused.closed().await;
    assert_eq!(code, Some(4001));
    assert_eq!(node.publish(id, key, new_secret).await, 404);
    let listed = cp.ctl_json(&["apps", "list"]).await;
    assert_eq!(listed, json!([]));

    drop(ops);
    node.shutdown().await;
    cp.shutdown().await;
}
