//! Partitions: a node cut off from the control plane only (test 2), and two nodes cut off
//! from each other while both still reach the control plane and the third node (test 3).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::check::{self, ms, Delivery, Findings};
use crate::clients::{api, users, Client, Publish};
use crate::cluster::{Cluster, LEASE_TTL};
use crate::{
    all_ready, member_events_since, member_marks, members_on, no_member_events, nodes, owned_by,
    owner, publish_through, serial, set, settle, subscribers, three_nodes, told_of, within,
    wrap_up,
};

/// `from`'s `relaymesh_mesh_link_up` gauge for its link to `to`.
async fn link_up(cluster: &Cluster, from: &str, to: &str) -> Option<f64> {
    cluster
        .metric(from, &format!("relaymesh_mesh_link_up{{peer=\"{to}\"}}"))
        .await
}

/// The events of `pubs` acknowledged with 200, published in `[from, to)` to `channel`,
/// that `client`'s last connection did not receive.
fn missed(client: &Client, pubs: &[Publish], from: Instant, to: Instant) -> Vec<u64> {
    let got: BTreeSet<u64> = client.last().ticks().collect();
    pubs.iter()
        .filter(|p| p.channel == client.channel && p.ok() && p.sent >= from && p.sent < to)
        .filter(|p| !got.contains(&p.seq))
        .map(|p| p.seq)
        .collect()
}

/// When the client's connection was closed with 4200 (reconnect) after `since`.
fn told_to_reconnect(client: &Client, since: Instant) -> Option<Instant> {
    client
        .last()
        .closed
        .filter(|(code, at)| *code == Some(4200) && *at >= since)
        .map(|(_, at)| at)
}

/// After a heal: records how long the healed part took to come back (`took`, waited for
/// 10 s) and checks that every node is ready; then lets the publisher run 2 s more. From
/// the returned time (500 ms after that check) every subscriber should receive everything.
async fn back_after_heal(
    cluster: &Cluster,
    f: &mut Findings,
    figure: &str,
    took: Option<Duration>,
    violation: &str,
) -> Instant {
    f.waited(figure, took, Duration::from_secs(10), violation);
    all_ready(
        cluster,
        f,
        Duration::from_secs(5),
        None,
        "not every node is ready after the heal",
    )
    .await;
    let back = Instant::now() + Duration::from_millis(500);
    tokio::time::sleep(Duration::from_secs(2)).await;
    back
}

/// Test 2: n3 cannot reach the control plane (nor it n3); the nodes still reach each
/// other. n3 fences itself, its channels move, subscribers elsewhere keep receiving;
/// healed, n3 comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_control_plane_fences_itself_and_comes_back() {
    let _serial = serial().await;
    let name = "cp-partition";
    let (mut cluster, mut f) = three_nodes(name).await;
    let all = ["n1", "n2", "n3"];
    let news = owned_by(&all, "n3", "news-");
    let room = owned_by(&all, "n3", "presence-room-");
    f.note(&format!(
        "{news} and {room} are owned by n3 (while n3 is out: {} and {})",
        owner(&["n1", "n2"], &news),
        owner(&["n1", "n2"], &room)
    ));
    let nodes = nodes(&cluster, &all);
    let readers = subscribers(&nodes, &["n1", "n2"], 2, "reader", &news, false).await;
    let on_n3 = subscribers(&nodes, &["n3"], 2, "reader", &news, false).await;
    let members = members_on(&nodes, &all, &room, false).await;
    let members: Vec<&Client> = members.iter().collect();
    let everyone = set(&["u1", "u2", "u3"]);
    told_of(&members, &everyone).await;
    let baseline = member_marks(&members);

    let publisher = publish_through(
        &cluster,
        "n1",
        std::slice::from_ref(&news),
        Duration::from_millis(20),
    )
    .await;

    let cut = Instant::now();
    f.note(&format!(
        "cut n3 from the control plane at {}",
        cluster.at()
    ));
    cluster.net.cut("n3", "cp").unwrap();
    let fenced = within(Duration::from_secs(5), || async {
        let ready = cluster.readyz("n3").await;
        ready.is_some_and(|(s, body)| s == 503 && body.contains("fenced"))
            && cluster.metric("n3", "relaymesh_fenced").await == Some(1.0)
    })
    .await;
    f.waited(
        "time from the cut to n3 fenced: /readyz 503 \"fenced\" and relaymesh_fenced 1 (ms)",
        fenced,
        Duration::from_secs(5),
        "n3 did not fence itself within 5 s of losing the control plane",
    );
    let elsewhere: Vec<&Client> = readers.iter().collect();
    // The fenced node numbers nothing.
    let body = json!({"name": "probe", "channels": [news], "data": "x"});
    let probe = api(
        &cluster.http,
        &cluster.base("n3"),
        "POST",
        "/events",
        Some(body),
    )
    .await;
    f.figure(
        "a publish through fenced n3 to its former channel",
        format!("{probe:?}"),
    );
    f.check(matches!(probe, Ok((503, _))), || {
        format!("a publish through fenced n3 was answered {probe:?}, expected 503")
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during: Vec<Vec<String>> = members
        .iter()
        .zip(&baseline)
        .map(|(m, b)| member_events_since(m, *b))
        .collect();

    let healed = Instant::now();
    f.note(&format!("heal at {}", cluster.at()));
    cluster.net.heal("n3", "cp").unwrap();
    let back = within(Duration::from_secs(10), || async {
        cluster.readyz("n3").await.is_some_and(|(s, _)| s == 200)
            && cluster.metric("n3", "relaymesh_fenced").await == Some(0.0)
    })
    .await;
    // Once n3 is back, its clients receive again.
    let returned = back_after_heal(
        &cluster,
        &mut f,
        "time from the heal to n3 ready again with relaymesh_fenced 0 (ms)",
        back,
        "n3 was not ready (or still fenced) 10 s after the heal",
    )
    .await;
    let stopped = Instant::now();
    let pubs = publisher.stop().await;
    let mut checked: Vec<&Client> = readers.iter().collect();
    checked.extend(on_n3.iter());
    settle(&pubs, &checked, Duration::ZERO, Duration::from_secs(3)).await;

    // The channel moves once the control plane expired n3; subscribers elsewhere go on.
    let silence = check::longest_silence(&elsewhere, cut, stopped);
    f.figure(
        "longest silence of a subscriber on n1 or n2 from the cut to the end (ms)",
        ms(silence),
    );
    let limit = LEASE_TTL + Duration::from_secs(1);
    f.check(silence <= limit, || {
        format!(
            "a subscriber on n1 or n2 received nothing for {silence:?} (more than lease TTL + 1 s)"
        )
    });
    Delivery::of(&pubs, &elsewhere, Duration::ZERO).report(
        &mut f,
        cluster.t0,
        "subscribers on n1 and n2",
    );
    for reader in &on_n3 {
        let lost_during = missed(reader, &pubs, cut, returned);
        let lost_after = missed(reader, &pubs, returned, Instant::now());
        f.figure(
            &format!(
                "{}: acknowledged events it missed while n3 was cut off",
                reader.label
            ),
            format!(
                "{} of {}",
                lost_during.len(),
                pubs.iter()
                    .filter(|p| p.ok() && p.sent >= cut && p.sent < returned)
                    .count()
            ),
        );
        // A fenced node is out of the cluster (ARCHITECTURE.md, fencing rules): its clients
        // miss what is published meanwhile. They are told: once the control plane expired
        // n3, its clients are asked to reconnect (4200) as it comes back; a client that
        // stays connected gets everything published after n3 is back.
        let told = told_to_reconnect(reader, cut);
        f.figure(
            &format!("{}: told to reconnect (ms after the heal)", reader.label),
            told.map_or("no".to_owned(), |at| {
                ms(at.saturating_duration_since(healed)).to_string()
            }),
        );
        f.check(lost_during.is_empty() || told.is_some(), || {
            format!(
                "{} on n3 missed {} acknowledged events while n3 was out and was not told",
                reader.label,
                lost_during.len()
            )
        });
        let lost_after = if told.is_some() {
            Vec::new()
        } else {
            lost_after
        };
        f.check(lost_after.is_empty(), || {
            format!(
                "{} on n3 missed {} acknowledged events published after n3 was back: {:?}",
                reader.label,
                lost_after.len(),
                &lost_after[..lost_after.len().min(10)]
            )
        });
        let dup = Delivery::of(&pubs, &[reader], Duration::ZERO)
            .duplicates
            .len();
        f.check(dup == 0, || {
            format!("{} received {dup} events twice", reader.label)
        });
    }

    // Presence: everyone stayed connected, but u3's node left the cluster for a while: the
    // others may see u3 leave and come back (n3 is out of the cluster meanwhile), nothing
    // about anyone else; the lists must be right after the heal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for ((member, b), during) in members.iter().zip(&baseline).zip(&during) {
        let events = member_events_since(member, *b);
        f.figure(
            &format!("{}: member events while cut off / in all", member.label),
            format!("{during:?} / {events:?}"),
        );
        let about_others: Vec<&String> = events.iter().filter(|e| !e.ends_with("u3")).collect();
        f.check(about_others.is_empty(), || {
            format!(
                "{} saw member events {events:?} about members whose node stayed in the cluster (while n3 was cut off: {during:?})",
                member.label
            )
        });
    }
    // u3's client on n3 was told to reconnect with the rest of n3's clients (it does not
    // here): the others must see u3 gone, nobody else.
    let (still, sent_away): (Vec<&Client>, Vec<&Client>) = members
        .iter()
        .partition(|m| told_to_reconnect(m, cut).is_none());
    let mut present = everyone.clone();
    for member in &sent_away {
        f.note(&format!("{} was told to reconnect", member.label));
        present.remove(member.label.split('@').next().unwrap_or_default());
    }
    check::presence(
        &mut f,
        "presence after the heal",
        &still,
        &present,
        users(&cluster.http, &cluster.base("n1"), &room).await,
    );
    wrap_up(&mut cluster, &mut f, &["n1", "n2"]).await;
    f.finish();
}

/// Test 3: n1 and n2 cannot reach each other; both still reach the control plane and n3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_cut_off_from_each_other_keep_serving_what_they_reach() {
    let _serial = serial().await;
    let name = "node-partition";
    let (mut cluster, mut f) = three_nodes(name).await;
    let all = ["n1", "n2", "n3"];
    let via_n3 = owned_by(&all, "n3", "news3-");
    let via_n2 = owned_by(&all, "n2", "news2-");
    let room = owned_by(&all, "n3", "presence-room-");
    let nodes = nodes(&cluster, &all);
    let label = format!("{via_n3}-reader");
    let n3_readers = subscribers(&nodes, &["n1", "n2"], 2, &label, &via_n3, false).await;
    let label = format!("{via_n2}-reader");
    let n2_readers = subscribers(&nodes, &["n1", "n3"], 2, &label, &via_n2, false).await;
    let members = members_on(&nodes, &["n1", "n2"], &room, false).await;
    let members: Vec<&Client> = members.iter().collect();
    let everyone = set(&["u1", "u2"]);
    told_of(&members, &everyone).await;
    let baseline = member_marks(&members);
    let publisher = publish_through(
        &cluster,
        "n3",
        &[via_n3.clone(), via_n2.clone()],
        Duration::from_millis(20),
    )
    .await;

    let cut = Instant::now();
    f.note(&format!("cut n1 from n2 at {}", cluster.at()));
    cluster.net.cut("n1", "n2").unwrap();
    // A publish on n1 to a channel owned by n2, while the link is broken.
    let probe_http = cluster.http.clone();
    let probe_base = cluster.base("n1");
    let probe_channel = via_n2.clone();
    let probe = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let body = json!({"name": "probe", "channels": [probe_channel], "data": "x"});
        let answer = api(&probe_http, &probe_base, "POST", "/events", Some(body)).await;
        (answer.map(|(s, _)| s), started.elapsed())
    });
    let mut detected = [None; 4];
    let what = [
        "n1: relaymesh_mesh_link_up{peer=\"n2\"} 0",
        "n2: relaymesh_mesh_link_up{peer=\"n1\"} 0",
        "n1: /readyz 503",
        "n2: /readyz 503",
    ];
    // How long the partition lasts at most while waiting for it to be noticed
    // (RELAYMESH_FAULT_DETECT_SECS, default 8).
    let detect = Duration::from_secs(
        std::env::var("RELAYMESH_FAULT_DETECT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8),
    );
    let deadline = cut + detect;
    while Instant::now() < deadline && detected.iter().any(Option::is_none) {
        let now = [
            link_up(&cluster, "n1", "n2").await == Some(0.0),
            link_up(&cluster, "n2", "n1").await == Some(0.0),
            cluster.readyz("n1").await.is_some_and(|(s, _)| s == 503),
            cluster.readyz("n2").await.is_some_and(|(s, _)| s == 503),
        ];
        for (seen, holds) in detected.iter_mut().zip(now) {
            if holds && seen.is_none() {
                *seen = Some(cut.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (w, d) in what.iter().zip(&detected) {
        f.figure(
            &format!("time from the cut to {w} (ms)"),
            d.map_or(format!("not within {detect:?}"), |d| ms(d).to_string()),
        );
        f.check(d.is_some(), || {
            format!("{w} did not happen within {detect:?} of the cut")
        });
    }
    let n3_ready = cluster.readyz("n3").await;
    f.check(n3_ready.as_ref().is_some_and(|(s, _)| *s == 200), || {
        format!("n3, which reaches everyone, is not ready during the partition: {n3_ready:?}")
    });
    let (probe_status, probe_time) = probe.await.unwrap();
    f.figure(
        "publish on n1 to a channel owned by n2 during the partition",
        format!("{probe_status:?} after {} ms", ms(probe_time)),
    );
    f.check(matches!(probe_status, Ok(503)), || {
        format!("a publish on n1 to a channel owned by n2 (unreachable) was answered {probe_status:?}, expected 503")
    });
    for node in ["n1", "n2", "n3"] {
        let fenced = cluster
            .metric(node, "relaymesh_fenced")
            .await
            .unwrap_or(0.0);
        f.check(fenced == 0.0, || {
            format!("{node} fenced itself in a partition between n1 and n2")
        });
    }

    let healed = Instant::now();
    f.note(&format!("heal at {}", cluster.at()));
    cluster.net.heal("n1", "n2").unwrap();
    let relinked = within(Duration::from_secs(10), || async {
        link_up(&cluster, "n1", "n2").await == Some(1.0)
            && link_up(&cluster, "n2", "n1").await == Some(1.0)
    })
    .await;
    let back = back_after_heal(
        &cluster,
        &mut f,
        "time from the heal to the n1-n2 link up on both (ms)",
        relinked,
        "the n1-n2 link did not come back within 10 s of the heal",
    )
    .await;
    let pubs = publisher.stop().await;
    let mut checked: Vec<&Client> = n3_readers.iter().collect();
    checked.extend(n2_readers.iter());
    // Deliveries held in the QUIC connection during the partition may take a while to
    // come once it heals (retransmission backoff): late is counted, not lost.
    let settled = Instant::now();
    settle(&pubs, &checked, Duration::ZERO, Duration::from_secs(15)).await;
    f.figure(
        "time waited after the publisher stopped for deliveries to settle (ms)",
        ms(settled.elapsed()),
    );

    let r3: Vec<&Client> = n3_readers.iter().collect();
    Delivery::of(&pubs, &r3, Duration::ZERO).report(
        &mut f,
        cluster.t0,
        &format!("{via_n3} (owner n3) on n1 and n2"),
    );
    // The owner n2 cannot reach n1 during the partition: n1's subscribers miss what is
    // published meanwhile (no relaying through n3). They are told: once the link is back,
    // n1 sees the gap in n2's numbers and asks them to reconnect (4200); a subscriber that
    // missed nothing keeps its connection and gets everything after the heal.
    let r2: Vec<&Client> = n2_readers
        .iter()
        .filter(|r| r.last().node != "n1")
        .collect();
    Delivery::of(&pubs, &r2, Duration::ZERO).report(
        &mut f,
        cluster.t0,
        &format!("{via_n2} (owner n2) on n3"),
    );
    for reader in n2_readers.iter().filter(|r| r.last().node == "n1") {
        let during = missed(reader, &pubs, cut, healed);
        let told = told_to_reconnect(reader, cut);
        let after = missed(reader, &pubs, back, told.unwrap_or_else(Instant::now));
        f.figure(
            &format!(
                "{}: acknowledged events missed during the partition / after the heal, told to reconnect (ms after the heal)",
                reader.label
            ),
            format!(
                "{} / {} / {}",
                during.len(),
                after.len(),
                told.map_or("no".to_owned(), |at| ms(at.saturating_duration_since(healed)).to_string())
            ),
        );
        f.check(during.is_empty() || told.is_some(), || {
            format!(
                "{} on n1 missed {} events of n2's channel during the partition and was not told",
                reader.label,
                during.len()
            )
        });
        f.check(after.is_empty(), || {
            format!(
                "{} on n1 missed {} events of n2's channel published after the heal while still connected: {:?}",
                reader.label,
                after.len(),
                &after[..after.len().min(10)]
            )
        });
    }
    // Each member's node is its last connection's (they do not reconnect).
    no_member_events(&mut f, &members, &baseline, |member, events| {
        format!(
            "{} on {} saw member events {events:?} though nobody came or went",
            member.label,
            member.last().node
        )
    });
    check::presence(
        &mut f,
        "presence after the heal",
        &members,
        &everyone,
        users(&cluster.http, &cluster.base("n3"), &room).await,
    );
    wrap_up(&mut cluster, &mut f, &["n1", "n2", "n3"]).await;
    f.finish();
}
