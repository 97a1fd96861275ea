//! The Pusher protocol state of one connection: its subscriptions, its signed-in user and
//! its client-event budget. Plain synchronous code: it takes one text message and acts on
//! the hub and on its own send queue; the connection task around it owns the socket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use relaymesh_proto::channel::{self, ChannelAuth, ChannelKind, EVENT_NAME_MAX};
use relaymesh_proto::codes::ErrorCode;
use relaymesh_proto::frame::{
    self, ClientFrame, PresenceMember, SigninData, SubscribeData, UnsubscribeData,
};
use relaymesh_proto::mesh::envelope::Body;
use relaymesh_proto::mesh::{self, Publish, Subscribe};
use relaymesh_proto::signing;
use serde_json::value::RawValue;

use crate::app::App;
use crate::frames;
use crate::outbox::Conn;
use crate::shared::Shared;
use crate::webhooks::WebhookEvent;
use crate::{route, telemetry};

/// Most channels one connection may hold; more are refused with `LimitReached`.
pub const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 1_000;

/// A signed-in user of this connection.
struct SignedIn {
    id: Box<str>,
    info: Option<Box<RawValue>>,
    /// The user ids this connection watches (when the app has watchlist events).
    watchlist: Vec<Box<str>>,
}

/// Client events allowed per second, refilled continuously.
struct TokenBucket {
    tokens: f32,
    refilled: Instant,
}

impl TokenBucket {
    fn take(&mut self, rate: u32, now: Instant) -> bool {
        let rate = rate as f32;
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f32();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct Session {
    shared: Arc<Shared>,
    app: Arc<App>,
    conn: Arc<Conn>,
    /// Channel → the presence user id this socket joined it as.
    subscriptions: HashMap<Box<str>, Option<Box<str>>>,
    user: Option<Box<SignedIn>>,
    client_events: TokenBucket,
    /// Signed in, or holds a private / presence subscription ("authorized connections").
    authorized: bool,
}

impl Session {
    pub fn new(shared: Arc<Shared>, app: Arc<App>, conn: Arc<Conn>) -> Session {
        let rate = app.config().client_event_rate as f32;
        Session {
            shared,
            app,
            conn,
            subscriptions: HashMap::new(),
            user: None,
            client_events: TokenBucket {
                tokens: rate,
                refilled: Instant::now(),
            },
            authorized: false,
        }
    }

    pub fn is_authorized(&self) -> bool {
        self.authorized
    }

    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    fn error(
        &self,
        code: Option<ErrorCode>,
        message: &str,
        channel: Option<&str>,
        reason: &'static str,
    ) {
        let code = code.map(ErrorCode::as_u16);
        telemetry::count_error(code, reason);
        self.conn.push_text(&frame::error(code, message, channel));
    }

    fn subscription_error(
        &self,
        channel: &str,
        kind: &str,
        message: &str,
        status: u16,
        reason: &'static str,
    ) {
        telemetry::count_error(Some(status), reason);
        self.conn
            .push_text(&frame::subscription_error(channel, kind, message, status));
    }

    /// Handles one text message from the client.
    pub fn on_text(&mut self, text: &str) {
        self.app.count_received();
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(e) => return self.error(None, &e.to_string(), None, "malformed_json"),
        };
        match &*frame.event {
            "pusher:ping" => {
                self.conn.push_text(frame::PONG);
            }
            "pusher:pong" => {}
            "pusher:subscribe" => match frame.data_as::<SubscribeData>() {
                Ok(data) => self.subscribe(data),
                Err(e) => self.error(
                    None,
                    &format!("Invalid pusher:subscribe: {e}"),
                    None,
                    "bad_subscribe",
                ),
            },
            "pusher:unsubscribe" => match frame.data_as::<UnsubscribeData>() {
                Ok(data) => self.unsubscribe(&data.channel),
                Err(e) => self.error(
                    None,
                    &format!("Invalid pusher:unsubscribe: {e}"),
                    None,
                    "bad_unsubscribe",
                ),
            },
            "pusher:signin" => match frame.data_as::<SigninData>() {
                Ok(data) => self.sign_in(data),
                Err(e) => self.error(
                    Some(ErrorCode::Unauthorized),
                    &format!("Invalid pusher:signin: {e}"),
                    None,
                    "bad_signin",
                ),
            },
            name if name.starts_with("client-") => self.client_event(&frame),
            name => self.error(
                None,
                &format!("Unsupported event {name:?}"),
                None,
                "unknown_event",
            ),
        }
    }

    fn subscribe(&mut self, data: SubscribeData) {
        let name = data.channel.as_str();
        let kind = match channel::validate_channel_name(name) {
            Ok(kind) => kind,
            Err(e) => {
                return self.subscription_error(
                    name,
                    "InvalidChannel",
                    &e.to_string(),
                    400,
                    "invalid_channel",
                )
            }
        };
        let repeated = self.subscriptions.contains_key(name);
        if !repeated && self.subscriptions.len() >= SUBSCRIPTIONS_PER_CONNECTION_MAX {
            let msg = format!(
                "A connection may hold at most {SUBSCRIPTIONS_PER_CONNECTION_MAX} subscriptions"
            );
            return self.subscription_error(
                name,
                "LimitReached",
                &msg,
                4100,
                "too_many_subscriptions",
            );
        }
        let member = match self.authorize(name, kind, &data) {
            Ok(member) => member,
            Err((status, message)) => {
                let kind = if status == 400 {
                    "InvalidChannelData"
                } else {
                    "AuthError"
                };
                return self.subscription_error(
                    name,
                    kind,
                    &message,
                    status,
                    "subscription_refused",
                );
            }
        };
        let user_id = member.as_ref().map(|m| m.user_id.clone().into_boxed_str());
        if kind.auth == ChannelAuth::ServerToUser {
            // The user's sockets already receive its channel from the sign-in.
            self.conn.push_text(&frame::subscription_succeeded(name));
        } else {
            let member = member.map(|m| mesh::Member {
                user_id: m.user_id,
                info: m
                    .user_info
                    .map(|i| bytes::Bytes::copy_from_slice(i.get().as_bytes()))
                    .unwrap_or_default(),
            });
            self.join(name, member, None);
        }
        if !repeated {
            self.subscriptions.insert(name.into(), user_id);
        }
        self.authorized |= matches!(kind.auth, ChannelAuth::Private | ChannelAuth::Presence);
    }

    /// Asks the channel's owner to add this socket; the hub holds it as pending until the
    /// answer (or sends `on_accept` instead of the owner's frames). An owner that cannot
    /// be reached yet is asked again until the subscription times out (`route.rs`).
    fn join(
        &self,
        channel: &str,
        member: Option<mesh::Member>,
        on_accept: Option<Vec<bytes::Bytes>>,
    ) {
        let socket = self.conn.socket_id;
        let now = self.shared.now();
        let attempt = self
            .app
            .hub
            .begin(now, channel, &self.conn, member.clone(), on_accept);
        let body = Body::Subscribe(Subscribe {
            socket: Some(socket.into()),
            member,
            attempt,
        });
        if let Err(e) = route::to_owner(&self.shared, &self.app, channel, body) {
            tracing::debug!(channel, error = %e, "subscription waits for its owner");
            self.app.hub.mark_unsent(channel, socket);
        }
    }

    /// Takes this socket off `channel` here and at its owner.
    fn leave(&self, channel: &str) {
        // Only the sign-in holds a user's channel at its owner (see `end`).
        if ChannelKind::of(channel).auth != ChannelAuth::ServerToUser {
            self.leave_owner(channel);
        }
    }

    fn leave_owner(&self, channel: &str) {
        if self.app.hub.unsubscribe(channel, self.conn.socket_id) {
            route::leave(&self.shared, &self.app, channel, self.conn.socket_id);
        }
    }

    /// Checks the subscription's proof for its channel kind; returns the presence member.
    fn authorize(
        &self,
        channel: &str,
        kind: ChannelKind,
        data: &SubscribeData,
    ) -> Result<Option<PresenceMember>, (u16, String)> {
        let socket_id = self.conn.socket_id.to_string();
        let config = self.app.config();
        let auth = data.auth.as_deref().unwrap_or("");
        let check = |channel_data: Option<&str>| {
            let to_sign = signing::channel_string_to_sign(&socket_id, channel, channel_data);
            signing::verify_auth(&config.key, &config.secret, auth, &to_sign)
                .map_err(|e| (401, e.to_string()))
        };
        match kind.auth {
            ChannelAuth::Public => Ok(None),
            ChannelAuth::Private => check(None).map(|()| None),
            ChannelAuth::Presence => match (data.channel_data.as_deref(), &self.user) {
                (Some(channel_data), _) => {
                    check(Some(channel_data))?;
                    frame::parse_member(channel_data, config.max_user_info_bytes)
                        .map(Some)
                        .map_err(|e| (400, e.to_string()))
                }
                (None, Some(user)) => {
                    check(None)?;
                    Ok(Some(PresenceMember {
                        user_id: user.id.to_string(),
                        user_info: user.info.clone(),
                    }))
                }
                (None, None) => Err((
                    400,
                    "Presence channels need channel_data or a signed-in user".into(),
                )),
            },
            ChannelAuth::ServerToUser => {
                let owner = channel::server_to_user_id(channel);
                match &self.user {
                    Some(user) if owner == Some(&*user.id) => Ok(None),
                    _ => Err((
                        403,
                        "Only the signed-in user may subscribe to its own channel".into(),
                    )),
                }
            }
        }
    }

    fn unsubscribe(&mut self, channel: &str) {
        if self.subscriptions.remove(channel).is_some() {
            self.leave(channel);
        }
    }

    fn sign_in(&mut self, data: SigninData) {
        let socket_id = self.conn.socket_id.to_string();
        let config = self.app.config();
        let to_sign = signing::user_string_to_sign(&socket_id, &data.user_data);
        if let Err(e) = signing::verify_auth(&config.key, &config.secret, &data.auth, &to_sign) {
            return self.error(
                Some(ErrorCode::Unauthorized),
                &e.to_string(),
                None,
                "signin_refused",
            );
        }
        let user = match frame::parse_user_data(&data.user_data, config.max_user_info_bytes) {
            Ok(user) => user,
            Err(e) => {
                return self.error(
                    Some(ErrorCode::Unauthorized),
                    &e.to_string(),
                    None,
                    "signin_refused",
                )
            }
        };
        match &self.user {
            Some(current) if *current.id != user.id => {
                let msg = "This connection is already signed in as another user";
                return self.error(Some(ErrorCode::Unauthorized), msg, None, "signin_refused");
            }
            Some(_) => {
                self.conn.push_text(&frame::signin_success(&data.user_data));
                return;
            }
            None => {}
        }
        let mut answer = vec![frames::text_frame(&frame::signin_success(&data.user_data))];
        let watchlist: Vec<Box<str>> = if config.watchlist_events {
            user.watchlist.into_iter().map(Into::into).collect()
        } else {
            Vec::new()
        };
        if !watchlist.is_empty() {
            answer.push(self.app.watch(&watchlist, &self.conn));
        }
        // signin_success waits for the owner of the user's channel, so a server-to-user
        // event sent after it reaches this socket on any node.
        self.join(&user_channel(&user.id), None, Some(answer));
        self.app.sign_in(&user.id);
        self.user = Some(Box::new(SignedIn {
            id: user.id.into(),
            info: user.user_info,
            watchlist,
        }));
        self.authorized = true;
        if user.watchlist_truncated {
            let msg = format!(
                "Watchlist limit exceeded: only the first {} ids were accepted",
                frame::WATCHLIST_MAX
            );
            self.error(
                Some(ErrorCode::WatchlistLimit),
                &msg,
                None,
                "watchlist_limit",
            );
        }
    }

    fn client_event(&mut self, frame: &ClientFrame<'_>) {
        let event = &*frame.event;
        let channel = frame.channel.as_deref().unwrap_or("");
        let config = self.app.config();
        let reject = |session: &Self, message: &str, reason| {
            let channel = (!channel.is_empty()).then_some(channel);
            session.error(
                Some(ErrorCode::ClientEventRejected),
                message,
                channel,
                reason,
            );
        };
        if !config.client_events {
            return reject(
                self,
                "Client events are not enabled for this app",
                "client_events_disabled",
            );
        }
        if event.len() > EVENT_NAME_MAX {
            return reject(self, "Event name is too long", "client_event_name");
        }
        let subscribed = self.app.hub.is_subscribed(channel, self.conn.socket_id);
        let Some(user_id) = self.subscriptions.get(channel).filter(|_| subscribed) else {
            return reject(
                self,
                "Client events need a subscription to the channel",
                "client_event_not_subscribed",
            );
        };
        let kind = ChannelKind::of(channel);
        if !kind.allows_client_events() {
            return reject(
                self,
                "Client events are only allowed on private and presence channels",
                "client_event_channel",
            );
        }
        let Some(raw) = frame.data else {
            return reject(self, "Client event has no data", "client_event_no_data");
        };
        let data = frame::data_as_text(raw);
        if data.len() > config.max_event_bytes {
            let msg = format!("Event data is over {} bytes", config.max_event_bytes);
            return reject(self, &msg, "client_event_too_large");
        }
        if !self
            .client_events
            .take(config.client_event_rate, Instant::now())
        {
            return reject(
                self,
                "Client event rejected due to rate limit",
                "client_event_rate_limit",
            );
        }
        let user_id = if kind.is_presence() {
            user_id.as_deref()
        } else {
            None
        };
        let encoded = frames::text_frame(&frame::channel_event(event, channel, &data, user_id));
        let publish = Body::Publish(Publish {
            frame: encoded,
            except: Some(self.conn.socket_id.into()),
            ..Publish::default()
        });
        if let Err(e) = route::to_owner(&self.shared, &self.app, channel, publish) {
            return reject(self, &e.to_string(), "owner_unreachable");
        }
        metrics::counter!(telemetry::EVENTS_PUBLISHED, "app" => self.app.id.clone(), "source" => "client").increment(1);
        self.app.webhooks.raise(WebhookEvent::ClientEvent {
            channel: channel.into(),
            event: event.into(),
            data: data.into(),
            socket_id: self.conn.socket_id.to_string().into(),
            user_id: user_id.map(Into::into),
        });
    }

    /// Leaves every channel and signs out; called once when the connection ends.
    pub fn end(&mut self) {
        // In name order, so that a replayed run sends the same messages.
        let mut channels: Vec<Box<str>> = std::mem::take(&mut self.subscriptions)
            .into_keys()
            .collect();
        channels.sort_unstable();
        for channel in channels {
            self.leave(&channel);
        }
        if let Some(user) = self.user.take() {
            self.leave_owner(&user_channel(&user.id));
            self.app.unwatch(&user.watchlist, self.conn.socket_id);
            self.app.sign_out(&user.id);
        }
        self.app.release(self.conn.socket_id);
    }
}

/// The channel a signed-in user's sockets hold at its owner: server-to-user events and
/// terminate_connections reach them through it on every node.
fn user_channel(user_id: &str) -> String {
    format!("{}{user_id}", channel::SERVER_TO_USER_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_bucket_allows_rate_per_second() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket {
            tokens: 10.0,
            refilled: t0,
        };
        assert_eq!((0..15).filter(|_| bucket.take(10, t0)).count(), 10);
        assert!(bucket.take(10, t0 + Duration::from_millis(100)));
        assert!(!bucket.take(10, t0 + Duration::from_millis(100)));
    }
}
