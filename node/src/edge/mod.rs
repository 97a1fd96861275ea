//! Client-facing termination: WebSocket sessions and the HTTP API, served on one port.

pub mod http;
pub mod ws;
