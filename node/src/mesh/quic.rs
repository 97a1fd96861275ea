//! Mesh links over QUIC: one connection per pair of nodes, one bidirectional stream per
//! link carrying [`frame`](super::frame)s in order. The first frame each way is the sender's
//! node id (the hello). A writer task packs every frame already queued into one write; the
//! queue is bounded, so a slow peer shows up as [`LinkError::Full`] to the sender instead of
//! growing memory, and the reader pushes back through QUIC flow control when the node
//! does not keep up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};
use thiserror::Error;
use tokio::sync::mpsc;

use super::frame::{self, FrameError, FRAME_BYTES_MAX};
use super::tls::{NodeIdentity, TlsError, MESH_SERVER_NAME};

/// Frames queued towards one peer before [`Link::try_send`] answers `Full`.
pub const SEND_QUEUE_FRAMES: usize = 1024;
/// Frames received and not yet taken by the node before the link stops reading.
pub const RECEIVE_QUEUE_FRAMES: usize = 1024;

#[derive(Debug, Error)]
pub enum LinkError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot bind the mesh endpoint: {0}")]
    Bind(std::io::Error),
    #[error("cannot dial: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the peer sent no hello")]
    NoHello,
    #[error("the send queue is full: the peer is not keeping up")]
    Full,
    #[error("the link is closed")]
    Closed,
}

/// A node's QUIC endpoint: accepts links from peers and dials them.
pub struct MeshEndpoint {
    endpoint: quinn::Endpoint,
    node_id: Bytes,
}

impl MeshEndpoint {
    pub fn bind(
        addr: SocketAddr,
        node_id: &str,
        identity: &NodeIdentity,
    ) -> Result<MeshEndpoint, LinkError> {
        let mut endpoint =
            quinn::Endpoint::server(identity.server_config()?, addr).map_err(LinkError::Bind)?;
        endpoint.set_default_client_config(identity.client_config()?);
        Ok(MeshEndpoint {
            endpoint,
            node_id: Bytes::copy_from_slice(node_id.as_bytes()),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Opens a link to the node at `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Link, LinkError> {
        let connection = self.endpoint.connect(addr, MESH_SERVER_NAME)?.await?;
        let (mut send, mut recv) = connection.open_bi().await?;
        write_frames(&mut send, std::slice::from_ref(&self.node_id)).await?;
        let peer = read_frame(&mut recv).await?.ok_or(LinkError::NoHello)?;
        Ok(Link::start(connection, send, recv, peer))
    }

    /// The next link a peer opens; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<Result<Link, LinkError>> {
        let incoming = self.endpoint.accept().await?;
        Some(
            async {
                let connection = incoming.await?;
                let (mut send, mut recv) = connection.accept_bi().await?;
                let peer = read_frame(&mut recv).await?.ok_or(LinkError::NoHello)?;
                write_frames(&mut send, std::slice::from_ref(&self.node_id)).await?;
                Ok(Link::start(connection, send, recv, peer))
            }
            .await,
        )
    }

    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"node stopping");
    }
}

async fn write_frames(send: &mut SendStream, frames: &[Bytes]) -> Result<(), LinkError> {
    let mut buf = BytesMut::new();
    for f in frames {
        frame::encode(f, &mut buf)?;
    }
    send.write_all(&buf).await?;
    Ok(())
}

/// The next frame, or `None` when the peer finished the stream cleanly.
async fn read_frame(recv: &mut RecvStream) -> Result<Option<Bytes>, LinkError> {
    let mut header = [0u8; 4];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = frame::length(header)?;
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await?;
    Ok(Some(payload.into()))
}

/// One link to a peer node.
pub struct Link {
    /// The peer's node id, from its hello.
    pub peer: String,
    queue: mpsc::Sender<Bytes>,
    /// Frames from the peer, in order.
    pub inbound: mpsc::Receiver<Bytes>,
    connection: quinn::Connection,
    /// Write calls made, to see coalescing.
    writes: Arc<AtomicU64>,
}

impl Link {
    fn start(
        connection: quinn::Connection,
        mut send: SendStream,
        mut recv: RecvStream,
        peer: Bytes,
    ) -> Link {
        let (queue, mut outgoing) = mpsc::channel::<Bytes>(SEND_QUEUE_FRAMES);
        let (incoming, inbound) = mpsc::channel(RECEIVE_QUEUE_FRAMES);
        let writes = Arc::new(AtomicU64::new(0));
        let counted = writes.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            while let Some(first) = outgoing.recv().await {
                if frame::pack(first, &mut || outgoing.try_recv().ok(), &mut buf).is_err() {
                    break;
                }
                if send.write_all(&buf).await.is_err() {
                    break;
                }
                counted.fetch_add(1, Ordering::Relaxed);
            }
            let _ = send.finish();
        });
        tokio::spawn(async move {
            while let Ok(Some(frame)) = read_frame(&mut recv).await {
                if incoming.send(frame).await.is_err() {
                    return;
                }
            }
        });
        Link {
            peer: String::from_utf8_lossy(&peer).into_owned(),
            queue,
            inbound,
            connection,
            writes,
        }
    }

    /// Queues a frame without waiting; `Full` is backpressure for the caller to act on.
    pub fn try_send(&self, frame: Bytes) -> Result<(), LinkError> {
        if frame.len() > FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge(frame.len()).into());
        }
        self.queue.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LinkError::Full,
            mpsc::error::TrySendError::Closed(_) => LinkError::Closed,
        })
    }

    /// Queues a frame, waiting while the queue is full.
    pub async fn send(&self, frame: Bytes) -> Result<(), LinkError> {
        if frame.len() > FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge(frame.len()).into());
        }
        self.queue.send(frame).await.map_err(|_| LinkError::Closed)
    }

    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    pub fn remote_addr(&self) -> SocketAddr {
        self.connection.remote_address()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tls::ClusterCa;
    use super::*;

    fn endpoint(ca: &ClusterCa, id: &str) -> MeshEndpoint {
        let identity = ca.issue(id).unwrap();
        MeshEndpoint::bind("127.0.0.1:0".parse().unwrap(), id, &identity).unwrap()
    }

    async fn pair(ca: &ClusterCa) -> (MeshEndpoint, MeshEndpoint, Link, Link) {
        let a = endpoint(ca, "node-a");
        let b = endpoint(ca, "node-b");
        let addr = b.local_addr().unwrap();
        let (dialed, accepted) = tokio::join!(a.connect(addr), b.accept());
        (a, b, dialed.unwrap(), accepted.unwrap().unwrap())
    }

    #[tokio::test]
    async fn frames_arrive_in_order_and_writes_coalesce() {
        let ca = ClusterCa::generate().unwrap();
        let (_a, _b, ab, mut ba) = pair(&ca).await;
        assert_eq!((ab.peer.as_str(), ba.peer.as_str()), ("node-b", "node-a"));
        let frames = 10_000u32;
        let sender = tokio::spawn(async move {
            for i in 0..frames {
                ab.send(Bytes::from(i.to_be_bytes().to_vec()))
                    .await
                    .unwrap();
            }
            ab
        });
        for i in 0..frames {
            let frame = ba.inbound.recv().await.unwrap();
            assert_eq!(frame.as_ref(), i.to_be_bytes());
        }
        let ab = sender.await.unwrap();
        assert!(
            ab.writes() < frames as u64 / 2,
            "{} writes for {frames} frames",
            ab.writes()
        );
        // And the other way.
        ba.try_send(Bytes::from_static(b"back")).unwrap();
        let mut ab = ab;
        assert_eq!(ab.inbound.recv().await.unwrap().as_ref(), b"back");
    }

    #[tokio::test]
    async fn a_node_of_another_cluster_is_refused() {
        let ca = ClusterCa::generate().unwrap();
        let other = ClusterCa::generate().unwrap();
        let member = endpoint(&ca, "member");
        let stranger = endpoint(&other, "stranger");
        let member_addr = member.local_addr().unwrap();
        let stranger_addr = stranger.local_addr().unwrap();
        let accepting = tokio::spawn(async move {
            let result = member.accept().await;
            (member, result.map(|r| r.is_ok()))
        });
        assert!(
            stranger.connect(member_addr).await.is_err(),
            "a stranger must not reach a member"
        );
        let (member, accepted) = accepting.await.unwrap();
        assert_ne!(accepted, Some(true));
        let dialing = tokio::spawn(async move {
            let _ = stranger.accept().await;
        });
        assert!(
            member.connect(stranger_addr).await.is_err(),
            "a member must not trust a stranger"
        );
        dialing.abort();
    }

    #[tokio::test]
    async fn the_send_queue_is_bounded() {
        let ca = ClusterCa::generate().unwrap();
        let (_a, _b, ab, _ba_never_read) = pair(&ca).await;
        assert!(matches!(
            ab.try_send(Bytes::from(vec![0u8; FRAME_BYTES_MAX + 1])),
            Err(LinkError::Frame(FrameError::TooLarge(_)))
        ));
        let frame = Bytes::from(vec![7u8; 1024]);
        let mut queued = 0usize;
        let full = loop {
            match ab.try_send(frame.clone()) {
                Ok(()) => queued += 1,
                Err(e) => break e,
            }
            assert!(queued < 1_000_000, "the queue never filled");
            if queued % 256 == 0 {
                tokio::task::yield_now().await;
            }
        };
        assert!(matches!(full, LinkError::Full), "{full}");
    }
}
