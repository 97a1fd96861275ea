//! `relaymesh-sim`: load simulations that print figures for docs/benchmarks.md.

mod control_plane;
mod mesh;
mod plot;
mod procstat;
mod ring;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::ControlPlane(args) => control_plane::run(args).await,
        Command::Ring(args) => ring::run(args),
        Command::Mesh(args) => mesh::run(args).await,
    }
}
