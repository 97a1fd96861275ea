//! `POST /events` and `POST /batch_events` (§11.2, §11.3): validate, encode each event once
//! per channel, fan it out locally, answer with the requested channel info.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use relaymesh_proto::channel::{self, CHANNEL_NAME_MAX, EVENT_NAME_MAX};
use relaymesh_proto::frame;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::{ChannelStats, Publish};

use super::{json, parse_body, signed, ApiError};
use crate::app::App;
use crate::frames;
use crate::outbox::SocketId;
use crate::shared::Shared;
use crate::{route, telemetry};

/// Channels one event may target.
pub const CHANNELS_PER_EVENT_MAX: usize = 100;
/// Events in one batch.
pub const BATCH_EVENTS_MAX: usize = 10;

#[derive(Deserialize)]
struct EventBody<'a> {
    name: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Vec<EventBody<'a>>,
}

/// Attributes of one channel in a publish answer.
#[derive(Serialize, Default)]
struct ChannelInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    user_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription_count: Option<usize>,
}

/// A validated event, ready to publish.
struct Event {
    name: String,
    data: String,
    channels: Vec<String>,
    except: Option<SocketId>,
    info: Vec<String>,
}

fn validate(body: EventBody<'_>, app: &App) -> Result<Event, ApiError> {
    if body.name.is_empty() || body.name.len() > EVENT_NAME_MAX {
        return Err(ApiError::bad_request(format!(
            "Event name must be 1 to {EVENT_NAME_MAX} characters"
        )));
    }
    if body.name.starts_with("pusher:") || body.name.starts_with("pusher_internal:") {
        return Err(ApiError::bad_request(
            "Event names starting with pusher: are reserved",
        ));
    }
    let channels = match (body.channels, body.channel) {
        (Some(list), None) => list,
        (None, Some(one)) => vec![one],
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "Give either channels or channel, not both",
            ))
        }
        (None, None) => return Err(ApiError::bad_request("Missing channels")),
    };
    if channels.is_empty() || channels.len() > CHANNELS_PER_EVENT_MAX {
        return Err(ApiError::bad_request(format!(
            "An event needs 1 to {CHANNELS_PER_EVENT_MAX} channels, got {}",
            channels.len()
        )));
    }
    for name in &channels {
        channel::validate_channel_name(name).map_err(|e| {
            let shown: String = name.chars().take(CHANNEL_NAME_MAX).collect();
            ApiError::bad_request(format!("Invalid channel {shown:?}: {e}"))
        })?;
    }
    let data = frame::data_as_text(body.data).into_owned();
    let max = app.config().max_event_bytes;
    if data.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Event data is {} bytes; the limit is {max}", data.len()),
        ));
    }
    let except = match body.socket_id.as_deref() {
        None => None,
        Some(text) => Some(
            SocketId::parse(text)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid socket_id {text:?}")))?,
        ),
    };
    let info: Vec<String> = body
        .info
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    for attribute in &info {
        if attribute != "user_count" && attribute != "subscription_count" {
            return Err(ApiError::bad_request(format!(
                "Unknown info attribute {attribute:?}"
            )));
        }
    }
    Ok(Event {
        name: body.name,
        data,
        channels,
        except,
        info,
    })
}

/// Sends one event to the owner of each of its channels (all before waiting for any).
fn send(shared: &Shared, app: &App, event: &Event) -> Result<Vec<route::Waiting>, ApiError> {
    let except = event.except.map(Into::into);
    let mut waiting = Vec::with_capacity(event.channels.len());
    for channel in &event.channels {
        let text = frame::channel_event(&event.name, channel, &event.data, None);
        let frame = frames::text_frame(&text);
        waiting.push(route::begin(shared, app, channel, |request_id| {
            Body::Publish(Publish {
                request_id,
                frame,
                data: event.data.clone(),
                except,
                cache: true,
            })
        })?);
    }
    metrics::counter!(telemetry::EVENTS_PUBLISHED, "app" => app.id.clone(), "source" => "api")
        .increment(1);
    Ok(waiting)
}

/// Waits until every owner accepted; returns the channels' occupancy after the event.
async fn accepted(
    shared: &Shared,
    waiting: Vec<route::Waiting>,
) -> Result<Vec<ChannelStats>, ApiError> {
    let mut stats = Vec::with_capacity(waiting.len());
    for w in waiting {
        stats.push(w.answer(shared).await?.stats.unwrap_or_default());
    }
    Ok(stats)
}

fn channel_info(event: &Event, stats: &[ChannelStats]) -> BTreeMap<String, ChannelInfo> {
    let wants = |a: &str| event.info.iter().any(|i| i == a);
    event
        .channels
        .iter()
        .zip(stats)
        .map(|(name, stats)| {
            let is_presence = channel::ChannelKind::of(name).is_presence();
            let info = ChannelInfo {
                user_count: (wants("user_count") && is_presence)
                    .then(|| stats.user_count.unwrap_or(0) as usize),
                subscription_count: wants("subscription_count")
                    .then_some(stats.subscription_count as usize),
            };
            (name.clone(), info)
        })
        .collect()
}

pub async fn events(
    State(shared): State<Arc<Shared>>,
    Path(app_id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let signed = signed(&shared, &app_id, request).await?;
    let body: EventBody<'_> = parse_body(&signed.body)?;
    let event = validate(body, &signed.app)?;
    let waiting = send(&shared, &signed.app, &event)?;
    let stats = accepted(&shared, waiting).await?;
    if event.info.is_empty() {
        return Ok(json(&serde_json::json!({})));
    }
    Ok(json(
        &serde_json::json!({ "channels": channel_info(&event, &stats) }),
    ))
}

pub async fn batch_events(
    State(shared): State<Arc<Shared>>,
    Path(app_id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let signed = signed(&shared, &app_id, request).await?;
    let body: BatchBody<'_> = parse_body(&signed.body)?;
    if body.batch.is_empty() || body.batch.len() > BATCH_EVENTS_MAX {
        return Err(ApiError::bad_request(format!(
            "A batch holds 1 to {BATCH_EVENTS_MAX} events, got {}",
            body.batch.len()
        )));
    }
    // Validate the whole batch before publishing any of it.
    let events = body
        .batch
        .into_iter()
        .map(|item| validate(item, &signed.app))
        .collect::<Result<Vec<_>, _>>()?;
    // One event after the other: a batch's channels may have different owners, and its
    // events must arrive in the batch's order.
    let mut stats = Vec::with_capacity(events.len());
    for event in &events {
        let waiting = send(&shared, &signed.app, event)?;
        stats.push(accepted(&shared, waiting).await?);
    }
    if events.iter().all(|e| e.info.is_empty()) {
        return Ok(json(&serde_json::json!({})));
    }
    let batch: Vec<ChannelInfo> = events
        .iter()
        .zip(&stats)
        .map(|(e, s)| channel_info(e, s).into_values().next().unwrap_or_default())
        .collect();
    Ok(json(&serde_json::json!({ "batch": batch })))
}
