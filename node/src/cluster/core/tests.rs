//! Tests of the cluster core (in their own file to keep `core.rs` under the line limit).

use super::*;
use relaymesh_proto::control::{ClusterNode, NodeInfo, ViewUpdate};
use relaymesh_proto::mesh::Reply;

use crate::cluster::takeover::TAKEOVER_HOLD;

impl Waiter for () {
    fn answer(self, _: Reply) {}
    fn is_gone(&self) -> bool {
        false
    }
}

const TTL: Duration = Duration::from_millis(1000);
const HEARTBEAT: Duration = Duration::from_millis(200);
const SETTLE_DEADLINE: Duration = Duration::from_secs(3);

fn view(version: u64, nodes: &[&str]) -> Arc<ClusterView> {
    let regions: Vec<(&str, &str)> = nodes.iter().map(|id| (*id, "eu")).collect();
    view_in_regions(version, &regions)
}

fn view_in_regions(version: u64, in_view: &[(&str, &str)]) -> Arc<ClusterView> {
    let mut view = ClusterView::default();
    let nodes = in_view
        .iter()
        .map(|(id, region)| ClusterNode {
            node: Some(NodeInfo {
                node_id: (*id).into(),
                incarnation: 1,
                region: (*region).into(),
                ..NodeInfo::default()
            }),
            state: NodeState::Active as i32,
        })
        .collect();
    let update = ViewUpdate {
        version,
        full: true,
        nodes,
        ..ViewUpdate::default()
    };
    view.apply(update).unwrap();
    Arc::new(view)
}

/// Node a of a, b, c: registered, linked to both, done with view 1.
fn joined(t0: Instant) -> Core<()> {
    let mut core = Core::new("a".into(), false, SETTLE_DEADLINE);
    let registered = Input::Registered {
        ttl: TTL,
        heartbeat: HEARTBEAT,
        reported_state_lost: false,
    };
    core.handle(t0, registered);
    core.handle(t0, Input::View(view(1, &["a", "b", "c"])));
    core.handle(t0, Input::LinkUp("b".into()));
    core.handle(t0, Input::LinkUp("c".into()));
    core.handle(
        t0,
        Input::Resynced {
            version: 1,
            complete: true,
        },
    );
    core
}

fn synced(from: &str, renewed_ago: Duration) -> Input {
    Input::Synced {
        from: from.into(),
        version: 1,
        renewed_ago: Some(renewed_ago),
    }
}

fn has(outputs: &[Output], wanted: fn(&Output) -> bool) -> bool {
    outputs.iter().any(wanted)
}

#[test]
fn a_node_the_cluster_goes_on_without_fences_itself_then_sends_clients_away() {
    let t0 = Instant::now();
    let mut core = joined(t0);
    let at = |ms| t0 + Duration::from_millis(ms);
    // b renewed just now, a not for 600 ms (more than half the TTL): left behind.
    core.handle(at(600), synced("b", Duration::ZERO));
    assert!(!core.is_fenced(), "fencing is decided on the tick");
    let out = core.handle(at(600), Input::Tick);
    assert!(has(&out, |o| matches!(o, Output::Fence)), "{out:?}");
    assert!(core.is_fenced() && core.state_lost());
    // b goes on renewing; a stays fenced and, after the grace, sends its clients away.
    for ms in (700..5_600).step_by(100) {
        core.handle(at(ms), synced("b", Duration::ZERO));
        let out = core.handle(at(ms), Input::Tick);
        assert!(!has(&out, |o| matches!(o, Output::SendClientsAway)), "{ms}");
    }
    core.handle(at(5_600), synced("b", Duration::ZERO));
    let out = core.handle(at(5_600), Input::Tick);
    assert!(
        has(&out, |o| matches!(o, Output::SendClientsAway)),
        "{out:?}"
    );
    // Registering again (saying it lost its state) ends the fence; its clients, who
    // missed what was published while it was out, are sent away; the next tick sends
    // this node's part of every channel again.
    let registered = Input::Registered {
        ttl: TTL,
        heartbeat: HEARTBEAT,
        reported_state_lost: true,
    };
    let out = core.handle(at(6_000), registered);
    assert!(has(&out, |o| matches!(o, Output::Unfence)), "{out:?}");
    assert!(
        has(&out, |o| matches!(o, Output::SendClientsAway)),
        "{out:?}"
    );
    assert!(!core.state_lost());
    let out = core.handle(at(6_100), Input::Tick);
    assert!(
        has(&out, |o| matches!(o, Output::Resync { all: true, .. })),
        "{out:?}"
    );
}

#[test]
fn a_control_plane_down_for_everyone_fences_no_one() {
    let t0 = Instant::now();
    let mut core = joined(t0);
    // Nobody renews: b and c last renewed when a did.
    for ms in (100..=3_000).step_by(100) {
        let now = t0 + Duration::from_millis(ms);
        let since = Duration::from_millis(ms);
        core.handle(now, synced("b", since));
        core.handle(now, synced("c", since));
        let out = core.handle(now, Input::Tick);
        assert!(!has(&out, |o| matches!(o, Output::Fence)), "at {ms} ms");
    }
    // It comes back: nobody was expired, so every client stays.
    let registered = Input::Registered {
        ttl: TTL,
        heartbeat: HEARTBEAT,
        reported_state_lost: false,
    };
    let out = core.handle(t0 + Duration::from_millis(3_100), registered);
    assert!(
        !has(&out, |o| matches!(o, Output::SendClientsAway)),
        "{out:?}"
    );
}

#[test]
fn a_node_cut_off_from_every_other_fences_itself() {
    let t0 = Instant::now();
    let mut core = joined(t0);
    core.handle(t0, Input::LinkDown("b".into()));
    let out = core.handle(t0 + Duration::from_millis(400), Input::Tick);
    assert!(!core.is_fenced(), "its lease is not in doubt yet: {out:?}");
    core.handle(t0, Input::LinkDown("c".into()));
    core.handle(t0 + Duration::from_millis(600), Input::Tick);
    assert!(core.is_fenced());
}

#[test]
fn settling_waits_for_every_node_of_the_view() {
    let t0 = Instant::now();
    let mut core = joined(t0);
    assert_eq!(core.everyone_done(), 0, "b and c said nothing yet");
    core.handle(t0, synced("b", Duration::ZERO));
    assert_eq!(core.everyone_done(), 0);
    let out = core.handle(t0, synced("c", Duration::ZERO));
    assert!(
        has(&out, |o| matches!(o, Output::Settle { done: 1, .. })),
        "{out:?}"
    );
    // A node that leaves the view is no longer waited for; a new one is.
    core.handle(t0, Input::View(view(2, &["a", "b", "d"])));
    assert_eq!(core.everyone_done(), 0, "d said nothing yet");
}

fn takeover(outputs: &[Output]) -> Option<Option<&Takeover>> {
    outputs.iter().find_map(|o| match o {
        Output::TakeOver(t) => Some(t.as_deref()),
        _ => None,
    })
}

/// A channel that c owns in view 1 and a owns once c is gone.
fn moves_from_c_to_a(view1: &ClusterView, view2: &ClusterView) -> String {
    (0..)
        .map(|i| format!("ch-{i}"))
        .find(|ch| view1.owner_of("app", ch) == Some("c") && view2.owner_of("app", ch) == Some("a"))
        .unwrap()
}

#[test]
fn a_takeover_lasts_until_every_node_is_done_or_the_hold_passes() {
    let t0 = Instant::now();
    let mut core = joined(t0);
    let (view1, view2) = (view(1, &["a", "b", "c"]), view(2, &["a", "b"]));
    let moved = moves_from_c_to_a(&view1, &view2);
    let out = core.handle(t0, Input::View(view2.clone()));
    let started = takeover(&out).flatten().expect("a view starts a takeover");
    assert_eq!(started.moved_here("app", &moved), Some(2));
    let stays = (0..)
        .map(|i| format!("ch-{i}"))
        .find(|ch| view1.owner_of("app", ch) == Some("a"))
        .unwrap();
    assert_eq!(started.moved_here("app", &stays), None, "a owned it before");
    // Every node done with view 2: over, and rebuilt channels of view 2 settle.
    core.handle(
        t0,
        Input::Resynced {
            version: 2,
            complete: true,
        },
    );
    let out = core.handle(
        t0,
        Input::Synced {
            from: "b".into(),
            version: 2,
            renewed_ago: None,
        },
    );
    assert!(matches!(takeover(&out), Some(None)), "{out:?}");
    assert!(has(&out, |o| matches!(o, Output::Settle { done: 2, .. })));

    // Without news from b: over after the hold (shorter than the settle deadline here).
    core.handle(t0, Input::View(view(3, &["a", "b", "c"])));
    let out = core.handle(t0 + TAKEOVER_HOLD / 2, Input::Tick);
    assert!(takeover(&out).is_none(), "still holding");
    let out = core.handle(t0 + TAKEOVER_HOLD, Input::Tick);
    assert!(matches!(takeover(&out), Some(None)), "{out:?}");
}

#[test]
fn after_dropping_every_channel_the_next_view_moves_them_all_here() {
    let t0 = Instant::now();
    let mut core = joined(t0);
    // Cut off from b and c past half the TTL: fenced, every channel dropped.
    core.handle(t0, Input::LinkDown("b".into()));
    core.handle(t0, Input::LinkDown("c".into()));
    let out = core.handle(t0 + TTL, Input::Tick);
    assert!(has(&out, |o| matches!(o, Output::Fence)), "{out:?}");
    let out = core.handle(t0 + TTL, Input::View(view(2, &["a", "b", "c"])));
    let started = takeover(&out).flatten().expect("a view starts a takeover");
    let before = view(1, &["a", "b", "c"]);
    let mine = (0..)
        .map(|i| format!("ch-{i}"))
        .find(|ch| before.owner_of("app", ch) == Some("a"))
        .unwrap();
    assert_eq!(
        started.moved_here("app", &mine),
        Some(2),
        "owned before the fence"
    );
}

#[test]
fn a_channel_is_overdue_once_the_settle_deadline_passed() {
    let t0 = Instant::now();
    let mut core = joined(t0);
    let later = t0 + SETTLE_DEADLINE;
    let out = core.handle(later, Input::Tick);
    let overdue = out.iter().find_map(|o| match o {
        Output::Settle { overdue, .. } => Some(*overdue),
        _ => None,
    });
    assert_eq!(overdue, Some(Some(t0)));
}

#[test]
fn a_partition_between_regions_leaves_each_region_ready() {
    let t0 = Instant::now();
    let mut core: Core<()> = Core::new("a".into(), false, SETTLE_DEADLINE);
    assert_eq!(core.readiness("eu", true), Readiness::NotActive);
    let regions = [("a", "eu"), ("b", "eu"), ("c", "us"), ("d", "us")];
    core.handle(t0, Input::View(view_in_regions(1, &regions)));
    for peer in ["b", "c", "d"] {
        core.handle(t0, Input::LinkUp(peer.into()));
    }
    let no_one = Vec::<String>::new();
    assert_eq!(
        core.readiness("eu", true),
        Readiness::Ready { elsewhere: no_one }
    );
    // The regions lose each other: a still serves its region.
    core.handle(t0, Input::LinkDown("c".into()));
    core.handle(t0, Input::LinkDown("d".into()));
    let far = vec!["c".to_owned(), "d".to_owned()];
    assert_eq!(
        core.readiness("eu", true),
        Readiness::Ready { elsewhere: far }
    );
    // Cut off inside its own region, it is not ready.
    core.handle(t0, Input::LinkDown("b".into()));
    assert_eq!(
        core.readiness("eu", true),
        Readiness::Unlinked(vec!["b".into()])
    );
    // Without a mesh, being active is enough.
    assert!(matches!(
        core.readiness("eu", false),
        Readiness::Ready { .. }
    ));
}

#[test]
fn requests_to_a_node_fail_when_its_link_goes_down_or_it_leaves() {
    let t0 = Instant::now();
    let mut core = joined(t0);
    core.requests.register("b", ()).unwrap();
    core.requests.register("c", ()).unwrap();
    core.handle(t0, Input::LinkDown("b".into()));
    assert_eq!(core.requests.len(), 1);
    core.handle(t0, Input::View(view(2, &["a", "b"])));
    assert!(core.requests.is_empty());
}

#[test]
fn an_expired_node_stays_fenced_until_it_registers_even_when_its_links_come_back() {
    let t0 = Instant::now();
    let mut core = joined(t0);
    let at = |ms| t0 + Duration::from_millis(ms);
    core.handle(at(600), synced("b", Duration::ZERO));
    core.handle(at(600), Input::Tick);
    assert!(core.is_fenced());
    // The others expire it and drop their links: no more news from them.
    core.handle(at(1_100), Input::LinkDown("b".into()));
    core.handle(at(1_100), Input::LinkDown("c".into()));
    // Its links come back before its registration is answered; the old silence is no
    // sign of a control plane down for everyone.
    core.handle(at(2_900), Input::LinkUp("b".into()));
    core.handle(at(2_900), Input::LinkUp("c".into()));
    for ms in (2_900..3_500).step_by(100) {
        let out = core.handle(at(ms), Input::Tick);
        assert!(
            !has(&out, |o| matches!(o, Output::Unfence)),
            "at {ms} ms: {out:?}"
        );
    }
    let registered = Input::Registered {
        ttl: TTL,
        heartbeat: HEARTBEAT,
        reported_state_lost: true,
    };
    let out = core.handle(at(3_500), registered);
    assert!(has(&out, |o| matches!(o, Output::Unfence)), "{out:?}");
    assert!(
        has(&out, |o| matches!(o, Output::SendClientsAway)),
        "{out:?}"
    );
}
