//! The `volume:NAME` target: a volume of any layout mounted through the control plane with the
//! client's `Volume` handle, exactly as a host uses it (lease, layout split, mirror writes to
//! every copy). One mount per target, with a connection per job to every extent; each job keeps
//! its requests as futures and polls them on its own thread through the mount's one-worker tokio
//! runtime (which drives the sockets), the way a tokio program with many requests in flight
//! would, so the figures are the host library's and not a hand-over's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;
use dasmesh_client::{AlignedBuf, MountOptions, Volume};
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use futures_util::FutureExt as _;

use crate::job::Engine;
use crate::workload::Kind;

/// One mount, shared by the target's jobs; the lease ends when the last job drops it.
pub struct Mounted {
    rt: tokio::runtime::Runtime,
    vol: Option<Volume>,
}

impl Mounted {
    /// Mounts `name` (read-write if `writes`) from the controller at `controller`, with
    /// `connections` connections to every extent (one per job) and up to `depth` requests in
    /// flight on each; a waiting request polls its socket for `spin` before it sleeps (the same
    /// `--client-spin` as node: targets).
    pub fn mount(
        controller: &str,
        base: MountOptions,
        name: &str,
        writes: bool,
        depth: usize,
        connections: usize,
    ) -> anyhow::Result<Arc<Mounted>> {
        // No worker threads: the job threads' block_on calls drive the sockets themselves (one
        // of them at a time waits in the I/O driver for all), so a reply does not wake a
        // runtime thread that then wakes the job.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let opts = MountOptions {
            host: format!("dasmesh-bench@{}", dasmesh_client::default_host()),
            access: if writes {
                dasmesh_client::Access::ReadWrite
            } else {
                dasmesh_client::Access::ReadOnly
            },
            queue_depth: depth.max(1),
            connections: connections.max(1),
            ..base
        };
        let vol = rt
            .block_on(Volume::mount(controller, name, opts))
            .with_context(|| format!("mounting volume {name:?} from {controller}"))?;
        Ok(Arc::new(Mounted { rt, vol: Some(vol) }))
    }

    /// The volume.
    pub fn volume(&self) -> &Volume {
        self.vol.as_ref().expect("mounted")
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(v) = self.vol.take() {
            let name = v.name().to_string();
            if let Err(e) = self.rt.block_on(v.unmount()) {
                eprintln!("dasmesh-bench: unmounting {name}: {e}");
            }
        }
    }
}

/// What a request future ends with: its slot, the slot's buffer (a fresh one where a failed read
/// kept it), and the outcome.
type Done = (usize, AlignedBuf, Result<(), String>);
/// One request in flight: it owns its buffer and a handle on the volume.
type Request = Pin<Box<dyn Future<Output = Done> + Send>>;

/// One job: its requests are futures it polls itself, on its own thread, as a tokio user with
/// many requests in flight does (no task, channel or cross-thread hand-over per request).
pub struct VolumeEngine {
    m: Arc<Mounted>,
    bufs: Vec<Option<AlignedBuf>>,
    bs: usize,
    in_flight: FuturesUnordered<Request>,
}

impl VolumeEngine {
    /// A job on `m` with `depth` slots of `bs` bytes.
    pub fn new(m: Arc<Mounted>, depth: usize, bs: usize) -> anyhow::Result<Self> {
        let vbs = m.volume().block_size() as usize;
        anyhow::ensure!(
            bs.is_multiple_of(vbs),
            "--bs {bs} is not a multiple of the volume's block size {vbs}"
        );
        Ok(Self {
            m,
            bufs: (0..depth).map(|_| Some(AlignedBuf::new(bs))).collect(),
            bs,
            in_flight: FuturesUnordered::new(),
        })
    }
}

impl Engine for VolumeEngine {
    fn buf(&mut self, slot: usize) -> &mut [u8] {
        self.bufs[slot]
            .as_mut()
            .expect("slot buffer is home")
            .as_mut_slice()
    }

    fn queue(&mut self, slot: usize, kind: Kind, offset: u64) -> anyhow::Result<()> {
        let buf = self.bufs[slot].take().expect("slot buffer is home");
        let vol = self.m.volume().clone();
        let bs = self.bs;
        // Not polled yet: the request goes out at the next `complete`, with the others queued
        // since the last one.
        self.in_flight.push(Box::pin(async move {
            match kind {
                Kind::Read => match vol.read_into(offset, buf).await {
                    Ok(b) => (slot, b, Ok(())),
                    Err(e) => (slot, AlignedBuf::new(bs), Err(e.to_string())),
                },
                Kind::Write => {
                    let r = vol.write(offset, buf.as_slice(), false).await;
                    (slot, buf, r.map_err(|e| e.to_string()))
                }
            }
        }));
        Ok(())
    }

    fn complete(&mut self, out: &mut Vec<(usize, Result<(), String>)>) -> anyhow::Result<()> {
        if self.in_flight.is_empty() {
            return Ok(());
        }
        let Self {
            m, bufs, in_flight, ..
        } = self;
        let mut take = |(slot, buf, r): Done| {
            bufs[slot] = Some(buf);
            out.push((slot, r));
        };
        // block_on on the job thread: the requests run here; the runtime's worker drives the
        // sockets' readiness and wakes this thread when one can make progress.
        m.rt.block_on(async {
            if let Some(d) = in_flight.next().await {
                take(d);
            }
            // Whatever else is done already, without waiting for more.
            while let Some(Some(d)) = in_flight.next().now_or_never() {
                take(d);
            }
        });
        Ok(())
    }
}

impl Drop for VolumeEngine {
    fn drop(&mut self) {
        // Requests left by a failed run are dropped inside the runtime, where their sockets and
        // timers belong.
        let _rt = self.m.rt.enter();
        self.in_flight.clear();
    }
}
