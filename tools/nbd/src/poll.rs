//! How the gateway waits while requests are in flight.
//!
//! Each request crosses two hand-offs inside the gateway's process: its reply from the node
//! wakes the gateway, and the gateway's reply wakes the NBD client. When the gateway's thread
//! sleeps in the kernel between them, waking it again costs 100-200 us on the 2-vCPU VMs measured
//! (an idle vCPU halts at once; tools/nbd/README.md has the timeline). In [`PollMode::Adaptive`]
//! the gateway keeps its runtime awake while any request is in flight: a task polls the runtime's
//! I/O driver without blocking and yields the CPU to any other runnable thread between polls
//! (`sched_yield`), so it takes only time no one else wants. With nothing in flight it sleeps
//! until the next request arrives: an idle gateway does not spin.
//!
//! It is not the default: where the CPU is the limit (fio, the gateway and the node sharing two
//! vCPUs over a tmpfs file) the polling takes time the others need, and 4k random I/O came out
//! 10-30% slower with it; it pays where the disk's latency is the limit and cores sit idle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// How the gateway waits for replies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PollMode {
    /// Keep polling while any request is in flight; sleep when none is.
    Adaptive,
    /// Always sleep in the kernel until something arrives (default).
    #[default]
    Interrupt,
}

/// Requests in flight across every connection of one server.
#[derive(Debug, Default)]
pub struct Activity {
    inflight: AtomicUsize,
    kick: Notify,
    /// Polls made while busy (for tests).
    polls: AtomicUsize,
}

/// One request in flight; dropping it ends it.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    /// A request starts.
    pub fn begin(self: &Arc<Self>) -> Busy {
        if self.inflight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.kick.notify_one();
        }
        Busy(Arc::clone(self))
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Polls made so far while requests were in flight.
    pub fn polls(&self) -> usize {
        self.polls.load(Ordering::Relaxed)
    }

    /// Runs until dropped (abort its task): polls while requests are in flight, sleeps when none
    /// is.
    pub async fn keep_awake(self: Arc<Self>) {
        loop {
            if self.inflight() == 0 {
                // A request that began since the check left a permit: this returns at once.
                self.kick.notified().await;
                continue;
            }
            self.polls.fetch_add(1, Ordering::Relaxed);
            std::thread::yield_now();
            // Deferred until the runtime has polled its I/O driver (without blocking, as this
            // task is ready again), so replies that arrived meanwhile are picked up.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn polls_only_while_a_request_is_in_flight() {
        let a = Arc::new(Activity::default());
        let spinner = tokio::spawn(Arc::clone(&a).keep_awake());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(a.polls(), 0, "idle: no polling");
        let busy = [a.begin(), a.begin()];
        assert_eq!(a.inflight(), 2);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let during = a.polls();
        assert!(during > 10, "busy: it polls ({during})");
        drop(busy);
        assert_eq!(a.inflight(), 0);
        // One last poll may be under way when the count drops.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let after = a.polls();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(a.polls(), after, "idle again: no polling");
        // And it wakes for the next request.
        let again = a.begin();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(a.polls() > after);
        drop(again);
        spinner.abort();
    }
}
