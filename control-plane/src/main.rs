//! `relaymesh-control`: `serve` runs the control plane; `ctl` talks to its ops API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use relaymesh_control::{ctl, Config, DEV_JOIN_TOKEN, DEV_OPERATOR_TOKEN};

#[derive(Parser)]
#[command(version, about = "relaymesh control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane.
    Serve {
        /// gRPC address (Membership for nodes, Ops for operators).
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
        /// Address of /metrics.
        #[arg(long, default_value = "127.0.0.1:7001")]
        http_listen: SocketAddr,
        #[arg(long, default_value = "relaymesh-control-data")]
        data_dir: PathBuf,
        #[arg(long, env = "RELAYMESH_CONTROL_JOIN_TOKEN", default_value = DEV_JOIN_TOKEN, hide_env_values = true)]
        join_token: String,
        #[arg(long, env = "RELAYMESH_CONTROL_OPERATOR_TOKEN", default_value = DEV_OPERATOR_TOKEN, hide_env_values = true)]
        operator_token: String,
        /// Lease time-to-live; a node missing keepalives this long is removed.
        #[arg(long, default_value_t = 5000)]
        lease_ttl_ms: u64,
        /// Keepalive interval nodes are told to use.
        #[arg(long, default_value_t = 1000)]
        heartbeat_ms: u64,
    },
    /// Operate a running control plane.
    Ctl {
        #[arg(long, default_value = "http://127.0.0.1:7000")]
        endpoint: String,
        #[arg(long, env = "RELAYMESH_CONTROL_OPERATOR_TOKEN", default_value = DEV_OPERATOR_TOKEN, hide_env_values = true)]
        token: String,
        /// Print JSON instead of tables.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: ctl::Command,
    },
}

/// Exit status for bad usage or configuration (EX_USAGE).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    relaymesh_proto::observe::init_logging();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("relaymesh-control: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                listen,
                http_listen,
                data_dir,
                join_token,
                operator_token,
                lease_ttl_ms,
                heartbeat_ms,
            } => {
                if heartbeat_ms == 0 || lease_ttl_ms <= heartbeat_ms {
                    eprintln!("relaymesh-control: --lease-ttl-ms must be larger than --heartbeat-ms (> 0)");
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
                let config = Config {
                    data_dir,
                    join_token,
                    operator_token,
                    lease_ttl: Duration::from_millis(lease_ttl_ms),
                    heartbeat: Duration::from_millis(heartbeat_ms),
                };
                serve(config, listen, http_listen).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Ctl {
                endpoint,
                token,
                json,
                command,
            } => {
                let mut client = ctl::connect(&endpoint, &token).await?;
                match ctl::run(&mut client, command, json).await {
                    Ok(out) => {
                        print!("{out}");
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e) => match e.downcast_ref::<tonic::Status>() {
                        Some(status) => {
                            eprintln!("relaymesh-control: {:?}: {}", status.code(), status.message());
                            Ok(ExitCode::FAILURE)
                        }
                        None => Err(e),
                    },
                }
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("relaymesh-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, listen: SocketAddr, http_listen: SocketAddr) -> anyhow::Result<()> {
    use anyhow::Context;
    if config.join_token == DEV_JOIN_TOKEN || config.operator_token == DEV_OPERATOR_TOKEN {
        tracing::warn!("using a development token: set RELAYMESH_CONTROL_JOIN_TOKEN and RELAYMESH_CONTROL_OPERATOR_TOKEN in production");
    }
    let grpc = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let http = tokio::net::TcpListener::bind(http_listen)
        .await
        .with_context(|| format!("cannot listen on {http_listen}"))?;
    let data_dir = config.data_dir.clone();
    let handle = relaymesh_control::start(config, grpc, Some(http))?;
    println!(
        "relaymesh-control listening on {} (gRPC), metrics on http://{}/metrics, data in {}",
        handle.grpc_addr(),
        http_listen,
        data_dir.display()
    );
    wait_for_stop_signal().await;
    handle.shutdown().await;
    Ok(())
}

/// SIGINT or SIGTERM.
async fn wait_for_stop_signal() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}
