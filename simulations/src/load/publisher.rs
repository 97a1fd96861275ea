//! The HTTP API side: signed requests (`relaymesh_proto::signing`, as pusher-http-node
//! signs them) spread round-robin over the API URLs, and publishing a numbered run of
//! events closed-loop (`inflight` outstanding) or paced (`rate` per second, still at most
//! `inflight` outstanding), as the neutral bench does.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::ProgressBar;
use relaymesh_proto::signing;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;

use super::client::App;
use super::recorder::{event_data, now_us, Errors, Hist, Seen, Summary};

/// How long one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A signed HTTP API client over one or more base URLs (`http://host:port`).
pub struct Api {
    http: reqwest::Client,
    bases: Vec<String>,
    next: AtomicUsize,
    app: App,
}

/// A request's outcome: an HTTP status, or why there was none.
pub type Answer = Result<(u16, String), String>;

impl Api {
    /// `keep_alive` connections per host are kept open (one per request in flight).
    pub fn new(bases: Vec<String>, app: App, keep_alive: usize) -> anyhow::Result<Api> {
        anyhow::ensure!(!bases.is_empty(), "no API URL");
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(keep_alive)
            .tcp_nodelay(true)
            .build()?;
        Ok(Api {
            http,
            bases: bases
                .into_iter()
                .map(|b| b.trim_end_matches('/').to_owned())
                .collect(),
            next: AtomicUsize::new(0),
            app,
        })
    }

    fn base(&self) -> &str {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.bases.len();
        &self.bases[i]
    }

    /// A signed request to `/apps/{id}{path}`; never fails, the error is in the answer.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        params: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let path = format!("/apps/{}{path}", self.app.id);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let query = signing::sign_request(
            &self.app.key,
            &self.app.secret,
            method.as_str(),
            &path,
            params,
            body.as_bytes(),
            now,
        );
        let mut request = self
            .http
            .request(method, format!("{}{path}?{query}", self.base()));
        if !body.is_empty() {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                Ok((status, text))
            }
            Err(e) if e.is_timeout() => Err("timeout".into()),
            Err(e) if e.is_connect() => Err("connect".into()),
            Err(_) => Err("request".into()),
        }
    }

    /// `POST /events` of one event to one channel.
    pub async fn trigger(&self, channel: &str, name: &str, data: &str) -> Answer {
        let body = json!({"name": name, "channel": channel, "data": data}).to_string();
        self.request(reqwest::Method::POST, "/events", &[], &body)
            .await
    }

    /// Opens the keep-alive connections before a measurement (`/healthz` is unsigned and
    /// cheap; a server without it still opens the connection).
    pub async fn warm(&self, connections: usize) {
        let mut tasks = JoinSet::new();
        for _ in 0..connections {
            let request = self.http.get(format!("{}/healthz", self.base()));
            tasks.spawn(async move { request.send().await.map(|_| ()) });
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// A numbered run of events.
#[derive(Clone)]
pub struct Plan {
    /// Sequence numbers published.
    pub seqs: Range<u64>,
    /// Events per second; 0 is closed loop.
    pub rate: f64,
    pub inflight: usize,
    pub payload_bytes: usize,
    pub event_name: String,
    /// The channel of event `seq`.
    pub channel_of: Arc<dyn Fn(u64) -> String + Send + Sync>,
}

/// What publishing a run came to.
#[derive(Clone, Debug, Serialize)]
pub struct Published {
    pub requested: u64,
    pub sent: u64,
    pub acked_ok: u64,
    pub failed: u64,
    /// By HTTP status, or `error …` when there was no answer.
    pub statuses: BTreeMap<String, u64>,
    pub mode: String,
    /// Paced: sends that started more than 1 ms behind schedule.
    pub late_starts: u64,
    pub publishes_per_s: f64,
    pub ack_latency: Summary,
    #[serde(skip)]
    pub t0_us: u64,
    #[serde(skip)]
    pub last_ack_us: u64,
    /// Which sequence numbers (relative to the plan's first) were answered 2xx.
    #[serde(skip)]
    pub acked: Seen,
}

#[derive(Default)]
struct Tally {
    sent: u64,
    ok: u64,
    failed: u64,
    late_starts: u64,
    statuses: BTreeMap<String, u64>,
    acked: Seen,
    ack: Hist,
    last_ack_us: u64,
}

/// Publishes `plan` until done or `deadline_us`; non-2xx answers count in `errors` as
/// `http STATUS`, requests without an answer as `http error …`.
pub async fn publish(
    api: Arc<Api>,
    plan: &Plan,
    deadline_us: u64,
    errors: Arc<Errors>,
    bar: ProgressBar,
) -> Published {
    let count = plan.seqs.end.saturating_sub(plan.seqs.start);
    let tally = Arc::new(Mutex::new(Tally {
        acked: Seen::new(count),
        ..Tally::default()
    }));
    let t0 = now_us();
    let inflight = plan.inflight.max(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(inflight));
    let mut tasks = JoinSet::new();
    let interval_us = if plan.rate > 0.0 {
        1e6 / plan.rate
    } else {
        0.0
    };
    for (k, seq) in plan.seqs.clone().enumerate() {
        if now_us() > deadline_us {
            break;
        }
        if plan.rate > 0.0 {
            let due = t0 + (k as f64 * interval_us) as u64;
            let now = now_us();
            if due > now + 1_000 {
                tokio::time::sleep(Duration::from_micros(due - now)).await;
            }
        }
        // Closed loop and paced alike: never more than `inflight` outstanding.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        if plan.rate > 0.0 && now_us() > t0 + (k as f64 * interval_us) as u64 + 1_000 {
            tally.lock().unwrap_or_else(|e| e.into_inner()).late_starts += 1;
        }
        let (api, tally, errors, bar) = (api.clone(), tally.clone(), errors.clone(), bar.clone());
        let channel = (plan.channel_of)(seq);
        let name = plan.event_name.clone();
        let payload = plan.payload_bytes;
        let first = plan.seqs.start;
        tasks.spawn(async move {
            // The send instant goes into the data just before the request is written.
            let sent = now_us();
            let answer = api
                .trigger(&channel, &name, &event_data(seq, sent, payload))
                .await;
            let acked = now_us();
            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
            t.sent += 1;
            t.ack.record(acked - sent);
            t.last_ack_us = t.last_ack_us.max(acked);
            let key = match &answer {
                Ok((status, _)) => status.to_string(),
                Err(why) => format!("error {why}"),
            };
            *t.statuses.entry(key.clone()).or_default() += 1;
            if matches!(answer, Ok((200..=299, _))) {
                t.ok += 1;
                t.acked.insert(seq - first);
            } else {
                t.failed += 1;
                errors.count(&format!("http {key}"));
            }
            bar.inc(1);
            drop(slot);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    bar.finish_and_clear();
    let t = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    let window_s = t.last_ack_us.saturating_sub(t0) as f64 / 1e6;
    Published {
        requested: count,
        sent: t.sent,
        acked_ok: t.ok,
        failed: t.failed,
        statuses: t.statuses,
        mode: if plan.rate > 0.0 {
            format!("paced {}/s", plan.rate)
        } else {
            format!("closed loop, {inflight} in flight")
        },
        late_starts: t.late_starts,
        publishes_per_s: if window_s > 0.0 {
            t.ok as f64 / window_s
        } else {
            0.0
        },
        ack_latency: t.ack.summary(),
        t0_us: t0,
        last_ack_us: t.last_ack_us,
        acked: t.acked,
    }
}
