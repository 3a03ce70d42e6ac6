//! The Volumes service: create, get, list, resize, delete (a standby answers get and list,
//! from the state in etcd).

use super::*;

#[tonic::async_trait]
impl v1::volumes_server::Volumes for Svc {
    async fn create(
        &self,
        r: Request<v1::CreateVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        let ctl = self.ctl()?;
        let r = r.into_inner();
        let q = r.requirements.unwrap_or_default();
        let out = ctl
            .run(Command::CreateVolume {
                name: r.name,
                size: r.size_bytes,
                layout: layout_from(r.layout)?,
                req: state::Requirements {
                    min_iops: q.min_iops,
                    min_mib_s: q.min_mib_s,
                    price_per_gib_hour: q.price_per_gib_hour,
                    spread_failure_domains: q.spread_failure_domains,
                    max_iops: q.max_iops,
                    max_mib_s: q.max_mib_s,
                    weight: q.weight,
                },
                now_ms: now_ms(),
                headroom_pct: state::qos::headroom(),
            })
            .await?;
        let Outcome::Volume(v) = out else {
            return Err(Status::internal("unexpected outcome"));
        };
        Ok(Response::new(ctl.read(|s| volume_msg(s, &v))))
    }

    async fn get(&self, r: Request<v1::GetVolumeRequest>) -> Result<Response<v1::Volume>, Status> {
        // A host reads the volumes it holds a lease on, and no other.
        let host = caller(&r)
            .filter(|id| id.role == Who::Host)
            .map(|id| id.name.clone());
        let ctl = self.view().await?;
        let name = r.into_inner().name;
        state::validate::volume_name(&name).map_err(CtlError::from)?;
        let held = |s: &state::State| {
            host.as_ref()
                .is_none_or(|h| s.leases.values().any(|l| l.volume == name && l.host == *h))
        };
        match ctl.read(|s| (held(s), s.volumes.get(&name).map(|v| volume_msg(s, v)))) {
            (false, _) => Err(Status::permission_denied(format!(
                "host {:?} holds no lease on volume {name:?}",
                host.unwrap_or_default()
            ))),
            (true, Some(v)) => Ok(Response::new(v)),
            (true, None) => Err(Status::not_found(format!("unknown volume {name:?}"))),
        }
    }

    async fn list(
        &self,
        _: Request<v1::ListVolumesRequest>,
    ) -> Result<Response<v1::ListVolumesResponse>, Status> {
        let ctl = self.view().await?;
        Ok(Response::new(ctl.read(|s| v1::ListVolumesResponse {
            volumes: s.volumes.values().map(|v| volume_msg(s, v)).collect(),
        })))
    }

    async fn resize(
        &self,
        r: Request<v1::ResizeVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        let ctl = self.ctl()?;
        let r = r.into_inner();
        let resize = Command::ResizeVolume {
            name: r.name.clone(),
            size: r.size_bytes,
            headroom_pct: state::qos::headroom(),
        };
        let Outcome::Volume(v) = ctl
            .run(if_version(&r.name, r.expect_version, resize))
            .await?
        else {
            return Err(Status::internal("unexpected outcome"));
        };
        // A shrink's freed tail: discard it now when the nodes answer; otherwise the ticker
        // retries.
        ctl.reap_freed().await;
        Ok(Response::new(ctl.read(|s| volume_msg(s, &v))))
    }

    async fn delete(
        &self,
        r: Request<v1::DeleteVolumeRequest>,
    ) -> Result<Response<v1::DeleteVolumeResponse>, Status> {
        let ctl = self.ctl()?;
        let r = r.into_inner();
        let delete = Command::DeleteVolume {
            name: r.name.clone(),
        };
        ctl.run(if_version(&r.name, r.expect_version, delete))
            .await?;
        // Discard now when the nodes answer; otherwise the ticker retries.
        ctl.reap_deleting().await;
        Ok(Response::new(v1::DeleteVolumeResponse {}))
    }

    async fn replace_copy(
        &self,
        r: Request<v1::ReplaceCopyRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        let ctl = self.ctl()?;
        let r = r.into_inner();
        let replace = Command::ReplaceCopy {
            volume: r.name.clone(),
            copy: r.copy,
            node: (r.node_id != 0).then_some(r.node_id),
            auto: false,
            headroom_pct: state::qos::headroom(),
        };
        let Outcome::Volume(v) = ctl
            .run(if_version(&r.name, r.expect_version, replace))
            .await?
        else {
            return Err(Status::internal("unexpected outcome"));
        };
        tracing::info!(volume = %v.name, copy = r.copy, "copy replaced by an operator: rebuilding on its new nodes");
        // The old extents: discard them now where their nodes answer; otherwise the ticker
        // retries.
        ctl.reap_freed().await;
        Ok(Response::new(ctl.read(|s| volume_msg(s, &v))))
    }
}
