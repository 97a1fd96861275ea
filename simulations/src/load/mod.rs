//! `relaymesh-sim load SCENARIO`: a Pusher protocol load generator. It speaks the protocol
//! itself (WebSocket side with tokio-tungstenite, HTTP API with reqwest and
//! `relaymesh_proto::signing`), so it measures any Pusher-compatible server. Its counts
//! follow the neutral bench's definitions (shared/bench README, "How it measures").
//!
//! Library entry point: [`run`] takes a [`Scenario`], the [`Targets`] (several labelled
//! WebSocket URLs, clients spread round-robin over them; API URLs likewise) and
//! [`Options`], and returns a [`Report`]. The cluster runner calls it from code.
//!
//! | piece | file |
//! | --- | --- |
//! | flags → scenario, targets, options | `args.rs` |
//! | connect, handshake, subscribe (auth signed locally) | `client.rs` |
//! | a live connection's reader task | `connection.rs` |
//! | signed HTTP API, closed-loop / paced publishing | `publisher.rs` |
//! | clock, histograms, per-run delivery accounting, errors | `recorder.rs` |
//! | one measured publish run (install, publish, drain, count) | `deliveries.rs` |
//! | targets resolved, deadline, progress bars, opening connections | `session.rs` |
//! | CPU and RSS over a window | `cpu.rs` |
//! | the report, its table | `report.rs` |
//! | one file per scenario | `scenario/` |

mod args;
pub(crate) mod client;
mod connection;
mod cpu;
mod deliveries;
mod publisher;
mod recorder;
mod report;
mod scenario;
mod session;

use std::time::Duration;

pub use args::{run_cli, Args};
pub use client::App;
pub use deliveries::{measure, warm_up, Measured};
pub use publisher::Plan;
pub use recorder::now_us;
pub use report::Report;
pub use scenario::{Churn, ClientEvents, Connect, Presence, Publishing};
pub use session::{Opened, Session};

/// One labelled URL.
#[derive(Clone, Debug)]
pub struct Target {
    pub label: String,
    pub url: String,
}

/// What a run measures: an app, where clients connect and where events are published.
#[derive(Clone, Debug)]
pub struct Targets {
    pub app: App,
    /// WebSocket URLs (`ws://host:port`); clients are spread round-robin over them.
    pub ws: Vec<Target>,
    /// HTTP API URLs (`http://host:port`), round-robin; empty: each WebSocket target's.
    pub api: Vec<Target>,
}

/// How a run behaves, whatever the scenario.
#[derive(Clone, Debug)]
pub struct Options {
    /// The whole run stops by then; the report says so.
    pub time_limit: Duration,
    /// The server's process: RSS and CPU time from /proc.
    pub pid: Option<u32>,
    /// WebSocket handshakes in flight.
    pub connect_concurrency: usize,
    /// Per connection (and per subscription).
    pub connect_timeout: Duration,
    /// Client sockets are spread over 127.0.0.1 … 127.0.0.N when every target is loopback.
    pub source_ips: usize,
    /// HTTP keep-alive connections of the publisher.
    pub inflight_hint: usize,
    /// Progress bars on a terminal's stderr.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            time_limit: Duration::from_secs(300),
            pid: None,
            connect_concurrency: 200,
            connect_timeout: Duration::from_secs(15),
            source_ips: 16,
            inflight_hint: 16,
            progress: false,
        }
    }
}

/// A scenario and its parameters.
#[derive(Clone, Debug)]
pub enum Scenario {
    /// Many idle connections: connect rate and latency, server memory per connection.
    Connect(Connect),
    /// `subs` subscribers of one public channel, events over the HTTP API.
    Fanout { subs: u64, publishing: Publishing },
    /// `channels` channels × `subs_per_channel`; event i goes to channel i mod channels.
    Channels {
        channels: u64,
        subs_per_channel: u64,
        publishing: Publishing,
    },
    /// Members join one presence channel, then leave.
    Presence(Presence),
    /// Cycles of connect, subscribe, disconnect.
    Churn(Churn),
    /// Members of a private or presence channel send client events to each other.
    ClientEvents(ClientEvents),
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Connect(_) => "connect",
            Scenario::Fanout { .. } => "fanout",
            Scenario::Channels { .. } => "channels",
            Scenario::Presence(_) => "presence",
            Scenario::Churn(_) => "churn",
            Scenario::ClientEvents(_) => "client-events",
        }
    }
}

/// Runs `scenario` against `targets`. Errors only when the run could not start (bad URL,
/// no HTTP client); everything that goes wrong afterwards is in the report.
pub async fn run(
    scenario: &Scenario,
    targets: &Targets,
    options: &Options,
) -> anyhow::Result<Report> {
    let session = Session::new(targets, options)?;
    let cpu_start = cpu::Mark::now(None);
    let started_at_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // A backstop: every phase watches the deadline itself; this catches one that hangs.
    let backstop = options.time_limit + Duration::from_secs(30);
    let mut report = match tokio::time::timeout(backstop, scenario::run(scenario, &session)).await {
        Ok(report) => report,
        Err(_) => {
            let mut report = Report::new(scenario.name());
            report.time_limited = true;
            report.error = Some("the run did not end within its time limit".into());
            report
        }
    };
    report.time_limited |= session.past_deadline();
    report.started_at_unix_s = started_at_unix_s;
    report.wall_s = (now_us() - session.start_us) as f64 / 1e6;
    report.targets = targets
        .ws
        .iter()
        .map(|t| (t.label.clone(), t.url.clone()))
        .collect();
    report.api = targets.api.iter().map(|t| t.url.clone()).collect();
    report.generator_cpu_total_s =
        cpu::Cpu::between(&cpu_start, &cpu::Mark::now(None)).generator_cpu_s;
    report.errors = session.errors.by_code();
    if report.timeline.is_empty() {
        report.timeline = recorder::error_timeline(&session.errors);
    }
    Ok(report)
}
