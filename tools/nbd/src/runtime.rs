//! The gateway's runtime: how many threads serve the connections.
//!
//! By default the gateway runs one worker thread per CPU it may use (its affinity mask, so a
//! `taskset` or a `--cpu` pin given before the runtime is built counts), so the connections of a
//! multi-conn client (`NBD_FLAG_CAN_MULTI_CONN`: qemu, nbdcopy, fio with several jobs) and the
//! requests of each are served on several cores at once. With one CPU, or `--threads 1`, it is a
//! single thread, the calling one: no hand-off between threads at all, which is what a gateway
//! pinned beside its node (`--cpu`) wants.

use std::num::NonZeroUsize;

/// How many threads serve the gateway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Threads {
    /// One per CPU this process may use now (at least one).
    #[default]
    Auto,
    /// Exactly this many (one: the calling thread, no workers).
    Exactly(NonZeroUsize),
}

impl Threads {
    /// `0` means [`Threads::Auto`].
    pub fn from_count(n: usize) -> Threads {
        NonZeroUsize::new(n).map_or(Threads::Auto, Threads::Exactly)
    }

    /// The number of threads this stands for on this process now.
    pub fn count(self) -> usize {
        match self {
            Threads::Exactly(n) => n.get(),
            // Reads the affinity mask (and cgroup quota) on Linux: a pinned process gets one.
            Threads::Auto => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        }
    }
}

/// Builds the gateway's runtime: a current-thread runtime for one thread, a multi-thread one with
/// that many workers otherwise. Timers and I/O enabled.
pub fn build(threads: Threads) -> std::io::Result<tokio::runtime::Runtime> {
    match threads.count() {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .thread_name("nbd-worker")
            .enable_all()
            .build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_to_the_cpus_unless_told() {
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(Threads::from_count(0), Threads::Auto);
        assert_eq!(Threads::Auto.count(), cpus);
        assert_eq!(Threads::from_count(3).count(), 3);
        let rt = build(Threads::Auto).unwrap();
        assert_eq!(rt.metrics().num_workers(), cpus);
        let rt = build(Threads::from_count(3)).unwrap();
        assert_eq!(rt.metrics().num_workers(), 3);
        let one = build(Threads::from_count(1)).unwrap();
        assert_eq!(
            one.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
    }
}
