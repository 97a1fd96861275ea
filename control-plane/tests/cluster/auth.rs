//! Tokens: Membership needs the join token, Ops the operator token; anything else is
//! refused with Unauthenticated, and a node with a wrong join token never joins.

use std::time::{Duration, Instant};

use relaymesh_proto::control::membership_client::MembershipClient;
use relaymesh_proto::control::{
    ClusterTotalsRequest, CreateAppRequest, DrainNodeRequest, LeaveRequest, ListAppsRequest,
    ListNodesRequest, RegisterRequest, WatchRequest,
};
use tonic::Code;

use crate::support::*;

fn unauthenticated<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>) {
    match result {
        Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}"),
        Ok(reply) => panic!("{what} was accepted: {reply:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_tokens_are_refused() {
    let dir = DataDir::new("auth");
    let cp = ControlPlane::start(&dir).await;
    let register = || RegisterRequest {
        node: Some(node_info("intruder", "eu")),
        state_lost: false,
    };

    // Membership: a wrong token, the operator token, and no token at all.
    for token in ["wrong", OPERATOR_TOKEN, ""] {
        let mut client = cp.membership(token).await;
        let what = format!("Membership with token {token:?}");
        unauthenticated(&what, client.register(register()).await);
        unauthenticated(&what, client.watch(WatchRequest {}).await);
        unauthenticated(
            &what,
            client
                .leave(LeaveRequest {
                    lease_id: "x".into(),
                })
                .await,
        );
        unauthenticated(
            &what,
            client.keep_alive(tokio_stream::iter(Vec::new())).await,
        );
    }
    let mut bare = MembershipClient::new(cp.channel().await);
    unauthenticated("Register without a token", bare.register(register()).await);
    unauthenticated("Watch without a token", bare.watch(WatchRequest {}).await);

    // Ops: a wrong token and the join token.
    for token in ["wrong", JOIN_TOKEN] {
        let mut client = cp.ops(token).await;
        let what = format!("Ops with token {token:?}");
        unauthenticated(&what, client.list_nodes(ListNodesRequest {}).await);
        unauthenticated(&what, client.list_apps(ListAppsRequest {}).await);
        unauthenticated(
            &what,
            client.create_app(CreateAppRequest { settings: None }).await,
        );
        unauthenticated(
            &what,
            client
                .drain_node(DrainNodeRequest {
                    node_id: "x".into(),
                })
                .await,
        );
        unauthenticated(&what, client.cluster_totals(ClusterTotalsRequest {}).await);
    }

    // Nothing of that changed anything.
    let mut ops = cp.operator().await;
    assert!(list_nodes(&mut ops).await.nodes.is_empty());
    let apps = ops
        .list_apps(ListAppsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(apps.apps.is_empty(), "{apps:?}");

    // The CLI with a wrong token: a non-zero exit naming the status.
    for args in [&["nodes"][..], &["apps", "create"], &["--json", "totals"]] {
        let output = cp.ctl("wrong", args).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "ctl {args:?} succeeded: {stderr}");
        assert!(
            stderr.contains("Unauthenticated"),
            "ctl {args:?} stderr: {stderr}"
        );
        assert!(output.stdout.is_empty(), "ctl {args:?} printed output");
    }
    assert!(ops
        .list_apps(ListAppsRequest {})
        .await
        .unwrap()
        .into_inner()
        .apps
        .is_empty());

    // A node with a wrong join token never joins, while one with the right token does.
    let intruder = Node::start_with_token(&cp.endpoint(), "intruder", "eu", "wrong").await;
    let joined = Node::start(&cp.endpoint(), "joined", "eu").await;
    wait_active(&mut ops, "joined").await;
    // The intruder retries with a backoff from 100 ms: watch across several attempts.
    let watch_until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < watch_until {
        let listed = list_nodes(&mut ops).await;
        assert!(
            listed
                .nodes
                .iter()
                .filter_map(|n| n.node.as_ref()?.node.as_ref())
                .all(|n| n.node_id != "intruder"),
            "a node with a wrong join token joined: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(intruder.handle.shared().view.borrow().version, 0);
    assert!(intruder.handle.shared().apps.all().is_empty());

    drop((ops, bare));
    intruder.shutdown().await;
    joined.shutdown().await;
    cp.shutdown().await;
}
