//! The gateway proper: a mounted dasmesh [`Volume`] as the backend, its errors mapped to NBD
//! errors, and [`serve_volume`], which mounts, serves until told to stop, then flushes and
//! unmounts (the lease ends).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dasmesh_client::{Access, Error, MountOptions, Volume};
use dasmesh_wire::Status;

use crate::budget::{Budget, BudgetError};
use crate::export::{Backend, Data, Export, Failure};
use crate::poll::PollMode;
use crate::proto::Errno;
use crate::readahead::{Readahead, ReadaheadConfig};
use crate::server::{serve, ListenAddr, Listener};

/// The NBD error for a failed volume call.
pub fn errno(e: &Error) -> Errno {
    match e.status() {
        Some(Status::NoSpace) => Errno::NoSpc,
        Some(Status::ReadOnly) => Errno::Perm,
        Some(
            Status::Misaligned
            | Status::OutOfRange
            | Status::TooLarge
            | Status::InvalidLength
            | Status::BadFlags,
        ) => Errno::Inval,
        Some(_) => Errno::Io,
        None => match e {
            Error::Invalid(_) => Errno::Inval,
            _ => Errno::Io,
        },
    }
}

fn fail(e: Error) -> Failure {
    Failure {
        code: errno(&e),
        why: e.to_string(),
    }
}

impl Backend for Volume {
    async fn read(&self, offset: u64, len: usize) -> Result<Data, Failure> {
        Volume::read(self, offset, len)
            .await
            .map(Data::Owned)
            .map_err(fail)
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), Failure> {
        Volume::write(self, offset, data, fua).await.map_err(fail)
    }

    async fn flush(&self) -> Result<(), Failure> {
        Volume::flush(self).await.map_err(fail)
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), Failure> {
        Volume::discard(self, offset, len).await.map_err(fail)
    }

    async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), Failure> {
        Volume::write_zeroes(self, offset, len, fua)
            .await
            .map_err(fail)
    }
}

/// How to serve a volume.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// Where to listen.
    pub listen: ListenAddr,
    /// Mount read-only and export read-only.
    pub read_only: bool,
    /// How to mount (`access` is set from `read_only`).
    pub mount: MountOptions,
    /// Sequential readahead (read-write exports only: see [`crate::readahead`]).
    pub readahead: ReadaheadConfig,
    /// How to wait while requests are in flight (see [`crate::poll`]).
    pub poll: PollMode,
    /// Bytes of READ and WRITE data all connections together may hold (see [`crate::budget`]).
    pub max_buffer: u64,
    /// Stand by: while another host holds the volume read-write, try to mount it every this
    /// long, and serve once its lease has ended (that host unmounted, or died and its lease
    /// expired). The new lease's epoch fences the old host at every node.
    pub standby: Option<Duration>,
}

/// Why the gateway stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The memory budget is unusable.
    #[error("--max-buffer")]
    Budget(#[from] BudgetError),
    /// The volume could not be mounted.
    #[error("mount {volume}: {source}")]
    Mount {
        /// The volume.
        volume: String,
        /// Why.
        source: Error,
    },
    /// The listen address could not be bound.
    #[error("listen on {addr:?}: {source}")]
    Bind {
        /// The address.
        addr: ListenAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The final flush or the unmount failed.
    #[error("unmount {volume}: {source}")]
    Unmount {
        /// The volume.
        volume: String,
        /// Why.
        source: Error,
    },
}

/// Mounts `volume` through the controller at `controller` (a URL, or a comma-separated list of
/// controllers, the active one followed), serves it as an NBD export, calls `listening` with the
/// address once clients can connect, and runs until `shutdown` resolves. Then: no new
/// connections, requests in flight are finished, the volume is flushed and unmounted (the lease
/// ends).
pub async fn serve_volume(
    controller: &str,
    volume: &str,
    mut opts: GatewayOptions,
    listening: impl FnOnce(&str),
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    opts.mount.access = if opts.read_only {
        Access::ReadOnly
    } else {
        Access::ReadWrite
    };
    let budget = Budget::new(opts.max_buffer)?;
    tokio::pin!(shutdown);
    let Some(vol) = mount(controller, volume, &opts, shutdown.as_mut()).await? else {
        tracing::info!(volume, "stopped while standing by");
        return Ok(());
    };
    let export = Arc::new(Export {
        name: volume.to_string(),
        description: format!("dasmesh volume {volume} ({:?})", vol.layout()),
        size: vol.size(),
        min_block: vol.block_size(),
        max_block: budget.max_request().max(vol.block_size()),
        read_only: opts.read_only,
    });
    let listener = match Listener::bind(&opts.listen).await {
        Ok(l) => l,
        Err(source) => {
            let _ = vol.unmount().await;
            return Err(GatewayError::Bind {
                addr: opts.listen,
                source,
            });
        }
    };
    tracing::info!(
        volume,
        size = export.size,
        block = export.min_block,
        lease = vol.lease_id(),
        read_only = export.read_only,
        max_buffer = budget.bytes(),
        max_block = export.max_block,
        addr = %listener.local_addr(),
        "serving"
    );
    listening(&listener.local_addr());
    let mut ra = opts.readahead;
    if opts.read_only {
        // Another host may be writing the volume: fetched chunks could be stale.
        ra.window = 0;
    }
    let backend = Arc::new(Readahead::new(Arc::new(vol.clone()), export.size, ra));
    serve(
        listener,
        export,
        Arc::clone(&backend),
        budget,
        shutdown,
        opts.poll,
    )
    .await;
    // Every connection task has ended; fetches still running finish before the unmount.
    backend.quiesce().await;
    let (hits, misses) = backend.stats();
    tracing::info!(
        volume,
        hits,
        misses,
        "readahead: reads answered from fetched chunks"
    );
    drop(backend);
    let lease = vol.lease_id();
    vol.unmount()
        .await
        .map_err(|source| GatewayError::Unmount {
            volume: volume.to_string(),
            source,
        })?;
    tracing::info!(volume, lease, "flushed and unmounted");
    Ok(())
}

/// Mounts the volume; standing by (see [`GatewayOptions::standby`]) until it can, or until
/// `shutdown` resolves (then `None`).
async fn mount(
    controller: &str,
    volume: &str,
    opts: &GatewayOptions,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<Volume>, GatewayError> {
    let failed = |source| GatewayError::Mount {
        volume: volume.to_string(),
        source,
    };
    let Some(every) = opts.standby else {
        return Volume::mount(controller, volume, opts.mount.clone())
            .await
            .map(Some)
            .map_err(failed);
    };
    let mut last = String::new();
    loop {
        match Volume::mount(controller, volume, opts.mount.clone()).await {
            Ok(v) => {
                tracing::info!(volume, lease = v.lease_id(), "took over");
                return Ok(Some(v));
            }
            // A certificate, an option or a node that this host can never use: no use waiting.
            Err(e @ (Error::Invalid(_) | Error::Token(_))) => return Err(failed(e)),
            Err(e) => {
                let why = e.to_string();
                if why != last {
                    tracing::info!(volume, "standing by: {why}");
                    last = why;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.as_mut() => return Ok(None),
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Cannot happen on a Unix process with a runtime; never stop rather than stop at once.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dasmesh_wire::Op;

    #[test]
    fn error_mapping() {
        let req = |status| Error::Request {
            op: Op::Write,
            status,
        };
        assert_eq!(errno(&req(Status::NoSpace)), Errno::NoSpc);
        assert_eq!(errno(&req(Status::IoError)), Errno::Io);
        assert_eq!(errno(&req(Status::ReadOnly)), Errno::Perm);
        assert_eq!(errno(&req(Status::Misaligned)), Errno::Inval);
        assert_eq!(errno(&req(Status::StaleEpoch)), Errno::Io);
        assert_eq!(errno(&Error::Invalid("x".into())), Errno::Inval);
        assert_eq!(errno(&Error::Closed), Errno::Io);
        assert_eq!(errno(&Error::Unavailable("x".into())), Errno::Io);
    }
}
