//! `relaymesh-node`: runs one edge node until SIGINT / SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use relaymesh_node::config::{Config, Overrides};
use relaymesh_node::mesh::tls::ClusterCa;

/// A relaymesh edge node: Pusher Channels protocol v7 and HTTP API.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file; RELAYMESH_* environment variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to serve WebSocket, HTTP API and ops endpoints on (default 127.0.0.1:6001).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Join the cluster of this control plane (gRPC URL, e.g. http://127.0.0.1:7000);
    /// apps then come from its registry.
    #[arg(long)]
    control_plane: Option<String>,
    /// Region label reported to the control plane.
    #[arg(long)]
    region: Option<String>,
    /// Node id in the cluster (random when absent).
    #[arg(long)]
    node_id: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Mesh certificates: a cluster CA, and node certificates signed by it.
    #[command(subcommand)]
    Certs(Certs),
}

#[derive(Subcommand)]
enum Certs {
    /// Generate a cluster CA into DIR (ca.pem, ca.key).
    Ca {
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a node certificate from the CA in CA_DIR into DIR (ca.pem, node.pem, node.key).
    Node {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        node_id: String,
        #[arg(long)]
        out: PathBuf,
    },
}

fn certs(command: Certs) -> ExitCode {
    let result = match command {
        Certs::Ca { out } => ClusterCa::generate()
            .and_then(|ca| ca.save(&out))
            .map(|()| out),
        Certs::Node { ca, node_id, out } => ClusterCa::load(&ca)
            .and_then(|ca| ca.issue(&node_id))
            .and_then(|identity| identity.save(&out))
            .map(|()| out),
    };
    match result {
        Ok(out) => {
            println!("wrote {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relaymesh-node certs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Exit status for a configuration error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    relaymesh_proto::observe::init_logging();
    let args = Args::parse();
    if let Some(Command::Certs(command)) = args.command {
        return certs(command);
    }
    let overrides = Overrides {
        listen: args.listen,
        control_plane: args.control_plane,
        region: args.region,
        node_id: args.node_id,
    };
    let config = match Config::load(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("relaymesh-node: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("relaymesh-node: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relaymesh-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Handshakes that may wait for `accept`: a connection storm (every client of a drained node
/// at once) would otherwise overflow the default backlog of 128 and wait for SYN retries.
/// The kernel caps it at net.core.somaxconn.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn run(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener =
        listen(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let apps: Vec<_> = config
        .apps
        .iter()
        .map(|a| (a.id.clone(), a.key.clone(), a.secret.clone()))
        .collect();
    let control_plane = config.control_plane.endpoint.clone();
    let node = relaymesh_node::start(config, listener)?;
    let addr = node.local_addr();
    println!("relaymesh-node listening on {addr}");
    if let Some(endpoint) = control_plane {
        println!(
            "  node {} following the control plane at {endpoint}; its registry's apps are served too",
            node.shared().node_id
        );
    }
    for (id, key, secret) in apps {
        println!("  app id={id} key={key} secret={secret}");
    }
    println!("  WebSocket: ws://{addr}/app/<key>   HTTP API: http://{addr}/apps/<id>/events   metrics: http://{addr}/metrics");
    tracing::info!(%addr, "node started");
    let mut drained = node.shared().drained.subscribe();
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("draining: the node leaves the ring, then its clients move elsewhere");
            relaymesh_node::drain::drain(node.shared().clone()).await;
        }
        // An operator drained the node (`relaymesh-control ctl drain`).
        _ = drained.wait_for(|d| *d) => {}
    }
    tracing::info!("shutting down");
    node.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
