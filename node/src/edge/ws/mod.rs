//! The WebSocket side: upgrade, framing, the connection task and the protocol session.

pub mod codec;
pub mod connection;
pub mod handshake;
pub mod session;
