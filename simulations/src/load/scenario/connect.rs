//! `connect`: opens `conns` idle connections (bounded handshake concurrency, sockets spread
//! over loopback source addresses), waits `settle`, reads the server's RSS, closes them and
//! reads it again: connects/s, connect latency, KiB per connection.

use std::time::Duration;

use serde::Serialize;

use crate::load::cpu::{rss_kib, Cpu, Mark};
use crate::load::report::Report;
use crate::load::session::Session;

#[derive(Clone, Debug)]
pub struct Connect {
    pub conns: u64,
    /// Wait after the last connection before reading the server's memory (and after
    /// closing them before reading it again).
    pub settle: Duration,
}

/// The server's resident memory around the connections.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ServerMemory {
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_after_close_kib: u64,
    /// (after − before) / connections.
    pub kib_per_conn: Option<f64>,
}

pub async fn run(c: &Connect, session: &Session) -> Report {
    let mut report = Report::new("connect");
    let pid = session.options.pid;
    let rss_before = rss_kib(pid);
    let before = Mark::now(pid);
    let opened = session.open(c.conns, &|_| None).await;
    let stats = opened.stats.clone();
    report.cpu = Cpu::between(&before, &Mark::now(pid)).per_unit(0, 0, stats.connected);
    tokio::time::sleep(c.settle.min(session.time_left())).await;
    let rss_after = rss_kib(pid);
    let alive = opened.conns.iter().filter(|c| c.is_open()).count() as u64;
    if alive < stats.connected {
        session
            .errors
            .add("closed before the end", stats.connected - alive);
    }
    // Dropping the readers drops the sockets, as the neutral bench's terminate() does.
    drop(opened);
    tokio::time::sleep(c.settle.min(session.time_left())).await;
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        report.server_memory = Some(ServerMemory {
            rss_before_kib: before,
            rss_after_kib: after,
            rss_after_close_kib: rss_kib(pid).unwrap_or(0),
            kib_per_conn: (stats.connected > 0)
                .then(|| (after as f64 - before as f64) / stats.connected as f64),
        });
    }
    if stats.connected == 0 {
        report.error = Some("no connection was established".into());
    }
    report.open = Some(stats);
    report
}
