//! Channel queries (§11.4–§11.6): occupied channels, one channel's info, presence users.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use relaymesh_proto::channel::{self, ChannelKind};
use serde::Serialize;
use serde_json::json as value;

use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::Query;

use super::{json, signed, ApiError};
use crate::route;
use crate::shared::Shared;

fn info_list(text: Option<&str>) -> Vec<&str> {
    text.unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .collect()
}

pub async fn list(
    State(shared): State<Arc<Shared>>,
    Path(app_id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let signed = signed(&shared, &app_id, request).await?;
    let prefix = signed.param("filter_by_prefix").unwrap_or("");
    let info = info_list(signed.param("info"));
    for attribute in &info {
        match *attribute {
            "user_count" if !prefix.starts_with("presence-") => {
                return Err(ApiError::bad_request(
                    "info=user_count needs filter_by_prefix=presence-",
                ))
            }
            "user_count" | "subscription_count" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "Unknown info attribute {other:?}"
                )))
            }
        }
    }
    #[derive(Serialize)]
    struct Attributes {
        #[serde(skip_serializing_if = "Option::is_none")]
        user_count: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        subscription_count: Option<u32>,
    }
    let channels: BTreeMap<String, Attributes> = route::list_channels(&shared, &signed.app, prefix)
        .await?
        .into_iter()
        .map(|entry| {
            let stats = entry.stats.unwrap_or_default();
            let attributes = Attributes {
                user_count: info
                    .contains(&"user_count")
                    .then(|| stats.user_count.unwrap_or(0)),
                subscription_count: info
                    .contains(&"subscription_count")
                    .then_some(stats.subscription_count),
            };
            (entry.name, attributes)
        })
        .collect();
    Ok(json(&value!({ "channels": channels })))
}

pub async fn info(
    State(shared): State<Arc<Shared>>,
    Path((app_id, name)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let signed = signed(&shared, &app_id, request).await?;
    let kind = channel::validate_channel_name(&name)
        .map_err(|e| ApiError::bad_request(format!("Invalid channel: {e}")))?;
    let info = info_list(signed.param("info"));
    let answer = route::request(&shared, &signed.app, &name, |request_id| {
        Body::Query(Query {
            request_id,
            users: false,
        })
    })
    .await?;
    let stats = answer.stats.unwrap_or_default();
    let mut out = serde_json::Map::new();
    out.insert("occupied".into(), value!(stats.subscription_count > 0));
    for attribute in info {
        match attribute {
            "user_count" if kind.is_presence() => {
                out.insert("user_count".into(), value!(stats.user_count.unwrap_or(0)));
            }
            "subscription_count" => {
                out.insert(
                    "subscription_count".into(),
                    value!(stats.subscription_count),
                );
            }
            "cache" if kind.cache => {
                let cached = answer
                    .cache
                    .as_ref()
                    .map(|c| value!({ "data": c.data, "ttl": c.ttl_secs }));
                out.insert("cache".into(), cached.unwrap_or(serde_json::Value::Null));
            }
            "user_count" | "cache" => {
                return Err(ApiError::bad_request(format!(
                    "info={attribute} does not apply to channel {name:?}"
                )))
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "Unknown info attribute {other:?}"
                )))
            }
        }
    }
    Ok(json(&out))
}

pub async fn users(
    State(shared): State<Arc<Shared>>,
    Path((app_id, name)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let signed = signed(&shared, &app_id, request).await?;
    if !ChannelKind::of(&name).is_presence() || channel::validate_channel_name(&name).is_err() {
        return Err(ApiError::bad_request(
            "Users can only be listed for presence channels",
        ));
    }
    let answer = route::request(&shared, &signed.app, &name, |request_id| {
        Body::Query(Query {
            request_id,
            users: true,
        })
    })
    .await?;
    let users: Vec<_> = answer
        .users
        .into_iter()
        .map(|id| value!({ "id": id }))
        .collect();
    Ok(json(&value!({ "users": users })))
}
