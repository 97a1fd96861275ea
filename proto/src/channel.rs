//! Channel names (protocol §5): which characters are allowed, how long a name may be and
//! what its prefix makes of it.

use thiserror::Error;

/// Longest channel name accepted. The Pusher docs say 164, but the official server
/// libraries send up to 200, so a name they accept must not be refused here.
pub const CHANNEL_NAME_MAX: usize = 200;

/// Longest event name accepted (the official libraries check the same bound).
pub const EVENT_NAME_MAX: usize = 200;

/// Prefix of the per-user channels that pusher-js subscribes to after sign-in.
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// What a subscriber must prove before it may subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelAuth {
    /// Anyone may subscribe.
    Public,
    /// A `{socket_id}:{channel}` signature.
    Private,
    /// A signature over the socket, the channel and the presence `channel_data`.
    Presence,
    /// The socket must be signed in as the user the channel names.
    ServerToUser,
}

/// The behaviour a channel's prefix selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelKind {
    pub auth: ChannelAuth,
    /// `private-encrypted-`: payloads are end-to-end encrypted; client events are refused.
    pub encrypted: bool,
    /// `cache-` forms: the last HTTP-published event is replayed to new subscribers.
    pub cache: bool,
}

impl ChannelKind {
    /// Classifies a name by prefix, in the order of protocol §5.2. It does not validate.
    pub fn of(name: &str) -> Self {
        let kind = |auth, encrypted, cache| ChannelKind {
            auth,
            encrypted,
            cache,
        };
        if name.starts_with(SERVER_TO_USER_PREFIX) {
            kind(ChannelAuth::ServerToUser, false, false)
        } else if name.starts_with("private-encrypted-cache-") {
            kind(ChannelAuth::Private, true, true)
        } else if name.starts_with("private-encrypted-") {
            kind(ChannelAuth::Private, true, false)
        } else if name.starts_with("private-cache-") {
            kind(ChannelAuth::Private, false, true)
        } else if name.starts_with("private-") {
            kind(ChannelAuth::Private, false, false)
        } else if name.starts_with("presence-cache-") {
            kind(ChannelAuth::Presence, false, true)
        } else if name.starts_with("presence-") {
            kind(ChannelAuth::Presence, false, false)
        } else if name.starts_with("cache-") {
            kind(ChannelAuth::Public, false, true)
        } else {
            kind(ChannelAuth::Public, false, false)
        }
    }

    pub fn is_presence(self) -> bool {
        self.auth == ChannelAuth::Presence
    }

    /// Client events are allowed on private and presence channels that are not encrypted.
    pub fn allows_client_events(self) -> bool {
        matches!(self.auth, ChannelAuth::Private | ChannelAuth::Presence) && !self.encrypted
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {0} characters long; at most {CHANNEL_NAME_MAX} are allowed")]
    TooLong(usize),
    #[error("channel name contains {0:?}; allowed are A-Z a-z 0-9 _ - = @ , . ;")]
    InvalidCharacter(char),
    #[error("channel names starting with '#' are reserved")]
    Reserved,
}

/// Whether `c` may appear in a channel name or user id.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';')
}

/// Validates a channel name and returns its kind.
pub fn validate_channel_name(name: &str) -> Result<ChannelKind, ChannelNameError> {
    if name.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if name.len() > CHANNEL_NAME_MAX {
        return Err(ChannelNameError::TooLong(name.len()));
    }
    let rest = match name.strip_prefix(SERVER_TO_USER_PREFIX) {
        Some("") => return Err(ChannelNameError::Empty),
        Some(user_id) => user_id,
        None if name.starts_with('#') => return Err(ChannelNameError::Reserved),
        None => name,
    };
    if let Some(bad) = rest.chars().find(|c| !is_name_char(*c)) {
        return Err(ChannelNameError::InvalidCharacter(bad));
    }
    Ok(ChannelKind::of(name))
}

/// The user id a `#server-to-user-{id}` channel belongs to.
pub fn server_to_user_id(name: &str) -> Option<&str> {
    name.strip_prefix(SERVER_TO_USER_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_prefix_order() {
        let k = ChannelKind::of("private-encrypted-cache-x");
        assert!(k.encrypted && k.cache && k.auth == ChannelAuth::Private);
        assert!(!k.allows_client_events());
        let k = ChannelKind::of("presence-cache-room");
        assert!(k.is_presence() && k.cache && k.allows_client_events());
        let k = ChannelKind::of("cache-news");
        assert!(k.auth == ChannelAuth::Public && k.cache && !k.allows_client_events());
        assert_eq!(ChannelKind::of("private-x").auth, ChannelAuth::Private);
        assert_eq!(ChannelKind::of("news").auth, ChannelAuth::Public);
        assert_eq!(
            ChannelKind::of("#server-to-user-10").auth,
            ChannelAuth::ServerToUser
        );
        // A public channel that merely contains a prefix later in its name.
        assert_eq!(ChannelKind::of("x-private-y").auth, ChannelAuth::Public);
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_channel_name("a-Z_0=@,.;").is_ok());
        assert_eq!(validate_channel_name(""), Err(ChannelNameError::Empty));
        assert_eq!(
            validate_channel_name("a b"),
            Err(ChannelNameError::InvalidCharacter(' '))
        );
        assert_eq!(
            validate_channel_name("#secret"),
            Err(ChannelNameError::Reserved)
        );
        assert_eq!(
            validate_channel_name("#server-to-user-"),
            Err(ChannelNameError::Empty)
        );
        assert!(validate_channel_name("#server-to-user-10").is_ok());
        assert!(validate_channel_name(&"a".repeat(200)).is_ok());
        assert_eq!(
            validate_channel_name(&"a".repeat(201)),
            Err(ChannelNameError::TooLong(201))
        );
        assert_eq!(server_to_user_id("#server-to-user-10"), Some("10"));
    }
}
