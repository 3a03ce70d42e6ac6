//! The request slots of one connection: a fixed table, one slot per request in flight, found
//! from a reply's tag by index (no map, no shared lock: each slot has its own, taken by its caller
//! and, for a moment, by whoever reads its reply).
//!
//! A tag is `generation << 16 | index`: a reply whose tag does not match its slot's current
//! request (a stale or invented tag) is a protocol error, never someone else's data.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::Waker;

use dasmesh_wire::{Op, ReplyHeader};

use crate::{AlignedBuf, Error};

/// The most slots a connection has (the index part of a tag).
pub(crate) const MAX_SLOTS: usize = 1 << 16;

/// Where a reply's payload goes.
pub(crate) enum Dest {
    /// No payload expected.
    None,
    /// READ data into this vector (allocated at its full length).
    Vec(Vec<u8>),
    /// READ data into the caller's buffer.
    Buf(AlignedBuf),
    /// SEARCH hits, appended.
    Hits(Vec<u8>),
}

impl Dest {
    /// The bytes still to fill, from `filled` on (`None` for SEARCH hits, which are appended).
    pub(crate) fn room(&mut self, filled: usize) -> Option<&mut [u8]> {
        match self {
            Dest::Vec(v) => v.get_mut(filled..),
            Dest::Buf(b) => b.as_mut_slice().get_mut(filled..),
            Dest::None | Dest::Hits(_) => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not in use.
    Free,
    /// A caller waits for its reply.
    Waiting,
    /// The reply (or the connection's failure) is in; the caller has not taken it yet.
    Done,
    /// The caller went away (its future was dropped) after the request was sent: the reply is
    /// still coming and is read and dropped, then the slot is free.
    Abandoned,
    /// No reply within the request timeout: the caller gets `Timeout`; the slot stays taken
    /// (as `Abandoned` once the caller has its error) until the reply, if any, is read.
    TimedOut,
}

pub(crate) struct SlotState {
    pub(crate) phase: Phase,
    generation: u64,
    pub(crate) tag: u64,
    pub(crate) op: Op,
    pub(crate) length: u64,
    pub(crate) max_hits: u32,
    pub(crate) dest: Dest,
    pub(crate) filled: usize,
    pub(crate) reply: Option<ReplyHeader>,
    pub(crate) error: Option<Error>,
    pub(crate) waker: Option<Waker>,
    /// The watchdog's tick when the request was sent; `None`: never timed out (SEARCH).
    pub(crate) since: Option<u64>,
}

/// A finished request.
pub(crate) struct Finished {
    pub(crate) header: ReplyHeader,
    pub(crate) dest: Dest,
}

pub(crate) struct Slots {
    table: Box<[Mutex<SlotState>]>,
    /// One bit per slot: in use. Bits past the table's end are set for good.
    used: Box<[AtomicU64]>,
    /// One bit per slot: its caller waits with a waker in the slot (candidates to take over
    /// reading the socket when the current reader leaves).
    waiting: Box<[AtomicU64]>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing in a slot is left half-updated by a panic that matters more than the panic itself.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Slots {
    pub(crate) fn new(n: usize) -> Self {
        let n = n.clamp(1, MAX_SLOTS);
        let words = n.div_ceil(64);
        let used: Box<[AtomicU64]> = (0..words)
            .map(|w| {
                let valid = (n - w * 64).min(64);
                AtomicU64::new(if valid == 64 { 0 } else { !0u64 << valid })
            })
            .collect();
        Self {
            table: (0..n)
                .map(|_| {
                    Mutex::new(SlotState {
                        phase: Phase::Free,
                        generation: 0,
                        tag: 0,
                        op: Op::Flush,
                        length: 0,
                        max_hits: 0,
                        dest: Dest::None,
                        filled: 0,
                        reply: None,
                        error: None,
                        waker: None,
                        since: None,
                    })
                })
                .collect(),
            used,
            waiting: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn lock(&self, idx: usize) -> MutexGuard<'_, SlotState> {
        lock(&self.table[idx])
    }

    /// Finishes the request in `idx` (locked as `s`), with `error` if one is given, and wakes
    /// its caller.
    pub(crate) fn wake_done(
        &self,
        idx: usize,
        mut s: MutexGuard<'_, SlotState>,
        error: Option<Error>,
    ) {
        if error.is_some() {
            s.error = error;
        }
        s.phase = Phase::Done;
        let w = s.waker.take();
        drop(s);
        self.set_waiting(idx, false);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Claims a free slot and sets it up for a request; returns its index and tag. The caller
    /// holds a queue permit, so one is free.
    pub(crate) fn claim(
        &self,
        op: Op,
        length: u64,
        max_hits: u32,
        dest: Dest,
        since: Option<u64>,
    ) -> Option<(usize, u64)> {
        let idx = self.take_free()?;
        let mut s = self.lock(idx);
        s.generation = (s.generation + 1) & ((1 << 48) - 1);
        s.tag = s.generation << 16 | idx as u64;
        s.phase = Phase::Waiting;
        s.op = op;
        s.length = length;
        s.max_hits = max_hits;
        s.dest = dest;
        s.filled = 0;
        s.reply = None;
        s.error = None;
        s.since = since;
        Some((idx, s.tag))
    }

    fn take_free(&self) -> Option<usize> {
        for (w, word) in self.used.iter().enumerate() {
            let mut v = word.load(Ordering::Relaxed);
            while v != !0 {
                let bit = (!v).trailing_zeros();
                match word.compare_exchange_weak(
                    v,
                    v | 1 << bit,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Some(w * 64 + bit as usize),
                    Err(now) => v = now,
                }
            }
        }
        None
    }

    /// Gives a slot back (its state must already be `Free`).
    pub(crate) fn release(&self, idx: usize) {
        self.set_waiting(idx, false);
        self.used[idx / 64].fetch_and(!(1 << (idx % 64)), Ordering::Release);
    }

    pub(crate) fn set_waiting(&self, idx: usize, on: bool) {
        let bit = 1u64 << (idx % 64);
        if on {
            self.waiting[idx / 64].fetch_or(bit, Ordering::SeqCst);
        } else {
            self.waiting[idx / 64].fetch_and(!bit, Ordering::SeqCst);
        }
    }

    /// A slot whose caller waits with a waker, if any.
    pub(crate) fn first_waiting(&self) -> Option<usize> {
        self.waiting.iter().enumerate().find_map(|(w, word)| {
            let v = word.load(Ordering::SeqCst);
            (v != 0).then(|| w * 64 + v.trailing_zeros() as usize)
        })
    }

    /// The finished request in `idx`, if it is finished, and whether the slot is free again
    /// (a timed-out request's slot is kept until its reply comes: `Abandoned`).
    pub(crate) fn take_finished(&self, idx: usize) -> Option<(Result<Finished, Error>, bool)> {
        let mut s = self.lock(idx);
        if s.phase == Phase::TimedOut {
            s.phase = Phase::Abandoned;
            s.waker = None;
            s.dest = Dest::None;
            drop(s);
            self.set_waiting(idx, false);
            return Some((Err(Error::Timeout), false));
        }
        if s.phase != Phase::Done {
            return None;
        }
        s.phase = Phase::Free;
        s.waker = None;
        let r = match (s.error.take(), s.reply.take()) {
            (Some(e), _) => Err(e),
            (None, Some(header)) => Ok(Finished {
                header,
                dest: std::mem::replace(&mut s.dest, Dest::None),
            }),
            (None, None) => Err(Error::Closed),
        };
        s.dest = Dest::None;
        drop(s);
        self.release(idx);
        Some((r, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_is_claimed_once_then_none_until_one_is_released() {
        for n in [1usize, 3, 64, 65, 130] {
            let s = Slots::new(n);
            let mut got: Vec<usize> = (0..n)
                .map(|_| s.claim(Op::Read, 4096, 0, Dest::None, None).unwrap().0)
                .collect();
            got.sort_unstable();
            assert_eq!(got, (0..n).collect::<Vec<_>>(), "{n}");
            assert!(s.claim(Op::Read, 4096, 0, Dest::None, None).is_none());
            s.lock(n / 2).phase = Phase::Free;
            s.release(n / 2);
            assert_eq!(
                s.claim(Op::Read, 4096, 0, Dest::None, None).unwrap().0,
                n / 2
            );
        }
    }

    #[test]
    fn a_reused_slot_gets_a_new_tag() {
        let s = Slots::new(1);
        let (_, a) = s.claim(Op::Read, 4096, 0, Dest::None, None).unwrap();
        s.lock(0).phase = Phase::Free;
        s.release(0);
        let (_, b) = s.claim(Op::Read, 4096, 0, Dest::None, None).unwrap();
        assert_ne!(a, b);
        assert_eq!(a & 0xffff, b & 0xffff);
    }

    #[test]
    fn waiting_bits_find_a_waiter() {
        let s = Slots::new(130);
        assert_eq!(s.first_waiting(), None);
        s.set_waiting(129, true);
        s.set_waiting(70, true);
        assert_eq!(s.first_waiting(), Some(70));
        s.set_waiting(70, false);
        assert_eq!(s.first_waiting(), Some(129));
    }
}
