//! The `local:PATH` target: io_uring with O_DIRECT straight on a file or block device, the way
//! fio's io_uring engine does it (registered buffers, a fixed file, batched submission). This is
//! the baseline every other target is compared with.
//!
//! `unsafe` here (SQE submission and the registered buffers) is the one exception outside the
//! node's ring and buffer modules: a baseline that goes through the same ring interface as fio
//! is the point of this module.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use anyhow::Context as _;
use dasmesh_client::AlignedBuf;
use io_uring::{opcode, types, IoUring};

use crate::job::Engine;
use crate::workload::Kind;

/// Size of a file or block device.
pub fn target_size(path: &Path) -> anyhow::Result<u64> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let meta = f.metadata()?;
    if meta.file_type().is_block_device() {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, a live local.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), 0x8008_1272, &mut size) };
        anyhow::ensure!(
            rc == 0,
            "BLKGETSIZE64 on {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        Ok(size)
    } else {
        Ok(meta.len())
    }
}

/// One job's ring, file and slot buffers.
pub struct Local {
    // Dropped first: the kernel lets go of the buffers before they are freed.
    ring: Option<IoUring>,
    file: File,
    bufs: Vec<AlignedBuf>,
    bs: usize,
}

impl Local {
    /// Opens `path` O_DIRECT with `depth` slot buffers of `bs` bytes. The ring itself is made on
    /// the job's thread at its first request (SINGLE_ISSUER rings belong to the thread that
    /// made them).
    pub fn open(path: &Path, depth: usize, bs: usize, write: bool) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .with_context(|| format!("opening {} with O_DIRECT", path.display()))?;
        Ok(Self {
            ring: None,
            file,
            bufs: (0..depth).map(|_| AlignedBuf::new(bs)).collect(),
            bs,
        })
    }

    /// The ring, set up as fio's io_uring engine does (single issuer, deferred task work, as
    /// the kernel allows), with the slot buffers and the file registered.
    fn ring(&mut self) -> anyhow::Result<&mut IoUring> {
        if self.ring.is_none() {
            let entries = self.bufs.len().next_power_of_two().max(8) as u32;
            let ring = IoUring::builder()
                .setup_coop_taskrun()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .build(entries)
                .or_else(|_| IoUring::new(entries))?;
            let iovecs: Vec<libc::iovec> = self
                .bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            // SAFETY: the buffers live in `self.bufs`, never resized; the ring is dropped first.
            unsafe { ring.submitter().register_buffers(&iovecs)? };
            ring.submitter().register_files(&[self.file.as_raw_fd()])?;
            self.ring = Some(ring);
        }
        Ok(self.ring.as_mut().expect("just set"))
    }
}

impl Engine for Local {
    fn buf(&mut self, slot: usize) -> &mut [u8] {
        &mut self.bufs[slot]
    }

    fn queue(&mut self, slot: usize, kind: Kind, offset: u64) -> anyhow::Result<()> {
        let ptr = self.bufs[slot].as_mut_ptr();
        let (fd, len, idx) = (types::Fixed(0), self.bs as u32, slot as u16);
        let e = match kind {
            Kind::Read => opcode::ReadFixed::new(fd, ptr, len, idx)
                .offset(offset)
                .build(),
            Kind::Write => opcode::WriteFixed::new(fd, ptr, len, idx)
                .offset(offset)
                .build(),
        }
        .user_data(slot as u64);
        let ring = self.ring()?;
        // SAFETY: the slot's buffer is registered and owned by this engine; the job loop does not
        // touch it until this slot's completion is returned.
        unsafe { ring.submission().push(&e) }
            .map_err(|_| anyhow::anyhow!("submission queue full"))?;
        // Submit each request at once, as fio does by default (iodepth_batch_submit=1): measured
        // here, batching a refill's requests into one submission costs a virtio disk 10-15% of
        // its 4k random IOPS (docs/performance.md).
        ring.submit()?;
        Ok(())
    }

    fn complete(&mut self, out: &mut Vec<(usize, Result<(), String>)>) -> anyhow::Result<()> {
        let bs = self.bs as i32;
        let ring = self.ring()?;
        if ring.completion().is_empty() {
            ring.submit_and_wait(1)?;
        }
        for c in ring.completion() {
            let slot = c.user_data() as usize;
            let r = c.result();
            out.push((
                slot,
                if r == bs {
                    Ok(())
                } else if r < 0 {
                    Err(std::io::Error::from_raw_os_error(-r).to_string())
                } else {
                    Err(format!("short transfer of {r} bytes"))
                },
            ));
        }
        Ok(())
    }
}
