//! Links inside one process, for routing tests without sockets: same [`Link`], same suite.

use super::link::{self, Link};

/// Two linked ends: frames sent on one arrive on the other.
pub fn pair(a: &str, b: &str) -> (Link, Link) {
    let (at_a, io_a) = link::new(b.to_owned());
    let (at_b, io_b) = link::new(a.to_owned());
    tokio::spawn(forward(io_a.outgoing, io_b.incoming, io_a.writes));
    tokio::spawn(forward(io_b.outgoing, io_a.incoming, io_b.writes));
    (at_a, at_b)
}

/// Moves every queued frame in one step, like one write of a socket transport.
async fn forward(
    mut outgoing: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    incoming: tokio::sync::mpsc::Sender<bytes::Bytes>,
    writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    while let Some(first) = outgoing.recv().await {
        let mut batch = vec![first];
        while let Ok(next) = outgoing.try_recv() {
            batch.push(next);
        }
        writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for frame in batch {
            if incoming.send(frame).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::link::conformance;
    use super::*;

    #[tokio::test]
    async fn conforms() {
        conformance::all(|| async {
            let (ab, ba) = pair("node-a", "node-b");
            ((), ab, ba)
        })
        .await;
    }
}
