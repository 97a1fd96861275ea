//! One measured publish run over connections that are already subscribed: install a fresh
//! recorder in each, publish, wait until every expected delivery arrived (or none came for
//! the drain time), then count lost, duplicated, misrouted and late events.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::connection::Conn;
use super::publisher::{publish, Plan, Published};
use super::recorder::{now_us, Receiver, Recorder, Seen, Summary};
use super::session::Session;

/// How often the drain wait looks at the count.
const POLL: Duration = Duration::from_millis(20);

/// The delivery figures of one run (names as in the neutral bench's report).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Delivery {
    /// Deliveries expected for the events the server acknowledged.
    pub expected: u64,
    pub delivered_unique: u64,
    pub deliveries_total: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub misrouted: u64,
    /// Sequence numbers outside the run.
    pub out_of_range: u64,
    /// Client events that came back to their sender.
    pub echoed: u64,
    /// Deliveries of events whose publish failed (counted apart, not expected).
    pub delivered_for_unacked: u64,
    /// Every expected delivery arrived before the drain time ran out.
    pub drained: bool,
    /// First publish to last delivery.
    pub window_s: f64,
    pub delivered_per_s: f64,
    /// Publish → delivery, every delivery.
    pub latency: Summary,
    pub latency_by_label: BTreeMap<String, Summary>,
    pub subscribers_alive_at_end: u64,
}

/// Gives each connection a fresh record of `recorder`'s run; `own(conn)` are the sequence
/// numbers it sends itself.
pub fn install(conns: &[Arc<Conn>], recorder: &Arc<Recorder>, own: &dyn Fn(&Conn) -> Range<u64>) {
    for conn in conns {
        let who = Receiver {
            index: conn.index,
            label: conn.label,
            channel: conn.channel.unwrap_or(u64::MAX),
            own: own(conn),
        };
        conn.state().delivery = Some((recorder.clone(), recorder.seen(), who));
    }
}

/// Waits until `expected` unique deliveries, or `drain` without a new one, or the deadline.
pub async fn drain(session: &Session, recorder: &Recorder, expected: u64, drain: Duration) -> bool {
    let bar = session.bar(expected, "delivered");
    let (mut seen, mut since) = (u64::MAX, now_us());
    let drained = loop {
        let unique = recorder.unique();
        bar.set_position(unique);
        if unique >= expected {
            break true;
        }
        if unique != seen {
            (seen, since) = (unique, now_us());
        } else if now_us() - since > drain.as_micros() as u64 || session.past_deadline() {
            break false;
        }
        tokio::time::sleep(POLL).await;
    };
    bar.finish_and_clear();
    drained
}

/// What was sent in a run: its sequence numbers, which of them the server acknowledged
/// (relative to the first), and when the first went out.
pub struct Sent<'a> {
    pub seqs: Range<u64>,
    pub acked: &'a Seen,
    pub t0_us: u64,
}

/// Ends the run on every connection and counts; `expected(seq)` is the receivers an
/// acknowledged event should have.
pub fn finish(
    session: &Session,
    conns: &[Arc<Conn>],
    recorder: &Recorder,
    sent: &Sent<'_>,
    expected: &dyn Fn(u64) -> u64,
    drained: bool,
) -> Delivery {
    let Sent { seqs, acked, t0_us } = sent;
    let mut alive = 0;
    for conn in conns {
        let mut state = conn.state();
        state.delivery = None;
        alive += u64::from(state.closed.is_none());
    }
    let (mut want, mut lost, mut unacked) = (0, 0, 0);
    for seq in seqs.clone() {
        if acked.contains(seq - seqs.start) {
            want += expected(seq);
            lost += expected(seq).saturating_sub(recorder.receivers(seq));
        } else {
            unacked += recorder.receivers(seq);
        }
    }
    let t = recorder.totals();
    let (latency, by_label) = recorder.latency();
    let window_s = t.last_us.saturating_sub(*t0_us) as f64 / 1e6;
    Delivery {
        expected: want,
        delivered_unique: t.unique,
        deliveries_total: t.deliveries,
        lost,
        duplicates: t.duplicates,
        misrouted: t.misrouted,
        out_of_range: t.out_of_range,
        echoed: t.echoed,
        delivered_for_unacked: unacked,
        drained,
        window_s,
        delivered_per_s: if window_s > 0.0 {
            t.unique as f64 / window_s
        } else {
            0.0
        },
        latency: latency.summary(),
        latency_by_label: session
            .labels()
            .into_iter()
            .zip(by_label.iter().map(|h| h.summary()))
            .collect(),
        subscribers_alive_at_end: alive,
    }
}

/// What `measure` returns.
pub struct Measured {
    pub published: Published,
    pub delivery: Delivery,
    pub recorder: Arc<Recorder>,
}

/// Publishes `warmup` unmeasured events first (keep-alive connections, both sides warm),
/// as the neutral bench does, then waits half a second.
pub async fn warm_up(session: &Session, channel: &str, warmup: u64, inflight: usize) {
    session.api.warm(inflight).await;
    for i in 0..warmup {
        if session.past_deadline() {
            return;
        }
        let _ = session
            .api
            .trigger(channel, "bench-warmup", &format!("warmup-{i}"))
            .await;
    }
    if warmup > 0 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One HTTP-published run to `conns` (all subscribed before it starts).
pub async fn measure(
    session: &Session,
    conns: &[Arc<Conn>],
    plan: &Plan,
    modulo: u64,
    drain_for: Duration,
    expected: &dyn Fn(u64) -> u64,
) -> Measured {
    let recorder = Arc::new(Recorder::new(
        plan.seqs.clone(),
        modulo,
        session.endpoints.len(),
        session.start_us,
    ));
    install(conns, &recorder, &|_| 0..0);
    let bar = session.bar(plan.seqs.end - plan.seqs.start, "published");
    let published = publish(
        session.api.clone(),
        plan,
        session.deadline_us,
        session.errors.clone(),
        bar,
    )
    .await;
    let want: u64 = plan
        .seqs
        .clone()
        .filter(|s| published.acked.contains(s - plan.seqs.start))
        .map(expected)
        .sum();
    let drained = drain(session, &recorder, want, drain_for).await;
    let sent = Sent {
        seqs: plan.seqs.clone(),
        acked: &published.acked,
        t0_us: published.t0_us,
    };
    let delivery = finish(session, conns, &recorder, &sent, expected, drained);
    Measured {
        published,
        delivery,
        recorder,
    }
}
