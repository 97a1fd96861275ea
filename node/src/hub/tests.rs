//! Tests of the hub (in their own file to keep `hub/mod.rs` under the line limit).

use super::*;

fn accepted(socket: SocketId, attempt: u64, roster: Vec<String>) -> Answer {
    Answer {
        socket,
        owner: "a".into(),
        attempt,
        accepted: true,
        frames: Vec::new(),
        roster,
        seq: 0,
    }
}

/// A remote owner, with frames unnumbered (numbering has its own tests).
fn from(node: &str, view_version: u64) -> Sender<'_> {
    Some(Remote {
        node,
        incarnation: 1,
        view_version,
    })
}

fn member_added(user: &str) -> Deliver {
    Deliver {
        frame: Bytes::from_static(b"frame"),
        member_added: user.into(),
        ..Deliver::default()
    }
}

#[test]
fn unsent_parts_and_expired_come_in_channel_then_socket_order() {
    let hub = Hub::new("app".into());
    let now = Instant::now();
    let mut expected = Vec::new();
    // Enough channels that hash order would differ from name order.
    for i in (0..40).rev() {
        let channel = format!("channel-{i:02}");
        for seq in [3, 1, 2] {
            let conn = Arc::new(Conn::new(SocketId { node: 1, seq }, 100, 1 << 20));
            hub.begin(now, &channel, &conn, None, None);
            hub.mark_unsent(&channel, conn.socket_id);
            expected.push((channel.clone(), conn.socket_id));
        }
    }
    expected.sort();
    let unsent: Vec<_> = hub
        .take_unsent()
        .into_iter()
        .map(|u| (u.channel.to_string(), u.socket))
        .collect();
    assert_eq!(unsent, expected);
    let expired: Vec<_> = hub
        .expire_pending(now + Duration::from_secs(60), Duration::from_secs(10))
        .into_iter()
        .map(|e| (e.channel.to_string(), e.conn.socket_id))
        .collect();
    assert_eq!(expired, expected);

    for (channel, socket) in expected.iter().rev() {
        let conn = Arc::new(Conn::new(*socket, 100, 1 << 20));
        let attempt = hub.begin(now, channel, &conn, None, None);
        let told = vec!["u2".into(), socket.seq.to_string(), "u1".into()];
        hub.complete(channel, accepted(*socket, attempt, told), None);
    }
    let parts: Vec<_> = hub
        .parts(|_| Some(true), |_| None, 1)
        .into_iter()
        .flat_map(|p| {
            assert!(p.told.is_sorted(), "{:?}", p.told);
            p.sockets
                .into_iter()
                .map(move |(s, _)| (p.channel.to_string(), s))
        })
        .collect();
    assert_eq!(parts, expected);
}

#[test]
fn late_member_events_of_the_previous_owner_are_dropped_after_a_resync() {
    let hub = Hub::new("app".into());
    let conn = Arc::new(Conn::new(SocketId { node: 1, seq: 1 }, 100, 1 << 20));
    let attempt = hub.begin(Instant::now(), "presence-room", &conn, None, None);
    hub.complete(
        "presence-room",
        accepted(conn.socket_id, attempt, vec!["u1".into()]),
        None,
    );
    // Before any resync, every sender is the owner it claims to be.
    assert_eq!(
        hub.deliver("presence-room", &member_added("u2"), from("b", 8)),
        1
    );
    let parts = hub.parts(|_| Some(true), |_| Some("c".into()), 9);
    let told: HashSet<String> = parts[0].told.iter().cloned().collect();
    assert_eq!(told, HashSet::from(["u1".into(), "u2".into()]));
    // b owned it in view 8: its late news is dropped; c (the new owner) and anyone
    // with a view at least as new are heard, and so is this node's own owner.
    assert_eq!(
        hub.deliver("presence-room", &member_added("u3"), from("b", 8)),
        0
    );
    assert_eq!(
        hub.deliver("presence-room", &member_added("u3"), from("c", 8)),
        1
    );
    assert_eq!(
        hub.deliver("presence-room", &member_added("u4"), from("b", 9)),
        1
    );
    assert_eq!(hub.deliver("presence-room", &member_added("u5"), None), 1);
    // Events that are not member events always arrive: they were acknowledged.
    let event = Deliver {
        frame: Bytes::from_static(b"event"),
        ..Deliver::default()
    };
    assert_eq!(hub.deliver("presence-room", &event, from("b", 8)), 1);
}

#[test]
fn a_part_leaves_out_closing_connections_and_says_whether_a_socket_was_answered() {
    let hub = Hub::new("app".into());
    let now = Instant::now();
    let socket = |seq| Arc::new(Conn::new(SocketId { node: 1, seq }, 100, 1 << 20));
    let (answered, asked, closing) = (socket(1), socket(2), socket(3));
    for conn in [&answered, &closing] {
        let attempt = hub.begin(now, "room", conn, None, None);
        hub.complete("room", accepted(conn.socket_id, attempt, Vec::new()), None);
    }
    hub.begin(now, "room", &asked, None, None);
    // Only a pending socket: the channel was not occupied under its previous owner.
    hub.begin(now, "pending-only", &asked, None, None);
    // Only a closing socket: nothing to send.
    let attempt = hub.begin(now, "closing-only", &closing, None, None);
    hub.complete(
        "closing-only",
        accepted(closing.socket_id, attempt, Vec::new()),
        None,
    );
    closing.close(4200, "away");
    let parts = hub.parts(|_| Some(true), |_| Some("b".into()), 2);
    let summary: Vec<(String, Vec<u64>, bool)> = parts
        .iter()
        .map(|p| {
            let seqs = p.sockets.iter().map(|(s, _)| s.seq).collect();
            (p.channel.to_string(), seqs, p.occupied)
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("pending-only".into(), vec![2], false),
            ("room".into(), vec![1, 2], true),
        ]
    );
}
