//! The write barrier behind fencing: a session is served only once every modifying op (WRITE,
//! DISCARD, WRITE_ZEROES) admitted before its handshake, on any reactor, has completed.
//!
//! Why: a newer epoch makes the old holder's *next* request fail, but a write it had already
//! submitted could still reach the device after the new holder's first write to the same
//! block. The barrier closes that gap without a lock on the I/O path.
//!
//! Each reactor owns a [`Lane`] and numbers its modifying ops 0, 1, 2, ... ([`LaneWriter`]). It
//! publishes `next` (the number the next op will get) and `done_below` (every op numbered
//! below it has completed). A handshake, after the fence table admitted its epoch, takes a
//! [`Barrier`]: each lane's `next`. It passes once every lane's `done_below` has caught up.
//!
//! The argument (all four accesses `SeqCst`): a reactor stores `next` *before* it loads the
//! fence generation for that op; a raise bumps the generation *before* the barrier loads `next`.
//! In the single total order of SeqCst operations, either the barrier's load comes after the
//! reactor's store, so the barrier counts the op and waits for it; or it comes before, so the
//! bump precedes the reactor's generation load, which therefore sees it and refuses the op with
//! StaleEpoch. Per-reactor lanes rather than one global counter: taking a number and publishing
//! it as in flight must be one step (else a barrier could read between the two and miss the
//! op), and a lane is written by its reactor alone, so no cache line bounces between cores.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

/// One reactor's published counters, on a cache line of their own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Lane {
    /// The number the lane's next modifying op will get.
    next: AtomicU64,
    /// Every op numbered below this has completed.
    done_below: AtomicU64,
}

/// The lanes of all reactors (shared).
#[derive(Debug)]
pub struct WriteLanes {
    lanes: Box<[Lane]>,
}

/// Per lane, the count of ops that must complete before a session may be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Barrier(Vec<u64>);

impl WriteLanes {
    /// One lane per reactor.
    pub fn new(reactors: usize) -> Self {
        Self {
            lanes: (0..reactors).map(|_| Lane::default()).collect(),
        }
    }

    /// The barrier for a session whose epoch the fence table has just admitted; `None` when no
    /// op it must wait for is in flight (the usual case), so nothing needs to be held.
    pub fn barrier(&self) -> Option<Barrier> {
        let targets: Vec<u64> = self
            .lanes
            .iter()
            .map(|l| l.next.load(Ordering::SeqCst))
            .collect();
        let b = Barrier(targets);
        (!self.passed(&b)).then_some(b)
    }

    /// Whether every op the barrier waits for has completed.
    pub fn passed(&self, b: &Barrier) -> bool {
        self.lanes
            .iter()
            .zip(&b.0)
            .all(|(l, t)| l.done_below.load(Ordering::Acquire) >= *t)
    }

    /// The writer for reactor `id`'s lane (one per reactor).
    pub fn writer(&self, id: usize) -> LaneWriter {
        assert!(id < self.lanes.len(), "no lane for reactor {id}");
        LaneWriter {
            lane: id,
            base: 0,
            pending: VecDeque::new(),
        }
    }
}

/// A reactor's side of its lane: numbers its modifying ops and tracks which are in flight.
#[derive(Debug)]
pub struct LaneWriter {
    lane: usize,
    /// Number of `pending[0]`; every op below it has completed.
    base: u64,
    /// Ops from `base` on: whether each has completed (they complete out of order).
    pending: VecDeque<bool>,
}

/// The number a modifying op holds from [`LaneWriter::begin`] until [`LaneWriter::end`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "an op begun must be ended, or every later handshake waits forever"]
pub struct WriteSeq(u64);

impl LaneWriter {
    /// Numbers a modifying op and publishes it as in flight. Call it *before* loading the fence
    /// generation that decides whether the op may go to the device.
    pub fn begin(&mut self, lanes: &WriteLanes) -> WriteSeq {
        let seq = self.base + self.pending.len() as u64;
        self.pending.push_back(false);
        lanes.lanes[self.lane].next.store(seq + 1, Ordering::SeqCst);
        WriteSeq(seq)
    }

    /// Marks an op completed (or refused before it reached the device).
    pub fn end(&mut self, lanes: &WriteLanes, seq: WriteSeq) {
        let i = seq.0.checked_sub(self.base).expect("op ended twice") as usize;
        assert!(!self.pending[i], "op ended twice");
        self.pending[i] = true;
        let before = self.base;
        while self.pending.front() == Some(&true) {
            self.pending.pop_front();
            self.base += 1;
        }
        if self.base != before {
            lanes.lanes[self.lane]
                .done_below
                .store(self.base, Ordering::Release);
        }
    }

    /// Ops begun and not yet ended.
    pub fn in_flight(&self) -> usize {
        self.pending.iter().filter(|d| !**d).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use dasmesh_wire::{DeviceId, Epoch};

    use crate::fence::{FenceTable, Range};

    #[test]
    fn nothing_in_flight_needs_no_barrier() {
        let lanes = WriteLanes::new(2);
        assert_eq!(lanes.barrier(), None);
        let mut w = lanes.writer(1);
        let s = w.begin(&lanes);
        w.end(&lanes, s);
        assert_eq!(lanes.barrier(), None, "completed ops do not hold anyone");
    }

    #[test]
    fn waits_for_earlier_ops_only_and_handles_out_of_order_completion() {
        let lanes = WriteLanes::new(2);
        let (mut w0, mut w1) = (lanes.writer(0), lanes.writer(1));
        let a = w0.begin(&lanes);
        let b = w0.begin(&lanes);
        let c = w1.begin(&lanes);
        let barrier = lanes.barrier().expect("three ops in flight");
        // Ops begun after the barrier never hold it.
        let later0 = w0.begin(&lanes);
        let later1 = w1.begin(&lanes);
        w0.end(&lanes, b);
        assert!(!lanes.passed(&barrier), "a is still in flight");
        w0.end(&lanes, a);
        assert!(!lanes.passed(&barrier), "c is still in flight");
        w1.end(&lanes, c);
        assert!(lanes.passed(&barrier));
        assert_eq!(w0.in_flight() + w1.in_flight(), 2);
        w1.end(&lanes, later1);
        w0.end(&lanes, later0);
        assert_eq!(w0.in_flight() + w1.in_flight(), 0);
        assert_eq!(lanes.barrier(), None);
    }

    #[test]
    #[should_panic(expected = "ended twice")]
    fn ending_twice_is_a_bug() {
        let lanes = WriteLanes::new(1);
        let mut w = lanes.writer(0);
        let s = w.begin(&lanes);
        let _keep = w.begin(&lanes);
        w.end(&lanes, s);
        w.end(&lanes, s);
    }

    /// Reactor threads write under epoch 1 the way `Reactor::admit` does (begin, then the fence
    /// check); the main thread raises to epoch 2 and waits for the barrier. No write that passed
    /// the check under epoch 1 may still be "on the device" once the barrier has passed.
    #[test]
    fn no_old_epoch_write_survives_a_passed_barrier() {
        const D: DeviceId = DeviceId(0);
        let range = Range { start: 0, end: 100 };
        for _round in 0..50 {
            let lanes = Arc::new(WriteLanes::new(3));
            let fence = Arc::new(FenceTable::default());
            fence.admit(D, range, Epoch(1)).unwrap();
            // As a session does: the generation is read when epoch 1 is admitted.
            let gen = fence.generation();
            let passed = Arc::new(AtomicBool::new(false));
            let stop = Arc::new(AtomicBool::new(false));
            let threads: Vec<_> = (0..3)
                .map(|id| {
                    let (lanes, fence) = (Arc::clone(&lanes), Arc::clone(&fence));
                    let (passed, stop) = (Arc::clone(&passed), Arc::clone(&stop));
                    std::thread::spawn(move || {
                        let mut w = lanes.writer(id);
                        while !stop.load(Ordering::Relaxed) {
                            let s = w.begin(&lanes);
                            let current =
                                fence.generation() == gen || fence.is_current(D, range, Epoch(1));
                            if current {
                                // "On the device": the barrier must not have passed.
                                assert!(
                                    !passed.load(Ordering::SeqCst),
                                    "an old-epoch write ran after the barrier passed"
                                );
                                for _ in 0..32 {
                                    std::hint::spin_loop();
                                }
                                assert!(
                                    !passed.load(Ordering::SeqCst),
                                    "an old-epoch write ran after the barrier passed"
                                );
                            }
                            w.end(&lanes, s);
                        }
                    })
                })
                .collect();
            std::thread::yield_now();
            fence.admit(D, range, Epoch(2)).unwrap();
            if let Some(b) = lanes.barrier() {
                while !lanes.passed(&b) {
                    std::hint::spin_loop();
                }
            }
            passed.store(true, Ordering::SeqCst);
            // Let the writers run a while after the barrier.
            for _ in 0..1000 {
                std::hint::spin_loop();
            }
            stop.store(true, Ordering::Relaxed);
            for t in threads {
                t.join().unwrap();
            }
        }
    }
}
