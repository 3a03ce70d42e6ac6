//! What std lacks for the node engine and the reports: waiting for a socket to become ready, and
//! the CPU time of this process or another.
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

/// User plus system CPU time of process `pid` so far, in clock ticks (/proc/PID/stat).
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow::anyhow!("--cpu-pid {pid}: {e}"))?;
    // Fields after the command name (which may hold spaces) start at the state, field 3;
    // utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("--cpu-pid {pid}: unreadable /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        f.get(i - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("--cpu-pid {pid}: no field {i} in /proc/{pid}/stat"))
    };
    Ok(field(14)? + field(15)?)
}

/// User plus system CPU time of this process so far (all its threads, tokio runtimes included),
/// from getrusage(RUSAGE_SELF).
pub fn self_cpu() -> std::time::Duration {
    // SAFETY: rusage is plain old data; zeroed is a valid value for getrusage to overwrite.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a pointer to a live local; getrusage only writes through it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    if rc != 0 {
        // Cannot fail with these arguments (EFAULT, EINVAL only); a zero shows as no CPU.
        return std::time::Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec as u64)
            + std::time::Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Microseconds per clock tick.
pub fn us_per_tick() -> f64 {
    // SAFETY: sysconf takes a plain integer.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e6 / if hz > 0 { hz as f64 } else { 100.0 }
}
