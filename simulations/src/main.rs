//! `relaymesh-sim`: load simulations that print figures for docs/benchmarks.md.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use relaymesh_sim::{cluster, control_plane, load, mesh, ring};

#[derive(Parser)]
#[command(version, about = "relaymesh load simulations")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulated nodes against a running control plane: registration, watch fan-out cost,
    /// time from a node's death to every watcher seeing it gone.
    ControlPlane(control_plane::Args),
    /// Balance and movement of the ownership ring at sizes far past one machine.
    Ring(ring::Args),
    /// The mesh's cost: the same workload on one standalone node and on a three-node
    /// cluster per transport (subscribers, owner and publisher on different nodes).
    Mesh(mesh::Args),
    /// A Pusher protocol load generator against any Pusher-compatible server: connect,
    /// fanout, channels, presence, churn, client-events.
    // Boxed: its many flags make it far larger than the other commands.
    Load(Box<load::Args>),
    /// A multi-region cluster in network namespaces (control plane and nodes as
    /// processes, latency between regions) under a scenario, with faults on a schedule;
    /// writes a report folder with plots.
    // Boxed like `Load`.
    Cluster(Box<cluster::Args>),
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::ControlPlane(args) => control_plane::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Ring(args) => ring::run(args).map(|()| ExitCode::SUCCESS),
        Command::Mesh(args) => mesh::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Load(args) => load::run_cli(*args).await,
        Command::Cluster(args) => cluster::run_cli(*args).await,
    }
}
