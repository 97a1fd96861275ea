//! Mesh links over QUIC: one connection per pair of nodes, one bidirectional stream per
//! link carrying [`frame`](super::frame)s in order. The first frame each way is the sender's
//! node id (the hello). A writer task packs every frame already queued into one write; the
//! queue is bounded, so a slow peer shows up as [`LinkError::Full`] to the sender instead of
//! growing memory, and the reader pushes back through QUIC flow control when the node
//! does not keep up.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};

use super::frame;
use super::link::{self, Link, LinkError, LinkIo};
use super::tls::{NodeIdentity, MESH_SERVER_NAME};

/// A node's QUIC endpoint: accepts links from peers and dials them.
pub struct MeshEndpoint {
    endpoint: quinn::Endpoint,
    node_id: Bytes,
}

/// A link whose peer went silent (a partition, a killed process) is closed after this, so
/// the node notices it, reports it and stops queueing into it; keep-alives make silence
/// mean a broken path, not an idle link.
pub const LINK_SILENCE_MAX: std::time::Duration = std::time::Duration::from_secs(3);
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_millis(500);

fn liveness() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    // 3 s fits in a VarInt of milliseconds.
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(LINK_SILENCE_MAX).ok());
    transport
}

impl MeshEndpoint {
    pub fn bind(
        addr: SocketAddr,
        node_id: &str,
        identity: &NodeIdentity,
    ) -> Result<MeshEndpoint, LinkError> {
        let transport = Arc::new(liveness());
        let mut server = identity.server_config()?;
        server.transport_config(transport.clone());
        let mut client = identity.client_config()?;
        client.transport_config(transport);
        let mut endpoint = quinn::Endpoint::server(server, addr).map_err(LinkError::transport)?;
        endpoint.set_default_client_config(client);
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

    /// The next link a peer opens; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<Result<Link, LinkError>> {
        let incoming = self.endpoint.accept().await?;
        Some(
            async {
                let connection = incoming.await.map_err(LinkError::transport)?;
                let (mut send, mut recv) =
                    connection.accept_bi().await.map_err(LinkError::transport)?;
                let peer = read_frame(&mut recv).await?.ok_or(LinkError::NoHello)?;
                write_frames(&mut send, std::slice::from_ref(&self.node_id)).await?;
                Ok(start(connection, send, recv, peer))
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
    use super::super::link::conformance;
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
}
