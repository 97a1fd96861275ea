//! Mesh links between nodes of one cluster (issue 5, links only): every pair of nodes
//! gets one mutually authenticated link over the configured transport, links follow the
//! view, and a node that dies is dropped and dialed again when it returns.

use std::time::Duration;

use relaymesh_node::config::MeshTransport;
use relaymesh_node::mesh::tls::ClusterCa;

use crate::support::*;

async fn mesh_node(
    cp: &ControlPlane,
    ca_dir: &std::path::Path,
    id: &str,
    transport: MeshTransport,
) -> Node {
    Node::start_configured(&cp.endpoint(), id, "eu", JOIN_TOKEN, |config| {
        config.mesh.listen = Some("127.0.0.1:0".parse().unwrap());
        config.mesh.dev_ca_dir = Some(ca_dir.to_owned());
        config.mesh.transport = transport;
    })
    .await
}

async fn linked(node: &Node, expected: &[&str]) {
    let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    eventually(
        &format!("{} linked to {expected:?}", node.id),
        Duration::from_secs(10),
        || async { (node.handle.shared().peers.linked() == expected).then_some(()) },
    )
    .await;
}

async fn full_mesh_follows_the_view(transport: MeshTransport) {
    let dir = DataDir::new("mesh");
    let ca_dir = dir.path().join("ca");
    ClusterCa::generate().unwrap().save(&ca_dir).unwrap();
    let cp = ControlPlane::start(&dir).await;
    let a = mesh_node(&cp, &ca_dir, "mesh-a", transport).await;
    let b = mesh_node(&cp, &ca_dir, "mesh-b", transport).await;
    let c = mesh_node(&cp, &ca_dir, "mesh-c", transport).await;
    linked(&a, &["mesh-b", "mesh-c"]).await;
    linked(&b, &["mesh-a", "mesh-c"]).await;
    linked(&c, &["mesh-a", "mesh-b"]).await;
    let metrics = a.metrics().await;
    assert!(
        metrics.contains("relaymesh_mesh_link_up{peer=\"mesh-b\"} 1"),
        "{metrics}"
    );

    // b goes away without leaving: its links drop; it comes back under the same id.
    let TestNodeParts { handle, .. } = TestNodeParts::from(b);
    drop(handle);
    linked(&a, &["mesh-c"]).await;
    linked(&c, &["mesh-a"]).await;
    let b = mesh_node(&cp, &ca_dir, "mesh-b", transport).await;
    linked(&a, &["mesh-b", "mesh-c"]).await;
    linked(&b, &["mesh-a", "mesh-c"]).await;
    linked(&c, &["mesh-a", "mesh-b"]).await;
    for node in [a, b, c] {
        node.shutdown().await;
    }
    cp.shutdown().await;
}

/// Moves a node's handle out, to drop it (abrupt death) instead of shutting it down.
struct TestNodeParts {
    handle: relaymesh_node::NodeHandle,
}

impl From<Node> for TestNodeParts {
    fn from(node: Node) -> Self {
        TestNodeParts {
            handle: node.handle,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_links_connect_every_pair_and_follow_the_view() {
    full_mesh_follows_the_view(MeshTransport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_links_connect_every_pair_and_follow_the_view() {
    full_mesh_follows_the_view(MeshTransport::Grpc).await;
}
