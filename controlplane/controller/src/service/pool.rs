//! The Pool service: nodes and devices as the controller sees them (a standby answers too,
//! from the state in etcd).

use super::*;

#[tonic::async_trait]
impl v1::pool_server::Pool for Svc {
    async fn list_nodes(
        &self,
        _: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let ctl = self.view().await?;
        Ok(Response::new(ctl.read(|s| v1::ListNodesResponse {
            nodes: s.nodes.values().map(|n| node_msg(s, n)).collect(),
        })))
    }

    async fn list_devices(
        &self,
        _: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        let ctl = self.view().await?;
        Ok(Response::new(ctl.read(|s| {
            let devices = up_devices(s);
            v1::ListDevicesResponse {
                total_bytes: devices.iter().map(|d| d.lendable_length).sum(),
                free_bytes: devices.iter().map(|d| d.free_bytes).sum(),
                devices,
            }
        })))
    }

    async fn get_node(&self, r: Request<v1::GetNodeRequest>) -> Result<Response<v1::Node>, Status> {
        let ctl = self.view().await?;
        let id = r.into_inner().node_id;
        ctl.read(|s| s.nodes.get(&id).map(|n| node_msg(s, n)))
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("unknown node {id}")))
    }
}
