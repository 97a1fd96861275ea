//! `relaymesh-sim`: load simulations that print figures for docs/benchmarks.md.

mod control_plane;
mod load;
mod mesh;
mod plot;
mod procstat;
mod ring;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::ControlPlane(args) => control_plane::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Ring(args) => ring::run(args).map(|()| ExitCode::SUCCESS),
        Command::Mesh(args) => mesh::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Load(args) => load::run_cli(*args).await,
    }
}
