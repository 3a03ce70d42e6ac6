//! The `volume:NAME` target: a volume of any layout mounted through the control plane with the
//! client's `Volume` handle, exactly as a host uses it (lease, layout split, mirror writes to
//! every copy). One mount per target; its requests run on a small tokio runtime and each job
//! thread hands its requests over and collects the completions.

use std::sync::mpsc;
use std::sync::Arc;

use anyhow::Context as _;
use dasmesh_client::{AlignedBuf, MountOptions, Volume};

use crate::job::Engine;
use crate::workload::Kind;

/// One mount, shared by the target's jobs; the lease ends when the last job drops it.
pub struct Mounted {
    rt: tokio::runtime::Runtime,
    vol: Option<Volume>,
}

impl Mounted {
    /// Mounts `name` (read-write if `writes`) from the controller at `controller`.
    pub fn mount(
        controller: &str,
        name: &str,
        writes: bool,
        depth: usize,
    ) -> anyhow::Result<Arc<Mounted>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-volume")
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
            ..Default::default()
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

type Completion = (usize, AlignedBuf, Result<(), String>);

/// One job: slot buffers travel to the runtime with their request and come back with the
/// completion.
pub struct VolumeEngine {
    m: Arc<Mounted>,
    bufs: Vec<Option<AlignedBuf>>,
    tx: mpsc::Sender<Completion>,
    rx: mpsc::Receiver<Completion>,
    in_flight: usize,
}

impl VolumeEngine {
    /// A job on `m` with `depth` slots of `bs` bytes.
    pub fn new(m: Arc<Mounted>, depth: usize, bs: usize) -> anyhow::Result<Self> {
        let vbs = m.volume().block_size() as usize;
        anyhow::ensure!(
            bs.is_multiple_of(vbs),
            "--bs {bs} is not a multiple of the volume's block size {vbs}"
        );
        let (tx, rx) = mpsc::channel();
        Ok(Self {
            m,
            bufs: (0..depth).map(|_| Some(AlignedBuf::new(bs))).collect(),
            tx,
            rx,
            in_flight: 0,
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
        let tx = self.tx.clone();
        self.m.rt.spawn(async move {
            let (buf, r) = match kind {
                Kind::Read => {
                    let len = buf.len();
                    match vol.read_into(offset, buf).await {
                        Ok(b) => (b, Ok(())),
                        Err(e) => (AlignedBuf::new(len), Err(e.to_string())),
                    }
                }
                Kind::Write => {
                    let r = vol.write(offset, buf.as_slice(), false).await;
                    (buf, r.map_err(|e| e.to_string()))
                }
            };
            let _ = tx.send((slot, buf, r));
        });
        self.in_flight += 1;
        Ok(())
    }

    fn complete(&mut self, out: &mut Vec<(usize, Result<(), String>)>) -> anyhow::Result<()> {
        if self.in_flight == 0 {
            return Ok(());
        }
        let first = self.rx.recv().context("the volume's runtime stopped")?;
        let mut take = |(slot, buf, r): Completion| {
            self.bufs[slot] = Some(buf);
            out.push((slot, r));
        };
        take(first);
        let mut n = 1;
        while let Ok(c) = self.rx.try_recv() {
            take(c);
            n += 1;
        }
        self.in_flight -= n;
        Ok(())
    }
}
