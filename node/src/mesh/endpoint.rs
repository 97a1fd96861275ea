//! The node's mesh endpoint, whichever transport the config picks.

use std::net::SocketAddr;

use super::grpc::GrpcMeshEndpoint;
use super::link::{Link, LinkError};
use super::quic::MeshEndpoint;
use super::tls::{ClusterCa, NodeIdentity};
use crate::config::{MeshConfig, MeshTransport};

pub enum Endpoint {
    Quic(MeshEndpoint),
    Grpc(GrpcMeshEndpoint),
}

impl Endpoint {
    /// Binds the configured transport with the configured (or, in development, self-issued)
    /// identity. Must be called inside a tokio runtime.
    pub fn bind(
        config: &MeshConfig,
        listen: SocketAddr,
        node_id: &str,
    ) -> Result<Endpoint, LinkError> {
        let identity = match (&config.certs_dir, &config.dev_ca_dir) {
            (Some(dir), _) => NodeIdentity::load(dir)?,
            (None, Some(dir)) => ClusterCa::load(dir)?.issue(node_id)?,
            (None, None) => {
                return Err(LinkError::Transport(
                    "no mesh certificates configured".into(),
                ))
            }
        };
        Ok(match config.transport {
            MeshTransport::Quic => Endpoint::Quic(MeshEndpoint::bind(listen, node_id, &identity)?),
            MeshTransport::Grpc => {
                Endpoint::Grpc(GrpcMeshEndpoint::bind(listen, node_id, &identity)?)
            }
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, LinkError> {
        match self {
            Endpoint::Quic(e) => e.local_addr().map_err(LinkError::transport),
            Endpoint::Grpc(e) => Ok(e.local_addr()),
        }
    }

    pub async fn connect(&self, addr: SocketAddr) -> Result<Link, LinkError> {
        match self {
            Endpoint::Quic(e) => e.connect(addr).await,
            Endpoint::Grpc(e) => e.connect(addr).await,
        }
    }

    /// The next link a peer opened; `None` once the endpoint is closed. Cancel-safe: both
    /// transports handshake in their own tasks and queue finished links.
    pub async fn accept(&self) -> Option<Link> {
        match self {
            Endpoint::Quic(e) => e.accept().await,
            Endpoint::Grpc(e) => e.accept().await,
        }
    }

    pub fn close(&self) {
        match self {
            Endpoint::Quic(e) => e.close(),
            Endpoint::Grpc(e) => e.close(),
        }
    }
}
