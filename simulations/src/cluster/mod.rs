//! `relaymesh-sim cluster`: a multi-region cluster on the namespace testbed (control plane
//! in the first region, one host per node, latency between regions by netem or relays),
//! a scenario of the testbed's clients spread over the regions with one paced publisher in
//! the first region, faults on a schedule, and a report folder: `report.json`, the
//! timeline, three charts, and a table on stdout. Every run is bounded in time; whatever it
//! built is removed at the end, on an error, a panic or Ctrl-C alike (the testbed's `Drop`
//! guards).
//!
//! | piece | file |
//! | --- | --- |
//! | regions, latency, durations, fault schedule | `spec.rs` |
//! | clients per region, publisher, presence agreement | `workload.rs` |
//! | carrying out the schedule | `faults.rs` |
//! | report, timeline, table | `report.rs` |
//! | charts | `charts.rs` |

mod charts;
mod faults;
mod report;
pub mod spec;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use relaymesh_proto::ring::Ring;
use serde_json::json;

use crate::mesh::Transport;
use crate::testbed::check::{settle, Delivery};
use crate::testbed::clients::{users, Client};
use crate::testbed::cluster::{Bins, Cluster, Latencies, Spec, APP, CP};
use crate::testbed::latency::Latency;
use crate::testbed::netns;
use faults::Injector;
use report::{RegionFigures, Report};
use workload::{Scenario, Workload};

/// Set-up (namespaces, processes, clients) and tear-down beyond `--duration` and
/// `--settle` that a run may take before it stops itself.
const OVERHEAD_MAX: Duration = Duration::from_secs(120);
/// How often the schedule is looked at.
const TICK: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScenarioKind {
    Fanout,
    Channels,
    Presence,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Regions and their node counts: nodes `{region}-1`…; the control plane and the
    /// publisher are in the first region.
    #[arg(long, default_value = "eu:2,us:2,ap:1")]
    regions: String,
    /// One-way latency between regions (each direction gets it; a round trip twice):
    /// `eu-us=80ms,eu-ap=150ms`. Pairs not named have none, nor has a region within.
    #[arg(long, default_value = "")]
    latency: String,
    #[arg(long, value_enum, default_value = "fanout")]
    scenario: ScenarioKind,
    /// Subscribers: in all (fanout) or per channel (channels).
    #[arg(long, default_value_t = 60)]
    subs: usize,
    /// Channels of the channels scenario.
    #[arg(long, default_value_t = 10)]
    channels: usize,
    /// Members of the presence scenario.
    #[arg(long, default_value_t = 12)]
    members: usize,
    /// Events per second, all channels together, paced.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// `AT:kill|drain|restart:NODE`, `AT:partition:A/B[:FOR]` (B may be `cp`), comma
    /// separated; `owner` is the node owning the first channel.
    #[arg(long, default_value = "")]
    faults: String,
    /// How long the schedule runs (publishing starts 1 s before).
    #[arg(long, default_value = "60s")]
    duration: String,
    /// After publishing stops, how long events still in flight may take.
    #[arg(long, default_value = "3s")]
    settle: String,
    /// The report folder.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "quic")]
    transport: Transport,
    /// Folder of the relaymesh-node and relaymesh-control binaries.
    #[arg(long, default_value = "target/debug")]
    bin_dir: PathBuf,
    /// RUST_LOG of the started processes (their logs are in OUT/logs).
    #[arg(long, default_value = "warn,relaymesh_node=info")]
    child_log: String,
}

/// Runs within its time bound; Ctrl-C stops it, and dropping the run removes everything.
pub async fn run_cli(args: Args) -> Result<ExitCode> {
    let limit = spec::duration(&args.duration)? + spec::duration(&args.settle)? + OVERHEAD_MAX;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    tokio::select! {
        done = tokio::time::timeout(limit, run(args, command)) => match done {
            Ok(result) => result.map(|()| ExitCode::SUCCESS),
            Err(_) => bail!("the run did not end within {limit:?}; stopped and cleaned up"),
        },
        _ = tokio::signal::ctrl_c() => bail!("interrupted (Ctrl-C); cleaned up"),
    }
}

async fn run(args: Args, command: String) -> Result<()> {
    let started = Instant::now();
    if let Some(reason) = netns::unavailable() {
        bail!("\n\n*** relaymesh-sim cluster CANNOT RUN: {reason} ***\n");
    }
    let regions = spec::regions(&args.regions)?;
    let between = spec::latency(&args.latency, &regions)?;
    let nodes: Vec<String> = regions.iter().flat_map(|r| r.nodes.clone()).collect();
    let schedule = spec::faults(&args.faults, &nodes)?;
    let duration = spec::duration(&args.duration)?;
    let settle_for = spec::duration(&args.settle)?;
    anyhow::ensure!(
        args.rate > 0.0 && args.rate <= 10_000.0,
        "--rate: 0 to 10,000"
    );
    let scenario = match args.scenario {
        ScenarioKind::Fanout => Scenario::Fanout { subs: args.subs },
        ScenarioKind::Channels => Scenario::Channels {
            channels: args.channels.max(1),
            subs: args.subs,
        },
        ScenarioKind::Presence => Scenario::Presence {
            members: args.members,
        },
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let spec = Spec {
        name: format!("{} {}", scenario.name(), args.regions),
        log: "cluster".into(),
        prefix: "rc".into(),
        nodes: regions
            .iter()
            .flat_map(|r| r.nodes.iter().map(|n| (n.clone(), r.name.clone())))
            .collect(),
        cp_region: regions[0].name.clone(),
        latency: Latencies::ByRegion(
            between
                .iter()
                .map(|(k, d)| {
                    let l = Latency {
                        delay: *d,
                        loss_percent: 0.0,
                    };
                    (k.clone(), l)
                })
                .collect(),
        ),
        transport: args.transport,
        bins: Bins::in_dir(&args.bin_dir)?,
        rust_log: args.child_log.clone(),
        dir: Some(args.out.join("logs")),
    };
    let mut cluster = Cluster::start(spec).await?;
    let tag = cluster.net.tag().to_owned();
    let mode = cluster.latency_mode;
    eprintln!("[cluster] latency: {:?} — {}", mode, cluster.latency_note);
    let channels = scenario.channels();
    let owner = Ring::new(nodes.iter().map(String::as_str))
        .owner(APP, &channels[0])
        .unwrap_or_default()
        .to_owned();
    eprintln!("[cluster] {} is owned by {owner}", channels[0]);
    let mut workload = Workload::start(&cluster, &regions, &scenario).await?;
    workload.publish(&cluster, args.rate);
    let mut via = vec![workload.publishing_via.clone()];
    // Every subscriber receives before the first fault.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut injector = Injector::new(schedule, &owner, &nodes);
    let t0 = Instant::now();
    eprintln!("[cluster] schedule started; runs {duration:?}");
    let mut presence_seconds: BTreeMap<u64, bool> = BTreeMap::new();
    let presence = matches!(scenario, Scenario::Presence { .. });
    while t0.elapsed() < duration {
        injector.step(t0, &mut cluster, &mut workload).await;
        if workload.publishing_via != *via.last().unwrap_or(&String::new()) {
            via.push(workload.publishing_via.clone());
        }
        let second = t0.elapsed().as_secs();
        if presence && !presence_seconds.contains_key(&second) && t0.elapsed().subsec_millis() > 900
        {
            presence_seconds.insert(second, workload.presence_agrees());
        }
        tokio::time::sleep(TICK).await;
    }
    let pubs = match workload.publisher.take() {
        Some(p) => p.stop().await,
        None => Vec::new(),
    };
    injector.heal_all(&mut cluster, t0);
    let max_delay = between.values().max().copied().unwrap_or_default();
    // A session that ended may miss what was acknowledged just before (in flight over up to
    // two inter-region hops): not lost, since it did not stay connected.
    let margin = Duration::from_millis(250) + max_delay * 2;
    let clients: Vec<&Client> = workload.members.iter().map(|m| &m.client).collect();
    settle(&pubs, &clients, margin, settle_for).await;
    let end = Instant::now();
    let presence_end = if presence {
        let live = nodes.iter().find(|n| injector.live.contains(*n));
        let api = match live {
            Some(n) => users(&cluster.http, &cluster.base(n), &channels[0])
                .await
                .ok(),
            None => None,
        };
        Some((workload.presence_agrees(), api.map(|u| u.len())))
    } else {
        None
    };

    let delivery = Delivery::of(&pubs, &clients, margin);
    let arrivals = report::arrivals(&workload.members, &pubs);
    let timeline = report::timeline(
        t0,
        end,
        &workload.members,
        &pubs,
        &arrivals,
        &presence_seconds,
        &injector.records,
    );
    let region_of: BTreeMap<&str, &str> = workload
        .members
        .iter()
        .map(|m| (m.client.label.as_str(), m.region.as_str()))
        .collect();
    let mut by_region: Vec<(String, Vec<f64>)> = Vec::new();
    let mut figures = Vec::new();
    for r in &regions {
        let mine: Vec<usize> = (0..workload.members.len())
            .filter(|&i| workload.members[i].region == r.name)
            .collect();
        let mut values: Vec<f64> = arrivals
            .iter()
            .filter(|(i, _, _)| workload.members[*i].region == r.name)
            .map(|(_, _, ms)| *ms)
            .collect();
        let delivered = values.len() as u64;
        by_region.push((r.name.clone(), values.clone()));
        figures.push(RegionFigures {
            region: r.name.clone(),
            nodes: r.nodes.clone(),
            clients: mine.len(),
            sessions: mine
                .iter()
                .map(|&i| workload.members[i].client.sessions().len())
                .sum(),
            delivered,
            lost: delivery
                .lost
                .iter()
                .filter(|l| region_of.get(l.client.as_str()) == Some(&r.name.as_str()))
                .count(),
            latency: report::Latency::of(&mut values),
        });
    }
    let connected_members = workload
        .members
        .iter()
        .filter(|m| m.user.is_some() && m.client.connected())
        .count();
    let failed = workload.failed.clone();
    let http_layout: Vec<serde_json::Value> = regions
        .iter()
        .flat_map(|r| {
            r.nodes
                .iter()
                .map(|n| json!({"node": n, "region": r.name, "ip": cluster.ip(n).to_string()}))
        })
        .collect();
    let layout = json!({
        "tag": tag,
        "transport": args.transport.name(),
        "control_plane": {"host": CP, "region": regions[0].name, "ip": cluster.ip(CP).to_string()},
        "nodes": http_layout,
        "latency_mode": mode,
        "latency_mode_note": format!("{mode:?}: {}", cluster.latency_note),
        "latency_one_way_ms": between.iter().map(|((a, b), d)| (format!("{a}-{b}"), d.as_millis())).collect::<BTreeMap<_, _>>(),
        "logs": args.out.join("logs").display().to_string(),
    });
    let scenario_json = json!({
        "name": scenario.name(),
        "channels": channels,
        "first_channel_owner": owner,
        "clients": workload.members.len(),
        "subs": args.subs,
        "members": args.members,
        "rate_per_s": args.rate,
        "duration_s": duration.as_secs_f64(),
        "settle_s": settle_for.as_secs_f64(),
    });
    // Tear down before the report, so that it can say what was left.
    drop(workload);
    drop(cluster);
    let namespaces_left = netns::namespaces_of(&tag);
    let title = format!("{} on {}", scenario.name(), args.regions);
    let plots = charts::write(&args.out, &title, &by_region, &timeline, &injector.records)?;
    let report = Report {
        tool: "relaymesh-sim cluster",
        command,
        layout,
        scenario: scenario_json,
        faults: injector.records,
        publishes: report::publishes(&pubs, &regions[0].name, via),
        delivery: report::accounting(&delivery, margin),
        regions: figures,
        presence: presence_end.map(|(agrees, api)| report::PresenceFigures {
            seconds_sampled: presence_seconds.len(),
            seconds_agreeing: presence_seconds.values().filter(|v| **v).count(),
            agrees_at_end: agrees,
            api_users: api,
            connected_members,
        }),
        clients_failed_at_start: failed,
        timeline,
        plots,
        namespaces_left,
        wall_s: started.elapsed().as_secs_f64(),
    };
    let path = args.out.join("report.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    print!("{}", report::table(&report));
    println!("report      {}", path.display());
    if !report.namespaces_left.is_empty() {
        bail!(
            "namespaces left after the clean-up: {:?}",
            report.namespaces_left
        );
    }
    Ok(())
}
