//! Restarts: the control plane killed and started again (test 4), and every node drained
//! with SIGTERM and started again in turn (test 6).

use std::time::{Duration, Instant};

use crate::check::{self, ms, rel, Delivery};
use crate::clients::{lock, users, Client, Nodes};
use crate::cluster::{metric_at, Cluster};
use crate::{
    all_ready, member_marks, members_on, no_member_events, nodes, owned_by, publish_through,
    readers_of_each, serial, set, settle, three_nodes, told_of, within, wrap_up,
};

const ALL: [&str; 3] = ["n1", "n2", "n3"];

/// What both restart tests run on: a channel owned by each node with a subscriber on every
/// node, and a member of `room` on every node (u1..u3), told of each other.
struct Load {
    channels: Vec<String>,
    room: String,
    nodes: Nodes,
    readers: Vec<Client>,
    members: Vec<Client>,
}

impl Load {
    async fn start(cluster: &Cluster, room_owner: &str, reconnect: bool) -> Load {
        let channels: Vec<String> = ALL
            .iter()
            .map(|n| owned_by(&ALL, n, &format!("news-{n}-")))
            .collect();
        let room = owned_by(&ALL, room_owner, "presence-room-");
        let nodes = nodes(cluster, &ALL);
        let readers = readers_of_each(&nodes, &ALL, &channels, reconnect).await;
        let members = members_on(&nodes, &ALL, &room, reconnect).await;
        let told: Vec<&Client> = members.iter().collect();
        told_of(&told, &set(&["u1", "u2", "u3"])).await;
        Load {
            channels,
            room,
            nodes,
            readers,
            members,
        }
    }
}

/// Test 4: SIGKILL of the control plane; the nodes keep serving with their last view (no
/// one fences itself), then register again with the restarted control plane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn the_data_plane_outlives_a_control_plane_restart() {
    let _serial = serial().await;
    let name = "cp-restart";
    let (mut cluster, mut f) = three_nodes(name).await;
    let all = ALL;
    let Load {
        channels,
        room,
        readers,
        members,
        ..
    } = Load::start(&cluster, "n2", false).await;
    let members: Vec<&Client> = members.iter().collect();
    let everyone = set(&["u1", "u2", "u3"]);
    let baseline = member_marks(&members);
    let publisher = publish_through(&cluster, "n1", &channels, Duration::from_millis(20)).await;

    let killed = Instant::now();
    f.note(&format!("SIGKILL the control plane at {}", cluster.at()));
    cluster.kill("cp");
    // relaymesh_fenced of every node, every 50 ms, from the kill to the end.
    let (stop_sampling, sampling) = tokio::sync::watch::channel(false);
    let sampler = {
        let http = cluster.http.clone();
        let bases: Vec<(String, String)> = all
            .iter()
            .map(|n| (n.to_string(), cluster.base(n)))
            .collect();
        let mut sampling = sampling;
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !*sampling.borrow() {
                for (node, base) in &bases {
                    if metric_at(&http, base, "relaymesh_fenced")
                        .await
                        .unwrap_or(0.0)
                        != 0.0
                    {
                        seen.push((node.clone(), Instant::now()));
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = sampling.changed() => {}
                }
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = Instant::now();
    f.note(&format!("restart the control plane at {}", cluster.at()));
    cluster.start_cp().await.unwrap();
    // Registered again: the control plane lists all three active, every node is ready.
    let names = cluster.nodes.clone();
    let back = within(Duration::from_secs(10), || async {
        cluster.cp_active().await == Some(3.0)
            && cluster.wait_ready(&names, Duration::ZERO).await.is_ok()
    })
    .await;
    f.waited(
        "time from the restart to 3 active members and every node ready (ms)",
        back,
        Duration::from_secs(10),
        "the nodes did not all register again and become ready within 10 s of the restart",
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ready = cluster.wait_ready(&names, Duration::ZERO).await;
    f.check(ready.is_ok(), || {
        format!("2 s after the restart: {ready:?}")
    });
    let _ = stop_sampling.send(true);
    let fenced = sampler.await.unwrap();
    let describe = |from: Instant, to: Instant| -> Vec<String> {
        fenced
            .iter()
            .filter(|(_, at)| *at >= from && *at < to)
            .map(|(n, at)| format!("{n} at +{} ms", ms(at.duration_since(killed))))
            .collect()
    };
    let while_down = describe(killed, restarted);
    let after_restart = describe(restarted, Instant::now());
    f.figure(
        "relaymesh_fenced 1 samples while the control plane was down",
        format!("{while_down:?}"),
    );
    f.figure(
        "relaymesh_fenced 1 samples after the restart",
        format!("{after_restart:?}"),
    );
    f.check(while_down.is_empty(), || {
        format!(
            "nodes fenced themselves while the control plane was down for everyone: {while_down:?}"
        )
    });
    f.check(after_restart.is_empty(), || {
        format!("nodes fenced themselves while registering again with the restarted control plane (times after the kill): {after_restart:?}")
    });
    let pubs = publisher.stop().await;
    let checked: Vec<&Client> = readers.iter().collect();
    settle(&pubs, &checked, Duration::ZERO, Duration::from_secs(3)).await;

    let during = pubs
        .iter()
        .filter(|p| p.sent >= killed && p.sent < restarted);
    let (ok_during, all_during) =
        during.fold((0, 0), |(ok, n), p| (ok + usize::from(p.ok()), n + 1));
    f.figure(
        "publishes acknowledged while the control plane was down",
        format!("{ok_during} of {all_during}"),
    );
    f.check(ok_during == all_during && all_during > 0, || {
        format!("only {ok_during} of {all_during} publishes were acknowledged while the control plane was down")
    });
    let after: Vec<_> = pubs
        .iter()
        .filter(|p| p.sent >= restarted && !p.ok())
        .collect();
    f.figure(
        "publishes refused after the control plane restarted",
        format!(
            "{} (first at {:?} ms after the restart)",
            after.len(),
            after.first().map(|p| rel(restarted, p.sent))
        ),
    );
    Delivery::of(&pubs, &checked, Duration::ZERO).report(&mut f, cluster.t0, "every channel");
    let spurious = no_member_events(&mut f, &members, &baseline, |member, events| {
        format!(
            "{} saw member events {events:?} though nobody came or went",
            member.label
        )
    });
    f.figure("spurious presence events", spurious);
    check::presence(
        &mut f,
        "presence after the restart",
        &members,
        &everyone,
        users(&cluster.http, &cluster.base("n3"), &room).await,
    );
    wrap_up(&mut cluster, &mut f, &all).await;
    f.finish();
}

/// Test 6: each node in turn gets SIGTERM (it drains: leaves the ring, hands its
/// channels over, closes its clients with 4200, exits) and is started again with the same
/// config; its clients reconnect to another node. Nothing acknowledged is lost by a
/// connected subscriber during the whole rolling restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_acknowledged_event() {
    let _serial = serial().await;
    let name = "rolling-restart";
    let (mut cluster, mut f) = three_nodes(name).await;
    let all = ALL;
    let Load {
        channels,
        room,
        nodes: live,
        readers,
        members,
    } = Load::start(&cluster, "n1", true).await;
    let members: Vec<&Client> = members.iter().collect();
    let everyone = set(&["u1", "u2", "u3"]);
    let publisher = publish_through(&cluster, "n2", &channels, Duration::from_millis(20)).await;

    let mut terminated = Vec::new();
    for (i, node) in all.iter().enumerate() {
        let next = all[(i + 1) % all.len()];
        publisher.retarget(next, &cluster.base(next));
        lock(&live).retain(|(n, _)| n != node);
        let on_node: Vec<&Client> = readers
            .iter()
            .chain(members.iter().copied())
            .filter(|c| c.connected() && c.last().node == *node)
            .collect();
        let sent = Instant::now();
        f.note(&format!(
            "SIGTERM {node} at {} ({} clients on it)",
            cluster.at(),
            on_node.len()
        ));
        cluster.terminate(node).unwrap();
        terminated.push((node.to_string(), sent));
        let exit = cluster.wait_exit(node, Duration::from_secs(40)).await;
        f.figure(
            &format!("{node}: from SIGTERM to exit (ms), status"),
            format!("{} {exit:?}", ms(sent.elapsed())),
        );
        f.check(exit.is_some_and(|s| s.success()), || {
            format!("{node} did not exit cleanly within 40 s of SIGTERM: {exit:?}")
        });
        // Every client of the node was sent away with 4200 and reconnected elsewhere.
        for client in &on_node {
            let sessions = client.sessions();
            let closed = sessions
                .iter()
                .rev()
                .find(|s| s.node == *node && s.closed.is_some())
                .and_then(|s| s.closed);
            f.check(matches!(closed, Some((Some(4200), _))), || {
                format!(
                    "{} on {node} was closed with {closed:?}, expected 4200",
                    client.label
                )
            });
            if let Some((_, at)) = closed {
                f.figure(
                    &format!("{}: closed after SIGTERM (ms)", client.label),
                    rel(sent, at),
                );
            }
        }
        cluster.start_node(node).unwrap();
        all_ready(
            &cluster,
            &mut f,
            Duration::from_secs(15),
            Some(&format!("{node}: from restart to every node ready (ms)")),
            &format!("after restarting {node}"),
        )
        .await;
        lock(&live).push((node.to_string(), cluster.ws_addr(node)));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let pubs = publisher.stop().await;
    let checked: Vec<&Client> = readers.iter().collect();
    // A connection closed by a drain may miss what was acknowledged in its last moments.
    let margin = Duration::from_millis(200);
    settle(&pubs, &checked, margin, Duration::from_secs(3)).await;

    let reconnected = readers
        .iter()
        .chain(members.iter().copied())
        .filter(|c| c.connected())
        .count();
    f.figure(
        "clients connected at the end (of all)",
        format!("{reconnected} of {}", readers.len() + members.len()),
    );
    f.check(reconnected == readers.len() + members.len(), || {
        "some clients did not reconnect to another node".to_owned()
    });
    let delivery = Delivery::of(&pubs, &checked, margin);
    delivery.report(&mut f, cluster.t0, "every channel, every connection");
    // Where lost events fall relative to the drains, to tell the windows apart.
    if !delivery.lost.is_empty() {
        for lost in delivery.lost.iter().take(20) {
            let (client, session, node, p) =
                (&lost.client, lost.session, &lost.node, &lost.publish);
            let near: Vec<String> = terminated
                .iter()
                .map(|(n, at)| format!("{} ms after SIGTERM {n}", rel(*at, p.sent)))
                .collect();
            f.note(&format!(
                "lost #{} on {client} (session {session} on {node}): sent {near:?}",
                p.seq
            ));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spurious = check::presence(
        &mut f,
        "presence after the rolling restart",
        &members,
        &everyone,
        users(&cluster.http, &cluster.base("n1"), &room).await,
    );
    f.figure("presence events that did not fit", spurious);
    wrap_up(&mut cluster, &mut f, &all).await;
    f.finish();
}
