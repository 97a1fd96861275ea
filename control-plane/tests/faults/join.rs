//! A fourth node joins under load (test 5).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use relaymesh_proto::ring::Ring;

use crate::check::{self, ms, Delivery, Findings};
use crate::clients::{lock, users, Client, Publisher};
use crate::cluster::{Cluster, APP};
use crate::{no_fencing, nodes, owned_by, serial, settle, within};

fn set(users: &[&str]) -> BTreeSet<String> {
    users.iter().map(|u| (*u).to_owned()).collect()
}

/// A channel starting with `prefix` owned by `before` among n1..n3 and by n4 once it
/// joined.
fn moving_to_n4(prefix: &str, before: &str) -> String {
    let old = Ring::new(["n1", "n2", "n3"]);
    let new = Ring::new(["n1", "n2", "n3", "n4"]);
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|c| old.owner(APP, c) == Some(before) && new.owner(APP, c) == Some("n4"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_under_load_loses_nothing() {
    let _serial = serial().await;
    let name = "join";
    let mut cluster = Cluster::new(name, 4, None).await;
    let three = ["n1", "n2", "n3"];
    for node in three {
        cluster.start_node(node);
    }
    let names: Vec<String> = three.iter().map(|n| (*n).to_owned()).collect();
    cluster
        .wait_ready(&names, Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("the first three nodes did not become ready: {e}"));
    let mut f = Findings::new(name);
    let mut channels: Vec<String> = three
        .iter()
        .map(|n| moving_to_n4(&format!("news-{n}-"), n))
        .collect();
    let staying = owned_by(&["n1", "n2", "n3", "n4"], "n1", "stay-");
    channels.push(staying.clone());
    let room = moving_to_n4("presence-room-", "n2");
    f.note(&format!("{channels:?}: the first three move to n4, {staying} stays on n1; {room} moves from n2 to n4"));
    let live = nodes(&cluster, &three);
    let mut readers = Vec::new();
    for channel in &channels {
        for node in three {
            let label = format!("{channel}-reader@{node}");
            readers.push(Client::start(&label, &live, node, channel, None, false).await);
        }
    }
    let mut members = Vec::new();
    for (i, node) in three.iter().enumerate() {
        let user = format!("u{}", i + 1);
        members.push(
            Client::start(
                &format!("{user}@{node}"),
                &live,
                node,
                &room,
                Some(&user),
                false,
            )
            .await,
        );
    }
    let first = set(&["u1", "u2", "u3"]);
    within(Duration::from_secs(3), || async {
        members.iter().all(|m| m.last().members().0 == first)
    })
    .await;
    let baseline: Vec<usize> = members
        .iter()
        .map(|m| m.last().member_events().len())
        .collect();
    let publisher = Publisher::start(
        &cluster.http,
        "n1",
        &cluster.base("n1"),
        &channels,
        Duration::from_millis(30),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let joined = Instant::now();
    f.note(&format!("start n4 at {}", cluster.at()));
    cluster.start_node("n4");
    let ready = cluster
        .wait_ready(&cluster.nodes.clone(), Duration::from_secs(15))
        .await;
    f.figure(
        "time from starting n4 to every node ready (ms)",
        ready
            .as_ref()
            .map_or_else(|e| format!("never: {e}"), |d| ms(*d).to_string()),
    );
    f.check(ready.is_ok(), || format!("after n4 joined: {ready:?}"));
    lock(&live).push(("n4".to_owned(), cluster.ws_addr("n4")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Presence before anyone new arrives: nobody came or went.
    let mut spurious = 0;
    for (member, b) in members.iter().zip(&baseline) {
        let events = member.last().member_events()[*b..].to_vec();
        spurious += events.len();
        f.check(events.is_empty(), || {
            format!(
                "{} saw member events {events:?} when n4 joined, though nobody came or went",
                member.label
            )
        });
    }
    // The new node serves subscribers and members too.
    let n4_reader = Client::start("n4-reader", &live, "n4", &channels[0], None, false).await;
    let marks: Vec<usize> = members
        .iter()
        .map(|m| m.last().member_events().len())
        .collect();
    let u4 = Client::start("u4@n4", &live, "n4", &room, Some("u4"), false).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pubs = publisher.stop().await;
    let mut checked: Vec<&Client> = readers.iter().collect();
    checked.push(&n4_reader);
    settle(&pubs, &checked, Duration::ZERO, Duration::from_secs(3)).await;

    let moved: Vec<_> = pubs
        .iter()
        .filter(|p| p.sent >= joined && !p.ok())
        .collect();
    f.figure("publishes refused after n4 started", moved.len());
    Delivery::of(&pubs, &checked, Duration::ZERO).report(&mut f, cluster.t0, "every channel");
    for (member, mark) in members.iter().zip(&marks) {
        let events = member.last().member_events()[*mark..].to_vec();
        spurious += events.iter().filter(|e| *e != "+u4").count();
        f.check(events == ["+u4"], || {
            format!(
                "{} saw {events:?} when u4 joined on n4; expected exactly one member_added u4",
                member.label
            )
        });
    }
    f.figure("spurious presence events", spurious);
    let mut all_members: Vec<&Client> = members.iter().collect();
    all_members.push(&u4);
    check::presence(
        &mut f,
        "presence after the join",
        &all_members,
        &set(&["u1", "u2", "u3", "u4"]),
        users(&cluster.http, &cluster.base("n4"), &room).await,
    );
    no_fencing(&cluster, &mut f, &["n1", "n2", "n3", "n4"]);
    if !f.is_clean() {
        cluster.print_metrics().await;
        cluster.dump_logs(80);
    }
    f.finish();
}
