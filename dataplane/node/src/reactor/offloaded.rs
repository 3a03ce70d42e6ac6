//! The reactor's side of its helper thread for blocking device calls (`offload.rs`): handing a
//! call over, and taking results back when the helper's eventfd read completes in the ring.

use std::os::fd::AsRawFd;

use dasmesh_wire::Status;
use io_uring::{opcode, types};

use super::{Reactor, UD_WAKE};
use crate::conn::{Payload, Stage};
use crate::offload::{Call, Job};

impl Reactor {
    /// Hands a blocking device call for request `ri` to the helper thread; its result comes
    /// back through `on_wake` into `on_io` in `stage`.
    pub(super) fn offload(&mut self, ri: usize, call: Call, sync_after: bool, stage: Stage) {
        let device = self.device(ri);
        let r = &mut self.reqs[ri];
        r.stage = stage;
        let job = Job {
            key: ri,
            device,
            call,
            offset: r.hdr.offset,
            len: r.hdr.length,
            sync_after,
        };
        if !self.offload.submit(job) {
            tracing::error!(reactor = self.id, "the device-call helper is gone");
            self.finish(ri, Status::Internal, Payload::None, 0);
        }
    }

    pub(super) fn arm_wake(&mut self) {
        let buf: *mut u64 = &mut *self.offload.wake_buf;
        let e = opcode::Read::new(types::Fd(self.offload.wake.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(UD_WAKE);
        // SAFETY: the 8-byte buffer is leaked (Offload::wake_buf), so it outlives the read.
        unsafe { self.push(e) };
    }

    /// The helper finished one or more calls.
    pub(super) fn on_wake(&mut self, res: i32) {
        if res < 0 && res != -libc::EINTR && res != -libc::ECANCELED {
            tracing::warn!(
                reactor = self.id,
                "reading the helper's eventfd failed: {}",
                std::io::Error::from_raw_os_error(-res)
            );
        }
        while let Some((ri, res)) = self.offload.next_done() {
            self.on_io(ri, res);
        }
        self.arm_wake();
    }
}
