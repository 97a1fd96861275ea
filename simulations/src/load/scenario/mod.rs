//! One file per scenario; each takes a [`Session`] and fills a [`Report`].

mod channels;
mod churn;
mod client_events;
mod connect;
mod fanout;
mod presence;

use std::time::Duration;

use super::cpu::{Cpu, Mark};
use super::deliveries::{self, Measured};
use super::publisher::Plan;
use super::report::Report;
use super::session::Session;
use super::Scenario;

pub use churn::{Churn, ChurnStats};
pub use client_events::{ChannelKind, ClientEventStats, ClientEvents, RATE_PER_SENDER_MAX};
pub use connect::{Connect, ServerMemory};
pub use presence::{Presence, PresenceStats};

/// How events are published in `fanout` and `channels`.
#[derive(Clone, Debug)]
pub struct Publishing {
    pub events: u64,
    /// Events per second; 0 is closed loop.
    pub rate: f64,
    /// Requests outstanding at most.
    pub inflight: usize,
    /// Bytes of each event's data.
    pub payload_bytes: usize,
    /// Unmeasured events first.
    pub warmup: u64,
    /// A run ends this long after the last new delivery if some are still missing.
    pub drain: Duration,
}

pub async fn run(scenario: &Scenario, session: &Session) -> Report {
    let mut report = match scenario {
        Scenario::Connect(c) => connect::run(c, session).await,
        Scenario::Fanout { subs, publishing } => fanout::run(*subs, publishing, session).await,
        Scenario::Channels {
            channels,
            subs_per_channel,
            publishing,
        } => channels::run(*channels, *subs_per_channel, publishing, session).await,
        Scenario::Presence(p) => presence::run(p, session).await,
        Scenario::Churn(c) => churn::run(c, session).await,
        Scenario::ClientEvents(c) => client_events::run(c, session).await,
    };
    report.scenario = scenario.name().to_owned();
    report
}

/// A unique suffix for channel names, so runs against one server do not mix.
fn run_id() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Fan-out and channels alike: open subscribers (connection `i` on channel `i mod
/// channels`), warm up, publish event `seq` to channel `seq mod channels`, count.
async fn publish_run(
    name: &'static str,
    channels: u64,
    subs: u64,
    publishing: &Publishing,
    session: &Session,
) -> Report {
    let mut report = Report::new(name);
    let id = run_id();
    let channel_name = move |i: u64| {
        if channels == 1 {
            format!("load-{name}-{id}")
        } else {
            format!("load-{name}-{id}-{i}")
        }
    };
    let channel_of = |i: usize| Some((channel_name(i as u64 % channels), i as u64 % channels));
    let opened = session.open(subs, &channel_of).await;
    report.open = Some(opened.stats.clone());
    if opened.stats.subscribed == 0 {
        report.error = Some("no subscriber could subscribe".into());
        return report;
    }
    let subscribed: Vec<_> = opened
        .conns
        .iter()
        .filter(|c| c.channel.is_some())
        .cloned()
        .collect();
    deliveries::warm_up(
        session,
        &channel_name(0),
        publishing.warmup,
        publishing.inflight,
    )
    .await;
    let plan = Plan {
        seqs: 0..publishing.events,
        rate: publishing.rate,
        inflight: publishing.inflight,
        payload_bytes: publishing.payload_bytes,
        event_name: "bench".into(),
        channel_of: std::sync::Arc::new(move |seq| channel_name(seq % channels)),
    };
    let per_channel = opened.per_channel.clone();
    let expected = move |seq: u64| {
        per_channel
            .get((seq % channels) as usize)
            .copied()
            .unwrap_or(0)
    };
    let before = Mark::now(session.options.pid);
    let Measured {
        published,
        delivery,
        recorder,
    } = deliveries::measure(
        session,
        &subscribed,
        &plan,
        if channels > 1 { channels } else { 0 },
        publishing.drain,
        &expected,
    )
    .await;
    report.cpu = Cpu::between(&before, &Mark::now(session.options.pid)).per_unit(
        delivery.delivered_unique,
        published.acked_ok,
        0,
    );
    if published.acked_ok == 0 {
        report.error = Some(format!(
            "no publish was acknowledged with 2xx: {:?}",
            published.statuses
        ));
    }
    report.timeline = recorder.timeline(&session.errors);
    report.publish = Some(published);
    report.delivery = Some(delivery);
    report
}
