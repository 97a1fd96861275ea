//! The ops API and CLI over a cluster of three in-process nodes: channel owners agree with
//! the ring every node computes, totals count nodes, apps and the load nodes report, drain
//! reaches the node, and bad requests get precise status codes.

use std::collections::BTreeSet;

use relaymesh_proto::control::{
    AppSettings, ChannelOwnerRequest, ClusterTotalsRequest, CreateAppRequest, DeleteAppRequest,
    DrainNodeRequest, ListAppsRequest, NodeState, RegisterRequest, RotateSecretRequest,
    UpdateAppRequest,
};
use relaymesh_proto::ring::Ring;
use serde_json::json;
use tonic::Code;

use crate::support::*;

fn status_code<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>) -> Code {
    match result {
        Err(status) => status.code(),
        Ok(reply) => panic!("{what} was accepted: {reply:?}"),
    }
}

async fn owner_of(ops: &mut Ops, app_id: &str, channel: &str) -> String {
    ops.channel_owner(ChannelOwnerRequest {
        app_id: app_id.into(),
        channel: channel.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .owner
    .unwrap()
    .node_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_owner_totals_drain_and_bad_requests() {
    let dir = DataDir::new("ops");
    let cp = ControlPlane::start(&dir).await;
    let mut ops = cp.operator().await;

    // No active node: nobody owns anything yet.
    let none = ops
        .channel_owner(ChannelOwnerRequest {
            app_id: "1".into(),
            channel: "news".into(),
        })
        .await;
    assert_eq!(
        status_code("owner without nodes", none),
        Code::FailedPrecondition
    );

    let mut nodes = Vec::new();
    for (id, region) in [("edge-a", "eu"), ("edge-b", "us"), ("edge-c", "ap")] {
        nodes.push(Node::start(&cp.endpoint(), id, region).await);
    }
    for node in &nodes {
        wait_active(&mut ops, &node.id).await;
    }
    let app = ops
        .create_app(CreateAppRequest { settings: None })
        .await
        .unwrap()
        .into_inner();
    let other = ops
        .create_app(CreateAppRequest { settings: None })
        .await
        .unwrap()
        .into_inner();

    // Owners: what the control plane answers is what every node computes locally.
    let active = active_nodes(&mut ops).await;
    assert_eq!(active.len(), 3);
    let ring = Ring::new(active.iter().map(String::as_str));
    let mut channels: Vec<String> = (0..12).map(|i| format!("channel-{i}")).collect();
    channels.extend(["private-room", "presence-lobby", "cache-scores"].map(String::from));
    let mut owners = BTreeSet::new();
    for channel in &channels {
        let reply = ops
            .channel_owner(ChannelOwnerRequest {
                app_id: app.id.clone(),
                channel: channel.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let owner = reply.owner.unwrap();
        assert_eq!(
            Some(owner.node_id.as_str()),
            ring.owner(&app.id, channel),
            "owner of {channel}"
        );
        let node = nodes.iter().find(|n| n.id == owner.node_id).unwrap();
        assert_eq!(owner.client_addr, node.addr.to_string());
        owners.insert(owner.node_id);
    }
    assert!(owners.len() > 1, "every channel on one node: {owners:?}");
    for channel in &channels[..4] {
        let cli = cp.ctl_json(&["owner", &app.id, channel]).await;
        assert_eq!(
            cli["node_id"].as_str(),
            ring.owner(&app.id, channel),
            "ctl owner {channel}: {cli}"
        );
        assert_eq!(cli["channel"], json!(channel));
    }

    // Totals: nodes, apps, and the connections the nodes report with their keepalives.
    let _c1 = nodes[0].connect(&app.key).await;
    let _c2 = nodes[1].connect(&other.key).await;
    let totals = eventually("totals to count 2 connections", WAIT, || async {
        let mut ops = ops.clone();
        let totals = ops
            .cluster_totals(ClusterTotalsRequest {})
            .await
            .unwrap()
            .into_inner();
        (totals.connections == 2).then_some(totals)
    })
    .await;
    assert_eq!((totals.nodes, totals.apps), (3, 2), "{totals:?}");
    let cli = cp.ctl_json(&["totals"]).await;
    assert_eq!(cli["nodes"], json!(3), "{cli}");
    assert_eq!(cli["apps"], json!(2), "{cli}");
    let listed = cp.ctl_json(&["nodes"]).await;
    let states: Vec<&str> = listed["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["active"; 3], "{listed}");

    // Drain through the CLI: the control plane marks it, the node stops taking connections.
    let drained = cp.ctl_json(&["drain", "edge-b"]).await;
    assert_eq!(drained["drained"], json!("edge-b"));
    assert_eq!(
        node_state(&mut ops, "edge-b").await,
        Some(NodeState::Draining)
    );
    let edge_b = &nodes[1];
    eventually("edge-b to answer /readyz with 503", WAIT, || async {
        (edge_b.readyz().await == 503).then_some(())
    })
    .await;
    assert!(edge_b.handle.shared().is_draining());
    let (_, first) = edge_b.try_connect(&app.key).await;
    assert_eq!(first.event, "pusher:error", "{}", first.raw);
    let code = first.data["code"].as_u64().unwrap();
    assert!((4200..4300).contains(&code), "refused with {code}");
    for node in [&nodes[0], &nodes[2]] {
        assert_eq!(node.readyz().await, 200);
        assert!(!node.handle.shared().is_draining());
    }
    // A draining node leaves the ring.
    let ring = Ring::new(["edge-a", "edge-c"]);
    for channel in &channels {
        assert_eq!(
            Some(owner_of(&mut ops, &app.id, channel).await.as_str()),
            ring.owner(&app.id, channel),
            "owner of {channel} after the drain"
        );
    }

    // Bad requests: precise codes, nothing changed.
    let mut registrant = cp.membership(JOIN_TOKEN).await;
    let mut empty_id = node_info("", "eu");
    let r = registrant
        .register(RegisterRequest {
            node: Some(empty_id.clone()),
            state_lost: false,
        })
        .await;
    assert_eq!(status_code("empty node_id", r), Code::InvalidArgument);
    empty_id.node_id = "ok".into();
    empty_id.region = String::new();
    let r = registrant
        .register(RegisterRequest {
            node: Some(empty_id),
            state_lost: false,
        })
        .await;
    assert_eq!(status_code("empty region", r), Code::InvalidArgument);
    let r = registrant
        .register(RegisterRequest {
            node: None,
            state_lost: false,
        })
        .await;
    assert_eq!(status_code("no node", r), Code::InvalidArgument);
    for (app_id, channel) in [
        (app.id.as_str(), "bad channel!"),
        (app.id.as_str(), ""),
        ("", "news"),
    ] {
        let r = ops
            .channel_owner(ChannelOwnerRequest {
                app_id: app_id.into(),
                channel: channel.into(),
            })
            .await;
        assert_eq!(
            status_code(&format!("owner of {app_id:?}/{channel:?}"), r),
            Code::InvalidArgument
        );
    }
    let r = ops
        .update_app(UpdateAppRequest {
            app_id: "no-such-app".into(),
            settings: None,
        })
        .await;
    assert_eq!(status_code("update of an unknown app", r), Code::NotFound);
    let r = ops
        .delete_app(DeleteAppRequest {
            app_id: "no-such-app".into(),
        })
        .await;
    assert_eq!(status_code("delete of an unknown app", r), Code::NotFound);
    let r = ops
        .rotate_secret(RotateSecretRequest {
            app_id: "no-such-app".into(),
        })
        .await;
    assert_eq!(status_code("rotation of an unknown app", r), Code::NotFound);
    let r = ops
        .drain_node(DrainNodeRequest {
            node_id: "no-such-node".into(),
        })
        .await;
    assert_eq!(status_code("drain of an unknown node", r), Code::NotFound);
    let ftp = AppSettings {
        webhooks: vec!["ftp://x".into()],
        set_webhooks: true,
        ..AppSettings::default()
    };
    let r = ops
        .create_app(CreateAppRequest {
            settings: Some(ftp.clone()),
        })
        .await;
    assert_eq!(status_code("an ftp webhook", r), Code::InvalidArgument);
    let r = ops
        .update_app(UpdateAppRequest {
            app_id: app.id.clone(),
            settings: Some(ftp),
        })
        .await;
    assert_eq!(status_code("an ftp webhook", r), Code::InvalidArgument);
    let zero_rate = AppSettings {
        client_event_rate: Some(0),
        ..AppSettings::default()
    };
    let r = ops
        .create_app(CreateAppRequest {
            settings: Some(zero_rate),
        })
        .await;
    assert_eq!(status_code("client_event_rate 0", r), Code::InvalidArgument);
    let output = cp
        .ctl(
            OPERATOR_TOKEN,
            &["apps", "update", &app.id, "--webhook", "ftp://x"],
        )
        .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("InvalidArgument"), "{stderr}");
    let output = cp.ctl(OPERATOR_TOKEN, &["drain", "no-such-node"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("NotFound"), "{stderr}");
    let apps = ops
        .list_apps(ListAppsRequest {})
        .await
        .unwrap()
        .into_inner()
        .apps;
    assert_eq!(apps.len(), 2);
    assert!(apps.iter().all(|a| a.webhooks.is_empty()), "{apps:?}");
    assert!(apps.contains(&app), "a refused update changed the app");
    assert_eq!(active_nodes(&mut ops).await.len(), 2);

    drop((ops, registrant, _c1, _c2));
    for node in nodes {
        node.shutdown().await;
    }
    cp.shutdown().await;
}
