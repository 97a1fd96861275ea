//! The operators' service: nodes, drains, owners, apps, totals.

use relaymesh_proto::control::ops_server::Ops;
use relaymesh_proto::control::*;
use tonic::{Request, Response, Status};

use super::*;

#[tonic::async_trait]
impl Ops for Service {
    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let state = self.lock();
        let now = Instant::now();
        let nodes = state
            .registry
            .nodes()
            .map(|m| NodeStatus {
                node: Some(ClusterNode {
                    node: Some(m.info.clone()),
                    state: m.state as i32,
                }),
                lease_age_ms: now.saturating_duration_since(m.registered).as_millis() as u64,
                load: Some(m.load),
            })
            .collect();
        observed(
            "ListNodes",
            Ok(Response::new(ListNodesResponse {
                version: state.registry.version(),
                nodes,
            })),
        )
    }

    async fn drain_node(
        &self,
        request: Request<DrainNodeRequest>,
    ) -> Result<Response<DrainNodeResponse>, Status> {
        observed(
            "DrainNode",
            (|| {
                let mut state = self.lock();
                if let Some(update) = state.registry.drain(&request.get_ref().node_id)? {
                    self.publish_membership(&mut state, update);
                }
                Ok(Response::new(DrainNodeResponse {}))
            })(),
        )
    }

    async fn channel_owner(
        &self,
        request: Request<ChannelOwnerRequest>,
    ) -> Result<Response<ChannelOwnerResponse>, Status> {
        observed(
            "ChannelOwner",
            (|| {
                let request = request.get_ref();
                require("app_id", &request.app_id)?;
                relaymesh_proto::channel::validate_channel_name(&request.channel)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let state = self.lock();
                let owner = state
                    .registry
                    .owner(&request.app_id, &request.channel)
                    .cloned()
                    .ok_or_else(|| Status::failed_precondition("no active node"))?;
                Ok(Response::new(ChannelOwnerResponse {
                    version: state.registry.version(),
                    owner: Some(owner),
                }))
            })(),
        )
    }

    async fn create_app(
        &self,
        request: Request<CreateAppRequest>,
    ) -> Result<Response<App>, Status> {
        observed(
            "CreateApp",
            (|| {
                let mut state = self.lock();
                let id = loop {
                    let id = rand::rng().random_range(100_000..10_000_000u32).to_string();
                    if state.registry.app(&id).is_none() {
                        break id;
                    }
                };
                let defaults = App {
                    id,
                    key: random_hex(10),
                    secret: random_hex(16),
                    enabled: true,
                    client_events: true,
                    client_event_rate: 10,
                    max_connections: 0,
                    max_presence_members: 100,
                    max_event_bytes: 10 * 1024,
                    webhooks: Vec::new(),
                };
                let app = self.app_from_settings(defaults, request.into_inner().settings)?;
                let app = self.put_app(&mut state, app)?;
                tracing::info!(app_id = app.id, "app created");
                Ok(Response::new(app))
            })(),
        )
    }

    async fn list_apps(
        &self,
        _: Request<ListAppsRequest>,
    ) -> Result<Response<ListAppsResponse>, Status> {
        let apps = self.lock().registry.apps().cloned().collect();
        observed("ListApps", Ok(Response::new(ListAppsResponse { apps })))
    }

    async fn update_app(
        &self,
        request: Request<UpdateAppRequest>,
    ) -> Result<Response<App>, Status> {
        observed(
            "UpdateApp",
            (|| {
                let request = request.into_inner();
                let mut state = self.lock();
                let current = state
                    .registry
                    .app(&request.app_id)
                    .cloned()
                    .ok_or_else(|| Status::not_found(format!("no app {:?}", request.app_id)))?;
                let app = self.app_from_settings(current, request.settings)?;
                Ok(Response::new(self.put_app(&mut state, app)?))
            })(),
        )
    }

    async fn delete_app(
        &self,
        request: Request<DeleteAppRequest>,
    ) -> Result<Response<DeleteAppResponse>, Status> {
        observed(
            "DeleteApp",
            (|| {
                let mut state = self.lock();
                self.change_durably(&mut state, |next| {
                    let update = next.registry.delete_app(&request.get_ref().app_id)?;
                    Ok(((), update))
                })?;
                Ok(Response::new(DeleteAppResponse {}))
            })(),
        )
    }

    async fn rotate_secret(
        &self,
        request: Request<RotateSecretRequest>,
    ) -> Result<Response<App>, Status> {
        observed(
            "RotateSecret",
            (|| {
                let mut state = self.lock();
                let mut app = state
                    .registry
                    .app(&request.get_ref().app_id)
                    .cloned()
                    .ok_or_else(|| {
                        Status::not_found(format!("no app {:?}", request.get_ref().app_id))
                    })?;
                app.secret = random_hex(16);
                Ok(Response::new(self.put_app(&mut state, app)?))
            })(),
        )
    }

    async fn cluster_totals(
        &self,
        _: Request<ClusterTotalsRequest>,
    ) -> Result<Response<ClusterTotalsResponse>, Status> {
        let state = self.lock();
        let mut totals = ClusterTotalsResponse {
            version: state.registry.version(),
            apps: state.registry.apps().count() as u64,
            ..ClusterTotalsResponse::default()
        };
        for m in state.registry.nodes() {
            totals.nodes += 1;
            totals.connections += m.load.connections;
            totals.messages_in_per_sec += m.load.messages_in_per_sec;
            totals.messages_out_per_sec += m.load.messages_out_per_sec;
        }
        observed("ClusterTotals", Ok(Response::new(totals)))
    }
}
