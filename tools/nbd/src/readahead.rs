//! Sequential readahead in front of a [`Backend`]: a client reading a stream (fio's sequential
//! jobs, `qemu-img convert`, `nbdcopy`, `dd`) asks for one request's worth at a time, a few
//! requests deep, and each request crosses two network hops (client to gateway, gateway to node)
//! before the disk sees it. Readahead keeps the disk busy ahead of the client instead: once
//! [`CONFIRM`] reads in a row continue the same stream, the window past the newest read is
//! fetched in `chunk`-sized reads in parallel, and reads that fall inside a fetched chunk are
//! answered from it without a copy ([`Data::Shared`]). A new stream's window starts at two chunks
//! and doubles each time the stream enters a new chunk, up to `window`, so a short run of
//! sequential reads costs little.
//!
//! Random reads must not start streams: among 4k random reads over 1 GiB, one in about 4,000
//! starts where one of the last 64 reads ended, so "two reads in a row" alone started several
//! streams a second at 25k IOPS and each fetched the whole window (three times the bytes the
//! client asked for went to the disk, and random-read IOPS fell by a quarter).
//!
//! Coherence: every WRITE, TRIM and WRITE_ZEROES drops the chunks it overlaps once it has
//! completed and before it is acknowledged, whether they were fetched before it or while it was
//! in flight; a chunk fetched after that was asked of the node after the write had completed
//! there. So a read that arrives after a write's acknowledgement never sees older data (reads
//! concurrent with the write may see either, as the NBD spec allows). That holds because the
//! gateway is the volume's only writer (it holds the read-write lease); a read-only export,
//! whose volume another host may be writing, gets no readahead (see [`Readahead::new`]).
//!
//! Memory is bounded: at most `streams * (window / chunk + 2)` chunks are held; chunks behind a
//! stream's newest read are dropped as the stream moves on, and a stream that is replaced by a
//! new one drops what it had fetched. Reads of no stream are remembered only by where they ended
//! and how many reads in a row led there (a short list), to spot a new stream; they never
//! displace a stream.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Semaphore};

use crate::export::{Backend, Data, Failure};

/// How much to read ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadaheadConfig {
    /// Bytes fetched ahead of a stream's newest read (0: no readahead).
    pub window: u64,
    /// The size of one fetch (a multiple of the block size; reads larger than this bypass).
    pub chunk: u64,
    /// Streams followed at once (least recently used is replaced; random reads mixed in do not
    /// displace them).
    pub streams: usize,
}

impl Default for ReadaheadConfig {
    fn default() -> Self {
        Self {
            window: 16 << 20,
            chunk: 1 << 20,
            streams: 4,
        }
    }
}

/// A fetched (or fetching) chunk. `None` until the fetch ends; then the bytes, or `None` if the
/// fetch failed (readers then go to the backend themselves and get its error).
struct Slot {
    rx: watch::Receiver<Option<Option<Arc<Vec<u8>>>>>,
    /// Cleared when a write overlaps the chunk: a reader that took the slot before must not use it.
    valid: AtomicBool,
}

#[derive(Clone, Copy, Debug)]
struct Stream {
    /// Where the next read of this stream starts.
    next: u64,
    /// Chunks are fetched (or were dropped as consumed) up to here.
    ahead: u64,
    /// For least-recently-used replacement.
    used: u64,
    /// Bytes fetched ahead of the newest read: grows from two chunks to the configured window.
    win: u64,
}

/// Where a run of reads of no stream (yet) ended, and how many reads in a row it has had.
#[derive(Clone, Copy, Debug)]
struct Run {
    end: u64,
    reads: u32,
}

#[derive(Default)]
struct State {
    /// Established streams ([`CONFIRM`] reads in a row or more), least recently used replaced.
    streams: Vec<Stream>,
    /// Where recent runs of reads of no stream ended.
    recent: std::collections::VecDeque<Run>,
    chunks: BTreeMap<u64, Arc<Slot>>,
    tick: u64,
}

/// A [`Backend`] with sequential readahead (see the module documentation).
pub struct Readahead<B> {
    inner: Arc<B>,
    cfg: ReadaheadConfig,
    size: u64,
    state: Mutex<State>,
    /// One permit per fetch in flight at most; all of them taken means none is in flight.
    fetches: Arc<Semaphore>,
    max_fetches: u32,
    /// Reads answered from fetched chunks, and reads that went to the backend.
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Ends of recent reads of no stream remembered to spot the start of a stream.
const RECENT: usize = 64;

/// Reads in a row that make a stream. Two are not enough: random reads continue one another by
/// chance (see the module documentation); three chance continuations in a row of one run are
/// about as likely as one in 10^10 random reads over 1 GiB.
pub const CONFIRM: u32 = 4;

/// Fetches in flight at most, whatever the window.
const MAX_FETCHES: u32 = 64;

impl<B: Backend> Readahead<B> {
    /// Readahead over `inner`, an export of `size` bytes. `cfg.window == 0` turns it off (every
    /// call goes straight to `inner`); so does a read-only export, whose volume may change under
    /// it (give `cfg` with a zero window then).
    pub fn new(inner: Arc<B>, size: u64, cfg: ReadaheadConfig) -> Self {
        let cfg = ReadaheadConfig {
            chunk: cfg.chunk.max(4096),
            streams: cfg.streams.max(1),
            ..cfg
        };
        let max_fetches = (cfg.window.div_ceil(cfg.chunk) as u32)
            .saturating_mul(cfg.streams as u32)
            .clamp(1, MAX_FETCHES);
        Self {
            inner,
            cfg,
            size,
            state: Mutex::new(State::default()),
            fetches: Arc::new(Semaphore::new(max_fetches as usize)),
            max_fetches,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Waits until no fetch is in flight, and starts no more (before the backend is closed).
    pub async fn quiesce(&self) {
        let _all = self.fetches.acquire_many(self.max_fetches).await;
        self.fetches.close();
    }

    /// Reads answered from fetched chunks, and reads that went to the backend, so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Chunks held (fetched or fetching).
    pub fn chunks_held(&self) -> usize {
        self.lock().chunks.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the maps consistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn chunk_of(&self, offset: u64) -> u64 {
        offset - offset % self.cfg.chunk
    }

    /// Notes a read of `range`; returns the chunks that hold all of it (if they do) and the fetches
    /// to start.
    fn plan(&self, range: &Range<u64>) -> (Option<Vec<Arc<Slot>>>, Vec<Fetch>) {
        let chunk = self.cfg.chunk;
        let mut st = self.lock();
        st.tick += 1;
        let tick = st.tick;
        let first = self.chunk_of(range.start);
        let last = self.chunk_of(range.end - 1);
        let wanted: &[u64] = if first == last {
            &[first]
        } else {
            &[first, last]
        };
        let held: Vec<Arc<Slot>> = wanted
            .iter()
            .filter_map(|c| st.chunks.get(c).cloned())
            .collect();
        let covered = held.len() == wanted.len();
        let run = st.recent.iter().position(|r| r.end == range.start);
        let si = if let Some(i) = st.streams.iter().position(|s| s.next == range.start) {
            // Chunks wholly behind this read of the stream are consumed (its reads arrive in
            // order, and the ones before this took their slots already).
            let behind = first.saturating_sub(self.cfg.window + 2 * chunk);
            drop_range(&mut st.chunks, behind..first);
            let s = &mut st.streams[i];
            if last > self.chunk_of(range.start.saturating_sub(1)) {
                s.win = (2 * s.win).min(self.cfg.window);
            }
            i
        } else if let Some(r) = run.filter(|&r| st.recent[r].reads + 1 >= CONFIRM) {
            // The CONFIRM-th read in a row: a new stream.
            st.recent.remove(r);
            let fresh = Stream {
                next: range.end,
                ahead: 0,
                used: tick,
                win: (2 * chunk).min(self.cfg.window),
            };
            if st.streams.len() < self.cfg.streams {
                st.streams.push(fresh);
                st.streams.len() - 1
            } else {
                let i = (0..st.streams.len())
                    .min_by_key(|&i| st.streams[i].used)
                    .expect("at least one stream");
                let old = std::mem::replace(&mut st.streams[i], fresh);
                // What the replaced stream fetched ahead will not be read.
                let lo = self.chunk_of(old.next);
                drop_range(&mut st.chunks, lo..old.ahead.max(lo));
                i
            }
        } else {
            // A read of no stream (yet): remembered with the run it continues, if any, so that
            // reads continuing it make a stream. Random reads only ever touch this short list,
            // never the streams.
            let reads = match run.and_then(|r| st.recent.remove(r)) {
                Some(r) => r.reads + 1,
                None => 1,
            };
            if st.recent.len() >= RECENT {
                st.recent.pop_front();
            }
            st.recent.push_back(Run {
                end: range.end,
                reads,
            });
            return (covered.then_some(held), Vec::new());
        };
        let mut fetches = Vec::new();
        let cap = self.cfg.streams as u64 * (self.cfg.window.div_ceil(chunk) + 2);
        let mut c = st.streams[si].ahead.max(range.end.next_multiple_of(chunk));
        let until = range.end.saturating_add(st.streams[si].win).min(self.size);
        while c < until && (st.chunks.len() as u64) < cap {
            if let Entry::Vacant(e) = st.chunks.entry(c) {
                let (tx, rx) = watch::channel(None);
                e.insert(Arc::new(Slot {
                    rx,
                    valid: AtomicBool::new(true),
                }));
                fetches.push(Fetch {
                    at: c,
                    len: chunk.min(self.size - c),
                    tx,
                });
            }
            c += chunk;
        }
        let s = &mut st.streams[si];
        s.ahead = s.ahead.max(c);
        s.next = range.end;
        s.used = tick;
        (covered.then_some(held), fetches)
    }

    fn start(&self, f: Fetch) {
        let inner = Arc::clone(&self.inner);
        let fetches = Arc::clone(&self.fetches);
        tokio::spawn(async move {
            let Ok(_permit) = fetches.acquire_owned().await else {
                return;
            };
            let r = inner.read(f.at, f.len as usize).await;
            let bytes = match r {
                Ok(Data::Owned(v)) => Some(Arc::new(v)),
                Ok(d) => Some(Arc::new(d.as_slice().to_vec())),
                Err(e) => {
                    tracing::debug!(offset = f.at, "readahead fetch failed: {e}");
                    None
                }
            };
            let _ = f.tx.send(Some(bytes));
        });
    }

    /// Serves `range` from `slots` (the chunks holding it, in order), if they were fetched and
    /// no write touched them.
    async fn serve_from(&self, slots: Vec<Arc<Slot>>, range: &Range<u64>) -> Option<Data> {
        let mut bufs = Vec::with_capacity(slots.len());
        for s in &slots {
            let mut rx = s.rx.clone();
            let got = rx.wait_for(Option::is_some).await.ok()?;
            let bytes = (*got).clone().flatten()?;
            drop(got);
            if !s.valid.load(Ordering::Acquire) {
                return None;
            }
            bufs.push(bytes);
        }
        let first = self.chunk_of(range.start);
        let from = (range.start - first) as usize;
        let len = (range.end - range.start) as usize;
        if let [one] = &bufs[..] {
            return (from + len <= one.len())
                .then(|| Data::Shared(Arc::clone(one), from..from + len));
        }
        let mut out = Vec::with_capacity(len);
        let head = bufs[0].get(from..)?;
        out.extend_from_slice(head);
        out.extend_from_slice(bufs[1].get(..len - head.len())?);
        Some(Data::Owned(out))
    }

    /// Drops every chunk that overlaps `[offset, offset+len)`.
    fn invalidate(&self, offset: u64, len: u64) {
        if self.cfg.window == 0 || len == 0 {
            return;
        }
        let end = offset.saturating_add(len);
        let mut st = self.lock();
        drop_range(&mut st.chunks, self.chunk_of(offset)..end);
    }
}

/// One chunk to fetch.
struct Fetch {
    at: u64,
    len: u64,
    tx: watch::Sender<Option<Option<Arc<Vec<u8>>>>>,
}

/// Removes (and marks invalid) the chunks whose start lies in `r`.
fn drop_range(chunks: &mut BTreeMap<u64, Arc<Slot>>, r: Range<u64>) {
    if r.start >= r.end {
        return;
    }
    let keys: Vec<u64> = chunks.range(r).map(|(k, _)| *k).collect();
    for k in keys {
        if let Some(s) = chunks.remove(&k) {
            s.valid.store(false, Ordering::Release);
        }
    }
}

impl<B: Backend> Backend for Readahead<B> {
    async fn read(&self, offset: u64, len: usize) -> Result<Data, Failure> {
        let l = len as u64;
        if self.cfg.window == 0 || l == 0 || l > self.cfg.chunk {
            return self.inner.read(offset, len).await;
        }
        let range = offset..offset + l;
        let (slots, fetches) = self.plan(&range);
        for f in fetches {
            self.start(f);
        }
        if let Some(slots) = slots {
            if let Some(d) = self.serve_from(slots, &range).await {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(d);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.inner.read(offset, len).await
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), Failure> {
        let r = self.inner.write(offset, data, fua).await;
        self.invalidate(offset, data.len() as u64);
        r
    }

    async fn flush(&self) -> Result<(), Failure> {
        self.inner.flush().await
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), Failure> {
        let r = self.inner.discard(offset, len).await;
        self.invalidate(offset, len);
        r
    }

    async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), Failure> {
        let r = self.inner.write_zeroes(offset, len, fua).await;
        self.invalidate(offset, len);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::MemoryBackend;
    use crate::proto::Errno;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Notify;

    const CHUNK: u64 = 256 << 10;

    fn cfg(window: u64) -> ReadaheadConfig {
        ReadaheadConfig {
            window,
            chunk: CHUNK,
            streams: 2,
        }
    }

    /// Memory with a pattern; records the size of every read; a read of `gate_len` bytes takes
    /// its snapshot at once but returns only after `open` (a fetch in flight); reads of
    /// `fail_len` bytes fail.
    struct Probe {
        mem: MemoryBackend,
        reads: Mutex<Vec<(u64, usize)>>,
        gate_len: usize,
        gate: Notify,
        gated: AtomicUsize,
        fail_len: usize,
        /// Writes wait for `wgate` before they land.
        hold_writes: AtomicBool,
        wgate: Notify,
        held_writes: AtomicUsize,
    }

    impl Probe {
        async fn new(size: usize, gate_len: usize, fail_len: usize) -> Arc<Self> {
            let mem = MemoryBackend::new(size);
            let pattern: Vec<u8> = (0..size).map(|i| (i / 4096 % 251) as u8).collect();
            mem.write(0, &pattern, false).await.unwrap();
            Arc::new(Self {
                mem,
                reads: Mutex::new(Vec::new()),
                gate_len,
                gate: Notify::new(),
                gated: AtomicUsize::new(0),
                fail_len,
                hold_writes: AtomicBool::new(false),
                wgate: Notify::new(),
                held_writes: AtomicUsize::new(0),
            })
        }
        fn sizes(&self) -> Vec<usize> {
            self.reads.lock().unwrap().iter().map(|r| r.1).collect()
        }
    }

    impl Backend for Probe {
        async fn read(&self, offset: u64, len: usize) -> Result<Data, Failure> {
            self.reads.lock().unwrap().push((offset, len));
            if len == self.fail_len {
                return Err(Failure {
                    code: Errno::Io,
                    why: "injected".into(),
                });
            }
            let snapshot = self.mem.read(offset, len).await;
            if len == self.gate_len {
                self.gated.fetch_add(1, Ordering::SeqCst);
                self.gate.notified().await;
            }
            snapshot
        }
        async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), Failure> {
            if self.hold_writes.load(Ordering::SeqCst) {
                self.held_writes.fetch_add(1, Ordering::SeqCst);
                self.wgate.notified().await;
            }
            self.mem.write(offset, data, fua).await
        }
        async fn flush(&self) -> Result<(), Failure> {
            Ok(())
        }
        async fn discard(&self, offset: u64, len: u64) -> Result<(), Failure> {
            self.mem.discard(offset, len).await
        }
        async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), Failure> {
            self.mem.write_zeroes(offset, len, fua).await
        }
    }

    async fn read(ra: &Readahead<Probe>, offset: u64, len: usize) -> Vec<u8> {
        ra.read(offset, len).await.unwrap().as_slice().to_vec()
    }

    /// Reads `n` 16 KiB blocks in a row from 0; returns where they end.
    async fn run_of(ra: &Readahead<Probe>, n: u32) -> u64 {
        for i in 0..u64::from(n) {
            read(ra, i * (16 << 10), 16 << 10).await;
        }
        u64::from(n) * (16 << 10)
    }

    /// [`CONFIRM`] reads in a row from 0, which starts a stream; returns its end.
    async fn stream_on(ra: &Readahead<Probe>) -> u64 {
        run_of(ra, CONFIRM).await
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn chunk_reads(p: &Probe) -> usize {
        p.sizes().iter().filter(|&&s| s == CHUNK as usize).count()
    }

    #[tokio::test]
    async fn a_stream_is_served_from_fetched_chunks() {
        let p = Probe::new(8 << 20, 0, 0).await;
        let ra = Readahead::new(Arc::clone(&p), 8 << 20, cfg(1 << 20));
        let want = p.mem.contents();
        // 128 KiB reads straight through, and a tail that is not chunk-aligned.
        let mut off = 0u64;
        while off < (8 << 20) - 96 * 1024 {
            let len = if off < 4 << 20 { 128 << 10 } else { 96 << 10 };
            let got = read(&ra, off, len).await;
            assert_eq!(got, want[off as usize..off as usize + len], "at {off}");
            off += len as u64;
        }
        let (hits, misses) = ra.stats();
        assert!(
            misses <= 8,
            "only the reads before the first chunk miss: {misses}"
        );
        assert!(hits > 50, "{hits}");
        let direct = p.sizes().iter().filter(|&&s| s != CHUNK as usize).count() as u64;
        assert_eq!(direct, misses, "every other backend read is one chunk");
        assert!(
            ra.chunks_held() <= 2 * (4 + 2),
            "chunks behind the stream are dropped: {}",
            ra.chunks_held()
        );
    }

    #[tokio::test]
    async fn a_stream_survives_random_reads_mixed_in() {
        let p = Probe::new(8 << 20, 0, 0).await;
        let ra = Readahead::new(Arc::clone(&p), 8 << 20, cfg(1 << 20));
        let want = p.mem.contents();
        let mut r = 1u64;
        for i in 0..48u64 {
            let off = i * (64 << 10);
            assert_eq!(
                read(&ra, off, 64 << 10).await,
                want[off as usize..][..64 << 10]
            );
            for _ in 0..5 {
                r = r
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (r >> 33) % 2048 * 4096;
                assert_eq!(read(&ra, at, 4096).await, want[at as usize..][..4096]);
            }
        }
        let (hits, _) = ra.stats();
        assert!(hits >= 40, "the stream kept its chunks: {hits} hits of 48");
    }

    #[tokio::test]
    async fn random_reads_fetch_nothing() {
        let p = Probe::new(8 << 20, 0, 0).await;
        let ra = Readahead::new(Arc::clone(&p), 8 << 20, cfg(1 << 20));
        let want = p.mem.contents();
        for i in 0..200u64 {
            let off = (i * 7919 % 2000) * 4096;
            assert_eq!(
                read(&ra, off, 4096).await,
                want[off as usize..off as usize + 4096]
            );
        }
        assert!(p.sizes().iter().all(|&s| s == 4096));
        assert_eq!(ra.stats(), (0, 200));
    }

    #[tokio::test]
    async fn chance_runs_of_random_reads_start_no_stream() {
        // Runs of two and three reads in a row, as random reads make by chance, among random
        // reads: nothing is fetched.
        let p = Probe::new(8 << 20, 0, 0).await;
        let ra = Readahead::new(Arc::clone(&p), 8 << 20, cfg(1 << 20));
        let want = p.mem.contents();
        let mut n = 0;
        for i in 0..300u64 {
            let start = (i * 7919 % 1900) * 4096;
            let run = 1 + i % 3;
            for k in 0..run {
                let off = start + k * 4096;
                assert_eq!(read(&ra, off, 4096).await, want[off as usize..][..4096]);
                n += 1;
            }
            settle().await;
        }
        assert!(p.sizes().iter().all(|&s| s == 4096), "a chunk was fetched");
        assert_eq!(ra.stats(), (0, n));
    }

    #[tokio::test]
    async fn a_new_stream_fetches_two_chunks_then_ramps_up() {
        let p = Probe::new(8 << 20, 0, 0).await;
        let ra = Readahead::new(Arc::clone(&p), 8 << 20, cfg(2 << 20));
        let want = p.mem.contents();
        run_of(&ra, CONFIRM - 1).await;
        settle().await;
        assert_eq!(chunk_reads(&p), 0, "not a stream yet");
        let mut off = stream_on(&ra).await;
        settle().await;
        assert_eq!(chunk_reads(&p), 2, "a new stream's window is two chunks");
        while off < 3 * CHUNK {
            assert_eq!(
                read(&ra, off, 16 << 10).await,
                want[off as usize..][..16 << 10]
            );
            off += 16 << 10;
        }
        settle().await;
        // Entering chunk 1 doubled the window to 1 MiB, entering chunk 2 to the configured
        // 2 MiB: the newest read ends at 3 chunks, so chunks 1 to 10 are fetched.
        assert_eq!(chunk_reads(&p), 10);
        // Chunk 0 was behind the stream when it started: only reads from chunk 1 on are hits.
        assert_eq!(ra.stats().0, 2 * CHUNK / (16 << 10));
    }

    #[tokio::test]
    async fn writes_trims_and_zeroes_drop_what_they_overlap() {
        let p = Probe::new(8 << 20, 0, 0).await;
        let ra = Readahead::new(Arc::clone(&p), 8 << 20, cfg(2 << 20));
        let mut off = stream_on(&ra).await; // chunks up to 512 KiB ahead, then more
        settle().await;
        let new = vec![0xabu8; 8192];
        ra.write(CHUNK + 4096, &new, false).await.unwrap();
        ra.write_zeroes(2 * CHUNK, 4096, false).await.unwrap();
        ra.discard(3 * CHUNK + 8192, 4096).await.unwrap();
        let mut want = p.mem.contents();
        assert_eq!(&want[CHUNK as usize + 4096..][..8192], &new[..]);
        while off < 4 * CHUNK {
            let got = read(&ra, off, 64 << 10).await;
            assert_eq!(got, want[off as usize..][..64 << 10], "at {off}");
            off += 64 << 10;
        }
        want.clear();
    }

    #[tokio::test]
    async fn a_chunk_fetched_while_a_write_is_in_flight_is_dropped_when_it_completes() {
        // The write is sent, the stream then fetches the chunk the write is about to change
        // (old bytes), the write completes: a read after its acknowledgement must see it.
        let p = Probe::new(8 << 20, 0, 0).await;
        let ra = Arc::new(Readahead::new(Arc::clone(&p), 8 << 20, cfg(CHUNK)));
        let end = run_of(&ra, CONFIRM - 1).await;
        p.hold_writes.store(true, Ordering::SeqCst);
        let new = vec![0x5au8; 4096];
        let w = tokio::spawn({
            let (ra, new) = (Arc::clone(&ra), new.clone());
            async move { ra.write(CHUNK, &new, false).await }
        });
        while p.held_writes.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // The stream is on: chunk 1 is fetched, old bytes.
        read(&ra, end, 16 << 10).await;
        settle().await;
        assert!(p.sizes().contains(&(CHUNK as usize)), "chunk 1 was fetched");
        p.wgate.notify_waiters();
        w.await.unwrap().unwrap();
        read(&ra, 64 << 10, 192 << 10).await;
        assert_eq!(read(&ra, CHUNK, 4096).await, new);
    }

    #[tokio::test]
    async fn a_failed_fetch_falls_back_to_the_backend() {
        let p = Probe::new(4 << 20, 0, CHUNK as usize).await;
        let ra = Readahead::new(Arc::clone(&p), 4 << 20, cfg(1 << 20));
        let want = p.mem.contents();
        let mut off = 0u64;
        while off < 3 << 20 {
            assert_eq!(
                read(&ra, off, 64 << 10).await,
                want[off as usize..][..64 << 10]
            );
            off += 64 << 10;
        }
        assert_eq!(ra.stats().0, 0, "no read is answered from a failed fetch");
    }

    #[tokio::test]
    async fn off_means_straight_through() {
        let p = Probe::new(4 << 20, 0, 0).await;
        let ra = Readahead::new(Arc::clone(&p), 4 << 20, cfg(0));
        for i in 0..16u64 {
            read(&ra, i * (64 << 10), 64 << 10).await;
        }
        assert!(p.sizes().iter().all(|&s| s == 64 << 10));
        assert_eq!(ra.chunks_held(), 0);
    }

    #[tokio::test]
    async fn quiesce_waits_for_fetches_and_stops_new_ones() {
        let p = Probe::new(8 << 20, CHUNK as usize, 0).await;
        let ra = Arc::new(Readahead::new(Arc::clone(&p), 8 << 20, cfg(CHUNK)));
        let end = stream_on(&ra).await;
        while p.gated.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let q = tokio::spawn({
            let ra = Arc::clone(&ra);
            async move { ra.quiesce().await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!q.is_finished(), "a fetch is still in flight");
        p.gate.notify_waiters();
        q.await.unwrap();
        let before = p.sizes().len();
        // Reads still work, straight through; no new fetch runs.
        read(&ra, end, 64 << 10).await;
        read(&ra, end + (64 << 10), 64 << 10).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(p.sizes()[before..].iter().all(|&s| s != CHUNK as usize));
    }
}
