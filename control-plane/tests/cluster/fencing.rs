//! Fencing (issue 6): a node cut off from the control plane stops owning channels before
//! the control plane gives them to others, says so, and comes back when it can; a
//! control plane that is down for everyone stops no one.

use std::time::Duration;

use relaymesh_node::config::MeshTransport;

use crate::routing::*;
use crate::support::*;

async fn metric(node: &Node, name: &str) -> Option<f64> {
    node.metrics()
        .await
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Nodes a and b, and c whose control-plane connection goes through a proxy the test can
/// cut; a channel owned by c with a subscriber on a.
async fn c_behind_a_proxy(prefix: &str) -> (Cluster, Proxy, String, Client) {
    let mut cluster = Cluster::empty(MeshTransport::Quic).await;
    let proxy = Proxy::start(cluster.cp.addr).await;
    cluster.add_node("a", |_| {}).await;
    cluster.add_node("b", |_| {}).await;
    cluster.add_node_at("c", &proxy.endpoint(), |_| {}).await;
    cluster.ready().await;
    let channel = owned_by("c", prefix);
    let mut reader = cluster.node("a").connect(KEY).await;
    subscribe_public(&mut reader, &channel).await;
    (cluster, proxy, channel, reader)
}

/// c, back in the cluster, holds a's subscriber again, and an event published through b
/// reaches it once (events published while the channel moved may arrive first).
async fn back_at_c(cluster: &Cluster, channel: &str, reader: &mut Client, event: &str) {
    let c = cluster.node("c");
    eventually(
        "c to hold a's subscriber again",
        Duration::from_secs(15),
        || async {
            let (status, info) = channel_info(c, channel, "subscription_count").await;
            (status == 200 && info["subscription_count"] == 1).then_some(())
        },
    )
    .await;
    let (status, answer) = trigger(cluster.node("b"), &[channel], event, "z").await;
    assert_eq!(status, 200, "{answer}");
    let mut seen = 0;
    while let Some(frame) = reader.next_within(Duration::from_millis(500)).await {
        seen += usize::from(frame.event == event);
    }
    assert_eq!(seen, 1);
}

#[tokio::test]
async fn a_node_cut_off_from_the_control_plane_stops_owning_and_comes_back() {
    let (cluster, proxy, channel, mut reader) = c_behind_a_proxy("fenced-").await;

    proxy.cut();
    let c = cluster.node("c");
    eventually("c to fence itself", Duration::from_secs(3), || async {
        (c.readyz().await == 503 && metric(c, "relaymesh_fenced").await == Some(1.0)).then_some(())
    })
    .await;
    let body = reqwest::get(format!("http://{}/readyz", c.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("fenced"), "{body}");
    // c refuses to number events of its channels.
    let (status, answer) = trigger(c, &[&channel], "refused", "x").await;
    assert_eq!(status, 503, "{answer}");
    // The control plane expires c; the channel moves and the subscriber on a is rebuilt
    // at the new owner.
    let b = cluster.node("b");
    eventually("the channel to move", Duration::from_secs(5), || async {
        (trigger(b, &[&channel], "moved", "y").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(expect_event(&mut reader, "moved").await.data, "y");

    proxy.mend();
    eventually(
        "c to register again and be ready",
        Duration::from_secs(10),
        || async { (c.readyz().await == 200).then_some(()) },
    )
    .await;
    assert_eq!(metric(c, "relaymesh_fenced").await, Some(0.0));
    back_at_c(&cluster, &channel, &mut reader, "back").await;
    cluster.shutdown().await;
}

/// Cut off just long enough to fence itself, c registers again, usually before the
/// control plane expired it. It dropped its channels when it fenced, so it registers as
/// a node that lost its state: the view changes and a sends it its part again. Without
/// that, c would own its channel again with no subscriber in it.
#[tokio::test]
async fn a_node_fenced_for_a_moment_gets_its_channels_back() {
    let (cluster, proxy, channel, mut reader) = c_behind_a_proxy("blip-").await;

    proxy.cut();
    let c = cluster.node("c");
    eventually("c to fence itself", Duration::from_secs(3), || async {
        (metric(c, "relaymesh_fenced").await == Some(1.0)).then_some(())
    })
    .await;
    proxy.mend();
    eventually(
        "c to register again and be ready",
        Duration::from_secs(10),
        || async {
            (c.readyz().await == 200 && metric(c, "relaymesh_fenced").await == Some(0.0))
                .then_some(())
        },
    )
    .await;
    back_at_c(&cluster, &channel, &mut reader, "after-blip").await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn the_data_plane_keeps_going_while_the_control_plane_is_down() {
    let mut cluster = Cluster::empty(MeshTransport::Quic).await;
    let proxy = Proxy::start(cluster.cp.addr).await;
    for id in ["a", "b", "c"] {
        cluster.add_node_at(id, &proxy.endpoint(), |_| {}).await;
    }
    cluster.ready().await;
    let channel = owned_by("c", "steady-");
    let mut reader = cluster.node("a").connect(KEY).await;
    subscribe_public(&mut reader, &channel).await;

    // The control plane is gone for every node: nobody renews, nobody is fenced.
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for node in &cluster.nodes {
        assert_eq!(
            metric(node, "relaymesh_fenced").await.unwrap_or(0.0),
            0.0,
            "{}",
            node.id
        );
    }
    let (status, answer) = trigger(cluster.node("b"), &[&channel], "steady", "one").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(expect_event(&mut reader, "steady").await.data, "one");

    proxy.mend();
    eventually(
        "every node to be ready again",
        Duration::from_secs(10),
        || async {
            let mut all = true;
            for node in &cluster.nodes {
                all &= node.readyz().await == 200;
            }
            all.then_some(())
        },
    )
    .await;
    let (status, _) = trigger(cluster.node("b"), &[&channel], "steady", "two").await;
    assert_eq!(status, 200);
    let mut seen = Vec::new();
    while let Some(frame) = reader.next_within(Duration::from_millis(500)).await {
        seen.push(frame.data);
    }
    assert!(
        seen.iter().filter(|d| **d == "two").count() == 1,
        "{seen:?}"
    );
    cluster.shutdown().await;
}
