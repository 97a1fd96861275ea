//! The `load` command line: flags → [`Scenario`], [`Targets`] and [`Options`], then the
//! table on stdout and the JSON report. Flag names and defaults follow the neutral bench
//! where it has the same knob.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::client::App;
use super::scenario::{ChannelKind, Churn, ClientEvents, Connect, Presence, Publishing};
use super::{Options, Scenario, Target, Targets};

/// Every subscriber keeps a bit per event (duplicates): 10^9 bits is 125 MB at most.
const BITSET_BITS_MAX: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Which {
    Connect,
    Fanout,
    Channels,
    Presence,
    Churn,
    ClientEvents,
}

#[derive(clap::Args, Debug, serde::Serialize)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum)]
    scenario: Which,
    /// WebSocket URL, optionally labelled (`eu=ws://127.0.0.1:6001`); repeat for several
    /// targets, clients are spread round-robin over them.
    #[arg(long = "url", default_value = "ws://127.0.0.1:6001")]
    urls: Vec<String>,
    /// HTTP API URL, optionally labelled; repeat for several (round-robin). Default: each
    /// WebSocket target's host and port.
    #[arg(long = "api")]
    apis: Vec<String>,
    #[arg(long, default_value = "app-id")]
    app_id: String,
    #[arg(long, default_value = "app-key")]
    key: String,
    #[arg(long, default_value = "app-secret")]
    #[serde(skip)]
    secret: String,
    /// The server's process id: its RSS and CPU time from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The run stops after this many seconds, with what it measured so far.
    #[arg(long = "time-limit", value_name = "SECS", default_value_t = 300)]
    time_limit: u64,
    /// WebSocket handshakes in flight.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    #[arg(long, default_value_t = 15_000)]
    connect_timeout_ms: u64,
    /// Spread client sockets over 127.0.0.1 … 127.0.0.N (loopback targets only; one
    /// address gives ~28k ports).
    #[arg(long, default_value_t = 16)]
    source_ips: usize,
    /// No progress bars even on a terminal.
    #[arg(long)]
    no_progress: bool,

    /// connect: idle connections.
    #[arg(long, default_value_t = 1000)]
    conns: u64,
    /// connect: wait before reading the server's memory (and again after closing).
    #[arg(long, default_value_t = 3000)]
    settle_ms: u64,

    /// fanout: subscribers of the one channel.
    #[arg(long, default_value_t = 100)]
    subs: u64,
    /// fanout, channels: events published.
    #[arg(long, default_value_t = 1000)]
    events: u64,
    /// fanout, channels: events per second; 0 is closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// fanout, channels: HTTP requests in flight at most.
    #[arg(long, default_value_t = 16)]
    inflight: usize,
    /// Bytes of each event's data.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// fanout, channels: unmeasured events first.
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// A run ends this long after the last new delivery when some are still missing.
    #[arg(long, default_value_t = 10_000)]
    drain_ms: u64,

    /// channels: channels.
    #[arg(long, default_value_t = 1000)]
    channels: u64,
    /// channels: subscribers of each.
    #[arg(long, default_value_t = 5)]
    subs_per_channel: u64,

    /// presence, client-events: members of the channel.
    #[arg(long, default_value_t = 100)]
    members: u64,
    /// presence, client-events: subscriptions in flight.
    #[arg(long, default_value_t = 10)]
    join_concurrency: usize,
    /// presence: bytes of padding in each member's user_info.
    #[arg(long, default_value_t = 32)]
    user_info_bytes: usize,
    /// presence: how long every member's list may take to be complete.
    #[arg(long, default_value_t = 15_000)]
    converge_ms: u64,

    /// churn: clients cycling at once.
    #[arg(long, default_value_t = 16)]
    churn_concurrency: usize,
    /// churn: cycles in all (0: until --duration-s).
    #[arg(long, default_value_t = 0)]
    cycles: u64,
    /// churn: how long to cycle.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// churn: channels cycled through.
    #[arg(long, default_value_t = 100)]
    churn_channels: u64,

    /// client-events: members that send (the first N to join).
    #[arg(long, default_value_t = 10)]
    senders: u64,
    /// client-events: events each sender sends.
    #[arg(long, default_value_t = 20)]
    events_per_sender: u64,
    /// client-events: events per second per sender (the server allows 10).
    #[arg(long, default_value_t = 5.0)]
    sender_rate: f64,
    /// client-events: channel kind.
    #[arg(long, value_enum, default_value = "private")]
    channel_kind: ChannelKind,
}

/// `name=url` or `url` (labelled by its host and port).
fn labelled(spec: &str) -> Target {
    match spec.split_once('=') {
        Some((label, url)) if !label.contains('/') && !label.contains(':') => Target {
            label: label.to_owned(),
            url: url.to_owned(),
        },
        _ => Target {
            label: spec
                .split("//")
                .nth(1)
                .unwrap_or(spec)
                .trim_end_matches('/')
                .to_owned(),
            url: spec.to_owned(),
        },
    }
}

impl Args {
    fn scenario(&self) -> Result<Scenario> {
        ensure!(
            self.rate >= 0.0 && self.rate <= 1_000_000.0,
            "--rate must be in [0, 1000000]"
        );
        ensure!(self.inflight >= 1, "--inflight must be at least 1");
        ensure!(
            self.payload_bytes <= 64 * 1024,
            "--payload-bytes must be at most 65536"
        );
        // Every count sizes per-connection bitsets and per-event counters: bound them.
        ensure!(
            self.events <= 10_000_000,
            "--events must be at most 10,000,000"
        );
        let publishing = Publishing {
            events: self.events,
            rate: self.rate,
            inflight: self.inflight,
            payload_bytes: self.payload_bytes,
            warmup: self.warmup.min(10_000),
            drain: Duration::from_millis(self.drain_ms),
        };
        let conns_max = 1_000_000;
        Ok(match self.scenario {
            Which::Connect => {
                ensure!(
                    self.conns <= conns_max,
                    "--conns must be at most {conns_max}"
                );
                Scenario::Connect(Connect {
                    conns: self.conns,
                    settle: Duration::from_millis(self.settle_ms),
                })
            }
            Which::Fanout => {
                ensure!(self.subs <= conns_max, "--subs must be at most {conns_max}");
                ensure!(
                    self.subs.saturating_mul(self.events) <= BITSET_BITS_MAX,
                    "--subs × --events must be at most {BITSET_BITS_MAX}"
                );
                Scenario::Fanout {
                    subs: self.subs,
                    publishing,
                }
            }
            Which::Channels => {
                let subs = self.channels.saturating_mul(self.subs_per_channel);
                ensure!(
                    self.channels >= 1 && subs <= conns_max,
                    "--channels × --subs-per-channel must be 1 to {conns_max}"
                );
                ensure!(
                    subs.saturating_mul(self.events) <= BITSET_BITS_MAX,
                    "subscribers × --events must be at most {BITSET_BITS_MAX}"
                );
                Scenario::Channels {
                    channels: self.channels,
                    subs_per_channel: self.subs_per_channel,
                    publishing,
                }
            }
            Which::Presence => {
                ensure!(self.members <= 100_000, "--members must be at most 100,000");
                Scenario::Presence(Presence {
                    members: self.members,
                    join_concurrency: self.join_concurrency,
                    user_info_bytes: self.user_info_bytes.min(64 * 1024),
                    converge: Duration::from_millis(self.converge_ms),
                })
            }
            Which::Churn => Scenario::Churn(Churn {
                concurrency: self.churn_concurrency.clamp(1, 10_000),
                cycles: self.cycles,
                duration: Duration::from_secs(self.duration_s),
                channels: self.churn_channels.max(1),
            }),
            Which::ClientEvents => {
                ensure!(
                    self.sender_rate > 0.0
                        && self.sender_rate <= super::scenario::RATE_PER_SENDER_MAX,
                    "--sender-rate must be in (0, 10]: Pusher allows 10 client events/s per connection"
                );
                ensure!(
                    self.members <= 100_000 && self.events_per_sender <= 100_000,
                    "--members and --events-per-sender must be at most 100,000"
                );
                Scenario::ClientEvents(ClientEvents {
                    members: self.members,
                    senders: self.senders.min(self.members),
                    events_per_sender: self.events_per_sender,
                    rate_per_sender: self.sender_rate,
                    kind: self.channel_kind,
                    payload_bytes: self.payload_bytes,
                    join_concurrency: self.join_concurrency,
                    drain: Duration::from_millis(self.drain_ms),
                })
            }
        })
    }

    fn targets(&self) -> Targets {
        Targets {
            app: App {
                id: self.app_id.clone(),
                key: self.key.clone(),
                secret: self.secret.clone(),
            },
            ws: self.urls.iter().map(|u| labelled(u)).collect(),
            api: self.apis.iter().map(|u| labelled(u)).collect(),
        }
    }

    fn options(&self) -> Options {
        Options {
            time_limit: Duration::from_secs(self.time_limit),
            pid: self.pid,
            connect_concurrency: self.connect_concurrency.clamp(1, 10_000),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            source_ips: self.source_ips.clamp(1, 254),
            inflight_hint: self.inflight,
            progress: !self.no_progress,
        }
    }

    /// The parameters as recorded in the report (every flag but the secret).
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Exit status: 0 ran, 1 nothing it measures worked, 3 the time limit stopped it.
pub async fn run_cli(args: Args) -> Result<std::process::ExitCode> {
    let scenario = args.scenario()?;
    let targets = args.targets();
    if let Some(pid) = args.pid {
        crate::procstat::sample(pid).with_context(|| format!("--pid {pid}"))?;
    }
    let mut report = super::run(&scenario, &targets, &args.options()).await?;
    report.params = args.params();
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.error.is_some() {
        std::process::ExitCode::from(1)
    } else if report.time_limited {
        std::process::ExitCode::from(3)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_urls() {
        let t = labelled("eu=ws://127.0.0.1:6001");
        assert_eq!(
            (t.label.as_str(), t.url.as_str()),
            ("eu", "ws://127.0.0.1:6001")
        );
        let t = labelled("ws://127.0.0.1:6001");
        assert_eq!(t.label, "127.0.0.1:6001");
        let t = labelled("http://h:1/?a=b");
        assert_eq!(t.url, "http://h:1/?a=b");
    }
}
