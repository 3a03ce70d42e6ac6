//! The node registry: nodes register, report devices, heartbeat, leave. Registration and
//! heartbeat answers carry the token-signing keys nodes are to accept.

use super::*;

#[tonic::async_trait]
impl v1::node_registry_server::NodeRegistry for Svc {
    async fn register(
        &self,
        r: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        // A node registers under its certificate's name (an operator's registration binds none).
        let name = node_name(caller(&r));
        let r = r.into_inner();
        // Taken once: the answer comes from the controller that registered the node.
        let ctl = self.ctl()?;
        let from = r.address.clone();
        let out = ctl
            .run(Command::Register {
                node_id: r.node_id,
                address: r.address,
                version: r.version,
                failure_domain: r.failure_domain,
                name,
                data_tls: r.data_tls,
                now_ms: now_ms(),
            })
            .await
            .inspect_err(|e| {
                if let CtlError::Refused(Error::NameTaken { .. } | Error::NotThisNode { .. }) = e {
                    tracing::warn!(from = %from, "node registration refused: {e}");
                }
            })?;
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
        self.as_node(caller(&r), r.get_ref().node_id)?;
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
                read_iops: d.read_iops,
                write_iops: d.write_iops,
                mib_s: d.mib_s,
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
        self.as_node(caller(&r), r.get_ref().node_id)?;
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
        let rebuilds = r
            .rebuilds
            .iter()
            .map(|p| state::rebuild::Progress {
                device: p.device_id,
                offset: p.offset,
                length: p.length,
                guarded: p.guarded,
                done: p.done_bytes,
                attempt: p.attempt,
            })
            .collect();
        let ctl = self.ctl()?;
        let known = match ctl
            .run(Command::Heartbeat {
                node_id: r.node_id,
                usage,
                now_ms: now_ms(),
                rebuilds,
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
            rebuilds: ctl.rebuild_tasks(r.node_id),
        }))
    }

    async fn deregister(
        &self,
        r: Request<v1::DeregisterRequest>,
    ) -> Result<Response<v1::DeregisterResponse>, Status> {
        self.as_node(caller(&r), r.get_ref().node_id)?;
        self.ctl()?
            .run(Command::Deregister {
                node_id: r.into_inner().node_id,
            })
            .await?;
        Ok(Response::new(v1::DeregisterResponse {}))
    }
}

/// The name a registration binds: the certificate's, when a node registers itself.
fn node_name(id: Option<&Identity>) -> String {
    match id {
        Some(id) if id.role == Who::Node => id.name.clone(),
        _ => String::new(),
    }
}

impl Svc {
    /// Refuses a node's call about another node: `node_id` must be registered under the
    /// caller's certificate. An unknown id is left to the command (it says so, and a heartbeat
    /// answers `known: false` so the node registers again).
    fn as_node(&self, id: Option<&Identity>, node_id: u64) -> Result<(), Status> {
        let Some(id) = id.filter(|id| id.role == Who::Node) else {
            return Ok(());
        };
        let bound = self
            .ctl()?
            .read(|s| s.nodes.get(&node_id).map(|n| n.name.clone()));
        match bound {
            Some(name) if name != id.name => Err(Status::permission_denied(format!(
                "node {node_id} is registered as {name:?}; this certificate is {id}: register first"
            ))),
            _ => Ok(()),
        }
    }
}
