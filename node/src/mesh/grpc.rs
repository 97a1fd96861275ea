//! Mesh links over a gRPC bidirectional stream (tonic), for networks that block UDP. Same
//! [`Link`], same mutual TLS with the cluster CA, same conformance suite as QUIC; each
//! message is a [`Batch`] of every frame that was queued, so coalescing is per message.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use relaymesh_proto::mesh::mesh_link_client::MeshLinkClient;
use relaymesh_proto::mesh::mesh_link_server::{MeshLink, MeshLinkServer};
use relaymesh_proto::mesh::Batch;
use tokio::sync::{mpsc, watch, Mutex, Notify};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use super::frame::{BATCH_BYTES_MAX, FRAME_BYTES_MAX};
use super::link::{self, Link, LinkError, LinkIo, ACCEPT_BACKLOG};
use super::tls::{NodeIdentity, MESH_SERVER_NAME};

/// Batches in flight per direction of one link.
const BATCHES_IN_FLIGHT: usize = 4;

/// A node's gRPC mesh endpoint: serves links to peers and dials them.
pub struct GrpcMeshEndpoint {
    local_addr: SocketAddr,
    node_id: Bytes,
    client_tls: ClientTlsConfig,
    accepted: Mutex<mpsc::Receiver<Link>>,
    stop: watch::Sender<bool>,
}

struct Service {
    node_id: Bytes,
    accepted: mpsc::Sender<Link>,
}

type BatchStream = Pin<Box<dyn Stream<Item = Result<Batch, Status>> + Send>>;

#[tonic::async_trait]
impl MeshLink for Service {
    type LinkStream = BatchStream;

    async fn link(
        &self,
        request: Request<Streaming<Batch>>,
    ) -> Result<Response<BatchStream>, Status> {
        let mut incoming = request.into_inner();
        let hello = incoming
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no hello"))?;
        let peer = hello
            .frames
            .into_iter()
            .next()
            .ok_or_else(|| Status::invalid_argument("empty hello"))?;
        let (out, out_rx) = mpsc::channel(BATCHES_IN_FLIGHT);
        out.send(Batch {
            frames: vec![self.node_id.clone()],
        })
        .await
        .map_err(|_| Status::internal("link closed"))?;
        let link = start(peer, out, incoming);
        self.accepted
            .send(link)
            .await
            .map_err(|_| Status::unavailable("node stopping"))?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }
}

impl GrpcMeshEndpoint {
    /// Binds `addr` and serves links; must be called inside a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        node_id: &str,
        identity: &NodeIdentity,
    ) -> Result<GrpcMeshEndpoint, LinkError> {
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(LinkError::transport)?;
        let local_addr = listener.local_addr().map_err(LinkError::transport)?;
        let node_id = Bytes::copy_from_slice(node_id.as_bytes());
        let own = Identity::from_pem(&identity.cert_pem, &identity.key_pem);
        let ca = Certificate::from_pem(&identity.ca_pem);
        let server_tls = ServerTlsConfig::new()
            .identity(own.clone())
            .client_ca_root(ca.clone());
        let client_tls = ClientTlsConfig::new()
            .ca_certificate(ca)
            .identity(own)
            .domain_name(MESH_SERVER_NAME);
        let (accepted_tx, accepted) = mpsc::channel(ACCEPT_BACKLOG);
        let service = Service {
            node_id: node_id.clone(),
            accepted: accepted_tx,
        };
        let (stop, mut stopped) = watch::channel(false);
        // Same liveness as QUIC links: pings, and a silent peer's connection closed.
        let router = Server::builder()
            .http2_keepalive_interval(Some(super::quic::LINK_SILENCE_MAX / 6))
            .http2_keepalive_timeout(Some(super::quic::LINK_SILENCE_MAX / 2))
            .tls_config(server_tls)
            .map_err(LinkError::transport)?
            .add_service(MeshLinkServer::new(service));
        tokio::spawn(async move {
            // tonic's own nodelay setting does not apply to an incoming stream: without it,
            // small batches wait out Nagle and delayed ACKs (about 40 ms).
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |stream| {
                    if let Ok(stream) = &stream {
                        let _ = stream.set_nodelay(true);
                    }
                    stream
                },
            );
            let shutdown = async move {
                let _ = stopped.changed().await;
            };
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::warn!(error = %e, "gRPC mesh server ended");
            }
        });
        Ok(GrpcMeshEndpoint {
            local_addr,
            node_id,
            client_tls,
            accepted: Mutex::new(accepted),
            stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Opens a link to the node at `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Link, LinkError> {
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(LinkError::transport)?
            .tls_config(self.client_tls.clone())
            .map_err(LinkError::transport)?
            .tcp_nodelay(true)
            .http2_keep_alive_interval(super::quic::LINK_SILENCE_MAX / 6)
            .keep_alive_timeout(super::quic::LINK_SILENCE_MAX / 2)
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(LinkError::transport)?;
        let (out, out_rx) = mpsc::channel(BATCHES_IN_FLIGHT);
        out.send(Batch {
            frames: vec![self.node_id.clone()],
        })
        .await
        .map_err(|_| LinkError::Closed)?;
        let mut incoming = MeshLinkClient::new(channel)
            .link(tokio_stream::wrappers::ReceiverStream::new(out_rx))
            .await
            .map_err(LinkError::transport)?
            .into_inner();
        let hello = incoming
            .message()
            .await
            .map_err(LinkError::transport)?
            .ok_or(LinkError::NoHello)?;
        let peer = hello.frames.into_iter().next().ok_or(LinkError::NoHello)?;
        Ok(start(peer, out, incoming))
    }

    /// The next link a peer opened.
    pub async fn accept(&self) -> Option<Link> {
        self.accepted.lock().await.recv().await
    }

    pub fn close(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for GrpcMeshEndpoint {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Starts the writer (one batch per wake-up) and reader tasks of a link.
fn start(peer: Bytes, out: mpsc::Sender<Batch>, mut incoming: Streaming<Batch>) -> Link {
    let (link, io) = link::new(String::from_utf8_lossy(&peer).into_owned());
    let LinkIo {
        mut outgoing,
        incoming: deliver,
        writes,
    } = io;
    // The reader tells the writer when the peer is gone, so the node's sends fail at once.
    let peer_gone = Arc::new(Notify::new());
    let gone = peer_gone.clone();
    tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                first = outgoing.recv() => match first {
                    Some(first) => first,
                    None => return,
                },
                _ = gone.notified() => return,
            };
            let mut size = first.len();
            let mut frames = vec![first];
            while size < BATCH_BYTES_MAX {
                let Ok(next) = outgoing.try_recv() else { break };
                size += next.len();
                frames.push(next);
            }
            if out.send(Batch { frames }).await.is_err() {
                return;
            }
            writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    tokio::spawn(async move {
        'read: while let Ok(Some(batch)) = incoming.message().await {
            for frame in batch.frames {
                if frame.len() > FRAME_BYTES_MAX || deliver.send(frame).await.is_err() {
                    break 'read;
                }
            }
        }
        peer_gone.notify_one();
    });
    link
}

#[cfg(test)]
mod tests {
    use super::super::link::conformance;
    use super::super::tls::ClusterCa;
    use super::*;

    async fn endpoint(ca: &ClusterCa, id: &str) -> GrpcMeshEndpoint {
        let identity = ca.issue(id).unwrap();
        GrpcMeshEndpoint::bind("127.0.0.1:0".parse().unwrap(), id, &identity).unwrap()
    }

    async fn pair(ca: &ClusterCa) -> (GrpcMeshEndpoint, GrpcMeshEndpoint, Link, Link) {
        let a = endpoint(ca, "node-a").await;
        let b = endpoint(ca, "node-b").await;
        let (dialed, accepted) = tokio::join!(a.connect(b.local_addr()), b.accept());
        (a, b, dialed.unwrap(), accepted.unwrap())
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
        let peer = endpoint(&ca, "peer").await;
        let stranger = endpoint(&other, "stranger").await;
        assert!(
            stranger.connect(peer.local_addr()).await.is_err(),
            "a stranger must not reach a peer"
        );
        assert!(
            peer.connect(stranger.local_addr()).await.is_err(),
            "a peer must not trust a stranger"
        );
    }
}
