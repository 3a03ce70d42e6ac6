//! The registered buffer arena and the memory backend's region: page-aligned anonymous memory
//! that the kernel reads and writes directly.
//!
//! A reactor owns one [`Arena`]: a few size classes, each one mmap registered with the ring as
//! one fixed buffer, cut into equal slots. A slot belongs to exactly one in-flight request from
//! `alloc` until `free`; the kernel only touches slots whose request has an SQE outstanding.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{Advice, MmapMut, MmapOptions, MmapRaw};

/// Slot sizes and counts per class. Sized so that a few connections at QD 64 of 4k..128k I/O,
/// and a couple of 1 MiB ones, never wait for a buffer (about 54 MiB per reactor).
const CLASSES: [(usize, usize); 4] = [
    (4 << 10, 512),
    (16 << 10, 256),
    (128 << 10, 128),
    (1 << 20, 32),
];
/// Size of the shared all-zero buffer used to write zeroes.
pub const ZERO_LEN: usize = 1 << 20;

/// A slot of the arena: which class, which slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufId {
    class: u8,
    slot: u32,
}

/// Maps anonymous memory, on huge pages when the system has them, on normal pages otherwise.
///
/// Huge pages matter beyond the TLB: a slot inside one is physically contiguous, so a 1 MiB
/// O_DIRECT read from it is one segment for the block layer instead of 256 pages, which a device
/// with fewer segments per request (virtio-blk here: 254) must split into two requests.
fn map(len: usize) -> io::Result<MmapMut> {
    let len = len.max(1);
    if len >= 2 << 20 {
        // Reserved huge pages (hugetlbfs), when the administrator set some aside.
        if let Ok(m) = MmapOptions::new().len(len).huge(None).populate().map_anon() {
            return Ok(m);
        }
        // Transparent huge pages, when the system allows them for regions that ask (the
        // `madvise` setting, the default of most distributions): ask before the first touch.
        let mut m = MmapOptions::new().len(len).map_anon()?;
        if m.advise(Advice::HugePage).is_ok() {
            // Fault it all in now, as `populate` does (by hand before Linux 5.14).
            if m.advise(Advice::PopulateWrite).is_err() {
                for i in (0..len).step_by(4096) {
                    m[i] = 0;
                }
            }
            return Ok(m);
        }
    }
    MmapOptions::new().len(len).populate().map_anon()
}

struct Class {
    size: usize,
    map: MmapMut,
    base: *mut u8,
    free: Vec<u32>,
    count: u32,
    /// Slots holding a WRITE payload still arriving (their return depends on the client).
    receiving: u32,
}

/// Number of size classes.
pub const NUM_CLASSES: usize = CLASSES.len();

/// Why [`Arena::alloc_fair`] gave no slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoSlot {
    /// The connection already holds its share: it waits for its own slots to come back.
    OverShare,
    /// Nothing free that this request may take: it waits for anyone's slot to come back.
    Exhausted,
}

/// Fixed-size-class buffer pool, registered with the ring (buffer index = class index; the
/// zero buffer is the last index).
pub struct Arena {
    classes: Vec<Class>,
    zero: MmapMut,
}

impl Arena {
    /// Maps every class and the zero buffer.
    pub fn new() -> io::Result<Self> {
        let mut classes = Vec::with_capacity(CLASSES.len());
        for (size, count) in CLASSES {
            let mut map = map(size * count)?;
            let base = map.as_mut_ptr();
            classes.push(Class {
                size,
                map,
                base,
                free: (0..count as u32).rev().collect(),
                count: count as u32,
                receiving: 0,
            });
        }
        Ok(Self {
            classes,
            zero: map(ZERO_LEN)?,
        })
    }

    /// The regions to register with the ring, in buffer-index order.
    pub fn iovecs(&mut self) -> Vec<libc::iovec> {
        let mut v: Vec<libc::iovec> = self
            .classes
            .iter_mut()
            .map(|c| libc::iovec {
                iov_base: c.map.as_mut_ptr().cast(),
                iov_len: c.map.len(),
            })
            .collect();
        v.push(libc::iovec {
            iov_base: self.zero.as_mut_ptr().cast(),
            iov_len: self.zero.len(),
        });
        v
    }

    /// A slot of at least `len` bytes from the smallest class that has one free.
    pub fn alloc(&mut self, len: usize) -> Option<BufId> {
        self.classes
            .iter_mut()
            .enumerate()
            .filter(|(_, c)| c.size >= len)
            .find_map(|(i, c)| {
                c.free.pop().map(|slot| BufId {
                    class: i as u8,
                    slot,
                })
            })
    }

    /// A slot of at least `len` bytes for a connection that holds `held[c]` slots of each class,
    /// under the fair-admission rules (docs/node.md, "Budgets and timeouts"): a connection takes
    /// a slot of a class only while it holds fewer of that class than are free, so no single
    /// connection can drain a class, and each one holding slots leaves at least as many to the
    /// others; a slot that will hold a WRITE payload still arriving (`receiving`) is taken only
    /// while under half of its class is held that way, so clients that stall mid-payload can
    /// never take the slots READs need. The smallest class that allows it is used.
    pub fn alloc_fair(
        &mut self,
        len: usize,
        held: &[u32; NUM_CLASSES],
        receiving: bool,
    ) -> Result<BufId, NoSlot> {
        let mut why = NoSlot::Exhausted;
        for (i, c) in self.classes.iter_mut().enumerate() {
            if c.size < len || c.free.is_empty() {
                continue;
            }
            if receiving && c.receiving >= c.count / 2 {
                continue;
            }
            if held[i] > 0 && held[i] as usize >= c.free.len() {
                why = NoSlot::OverShare;
                continue;
            }
            let slot = c.free.pop().expect("checked non-empty");
            if receiving {
                c.receiving += 1;
            }
            return Ok(BufId {
                class: i as u8,
                slot,
            });
        }
        Err(why)
    }

    /// The payload a slot was taken for (`receiving`) has all arrived, or its request was
    /// dropped.
    pub fn end_receiving(&mut self, id: BufId) {
        let c = &mut self.classes[usize::from(id.class)];
        c.receiving = c.receiving.saturating_sub(1);
    }

    /// The smallest size class whose slots hold `len` bytes.
    pub fn class_for(&self, len: usize) -> Option<usize> {
        self.classes.iter().position(|c| c.size >= len)
    }

    /// The size class of a slot (an index below [`NUM_CLASSES`]).
    pub fn class_of(&self, id: BufId) -> usize {
        usize::from(id.class)
    }

    /// Returns a slot. The caller guarantees the kernel no longer uses it.
    pub fn free(&mut self, id: BufId) {
        self.classes[usize::from(id.class)].free.push(id.slot);
    }

    /// The slot's capacity.
    pub fn capacity(&self, id: BufId) -> usize {
        self.classes[usize::from(id.class)].size
    }

    /// The registered-buffer index of the slot's class.
    pub fn buf_index(&self, id: BufId) -> u16 {
        u16::from(id.class)
    }

    /// Start of the slot, for an SQE.
    pub fn ptr(&self, id: BufId) -> *mut u8 {
        let c = &self.classes[usize::from(id.class)];
        // SAFETY: slot < count, so the offset stays inside the class's mapping.
        unsafe { c.base.add(id.slot as usize * c.size) }
    }

    /// The first `len` bytes of a slot. Only call while no SQE that uses the slot is in flight.
    pub fn bytes(&self, id: BufId, len: usize) -> &[u8] {
        assert!(len <= self.capacity(id));
        // SAFETY: the range lies inside the slot (asserted); the slot is owned by the caller's
        // request and no kernel operation on it is outstanding, so nothing writes it meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr(id), len) }
    }

    /// The first `len` bytes of a slot, writable. Same rule as [`Arena::bytes`].
    pub fn bytes_mut(&mut self, id: BufId, len: usize) -> &mut [u8] {
        assert!(len <= self.capacity(id));
        // SAFETY: as in `bytes`; `&mut self` keeps other arena borrows out while this lives.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(id), len) }
    }

    /// The zero buffer's start (never written after mapping) and its registered index.
    pub fn zero(&self) -> (*const u8, u16) {
        (self.zero.as_ptr(), self.classes.len() as u16)
    }
}

/// The memory backend: one anonymous mapping shared by every reactor.
///
/// Reactors on other threads may copy into and out of overlapping ranges at the same time, so
/// the region is only ever touched as `AtomicU64` words (Relaxed: no order is promised between
/// concurrent requests, docs/protocol.md) and by the kernel, which sends READ replies straight
/// from it. Offsets and lengths are multiples of the 4 KiB block size, so every copy is whole
/// words: two overlapping writes in flight together leave each 8-byte word holding one of them.
pub struct MemRegion {
    // A raw mapping: it hands out pointers only, never a byte slice that atomics could race.
    map: MmapRaw,
    words: usize,
}

/// Bytes per word of the region.
const WORD: usize = std::mem::size_of::<u64>();

impl MemRegion {
    /// Maps `len` zeroed bytes (`len` a multiple of 8).
    pub fn new(len: u64) -> io::Result<Self> {
        let size = usize::try_from(len).map_err(|_| io::Error::other("memory size too large"))?;
        if !size.is_multiple_of(WORD) {
            return Err(io::Error::other(format!(
                "memory size {size} is not a multiple of {WORD}"
            )));
        }
        let map = if size >= 2 << 20 {
            MmapOptions::new()
                .len(size)
                .huge(None)
                .map_anon()
                .or_else(|_| MmapMut::map_anon(size))?
        } else {
            MmapMut::map_anon(size)?
        };
        Ok(Self {
            map: MmapRaw::from(map),
            words: size / WORD,
        })
    }

    /// The region as words.
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned (so aligned for AtomicU64, which has u64's size and
        // any bit pattern is valid), `words * 8` bytes long, and lives as long as `self`. It is
        // only ever accessed through these atomics and the kernel's reads for sends (`MmapRaw`
        // makes no byte slice of it), so no non-atomic Rust access races with them.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU64>(), self.words) }
    }

    /// The words covering `[offset, offset + len)`, which must be whole words inside the region.
    fn span(&self, offset: u64, len: usize) -> &[AtomicU64] {
        assert!(
            offset.is_multiple_of(WORD as u64) && len.is_multiple_of(WORD),
            "memory backend access {offset}+{len} not in whole words"
        );
        let first = usize::try_from(offset / WORD as u64).unwrap_or(usize::MAX);
        let end = first.checked_add(len / WORD);
        assert!(
            end.is_some_and(|e| e <= self.words),
            "memory backend access {offset}+{len} past the end"
        );
        &self.words()[first..first + len / WORD]
    }

    /// Pointer to `offset` for sending straight from the region (the kernel reads it).
    pub fn ptr(&self, offset: u64, len: usize) -> *const u8 {
        self.span(offset, len).as_ptr().cast()
    }

    /// Copies `src` into the region at `offset`.
    pub fn write(&self, offset: u64, src: &[u8]) {
        for (w, b) in self
            .span(offset, src.len())
            .iter()
            .zip(src.chunks_exact(WORD))
        {
            let v = u64::from_ne_bytes(b.try_into().expect("whole words"));
            w.store(v, Ordering::Relaxed);
        }
    }

    /// Copies from the region at `offset` into `dst`.
    pub fn read(&self, offset: u64, dst: &mut [u8]) {
        let len = dst.len();
        for (w, b) in self
            .span(offset, len)
            .iter()
            .zip(dst.chunks_exact_mut(WORD))
        {
            b.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
    }

    /// Zeroes `len` bytes at `offset`.
    pub fn zero(&self, offset: u64, len: u64) {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        for w in self.span(offset, len) {
            w.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_picks_smallest_fitting_class_and_recycles() {
        let mut a = Arena::new().unwrap();
        let b = a.alloc(4096).unwrap();
        assert_eq!(a.capacity(b), 4096);
        assert_eq!(a.ptr(b) as usize % 4096, 0);
        let c = a.alloc(100 << 10).unwrap();
        assert_eq!(a.capacity(c), 128 << 10);
        a.bytes_mut(b, 4096).fill(7);
        assert!(a.bytes(b, 4096).iter().all(|x| *x == 7));
        a.free(b);
        assert_eq!(a.alloc(4096), Some(b));
        assert!(a.alloc((1 << 20) + 1).is_none());
        // Exhausting the 1 MiB class makes large allocations fail (back-pressure), not panic.
        let big: Vec<_> = std::iter::from_fn(|| a.alloc(1 << 20)).collect();
        assert_eq!(big.len(), 32);
        assert!(a.alloc(1 << 20).is_none());
    }

    /// `THPeligible` of the mapping that holds `addr`, from /proc/self/smaps.
    fn thp_eligible(addr: usize) -> Option<bool> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let head = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = head.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = (a..b).contains(&addr);
                    continue;
                }
            }
            if inside {
                if let Some(v) = line.strip_prefix("THPeligible:") {
                    return Some(v.trim() == "1");
                }
            }
        }
        None
    }

    #[test]
    fn fair_allocation_leaves_slots_to_others() {
        let mut a = Arena::new().unwrap();
        // One greedy connection takes at most half of the 1 MiB class.
        let mut held = [0u32; NUM_CLASSES];
        let mut greedy = Vec::new();
        while let Ok(b) = a.alloc_fair(1 << 20, &held, false) {
            held[a.class_of(b)] += 1;
            greedy.push(b);
        }
        assert_eq!(greedy.len(), 16);
        assert_eq!(a.alloc_fair(1 << 20, &held, false), Err(NoSlot::OverShare));
        // A second one a half of the rest, and so on; a newcomer always finds one.
        let mut held2 = [0u32; NUM_CLASSES];
        while let Ok(b) = a.alloc_fair(1 << 20, &held2, false) {
            held2[a.class_of(b)] += 1;
        }
        assert_eq!(held2[3], 8);
        assert!(a.alloc_fair(1 << 20, &[0; NUM_CLASSES], false).is_ok());
        // Payload slots: at most half of a class.
        let mut b = Arena::new().unwrap();
        let recv: Vec<_> =
            std::iter::from_fn(|| b.alloc_fair(1 << 20, &[0; NUM_CLASSES], true).ok()).collect();
        assert_eq!(recv.len(), 16);
        assert!(b.alloc_fair(1 << 20, &[0; NUM_CLASSES], false).is_ok());
        b.end_receiving(recv[0]);
        assert!(b.alloc_fair(1 << 20, &[0; NUM_CLASSES], true).is_ok());
    }

    #[test]
    fn large_classes_ask_for_transparent_huge_pages() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !thp.contains("[madvise]") && !thp.contains("[always]") {
            eprintln!(
                "skipped: transparent huge pages are off here ({})",
                thp.trim()
            );
            return;
        }
        let mut a = Arena::new().unwrap();
        let big = a.alloc(1 << 20).unwrap();
        let small = a.alloc(4096).unwrap();
        // Every class maps 2 MiB or more, so each one asks.
        for b in [big, small] {
            assert_eq!(
                thp_eligible(a.ptr(b) as usize),
                Some(true),
                "the mapping of a {}-byte slot asks for huge pages",
                a.capacity(b)
            );
        }
        // Still plain memory: what is written reads back.
        a.bytes_mut(big, 1 << 20).fill(9);
        assert!(a.bytes(big, 1 << 20).iter().all(|x| *x == 9));
    }

    #[test]
    fn mem_region_round_trip() {
        let m = MemRegion::new(1 << 20).unwrap();
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        m.write(4096, &data);
        let mut out = vec![0u8; 8192];
        m.read(4096, &mut out);
        assert_eq!(out, data);
        // SAFETY: nothing writes the region while this slice is read.
        let sent = unsafe { std::slice::from_raw_parts(m.ptr(4096, 8192), 8192) };
        assert_eq!(sent, &data[..]);
        m.zero(4096, 4096);
        m.read(4096, &mut out);
        assert!(out[..4096].iter().all(|b| *b == 0));
        assert_eq!(out[4096..], data[4096..]);
        assert!(MemRegion::new(1001).is_err());
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn mem_region_refuses_access_past_its_end() {
        MemRegion::new(1 << 20).unwrap().zero((1 << 20) - 8, 16);
    }

    /// Concurrent overlapping writers on many threads (the data race the region must not
    /// have: run under Miri or TSan to see one) leave every word holding one writer's value.
    #[test]
    fn mem_region_overlapping_writers_leave_whole_words() {
        let m = std::sync::Arc::new(MemRegion::new(64 << 10).unwrap());
        let threads: Vec<_> = (1..=4u8)
            .map(|t| {
                let m = std::sync::Arc::clone(&m);
                std::thread::spawn(move || {
                    let data = vec![t; 64 << 10];
                    let mut out = vec![0u8; 64 << 10];
                    for _ in 0..50 {
                        m.write(0, &data);
                        m.read(0, &mut out);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut out = vec![0u8; 64 << 10];
        m.read(0, &mut out);
        for w in out.chunks_exact(8) {
            assert!(w.iter().all(|b| *b == w[0]) && (1..=4).contains(&w[0]));
        }
    }
}
