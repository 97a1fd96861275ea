//! Integration tests: a real node on a loopback port, driven by real WebSocket and HTTP
//! clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod bad_input;
mod channels;
mod client_events;
mod http_api;
mod presence;
mod webhooks;
