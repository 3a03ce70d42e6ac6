//! The control-plane service: the controllers and their roles. Answered by any controller,
//! active or standby, so an operator can always see who is who.

use super::*;
use crate::ha;

#[tonic::async_trait]
impl v1::control_plane_server::ControlPlane for Svc {
    async fn list_controllers(
        &self,
        _: Request<v1::ListControllersRequest>,
    ) -> Result<Response<v1::ListControllersResponse>, Status> {
        let me = &self.0;
        let my_role = match me.get() {
            Role::Active(_) => "active",
            Role::Standby(_) => "standby",
        };
        let mut controllers = match &me.etcd {
            None => vec![v1::ControllerInfo {
                url: me.url.clone(),
                role: my_role.into(),
                seen_ms: now_ms(),
                answering: true,
            }],
            Some(etcd) => ha::presences(etcd)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?
                .into_iter()
                .map(|p| v1::ControllerInfo {
                    answering: p.url == me.url,
                    url: p.url,
                    role: p.role,
                    seen_ms: p.seen_ms,
                })
                .collect(),
        };
        // What this controller knows of itself is newer than what it last published.
        if let Some(c) = controllers.iter_mut().find(|c| c.answering) {
            c.role = my_role.into();
        }
        controllers.sort_by(|a, b| (a.role != "active", &a.url).cmp(&(b.role != "active", &b.url)));
        Ok(Response::new(v1::ListControllersResponse {
            controllers,
            store: me.store.clone(),
        }))
    }
}
