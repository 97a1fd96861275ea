//! Pusher protocol v7 frames (§1, §15): what clients send, decoded without copying where
//! possible, and what the server sends, encoded to the exact text of one WebSocket frame.
//!
//! Server→client `data` of channel and `pusher_internal:` events is a JSON-encoded string
//! ("double encoding"); `pusher:error`, `pusher:pong` and `pusher:signin_success` carry a
//! plain object. Encoders here hide that rule from callers.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use thiserror::Error;

/// Longest presence `user_id` (Pusher's limit).
pub const USER_ID_MAX: usize = 128;

/// Longest watchlist a signed-in user may have; ids past it are ignored (error 4302).
pub const WATCHLIST_MAX: usize = 100;

/// The envelope of every client frame.
#[derive(Debug, Deserialize)]
pub struct ClientFrame<'a> {
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    #[serde(borrow, default)]
    pub channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

impl<'a> ClientFrame<'a> {
    pub fn parse(text: &'a str) -> Result<Self, FrameError> {
        serde_json::from_str(text).map_err(|e| FrameError::Malformed(e.to_string()))
    }

    /// Decodes `data` as `T`, treating an absent `data` as an error.
    pub fn data_as<T: Deserialize<'a>>(&self) -> Result<T, FrameError> {
        let raw = self.data.ok_or(FrameError::MissingData)?;
        serde_json::from_str(raw.get()).map_err(|e| FrameError::Malformed(e.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("Invalid JSON: {0}")]
    Malformed(String),
    #[error("the event has no data")]
    MissingData,
}

/// `pusher:subscribe` data.
#[derive(Debug, Deserialize)]
pub struct SubscribeData {
    pub channel: String,
    #[serde(default)]
    pub auth: Option<String>,
    /// Presence member data: a JSON *string*, signed as received.
    #[serde(default)]
    pub channel_data: Option<String>,
}

/// `pusher:unsubscribe` data.
#[derive(Debug, Deserialize)]
pub struct UnsubscribeData {
    pub channel: String,
}

/// `pusher:signin` data.
#[derive(Debug, Deserialize)]
pub struct SigninData {
    pub auth: String,
    /// A JSON string signed as received.
    pub user_data: String,
}

/// A presence member as the channel's subscribers see it.
#[derive(Debug, Clone)]
pub struct PresenceMember {
    /// Canonical string form: numeric ids become their decimal text.
    pub user_id: String,
    /// The raw `user_info` JSON, `None` when absent.
    pub user_info: Option<Box<RawValue>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MemberDataError {
    #[error("channel_data is not valid JSON: {0}")]
    Malformed(String),
    #[error("user_id must be a string or an integer")]
    BadUserId,
    #[error("user_id must be 1 to {USER_ID_MAX} characters")]
    UserIdLength,
    #[error("user_info is {0} bytes; at most {1} are allowed")]
    UserInfoTooLarge(usize, usize),
}

#[derive(Deserialize)]
struct RawMember<'a> {
    #[serde(borrow)]
    user_id: &'a RawValue,
    #[serde(borrow, default)]
    user_info: Option<&'a RawValue>,
}

fn canonical_user_id(raw: &RawValue) -> Result<String, MemberDataError> {
    let value: serde_json::Value =
        serde_json::from_str(raw.get()).map_err(|e| MemberDataError::Malformed(e.to_string()))?;
    let id = match value {
        serde_json::Value::String(s) => s,
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        _ => return Err(MemberDataError::BadUserId),
    };
    if id.is_empty() || id.chars().count() > USER_ID_MAX {
        return Err(MemberDataError::UserIdLength);
    }
    Ok(id)
}

fn owned_info(
    info: Option<&RawValue>,
    max_bytes: usize,
) -> Result<Option<Box<RawValue>>, MemberDataError> {
    match info {
        Some(raw) if raw.get().len() > max_bytes => Err(MemberDataError::UserInfoTooLarge(
            raw.get().len(),
            max_bytes,
        )),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => Ok(Some(raw.to_owned())),
        None => Ok(None),
    }
}

/// Parses presence `channel_data` (§7.1).
pub fn parse_member(
    channel_data: &str,
    user_info_max: usize,
) -> Result<PresenceMember, MemberDataError> {
    let raw: RawMember<'_> = serde_json::from_str(channel_data)
        .map_err(|e| MemberDataError::Malformed(e.to_string()))?;
    Ok(PresenceMember {
        user_id: canonical_user_id(raw.user_id)?,
        user_info: owned_info(raw.user_info, user_info_max)?,
    })
}

/// A signed-in user's `user_data` (§10.1).
#[derive(Debug, Clone)]
pub struct UserData {
    pub id: String,
    pub user_info: Option<Box<RawValue>>,
    pub watchlist: Vec<String>,
    /// Whether the watchlist was cut to [`WATCHLIST_MAX`].
    pub watchlist_truncated: bool,
}

#[derive(Deserialize)]
struct RawUserData<'a> {
    id: serde_json::Value,
    #[serde(borrow, default)]
    user_info: Option<&'a RawValue>,
    #[serde(default)]
    watchlist: Option<Vec<String>>,
}

pub fn parse_user_data(user_data: &str, user_info_max: usize) -> Result<UserData, MemberDataError> {
    let raw: RawUserData<'_> =
        serde_json::from_str(user_data).map_err(|e| MemberDataError::Malformed(e.to_string()))?;
    let id = match raw.id {
        serde_json::Value::String(s) => s,
        _ => return Err(MemberDataError::BadUserId),
    };
    if id.is_empty() || id.chars().count() > USER_ID_MAX {
        return Err(MemberDataError::UserIdLength);
    }
    let mut watchlist = raw.watchlist.unwrap_or_default();
    let watchlist_truncated = watchlist.len() > WATCHLIST_MAX;
    watchlist.truncate(WATCHLIST_MAX);
    Ok(UserData {
        id,
        user_info: owned_info(raw.user_info, user_info_max)?,
        watchlist,
        watchlist_truncated,
    })
}

/// The text to relay as a channel event's `data` string for client-sent `data`: a JSON
/// string is relayed as its content, anything else as its JSON text.
pub fn data_as_text(raw: &RawValue) -> Cow<'_, str> {
    let text = raw.get();
    if text.starts_with('"') {
        if let Ok(s) = serde_json::from_str::<String>(text) {
            return Cow::Owned(s);
        }
    }
    Cow::Borrowed(text)
}

// ---- server → client encoders -------------------------------------------------------

fn to_json<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs of strings and integers cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

#[derive(Serialize)]
struct Envelope<'a, D: Serialize> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<D>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

fn envelope<D: Serialize>(event: &str, channel: Option<&str>, data: Option<D>) -> String {
    to_json(&Envelope {
        event,
        channel,
        data,
        user_id: None,
    })
}

pub const PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;
pub const PING: &str = r#"{"event":"pusher:ping","data":{}}"#;

pub fn connection_established(socket_id: &str, activity_timeout_secs: u64) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        socket_id: &'a str,
        activity_timeout: u64,
    }
    let data = to_json(&Data {
        socket_id,
        activity_timeout: activity_timeout_secs,
    });
    envelope("pusher:connection_established", None, Some(data))
}

/// `pusher:error`; `code: None` is sent as `null`, as Pusher does for non-fatal errors.
pub fn error(code: Option<u16>, message: &str, channel: Option<&str>) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        code: Option<u16>,
        message: &'a str,
    }
    envelope("pusher:error", channel, Some(Data { code, message }))
}

/// A channel event; `data` is the event's data string, relayed byte for byte.
pub fn channel_event(event: &str, channel: &str, data: &str, user_id: Option<&str>) -> String {
    to_json(&Envelope {
        event,
        channel: Some(channel),
        data: Some(data),
        user_id,
    })
}

pub fn subscription_succeeded(channel: &str) -> String {
    envelope(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        Some("{}"),
    )
}

/// Presence `subscription_succeeded` with the whole roster.
pub fn presence_subscription_succeeded<'a>(
    channel: &str,
    members: impl Iterator<Item = (&'a str, Option<&'a RawValue>)> + Clone,
) -> String {
    #[derive(Serialize)]
    struct Presence<'a> {
        ids: Vec<&'a str>,
        hash: serde_json::Map<String, serde_json::Value>,
        count: usize,
    }
    #[derive(Serialize)]
    struct Data<'a> {
        presence: Presence<'a>,
    }
    let ids: Vec<&str> = members.clone().map(|(id, _)| id).collect();
    let hash = members
        .map(|(id, info)| {
            let info = info
                .and_then(|raw| serde_json::from_str(raw.get()).ok())
                .unwrap_or(serde_json::Value::Null);
            (id.to_owned(), info)
        })
        .collect();
    let count = ids.len();
    let data = to_json(&Data {
        presence: Presence { ids, hash, count },
    });
    envelope(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        Some(data),
    )
}

pub fn member_added(channel: &str, user_id: &str, user_info: Option<&RawValue>) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        user_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_info: Option<&'a RawValue>,
    }
    let data = to_json(&Data { user_id, user_info });
    envelope("pusher_internal:member_added", Some(channel), Some(data))
}

pub fn member_removed(channel: &str, user_id: &str) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        user_id: &'a str,
    }
    let data = to_json(&Data { user_id });
    envelope("pusher_internal:member_removed", Some(channel), Some(data))
}

/// `pusher:subscription_error` in the shape pusher-js surfaces on the channel (§6.5).
pub fn subscription_error(channel: &str, error_type: &str, message: &str, status: u16) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        #[serde(rename = "type")]
        error_type: &'a str,
        error: &'a str,
        status: u16,
    }
    envelope(
        "pusher:subscription_error",
        Some(channel),
        Some(Data {
            error_type,
            error: message,
            status,
        }),
    )
}

/// `pusher_internal:subscription_count` (§13.1).
pub fn subscription_count(channel: &str, count: usize) -> String {
    #[derive(Serialize)]
    struct Data {
        subscription_count: usize,
    }
    let data = to_json(&Data {
        subscription_count: count,
    });
    envelope(
        "pusher_internal:subscription_count",
        Some(channel),
        Some(data),
    )
}

pub fn cache_miss(channel: &str) -> String {
    envelope::<()>("pusher:cache_miss", Some(channel), None)
}

pub fn signin_success(user_data: &str) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        user_data: &'a str,
    }
    envelope("pusher:signin_success", None, Some(Data { user_data }))
}

/// `pusher_internal:watchlist_events` with one entry per non-empty list.
pub fn watchlist_events(online: &[&str], offline: &[&str]) -> String {
    #[derive(Serialize)]
    struct Entry<'a> {
        name: &'a str,
        user_ids: &'a [&'a str],
    }
    #[derive(Serialize)]
    struct Data<'a> {
        events: Vec<Entry<'a>>,
    }
    let mut events = Vec::new();
    if !online.is_empty() {
        events.push(Entry {
            name: "online",
            user_ids: online,
        });
    }
    if !offline.is_empty() {
        events.push(Entry {
            name: "offline",
            user_ids: offline,
        });
    }
    envelope(
        "pusher_internal:watchlist_events",
        None,
        Some(Data { events }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_subscribe_frames_of_pusher_js() {
        let text = r#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel_data":"{\"user_id\":\"10\"}","channel":"presence-foobar"}}"#;
        let frame = ClientFrame::parse(text).unwrap();
        assert_eq!(frame.event, "pusher:subscribe");
        let data: SubscribeData = frame.data_as().unwrap();
        assert_eq!(data.channel, "presence-foobar");
        assert_eq!(data.channel_data.as_deref(), Some(r#"{"user_id":"10"}"#));
        assert!(ClientFrame::parse("{not json").is_err());
        assert!(ClientFrame::parse(r#"{"data":{}}"#).is_err());
    }

    #[test]
    fn members_are_canonical() {
        let m = parse_member(r#"{"user_id":10,"user_info":{"name":"A"}}"#, 1024).unwrap();
        assert_eq!(m.user_id, "10");
        assert_eq!(m.user_info.unwrap().get(), r#"{"name":"A"}"#);
        assert_eq!(
            parse_member(r#"{"user_id":1.5}"#, 1024).unwrap_err(),
            MemberDataError::BadUserId
        );
        assert_eq!(
            parse_member(r#"{"user_id":""}"#, 1024).unwrap_err(),
            MemberDataError::UserIdLength
        );
        let long = format!(r#"{{"user_id":"{}"}}"#, "x".repeat(129));
        assert_eq!(
            parse_member(&long, 1024).unwrap_err(),
            MemberDataError::UserIdLength
        );
        assert!(matches!(
            parse_member(r#"{"user_id":"1","user_info":"xxxxxxxxxx"}"#, 5),
            Err(MemberDataError::UserInfoTooLarge(12, 5))
        ));
    }

    #[test]
    fn user_data_rules() {
        let u = parse_user_data(r#"{"id":"10","watchlist":["11","12"]}"#, 1024).unwrap();
        assert_eq!(u.id, "10");
        assert_eq!(u.watchlist, vec!["11", "12"]);
        assert!(parse_user_data(r#"{"id":10}"#, 1024).is_err());
        let many: Vec<String> = (0..150).map(|i| i.to_string()).collect();
        let text = serde_json::json!({"id":"1","watchlist":many}).to_string();
        let u = parse_user_data(&text, 1024).unwrap();
        assert!(u.watchlist_truncated && u.watchlist.len() == WATCHLIST_MAX);
    }

    #[test]
    fn encodes_double_encoded_data() {
        assert_eq!(
            connection_established("1.2", 120),
            r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":120}"}"#
        );
        assert_eq!(
            channel_event(
                "client-typing",
                "presence-x",
                r#"{"typing":true}"#,
                Some("10")
            ),
            r#"{"event":"client-typing","channel":"presence-x","data":"{\"typing\":true}","user_id":"10"}"#
        );
        assert_eq!(
            error(None, "bad", None),
            r#"{"event":"pusher:error","data":{"code":null,"message":"bad"}}"#
        );
        assert_eq!(
            subscription_succeeded("a"),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"a","data":"{}"}"#
        );
        assert_eq!(
            cache_miss("cache-a"),
            r#"{"event":"pusher:cache_miss","channel":"cache-a"}"#
        );
        assert_eq!(
            signin_success(r#"{"id":"1"}"#),
            r#"{"event":"pusher:signin_success","data":{"user_data":"{\"id\":\"1\"}"}}"#
        );
    }

    #[test]
    fn presence_roster_encoding() {
        let info = RawValue::from_string(r#"{"name":"A"}"#.into()).unwrap();
        let members = [("10", Some(info.as_ref())), ("11", None)];
        let text = presence_subscription_succeeded("presence-x", members.iter().copied());
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        let data: serde_json::Value =
            serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["presence"]["count"], 2);
        assert_eq!(data["presence"]["ids"], serde_json::json!(["10", "11"]));
        assert_eq!(data["presence"]["hash"]["10"]["name"], "A");
        assert!(data["presence"]["hash"]["11"].is_null());
    }

    #[test]
    fn client_data_relayed_as_text() {
        let s = RawValue::from_string(r#""already a string""#.into()).unwrap();
        assert_eq!(data_as_text(&s), "already a string");
        let o = RawValue::from_string(r#"{"a":1}"#.into()).unwrap();
        assert_eq!(data_as_text(&o), r#"{"a":1}"#);
    }
}
