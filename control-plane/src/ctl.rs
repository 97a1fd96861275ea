//! `relaymesh-control ctl`: the ops API from a terminal, as tables or `--json`.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use relaymesh_proto::bearer::BearerToken;
use relaymesh_proto::control::ops_client::OpsClient;
use relaymesh_proto::control::*;
use serde_json::{json, Value};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Registered nodes: region, state, lease age, load.
    Nodes,
    /// Mark a node draining (it leaves the ring).
    Drain { node_id: String },
    /// The node that owns a channel under the current view.
    Owner { app_id: String, channel: String },
    /// Cluster totals: nodes, apps, connections, message rates.
    Totals,
    /// Manage apps.
    #[command(subcommand)]
    Apps(AppsCommand),
}

#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    List,
    /// Create an app; id, key and secret are generated.
    Create(AppArgs),
    Update {
        app_id: String,
        #[command(flatten)]
        settings: AppArgs,
    },
    Delete {
        app_id: String,
    },
    /// Replace the app's secret with a new random one.
    RotateSecret {
        app_id: String,
    },
}

#[derive(Debug, Args, Default)]
pub struct AppArgs {
    #[arg(long)]
    enabled: Option<bool>,
    #[arg(long)]
    client_events: Option<bool>,
    #[arg(long)]
    client_event_rate: Option<u32>,
    /// 0 means unlimited.
    #[arg(long)]
    max_connections: Option<u64>,
    #[arg(long)]
    max_presence_members: Option<u64>,
    #[arg(long)]
    max_event_bytes: Option<u64>,
    /// Webhook URL (repeat for several); replaces the list.
    #[arg(long = "webhook")]
    webhooks: Vec<String>,
    /// Remove every webhook URL.
    #[arg(long, conflicts_with = "webhooks")]
    no_webhooks: bool,
}

impl AppArgs {
    fn settings(self) -> AppSettings {
        AppSettings {
            enabled: self.enabled,
            client_events: self.client_events,
            client_event_rate: self.client_event_rate,
            max_connections: self.max_connections,
            max_presence_members: self.max_presence_members,
            max_event_bytes: self.max_event_bytes,
            set_webhooks: self.no_webhooks || !self.webhooks.is_empty(),
            webhooks: self.webhooks,
        }
    }
}

type Client = OpsClient<InterceptedService<Channel, BearerToken>>;

/// Connects to the ops API with the operator token.
pub async fn connect(endpoint: &str, token: &str) -> Result<Client> {
    let channel = Channel::from_shared(endpoint.to_owned())
        .with_context(|| format!("invalid endpoint {endpoint:?}"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {endpoint}"))?;
    let token = BearerToken::new(token).context("the token must be printable ASCII")?;
    Ok(OpsClient::with_interceptor(channel, token))
}

fn state_name(state: i32) -> &'static str {
    match NodeState::try_from(state) {
        Ok(NodeState::Joining) => "joining",
        Ok(NodeState::Active) => "active",
        Ok(NodeState::Draining) => "draining",
        _ => "unknown",
    }
}

fn app_json(app: &App) -> Value {
    json!({
        "id": app.id, "key": app.key, "secret": app.secret, "enabled": app.enabled,
        "client_events": app.client_events, "client_event_rate": app.client_event_rate,
        "max_connections": app.max_connections, "max_presence_members": app.max_presence_members,
        "max_event_bytes": app.max_event_bytes, "webhooks": app.webhooks,
    })
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out += &line(row);
    }
    out
}

fn apps_output(apps: &[App], json_out: bool) -> String {
    if json_out {
        return Value::Array(apps.iter().map(app_json).collect()).to_string() + "\n";
    }
    let rows = apps
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                a.key.clone(),
                a.secret.clone(),
                a.enabled.to_string(),
                a.client_events.to_string(),
                if a.max_connections == 0 {
                    "unlimited".into()
                } else {
                    a.max_connections.to_string()
                },
                a.webhooks.len().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "KEY",
            "SECRET",
            "ENABLED",
            "CLIENT_EVENTS",
            "MAX_CONNECTIONS",
            "WEBHOOKS",
        ],
        rows,
    )
}

/// Runs one command and returns what to print.
pub async fn run(client: &mut Client, command: Command, json_out: bool) -> Result<String> {
    Ok(match command {
        Command::Nodes => {
            let list = client.list_nodes(ListNodesRequest {}).await?.into_inner();
            let nodes: Vec<(NodeInfo, i32, u64, NodeLoad)> = list
                .nodes
                .into_iter()
                .filter_map(|n| {
                    let entry = n.node?;
                    Some((
                        entry.node?,
                        entry.state,
                        n.lease_age_ms,
                        n.load.unwrap_or_default(),
                    ))
                })
                .collect();
            if json_out {
                let nodes: Vec<Value> = nodes
                    .iter()
                    .map(|(info, state, age, load)| {
                        json!({"node_id": info.node_id, "region": info.region, "state": state_name(*state),
                               "client_addr": info.client_addr, "mesh_addr": info.mesh_addr, "version": info.version,
                               "lease_age_ms": age, "connections": load.connections,
                               "messages_in_per_sec": load.messages_in_per_sec,
                               "messages_out_per_sec": load.messages_out_per_sec})
                    })
                    .collect();
                json!({"version": list.version, "nodes": nodes}).to_string() + "\n"
            } else {
                let rows = nodes
                    .iter()
                    .map(|(info, state, age, load)| {
                        vec![
                            info.node_id.clone(),
                            info.region.clone(),
                            state_name(*state).into(),
                            format!("{:.1}s", *age as f64 / 1000.0),
                            info.client_addr.clone(),
                            load.connections.to_string(),
                            format!("{:.0}", load.messages_in_per_sec),
                            format!("{:.0}", load.messages_out_per_sec),
                        ]
                    })
                    .collect();
                format!("view version {}\n", list.version)
                    + &table(
                        &[
                            "NODE",
                            "REGION",
                            "STATE",
                            "LEASE_AGE",
                            "CLIENT_ADDR",
                            "CONNECTIONS",
                            "MSG_IN/S",
                            "MSG_OUT/S",
                        ],
                        rows,
                    )
            }
        }
        Command::Drain { node_id } => {
            client
                .drain_node(DrainNodeRequest {
                    node_id: node_id.clone(),
                })
                .await?;
            if json_out {
                json!({"drained": node_id}).to_string() + "\n"
            } else {
                format!("node {node_id} is draining\n")
            }
        }
        Command::Owner { app_id, channel } => {
            let reply = client
                .channel_owner(ChannelOwnerRequest {
                    app_id,
                    channel: channel.clone(),
                })
                .await?
                .into_inner();
            let owner = reply.owner.unwrap_or_default();
            if json_out {
                json!({"version": reply.version, "channel": channel, "node_id": owner.node_id,
                       "region": owner.region, "client_addr": owner.client_addr})
                .to_string()
                    + "\n"
            } else {
                format!(
                    "{channel} is owned by {} ({}, {}) at view version {}\n",
                    owner.node_id, owner.region, owner.client_addr, reply.version
                )
            }
        }
        Command::Totals => {
            let t = client
                .cluster_totals(ClusterTotalsRequest {})
                .await?
                .into_inner();
            if json_out {
                json!({"version": t.version, "nodes": t.nodes, "apps": t.apps, "connections": t.connections,
                       "messages_in_per_sec": t.messages_in_per_sec, "messages_out_per_sec": t.messages_out_per_sec})
                .to_string()
                    + "\n"
            } else {
                table(
                    &[
                        "VERSION",
                        "NODES",
                        "APPS",
                        "CONNECTIONS",
                        "MSG_IN/S",
                        "MSG_OUT/S",
                    ],
                    vec![vec![
                        t.version.to_string(),
                        t.nodes.to_string(),
                        t.apps.to_string(),
                        t.connections.to_string(),
                        format!("{:.0}", t.messages_in_per_sec),
                        format!("{:.0}", t.messages_out_per_sec),
                    ]],
                )
            }
        }
        Command::Apps(AppsCommand::List) => {
            let apps = client
                .list_apps(ListAppsRequest {})
                .await?
                .into_inner()
                .apps;
            apps_output(&apps, json_out)
        }
        Command::Apps(AppsCommand::Create(args)) => {
            let app = client
                .create_app(CreateAppRequest {
                    settings: Some(args.settings()),
                })
                .await?
                .into_inner();
            apps_output(&[app], json_out)
        }
        Command::Apps(AppsCommand::Update { app_id, settings }) => {
            let app = client
                .update_app(UpdateAppRequest {
                    app_id,
                    settings: Some(settings.settings()),
                })
                .await?
                .into_inner();
            apps_output(&[app], json_out)
        }
        Command::Apps(AppsCommand::Delete { app_id }) => {
            client
                .delete_app(DeleteAppRequest {
                    app_id: app_id.clone(),
                })
                .await?;
            if json_out {
                json!({"deleted": app_id}).to_string() + "\n"
            } else {
                format!("app {app_id} deleted\n")
            }
        }
        Command::Apps(AppsCommand::RotateSecret { app_id }) => {
            let app = client
                .rotate_secret(RotateSecretRequest { app_id })
                .await?
                .into_inner();
            apps_output(&[app], json_out)
        }
    })
}
