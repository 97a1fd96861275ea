//! Mesh links over QUIC: one connection per pair of nodes, one bidirectional stream per
//! link carrying [`frame`](super::frame)s in order. The first frame each way is the sender's
//! node id (the hello). A writer task packs every frame already queued into one write; the
//! queue is bounded, so a slow peer shows up as [`LinkError::Full`] to the sender instead of
//! growing memory, and the reader pushes back through QUIC flow control when the node
//! does not keep up.
//!
//! Incoming connections are handshaken by the endpoint's own tasks, one per connection and
//! each under [`HANDSHAKE_TIMEOUT`], so a stalled peer holds up nobody else and the node's
//! [`MeshEndpoint::accept`] only takes finished links from a queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;

use super::frame;
use super::link::{self, Link, LinkError, LinkIo, ACCEPT_BACKLOG};
use super::tls::{NodeIdentity, MESH_SERVER_NAME};
use crate::telemetry;

/// A node's QUIC endpoint: accepts links from peers and dials them.
pub struct MeshEndpoint {
    endpoint: quinn::Endpoint,
    node_id: Bytes,
    /// Links the accept loop finished; its end (the endpoint closed or this dropped)
    /// closes the queue.
    accepted: Mutex<mpsc::Receiver<Link>>,
}

/// A link whose peer went silent (a partition, a killed process) is closed after this, so
/// the node notices it, reports it and stops queueing into it; keep-alives make silence
/// mean a broken path, not an idle link.
pub const LINK_SILENCE_MAX: Duration = Duration::from_secs(3);
const KEEP_ALIVE: Duration = Duration::from_millis(500);
/// An incoming connection must finish the QUIC handshake, open its stream and send its
/// hello within this, or it is dropped. Keep-alives keep a peer that connected and then
/// stalls from ever going silent, so without it such a peer would hold its slot for good.
/// Longer than the dialer's own limit (`peers.rs`, `DIAL_TIMEOUT`: 2 s), so this side never
/// gives up first on a dial its peer is still waiting for.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Incoming connections handshaking (or handshaken and waiting for room in the queue) at
/// once; past this they are refused, so peers that never finish cost a bounded amount of
/// memory and tasks. Far above a cluster's size.
const HANDSHAKES_MAX: usize = 64;

fn liveness() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    // 3 s fits in a VarInt of milliseconds.
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(LINK_SILENCE_MAX).ok());
    transport
}

impl MeshEndpoint {
    /// Binds `addr` and starts accepting links; must be called inside a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        node_id: &str,
        identity: &NodeIdentity,
    ) -> Result<MeshEndpoint, LinkError> {
        MeshEndpoint::bind_with(addr, node_id, identity, HANDSHAKE_TIMEOUT)
    }

    fn bind_with(
        addr: SocketAddr,
        node_id: &str,
        identity: &NodeIdentity,
        handshake_timeout: Duration,
    ) -> Result<MeshEndpoint, LinkError> {
        let transport = Arc::new(liveness());
        let mut server = identity.server_config()?;
        server.transport_config(transport.clone());
        let mut client = identity.client_config()?;
        client.transport_config(transport);
        let mut endpoint = quinn::Endpoint::server(server, addr).map_err(LinkError::transport)?;
        endpoint.set_default_client_config(client);
        let node_id = Bytes::copy_from_slice(node_id.as_bytes());
        let (accepted_tx, accepted) = mpsc::channel(ACCEPT_BACKLOG);
        tokio::spawn(accept_loop(
            endpoint.clone(),
            node_id.clone(),
            accepted_tx,
            handshake_timeout,
        ));
        Ok(MeshEndpoint {
            endpoint,
            node_id,
            accepted: Mutex::new(accepted),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Opens a link to the node at `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Link, LinkError> {
        let connecting = self
            .endpoint
            .connect(addr, MESH_SERVER_NAME)
            .map_err(LinkError::transport)?;
        let connection = connecting.await.map_err(LinkError::transport)?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(LinkError::transport)?;
        write_frames(&mut send, std::slice::from_ref(&self.node_id)).await?;
        let peer = read_frame(&mut recv).await?.ok_or(LinkError::NoHello)?;
        Ok(start(connection, send, recv, peer))
    }

    /// The next link a peer opened; `None` once the endpoint is closed. Cancel-safe: the
    /// handshakes run in the endpoint's own tasks, and a finished link waits in the queue.
    pub async fn accept(&self) -> Option<Link> {
        self.accepted.lock().await.recv().await
    }

    /// Closes every connection and ends the accept loop and its handshakes.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"node stopping");
    }
}

/// Hands each incoming connection to its own handshake task until the endpoint is closed
/// or the [`MeshEndpoint`] dropped. Handshakes still running then are aborted.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    node_id: Bytes,
    accepted: mpsc::Sender<Link>,
    handshake_timeout: Duration,
) {
    let mut handshakes = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            // Dropped without close: this task's clone must not keep the endpoint running.
            () = accepted.closed() => break,
        };
        while handshakes.try_join_next().is_some() {}
        if handshakes.len() >= HANDSHAKES_MAX {
            tracing::debug!(remote = %incoming.remote_address(), "too many mesh handshakes: refused");
            count_accept("refused");
            incoming.refuse();
            continue;
        }
        let node_id = node_id.clone();
        let accepted = accepted.clone();
        handshakes.spawn(async move {
            let remote = incoming.remote_address();
            match tokio::time::timeout(handshake_timeout, handshake(incoming, &node_id)).await {
                Ok(Ok(link)) => {
                    count_accept("ok");
                    // Not under the timeout: waiting here means the node is busy, not that
                    // the peer stalls.
                    let _ = accepted.send(link).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "refused a mesh link");
                    count_accept("failed");
                }
                Err(_) => {
                    tracing::debug!(%remote, "a mesh peer did not finish its handshake in time");
                    count_accept("timeout");
                }
            }
        });
    }
}

fn count_accept(result: &'static str) {
    metrics::counter!(telemetry::MESH_ACCEPTS, "result" => result).increment(1);
}

/// The accepting side of a link: QUIC (checking the peer's certificate), the peer's
/// stream, its hello, then ours.
async fn handshake(incoming: quinn::Incoming, node_id: &Bytes) -> Result<Link, LinkError> {
    let connection = incoming.await.map_err(LinkError::transport)?;
    let (mut send, mut recv) = connection.accept_bi().await.map_err(LinkError::transport)?;
    let peer = read_frame(&mut recv).await?.ok_or(LinkError::NoHello)?;
    write_frames(&mut send, std::slice::from_ref(node_id)).await?;
    Ok(start(connection, send, recv, peer))
}

async fn write_frames(send: &mut SendStream, frames: &[Bytes]) -> Result<(), LinkError> {
    let mut buf = BytesMut::new();
    for f in frames {
        frame::encode(f, &mut buf)?;
    }
    send.write_all(&buf).await.map_err(LinkError::transport)
}

/// The next frame, or `None` when the peer finished the stream cleanly.
async fn read_frame(recv: &mut RecvStream) -> Result<Option<Bytes>, LinkError> {
    let mut header = [0u8; 4];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(LinkError::transport(e)),
    }
    let len = frame::length(header)?;
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload)
        .await
        .map_err(LinkError::transport)?;
    Ok(Some(payload.into()))
}

/// Starts the writer (packs queued frames per write) and reader tasks of a link.
fn start(
    connection: quinn::Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    peer: Bytes,
) -> Link {
    let (link, io) = link::new(String::from_utf8_lossy(&peer).into_owned());
    let LinkIo {
        mut outgoing,
        incoming,
        writes,
    } = io;
    let writer_connection = connection.clone();
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        loop {
            let first = tokio::select! {
                first = outgoing.recv() => match first {
                    Some(first) => first,
                    None => break,
                },
                // The peer or the network ended the connection: the node's sends fail at once.
                _ = writer_connection.closed() => break,
            };
            if frame::pack(first, &mut || outgoing.try_recv().ok(), &mut buf).is_err() {
                break;
            }
            if send.write_all(&buf).await.is_err() {
                break;
            }
            writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // The node dropped its side: say so to the peer.
        let _ = send.finish();
        writer_connection.close(0u32.into(), b"link closed");
    });
    tokio::spawn(async move {
        while let Ok(Some(frame)) = read_frame(&mut recv).await {
            if incoming.send(frame).await.is_err() {
                break;
            }
        }
        connection.close(0u32.into(), b"link closed");
    });
    link
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::link::conformance;
    use super::super::tls::ClusterCa;
    use super::*;

    fn endpoint(ca: &ClusterCa, id: &str) -> MeshEndpoint {
        endpoint_with(ca, id, HANDSHAKE_TIMEOUT)
    }

    fn endpoint_with(ca: &ClusterCa, id: &str, handshake_timeout: Duration) -> MeshEndpoint {
        let identity = ca.issue(id).unwrap();
        let addr = "127.0.0.1:0".parse().unwrap();
        MeshEndpoint::bind_with(addr, id, &identity, handshake_timeout).unwrap()
    }

    async fn pair(ca: &ClusterCa) -> (MeshEndpoint, MeshEndpoint, Link, Link) {
        let a = endpoint(ca, "node-a");
        let b = endpoint(ca, "node-b");
        let addr = b.local_addr().unwrap();
        let (dialed, accepted) = tokio::join!(a.connect(addr), b.accept());
        (a, b, dialed.unwrap(), accepted.unwrap())
    }

    /// A QUIC connection with a valid certificate that goes no further: no stream, no hello.
    async fn stalled(from: &MeshEndpoint, to: SocketAddr) -> quinn::Connection {
        let connecting = from.endpoint.connect(to, MESH_SERVER_NAME).unwrap();
        connecting.await.unwrap()
    }

    #[tokio::test]
    async fn conforms() {
        let ca = ClusterCa::generate().unwrap();
        conformance::all(|| async {
            let (a, b, ab, ba) = pair(&ca).await;
            ((a, b), ab, ba)
        })
        .await;
    }

    #[tokio::test]
    async fn a_node_of_another_cluster_is_refused() {
        let ca = ClusterCa::generate().unwrap();
        let other = ClusterCa::generate().unwrap();
        let peer = endpoint(&ca, "peer");
        let stranger = endpoint(&other, "stranger");
        assert!(
            stranger.connect(peer.local_addr().unwrap()).await.is_err(),
            "a stranger must not reach a peer"
        );
        assert!(
            peer.connect(stranger.local_addr().unwrap()).await.is_err(),
            "a peer must not trust a stranger"
        );
        for refusing in [peer, stranger] {
            let accepted = tokio::time::timeout(Duration::from_millis(200), refusing.accept());
            assert!(accepted.await.is_err(), "a link was accepted");
        }
    }

    /// Peers that connect and then stall (one never opens its stream, one sends half a
    /// hello) hold up neither a good peer nor their slot past the handshake timeout.
    #[tokio::test]
    async fn a_stalled_peer_blocks_no_one_and_is_dropped() {
        let ca = ClusterCa::generate().unwrap();
        let timeout = Duration::from_secs(1);
        let b = endpoint_with(&ca, "node-b", timeout);
        let addr = b.local_addr().unwrap();
        let staller = endpoint(&ca, "staller");
        // Before the connections, so no handshake timeout can have started earlier.
        let stalled_since = Instant::now();
        let no_stream = stalled(&staller, addr).await;
        let half_hello = stalled(&staller, addr).await;
        let (mut send, _recv) = half_hello.open_bi().await.unwrap();
        send.write_all(&[0, 0]).await.unwrap();

        let a = endpoint(&ca, "node-a");
        let (dialed, accepted) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(a.connect(addr), b.accept())
        })
        .await
        .expect("the good peer was not accepted while others stalled");
        let (mut ab, ba) = (dialed.unwrap(), accepted.unwrap());
        assert_eq!(ba.peer(), "node-a");
        for conn in [&no_stream, &half_hello] {
            assert!(
                conn.close_reason().is_none(),
                "the good peer was only accepted after a stalled one was dropped"
            );
        }
        ba.send(Bytes::from_static(b"hi")).await.unwrap();
        assert_eq!(ab.inbound.recv().await.unwrap().as_ref(), b"hi");

        for conn in [no_stream, half_hello] {
            let closed = tokio::time::timeout(timeout * 3, conn.closed()).await;
            assert!(closed.is_ok(), "a stalled peer was never dropped");
            assert!(
                stalled_since.elapsed() >= timeout,
                "a stalled peer was dropped before its handshake timeout"
            );
        }
    }

    /// Giving up on `accept` while a dial is in flight, again and again, loses no link.
    #[tokio::test]
    async fn a_cancelled_accept_loses_no_link() {
        let ca = ClusterCa::generate().unwrap();
        let a = endpoint(&ca, "node-a");
        let b = endpoint(&ca, "node-b");
        let addr = b.local_addr().unwrap();
        let dialing = tokio::spawn(async move {
            let link = a.connect(addr).await;
            (a, link)
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut cancelled = 0;
        // Each call is polled once and dropped if it has nothing yet; the first one always
        // is, as the dial has not started.
        let ba = loop {
            if let Ok(accepted) = tokio::time::timeout(Duration::ZERO, b.accept()).await {
                break accepted.unwrap();
            }
            cancelled += 1;
            assert!(Instant::now() < deadline, "the link was never accepted");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        assert!(cancelled > 0);
        let (_a, dialed) = dialing.await.unwrap();
        let mut ab = dialed.unwrap();
        assert_eq!(ba.peer(), "node-a");
        ba.send(Bytes::from_static(b"hi")).await.unwrap();
        assert_eq!(ab.inbound.recv().await.unwrap().as_ref(), b"hi");
    }

    /// Closing ends `accept` (so the accept loop and every handshake task are gone: they
    /// hold the queue's senders) even with a handshake in progress.
    #[tokio::test]
    async fn closing_ends_accepting_and_handshakes() {
        let ca = ClusterCa::generate().unwrap();
        let b = endpoint(&ca, "node-b");
        let staller = endpoint(&ca, "staller");
        let conn = stalled(&staller, b.local_addr().unwrap()).await;
        b.close();
        let accepted = tokio::time::timeout(Duration::from_secs(2), b.accept()).await;
        assert!(matches!(accepted, Ok(None)), "accept did not end on close");
        let closed = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        assert!(closed.is_ok(), "a handshake in progress outlived close");
    }

    /// Dropped without `close`, the endpoint stops answering: the accept loop's handle on
    /// it does not keep it running.
    #[tokio::test]
    async fn a_dropped_endpoint_accepts_nothing() {
        let ca = ClusterCa::generate().unwrap();
        let a = endpoint(&ca, "node-a");
        let b = endpoint(&ca, "node-b");
        let addr = b.local_addr().unwrap();
        drop(b);
        let dialed = tokio::time::timeout(Duration::from_millis(500), a.connect(addr)).await;
        assert!(
            !matches!(dialed, Ok(Ok(_))),
            "a dropped endpoint still accepted a link"
        );
    }
}
