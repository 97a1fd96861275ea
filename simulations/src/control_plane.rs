//! Simulated nodes against a running control plane. Each simulated node opens its own
//! connection, registers, sends keepalives at the heartbeat the control plane asks for, and
//! watches the view, as a real node does. The run measures registration, the control
//! plane's CPU and memory with every node watching, the cost and latency of one view change
//! fanned out to every watcher, and the time from a node's death (keepalives stop, no
//! leave) to every other watcher seeing it removed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use relaymesh_proto::bearer::BearerToken;
use relaymesh_proto::control::membership_client::MembershipClient;
use relaymesh_proto::control::ops_client::OpsClient;
use relaymesh_proto::control::*;
use serde_json::json;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::procstat;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    endpoint: String,
    #[arg(long, default_value = "dev-join-token")]
    join_token: String,
    #[arg(long, default_value = "dev-operator-token")]
    operator_token: String,
    /// PID of the control plane process, for its CPU time and resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Seconds of steady state (keepalives only) measured.
    #[arg(long, default_value_t = 5)]
    steady_secs: u64,
    /// View changes (app creations) fanned out to every watcher.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Nodes killed one after another (keepalives stop, no leave).
    #[arg(long, default_value_t = 3)]
    kills: usize,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Stop with an error after this many seconds.
    #[arg(long, default_value_t = 300)]
    time_limit_secs: u64,
}

/// What one simulated node's watch stream has seen.
#[derive(Default)]
struct Watcher {
    version: AtomicU64,
    /// Node id → when this watcher saw it removed.
    removed: Mutex<HashMap<String, Instant>>,
    /// Node id → state, as applied from the stream.
    states: Mutex<HashMap<String, i32>>,
}

struct SimNode {
    id: String,
    watcher: Arc<Watcher>,
    /// The node's tasks; aborting them is the node's death.
    tasks: JoinSet<()>,
}

async fn channel(endpoint: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(endpoint.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

async fn start_node(endpoint: String, token: BearerToken, id: String) -> Result<SimNode> {
    let mut client = MembershipClient::with_interceptor(channel(&endpoint).await?, token);
    let info = NodeInfo {
        node_id: id.clone(),
        region: format!("sim-{}", id.len() % 3),
        client_addr: "127.0.0.1:0".into(),
        ..NodeInfo::default()
    };
    let lease = client
        .register(RegisterRequest {
            node: Some(info),
            state_lost: false,
        })
        .await?
        .into_inner();
    let watcher = Arc::new(Watcher::default());
    let mut updates = client.clone().watch(WatchRequest {}).await?.into_inner();
    let mut tasks = JoinSet::new();
    let seen = watcher.clone();
    tasks.spawn(async move {
        while let Ok(Some(update)) = updates.message().await {
            let now = Instant::now();
            {
                let mut states = seen.states.lock().unwrap_or_else(|e| e.into_inner());
                if update.full {
                    states.clear();
                }
                for entry in update.nodes {
                    if let Some(node) = entry.node {
                        states.insert(node.node_id, entry.state);
                    }
                }
                let mut removed = seen.removed.lock().unwrap_or_else(|e| e.into_inner());
                for id in update.removed_nodes {
                    states.remove(&id);
                    removed.insert(id, now);
                }
            }
            seen.version.store(update.version, Ordering::Release);
        }
    });
    let (beats, beats_rx) = tokio::sync::mpsc::channel(2);
    let mut answers = client
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(beats_rx))
        .await?
        .into_inner();
    let heartbeat = Duration::from_millis(lease.heartbeat_ms.max(10));
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(heartbeat);
        loop {
            tick.tick().await;
            let beat = KeepAliveRequest {
                lease_id: lease.lease_id.clone(),
                load: Some(NodeLoad::default()),
            };
            if beats.send(beat).await.is_err() {
                return;
            }
            if !matches!(answers.message().await, Ok(Some(_))) {
                return;
            }
        }
    });
    Ok(SimNode { id, watcher, tasks })
}

fn cpu_rss(pid: Option<u32>) -> Option<(f64, u64)> {
    pid.and_then(|pid| procstat::sample(pid).ok())
}

async fn wait_until(limit: Instant, what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    while !done() {
        if Instant::now() > limit {
            bail!("time limit reached waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub async fn run(args: Args) -> Result<()> {
    let limit = Instant::now() + Duration::from_secs(args.time_limit_secs);
    let join = BearerToken::new(&args.join_token).context("join token")?;
    let operator = BearerToken::new(&args.operator_token).context("operator token")?;
    let mut ops = OpsClient::with_interceptor(channel(&args.endpoint).await?, operator);
    let before = cpu_rss(args.pid);

    // 1. Registration.
    let started = Instant::now();
    let mut pending = JoinSet::new();
    let mut nodes = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        if pending.len() >= 64 {
            if let Some(node) = pending.join_next().await {
                nodes.push(node??);
            }
        }
        pending.spawn(start_node(
            args.endpoint.clone(),
            join.clone(),
            format!("sim-{i:05}"),
        ));
    }
    while let Some(node) = pending.join_next().await {
        nodes.push(node??);
    }
    let registered = started.elapsed();
    let version = loop {
        let list = ops.list_nodes(ListNodesRequest {}).await?.into_inner();
        let active = list.nodes.iter().filter(|n| {
            n.node
                .as_ref()
                .is_some_and(|m| m.state == NodeState::Active as i32)
        });
        if active.count() >= nodes.len() {
            break list.version;
        }
        if Instant::now() > limit {
            bail!("time limit reached waiting for every node to be active");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    wait_until(limit, "every watcher to reach the all-active view", || {
        nodes
            .iter()
            .all(|n| n.watcher.version.load(Ordering::Acquire) >= version)
    })
    .await?;
    let sample = nodes.first().map_or(0, |n| {
        let states = n.watcher.states.lock().unwrap_or_else(|e| e.into_inner());
        states
            .values()
            .filter(|s| **s == NodeState::Active as i32)
            .count()
    });
    if sample < nodes.len() {
        bail!(
            "a watcher's view holds {sample} active nodes, expected {}",
            nodes.len()
        );
    }
    let converged = started.elapsed();
    let after_join = cpu_rss(args.pid);
    println!(
        "{} nodes registered in {:.2} s; every watcher saw all of them active after {:.2} s",
        nodes.len(),
        registered.as_secs_f64(),
        converged.as_secs_f64()
    );

    // 2. Steady state: keepalives only.
    let steady_start = cpu_rss(args.pid);
    tokio::time::sleep(Duration::from_secs(args.steady_secs)).await;
    let steady_end = cpu_rss(args.pid);
    let steady_cores = match (steady_start, steady_end) {
        (Some((a, _)), Some((b, _))) => Some((b - a) / args.steady_secs as f64),
        _ => None,
    };
    if let Some(cores) = steady_cores {
        println!(
            "steady state: control plane uses {:.3} cores for {} keepalives/s",
            cores,
            nodes.len()
        );
    }

    // 3. View changes fanned out to every watcher.
    let change_start = cpu_rss(args.pid);
    let mut latencies = Vec::new();
    let mut created = Vec::new();
    for _ in 0..args.changes {
        let t0 = Instant::now();
        let app = ops
            .create_app(CreateAppRequest { settings: None })
            .await?
            .into_inner();
        let version = ops
            .cluster_totals(ClusterTotalsRequest {})
            .await?
            .into_inner()
            .version;
        created.push(app.id);
        wait_until(limit, "a change to reach every watcher", || {
            nodes
                .iter()
                .all(|n| n.watcher.version.load(Ordering::Acquire) >= version)
        })
        .await?;
        latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let change_end = cpu_rss(args.pid);
    latencies.sort_by(f64::total_cmp);
    let cpu_per_change_ms = match (change_start, change_end) {
        (Some((a, _)), Some((b, _))) if args.changes > 0 => {
            Some((b - a) * 1000.0 / args.changes as f64)
        }
        _ => None,
    };
    println!(
        "view change to all {} watchers: p50 {:.1} ms, max {:.1} ms{}",
        nodes.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 1.0),
        cpu_per_change_ms.map_or(String::new(), |ms| format!(
            "; control plane CPU {ms:.2} ms per change ({:.2} µs per watcher)",
            ms * 1000.0 / nodes.len() as f64
        ))
    );

    // 4. Deaths.
    let mut deaths = Vec::new();
    for _ in 0..args.kills.min(nodes.len().saturating_sub(1)) {
        let Some(mut victim) = nodes.pop() else { break };
        let t0 = Instant::now();
        victim.tasks.abort_all();
        let id = victim.id.clone();
        wait_until(limit, "every watcher to see the death", || {
            nodes.iter().all(|n| {
                n.watcher
                    .removed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&id)
            })
        })
        .await?;
        let mut seen: Vec<f64> = nodes
            .iter()
            .filter_map(|n| {
                n.watcher
                    .removed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&id)
                    .copied()
            })
            .map(|at| at.duration_since(t0).as_secs_f64() * 1000.0)
            .collect();
        seen.sort_by(f64::total_cmp);
        println!(
            "death of {id}: first watcher after {:.0} ms, every watcher after {:.0} ms (spread {:.1} ms)",
            seen[0],
            seen[seen.len() - 1],
            seen[seen.len() - 1] - seen[0]
        );
        deaths.push(json!({"node": id, "first_ms": seen[0], "last_ms": seen[seen.len() - 1]}));
    }
    let end = cpu_rss(args.pid);
    if let (Some((_, rss0)), Some((_, rss1))) = (before, after_join) {
        println!(
            "control plane RSS: {:.1} MiB before, {:.1} MiB with {} nodes watching ({:.1} KiB per node)",
            rss0 as f64 / 1048576.0,
            rss1 as f64 / 1048576.0,
            nodes.len(),
            (rss1.saturating_sub(rss0)) as f64 / 1024.0 / nodes.len().max(1) as f64
        );
    }
    for id in created {
        let _ = ops.delete_app(DeleteAppRequest { app_id: id }).await;
    }
    if let Some(path) = args.json {
        let figures = json!({
            "nodes": args.nodes,
            "registered_s": registered.as_secs_f64(),
            "converged_s": converged.as_secs_f64(),
            "steady_cores": steady_cores,
            "change_latency_ms": {"p50": percentile(&latencies, 0.5), "max": percentile(&latencies, 1.0)},
            "cpu_ms_per_change": cpu_per_change_ms,
            "rss_before_bytes": before.map(|b| b.1),
            "rss_with_nodes_bytes": after_join.map(|b| b.1),
            "rss_end_bytes": end.map(|b| b.1),
            "deaths": deaths,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&figures)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
