//! The gRPC services: each call becomes one [`Command`] applied by the [`Controller`] (state
//! machine + store + token signing). Errors map to gRPC status in one place.

use std::sync::{Arc, Mutex};

use dasmesh_api::v1;
use dasmesh_wire::{Claim, DeviceId, Epoch, NodeId, Rights, SigningKey, VolumeId};
use tonic::{Request, Response, Status};

use crate::alloc::Layout;
use crate::ha::{Role, Roles};
use crate::state::{self, apply, Command, Error, LeaseRec, NodeState, Outcome, State, VolumeRec};
use crate::store::{records, Store, StoreError};

/// Default lease length when a mount asks for none.
pub const DEFAULT_TTL_MS: u64 = 60_000;

/// The controller: the live state, its store, and the token-signing key.
pub struct Controller {
    state: Mutex<State>,
    store: Box<dyn Store>,
    key: SigningKey,
    /// Heartbeat interval handed to nodes.
    pub heartbeat_ms: u64,
    /// Commands waiting for the next commit (see [`Controller::execute`]).
    pending: Mutex<Vec<Waiting>>,
    /// Held by the one caller that commits a batch.
    committing: Mutex<()>,
}

/// A command waiting in a batch, and where its result goes.
struct Waiting {
    cmd: Command,
    done: Arc<Mutex<Option<Result<Outcome, CtlError>>>>,
}

/// A refusal or a failure of the controller.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CtlError {
    /// The logic refused.
    #[error(transparent)]
    Refused(#[from] Error),
    /// The store failed: nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
/// Longest message a status carries: it travels in a header, which gRPC stacks cap at a few KiB
/// (beyond that the client sees RESOURCE_EXHAUSTED instead of the refusal). Refusals quote only a
/// short prefix of a bad value; this is the backstop for values stored before those limits.
const MAX_STATUS_MESSAGE: usize = 1024;

impl From<CtlError> for Status {
    fn from(e: CtlError) -> Status {
        let mut msg = e.to_string();
        if msg.len() > MAX_STATUS_MESSAGE {
            msg = format!("{}...", state::validate::truncate(&msg, MAX_STATUS_MESSAGE));
        }
        match e {
            CtlError::Refused(
                Error::UnknownNode(_) | Error::UnknownVolume(_) | Error::UnknownLease(_),
            ) => Status::not_found(msg),
            CtlError::Refused(Error::VolumeExists(_)) => Status::already_exists(msg),
            CtlError::Refused(
                Error::Leased { .. }
                | Error::ReadWriteHeld { .. }
                | Error::NotCurrentWriter { .. }
                | Error::LastHealthyCopy { .. },
            ) => Status::failed_precondition(msg),
            CtlError::Refused(Error::Insufficient(_)) => Status::resource_exhausted(msg),
            CtlError::Refused(Error::Invalid(_)) => Status::invalid_argument(msg),
            CtlError::Refused(Error::Exhausted(_)) => Status::resource_exhausted(msg),
            CtlError::Store(StoreError::Unfaithful(_)) => Status::internal(msg),
            CtlError::Store(StoreError::NotActive(_)) => {
                let mut st = Status::unavailable(format!("standby controller: {msg}"));
                st.metadata_mut().insert(
                    ROLE_HEADER,
                    tonic::metadata::MetadataValue::from_static("standby"),
                );
                st
            }
            CtlError::Store(_) => Status::unavailable(msg),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Controller {
    /// A controller over `store` (its state loaded; every node counts as having beaten now),
    /// signing with `key`.
    pub fn new(
        store: Box<dyn Store>,
        key: SigningKey,
        heartbeat_ms: u64,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            state: Mutex::new(store.load(now_ms())?),
            store,
            key,
            heartbeat_ms,
            pending: Mutex::new(Vec::new()),
            committing: Mutex::new(()),
        })
    }

    /// A controller over `store` holding `state` already (loaded by the caller).
    pub fn with_state(
        state: State,
        store: Box<dyn Store>,
        key: SigningKey,
        heartbeat_ms: u64,
    ) -> Self {
        Self {
            state: Mutex::new(state),
            store,
            key,
            heartbeat_ms,
            pending: Mutex::new(Vec::new()),
            committing: Mutex::new(()),
        }
    }

    /// Applies a command: on a copy, then stored, then made live. Commands that arrive while a
    /// commit is under way wait for it and then go together, in arrival order, as one batch in
    /// one store transaction (a group commit: one disk sync, or one etcd round trip, for all of
    /// them). A command that changes no record (a heartbeat from a node that is up, a tick
    /// with nothing to do) writes nothing.
    pub fn execute(&self, cmd: Command) -> Result<Outcome, CtlError> {
        let done = Arc::new(Mutex::new(None));
        lock(&self.pending).push(Waiting {
            cmd,
            done: Arc::clone(&done),
        });
        let _committer = lock(&self.committing);
        if let Some(r) = lock(&done).take() {
            // An earlier committer took it in its batch.
            return r;
        }
        let batch = std::mem::take(&mut *lock(&self.pending));
        self.commit_batch(batch);
        let r = lock(&done).take();
        r.expect("a batch answers every command in it")
    }

    /// Applies `batch` to a copy of the live state, commits what changed, then makes the copy
    /// live and answers each command. Only the holder of `committing` calls it, so the live
    /// state changes nowhere else and readers see it whole before and after.
    fn commit_batch(&self, batch: Vec<Waiting>) {
        let live = lock(&self.state).clone();
        let mut next = live.clone();
        let mut applied = Vec::new();
        let mut answers = Vec::with_capacity(batch.len());
        for w in batch {
            let r = apply(&mut next, w.cmd.clone());
            if r.is_ok() {
                applied.push(w.cmd);
            }
            answers.push((w.done, r.map_err(CtlError::from)));
        }
        let stored = match records::diff(&live, &next) {
            Ok(changes) if changes.is_empty() => Ok(()),
            Ok(changes) => self.store.commit(&changes, &applied),
            Err(e) => Err(e),
        };
        match stored {
            Ok(()) => *lock(&self.state) = next,
            Err(e) => {
                for (_, r) in &mut answers {
                    if r.is_ok() {
                        *r = Err(CtlError::Store(e.clone()));
                    }
                }
            }
        }
        for (done, r) in answers {
            *lock(&done) = Some(r);
        }
    }

    /// A read-only look at the state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&lock(&self.state))
    }

    /// The public half of the signing key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Mount information for a lease: every extent with a token for its node and device.
    fn mount_info(&self, l: &LeaseRec, v: &VolumeRec) -> v1::MountResponse {
        let extents = self.read(|s| {
            v.extents
                .iter()
                .map(|e| {
                    let claim = Claim {
                        node_id: NodeId(e.piece.key.node),
                        volume_id: VolumeId(v.id),
                        device_id: DeviceId(e.piece.key.device),
                        range_offset: e.piece.offset,
                        range_length: e.piece.length,
                        rights: if l.rw {
                            Rights::ReadWrite
                        } else {
                            Rights::ReadOnly
                        },
                        epoch: Epoch(e.token_epoch(l.epoch)),
                        issued_at_ms: now_ms(),
                        expires_at_ms: l.expires_at_ms,
                        // The lease id, so nodes can count usage per lease.
                        nonce: l.id,
                    };
                    v1::MountedExtent {
                        extent: Some(extent_msg(s, v, e)),
                        token: claim.sign(&self.key).to_text(),
                    }
                })
                .collect()
        });
        v1::MountResponse {
            lease: Some(lease_msg(l, v)),
            size_bytes: v.size,
            layout: Some(v.layout.into()),
            extents,
        }
    }
}

fn extent_msg(s: &State, v: &VolumeRec, e: &state::ExtentRec) -> v1::Extent {
    let _ = v;
    v1::Extent {
        node_id: e.piece.key.node,
        node_address: s
            .nodes
            .get(&e.piece.key.node)
            .map(|n| n.address.clone())
            .unwrap_or_default(),
        device_id: e.piece.key.device,
        offset: e.piece.offset,
        length: e.piece.length,
        copy: e.piece.copy,
        index: e.piece.index,
        stale: e.stale,
    }
}

fn layout_from(l: Option<v1::Layout>) -> Result<Layout, Status> {
    let l = l.ok_or_else(|| Status::invalid_argument("layout is required"))?;
    Layout::try_from(&l).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn lease_msg(l: &LeaseRec, v: &VolumeRec) -> v1::Lease {
    v1::Lease {
        lease_id: l.id,
        volume_id: v.id,
        volume_name: l.volume.clone(),
        host_id: l.host.clone(),
        access: if l.rw {
            v1::Access::ReadWrite
        } else {
            v1::Access::ReadOnly
        } as i32,
        epoch: l.epoch,
        started_ms: l.started_ms,
        expires_at_ms: l.expires_at_ms,
    }
}

fn volume_msg(s: &State, v: &VolumeRec) -> v1::Volume {
    let up = |node: u64| s.nodes.get(&node).is_some_and(|n| n.state == NodeState::Up);
    let state = match v.layout {
        _ if v.deleting => v1::VolumeState::Deleting,
        Layout::Mirror { copies } => {
            let good_copies = (0..copies)
                .filter(|c| {
                    v.extents
                        .iter()
                        .filter(|e| e.piece.copy == *c)
                        .all(|e| up(e.piece.key.node) && !e.stale)
                })
                .count() as u32;
            if good_copies == copies {
                v1::VolumeState::Ok
            } else if good_copies > 0 {
                v1::VolumeState::Degraded
            } else {
                v1::VolumeState::Unavailable
            }
        }
        _ if v.extents.iter().all(|e| up(e.piece.key.node)) => v1::VolumeState::Ok,
        _ => v1::VolumeState::Unavailable,
    };
    v1::Volume {
        volume_id: v.id,
        name: v.name.clone(),
        size_bytes: v.size,
        layout: Some(v.layout.into()),
        extents: v.extents.iter().map(|e| extent_msg(s, v, e)).collect(),
        requirements: Some(v1::Requirements {
            min_iops: v.req.min_iops,
            min_mib_s: v.req.min_mib_s,
            price_per_gib_hour: v.req.price_per_gib_hour,
            spread_failure_domains: v.req.spread_failure_domains,
        }),
        state: state as i32,
        created_ms: v.created_ms,
        epoch: v.epoch,
        active_leases: s.leases.values().filter(|l| l.volume == v.name).count() as u32,
    }
}

fn node_msg(s: &State, n: &state::NodeRec) -> v1::Node {
    let cands = state::candidates(s);
    v1::Node {
        node_id: n.id,
        address: n.address.clone(),
        version: n.version.clone(),
        state: match n.state {
            NodeState::Up => v1::NodeState::Up,
            NodeState::Down => v1::NodeState::Down,
            NodeState::Gone => v1::NodeState::Gone,
        } as i32,
        last_heartbeat_ms: n.last_heartbeat_ms,
        failure_domain: n.failure_domain.clone(),
        devices: n
            .devices
            .iter()
            .map(|d| v1::Device {
                node_id: n.id,
                device_id: d.device_id,
                path: d.path.clone(),
                block_size: d.block_size,
                size_bytes: d.size,
                lendable_start: d.lendable_start,
                lendable_length: d.lendable_length,
                free_bytes: cands
                    .iter()
                    .find(|c| c.key.node == n.id && c.key.device == d.device_id)
                    .map(|c| c.free.iter().map(|r| r.1).sum())
                    .unwrap_or(0),
            })
            .collect(),
    }
}

/// All five services share one controller, when this one is active.
#[derive(Clone)]
pub struct Svc(pub Arc<Roles>);

impl Svc {
    /// Services of a controller that is always active (the embedded store).
    pub fn active(ctl: Arc<Controller>) -> Svc {
        Svc(Roles::active(ctl, String::new()))
    }

    /// The active controller, or the standby's refusal that names it.
    fn ctl(&self) -> Result<Arc<Controller>, Status> {
        match self.0.get() {
            Role::Active(c) => Ok(c),
            Role::Standby(active) => Err(standby(active.as_deref())),
        }
    }
}

/// Response metadata of a standby's refusal: `standby`, and the active controller's URL.
pub const ROLE_HEADER: &str = "dasmesh-role";
/// See [`ROLE_HEADER`].
pub const ACTIVE_HEADER: &str = "dasmesh-active";

/// A standby's answer: UNAVAILABLE, with the active controller's URL when it is known, so
/// clients given several controllers go there.
pub fn standby(active: Option<&str>) -> Status {
    let mut st = Status::unavailable(match active {
        Some(url) => format!("standby controller: the active controller is at {url}"),
        None => "standby controller: no active controller elected yet".to_string(),
    });
    st.metadata_mut().insert(
        ROLE_HEADER,
        tonic::metadata::MetadataValue::from_static("standby"),
    );
    if let Some(v) = active.and_then(|u| u.parse().ok()) {
        st.metadata_mut().insert(ACTIVE_HEADER, v);
    }
    st
}

fn lease_outcome(c: &Controller, out: Outcome) -> Result<Response<v1::MountResponse>, Status> {
    match out {
        Outcome::Lease(l, v) => Ok(Response::new(c.mount_info(&l, &v))),
        _ => Err(Status::internal("unexpected outcome")),
    }
}

#[tonic::async_trait]
impl v1::node_registry_server::NodeRegistry for Svc {
    async fn register(
        &self,
        r: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let r = r.into_inner();
        let out = self.ctl()?.execute(Command::Register {
            node_id: r.node_id,
            address: r.address,
            version: r.version,
            failure_domain: r.failure_domain,
            now_ms: now_ms(),
        })?;
        let Outcome::Node(n) = out else {
            return Err(Status::internal("unexpected outcome"));
        };
        Ok(Response::new(v1::RegisterResponse {
            node_id: n.id,
            signing_public_key: self.ctl()?.public_key().to_vec(),
            heartbeat_interval_ms: self.ctl()?.heartbeat_ms as u32,
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
        let Outcome::Node(n) = self.ctl()?.execute(Command::ReportDevices {
            node_id: r.node_id,
            devices,
        })?
        else {
            return Err(Status::internal("unexpected outcome"));
        };
        Ok(Response::new(v1::ReportDevicesResponse {
            node: Some(self.ctl()?.read(|s| node_msg(s, &n))),
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
        let known = match self.ctl()?.execute(Command::Heartbeat {
            node_id: r.node_id,
            usage,
            now_ms: now_ms(),
        }) {
            Ok(_) => true,
            Err(CtlError::Refused(Error::UnknownNode(_))) => false,
            Err(e) => return Err(e.into()),
        };
        // Every answer carries the whole list, so a node that missed beats (or restarted and
        // forgot) still learns of a revocation before the lease's tokens expire.
        let revoked = self.ctl()?.read(|s| {
            s.revoked
                .iter()
                .map(|(&lease_id, &expires_at_ms)| v1::RevokedLease {
                    lease_id,
                    expires_at_ms,
                })
                .collect()
        });
        Ok(Response::new(v1::HeartbeatResponse { known, revoked }))
    }

    async fn deregister(
        &self,
        r: Request<v1::DeregisterRequest>,
    ) -> Result<Response<v1::DeregisterResponse>, Status> {
        self.ctl()?.execute(Command::Deregister {
            node_id: r.into_inner().node_id,
        })?;
        Ok(Response::new(v1::DeregisterResponse {}))
    }
}

#[tonic::async_trait]
impl v1::pool_server::Pool for Svc {
    async fn list_nodes(
        &self,
        _: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        Ok(Response::new(self.ctl()?.read(|s| v1::ListNodesResponse {
            nodes: s.nodes.values().map(|n| node_msg(s, n)).collect(),
        })))
    }

    async fn list_devices(
        &self,
        _: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        Ok(Response::new(self.ctl()?.read(|s| {
            let devices: Vec<v1::Device> = s
                .nodes
                .values()
                .filter(|n| n.state == NodeState::Up)
                .flat_map(|n| node_msg(s, n).devices)
                .collect();
            v1::ListDevicesResponse {
                total_bytes: devices.iter().map(|d| d.lendable_length).sum(),
                free_bytes: devices.iter().map(|d| d.free_bytes).sum(),
                devices,
            }
        })))
    }

    async fn get_node(&self, r: Request<v1::GetNodeRequest>) -> Result<Response<v1::Node>, Status> {
        let id = r.into_inner().node_id;
        self.ctl()?
            .read(|s| s.nodes.get(&id).map(|n| node_msg(s, n)))
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("unknown node {id}")))
    }
}

#[tonic::async_trait]
impl v1::volumes_server::Volumes for Svc {
    async fn create(
        &self,
        r: Request<v1::CreateVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        let r = r.into_inner();
        let q = r.requirements.unwrap_or_default();
        let out = self.ctl()?.execute(Command::CreateVolume {
            name: r.name,
            size: r.size_bytes,
            layout: layout_from(r.layout)?,
            req: state::Requirements {
                min_iops: q.min_iops,
                min_mib_s: q.min_mib_s,
                price_per_gib_hour: q.price_per_gib_hour,
                spread_failure_domains: q.spread_failure_domains,
            },
            now_ms: now_ms(),
        })?;
        let Outcome::Volume(v) = out else {
            return Err(Status::internal("unexpected outcome"));
        };
        Ok(Response::new(self.ctl()?.read(|s| volume_msg(s, &v))))
    }

    async fn get(&self, r: Request<v1::GetVolumeRequest>) -> Result<Response<v1::Volume>, Status> {
        let name = r.into_inner().name;
        state::validate::volume_name(&name).map_err(CtlError::from)?;
        self.ctl()?
            .read(|s| s.volumes.get(&name).map(|v| volume_msg(s, v)))
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("unknown volume {name:?}")))
    }

    async fn list(
        &self,
        _: Request<v1::ListVolumesRequest>,
    ) -> Result<Response<v1::ListVolumesResponse>, Status> {
        Ok(Response::new(self.ctl()?.read(|s| {
            v1::ListVolumesResponse {
                volumes: s.volumes.values().map(|v| volume_msg(s, v)).collect(),
            }
        })))
    }

    async fn resize(
        &self,
        r: Request<v1::ResizeVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        let r = r.into_inner();
        let Outcome::Volume(v) = self.ctl()?.execute(Command::ResizeVolume {
            name: r.name,
            size: r.size_bytes,
        })?
        else {
            return Err(Status::internal("unexpected outcome"));
        };
        // A shrink's freed tail: discard it now when the nodes answer; otherwise the ticker
        // retries.
        self.ctl()?.reap_freed().await;
        Ok(Response::new(self.ctl()?.read(|s| volume_msg(s, &v))))
    }

    async fn delete(
        &self,
        r: Request<v1::DeleteVolumeRequest>,
    ) -> Result<Response<v1::DeleteVolumeResponse>, Status> {
        self.ctl()?.execute(Command::DeleteVolume {
            name: r.into_inner().name,
        })?;
        // Discard now when the nodes answer; otherwise the ticker retries.
        self.ctl()?.reap_deleting().await;
        Ok(Response::new(v1::DeleteVolumeResponse {}))
    }
}

#[tonic::async_trait]
impl v1::leases_server::Leases for Svc {
    async fn mount(
        &self,
        r: Request<v1::MountRequest>,
    ) -> Result<Response<v1::MountResponse>, Status> {
        let r = r.into_inner();
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
        let out = self.ctl()?.execute(Command::Mount {
            volume: r.volume,
            host: r.host_id,
            rw,
            ttl_ms,
            now_ms: now_ms(),
        })?;
        lease_outcome(&*self.ctl()?, out)
    }

    async fn renew(
        &self,
        r: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::MountResponse>, Status> {
        let r = r.into_inner();
        let ttl_ms = if r.ttl_ms == 0 {
            DEFAULT_TTL_MS
        } else {
            r.ttl_ms
        };
        let out = self.ctl()?.execute(Command::Renew {
            lease_id: r.lease_id,
            ttl_ms,
            now_ms: now_ms(),
        })?;
        lease_outcome(&*self.ctl()?, out)
    }

    async fn unmount(
        &self,
        r: Request<v1::UnmountRequest>,
    ) -> Result<Response<v1::UnmountResponse>, Status> {
        self.ctl()?.execute(Command::Unmount {
            lease_id: r.into_inner().lease_id,
            now_ms: now_ms(),
        })?;
        Ok(Response::new(v1::UnmountResponse {}))
    }

    async fn revoke(
        &self,
        r: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::RevokeResponse>, Status> {
        let Outcome::Volume(v) = self.ctl()?.execute(Command::Revoke {
            lease_id: r.into_inner().lease_id,
            now_ms: now_ms(),
        })?
        else {
            return Err(Status::internal("unexpected outcome"));
        };
        Ok(Response::new(v1::RevokeResponse { new_epoch: v.epoch }))
    }

    async fn report_failure(
        &self,
        r: Request<v1::ReportFailureRequest>,
    ) -> Result<Response<v1::ReportFailureResponse>, Status> {
        let mut r = r.into_inner();
        // The reason is for the operator: a long one is cut rather than the report refused, since
        // the writer cannot acknowledge its write until the report is accepted.
        r.reason = state::validate::truncate(&r.reason, state::validate::MAX_REASON).to_string();
        state::validate::copies(&r.copies).map_err(CtlError::from)?;
        let out = self.ctl()?.execute(Command::FailCopies {
            lease_id: r.lease_id,
            copies: r.copies.clone(),
            reason: r.reason.clone(),
            now_ms: now_ms(),
        });
        let v = match out {
            Ok(Outcome::Volume(v)) => v,
            Ok(_) => return Err(Status::internal("unexpected outcome")),
            Err(e) => {
                tracing::warn!(lease = r.lease_id, copies = ?r.copies, reason = %r.reason, "failure report refused: {e}");
                return Err(e.into());
            }
        };
        tracing::warn!(volume = %v.name, lease = r.lease_id, copies = ?r.copies, reason = %r.reason,
            "mirror copies marked stale: no reads from them until rebuilt");
        Ok(Response::new(self.ctl()?.read(|s| {
            v1::ReportFailureResponse {
                extents: v.extents.iter().map(|e| extent_msg(s, &v, e)).collect(),
            }
        })))
    }

    async fn report_rebuilt(
        &self,
        r: Request<v1::ReportRebuiltRequest>,
    ) -> Result<Response<v1::ReportFailureResponse>, Status> {
        let r = r.into_inner();
        state::validate::copies(&r.copies).map_err(CtlError::from)?;
        let v = match self.ctl()?.execute(Command::RebuiltCopies {
            lease_id: r.lease_id,
            copies: r.copies.clone(),
            now_ms: now_ms(),
        })? {
            Outcome::Volume(v) => v,
            _ => return Err(Status::internal("unexpected outcome")),
        };
        tracing::info!(volume = %v.name, lease = r.lease_id, copies = ?r.copies,
            "mirror copies rebuilt: they serve reads again");
        Ok(Response::new(self.ctl()?.read(|s| {
            v1::ReportFailureResponse {
                extents: v.extents.iter().map(|e| extent_msg(s, &v, e)).collect(),
            }
        })))
    }

    async fn list(
        &self,
        r: Request<v1::ListLeasesRequest>,
    ) -> Result<Response<v1::ListLeasesResponse>, Status> {
        let vol = r.into_inner().volume;
        Ok(Response::new(self.ctl()?.read(|s| {
            v1::ListLeasesResponse {
                leases: s
                    .leases
                    .values()
                    .filter(|l| vol.is_empty() || l.volume == vol)
                    .filter_map(|l| s.volumes.get(&l.volume).map(|v| lease_msg(l, v)))
                    .collect(),
            }
        })))
    }
}

#[tonic::async_trait]
impl v1::usage_server::Usage for Svc {
    async fn report(
        &self,
        r: Request<v1::UsageRequest>,
    ) -> Result<Response<v1::UsageReport>, Status> {
        let q = r.into_inner();
        let now = now_ms();
        let end = if q.end_ms == 0 { now } else { q.end_ms };
        let records: Vec<v1::UsageRecord> = self.ctl()?.read(|s| {
            s.usage
                .values()
                .filter(|u| q.host_id.is_empty() || u.host == q.host_id)
                .filter(|u| q.volume.is_empty() || u.volume == q.volume)
                .filter_map(|u| {
                    let from = u.started_ms.max(q.start_ms);
                    let to = u.ended_ms.unwrap_or(now).min(end);
                    (to > from || (to == from && u.ended_ms.is_none())).then(|| {
                        let gib_hours =
                            u.size as f64 / (1u64 << 30) as f64 * (to - from) as f64 / 3_600_000.0;
                        v1::UsageRecord {
                            host_id: u.host.clone(),
                            volume: u.volume.clone(),
                            lease_id: u.lease_id,
                            started_ms: from,
                            ended_ms: to,
                            read_bytes: u.read_bytes,
                            write_bytes: u.write_bytes,
                            read_ops: u.read_ops,
                            write_ops: u.write_ops,
                            gib_hours,
                            charge: gib_hours * u.price_per_gib_hour,
                        }
                    })
                })
                .collect()
        });
        let total_charge = records.iter().map(|r| r.charge).sum();
        Ok(Response::new(v1::UsageReport {
            records,
            total_charge,
        }))
    }
}

mod reap;
#[cfg(test)]
mod tests;
