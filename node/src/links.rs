//! The mesh link manager: keeps one link to every other node of the view. Of each pair,
//! the node with the smaller id dials (so a pair has one link), with jittered, capped
//! backoff while the peer is unreachable; the other accepts. A link whose transport ends is
//! dropped, and dialed again while the peer stays in the view.
//!
//! A task that drives the node, so it sits above the routing it feeds: it hands every frame
//! and every link up or down to the cluster core's shell (`rebalance.rs`). The table of live
//! links it keeps is `mesh::peers::Peers`, below the routing that sends on it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cluster::Input;
use crate::mesh::endpoint::Endpoint;
use crate::mesh::link::{Link, LinkError};
use crate::rebalance;
use crate::shared::Shared;
use crate::telemetry;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A dial that takes longer is abandoned, so the next attempt reads the peer's address
/// again (a restarted peer has a new one; QUIC would wait out its 30 s idle timeout).
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often links are checked against the view even without a view change.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

fn set_up(peer: &str, up: bool) {
    metrics::gauge!(telemetry::MESH_LINK_UP, "peer" => peer.to_owned()).set(if up {
        1.0
    } else {
        0.0
    });
}

/// Runs the link manager until `stop`.
pub fn spawn(
    shared: Arc<Shared>,
    endpoint: Arc<Endpoint>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run(shared, endpoint, stop))
}

async fn run(shared: Arc<Shared>, endpoint: Arc<Endpoint>, mut stop: watch::Receiver<bool>) {
    let mut views = shared.view.subscribe();
    let (dialed_tx, mut dialed) = mpsc::channel::<Dialed>(16);
    let mut dialing: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    loop {
        tokio::select! {
            // Cancel-safe, so the other branches firing loses no link (the transport
            // handshakes in its own tasks).
            accepted = endpoint.accept() => match accepted {
                Some(link) => adopt(&shared, link),
                None => return,
            },
            Some((peer, link)) = dialed.recv() => {
                dialing.remove(&peer);
                if let Some(link) = link {
                    adopt(&shared, link);
                }
            }
            _ = views.changed() => reconcile(&shared, &endpoint, &dialed_tx, &mut dialing),
            _ = tick.tick() => reconcile(&shared, &endpoint, &dialed_tx, &mut dialing),
            _ = stop.changed() => {
                for (_, task) in dialing.drain() {
                    task.abort();
                }
                shared.peers.clear();
                endpoint.close();
                return;
            }
        }
    }
}

/// Records a new link and routes what the peer sends. The table holds the link's only
/// lasting sender: a link dropped from it (its peer left the view) closes, so the peer
/// drops its side too and neither keeps a link the other has forgotten.
fn adopt(shared: &Arc<Shared>, link: Link) {
    let (sender, mut inbound) = link.split();
    let peer = sender.peer.clone();
    if peer == shared.node_id {
        return;
    }
    tracing::info!(peer, "mesh link up");
    set_up(&peer, true);
    let this_link = sender.downgrade();
    shared.peers.insert(sender);
    let up = Input::LinkUp(peer.clone());
    rebalance::input(shared, shared.now(), up);
    let shared = shared.clone();
    tokio::spawn(async move {
        while let Some(frame) = inbound.recv().await {
            count_in(&peer, &frame);
            rebalance::receive(&shared, shared.now(), &peer, frame);
        }
        // Only forget it if a newer link has not replaced it: a replaced link ending says
        // nothing about the peer.
        if shared.peers.remove_if_current(&peer, &this_link) {
            let down = Input::LinkDown(peer.clone());
            rebalance::input(&shared, shared.now(), down);
            tracing::info!(peer, "mesh link down");
            set_up(&peer, false);
        } else {
            tracing::debug!(peer, "a replaced mesh link ended");
        }
    });
}

fn count_in(peer: &str, frame: &Bytes) {
    metrics::counter!(telemetry::MESH_FRAMES_IN, "peer" => peer.to_owned()).increment(1);
    metrics::counter!(telemetry::MESH_BYTES_IN, "peer" => peer.to_owned())
        .increment(frame.len() as u64);
}

/// The end of a dial: the peer, and its link unless the dial gave up (the peer left the
/// view, or its address is unusable).
type Dialed = (String, Option<Link>);

/// Dials the nodes this node is responsible for and forgets links to nodes that left.
fn reconcile(
    shared: &Arc<Shared>,
    endpoint: &Arc<Endpoint>,
    dialed: &mpsc::Sender<Dialed>,
    dialing: &mut HashMap<String, JoinHandle<()>>,
) {
    let view = shared.view.borrow().clone();
    let in_view: HashMap<String, String> = view
        .nodes
        .iter()
        .filter_map(|(id, m)| Some((id.clone(), m.node.as_ref()?.mesh_addr.clone())))
        .filter(|(id, addr)| *id != shared.node_id && !addr.is_empty())
        .collect();
    let gone: HashSet<String> = shared
        .peers
        .ids()
        .into_iter()
        .filter(|id| !in_view.contains_key(id))
        .collect();
    for id in gone {
        shared.peers.remove(&id);
        set_up(&id, false);
        rebalance::input(shared, shared.now(), Input::LinkDown(id));
    }
    // A dial stays in `dialing` until its end is received, not until its task finishes:
    // a finished dial's link may still wait in the channel, and dialing again then would
    // make two links whose ends each side may keep differently (one side left without).
    for id in in_view.into_keys() {
        if shared.node_id >= id || dialing.contains_key(&id) || shared.peers.link(&id).is_some() {
            continue;
        }
        let task = tokio::spawn(dial(
            shared.clone(),
            endpoint.clone(),
            id.clone(),
            dialed.clone(),
        ));
        dialing.insert(id, task);
    }
}

/// The peer's mesh address in the current view (it changes when the peer restarts).
fn mesh_addr(shared: &Shared, peer: &str) -> Option<Result<SocketAddr, String>> {
    let view = shared.view.borrow();
    let addr = view.nodes.get(peer)?.node.as_ref()?.mesh_addr.clone();
    Some(addr.parse().map_err(|_| addr))
}

async fn dial(
    shared: Arc<Shared>,
    endpoint: Arc<Endpoint>,
    peer: String,
    dialed: mpsc::Sender<Dialed>,
) {
    let link = dial_until_linked(&shared, &endpoint, &peer).await;
    let _ = dialed.send((peer, link)).await;
}

/// Dials `peer` with backoff until a link comes up, or the peer leaves the view or has an
/// unusable address (`None`).
async fn dial_until_linked(shared: &Shared, endpoint: &Endpoint, peer: &str) -> Option<Link> {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let addr = match mesh_addr(shared, peer)? {
            Ok(addr) => addr,
            Err(addr) => {
                tracing::warn!(peer, addr, "peer has an unusable mesh address");
                return None;
            }
        };
        let attempt = tokio::time::timeout(DIAL_TIMEOUT, endpoint.connect(addr)).await;
        let attempt = attempt.unwrap_or_else(|_| Err(LinkError::transport("timed out")));
        match attempt {
            Ok(link) if link.peer() == peer => {
                metrics::counter!(telemetry::MESH_DIALS, "result" => "ok").increment(1);
                return Some(link);
            }
            Ok(link) => {
                tracing::warn!(expected = peer, answered = link.peer(), %addr, "a different node answered");
                metrics::counter!(telemetry::MESH_DIALS, "result" => "wrong_peer").increment(1);
            }
            Err(e) => {
                tracing::debug!(peer, %addr, error = %e, "mesh dial failed");
                metrics::counter!(telemetry::MESH_DIALS, "result" => "failed").increment(1);
            }
        }
        let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.5));
        tokio::time::sleep(jittered).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
