//! What the owner's tests share: a recording [`Sink`], an owner, and the messages the
//! tests send it.

use std::sync::atomic::Ordering;
use std::sync::LazyLock;
use std::time::Instant;

use bytes::Bytes;
use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::{self, Resync, Subscribe, Unsubscribe};

use super::{Origin, Owner, Sink};
use crate::cluster::ClusterView;
use crate::config::AppConfig;
use crate::config::SharedAppConfig;
use crate::outbox::SocketId;
use crate::webhooks::WebhookEvent;

/// The tests' clock starts here; the owner never reads the clock, so a test moves time
/// on by adding to it.
pub fn epoch() -> Instant {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    *EPOCH
}

#[derive(Default)]
pub struct Recorded {
    pub sent: Vec<(String, String, Body)>,
    pub webhooks: Vec<WebhookEvent>,
}

impl Sink for Recorded {
    fn send(&mut self, node: &str, channel: &str, body: Body) {
        self.sent.push((node.into(), channel.into(), body));
    }
    fn webhook(&mut self, event: WebhookEvent) {
        self.webhooks.push(event);
    }
}

impl Recorded {
    pub fn take(&mut self) -> Recorded {
        std::mem::take(self)
    }

    /// The frames delivered to each node, as text (probes, which carry none, left out).
    pub fn delivered(&self) -> Vec<(String, String)> {
        self.sent
            .iter()
            .filter_map(|(node, _, body)| match body {
                Body::Deliver(d) if !d.frame.is_empty() => {
                    Some((node.clone(), frame_text(&d.frame)))
                }
                _ => None,
            })
            .collect()
    }

    pub fn result(&self) -> (bool, Vec<String>) {
        self.sent
            .iter()
            .find_map(|(_, _, body)| match body {
                Body::SubscribeResult(r) => {
                    Some((r.accepted, r.frames.iter().map(frame_text).collect()))
                }
                _ => None,
            })
            .expect("a subscribe result")
    }

    pub fn webhook_names(&self) -> Vec<String> {
        self.webhooks
            .iter()
            .map(|w| {
                let json = serde_json::to_value(w).unwrap();
                json["name"].as_str().unwrap_or("?").to_owned()
            })
            .collect()
    }
}

/// The text of a server frame (unmasked, short payloads in these tests).
pub fn frame_text(frame: &Bytes) -> String {
    let start = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    String::from_utf8(frame[start..].to_vec()).unwrap()
}

pub fn owner(max_members: usize) -> Owner {
    owner_with(AppConfig {
        max_presence_members: max_members,
        ..AppConfig::development()
    })
}

pub fn owner_with(config: AppConfig) -> Owner {
    let owner = Owner::new("app-id".into(), SharedAppConfig::new(config), 100);
    // The view the test's messages come with (Origin::view_version 1).
    owner.view_version.store(1, Ordering::Relaxed);
    owner
}

pub fn socket(seq: u64) -> SocketId {
    SocketId { node: 1, seq }
}

pub fn origin(node: &str) -> Origin<'_> {
    Origin {
        node,
        incarnation: 1,
        view_version: 1,
    }
}

pub fn member(user: &str) -> mesh::Member {
    mesh::Member {
        user_id: user.into(),
        info: Bytes::new(),
    }
}

pub fn join(owner: &Owner, node: &str, channel: &str, seq: u64, user: Option<&str>) -> Recorded {
    join_at(owner, epoch(), node, channel, seq, user)
}

pub fn join_at(
    owner: &Owner,
    now: Instant,
    node: &str,
    channel: &str,
    seq: u64,
    user: Option<&str>,
) -> Recorded {
    let mut sink = Recorded::default();
    owner.handle(now, origin(node), channel, subscribe(seq, user), &mut sink);
    sink
}

pub fn subscribe(seq: u64, user: Option<&str>) -> Body {
    Body::Subscribe(Subscribe {
        socket: Some(socket(seq).into()),
        member: user.map(member),
        ..Subscribe::default()
    })
}

pub fn leave(owner: &Owner, channel: &str, seq: u64) -> Recorded {
    let mut sink = Recorded::default();
    let body = Body::Unsubscribe(Unsubscribe {
        attempt: 0,
        socket: Some(socket(seq).into()),
    });
    owner.handle(epoch(), origin("any"), channel, body, &mut sink);
    sink
}

/// `node`'s part of a channel that moved: its sockets (with their users, answered by the
/// previous owner) and the members its subscribers were told about.
pub fn resync(
    owner: &Owner,
    sink: &mut Recorded,
    node: &str,
    channel: &str,
    sockets: &[(u64, &str)],
    told: &[&str],
) {
    let resync = Resync {
        sockets: sockets
            .iter()
            .map(|(seq, user)| Subscribe {
                socket: Some(socket(*seq).into()),
                member: Some(member(user)),
                ..Subscribe::default()
            })
            .collect(),
        told_members: told.iter().map(|u| (*u).to_owned()).collect(),
        occupied: !sockets.is_empty(),
        ..Resync::default()
    };
    owner.handle(epoch(), origin(node), channel, Body::Resync(resync), sink);
}

/// A view (version 1) with these active nodes and incarnations.
pub fn view(in_view: &[(&str, u64)]) -> ClusterView {
    use relaymesh_proto::control::{ClusterNode, NodeInfo, NodeState, ViewUpdate};
    let mut view = ClusterView::default();
    let nodes = in_view
        .iter()
        .map(|(id, incarnation)| ClusterNode {
            node: Some(NodeInfo {
                node_id: (*id).into(),
                incarnation: *incarnation,
                ..NodeInfo::default()
            }),
            state: NodeState::Active as i32,
        })
        .collect();
    let update = ViewUpdate {
        version: 1,
        full: true,
        nodes,
        ..ViewUpdate::default()
    };
    view.apply(update).unwrap();
    view
}
