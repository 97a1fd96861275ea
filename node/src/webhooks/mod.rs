//! Webhooks: events raised on the socket path go into a bounded queue and never wait;
//! a background task per app batches them ([`batcher`]) and a sender delivers each batch,
//! signed, to every URL of the app with bounded retries and backoff.

mod batcher;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use relaymesh_proto::signing;

use crate::config::SharedAppConfig;
use crate::config::WebhookConfig;
use crate::telemetry;
pub use batcher::Batcher;

/// One webhook event (protocol §13).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum WebhookEvent {
    ChannelOccupied {
        channel: Box<str>,
    },
    ChannelVacated {
        channel: Box<str>,
    },
    MemberAdded {
        channel: Box<str>,
        user_id: Box<str>,
    },
    MemberRemoved {
        channel: Box<str>,
        user_id: Box<str>,
    },
    ClientEvent {
        channel: Box<str>,
        event: Box<str>,
        /// The event data as a string.
        data: Box<str>,
        socket_id: Box<str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<Box<str>>,
    },
    CacheMiss {
        channel: Box<str>,
    },
    SubscriptionCount {
        channel: Box<str>,
        subscription_count: usize,
    },
}

/// Where a node's raised events go.
#[derive(Clone)]
pub enum Outlet {
    /// Each app's tasks batch them and send them over HTTP with this client.
    Send(reqwest::Client),
    /// Kept as raised, for a test that drives the node by hand (it runs no task).
    Record(Recorded),
}

/// Events as raised, with their app, bounded like the queue (more are dropped and counted).
#[derive(Clone, Default)]
pub struct Recorded(Arc<Mutex<VecDeque<AppEvent>>>);

/// An event and the id of the app that raised it.
pub type AppEvent = (Arc<str>, WebhookEvent);

impl Recorded {
    /// Takes every event recorded so far, in the order raised.
    pub fn take(&self) -> Vec<AppEvent> {
        let mut events = self.0.lock().unwrap_or_else(|e| e.into_inner());
        events.drain(..).collect()
    }

    fn push(&self, app_id: &Arc<str>, event: WebhookEvent, max: usize) -> bool {
        let mut events = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = events.len() < max;
        if room {
            events.push_back((app_id.clone(), event));
        }
        room
    }
}

enum Queue {
    Batcher(mpsc::Sender<WebhookEvent>),
    Recorded { events: Recorded, max: usize },
}

/// The handle the socket path raises events through.
#[derive(Clone)]
pub struct Webhooks {
    queue: Arc<Queue>,
    app_id: Arc<str>,
    /// Read on every event: an app without URLs raises nothing.
    config: SharedAppConfig,
}

/// Batches waiting for the sender; more are dropped and counted.
const BATCH_QUEUE_MAX: usize = 256;

impl Webhooks {
    /// Starts the app's batcher and sender tasks (they end when every handle is dropped),
    /// or records the events when the outlet says so.
    pub fn spawn(
        app_id: Arc<str>,
        app: SharedAppConfig,
        config: &WebhookConfig,
        outlet: &Outlet,
    ) -> Webhooks {
        let client = match outlet {
            Outlet::Send(client) => client.clone(),
            Outlet::Record(events) => {
                let queue = Queue::Recorded {
                    events: events.clone(),
                    max: config.queue_max.max(1),
                };
                return Webhooks {
                    queue: Arc::new(queue),
                    app_id,
                    config: app,
                };
            }
        };
        let (events_tx, events_rx) = mpsc::channel(config.queue_max.max(1));
        let (batches_tx, batches_rx) = mpsc::channel(BATCH_QUEUE_MAX);
        let batcher = Batcher::new(
            Duration::from_millis(config.batch_ms),
            Duration::from_millis(config.vacate_delay_ms),
            config.queue_max,
        );
        tokio::spawn(run_batcher(batcher, events_rx, batches_tx, app_id.clone()));
        let sender = Sender {
            client,
            app: app.clone(),
            attempts_max: config.attempts_max.max(1),
            retry_base: Duration::from_millis(config.retry_base_ms),
        };
        tokio::spawn(sender.run(batches_rx));
        Webhooks {
            queue: Arc::new(Queue::Batcher(events_tx)),
            app_id,
            config: app,
        }
    }

    /// Queues an event without waiting; a full queue drops it and counts the drop.
    pub fn raise(&self, event: WebhookEvent) {
        if self.config.get().webhooks.is_empty() {
            return;
        }
        let queued = match &*self.queue {
            Queue::Batcher(events) => events.try_send(event).is_ok(),
            Queue::Recorded { events, max } => events.push(&self.app_id, event, *max),
        };
        if !queued {
            metrics::counter!(telemetry::WEBHOOK_EVENTS_DROPPED, "app" => self.app_id.clone())
                .increment(1);
        }
    }
}

async fn run_batcher(
    mut batcher: Batcher,
    mut events: mpsc::Receiver<WebhookEvent>,
    batches: mpsc::Sender<Vec<WebhookEvent>>,
    app_id: Arc<str>,
) {
    let mut open = true;
    while open || !batcher.is_empty() {
        let deadline = batcher.next_deadline();
        tokio::select! {
            event = events.recv(), if open => match event {
                Some(event) => {
                    if !batcher.push(Instant::now().into_std(), event) {
                        metrics::counter!(telemetry::WEBHOOK_EVENTS_DROPPED, "app" => app_id.clone()).increment(1);
                    }
                }
                None => open = false,
            },
            _ = sleep_until_opt(deadline) => {}
        }
        let now = if open {
            Instant::now().into_std()
        } else {
            std::time::Instant::now() + Duration::from_secs(3600)
        };
        while let Some(batch) = batcher.poll(now) {
            if batches.try_send(batch).is_err() {
                metrics::counter!(telemetry::WEBHOOKS, "result" => "dropped").increment(1);
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

struct Sender {
    client: reqwest::Client,
    /// URLs, key and secret are read per batch, so updates apply to the next one.
    app: SharedAppConfig,
    attempts_max: u32,
    retry_base: Duration,
}

/// The request body of one batch.
#[derive(Serialize)]
struct Body<'a> {
    time_ms: u128,
    events: &'a [WebhookEvent],
}

impl Sender {
    async fn run(self, mut batches: mpsc::Receiver<Vec<WebhookEvent>>) {
        while let Some(events) = batches.recv().await {
            let time_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let Ok(body) = serde_json::to_vec(&Body {
                time_ms,
                events: &events,
            }) else {
                continue;
            };
            let app = self.app.get();
            let signature = signing::webhook_signature(&app.secret, &body);
            for url in &app.webhooks {
                self.deliver(url, &app.key, &body, &signature).await;
            }
        }
    }

    async fn deliver(&self, url: &str, key: &str, body: &[u8], signature: &str) {
        for attempt in 0..self.attempts_max {
            if attempt > 0 {
                tokio::time::sleep(self.retry_base * 2u32.saturating_pow(attempt - 1)).await;
            }
            let result = self
                .client
                .post(url)
                .header("Content-Type", "application/json")
                .header("X-Pusher-Key", key)
                .header("X-Pusher-Signature", signature)
                .body(body.to_vec())
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => {
                    metrics::counter!(telemetry::WEBHOOKS, "result" => "delivered").increment(1);
                    return;
                }
                Ok(response) => {
                    tracing::warn!(url, status = %response.status(), attempt, "webhook refused");
                }
                Err(error) => {
                    tracing::warn!(url, %error, attempt, "webhook failed");
                }
            }
            metrics::counter!(telemetry::WEBHOOKS, "result" => "failed_attempt").increment(1);
        }
        metrics::counter!(telemetry::WEBHOOKS, "result" => "dropped").increment(1);
    }
}
