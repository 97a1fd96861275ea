//! Integration tests of the control plane (issue 4): a real control plane on a loopback
//! port with its own data dir, in-process edge nodes following it, raw gRPC registrants and
//! watchers, and the `relaymesh-control ctl` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod auth;
mod cli_apps;
mod convergence;
mod fencing;
mod lease;
mod mesh;
mod ops;
mod rebalance;
mod restart;
mod routing;
mod save_failure;
mod watch;
