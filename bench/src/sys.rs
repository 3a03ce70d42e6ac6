//! The one system call std lacks for the node engine: waiting for a socket to become ready.
#![allow(unsafe_code)]

use std::os::fd::RawFd;

/// Blocks until `fd` is readable (`write` false) or writable (`write` true).
pub fn wait_ready(fd: RawFd, write: bool) -> std::io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: if write { libc::POLLOUT } else { libc::POLLIN },
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, a live local.
        let rc = unsafe { libc::poll(&mut p, 1, -1) };
        if rc >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
