//! Pusher error codes (protocol §4). A code decides what pusher-js does next, so each one is
//! chosen for its client behaviour, not only for its message.

/// Codes sent in `pusher:error` frames and as WebSocket close codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The app only accepts TLS connections; the client switches to wss.
    TlsOnly = 4000,
    /// No app has this key; the client gives up.
    AppNotFound = 4001,
    /// The app is disabled; the client gives up.
    AppDisabled = 4003,
    /// The app is over its connection quota; the client gives up.
    OverConnectionQuota = 4004,
    /// The WebSocket path is not `/app/{key}`.
    PathNotFound = 4005,
    /// The `version` query parameter is malformed.
    InvalidVersion = 4006,
    /// The `protocol` query parameter names a version this server does not speak.
    UnsupportedProtocol = 4007,
    /// No `protocol` query parameter.
    NoProtocol = 4008,
    /// Unauthorized: bad sign-in, sign-in timeout, or the app terminated the user.
    Unauthorized = 4009,
    /// Over capacity or a slow consumer: the client retries after a pause.
    OverCapacity = 4100,
    /// Generic "reconnect now", used when a node drains.
    ReconnectImmediately = 4200,
    /// The client did not answer a `pusher:ping` in time.
    PongNotReceived = 4201,
    /// A client event was rejected (rate limit, size, channel type). In-band only.
    ClientEventRejected = 4301,
    /// Watchlist over its limit: only the first ids were accepted. In-band only.
    WatchlistLimit = 4302,
}

impl ErrorCode {
    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// Whether this code is sent only inside a `pusher:error` frame on an open connection.
    /// Closing a socket with a 4300-range code makes pusher-js disconnect for good.
    pub const fn is_in_band_only(self) -> bool {
        self.as_u16() >= 4300
    }
}

/// WebSocket close codes of RFC 6455 used by the node itself.
pub mod ws_close {
    /// The peer broke the framing rules (unmasked frame, bad opcode, reserved bits).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame or message larger than the node accepts.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_4300_range_is_in_band_only() {
        assert!(ErrorCode::ClientEventRejected.is_in_band_only());
        assert!(ErrorCode::WatchlistLimit.is_in_band_only());
        assert!(!ErrorCode::OverCapacity.is_in_band_only());
        assert!(!ErrorCode::Unauthorized.is_in_band_only());
        assert_eq!(ErrorCode::PongNotReceived.as_u16(), 4201);
    }
}
