//! The gRPC services, one file per service: each call becomes one [`Command`] applied by the
//! active [`Controller`] (see [`crate::controller`]); a standby refuses and names the active one.
//! Errors map to gRPC status in one place ([`From<CtlError> for Status`]); the messages the
//! services answer with are built in [`msg`].

use std::sync::Arc;

use dasmesh_api::v1;
use tonic::{Request, Response, Status};

use crate::authz::{caller, require_self};
pub use crate::controller::{now_ms, Controller, CtlError};
use crate::ha::{Role, Roles};
use crate::state::{self, Command, Error, Outcome};
use crate::store::StoreError;
use dasmesh_api::tls::{Identity, Role as Who};
use msg::{extent_msg, layout_from, lease_msg, node_msg, up_devices, volume_msg};

mod control;
mod leases;
pub mod msg;
mod pool;
mod registry;
#[cfg(test)]
mod tests;
mod usage;
mod volumes;

/// Default lease length when a mount asks for none.
pub const DEFAULT_TTL_MS: u64 = 60_000;

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
            CtlError::Refused(Error::NameTaken { .. } | Error::NotThisNode { .. }) => {
                Status::permission_denied(msg)
            }
            CtlError::Refused(
                Error::Leased { .. }
                | Error::ReadWriteHeld { .. }
                | Error::NotCurrentWriter { .. }
                | Error::LastHealthyCopy { .. },
            ) => Status::failed_precondition(msg),
            CtlError::Refused(Error::Stale { .. }) => Status::aborted(msg),
            CtlError::Refused(Error::Insufficient(_)) => Status::resource_exhausted(msg),
            CtlError::Refused(Error::Invalid(_)) => Status::invalid_argument(msg),
            CtlError::Refused(Error::Exhausted(_)) => Status::resource_exhausted(msg),
            CtlError::Store(StoreError::Unfaithful(_)) => Status::internal(msg),
            CtlError::Store(StoreError::NotActive(_)) => {
                let mut st = Status::unavailable(format!("standby controller: {msg}"));
                st.metadata_mut().insert(
                    ROLE_HEADER,
                    tonic::metadata::MetadataValue::from_static(STANDBY),
                );
                st
            }
            CtlError::Store(_) => Status::unavailable(msg),
        }
    }
}

/// All five services share one controller, when this one is active.
#[derive(Clone)]
pub struct Svc(pub Arc<Roles>);

impl Svc {
    /// Services of a controller that is always active (the embedded store).
    pub fn active(ctl: Arc<Controller>) -> Svc {
        Svc(Roles::active(ctl, String::new(), "memory".into()))
    }

    /// The active controller, or the standby's refusal that names it.
    fn ctl(&self) -> Result<Arc<Controller>, Status> {
        match self.0.get() {
            Role::Active(c) => Ok(c),
            Role::Standby(active) => Err(standby(active.as_deref())),
        }
    }
}

/// What a read is answered from: the active controller's live state, or, on a standby, the
/// state as etcd holds it when asked.
pub(crate) enum View {
    /// The active controller.
    Live(Arc<Controller>),
    /// A standby's look at the stored state.
    Stored(Box<crate::state::State>),
}

impl View {
    /// A look at the state.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&crate::state::State) -> T) -> T {
        match self {
            View::Live(c) => c.read(f),
            View::Stored(s) => f(s),
        }
    }
}

impl Svc {
    /// Where a read is answered from: this controller if active; on a standby over etcd, the
    /// state etcd holds now (so an operator asking any controller sees the pool); otherwise the
    /// standby's refusal.
    async fn view(&self) -> Result<View, Status> {
        match self.0.get() {
            Role::Active(c) => Ok(View::Live(c)),
            Role::Standby(active) => match &self.0.etcd {
                Some(etcd) => match etcd.load(now_ms()).await {
                    Ok((s, _)) => Ok(View::Stored(Box::new(s))),
                    Err(e) => {
                        tracing::debug!("standby read from etcd: {e}");
                        Err(standby(active.as_deref()))
                    }
                },
                None => Err(standby(active.as_deref())),
            },
        }
    }
}

pub use dasmesh_api::headers::{ACTIVE_HEADER, ROLE_HEADER, STANDBY};

/// A standby's answer: UNAVAILABLE, with the active controller's URL when it is known, so
/// clients given several controllers go there.
pub fn standby(active: Option<&str>) -> Status {
    let mut st = Status::unavailable(match active {
        Some(url) => format!("standby controller: the active controller is at {url}"),
        None => "standby controller: no active controller elected yet".to_string(),
    });
    st.metadata_mut().insert(
        ROLE_HEADER,
        tonic::metadata::MetadataValue::from_static(STANDBY),
    );
    if let Some(v) = active.and_then(|u| u.parse().ok()) {
        st.metadata_mut().insert(ACTIVE_HEADER, v);
    }
    st
}

/// `cmd` on volume `name`, guarded by the volume's version when the caller gave one (not 0).
fn if_version(name: &str, expect: u64, cmd: Command) -> Command {
    match expect {
        0 => cmd,
        version => Command::IfVersion {
            volume: name.to_string(),
            version,
            then: Box::new(cmd),
        },
    }
}

fn lease_outcome(c: &Controller, out: Outcome) -> Result<Response<v1::MountResponse>, Status> {
    match out {
        Outcome::Lease(l, v) => Ok(Response::new(c.mount_info(&l, &v))),
        _ => Err(Status::internal("unexpected outcome")),
    }
}
