//! The report of a run: what it ran on, the faults with their actual times, the delivery
//! accounting (`testbed::check::Delivery`), per-region figures and a per-second timeline;
//! written as `report.json` and summed up as a table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::workload::Member;
use crate::testbed::check::{median_max, Delivery};
use crate::testbed::clients::{Publish, Seen};

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Nearest-rank percentiles of `values` (sorted here).
    pub fn of(values: &mut [f64]) -> Latency {
        values.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            values[rank - 1]
        };
        if values.is_empty() {
            return Latency::default();
        }
        Latency {
            count: values.len(),
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// A fault as planned and as done.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    pub planned_s: f64,
    /// When it was done, from the start of the schedule.
    pub actual_s: f64,
    pub what: String,
    #[serde(flatten)]
    pub action: super::spec::Action,
    /// `ok`, or why it failed.
    pub outcome: String,
    /// What followed: the publisher moved, the node ready again, the cut healed.
    pub notes: Vec<String>,
}

/// One second of the run (from the start of the schedule).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Second {
    pub second: u64,
    /// Events received by subscribers (every session, every arrival).
    pub delivered: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub published: u64,
    /// Answered 200.
    pub acked: u64,
    /// Publishes answered otherwise (503/504) or not at all.
    pub refused: u64,
    /// Client connections that ended.
    pub disconnects: u64,
    /// New sessions of clients that lost theirs.
    pub reconnects: u64,
    /// refused + disconnects.
    pub errors: u64,
    /// Presence: every connected member's list equalled the connected members (sampled
    /// at the second's end).
    pub presence_agrees: Option<bool>,
    /// Faults done in this second.
    pub faults: Vec<String>,
}

/// One region's clients.
#[derive(Clone, Debug, Serialize)]
pub struct RegionFigures {
    pub region: String,
    pub nodes: Vec<String>,
    pub clients: usize,
    pub sessions: usize,
    pub delivered: u64,
    pub lost: usize,
    /// Publish (sent) → arrival, every arrival.
    pub latency: Latency,
}

/// Publishes and their outcomes.
#[derive(Clone, Debug, Serialize)]
pub struct Publishes {
    pub sent: usize,
    pub acked: usize,
    /// By status (`503`, `504`, `error`, `unanswered`).
    pub refused: BTreeMap<String, usize>,
    pub ack_median_ms: u128,
    pub ack_max_ms: u128,
    /// Where the publisher published from (the region) and through which nodes.
    pub region: String,
    pub via: Vec<String>,
}

/// The accounting of `testbed::check::Delivery`.
#[derive(Clone, Debug, Serialize)]
pub struct Accounting {
    /// (session, acknowledged event) pairs in a session's window.
    pub expected: usize,
    pub received: usize,
    /// Acknowledged events a session that was connected never got.
    pub lost: usize,
    pub duplicates: usize,
    pub sessions: usize,
    pub reordered: usize,
    pub refused_but_delivered: usize,
    /// A session that ended is expected to have what was acknowledged up to this long
    /// before its end.
    pub margin_ms: u128,
    /// Examples of lost events: client, session, node, event.
    pub lost_examples: Vec<String>,
}

/// Presence over the run.
#[derive(Clone, Debug, Serialize)]
pub struct PresenceFigures {
    pub seconds_sampled: usize,
    pub seconds_agreeing: usize,
    /// At the end, after the settle time.
    pub agrees_at_end: bool,
    /// `GET /channels/{room}/users` at the end, and the connected members.
    pub api_users: Option<usize>,
    pub connected_members: usize,
}

/// Everything `report.json` holds.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub command: String,
    pub layout: serde_json::Value,
    pub scenario: serde_json::Value,
    pub faults: Vec<FaultRecord>,
    pub publishes: Publishes,
    pub delivery: Accounting,
    pub regions: Vec<RegionFigures>,
    pub presence: Option<PresenceFigures>,
    pub clients_failed_at_start: Vec<String>,
    pub timeline: Vec<Second>,
    pub plots: Vec<String>,
    /// Namespaces with the run's tag left after the clean-up (should be none).
    pub namespaces_left: Vec<String>,
    pub wall_s: f64,
}

fn secs(t0: Instant, t: Instant) -> Option<u64> {
    t.checked_duration_since(t0).map(|d| d.as_secs())
}

/// Every arrival of an event: (client index, arrival, latency in ms).
pub fn arrivals(members: &[Member], pubs: &[Publish]) -> Vec<(usize, Instant, f64)> {
    let sent: BTreeMap<u64, Instant> = pubs.iter().map(|p| (p.seq, p.sent)).collect();
    let mut out = Vec::new();
    for (i, m) in members.iter().enumerate() {
        for session in m.client.sessions() {
            for s in &session.seen {
                if let Seen::Tick(seq, at) = s {
                    if let Some(sent) = sent.get(seq) {
                        let ms = at.saturating_duration_since(*sent).as_secs_f64() * 1e3;
                        out.push((i, *at, ms));
                    }
                }
            }
        }
    }
    out
}

/// The per-second timeline from `t0` to `end`.
pub fn timeline(
    t0: Instant,
    end: Instant,
    members: &[Member],
    pubs: &[Publish],
    arrivals: &[(usize, Instant, f64)],
    presence: &BTreeMap<u64, bool>,
    faults: &[FaultRecord],
) -> Vec<Second> {
    let len = end.saturating_duration_since(t0).as_secs() + 1;
    let mut seconds: Vec<Second> = (0..len)
        .map(|second| Second {
            second,
            presence_agrees: presence.get(&second).copied(),
            ..Second::default()
        })
        .collect();
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); len as usize];
    let slot = |t: Instant| secs(t0, t).filter(|s| *s < len).map(|s| s as usize);
    for (_, at, ms) in arrivals {
        if let Some(s) = slot(*at) {
            seconds[s].delivered += 1;
            latencies[s].push(*ms);
        }
    }
    for p in pubs {
        if let Some(s) = slot(p.sent) {
            seconds[s].published += 1;
            if p.ok() {
                seconds[s].acked += 1;
            } else {
                seconds[s].refused += 1;
            }
        }
    }
    for m in members {
        for (i, session) in m.client.sessions().iter().enumerate() {
            if let Some(s) = session.closed.and_then(|(_, at)| slot(at)) {
                seconds[s].disconnects += 1;
            }
            if i > 0 {
                if let Some(s) = slot(session.subscribed_at) {
                    seconds[s].reconnects += 1;
                }
            }
        }
    }
    for f in faults {
        if let Some(s) = seconds.get_mut(f.actual_s.max(0.0) as usize) {
            s.faults.push(f.what.clone());
        }
    }
    for (s, mut values) in seconds.iter_mut().zip(latencies) {
        let l = Latency::of(&mut values);
        s.p50_ms = l.p50_ms;
        s.p99_ms = l.p99_ms;
        s.errors = s.refused + s.disconnects;
    }
    seconds
}

/// The publishes' figures.
pub fn publishes(pubs: &[Publish], region: &str, via: Vec<String>) -> Publishes {
    let mut refused = BTreeMap::new();
    for p in pubs.iter().filter(|p| !p.ok()) {
        let key = match &p.outcome {
            Some(Ok(status)) => status.to_string(),
            Some(Err(_)) => "error".to_owned(),
            None => "unanswered".to_owned(),
        };
        *refused.entry(key).or_default() += 1;
    }
    let acks: Vec<Duration> = pubs
        .iter()
        .filter(|p| p.ok())
        .filter_map(|p| Some(p.done?.duration_since(p.sent)))
        .collect();
    let (median, max) = median_max(&acks);
    Publishes {
        sent: pubs.len(),
        acked: pubs.iter().filter(|p| p.ok()).count(),
        refused,
        ack_median_ms: median.as_millis(),
        ack_max_ms: max.as_millis(),
        region: region.to_owned(),
        via,
    }
}

/// The accounting's figures.
pub fn accounting(d: &Delivery, margin: Duration) -> Accounting {
    Accounting {
        expected: d.expected,
        received: d.received,
        lost: d.lost.len(),
        duplicates: d.duplicates.len(),
        sessions: d.sessions,
        reordered: d.reordered,
        refused_but_delivered: d.refused_but_delivered,
        margin_ms: margin.as_millis(),
        lost_examples: d
            .lost
            .iter()
            .take(20)
            .map(|l| {
                format!(
                    "{} (session {} on {}): #{} of {}",
                    l.client, l.session, l.node, l.publish.seq, l.publish.channel
                )
            })
            .collect(),
    }
}

/// The plain-text table printed at the end.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let p = &r.publishes;
    let d = &r.delivery;
    let _ = writeln!(
        out,
        "latency     {}",
        r.layout["latency_mode_note"].as_str().unwrap_or("-")
    );
    let _ = writeln!(
        out,
        "publishes   {} sent from {} via {}, {} acked (200), refused {:?}, ack median {} ms max {} ms",
        p.sent,
        p.region,
        p.via.join(" → "),
        p.acked,
        p.refused,
        p.ack_median_ms,
        p.ack_max_ms
    );
    let _ = writeln!(
        out,
        "deliveries  expected {} = received {} + lost {}; duplicates {}; over {} sessions (margin {} ms)",
        d.expected, d.received, d.lost, d.duplicates, d.sessions, d.margin_ms
    );
    let _ = writeln!(
        out,
        "{:<8} {:>7} {:>8} {:>9} {:>8} {:>8} {:>8} {:>5}",
        "region", "clients", "sessions", "delivered", "p50 ms", "p99 ms", "max ms", "lost"
    );
    for g in &r.regions {
        let _ = writeln!(
            out,
            "{:<8} {:>7} {:>8} {:>9} {:>8.1} {:>8.1} {:>8.1} {:>5}",
            g.region,
            g.clients,
            g.sessions,
            g.delivered,
            g.latency.p50_ms,
            g.latency.p99_ms,
            g.latency.max_ms,
            g.lost
        );
    }
    for f in &r.faults {
        let _ = writeln!(
            out,
            "fault       {:>6.2}s (planned {:>5.1}s) {:<24} {}{}",
            f.actual_s,
            f.planned_s,
            f.what,
            f.outcome,
            if f.notes.is_empty() {
                String::new()
            } else {
                format!("; {}", f.notes.join("; "))
            }
        );
    }
    if let Some(pr) = &r.presence {
        let _ = writeln!(
            out,
            "presence    lists = connected members in {}/{} seconds, at the end: {}; API lists {} of {} connected",
            pr.seconds_agreeing,
            pr.seconds_sampled,
            pr.agrees_at_end,
            pr.api_users.map_or("-".into(), |n| n.to_string()),
            pr.connected_members
        );
    }
    if !r.clients_failed_at_start.is_empty() {
        let _ = writeln!(
            out,
            "clients     {} failed at the start",
            r.clients_failed_at_start.len()
        );
    }
    let _ = writeln!(
        out,
        "clean-up    {}",
        if r.namespaces_left.is_empty() {
            "every namespace, veth, bridge, rule, process and relay removed".to_owned()
        } else {
            format!("LEFT OVER: {:?}", r.namespaces_left)
        }
    );
    out
}
