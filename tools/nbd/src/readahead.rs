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
//!
//! Threads: the gateway serves its connections on several threads, and every read passes
//! through here. While no stream is followed and no chunk is held (random I/O), a read takes no
//! lock shared by all of them: the list of recent runs is split in [`SHARDS`] by position, and a
//! read locks only the shards of where it starts and where it ends. Reads that continue a
//! stream, reads while chunks are held, and writes that may overlap held chunks take the one lock
//! over the streams and chunks.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    chunks: BTreeMap<u64, Arc<Slot>>,
    tick: u64,
}

/// One shard of the recent runs: the runs whose end falls in it, and reads counted as misses
/// while its lock was held anyway.
#[derive(Default)]
struct Recent {
    runs: VecDeque<Run>,
    misses: u64,
}

/// A [`Backend`] with sequential readahead (see the module documentation).
pub struct Readahead<B> {
    inner: Arc<B>,
    cfg: ReadaheadConfig,
    size: u64,
    state: Mutex<State>,
    /// Where recent runs of reads of no stream ended, by [`shard`] of the position.
    recent: Box<[Mutex<Recent>]>,
    /// `state`'s chunk count and each stream's next offset (`u64::MAX`: none), written under
    /// its lock, read without it: a read that continues no stream while no chunk is held
    /// needs nothing else.
    held: AtomicUsize,
    nexts: Box<[AtomicU64]>,
    /// One permit per fetch in flight at most; all of them taken means none is in flight.
    fetches: Arc<Semaphore>,
    max_fetches: u32,
    /// Reads answered from fetched chunks, and reads that went to the backend (besides those
    /// counted in `recent`).
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Ends of recent reads of no stream remembered to spot the start of a stream.
const RECENT: usize = 64;
/// Shards of that list (a power of two); each remembers `RECENT / SHARDS` ends.
pub const SHARDS: usize = 16;

/// The shard of the recent runs that remembers a run ending at `pos`.
fn shard(pos: u64) -> usize {
    // Positions are multiples of the block size: mix the bits above it.
    ((pos >> 9).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SHARDS.ilog2())) as usize
}

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
            recent: (0..SHARDS).map(|_| Mutex::default()).collect(),
            held: AtomicUsize::new(0),
            nexts: (0..cfg.streams).map(|_| AtomicU64::new(u64::MAX)).collect(),
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
        let sharded: u64 = self.recent.iter().map(|r| lock(r).misses).sum();
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed) + sharded,
        )
    }

    /// Chunks held (fetched or fetching).
    pub fn chunks_held(&self) -> usize {
        self.lock().chunks.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Publishes what reads check without the lock: the chunk count and the streams' next
    /// offsets. Called under the lock after every change to them.
    fn publish(&self, st: &State) {
        self.held.store(st.chunks.len(), Ordering::SeqCst);
        for (i, n) in self.nexts.iter().enumerate() {
            n.store(
                st.streams.get(i).map_or(u64::MAX, |s| s.next),
                Ordering::SeqCst,
            );
        }
    }

    /// Notes a read of `range` that continues no stream in the recent runs: takes the run
    /// ending where it starts, if any, and returns how many reads in a row it makes. Below
    /// [`CONFIRM`] the run, now ending where this read ends, is remembered; at [`CONFIRM`] it
    /// is not (it becomes a stream). With `miss`, the read is counted as a miss.
    fn note_run(&self, range: &Range<u64>, miss: bool) -> u32 {
        let reads = {
            let mut from = lock(&self.recent[shard(range.start)]);
            from.misses += u64::from(miss);
            let at = from.runs.iter().position(|r| r.end == range.start);
            at.and_then(|i| from.runs.remove(i))
                .map_or(1, |r| r.reads + 1)
        };
        if reads < CONFIRM {
            let mut to = lock(&self.recent[shard(range.end)]);
            if to.runs.len() >= RECENT / SHARDS {
                to.runs.pop_front();
            }
            to.runs.push_back(Run {
                end: range.end,
                reads,
            });
        }
        reads
    }

    fn chunk_of(&self, offset: u64) -> u64 {
        offset - offset % self.cfg.chunk
    }

    /// Notes a read of `range` under the lock; returns the chunks that hold all of it (if they
    /// do) and the fetches to start. `run`: the reads in a row this one makes, if it was noted
    /// in the recent runs already.
    fn plan(&self, range: &Range<u64>, run: Option<u32>) -> (Option<Vec<Arc<Slot>>>, Vec<Fetch>) {
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
        } else if run.unwrap_or_else(|| self.note_run(range, false)) >= CONFIRM {
            // The CONFIRM-th read in a row: a new stream.
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
            // A read of no stream (yet), remembered (by `note_run`) with the run it continues,
            // if any, so that reads continuing it make a stream. Random reads only ever touch
            // that short list, never the streams.
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
        self.publish(&st);
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
        // No chunk held now: one added later was asked of the node after the write had
        // completed there (it is added before its fetch starts, and counted in `held` under
        // the lock), so it holds the new bytes.
        if self.cfg.window == 0 || len == 0 || self.held.load(Ordering::SeqCst) == 0 {
            return;
        }
        let end = offset.saturating_add(len);
        let mut st = self.lock();
        drop_range(&mut st.chunks, self.chunk_of(offset)..end);
        self.publish(&st);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update leaves what a lock guards consistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        let continues = self
            .nexts
            .iter()
            .any(|n| n.load(Ordering::SeqCst) == range.start);
        if !continues && self.held.load(Ordering::SeqCst) == 0 {
            // Continues no stream and no chunk could hold it (random reads): only the shards
            // of the recent runs, unless this read makes a run a stream.
            let reads = self.note_run(&range, true);
            if reads >= CONFIRM {
                let (_, fetches) = self.plan(&range, Some(reads));
                for f in fetches {
                    self.start(f);
                }
            }
            return self.inner.read(offset, len).await;
        }
        let (slots, fetches) = self.plan(&range, None);
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
mod tests;
