//! The reactor's side of the per-connection budgets, fair slot admission and timeouts
//! (`budget.rs` holds the rules; docs/node.md, "Budgets and timeouts").

use crate::arena::{BufId, NoSlot};
use crate::budget;
use crate::sys;

use super::{Reactor, TRIM_AFTER_CLOSES};

impl Reactor {
    /// Takes a slot of `len` bytes for connection `ci` within its budget and fair share
    /// (`budget.rs`, `Arena::alloc_fair`). Without one, the connection stops parsing: parked
    /// until its own slots come back when it is over its share, stalled until anyone's do
    /// otherwise.
    pub(super) fn take_slot(&mut self, ci: usize, len: usize, receiving: bool) -> Option<BufId> {
        let bounds = self.shared.bounds;
        let c = &mut self.conns[ci];
        if !budget::slot_fits(c.slot_bytes, len, &bounds) {
            c.parked = true;
            return None;
        }
        match self.arena.alloc_fair(len, &c.slots, receiving) {
            Ok(b) => {
                c.slots[self.arena.class_of(b)] += 1;
                c.slot_bytes += self.arena.capacity(b) as u64;
                Some(b)
            }
            Err(NoSlot::OverShare) if c.slot_bytes > 0 => {
                c.parked = true;
                None
            }
            Err(_) => {
                self.stall(ci, len);
                None
            }
        }
    }

    /// Returns a slot connection `ci` held.
    pub(super) fn free_slot(&mut self, ci: usize, b: BufId) {
        let class = self.arena.class_of(b);
        let cap = self.arena.capacity(b) as u64;
        self.arena.free(b);
        if let Some(c) = self.conns.get_mut(ci) {
            c.slots[class] -= 1;
            c.slot_bytes -= cap;
            if c.parked {
                self.mark_dirty(ci);
            }
        }
        self.wake_stalled(class);
    }

    /// A WRITE's payload is all in its slot: the slot no longer waits on the client.
    pub(super) fn payload_arrived(&mut self, ri: usize) {
        if let Some(b) = self.reqs[ri].buf {
            self.arena.end_receiving(b);
            self.wake_stalled(self.arena.class_of(b));
        }
    }

    /// Closes the connections past the handshake or payload timeout.
    pub(super) fn sweep_timeouts(&mut self) {
        let bounds = self.shared.bounds;
        let pressure = self.stalled.iter().any(|s| !s.is_empty());
        let due: Vec<(usize, budget::Overdue)> = self
            .conns
            .iter()
            .filter_map(|(ci, c)| {
                budget::overdue(c, &bounds, self.now_ms, pressure).map(|w| (ci, w))
            })
            .collect();
        for (ci, why) in due {
            tracing::debug!(
                reactor = self.id,
                conn = ci,
                "closing the connection: {why}"
            );
            self.close(ci);
        }
        // The send queues and send states of many closed connections are free in the allocator
        // but still resident until trimmed (measured: 55 MiB kept after 900 connections that had
        // queued replies closed). Trimmed after a burst of closes, and at most once a second for
        // a trickle.
        let n = self.closed_since_trim;
        if n >= TRIM_AFTER_CLOSES || (n > 0 && self.now_ms >= self.last_trim_ms + 1000) {
            sys::trim_heap();
            self.closed_since_trim = 0;
            self.last_trim_ms = self.now_ms;
        }
    }
}
