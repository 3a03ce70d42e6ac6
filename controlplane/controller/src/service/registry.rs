//! The node registry: nodes register, report devices, heartbeat, leave. Registration and
//! heartbeat answers carry the token-signing keys nodes are to accept.

use super::*;

#[tonic::async_trait]
impl v1::node_registry_server::NodeRegistry for Svc {
    async fn register(
        &self,
        r: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let r = r.into_inner();
        // Taken once: the answer comes from the controller that registered the node.
        let ctl = self.ctl()?;
        let out = ctl
            .run(Command::Register {
                node_id: r.node_id,
                address: r.address,
                version: r.version,
                failure_domain: r.failure_domain,
                now_ms: now_ms(),
            })
            .await?;
        let Outcome::Node(n) = out else {
            return Err(Status::internal("unexpected outcome"));
        };
        let now = now_ms();
        Ok(Response::new(v1::RegisterResponse {
            node_id: n.id,
            signing_public_key: ctl.signing_key(now).verifying_key().to_bytes().to_vec(),
            heartbeat_interval_ms: ctl.heartbeat_ms as u32,
            signing_public_keys: ctl.accepted_keys(now),
        }))
    }

    async fn report_devices(
        &self,
        r: Request<v1::ReportDevicesRequest>,
    ) -> Result<Response<v1::ReportDevicesResponse>, Status> {
        let r = r.into_inner();
        let devices = r
            .devices
            .into_iter()
            .map(|d| state::DeviceRec {
                device_id: d.device_id,
                path: d.path,
                block_size: d.block_size,
                size: d.size_bytes,
                lendable_start: d.lendable_start,
                lendable_length: d.lendable_length,
                reserved_start: d.reserved_start,
                reserved_length: d.reserved_length,
            })
            .collect();
        let ctl = self.ctl()?;
        let Outcome::Node(n) = ctl
            .run(Command::ReportDevices {
                node_id: r.node_id,
                devices,
            })
            .await?
        else {
            return Err(Status::internal("unexpected outcome"));
        };
        Ok(Response::new(v1::ReportDevicesResponse {
            node: Some(ctl.read(|s| node_msg(s, &n))),
        }))
    }

    async fn heartbeat(
        &self,
        r: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let r = r.into_inner();
        let usage = r
            .usage
            .into_iter()
            .map(|u| state::Counters {
                lease_id: u.lease_id,
                read_bytes: u.read_bytes,
                write_bytes: u.write_bytes,
                read_ops: u.read_ops,
                write_ops: u.write_ops,
            })
            .collect();
        let ctl = self.ctl()?;
        let known = match ctl
            .run(Command::Heartbeat {
                node_id: r.node_id,
                usage,
                now_ms: now_ms(),
            })
            .await
        {
            Ok(_) => true,
            Err(CtlError::Refused(Error::UnknownNode(_))) => false,
            Err(e) => return Err(e.into()),
        };
        // Every answer carries the whole list, so a node that missed beats (or restarted and
        // forgot) still learns of a revocation before the lease's tokens expire.
        let revoked = ctl.read(|s| {
            s.revoked
                .iter()
                .map(|(&lease_id, &expires_at_ms)| v1::RevokedLease {
                    lease_id,
                    expires_at_ms,
                })
                .collect()
        });
        // And the keys, so a rotation reaches every node before tokens switch to the new key.
        Ok(Response::new(v1::HeartbeatResponse {
            known,
            revoked,
            signing_public_keys: ctl.accepted_keys(now_ms()),
        }))
    }

    async fn deregister(
        &self,
        r: Request<v1::DeregisterRequest>,
    ) -> Result<Response<v1::DeregisterResponse>, Status> {
        self.ctl()?
            .run(Command::Deregister {
                node_id: r.into_inner().node_id,
            })
            .await?;
        Ok(Response::new(v1::DeregisterResponse {}))
    }
}
