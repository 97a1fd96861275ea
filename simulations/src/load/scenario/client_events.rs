//! `client-events`: `members` join one private or presence channel; the first `senders`
//! of them each send `events_per_sender` client events, paced under the server's
//! per-connection limit (Pusher: 10/s); every other member must receive each event once,
//! and the sender never (an echo counts apart).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;

use super::run_id;
use crate::load::cpu::{Cpu, Mark};
use crate::load::deliveries::{self, Sent};
use crate::load::recorder::{event_data, now_us, Recorder, Seen};
use crate::load::report::Report;
use crate::load::session::Session;

/// Pusher's limit of client events per second per connection.
pub const RATE_PER_SENDER_MAX: f64 = 10.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelKind {
    Private,
    Presence,
}

#[derive(Clone, Debug)]
pub struct ClientEvents {
    pub members: u64,
    pub senders: u64,
    pub events_per_sender: u64,
    /// Client events per second of each sender (at most [`RATE_PER_SENDER_MAX`]).
    pub rate_per_sender: f64,
    pub kind: ChannelKind,
    pub payload_bytes: usize,
    pub join_concurrency: usize,
    pub drain: Duration,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ClientEventStats {
    pub channel_kind: String,
    pub members_joined: u64,
    pub join_failed: u64,
    pub senders: u64,
    pub rate_per_sender: f64,
    pub requested: u64,
    /// Written to the sender's socket.
    pub sent: u64,
    /// The sender's connection had ended.
    pub not_sent: u64,
}

pub async fn run(c: &ClientEvents, session: &Session) -> Report {
    let mut report = Report::new("client-events");
    let prefix = match c.kind {
        ChannelKind::Private => "private",
        ChannelKind::Presence => "presence",
    };
    let channel = format!("{prefix}-load-{}", run_id());
    let opened = session.open(c.members, &|_| None).await;
    report.open = Some(opened.stats.clone());
    let channel_data = |user: usize| {
        (c.kind == ChannelKind::Presence)
            .then(|| json!({"user_id": format!("u{user}"), "user_info": {"n": user}}).to_string())
    };
    let joins = session
        .join(&opened.conns, &channel, &channel_data, c.join_concurrency)
        .await;
    let members: Vec<_> = opened
        .conns
        .iter()
        .filter(|conn| joins.ok.contains(conn.index as u64))
        .cloned()
        .collect();
    let senders: Vec<_> = members.iter().take(c.senders as usize).cloned().collect();
    let per_sender = c.events_per_sender;
    let total = senders.len() as u64 * per_sender;
    let mut stats = ClientEventStats {
        channel_kind: prefix.into(),
        members_joined: joins.ok_count,
        join_failed: joins.failed,
        senders: senders.len() as u64,
        rate_per_sender: c.rate_per_sender,
        requested: total,
        ..ClientEventStats::default()
    };
    if members.len() < 2 || senders.is_empty() {
        report.error = Some("fewer than two members joined, or no sender".into());
        report.client_events = Some(stats);
        return report;
    }
    // Sender k sends sequence numbers k·E … (k+1)·E − 1: its own range, never echoed.
    let own_of: Vec<Option<usize>> = {
        let size = members.iter().map(|m| m.index + 1).max().unwrap_or(0);
        let mut own = vec![None; size];
        for (k, s) in senders.iter().enumerate() {
            own[s.index] = Some(k);
        }
        own
    };
    let recorder = Arc::new(Recorder::new(
        0..total,
        0,
        session.endpoints.len(),
        session.start_us,
    ));
    deliveries::install(
        &members,
        &recorder,
        &|conn| match own_of.get(conn.index).copied().flatten() {
            Some(k) => k as u64 * per_sender..(k as u64 + 1) * per_sender,
            None => 0..0,
        },
    );
    let pid = session.options.pid;
    let before = Mark::now(pid);
    let sent = Arc::new(Mutex::new((Seen::new(total), 0u64)));
    let bar = session.bar(total, "sent");
    let t0 = now_us();
    let interval_us = 1e6 / c.rate_per_sender.clamp(0.1, RATE_PER_SENDER_MAX);
    let mut tasks = JoinSet::new();
    for (k, sender) in senders.iter().enumerate() {
        let (sender, sent, bar, channel) =
            (sender.clone(), sent.clone(), bar.clone(), channel.clone());
        let (deadline_us, payload) = (session.deadline_us, c.payload_bytes);
        // Senders start staggered over one interval, so their events interleave.
        let offset_us = interval_us * k as f64 / senders.len() as f64;
        tasks.spawn(async move {
            for i in 0..per_sender {
                let due = t0 + (offset_us + i as f64 * interval_us) as u64;
                let now = now_us();
                if due > now {
                    tokio::time::sleep(Duration::from_micros(due - now)).await;
                }
                if now_us() > deadline_us {
                    return;
                }
                let seq = k as u64 * per_sender + i;
                let frame = json!({
                    "event": "client-load",
                    "channel": channel,
                    "data": event_data(seq, now_us(), payload),
                });
                let written = sender.send(frame.to_string()).await;
                let mut s = sent.lock().unwrap_or_else(|e| e.into_inner());
                if written {
                    s.0.insert(seq);
                } else {
                    s.1 += 1;
                }
                bar.inc(1);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    bar.finish_and_clear();
    let (acked, not_sent) = std::mem::take(&mut *sent.lock().unwrap_or_else(|e| e.into_inner()));
    stats.sent = acked.len();
    stats.not_sent = not_sent;
    let receivers = members.len() as u64 - 1;
    let drained = deliveries::drain(session, &recorder, stats.sent * receivers, c.drain).await;
    let delivery = deliveries::finish(
        session,
        &members,
        &recorder,
        &Sent {
            seqs: 0..total,
            acked: &acked,
            t0_us: t0,
        },
        &|_| receivers,
        drained,
    );
    report.cpu =
        Cpu::between(&before, &Mark::now(pid)).per_unit(delivery.delivered_unique, stats.sent, 0);
    report.timeline = recorder.timeline(&session.errors);
    report.delivery = Some(delivery);
    report.client_events = Some(stats);
    report
}
