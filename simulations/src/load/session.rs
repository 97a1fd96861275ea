//! What every scenario shares: the targets resolved, the deadline, the error counts, the
//! progress bars, and opening many connections with bounded handshake concurrency.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinSet;

use super::client::{self, subscribe_frame, App, Endpoint, Failure};
use super::connection::Conn;
use super::publisher::Api;
use super::recorder::{now_us, Errors, Hist, Seen};
use super::{Options, Targets};

/// A run in progress.
pub struct Session {
    pub app: App,
    pub endpoints: Vec<Endpoint>,
    pub api: Arc<Api>,
    pub options: Options,
    pub errors: Arc<Errors>,
    pub start_us: u64,
    pub deadline_us: u64,
    /// Source addresses client sockets are spread over (empty: the kernel chooses).
    sources: Vec<IpAddr>,
    bars: MultiProgress,
}

/// Connections a scenario opened; dropping it closes them.
pub struct Opened {
    pub conns: Vec<Arc<Conn>>,
    /// The reader tasks, which own the sockets: held for its `Drop`, which aborts them.
    _readers: JoinSet<()>,
    pub stats: OpenStats,
    /// Subscribed connections per channel index.
    pub per_channel: Vec<u64>,
}

/// The open phase's figures.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct OpenStats {
    pub requested: u64,
    pub connected: u64,
    pub failed: u64,
    pub subscribed: u64,
    pub subscribe_failed: u64,
    pub wall_s: f64,
    pub connects_per_s: f64,
    pub connect_latency: super::recorder::Summary,
    pub subscribe_latency: super::recorder::Summary,
}

/// Which connections a `join` subscribed, and how long each took.
pub struct Joined {
    /// By `Conn::index`.
    pub ok: Seen,
    pub ok_count: u64,
    pub failed: u64,
    pub latency: Hist,
}

/// How long one subscription through a running reader may take.
const JOIN_WAIT: Duration = Duration::from_secs(10);

/// What connection `i` subscribes to while it opens: a channel name and its index.
pub type ChannelOf<'a> = &'a (dyn Fn(usize) -> Option<(String, u64)> + Sync);

impl Session {
    pub fn new(targets: &Targets, options: &Options) -> anyhow::Result<Session> {
        anyhow::ensure!(!targets.ws.is_empty(), "no WebSocket URL");
        let endpoints = targets
            .ws
            .iter()
            .map(|t| Endpoint::new(&t.label, &t.url, &targets.app.key))
            .collect::<Result<Vec<_>, _>>()?;
        let api_bases = if targets.api.is_empty() {
            // The HTTP API on the WebSocket port, as Pusher-compatible servers serve it.
            endpoints
                .iter()
                .map(|e| format!("http://{}", e.addr))
                .collect()
        } else {
            targets.api.iter().map(|t| t.url.clone()).collect()
        };
        let api = Arc::new(Api::new(
            api_bases,
            targets.app.clone(),
            options.inflight_hint.max(1),
        )?);
        // Several loopback source addresses only make sense towards loopback targets.
        let loopback = endpoints
            .iter()
            .all(|e| matches!(e.addr.ip(), IpAddr::V4(ip) if ip.is_loopback()));
        let sources = if loopback && options.source_ips > 1 {
            (1..=options.source_ips.min(254) as u8)
                .map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
                .collect()
        } else {
            Vec::new()
        };
        let start_us = now_us();
        let visible = options.progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bars = MultiProgress::with_draw_target(if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Ok(Session {
            app: targets.app.clone(),
            endpoints,
            api,
            options: options.clone(),
            errors: Arc::new(Errors::new(start_us)),
            start_us,
            deadline_us: start_us + options.time_limit.as_micros() as u64,
            sources,
            bars,
        })
    }

    pub fn labels(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.label.clone()).collect()
    }

    pub fn time_left(&self) -> Duration {
        Duration::from_micros(self.deadline_us.saturating_sub(now_us()))
    }

    pub fn past_deadline(&self) -> bool {
        now_us() >= self.deadline_us
    }

    /// A progress bar of `len` steps (hidden when stderr is not a terminal).
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        let bar = self.bars.add(ProgressBar::new(len));
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_owned());
        bar
    }

    /// How many distinct routes `route` cycles through.
    pub fn route_count(&self) -> usize {
        self.endpoints.len() * self.sources.len().max(1)
    }

    /// Where connection `i` connects from and to.
    pub fn route(&self, i: usize) -> (usize, Option<IpAddr>) {
        let source = (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()]);
        (i % self.endpoints.len(), source)
    }

    /// Opens `count` connections, `connect_concurrency` handshakes at a time, each
    /// subscribing to `channel_of(i)` before its reader starts (so a run that begins after
    /// this returns sees every event of it).
    pub async fn open(&self, count: u64, channel_of: ChannelOf<'_>) -> Opened {
        let bar = self.bar(count, "connecting");
        let t0 = now_us();
        let mut connect_hist = Hist::new();
        let mut subscribe_hist = Hist::new();
        let mut stats = OpenStats {
            requested: count,
            ..OpenStats::default()
        };
        let mut conns = Vec::with_capacity(count as usize);
        let mut readers = JoinSet::new();
        let mut per_channel: Vec<u64> = Vec::new();
        let mut opening = JoinSet::new();
        let timeout = self.options.connect_timeout;
        let mut next = 0usize;
        loop {
            while opening.len() < self.options.connect_concurrency.max(1)
                && (next as u64) < count
                && !self.past_deadline()
            {
                let i = next;
                next += 1;
                let (target, source) = self.route(i);
                let endpoint = self.endpoints[target].clone();
                let app = self.app.clone();
                let channel = channel_of(i);
                opening.spawn(async move {
                    let started = now_us();
                    let mut client = client::connect(&endpoint, source, timeout).await?;
                    let connected = now_us();
                    let mut subscribed = None;
                    if let Some((name, index)) = channel {
                        let result = client.subscribe(&app, &name, None, timeout).await;
                        subscribed = Some((result.map(|_| index), now_us() - connected));
                    }
                    Ok::<_, client::Failure>((i, target, client, connected - started, subscribed))
                });
            }
            let Some(done) = opening.join_next().await else {
                break;
            };
            bar.inc(1);
            match done {
                Ok(Ok((i, target, client, connect_us, subscribed))) => {
                    stats.connected += 1;
                    connect_hist.record(connect_us);
                    let mut channel = None;
                    match subscribed {
                        Some((Ok(index), us)) => {
                            stats.subscribed += 1;
                            subscribe_hist.record(us);
                            channel = Some(index);
                            if per_channel.len() <= index as usize {
                                per_channel.resize(index as usize + 1, 0);
                            }
                            per_channel[index as usize] += 1;
                        }
                        Some((Err(failure), _)) => {
                            stats.subscribe_failed += 1;
                            self.errors.count(&failure.key());
                        }
                        None => {}
                    }
                    conns.push(Conn::spawn(
                        client,
                        i,
                        target,
                        channel,
                        self.errors.clone(),
                        &mut readers,
                    ));
                }
                Ok(Err(failure)) => {
                    stats.failed += 1;
                    self.errors.count(&failure.key());
                }
                Err(_) => {
                    stats.failed += 1;
                    self.errors.count("connect task failed");
                }
            }
        }
        let not_tried = count - next as u64;
        if not_tried > 0 {
            stats.failed += not_tried;
            self.errors
                .add("not attempted before the time limit", not_tried);
        }
        bar.finish_and_clear();
        stats.wall_s = (now_us() - t0) as f64 / 1e6;
        stats.connects_per_s = if stats.wall_s > 0.0 {
            stats.connected as f64 / stats.wall_s
        } else {
            0.0
        };
        stats.connect_latency = connect_hist.summary();
        stats.subscribe_latency = subscribe_hist.summary();
        // Connection order is completion order; scenarios index by `Conn::index`.
        conns.sort_by_key(|c| c.index);
        Opened {
            conns,
            _readers: readers,
            stats,
            per_channel,
        }
    }

    /// Subscribes open connections (their readers running) to `channel`, `concurrency` at
    /// a time; `channel_data(i)` for presence channels. Errors the server sent were counted
    /// by the readers; timeouts are counted here.
    pub async fn join(
        &self,
        conns: &[Arc<Conn>],
        channel: &str,
        channel_data: &(dyn Fn(usize) -> Option<String> + Sync),
        concurrency: usize,
    ) -> Joined {
        let bar = self.bar(conns.len() as u64, "joining");
        let size = conns.iter().map(|c| c.index + 1).max().unwrap_or(0);
        let mut joined = Joined {
            ok: Seen::new(size as u64),
            ok_count: 0,
            failed: 0,
            latency: Hist::new(),
        };
        let mut joining = JoinSet::new();
        let mut next = 0;
        loop {
            while joining.len() < concurrency.max(1) && next < conns.len() && !self.past_deadline()
            {
                let conn = conns[next].clone();
                next += 1;
                let data = channel_data(conn.index);
                let frame = subscribe_frame(&self.app, &conn.socket_id, channel, data.as_deref());
                let channel = channel.to_owned();
                joining.spawn(async move {
                    let sent = now_us();
                    let answer = tokio::time::timeout(JOIN_WAIT, conn.subscribe(&channel, frame))
                        .await
                        .unwrap_or(Err(Failure::Timeout("join")));
                    (conn.index, answer.map(|_| now_us() - sent))
                });
            }
            let Some(done) = joining.join_next().await else {
                break;
            };
            bar.inc(1);
            match done {
                Ok((index, Ok(us))) => {
                    joined.ok_count += 1;
                    joined.ok.insert(index as u64);
                    joined.latency.record(us);
                }
                Ok((_, Err(failure))) => {
                    joined.failed += 1;
                    if matches!(failure, Failure::Timeout(_)) {
                        self.errors.count(&failure.key());
                    }
                }
                Err(_) => joined.failed += 1,
            }
        }
        joined.failed += (conns.len() - next) as u64;
        bar.finish_and_clear();
        joined
    }
}
