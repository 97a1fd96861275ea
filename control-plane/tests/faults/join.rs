//! A fourth node joins under load (test 5).

use std::time::{Duration, Instant};

use relaymesh_proto::ring::Ring;

use crate::check::{self, Delivery, Findings};
use crate::clients::{lock, users, Client};
use crate::cluster::APP;
use crate::{
    all_ready, member_events_since, member_marks, members_on, no_member_events, nodes, owned_by,
    publish_through, readers_of_each, serial, set, settle, told_of, wrap_up,
};

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
    let mut cluster = crate::new_cluster(name, 4, None).await;
    let three = ["n1", "n2", "n3"];
    for node in three {
        cluster.start_node(node).unwrap();
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
    let readers = readers_of_each(&live, &three, &channels, false).await;
    let members = members_on(&live, &three, &room, false).await;
    let members: Vec<&Client> = members.iter().collect();
    told_of(&members, &set(&["u1", "u2", "u3"])).await;
    let baseline = member_marks(&members);
    let publisher = publish_through(&cluster, "n1", &channels, Duration::from_millis(30)).await;

    let joined = Instant::now();
    f.note(&format!("start n4 at {}", cluster.at()));
    cluster.start_node("n4").unwrap();
    all_ready(
        &cluster,
        &mut f,
        Duration::from_secs(15),
        Some("time from starting n4 to every node ready (ms)"),
        "after n4 joined",
    )
    .await;
    lock(&live).push(("n4".to_owned(), cluster.ws_addr("n4")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Presence before anyone new arrives: nobody came or went.
    let mut spurious = no_member_events(&mut f, &members, &baseline, |member, events| {
        format!(
            "{} saw member events {events:?} when n4 joined, though nobody came or went",
            member.label
        )
    });
    // The new node serves subscribers and members too.
    let n4_reader = Client::start("n4-reader", &live, "n4", &channels[0], None, false)
        .await
        .unwrap();
    let marks = member_marks(&members);
    let u4 = Client::start("u4@n4", &live, "n4", &room, Some("u4"), false)
        .await
        .unwrap();
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
        let events = member_events_since(member, *mark);
        spurious += events.iter().filter(|e| *e != "+u4").count();
        f.check(events == ["+u4"], || {
            format!(
                "{} saw {events:?} when u4 joined on n4; expected exactly one member_added u4",
                member.label
            )
        });
    }
    f.figure("spurious presence events", spurious);
    let mut all_members = members.clone();
    all_members.push(&u4);
    check::presence(
        &mut f,
        "presence after the join",
        &all_members,
        &set(&["u1", "u2", "u3", "u4"]),
        users(&cluster.http, &cluster.base("n4"), &room).await,
    );
    wrap_up(&mut cluster, &mut f, &["n1", "n2", "n3", "n4"]).await;
    f.finish();
}
