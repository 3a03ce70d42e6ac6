//! A reactor's helper thread for the device calls io_uring cannot make: the block-device
//! ioctls BLKDISCARD and BLKZEROOUT (and the fdatasync of a FUA zeroing after them), so that a
//! slow one stalls only its own request, never the reactor's other connections.
//!
//! The reactor hands a job over a channel; the helper makes the call and sends the result back on
//! another channel, then writes an eventfd the reactor keeps a read armed on, which wakes its ring.
//! The reactor only ever `try_recv`s results, so the completion path takes no lock.

use std::fs::File;
use std::io::Write as _;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Store;
use crate::{sys, Shared};

/// A blocking device call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// BLKDISCARD on a block device.
    Discard,
    /// BLKZEROOUT on a block device.
    ZeroOut,
    /// fallocate with these FALLOC_FL_* flags on a file (only with the slow-device fault).
    Fallocate(libc::c_int),
    /// fdatasync.
    Sync,
}

/// One job: a call on a backend's range, for the request `key`.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    /// Handed back with the result (the reactor's request index).
    pub key: usize,
    /// Index of the backend.
    pub device: usize,
    /// What to do.
    pub call: Call,
    /// Byte range.
    pub offset: u64,
    /// Byte count.
    pub len: u64,
    /// fdatasync after the call.
    pub sync_after: bool,
}

/// The reactor's end.
pub struct Offload {
    jobs: Sender<Job>,
    done: Receiver<(usize, i32)>,
    /// Written by the helper after each result; the reactor reads it through its ring.
    pub wake: File,
    /// Where the armed eventfd read puts its count. Leaked (8 bytes per reactor) so that it
    /// outlives the ring whatever the order of teardown.
    pub wake_buf: &'static mut u64,
}

impl Offload {
    /// Starts the helper thread of reactor `id`.
    pub fn start(id: usize, shared: Arc<Shared>) -> std::io::Result<Self> {
        let wake = sys::eventfd()?;
        let signal = wake.try_clone()?;
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        let delay = shared.bounds.slow_device_ops;
        std::thread::Builder::new()
            .name(format!("device-calls-{id}"))
            .spawn(move || helper(shared, job_rx, done_tx, signal, delay))?;
        Ok(Self {
            jobs,
            done,
            wake,
            wake_buf: Box::leak(Box::new(0)),
        })
    }

    /// Hands a job to the helper. False if the helper is gone (it never exits on its own).
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }

    /// The next finished job: its key and the result (0 or a negative errno, as a CQE's).
    pub fn next_done(&self) -> Option<(usize, i32)> {
        self.done.try_recv().ok()
    }
}

fn helper(
    shared: Arc<Shared>,
    jobs: Receiver<Job>,
    done: Sender<(usize, i32)>,
    mut signal: File,
    delay: Option<Duration>,
) {
    // Ends when the reactor drops its sender.
    while let Ok(job) = jobs.recv() {
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let res = match run(&shared, &job) {
            Ok(()) => 0,
            Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
        };
        if done.send((job.key, res)).is_err() {
            return;
        }
        // The count only wakes the reactor; an overflowing count (never reached) or a closed
        // reactor both leave nothing to do.
        let _ = signal.write_all(&1u64.to_ne_bytes());
    }
}

fn run(shared: &Shared, job: &Job) -> std::io::Result<()> {
    let Store::File { file, .. } = &shared.backends[job.device].store else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    match job.call {
        Call::Discard => sys::discard(file, job.offset, job.len)?,
        Call::ZeroOut => sys::zero_out(file, job.offset, job.len)?,
        Call::Fallocate(mode) => sys::fallocate(file, mode, job.offset, job.len)?,
        Call::Sync => file.sync_data()?,
    }
    if job.sync_after {
        file.sync_data()?;
    }
    Ok(())
}
