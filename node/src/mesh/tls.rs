//! The cluster's mutual-TLS identity. A cluster CA signs one certificate per node; every
//! mesh link is TLS 1.3 (inside QUIC) with both sides presenting a certificate of that CA,
//! so only the cluster's own nodes can join the mesh. Certificates name the fixed server
//! name [`MESH_SERVER_NAME`]; which node a peer is gets said in the link's first frame.

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

/// The DNS name every node certificate carries and every dialer expects.
pub const MESH_SERVER_NAME: &str = "mesh.relaymesh";
/// ALPN of mesh links.
pub const ALPN: &[u8] = b"relaymesh-mesh/1";

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid PEM in {what}: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("QUIC cannot use this TLS configuration: {0}")]
    Quic(String),
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The cluster CA, as PEM.
#[derive(Clone)]
pub struct ClusterCa {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A node's mesh identity: its certificate and key, and the CA it trusts.
#[derive(Clone)]
pub struct NodeIdentity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ClusterCa {
    pub fn generate() -> Result<ClusterCa, TlsError> {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Reads `ca.pem` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<ClusterCa, TlsError> {
        Ok(ClusterCa {
            cert_pem: read(dir, "ca.pem")?,
            key_pem: read(dir, "ca.key")?,
        })
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600 where supported) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        write_files(
            dir,
            &[("ca.pem", &self.cert_pem), ("ca.key", &self.key_pem)],
        )
    }

    /// Signs a certificate for `node_id`.
    pub fn issue(&self, node_id: &str) -> Result<NodeIdentity, TlsError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        // The issuer is the CA's own parameters (its subject) and key, as generated.
        let issuer = Issuer::new(ca_params()?, ca_key);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![MESH_SERVER_NAME.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, node_id);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(NodeIdentity {
            ca_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
        .distinguished_name
        .push(DnType::CommonName, "relaymesh cluster CA");
    Ok(params)
}

fn read(dir: &Path, name: &str) -> Result<String, TlsError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn write_files(dir: &Path, files: &[(&str, &String)]) -> Result<(), TlsError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| TlsError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io(&path))?;
        #[cfg(unix)]
        if name.ends_with(".key") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(io(&path))?;
        }
    }
    Ok(())
}

fn pem_error(what: &'static str) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError {
    move |e| TlsError::Pem {
        what,
        detail: e.to_string(),
    }
}

impl NodeIdentity {
    /// Reads `ca.pem`, `node.pem` and `node.key` from `dir`.
    pub fn load(dir: &Path) -> Result<NodeIdentity, TlsError> {
        Ok(NodeIdentity {
            ca_pem: read(dir, "ca.pem")?,
            cert_pem: read(dir, "node.pem")?,
            key_pem: read(dir, "node.key")?,
        })
    }

    /// Writes `ca.pem`, `node.pem` and `node.key` (the key mode 0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        write_files(
            dir,
            &[
                ("ca.pem", &self.ca_pem),
                ("node.pem", &self.cert_pem),
                ("node.key", &self.key_pem),
            ],
        )
    }

    fn parts(
        &self,
    ) -> Result<
        (
            rustls::RootCertStore,
            Vec<CertificateDer<'static>>,
            PrivateKeyDer<'static>,
        ),
        TlsError,
    > {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(ca.map_err(pem_error("the CA certificate"))?)?;
        }
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_error("the node certificate"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(pem_error("the node key"))?;
        Ok((roots, chain, key))
    }

    /// Accepting side: TLS 1.3, a client certificate of the cluster CA required.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (roots, chain, key) = self.parts()?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
    }

    /// Dialing side: trusts only the cluster CA and presents the node's certificate.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (roots, chain, key) = self.parts()?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        Ok(quinn::ClientConfig::new(Arc::new(quic)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_and_identities_round_trip_through_files() {
        let dir = std::env::temp_dir().join(format!("relaymesh-certs-{}", rand::random::<u64>()));
        let ca = ClusterCa::generate().unwrap();
        ca.save(&dir.join("ca")).unwrap();
        let loaded = ClusterCa::load(&dir.join("ca")).unwrap();
        let identity = loaded.issue("node-1").unwrap();
        identity.save(&dir.join("node-1")).unwrap();
        let identity = NodeIdentity::load(&dir.join("node-1")).unwrap();
        assert_eq!(identity.ca_pem, ca.cert_pem);
        identity.server_config().unwrap();
        identity.client_config().unwrap();
        assert!(NodeIdentity::load(&dir.join("missing")).is_err());
        let broken = NodeIdentity {
            key_pem: "not a key".into(),
            ..identity
        };
        assert!(matches!(broken.client_config(), Err(TlsError::Pem { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
