//! Several nodes in one process, driven by hand: their real `Shared` (routing, owners,
//! hubs, the cluster core) without a task, linked by in-memory wires this harness carries
//! frames over, a simulated control plane and a simulated clock. A seeded generator picks
//! what happens next, so a seed replays the same run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relaymesh_node::cluster::{ClusterView, Input};
use relaymesh_node::config::{AppConfig, Config};
use relaymesh_node::mesh::link;
use relaymesh_node::webhooks::Recorded;
use relaymesh_node::{rebalance, route, Drive, Identity, Shared};
use relaymesh_proto::control::{ClusterNode, NodeInfo, NodeState, ViewUpdate};
use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::Envelope;
use tokio::sync::mpsc;

use super::webhooks::WebhookCheck;

pub const TTL: Duration = Duration::from_millis(1000);
pub const HEARTBEAT: Duration = Duration::from_millis(200);
const LINK_LATENCY: Duration = Duration::from_millis(1);
const LINK_JITTER_US: u64 = 3_000;
/// How long after entering the view a node's resync has surely reached its owners.
const REJOIN_SETTLED: Duration = Duration::from_millis(50);

/// One node of the world.
pub struct Node {
    pub id: String,
    pub shared: Arc<Shared>,
    /// Killed nodes stay in the list (their index names them) but do nothing.
    pub alive: bool,
    /// Whether it reaches the control plane (renews its lease, gets views).
    pub reaches_control_plane: bool,
    /// Frames it queued for each peer, as its links' send queues.
    outgoing: BTreeMap<usize, mpsc::Receiver<Bytes>>,
    pub next_heartbeat: Duration,
    /// The webhooks its owners raised, not yet checked.
    pub webhooks: Recorded,
}

/// Frames on their way from one node to another, in order.
#[derive(Default)]
struct Wire {
    frames: VecDeque<(Duration, Bytes)>,
}

/// What the simulated control plane holds of a node.
struct Registered {
    index: usize,
    /// When it entered the view.
    since: Duration,
    state: NodeState,
    incarnation: u64,
    expires: Duration,
}

/// What every owner numbered on the links, to check that one view has one owner.
#[derive(Default)]
pub struct Numbering {
    /// (channel, view version) → the nodes that sent its deliveries.
    pub owners: BTreeMap<(String, u64), BTreeSet<String>>,
}

pub struct World {
    pub rng: StdRng,
    base: Instant,
    pub now: Duration,
    pub nodes: Vec<Node>,
    wires: BTreeMap<(usize, usize), Wire>,
    /// Pairs whose link is cut.
    cut: BTreeSet<(usize, usize)>,
    registry: BTreeMap<String, Registered>,
    version: u64,
    next_tick: Duration,
    next_route_tick: Duration,
    pub numbering: Numbering,
    /// (event, node) whose frame was on its way from an owner that was killed.
    pub lost_in_flight: BTreeSet<(u64, usize)>,
    /// Draining nodes that closed their clients, and when.
    clients_sent_away: BTreeMap<usize, Duration>,
    pub webhook_check: WebhookCheck,
    /// Every step, for the repeatability check and for reading a failure.
    pub trace: Vec<String>,
    /// Whether a node that comes back to the control plane links to its peers first (odd
    /// seeds) or registers first (even seeds); from the seed, so the generator's draws
    /// stay as they were.
    links_before_registering: bool,
    /// Applied to every node's configuration (a test flips a rule with it).
    configure: fn(&mut Config),
    _runtime: tokio::runtime::Runtime,
}

pub fn app() -> AppConfig {
    AppConfig {
        // Never sent (nothing runs the node's tasks): raised webhooks are recorded.
        webhooks: vec!["http://webhooks.sim/".into()],
        ..AppConfig::development()
    }
}

impl World {
    pub fn new(seed: u64, configure: fn(&mut Config)) -> World {
        // Apps start their webhook tasks with tokio::spawn: a runtime must exist, and
        // since nothing here awaits, none of its tasks ever runs.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        World {
            rng: StdRng::seed_from_u64(seed),
            links_before_registering: seed % 2 == 1,
            base: Instant::now(),
            now: Duration::ZERO,
            nodes: Vec::new(),
            wires: BTreeMap::new(),
            cut: BTreeSet::new(),
            registry: BTreeMap::new(),
            version: 0,
            next_tick: Duration::ZERO,
            next_route_tick: Duration::ZERO,
            numbering: Numbering::default(),
            clients_sent_away: BTreeMap::new(),
            lost_in_flight: BTreeSet::new(),
            webhook_check: WebhookCheck::default(),
            trace: Vec::new(),
            configure,
            _runtime: runtime,
        }
    }

    pub fn at(&self) -> Instant {
        self.base + self.now
    }

    pub fn log(&mut self, what: String) {
        self.trace
            .push(format!("{:>7}ms {what}", self.now.as_millis()));
    }

    /// Starts a node and registers it (it becomes active on its first keepalive).
    pub fn add_node(&mut self) -> usize {
        let index = self.nodes.len();
        let id = format!("n{index}");
        let mut config = Config::for_test();
        config.mesh.listen = Some(([127, 0, 0, 1], 0).into());
        config.control_plane.endpoint = Some("http://control-plane.sim".into());
        config.control_plane.node_id = Some(id.clone());
        config.apps = vec![app()];
        (self.configure)(&mut config);
        let identity = Identity {
            incarnation: 1000 + index as u64,
            socket_node: 100 + index as u64,
        };
        let _enter = self._runtime.enter();
        let webhooks = Recorded::default();
        let drive = Drive::ByHand(self.at(), webhooks.clone());
        let shared = Shared::new(config, identity, drive).expect("a node's state");
        shared.set_now(self.at());
        self.nodes.push(Node {
            id: id.clone(),
            shared: Arc::new(shared),
            alive: true,
            reaches_control_plane: true,
            outgoing: BTreeMap::new(),
            next_heartbeat: self.now + HEARTBEAT,
            webhooks,
        });
        self.log(format!("start {id}"));
        self.register(index);
        index
    }

    fn register(&mut self, index: usize) {
        let node = &self.nodes[index];
        let state_lost = node.shared.cluster().state_lost();
        let id = node.id.clone();
        let incarnation = node.shared.incarnation;
        // A node that lost its state joins again as new, even within its lease.
        let (state, since) = match self.registry.get(&id) {
            Some(r) if r.incarnation == incarnation && !state_lost => (r.state, r.since),
            Some(r) if r.incarnation == incarnation => (NodeState::Joining, r.since),
            _ => (NodeState::Joining, self.now),
        };
        self.registry.insert(
            id,
            Registered {
                index,
                since,
                state,
                incarnation,
                expires: self.now + TTL,
            },
        );
        let registered = Input::Registered {
            ttl: TTL,
            heartbeat: HEARTBEAT,
            reported_state_lost: state_lost,
        };
        self.input(index, registered);
        self.publish_view();
    }

    fn input(&mut self, index: usize, input: Input) {
        let at = self.at();
        let shared = self.nodes[index].shared.clone();
        shared.set_now(at);
        rebalance::input(&shared, at, input);
    }

    /// A new view version to every node that reaches the control plane.
    fn publish_view(&mut self) {
        self.version += 1;
        let nodes = self
            .registry
            .iter()
            .map(|(id, r)| ClusterNode {
                node: Some(NodeInfo {
                    node_id: id.clone(),
                    incarnation: r.incarnation,
                    mesh_addr: format!("sim:{}", r.index),
                    ..NodeInfo::default()
                }),
                state: r.state as i32,
            })
            .collect();
        let update = ViewUpdate {
            version: self.version,
            full: true,
            nodes,
            ..ViewUpdate::default()
        };
        let mut view = ClusterView::default();
        view.apply(update).expect("a full view applies");
        let view = Arc::new(view);
        let states: Vec<String> = self
            .registry
            .iter()
            .map(|(id, r)| format!("{id}:{:?}", r.state))
            .collect();
        self.log(format!("view {} [{}]", self.version, states.join(" ")));
        for index in 0..self.nodes.len() {
            let node = &self.nodes[index];
            if node.alive && node.reaches_control_plane {
                node.shared.view.send_replace(view.clone());
                self.input(index, Input::View(view.clone()));
            }
        }
        self.link_view();
    }

    /// Every pair of live nodes of the view that is not cut holds a link; a node that
    /// left the view loses its links (its peers drop them, as `mesh/peers.rs` does).
    fn link_view(&mut self) {
        for a in 0..self.nodes.len() {
            if !self.in_view(a) {
                for b in 0..self.nodes.len() {
                    self.disconnect(a.min(b), a.max(b));
                }
            }
        }
        let live: Vec<usize> = self
            .registry
            .values()
            .map(|r| r.index)
            .filter(|i| self.nodes[*i].alive)
            .collect();
        for &a in &live {
            for &b in &live {
                if a < b && !self.cut.contains(&(a, b)) && !self.nodes[a].outgoing.contains_key(&b)
                {
                    self.connect(a, b);
                }
            }
        }
    }

    fn connect(&mut self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            let (link, io) = link::new(self.nodes[to].id.clone());
            let (sender, _inbound) = link.split();
            self.nodes[from].shared.peers.insert(sender);
            self.nodes[from].outgoing.insert(to, io.outgoing);
            self.wires.insert((from, to), Wire::default());
        }
        self.log(format!("link up n{a}-n{b}"));
        for (from, to) in [(a, b), (b, a)] {
            let peer = self.nodes[to].id.clone();
            self.input(from, Input::LinkUp(peer));
        }
    }

    /// Breaks the link of a pair: frames in flight are lost, both sides see it go down.
    fn disconnect(&mut self, a: usize, b: usize) {
        if !self.nodes[a].outgoing.contains_key(&b) {
            return;
        }
        self.log(format!("link down n{a}-n{b}"));
        for (from, to) in [(a, b), (b, a)] {
            self.nodes[from].outgoing.remove(&to);
            self.wires.remove(&(from, to));
            let peer = self.nodes[to].id.clone();
            self.nodes[from].shared.peers.remove(&peer);
            if self.nodes[from].alive {
                self.input(from, Input::LinkDown(peer));
            }
        }
    }

    pub fn kill(&mut self, index: usize) {
        self.log(format!("kill n{index}"));
        // Frames still on their way from the dying node are lost, and nobody can tell:
        // the owner acknowledged its events before their frames arrived.
        self.collect();
        for ((from, to), wire) in &self.wires {
            if *from != index {
                continue;
            }
            for (_, frame) in &wire.frames {
                if let Some(id) = super::clients::event_id_of_deliver(frame) {
                    self.lost_in_flight.insert((id, *to));
                }
            }
        }
        self.nodes[index].alive = false;
        for other in 0..self.nodes.len() {
            self.disconnect(index.min(other), index.max(other));
        }
    }

    pub fn partition(&mut self, a: usize, b: usize) {
        let pair = (a.min(b), a.max(b));
        self.cut.insert(pair);
        self.disconnect(pair.0, pair.1);
    }

    pub fn heal(&mut self, a: usize, b: usize) {
        self.cut.remove(&(a.min(b), a.max(b)));
        self.link_view();
    }

    /// Cuts a node off from the control plane (or brings it back: it registers again).
    pub fn reach_control_plane(&mut self, index: usize, reaches: bool) {
        self.log(format!("n{index} reaches the control plane: {reaches}"));
        self.nodes[index].reaches_control_plane = reaches;
        if !reaches {
            return;
        }
        if self.links_before_registering {
            // A node out of the view keeps dialing its peers with its last view, and a peer
            // takes any link of the cluster's CA: its links can come up before it registers.
            let others: Vec<usize> = (0..self.nodes.len())
                .filter(|o| *o != index && self.nodes[*o].alive)
                .collect();
            for other in others {
                let pair = (index.min(other), index.max(other));
                if !self.cut.contains(&pair) && !self.nodes[index].outgoing.contains_key(&other) {
                    self.connect(pair.0, pair.1);
                }
            }
        }
        self.register(index);
    }

    /// The control plane restarts: every node registers again with the same process and
    /// gets a full view of the same nodes (the registry was restored from disk).
    pub fn restart_control_plane(&mut self) {
        self.log("control plane restarts".into());
        for r in self.registry.values_mut() {
            r.expires = self.now + TTL + relaymesh_proto::control::OUTAGE_GRACE;
        }
        let reachable: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alive && self.nodes[*i].reaches_control_plane)
            .collect();
        for index in reachable {
            self.register(index);
        }
    }

    /// The operator drains a node: it leaves the ring; once every node is done with that
    /// view (or after 5 s) its clients are sent away and it leaves.
    pub fn drain(&mut self, index: usize) {
        let id = self.nodes[index].id.clone();
        if let Some(r) = self.registry.get_mut(&id) {
            r.state = NodeState::Draining;
            self.log(format!("drain n{index}"));
            self.publish_view();
        }
    }

    /// Whether the control plane counts the node as in the view.
    pub fn in_view(&self, index: usize) -> bool {
        self.registry
            .get(&self.nodes[index].id)
            .is_some_and(|r| r.index == index)
    }

    /// Whether the node is back in the cluster with its sockets: in the view for long
    /// enough that its owners have its resync (a node that just came back is not yet).
    pub fn in_cluster(&self, index: usize) -> bool {
        self.registry
            .get(&self.nodes[index].id)
            .is_some_and(|r| r.index == index && self.now >= r.since + REJOIN_SETTLED)
    }

    /// Drained nodes whose channels were handed over send their clients away, and leave
    /// once the clients had time to go (their sessions end in between).
    fn finish_drains(&mut self, drain_started: &mut BTreeMap<usize, Duration>) {
        let draining: Vec<(String, usize)> = self
            .registry
            .iter()
            .filter(|(_, r)| r.state == NodeState::Draining)
            .map(|(id, r)| (id.clone(), r.index))
            .collect();
        for (id, index) in draining {
            let started = *drain_started.entry(index).or_insert(self.now);
            let shared = self.nodes[index].shared.clone();
            let view = shared.view.borrow().version;
            let handed_over = shared.cluster().everyone_done() >= view;
            let sent_away = self.clients_sent_away.get(&index).copied();
            match sent_away {
                None if handed_over || self.now >= started + Duration::from_secs(5) => {
                    for app in shared.apps.all() {
                        app.close_all(4200, "Node is draining: reconnect to another node");
                    }
                    self.log(format!("n{index} sends its clients away"));
                    self.clients_sent_away.insert(index, self.now);
                }
                Some(at) if self.now >= at + Duration::from_millis(500) => {
                    self.registry.remove(&id);
                    self.log(format!("n{index} drained and left"));
                    self.nodes[index].alive = false;
                    for other in 0..self.nodes.len() {
                        self.disconnect(index.min(other), index.max(other));
                    }
                    self.publish_view();
                }
                _ => {}
            }
        }
    }

    /// Moves every node's queued frames onto the wires, each due a little later.
    pub fn collect(&mut self) {
        for from in 0..self.nodes.len() {
            let tos: Vec<usize> = self.nodes[from].outgoing.keys().copied().collect();
            for to in tos {
                while let Some(Ok(frame)) = self.nodes[from]
                    .outgoing
                    .get_mut(&to)
                    .map(|rx| rx.try_recv())
                {
                    let jitter = Duration::from_micros(self.rng.random_range(0..LINK_JITTER_US));
                    let wire = self.wires.entry((from, to)).or_default();
                    // A link is ordered: never due before the frame ahead of it.
                    let last = wire.frames.back().map_or(Duration::ZERO, |(due, _)| *due);
                    let due = (self.now + LINK_LATENCY + jitter).max(last);
                    wire.frames.push_back((due, frame));
                }
            }
        }
    }

    /// Delivers one due frame of a link picked at random; false when none is due.
    pub fn deliver_one(&mut self) -> bool {
        let due: Vec<(usize, usize)> = self
            .wires
            .iter()
            .filter(|(_, w)| w.frames.front().is_some_and(|(at, _)| *at <= self.now))
            .map(|(pair, _)| *pair)
            .collect();
        if due.is_empty() {
            return false;
        }
        let (from, to) = due[self.rng.random_range(0..due.len())];
        let Some((_, frame)) = self
            .wires
            .get_mut(&(from, to))
            .and_then(|w| w.frames.pop_front())
        else {
            return false;
        };
        self.observe(from, &frame);
        let shared = self.nodes[to].shared.clone();
        let peer = self.nodes[from].id.clone();
        shared.set_now(self.at());
        rebalance::receive(&shared, self.at(), &peer, frame);
        true
    }

    fn observe(&mut self, from: usize, frame: &Bytes) {
        let Ok(envelope) = Envelope::decode(frame.clone()) else {
            return;
        };
        let Some(body) = &envelope.body else { return };
        let what = match body {
            Body::Deliver(d) => {
                let key = (envelope.channel.clone(), envelope.view_version);
                self.numbering
                    .owners
                    .entry(key)
                    .or_default()
                    .insert(envelope.origin.clone());
                format!(
                    "deliver seq {} +{} -{}",
                    d.seq, d.member_added, d.member_removed
                )
            }
            Body::Synced(_) => return,
            Body::Subscribe(s) => format!("subscribe {:?} attempt {}", s.socket, s.attempt),
            Body::Unsubscribe(u) => format!("unsubscribe {:?} attempt {}", u.socket, u.attempt),
            Body::SubscribeResult(r) => {
                format!("answer {:?} attempt {} {}", r.socket, r.attempt, r.accepted)
            }
            other => format!("{:?}", std::mem::discriminant(other)),
        };
        let line = format!(
            "n{from}→ {} v{} {what}",
            envelope.channel, envelope.view_version
        );
        self.log(line);
    }

    /// The next time something is scheduled: a due frame, a tick, a heartbeat.
    fn next_event(&self) -> Duration {
        let mut next = self.next_tick.min(self.next_route_tick);
        for wire in self.wires.values() {
            if let Some((at, _)) = wire.frames.front() {
                next = next.min(*at);
            }
        }
        for node in self
            .nodes
            .iter()
            .filter(|n| n.alive && n.reaches_control_plane)
        {
            next = next.min(node.next_heartbeat);
        }
        next.max(self.now)
    }

    /// Runs timers that are due at `now`: ticks, keepalives, lease expiry, drains.
    pub fn run_timers(&mut self, drains: &mut BTreeMap<usize, Duration>) {
        if self.now >= self.next_tick {
            self.next_tick = self.now + rebalance::TICK;
            for index in 0..self.nodes.len() {
                if self.nodes[index].alive {
                    self.input(index, Input::Tick);
                }
            }
            self.finish_drains(drains);
        }
        if self.now >= self.next_route_tick {
            self.next_route_tick = self.now + route::TICK;
            for node in self.nodes.iter().filter(|n| n.alive) {
                node.shared.set_now(self.at());
                route::tick(&node.shared, self.at());
            }
        }
        let mut changed = false;
        for index in 0..self.nodes.len() {
            let node = &self.nodes[index];
            if !(node.alive && node.reaches_control_plane) || self.now < node.next_heartbeat {
                continue;
            }
            self.nodes[index].next_heartbeat = self.now + HEARTBEAT;
            let id = self.nodes[index].id.clone();
            if let Some(r) = self.registry.get_mut(&id) {
                r.expires = self.now + TTL;
                if r.state == NodeState::Joining {
                    r.state = NodeState::Active;
                    changed = true;
                }
                self.input(index, Input::Renewed);
            }
        }
        let now = self.now;
        let expired: Vec<String> = self
            .registry
            .iter()
            .filter(|(_, r)| r.expires < now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.log(format!("lease of {id} expired"));
            self.registry.remove(&id);
            changed = true;
        }
        if changed {
            self.publish_view();
        }
    }

    /// Advances the clock to the next event, or by `step` at most.
    pub fn advance(&mut self, step: Duration) {
        let next = self.next_event().max(self.now + Duration::from_micros(100));
        self.now = next.min(self.now + step);
    }
}
