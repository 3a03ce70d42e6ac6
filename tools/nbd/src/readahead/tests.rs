//! Tests of the readahead: streams, random reads, coherence with writes, threads.

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

#[test]
fn random_reads_and_writes_pass_without_the_shared_lock() {
    // The lock over streams and chunks is held by someone else the whole time: random
    // reads and writes (no stream, no chunk held) still complete, with the right bytes.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let p = rt.block_on(Probe::new(8 << 20, 0, 0));
    let ra = Arc::new(Readahead::new(Arc::clone(&p), 8 << 20, cfg(1 << 20)));
    let want = p.mem.contents();
    let held = ra.lock();
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn({
        let ra = Arc::clone(&ra);
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                for i in 0..500u64 {
                    let off = (i * 7919 % 2000) * 4096;
                    let got = read(&ra, off, 4096).await;
                    assert_eq!(got, want[off as usize..][..4096]);
                }
                ra.write(4096, &[9u8; 4096], false).await.unwrap();
            });
            let _ = tx.send(());
        }
    });
    let done = rx.recv_timeout(std::time::Duration::from_secs(30));
    drop(held);
    worker.join().unwrap();
    assert!(done.is_ok(), "random I/O waited for the shared lock");
    assert_eq!(ra.stats(), (0, 500));
}
