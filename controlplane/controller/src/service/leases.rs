//! The Leases service: mount, renew, unmount, revoke, and the mirror's failure and rebuild
//! reports (a standby answers list, from the state in etcd).

use super::*;

#[tonic::async_trait]
impl v1::leases_server::Leases for Svc {
    async fn mount(
        &self,
        r: Request<v1::MountRequest>,
    ) -> Result<Response<v1::MountResponse>, Status> {
        let who = caller(&r).cloned();
        let ctl = self.ctl()?;
        let mut r = r.into_inner();
        // A host mounts as the name on its certificate: it cannot take a lease for another.
        if let Some(id) = who.as_ref().filter(|id| id.role == Who::Host) {
            if r.host_id.is_empty() {
                r.host_id = id.name.clone();
            } else if r.host_id != id.name {
                return Err(Status::permission_denied(format!(
                    "a host mounts as the name on its certificate: {:?}, not {:?}",
                    id.name,
                    state::validate::short(&r.host_id)
                )));
            }
        }
        let rw = match v1::Access::try_from(r.access) {
            Ok(v1::Access::ReadWrite) => true,
            Ok(v1::Access::ReadOnly) => false,
            _ => {
                return Err(Status::invalid_argument(
                    "access must be read-only or read-write",
                ))
            }
        };
        let ttl_ms = if r.ttl_ms == 0 {
            DEFAULT_TTL_MS
        } else {
            r.ttl_ms
        };
        let holder = match r.holder_key.len() {
            0 => None,
            32 => Some(dasmesh_wire::key_to_text(
                r.holder_key.as_slice().try_into().expect("32 bytes"),
            )),
            n => {
                return Err(Status::invalid_argument(format!(
                "holder_key is {n} bytes: an ed25519 public key is 32 (or none, for bearer tokens)"
            )))
            }
        };
        let out = ctl
            .run(Command::Mount {
                volume: r.volume,
                host: r.host_id,
                rw,
                ttl_ms,
                now_ms: now_ms(),
                holder,
            })
            .await?;
        lease_outcome(&ctl, out)
    }

    async fn renew(
        &self,
        r: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::MountResponse>, Status> {
        let ctl = self.ctl()?;
        holder_only(&ctl, caller(&r), r.get_ref().lease_id)?;
        let r = r.into_inner();
        let ttl_ms = if r.ttl_ms == 0 {
            DEFAULT_TTL_MS
        } else {
            r.ttl_ms
        };
        let out = ctl
            .run(Command::Renew {
                lease_id: r.lease_id,
                ttl_ms,
                now_ms: now_ms(),
                joined: r.joined,
            })
            .await?;
        lease_outcome(&ctl, out)
    }

    async fn unmount(
        &self,
        r: Request<v1::UnmountRequest>,
    ) -> Result<Response<v1::UnmountResponse>, Status> {
        let ctl = self.ctl()?;
        holder_only(&ctl, caller(&r), r.get_ref().lease_id)?;
        ctl.run(Command::Unmount {
            lease_id: r.into_inner().lease_id,
            now_ms: now_ms(),
        })
        .await?;
        Ok(Response::new(v1::UnmountResponse {}))
    }

    async fn revoke(
        &self,
        r: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::RevokeResponse>, Status> {
        let ctl = self.ctl()?;
        let Outcome::Volume(v) = ctl
            .run(Command::Revoke {
                lease_id: r.into_inner().lease_id,
                now_ms: now_ms(),
            })
            .await?
        else {
            return Err(Status::internal("unexpected outcome"));
        };
        Ok(Response::new(v1::RevokeResponse { new_epoch: v.epoch }))
    }

    async fn report_failure(
        &self,
        r: Request<v1::ReportFailureRequest>,
    ) -> Result<Response<v1::ReportFailureResponse>, Status> {
        let ctl = self.ctl()?;
        holder_only(&ctl, caller(&r), r.get_ref().lease_id)?;
        let mut r = r.into_inner();
        // The reason is for the operator: a long one is cut rather than the report refused, since
        // the writer cannot acknowledge its write until the report is accepted.
        r.reason = state::validate::truncate(&r.reason, state::validate::MAX_REASON).to_string();
        state::validate::copies(&r.copies).map_err(CtlError::from)?;
        let dirty: Vec<(u64, u64)> = r.dirty.iter().map(|d| (d.offset, d.length)).collect();
        state::dirty::check(&dirty).map_err(CtlError::from)?;
        let was_stale = ctl.read(|s| {
            s.leases
                .get(&r.lease_id)
                .and_then(|l| s.volumes.get(&l.volume))
                .is_some_and(|v| {
                    r.copies
                        .iter()
                        .all(|&c| v.extents.iter().any(|e| e.piece.copy == c && e.stale))
                })
        });
        let out = ctl
            .run(Command::FailCopies {
                lease_id: r.lease_id,
                copies: r.copies.clone(),
                reason: r.reason.clone(),
                now_ms: now_ms(),
                dirty,
                not_sent: r.not_sent,
            })
            .await;
        let v = match out {
            Ok(Outcome::Volume(v)) => v,
            Ok(_) => return Err(Status::internal("unexpected outcome")),
            Err(e) => {
                tracing::warn!(lease = r.lease_id, copies = ?r.copies, reason = %r.reason, "failure report refused: {e}");
                return Err(e.into());
            }
        };
        if was_stale {
            // The writer recording what it wrote while the copies were stale.
            tracing::debug!(volume = %v.name, copies = ?r.copies, ranges = r.dirty.len(), "dirty regions recorded");
        } else {
            tracing::warn!(volume = %v.name, lease = r.lease_id, copies = ?r.copies, reason = %r.reason,
                "mirror copies marked stale: no reads from them until rebuilt");
        }
        Ok(Response::new(ctl.read(|s| {
            v1::ReportFailureResponse {
                extents: v.extents.iter().map(|e| extent_msg(s, &v, e)).collect(),
                tracked: r
                    .copies
                    .iter()
                    .copied()
                    // A copy being rebuilt is told every region it misses (its rebuild goes back
                    // to the first), whether or not it keeps a record.
                    .filter(|c| {
                        v.dirty.contains_key(c)
                            || v.extents
                                .iter()
                                .any(|e| e.piece.copy == *c && e.rebuild.is_some())
                    })
                    .collect(),
            }
        })))
    }

    async fn report_rebuilt(
        &self,
        r: Request<v1::ReportRebuiltRequest>,
    ) -> Result<Response<v1::ReportFailureResponse>, Status> {
        let ctl = self.ctl()?;
        holder_only(&ctl, caller(&r), r.get_ref().lease_id)?;
        let r = r.into_inner();
        state::validate::copies(&r.copies).map_err(CtlError::from)?;
        let v = match ctl
            .run(Command::RebuiltCopies {
                lease_id: r.lease_id,
                copies: r.copies.clone(),
                now_ms: now_ms(),
            })
            .await?
        {
            Outcome::Volume(v) => v,
            _ => return Err(Status::internal("unexpected outcome")),
        };
        tracing::info!(volume = %v.name, lease = r.lease_id, copies = ?r.copies,
            "mirror copies rebuilt: they serve reads again");
        Ok(Response::new(ctl.read(|s| v1::ReportFailureResponse {
            extents: v.extents.iter().map(|e| extent_msg(s, &v, e)).collect(),
            tracked: Vec::new(),
        })))
    }

    async fn list(
        &self,
        r: Request<v1::ListLeasesRequest>,
    ) -> Result<Response<v1::ListLeasesResponse>, Status> {
        // A host sees its own leases only.
        let host = caller(&r)
            .filter(|id| id.role == Who::Host)
            .map(|id| id.name.clone());
        let ctl = self.view().await?;
        let vol = r.into_inner().volume;
        Ok(Response::new(ctl.read(|s| {
            v1::ListLeasesResponse {
                leases: s
                    .leases
                    .values()
                    .filter(|l| vol.is_empty() || l.volume == vol)
                    .filter(|l| host.as_ref().is_none_or(|h| *h == l.host))
                    .filter_map(|l| s.volumes.get(&l.volume).map(|v| lease_msg(l, v)))
                    .collect(),
            }
        })))
    }
}

/// Refuses a host's call about a lease of another host. An unknown lease is left to the
/// command, which says so.
fn holder_only(ctl: &Controller, id: Option<&Identity>, lease_id: u64) -> Result<(), Status> {
    let Some(id) = id.filter(|id| id.role == Who::Host) else {
        return Ok(());
    };
    match ctl.read(|s| s.leases.get(&lease_id).map(|l| l.host.clone())) {
        Some(host) => require_self(Some(id), Who::Host, &host, &format!("lease {lease_id}")),
        None => Ok(()),
    }
}
