//! What the checks run against: one block device (a loop device this process made, or one the
//! operator named), the kernel's view of it, and a node serving it, started on first use.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dasmesh_client::{ConnectOptions, Connection};
use dasmesh_wire::{DeviceId, Rights};

use crate::checks::Stop;
use crate::device::{self, Geometry};
use crate::env::{self, Skip};
use crate::loopdev::LoopDevice;
use crate::node::NodeProcess;
use crate::{Error, Result};

/// Knobs of a run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Measured time per target and workload of the performance profile; `None` skips it.
    pub perf_runtime: Option<Duration>,
    /// The full verify pass runs on devices up to this size and is skipped above it.
    pub verify_limit: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            perf_runtime: Some(Duration::from_secs(2)),
            verify_limit: 1 << 30,
        }
    }
}

/// A device under test.
#[derive(Debug)]
pub struct Rig {
    device: PathBuf,
    loop_dev: Option<LoopDevice>,
    /// The kernel's geometry of the device.
    pub kernel: Geometry,
    /// Knobs.
    pub opts: Options,
    rt: tokio::runtime::Runtime,
    node: Option<NodeProcess>,
}

impl Rig {
    /// A rig on an existing device (the caller has decided it may be overwritten).
    pub fn on_device(device: &Path, opts: Options) -> Result<Rig> {
        Self::new(device.to_path_buf(), None, opts)
    }

    /// A rig on a new loop device of `size` bytes and `sector`-byte sectors; the reason when this
    /// machine cannot make one.
    pub fn on_loop(size: u64, sector: u32, opts: Options) -> Result<Rig, Skip> {
        let l = LoopDevice::create(size, sector)?;
        Self::new(l.path().to_path_buf(), Some(l), opts)
            .map_err(|e| Skip(format!("loop device unusable: {e}")))
    }

    fn new(device: PathBuf, loop_dev: Option<LoopDevice>, opts: Options) -> Result<Rig> {
        let kernel = device::geometry(&device)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::io("tokio runtime"))?;
        Ok(Rig {
            device,
            loop_dev,
            kernel,
            opts,
            rt,
            node: None,
        })
    }

    /// The device path (a loop device's may change when it is reattached).
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// The loop device, when this rig made one.
    pub fn loop_device(&self) -> Option<&LoopDevice> {
        self.loop_dev.as_ref()
    }

    /// Runs a future on the rig's runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The node serving the device, started on first use; a skip when io_uring is not allowed.
    pub fn node(&mut self) -> Result<&mut NodeProcess, Stop> {
        if self.node.is_none() {
            env::io_uring().map_err(|s| Stop::Skip(format!("the node needs io_uring: {s}")))?;
            self.node = Some(NodeProcess::start(&self.device)?);
        }
        Ok(self.node.as_mut().expect("started above"))
    }

    /// A connection to the node under a token for `[start, end)` with `rights`.
    pub fn connect(&mut self, start: u64, end: u64, rights: Rights) -> Result<Connection, Stop> {
        let node = self.node()?;
        let token = node.token(start, end, rights);
        let addr = node.addr.clone();
        let c = self
            .rt
            .block_on(Connection::connect(
                &addr,
                DeviceId(0),
                &token,
                &ConnectOptions::default(),
            ))
            .map_err(Error::client(format!("connect to the node at {addr}")))?;
        Ok(c)
    }

    /// A read-write connection to the whole device.
    pub fn connect_all(&mut self) -> Result<Connection, Stop> {
        let size = self.kernel.size;
        self.connect(0, size, Rights::ReadWrite)
    }

    /// Simulates a crash: SIGKILL the node; for a loop device also detach and reattach it (what
    /// the loop driver held in memory is gone); then start the node again. Returns what was done.
    pub fn crash_and_restart(&mut self) -> Result<String, Stop> {
        self.node()?.kill()?;
        let mut done = "node killed (SIGKILL)".to_string();
        if let Some(l) = self.loop_dev.as_mut() {
            let old = l.path().display().to_string();
            l.reattach()?;
            self.device = l.path().to_path_buf();
            done += &format!(
                ", {old} detached and the backing file reattached as {}",
                self.device.display()
            );
            let g = device::geometry(&self.device)?;
            if g != self.kernel {
                return Err(Stop::Fail(Error::Unexpected(format!(
                    "the reattached device reports {g:?}, was {:?}",
                    self.kernel
                ))));
            }
        }
        let dev = self.device.clone();
        self.node()?.restart(&dev)?;
        Ok(done + ", node restarted")
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The node holds the device open: stop it before the loop device is detached.
        self.node = None;
    }
}
