//! Guards: what keeps a rebuild's copy from overwriting a host's write on the extent being
//! rebuilt (docs/volumes.md, "Replacing a lost copy").
//!
//! While a replacement extent is rebuilt, hosts write to it and its node copies the rest from a
//! healthy copy. A host's write is always the newest data for the blocks it covers; the copy
//! read from the source may be older (the same write may not have reached the source yet). So:
//!
//! - every host write to a guarded range marks its blocks in the guard's bitmap before it is
//!   submitted, and counts itself in each 1 MiB region it touches until it completes;
//! - the rebuild writes a region only while it *holds* it, which it can take only when no host
//!   write is in flight there (and while it holds it, host writes there wait: they are parked by
//!   their reactor and retried); holding it, it writes only the blocks no host wrote.
//!
//! Every block therefore ends with either a host's write (the latest one: host writes are
//! ordered among themselves by the host) or the source's data, never with the source's data
//! over a host's. The lock word is per region, so reactors share nothing on the I/O path unless
//! a rebuild is running, and then only the regions they touch.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The unit a rebuild copies and holds at a time.
pub const REGION: u64 = 1 << 20;

/// The region word's bit that says the rebuild holds it; the low bits count host writes.
const HELD: u32 = 1 << 31;

/// One guarded range: a replacement extent on one device.
#[derive(Debug)]
pub struct Guard {
    /// The device index.
    pub device: usize,
    /// First byte.
    pub start: u64,
    /// Length.
    pub length: u64,
    block_shift: u32,
    written: Box<[AtomicU64]>,
    regions: Box<[AtomicU32]>,
}

impl Guard {
    /// A guard over `[start, start + length)` of `device`, whose blocks are `block_size` bytes
    /// (a power of two), with nothing written yet.
    pub fn new(device: usize, start: u64, length: u64, block_size: u32) -> Self {
        let block_shift = block_size.max(1).trailing_zeros();
        let blocks = length.div_ceil(1 << block_shift);
        Self {
            device,
            start,
            length,
            block_shift,
            written: (0..blocks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            regions: (0..length.div_ceil(REGION))
                .map(|_| AtomicU32::new(0))
                .collect(),
        }
    }

    /// Whether `[offset, offset + len)` of `device` overlaps it.
    pub fn overlaps(&self, device: usize, offset: u64, len: u64) -> bool {
        device == self.device
            && offset < self.start + self.length
            && offset.saturating_add(len) > self.start
    }

    /// The part of `[offset, offset + len)` inside the guard, relative to its start.
    fn clip(&self, offset: u64, len: u64) -> (u64, u64) {
        let lo = offset.max(self.start) - self.start;
        let hi = offset.saturating_add(len).min(self.start + self.length) - self.start;
        (lo, hi)
    }

    fn region_span(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let (lo, hi) = self.clip(offset, len);
        (lo / REGION) as usize..hi.div_ceil(REGION) as usize
    }

    /// A host write to `[offset, offset + len)` starts: false when the rebuild holds a region of
    /// it (try again later; nothing was taken). Otherwise its blocks are marked as written and it
    /// counts in its regions until [`Guard::host_done`].
    pub fn host_begin(&self, offset: u64, len: u64) -> bool {
        let span = self.region_span(offset, len);
        for r in span.clone() {
            let word = &self.regions[r];
            let mut v = word.load(Ordering::Acquire);
            loop {
                if v & HELD != 0 {
                    for back in span.start..r {
                        self.regions[back].fetch_sub(1, Ordering::AcqRel);
                    }
                    return false;
                }
                match word.compare_exchange_weak(v, v + 1, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => break,
                    Err(now) => v = now,
                }
            }
        }
        let (lo, hi) = self.clip(offset, len);
        let (first, last) = (lo >> self.block_shift, hi.div_ceil(1 << self.block_shift));
        for b in first..last {
            self.written[(b / 64) as usize].fetch_or(1 << (b % 64), Ordering::AcqRel);
        }
        true
    }

    /// The host write [`Guard::host_begin`] admitted has completed.
    pub fn host_done(&self, offset: u64, len: u64) {
        for r in self.region_span(offset, len) {
            self.regions[r].fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The rebuild takes region `r` (of [`REGION`] bytes from the guard's start): false while a
    /// host write is in flight there.
    pub fn hold(&self, r: usize) -> bool {
        self.regions[r]
            .compare_exchange(0, HELD, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The rebuild lets region `r` go.
    pub fn release(&self, r: usize) {
        self.regions[r].fetch_and(!HELD, Ordering::AcqRel);
    }

    /// The runs (relative to the guard's start) of `[lo, hi)` that no host wrote: what the
    /// rebuild may write. Call while holding the regions.
    pub fn unwritten(&self, lo: u64, hi: u64) -> Vec<(u64, u64)> {
        let bs = 1u64 << self.block_shift;
        let mut out: Vec<(u64, u64)> = Vec::new();
        for b in lo / bs..hi.div_ceil(bs) {
            let marked = self.written[(b / 64) as usize].load(Ordering::Acquire) & (1 << (b % 64));
            if marked != 0 {
                continue;
            }
            let (s, e) = ((b * bs).max(lo), ((b + 1) * bs).min(hi));
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => out.push((s, e)),
            }
        }
        out
    }

    /// Forgets which blocks hosts wrote (a rebuild starts over: they may have written them to
    /// the other copies alone since).
    pub fn forget_written(&self) {
        for w in self.written.iter() {
            w.store(0, Ordering::Release);
        }
    }

    /// Blocks host writes have marked (for tests and logs).
    pub fn written_blocks(&self) -> u64 {
        self.written
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }
}

/// The node's guards: read on every modifying op only while one exists.
#[derive(Debug, Default)]
pub struct Guards {
    any: AtomicBool,
    list: RwLock<Vec<Arc<Guard>>>,
}

impl Guards {
    /// The guard a modifying op on `[offset, offset + len)` of `device` must pass, if any.
    /// (Guards never overlap: they are extents.)
    pub fn find(&self, device: usize, offset: u64, len: u64) -> Option<Arc<Guard>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.list
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|g| g.overlaps(device, offset, len))
            .cloned()
    }

    /// Installs `g` (replacing a guard of the same range).
    pub fn add(&self, g: Arc<Guard>) {
        let mut l = self.list.write().unwrap_or_else(|p| p.into_inner());
        l.retain(|x| !(x.device == g.device && x.start == g.start && x.length == g.length));
        l.push(g);
        self.any.store(true, Ordering::Release);
    }

    /// Removes the guard of this range.
    pub fn remove(&self, device: usize, start: u64, length: u64) {
        let mut l = self.list.write().unwrap_or_else(|p| p.into_inner());
        l.retain(|x| !(x.device == device && x.start == start && x.length == length));
        self.any.store(!l.is_empty(), Ordering::Release);
    }

    /// The guard of exactly this range.
    pub fn get(&self, device: usize, start: u64, length: u64) -> Option<Arc<Guard>> {
        self.list
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|x| x.device == device && x.start == start && x.length == length)
            .cloned()
    }

    /// Every guarded range: (device, start, length).
    pub fn ranges(&self) -> Vec<(usize, u64, u64)> {
        self.list
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|g| (g.device, g.start, g.length))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_writes_mark_blocks_and_the_rebuild_skips_them() {
        let g = Guard::new(0, 1 << 30, 4 << 20, 4096);
        assert!(g.overlaps(0, (1 << 30) + 4096, 4096));
        assert!(!g.overlaps(1, (1 << 30) + 4096, 4096));
        assert!(!g.overlaps(0, (1 << 30) - 4096, 4096));
        // A write across the first two regions' seam.
        let at = (1 << 30) + REGION - 4096;
        assert!(g.host_begin(at, 8192));
        assert!(!g.hold(0), "a host write is in flight in region 0");
        assert!(!g.hold(1), "and in region 1");
        g.host_done(at, 8192);
        assert!(g.hold(0));
        assert_eq!(g.unwritten(0, REGION), vec![(0, REGION - 4096)]);
        // A host write into a held region waits, and takes nothing.
        assert!(!g.host_begin(1 << 30, 4096));
        assert!(g.hold(1), "the refused write left region 1 alone");
        g.release(0);
        g.release(1);
        assert!(g.host_begin(1 << 30, 4096));
        g.host_done(1 << 30, 4096);
        assert_eq!(g.unwritten(0, REGION), vec![(4096, REGION - 4096)]);
        assert_eq!(
            g.unwritten(REGION, 2 * REGION),
            vec![(REGION + 4096, 2 * REGION)]
        );
        assert_eq!(g.written_blocks(), 3);
    }

    #[test]
    fn guards_are_found_by_overlap_only_while_any_exists() {
        let gs = Guards::default();
        assert!(gs.find(0, 0, 4096).is_none());
        gs.add(Arc::new(Guard::new(0, 8192, 8192, 512)));
        assert!(gs.find(0, 0, 4096).is_none());
        assert!(gs.find(0, 12288, 512).is_some());
        assert_eq!(gs.ranges(), vec![(0, 8192, 8192)]);
        gs.remove(0, 8192, 8192);
        assert!(gs.find(0, 12288, 512).is_none());
    }
}
