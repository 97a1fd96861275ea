//! `churn`: `concurrency` clients each repeat connect → subscribe → disconnect, for a
//! number of cycles or a duration, whichever ends first: connection and subscription
//! rates, and what failed by code.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;

use super::run_id;
use crate::load::client;
use crate::load::cpu::{Cpu, Mark};
use crate::load::recorder::{now_us, Hist, Summary};
use crate::load::report::Report;
use crate::load::session::Session;

#[derive(Clone, Debug)]
pub struct Churn {
    /// Clients cycling at once.
    pub concurrency: usize,
    /// Cycles in all; 0: until `duration`.
    pub cycles: u64,
    pub duration: Duration,
    /// Cycle `n` subscribes to channel `n mod channels`.
    pub channels: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ChurnStats {
    pub cycles_ok: u64,
    pub cycles_failed: u64,
    pub connects: u64,
    pub subscriptions: u64,
    pub wall_s: f64,
    pub connects_per_s: f64,
    pub subscriptions_per_s: f64,
    pub connect_latency: Summary,
    pub subscribe_latency: Summary,
    /// Connect + subscribe + close.
    pub cycle_latency: Summary,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    connects: u64,
    subscriptions: u64,
    connect: Hist,
    subscribe: Hist,
    cycle: Hist,
}

pub async fn run(c: &Churn, session: &Session) -> Report {
    let mut report = Report::new("churn");
    let id = run_id();
    let end_us = (now_us() + c.duration.as_micros() as u64).min(session.deadline_us);
    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let bar = session.bar(c.cycles, "cycles");
    let pid = session.options.pid;
    let before = Mark::now(pid);
    let t0 = now_us();
    let mut workers = JoinSet::new();
    for _ in 0..c.concurrency.max(1) {
        let (next, tally, bar) = (next.clone(), tally.clone(), bar.clone());
        let (cycles, channels, id) = (c.cycles, c.channels.max(1), id.clone());
        let endpoints = session.endpoints.clone();
        let app = session.app.clone();
        let errors = session.errors.clone();
        let timeout = session.options.connect_timeout;
        let routes: Vec<_> = (0..session.route_count())
            .map(|i| session.route(i))
            .collect();
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if (cycles > 0 && n >= cycles) || now_us() >= end_us {
                    return;
                }
                let (target, source) = routes[n as usize % routes.len()];
                let started = now_us();
                let outcome = async {
                    let mut client = client::connect(&endpoints[target], source, timeout).await?;
                    let connected = now_us();
                    tally.lock().unwrap_or_else(|e| e.into_inner()).connects += 1;
                    let channel = format!("load-churn-{id}-{}", n % channels);
                    client.subscribe(&app, &channel, None, timeout).await?;
                    let subscribed = now_us();
                    client.close().await;
                    Ok::<_, client::Failure>((connected - started, subscribed - connected))
                }
                .await;
                let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                match outcome {
                    Ok((connect_us, subscribe_us)) => {
                        t.ok += 1;
                        t.subscriptions += 1;
                        t.connect.record(connect_us);
                        t.subscribe.record(subscribe_us);
                        t.cycle.record(now_us() - started);
                    }
                    Err(failure) => {
                        t.failed += 1;
                        errors.count(&failure.key());
                    }
                }
                bar.inc(1);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    bar.finish_and_clear();
    let wall_s = (now_us() - t0) as f64 / 1e6;
    let t = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    report.cpu = Cpu::between(&before, &Mark::now(pid)).per_unit(0, 0, t.connects);
    let rate = |n: u64| if wall_s > 0.0 { n as f64 / wall_s } else { 0.0 };
    if t.ok == 0 {
        report.error = Some("no cycle completed".into());
    }
    report.churn = Some(ChurnStats {
        cycles_ok: t.ok,
        cycles_failed: t.failed,
        connects: t.connects,
        subscriptions: t.subscriptions,
        wall_s,
        connects_per_s: rate(t.connects),
        subscriptions_per_s: rate(t.subscriptions),
        connect_latency: t.connect.summary(),
        subscribe_latency: t.subscribe.summary(),
        cycle_latency: t.cycle.summary(),
    });
    report
}
