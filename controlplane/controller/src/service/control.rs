//! The control-plane service: the controllers and their roles (answered by any controller,
//! active or standby, so an operator can always see who is who), and the rotation of the
//! token-signing key (by the active one alone).

use super::*;
use crate::{ha, keys};

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
            c.seen_ms = now_ms();
        }
        controllers.sort_by(|a, b| (a.role != "active", &a.url).cmp(&(b.role != "active", &b.url)));
        Ok(Response::new(v1::ListControllersResponse {
            controllers,
            store: me.store.clone(),
        }))
    }

    async fn rotate_signing_key(
        &self,
        _: Request<v1::RotateSigningKeyRequest>,
    ) -> Result<Response<v1::RotateSigningKeyResponse>, Status> {
        let ctl = self.ctl()?;
        let now = now_ms();
        let keys = ctl.rotate_key(now, keys::switch_delay_ms(ctl.heartbeat_ms), keys::KEEP_MS)?;
        let text = |k: &dasmesh_wire::VerifyingKey| dasmesh_wire::key_to_text(k.as_bytes());
        let accepted = keys.accepted(now);
        tracing::info!(
            public_key = %text(&accepted[0]),
            switch_at_ms = keys.ring().from_ms,
            accepted = accepted.len(),
            "signing key rotated"
        );
        Ok(Response::new(v1::RotateSigningKeyResponse {
            public_key: text(&accepted[0]),
            switch_at_ms: keys.ring().from_ms,
            accepted_keys: accepted.iter().map(text).collect(),
        }))
    }

    async fn console_login(
        &self,
        r: Request<v1::ConsoleLoginRequest>,
    ) -> Result<Response<v1::ConsoleLoginResponse>, Status> {
        let Some((url, tls)) = crate::console::url() else {
            return Err(Status::failed_precondition(
                "this controller serves no console: start it with --http ADDR",
            ));
        };
        if !tls {
            // No identities: the console needs no login either.
            return Ok(Response::new(v1::ConsoleLoginResponse {
                url: format!("{url}/"),
                expires_ms: 0,
            }));
        }
        let who = caller(&r).cloned();
        let code = crate::console::session::code_for(who.clone());
        tracing::info!(caller = ?who, "console login link made");
        Ok(Response::new(v1::ConsoleLoginResponse {
            url: format!("{url}/login?code={code}"),
            expires_ms: now_ms() + crate::console::session::CODE_TTL.as_millis() as u64,
        }))
    }
}
