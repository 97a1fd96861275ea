//! The report of a run: totals, per-label latency, a per-second timeline, errors by code
//! and CPU; written as JSON and summed up as a plain-text table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use super::cpu::Cpu;
use super::deliveries::Delivery;
use super::publisher::Published;
use super::recorder::{Second, Summary};
use super::scenario::{ChurnStats, ClientEventStats, PresenceStats, ServerMemory};
use super::session::OpenStats;

/// Everything a run measured. Sections that a scenario does not have are `None`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub scenario: String,
    /// The scenario's parameters (no secret).
    pub params: Value,
    /// `label → WebSocket URL` and the API URLs, in the order clients were spread over.
    pub targets: Vec<(String, String)>,
    pub api: Vec<String>,
    pub started_at_unix_s: u64,
    pub wall_s: f64,
    /// The time limit stopped the run before it was done.
    pub time_limited: bool,
    /// Set when nothing the scenario measures worked (no connection, no publish acked).
    pub error: Option<String>,
    pub open: Option<OpenStats>,
    pub publish: Option<Published>,
    pub delivery: Option<Delivery>,
    pub presence: Option<PresenceStats>,
    pub churn: Option<ChurnStats>,
    pub client_events: Option<ClientEventStats>,
    pub server_memory: Option<ServerMemory>,
    /// CPU over the measured window (publish to drain, connect phase, joins, cycles).
    pub cpu: Cpu,
    /// The generator's CPU over the whole run, set-up included.
    pub generator_cpu_total_s: f64,
    pub errors: BTreeMap<String, u64>,
    /// Seconds since the run's start with deliveries or errors.
    pub timeline: Vec<Second>,
}

impl Report {
    pub fn new(scenario: &str) -> Report {
        Report {
            tool: "relaymesh-sim load",
            scenario: scenario.to_owned(),
            ..Report::default()
        }
    }

    /// The plain-text summary printed at the end of a run.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        let targets: Vec<String> = self
            .targets
            .iter()
            .map(|(label, url)| format!("{label}={url}"))
            .collect();
        row(
            "scenario",
            format!("{} on {}", self.scenario, targets.join(", ")),
        );
        if let Some(o) = &self.open {
            row(
                "connections",
                format!(
                    "{}/{} connected, {} failed, {:.0}/s, connect {}",
                    o.connected,
                    o.requested,
                    o.failed,
                    o.connects_per_s,
                    lat(&o.connect_latency)
                ),
            );
            if o.subscribed + o.subscribe_failed > 0 {
                row(
                    "subscriptions",
                    format!(
                        "{} ok, {} failed, subscribe {}",
                        o.subscribed,
                        o.subscribe_failed,
                        lat(&o.subscribe_latency)
                    ),
                );
            }
        }
        if let Some(m) = &self.server_memory {
            row(
                "server RSS",
                format!(
                    "{} → {} KiB ({} KiB/conn), after close {} KiB",
                    m.rss_before_kib,
                    m.rss_after_kib,
                    fmt_opt(m.kib_per_conn, 2),
                    m.rss_after_close_kib
                ),
            );
        }
        if let Some(p) = &self.publish {
            row(
                "publish",
                format!(
                    "{}/{} ok, {:.0}/s ({}), ack {}, statuses {:?}",
                    p.acked_ok,
                    p.requested,
                    p.publishes_per_s,
                    p.mode,
                    lat(&p.ack_latency),
                    p.statuses
                ),
            );
        }
        if let Some(c) = &self.client_events {
            row(
                "client events",
                format!(
                    "{} senders sent {}/{} at {}/s each, {} not sent",
                    c.senders, c.sent, c.requested, c.rate_per_sender, c.not_sent
                ),
            );
        }
        if let Some(d) = &self.delivery {
            row(
                "delivered",
                format!(
                    "{}/{} in {:.3} s = {:.0}/s, lost {}, dup {}, misrouted {}, echoed {}, late {}",
                    d.delivered_unique,
                    d.expected,
                    d.window_s,
                    d.delivered_per_s,
                    d.lost,
                    d.duplicates,
                    d.misrouted,
                    d.echoed,
                    d.delivered_for_unacked
                ),
            );
            row("latency", lat(&d.latency));
            if d.latency_by_label.len() > 1 {
                for (label, s) in &d.latency_by_label {
                    row(&format!("  {label}"), lat(s));
                }
            }
        }
        if let Some(p) = &self.presence {
            row(
                "presence",
                format!(
                    "{}/{} joined ({} failed) in {} ms, full lists in {} ms; member_added {}/{} (dup {}, self {}, early {}); seen min/max {}/{}; API users {}",
                    p.joined_ok,
                    p.members_requested,
                    p.join_failed,
                    fmt_opt(p.time_to_all_joined_ms, 1),
                    fmt_opt(p.time_to_full_member_list_ms, 1),
                    p.member_added_received,
                    p.member_added_expected,
                    p.duplicate_member_added,
                    p.self_member_added,
                    p.member_added_before_own_subscription_succeeded,
                    p.min_members_seen,
                    p.max_members_seen,
                    p.api_users_count.map_or("-".into(), |n| n.to_string())
                ),
            );
            row(
                "presence leave",
                format!(
                    "{} left, member_removed {}/{}, every removal seen: {}, in {} ms",
                    p.left,
                    p.member_removed_received,
                    p.member_removed_expected,
                    p.every_removal_seen,
                    fmt_opt(p.time_to_all_removed_ms, 1)
                ),
            );
        }
        if let Some(c) = &self.churn {
            row(
                "churn",
                format!(
                    "{} cycles ({} failed) in {:.2} s: {:.0} connects/s, {:.0} subscriptions/s, cycle {}",
                    c.cycles_ok,
                    c.cycles_failed,
                    c.wall_s,
                    c.connects_per_s,
                    c.subscriptions_per_s,
                    lat(&c.cycle_latency)
                ),
            );
        }
        let cpu = &self.cpu;
        row(
            "cpu",
            format!(
                "window {:.2} s: generator {:.2} s ({:.2} cores), server {} s ({} cores), machine busy {} %",
                cpu.window_s,
                cpu.generator_cpu_s,
                cpu.generator_cores,
                fmt_opt(cpu.server_cpu_s, 2),
                fmt_opt(cpu.server_cores, 2),
                fmt_opt(cpu.machine_busy_pct, 0)
            ),
        );
        let per_unit: Vec<String> = [
            ("server µs/delivery", cpu.server_us_per_delivery),
            ("server µs/publish", cpu.server_us_per_publish),
            ("server µs/connect", cpu.server_us_per_connect),
            ("generator µs/delivery", cpu.generator_us_per_delivery),
        ]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k} {v:.1}")))
        .collect();
        if !per_unit.is_empty() {
            row("cpu per unit", per_unit.join(", "));
        }
        row(
            "errors",
            if self.errors.is_empty() {
                "none".into()
            } else {
                format!("{:?}", self.errors)
            },
        );
        if self.time_limited {
            row("time limit", "reached: figures are partial".into());
        }
        if let Some(e) = &self.error {
            row("ERROR", e.clone());
        }
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<width$}  {v}");
        }
        out
    }
}

fn lat(s: &Summary) -> String {
    if s.count == 0 {
        return "-".into();
    }
    format!(
        "p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms",
        s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
    )
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}
