//! Every byte format on a relaymesh wire that more than one crate must agree on.
//!
//! - [`channel`]: Pusher channel names, their kinds and limits.
//! - [`frame`]: the Pusher protocol v7 JSON frames, decoded from clients and encoded for them.
//! - [`signing`]: HMAC signatures of channel auth, user sign-in, HTTP API requests and webhooks.
//! - [`codes`]: the Pusher error and close codes, with the reconnect behaviour each one causes.
//!
//! The .proto files of the mesh and the control plane join this crate with the issues that
//! introduce them.

pub mod channel;
pub mod codes;
pub mod frame;
pub mod signing;
