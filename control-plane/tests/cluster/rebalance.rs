//! Membership changes (issue 6): channels move to their new owner when a node joins or
//! leaves, subscribers keep receiving, and presence stays the truth of the connected
//! sockets: no member_added / member_removed for users who did not come or go.

use relaymesh_node::config::MeshTransport;
use relaymesh_proto::ring::Ring;

use crate::routing::*;
use crate::support::*;

/// A channel starting with `prefix` owned by `before` among a, b, c and by `after` once
/// `joined` is a member too.
fn moving(prefix: &str, before: &str, joined: &str, after: &str) -> String {
    let old = Ring::new(["a", "b", "c"]);
    let new = Ring::new(["a", "b", "c", joined]);
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|c| old.owner(APP, c) == Some(before) && new.owner(APP, c) == Some(after))
        .unwrap()
}

#[tokio::test]
async fn a_joining_node_takes_its_channels_without_loss_or_spurious_presence() {
    let mut cluster = Cluster::start(MeshTransport::Quic, |_| {}).await;
    let room = moving("presence-room-", "c", "d", "d");
    let news = moving("news-", "c", "d", "d");
    let mut u1 = cluster.node("a").connect(KEY).await;
    let mut u2 = cluster.node("b").connect(KEY).await;
    join_presence(&mut u1, &room, "u1").await;
    join_presence(&mut u2, &room, "u2").await;
    expect_event(&mut u1, "pusher_internal:member_added").await;
    let mut reader_a = cluster.node("a").connect(KEY).await;
    let mut reader_b = cluster.node("b").connect(KEY).await;
    subscribe_public(&mut reader_a, &news).await;
    subscribe_public(&mut reader_b, &news).await;

    cluster.add_node("d", |_| {}).await;
    cluster.ready().await;
    // d owns both channels now; publish through c, the former owner.
    eventually("d's view to settle everywhere", WAIT, || async {
        let (status, info) = channel_info(cluster.node("d"), &news, "subscription_count").await;
        (status == 200 && info["subscription_count"] == 2).then_some(())
    })
    .await;
    let (status, answer) = trigger(cluster.node("c"), &[&news], "after-join", "x").await;
    assert_eq!(status, 200, "{answer}");
    for reader in [&mut reader_a, &mut reader_b] {
        assert_eq!(expect_event(reader, "after-join").await.data, "x");
        expect_quiet(reader).await;
    }
    // Nobody came or went.
    expect_quiet(&mut u1).await;
    expect_quiet(&mut u2).await;
    let (_, users) = channel_users(cluster.node("a"), &room).await;
    assert_eq!(
        users,
        serde_json::json!({"users": [{"id": "u1"}, {"id": "u2"}]})
    );
    // A new member on the new owner's own node is announced once.
    let mut u3 = cluster.node("d").connect(KEY).await;
    assert_eq!(
        join_presence(&mut u3, &room, "u3").await,
        ["u1", "u2", "u3"]
    );
    for member in [&mut u1, &mut u2] {
        assert_eq!(
            expect_event(member, "pusher_internal:member_added")
                .await
                .data["user_id"],
            "u3"
        );
        expect_quiet(member).await;
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_leaving_node_takes_only_its_own_members_away() {
    let mut cluster = Cluster::start(MeshTransport::Quic, |_| {}).await;
    // Owned by b, which leaves; members on a and c stay.
    let room = owned_by("b", "presence-lobby-");
    let mut u1 = cluster.node("a").connect(KEY).await;
    let mut u2 = cluster.node("c").connect(KEY).await;
    let mut u3 = cluster.node("b").connect(KEY).await;
    join_presence(&mut u1, &room, "u1").await;
    join_presence(&mut u2, &room, "u2").await;
    join_presence(&mut u3, &room, "u3").await;
    expect_event(&mut u1, "pusher_internal:member_added").await;
    expect_event(&mut u1, "pusher_internal:member_added").await;
    expect_event(&mut u2, "pusher_internal:member_added").await;

    let b = cluster.nodes.remove(1);
    assert_eq!(b.id, "b");
    b.shutdown().await;
    for member in [&mut u1, &mut u2] {
        let removed = expect_event(member, "pusher_internal:member_removed").await;
        assert_eq!(removed.data["user_id"], "u3");
        expect_quiet(member).await;
    }
    let (_, users) = channel_users(cluster.node("c"), &room).await;
    assert_eq!(
        users,
        serde_json::json!({"users": [{"id": "u1"}, {"id": "u2"}]})
    );
    let (status, _) = trigger(cluster.node("a"), &[&room], "still-here", "y").await;
    assert_eq!(status, 200);
    for member in [&mut u1, &mut u2] {
        assert_eq!(expect_event(member, "still-here").await.data, "y");
    }
    cluster.shutdown().await;
}

/// Drain (SIGTERM or an operator): the node leaves the ring while its clients are still
/// there, its channels move, then its clients are sent away with 4200; subscribers
/// elsewhere miss nothing and see only the drained node's users leave.
async fn drain_moves_channels_then_clients(by_operator: bool) {
    let cluster = Cluster::start(MeshTransport::Quic, |_| {}).await;
    let room = owned_by("b", "presence-hall-");
    let news = owned_by("b", "news-");
    let mut u1 = cluster.node("a").connect(KEY).await;
    let mut u2 = cluster.node("b").connect(KEY).await;
    join_presence(&mut u1, &room, "u1").await;
    join_presence(&mut u2, &room, "u2").await;
    expect_event(&mut u1, "pusher_internal:member_added").await;
    let mut reader = cluster.node("c").connect(KEY).await;
    subscribe_public(&mut reader, &news).await;

    let b = cluster.node("b");
    if by_operator {
        cluster
            .cp
            .operator()
            .await
            .drain_node(relaymesh_proto::control::DrainNodeRequest {
                node_id: "b".into(),
            })
            .await
            .unwrap();
    } else {
        tokio::spawn(relaymesh_node::drain::drain(b.handle.shared().clone()));
    }
    let (code, _) = u2.closed().await;
    assert_eq!(code, Some(4200));
    let mut drained = b.handle.shared().drained.subscribe();
    tokio::time::timeout(WAIT, drained.wait_for(|d| *d))
        .await
        .expect("the drain finishes once the clients are gone")
        .unwrap();
    assert_eq!(b.readyz().await, 503);
    // u2's only connection went: removed once; u1 stays and hears of nobody else.
    let removed = expect_event(&mut u1, "pusher_internal:member_removed").await;
    assert_eq!(removed.data["user_id"], "u2");
    expect_quiet(&mut u1).await;
    // b's channels have other owners now; publishing through b's peers reaches c.
    let (status, answer) = trigger(cluster.node("a"), &[&news], "after-drain", "d").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(expect_event(&mut reader, "after-drain").await.data, "d");
    expect_quiet(&mut reader).await;
    let (_, users) = channel_users(cluster.node("c"), &room).await;
    assert_eq!(users, serde_json::json!({"users": [{"id": "u1"}]}));
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_node_drained_on_sigterm_hands_over_then_sends_clients_away() {
    drain_moves_channels_then_clients(false).await;
}

#[tokio::test]
async fn a_node_drained_by_an_operator_hands_over_then_sends_clients_away() {
    drain_moves_channels_then_clients(true).await;
}
