//! Rebuilds this node runs: filling a replacement extent from a healthy copy on other nodes,
//! with no host in the loop (docs/volumes.md, "Replacing a lost copy").
//!
//! The controller names them in every heartbeat answer ([`Rebuilds::apply`]); the node guards
//! each range at once (`guard.rs`) and reports it guarded with its progress in the next
//! heartbeat ([`Rebuilds::progress`]). Once the controller says COPY, a task of the agent's
//! runtime reads the extent's data from the source nodes in [`REGION`] pieces, several in
//! flight, with the read tokens the controller signed for it, and writes each into the device
//! while holding its region, skipping the blocks hosts wrote. Its progress is made durable
//! (fdatasync) before it is reported, so the controller's checkpoint never runs ahead of the
//! device. The guarded ranges are kept in `--state-dir/rebuilds` and guarded again at start,
//! before the reactors serve anyone.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dasmesh_api::v1;
use dasmesh_client::{AlignedBuf, ConnectOptions, NodeSession};
use dasmesh_wire::{DeviceId, Token};
use futures_util::StreamExt;

use crate::backend::Store;
use crate::guard::{Guard, REGION};
use crate::Shared;

/// A rebuild's extent: device, first byte, length.
type Key = (u32, u64, u64);

/// The most rebuilds one heartbeat reports (the controller's bound).
pub const MAX_REPORTED: usize = 16;

/// How the copying goes.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Reads of [`REGION`] kept in flight to the sources.
    pub depth: usize,
    /// The most MiB/s it copies (0: as fast as it can).
    pub mib_s: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self { depth: 4, mib_s: 0 }
    }
}

/// A rebuild as `/metrics` shows it.
#[derive(Clone, Debug)]
pub struct Shown {
    /// The volume.
    pub volume: u64,
    /// Its device and range.
    pub device: u32,
    /// First byte.
    pub offset: u64,
    /// Length.
    pub length: u64,
    /// Bytes from the range's start copied and durable.
    pub done: Arc<AtomicU64>,
}

struct Task {
    guard: Arc<Guard>,
    /// The volume (for `/metrics`).
    volume: u64,
    /// Bytes from the extent's start copied and durable.
    done: Arc<AtomicU64>,
    /// Set when it is no longer listed: its task ends.
    stop: AtomicBool,
    /// The controller says COPY.
    copying: AtomicBool,
    /// Moves on whenever copying stops or starts: a pass of another generation ends.
    generation: AtomicU64,
    /// The controller's attempt number its tracking started with.
    attempt: std::sync::atomic::AtomicU32,
    /// Where to read from (in COPY).
    sources: Mutex<Vec<v1::RebuildSource>>,
}

/// The rebuilds of this node.
pub struct Rebuilds {
    shared: Arc<Shared>,
    tasks: BTreeMap<Key, Arc<Task>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    file: Option<PathBuf>,
    tuning: Tuning,
    /// The last rebuild reported when not all fitted one heartbeat.
    cursor: Key,
    /// Set when a range was guarded or a copy finished since the last heartbeat.
    news: Arc<AtomicBool>,
}

fn file_in(state_dir: Option<&PathBuf>) -> Option<PathBuf> {
    state_dir.map(|d| d.join("rebuilds"))
}

/// Guards the ranges a previous run of this node was rebuilding (from `--state-dir`), before
/// any host can write to them.
pub fn restore_guards(shared: &Shared, state_dir: Option<&PathBuf>) {
    let Some(text) = file_in(state_dir).and_then(|p| std::fs::read_to_string(p).ok()) else {
        return;
    };
    for line in text.lines() {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [dev, off, len] = f[..] {
            if let Some(b) = shared.backends.get(dev as usize) {
                shared
                    .guards
                    .add(Arc::new(Guard::new(dev as usize, off, len, b.block_size)));
                tracing::info!(
                    device = dev,
                    offset = off,
                    length = len,
                    "rebuild guarded again after a restart"
                );
            }
        }
    }
}

impl Rebuilds {
    /// No rebuilds yet. `tls`: this node's client side for sources that speak TLS.
    pub fn new(
        shared: Arc<Shared>,
        tls: Option<Arc<rustls::ClientConfig>>,
        state_dir: Option<&PathBuf>,
        tuning: Tuning,
    ) -> Self {
        Self {
            shared,
            tasks: BTreeMap::new(),
            tls,
            file: file_in(state_dir),
            tuning,
            cursor: (0, 0, 0),
            news: Arc::default(),
        }
    }

    /// Takes the rebuilds of a heartbeat answer: new ones are guarded, those in COPY copy,
    /// those no longer listed stop (and their ranges are no longer guarded).
    pub fn apply(&mut self, list: &[v1::RebuildTask]) {
        let keys: Vec<Key> = list
            .iter()
            .map(|t| (t.device_id, t.offset, t.length))
            .collect();
        let before: Vec<Key> = self.tasks.keys().copied().collect();
        self.tasks.retain(|k, t| {
            let keep = keys.contains(k);
            if !keep {
                t.stop.store(true, Ordering::Release);
            }
            keep
        });
        for &(dev, off, len) in before.iter().filter(|k| !keys.contains(k)) {
            self.shared.guards.remove(dev as usize, off, len);
            tracing::info!(device = dev, offset = off, length = len, "rebuild over");
        }
        for t in list {
            let key = (t.device_id, t.offset, t.length);
            let Some(b) = self.shared.backends.get(t.device_id as usize) else {
                tracing::warn!(
                    device = t.device_id,
                    "rebuild of a device this node does not have"
                );
                continue;
            };
            if t.length == 0 || t.offset.checked_add(t.length).is_none_or(|e| e > b.size) {
                tracing::warn!(
                    device = t.device_id,
                    offset = t.offset,
                    length = t.length,
                    "rebuild of a range outside the device"
                );
                continue;
            }
            let mut fresh = false;
            let task = self.tasks.entry(key).or_insert_with(|| {
                fresh = true;
                let guard = self
                    .shared
                    .guards
                    .get(t.device_id as usize, t.offset, t.length)
                    .unwrap_or_else(|| {
                        let g = Arc::new(Guard::new(
                            t.device_id as usize,
                            t.offset,
                            t.length,
                            b.block_size,
                        ));
                        self.shared.guards.add(Arc::clone(&g));
                        g
                    });
                tracing::info!(
                    volume = t.volume_id,
                    device = t.device_id,
                    offset = t.offset,
                    length = t.length,
                    "rebuild: range guarded"
                );
                Arc::new(Task {
                    guard,
                    volume: t.volume_id,
                    done: Arc::new(AtomicU64::new(t.done_bytes)),
                    stop: AtomicBool::new(false),
                    copying: AtomicBool::new(false),
                    generation: AtomicU64::new(0),
                    attempt: std::sync::atomic::AtomicU32::new(t.attempt),
                    sources: Mutex::new(Vec::new()),
                })
            });
            *task.sources.lock().unwrap_or_else(|p| p.into_inner()) = t.sources.clone();
            if task.attempt.swap(t.attempt, Ordering::AcqRel) != t.attempt {
                // A host write failed on it: hosts wrote to the other copies alone since, so
                // what it marked is no guide any more; start over from the checkpoint.
                task.guard.forget_written();
                task.generation.fetch_add(1, Ordering::AcqRel);
                task.copying.store(false, Ordering::Release);
                task.done.store(t.done_bytes, Ordering::Release);
            }
            let copy = t.phase == v1::RebuildPhase::Copy as i32;
            // The copying task and this run on the agent's one thread: no pass is between two
            // of its steps while this changes them.
            if task.copying.swap(copy, Ordering::AcqRel) != copy {
                task.generation.fetch_add(1, Ordering::AcqRel);
                if copy {
                    // From the controller's checkpoint (a restart, or a step back after a
                    // failure) unless this node is further along.
                    let from = t.done_bytes.max(task.done.load(Ordering::Acquire));
                    task.done.store(from.min(t.length), Ordering::Release);
                } else {
                    // Back to an earlier phase (a host write failed on it): its checkpoint too.
                    task.done.store(t.done_bytes, Ordering::Release);
                }
            }
            if fresh {
                self.news.store(true, Ordering::Release);
                let (shared, task, tls, tuning, news) = (
                    Arc::clone(&self.shared),
                    Arc::clone(task),
                    self.tls.clone(),
                    self.tuning,
                    Arc::clone(&self.news),
                );
                let volume = t.volume_id;
                tokio::spawn(async move { run(&shared, &task, tls, tuning, volume, &news).await });
            }
        }
        if before != self.tasks.keys().copied().collect::<Vec<_>>() {
            self.save();
        }
        *self
            .shared
            .rebuilds
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = self
            .tasks
            .iter()
            .map(|(&(device, offset, length), t)| Shown {
                volume: t.volume,
                device,
                offset,
                length,
                done: Arc::clone(&t.done),
            })
            .collect();
    }

    fn save(&self) {
        let Some(p) = &self.file else { return };
        let text: String = self
            .tasks
            .keys()
            .map(|(d, o, l)| format!("{d} {o} {l}\n"))
            .collect();
        if let Err(e) = std::fs::write(p, text) {
            tracing::warn!(path = %p.display(), "keeping the guarded ranges: {e}");
        }
    }

    /// Whether there is news the controller waits for (a range guarded, a copy finished): then
    /// the next heartbeat goes at once.
    pub fn news(&self) -> bool {
        self.news.swap(false, Ordering::AcqRel)
    }

    /// What the next heartbeat reports: at most [`MAX_REPORTED`] rebuilds, those after the
    /// last one reported first, so that with more every one gets its turn.
    pub fn progress(&mut self) -> Vec<v1::RebuildProgress> {
        let after = self.cursor;
        let mut keys: Vec<&Key> = self.tasks.keys().collect();
        keys.sort_by_key(|k| (**k <= after, **k));
        keys.truncate(MAX_REPORTED);
        if self.tasks.len() > MAX_REPORTED {
            self.cursor = keys.last().map_or(after, |k| **k);
        }
        keys.into_iter()
            .map(|k| (*k, &self.tasks[k]))
            .map(|((device_id, offset, length), t)| v1::RebuildProgress {
                device_id,
                offset,
                length,
                guarded: true,
                done_bytes: t.done.load(Ordering::Acquire),
                attempt: t.attempt.load(Ordering::Acquire),
            })
            .collect()
    }
}

/// One piece to copy: `[at, at + len)` of the extent, from `src`.
#[derive(Clone)]
struct Piece {
    at: u64,
    len: u64,
    src: usize,
    src_offset: u64,
}

/// The pieces of `[from, length)`: one per region and source piece.
fn pieces(sources: &[v1::RebuildSource], from: u64, length: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        let (lo, hi) = (s.at.max(from), (s.at + s.length).min(length));
        let mut at = lo;
        while at < hi {
            let end = ((at / REGION + 1) * REGION).min(hi);
            out.push(Piece {
                at,
                len: end - at,
                src: i,
                src_offset: s.offset + (at - s.at),
            });
            at = end;
        }
    }
    out.sort_by_key(|p| p.at);
    out
}

/// A rebuild's task: while the controller says COPY, copies the extent from its sources from
/// the checkpoint to the end; a source that fails is tried again (with the sources of the
/// latest heartbeat answer) a second later. Ends when the rebuild is no longer listed.
async fn run(
    shared: &Arc<Shared>,
    task: &Arc<Task>,
    tls: Option<Arc<rustls::ClientConfig>>,
    tuning: Tuning,
    volume: u64,
    news: &AtomicBool,
) {
    let g = Arc::clone(&task.guard);
    let mut reported = false;
    while !task.stop.load(Ordering::Acquire) {
        let from = task.done.load(Ordering::Acquire);
        if !task.copying.load(Ordering::Acquire) || from >= g.length {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let sources = task
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let covered: u64 = sources.iter().map(|s| s.length).sum();
        if sources.is_empty() || covered < g.length {
            // No healthy copy reachable yet: wait for an answer that names one.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if !reported {
            tracing::info!(
                volume,
                device = g.device,
                offset = g.start,
                length = g.length,
                from,
                "rebuild: copying"
            );
            reported = true;
        }
        let started = Instant::now();
        match copy_from(shared, task, &sources, from, tls.clone(), tuning).await {
            Ok(()) if task.done.load(Ordering::Acquire) >= g.length => {
                news.store(true, Ordering::Release);
                let secs = started.elapsed().as_secs_f64();
                let mib = (g.length - from) as f64 / f64::from(1 << 20);
                tracing::info!(
                    volume,
                    device = g.device,
                    offset = g.start,
                    length = g.length,
                    host_blocks = g.written_blocks(),
                    "rebuild: copied {mib:.0} MiB in {secs:.1} s ({:.0} MiB/s)",
                    mib / secs.max(1e-9)
                );
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(
                    volume,
                    device = g.device,
                    offset = g.start,
                    "rebuild: {e}; trying again"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One pass from `from` with these sources; returns when done, stopped, or on the first error.
async fn copy_from(
    shared: &Arc<Shared>,
    task: &Arc<Task>,
    sources: &[v1::RebuildSource],
    from: u64,
    tls: Option<Arc<rustls::ClientConfig>>,
    tuning: Tuning,
) -> Result<(), String> {
    let g = Arc::clone(&task.guard);
    let generation = task.generation.load(Ordering::Acquire);
    let current = || {
        !task.stop.load(Ordering::Acquire) && task.generation.load(Ordering::Acquire) == generation
    };
    let mut sessions = Vec::with_capacity(sources.len());
    for s in sources {
        let token = Token::from_text(&s.token).map_err(|e| format!("source token: {e}"))?;
        let opts = ConnectOptions {
            queue_depth: tuning.depth.max(1) * 2,
            request_timeout: Some(Duration::from_secs(30)),
            tls: if s.node_tls { tls.clone() } else { None },
            ..Default::default()
        };
        let sess = NodeSession::connect(&s.node_address, DeviceId(s.device_id), &token, 1, &opts)
            .await
            .map_err(|e| format!("source {}: {e}", s.node_address))?;
        sessions.push(Arc::new(sess));
    }
    let todo = pieces(sources, from, g.length);
    // Reads run ahead of the writes, and writes of different regions overlap: `depth` of each
    // in flight, completed in order, so the progress is always a prefix.
    let depth = tuning.depth.max(1);
    // Buffers of a whole region go round (a fresh one costs page faults and zeroing).
    let spare: Mutex<Vec<AlignedBuf>> = Mutex::new(Vec::new());
    let take = |len: u64| {
        let reuse = (len == REGION)
            .then(|| spare.lock().unwrap_or_else(|p| p.into_inner()).pop())
            .flatten();
        reuse.unwrap_or_else(|| AlignedBuf::new(len as usize))
    };
    let writes = futures_util::stream::iter(todo.into_iter().map(|p| {
        let sess = Arc::clone(&sessions[p.src]);
        let buf = take(p.len);
        async move {
            let buf = sess.read_into(p.src_offset, buf).await;
            (p, buf)
        }
    }))
    .buffered(depth)
    .map(|(p, buf)| {
        let live = current();
        let buf = buf.map_err(|e| format!("read from {}: {e}", sources[p.src].node_address));
        let (shared, g) = (Arc::clone(shared), Arc::clone(&g));
        async move {
            if !live {
                return Ok(None);
            }
            let buf = write_piece(&shared, &g, p.at, buf?).await?;
            Ok::<_, String>(Some((p, buf)))
        }
    })
    .buffered(depth);
    futures_util::pin_mut!(writes);
    // The checkpoint moves once what it covers is durable: a sync runs beside the copying (it
    // can take long on a file whose blocks are being allocated), and the next starts after it.
    let mut syncing: Option<(u64, tokio::task::JoinHandle<std::io::Result<()>>)> = None;
    let mut last_sync = Instant::now();
    let started = Instant::now();
    let mut copied = 0u64;
    while let Some(r) = writes.next().await {
        let Some((p, buf)) = r? else {
            return Ok(());
        };
        if buf.len() as u64 == REGION {
            spare.lock().unwrap_or_else(|p| p.into_inner()).push(buf);
        }
        if !current() {
            return Ok(());
        }
        let written = p.at + p.len;
        copied += p.len;
        if tuning.mib_s > 0 {
            // Paced to the rate: ahead of it, wait.
            let due = Duration::from_secs_f64(copied as f64 / (tuning.mib_s as f64 * 1048576.0));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if syncing.as_ref().is_some_and(|(_, h)| h.is_finished()) || written == g.length {
            if let Some((mark, h)) = syncing.take() {
                h.await
                    .map_err(|e| format!("sync: {e}"))?
                    .map_err(|e| format!("sync: {e}"))?;
                if !current() {
                    return Ok(());
                }
                task.done.store(mark, Ordering::Release);
            }
        }
        if written == g.length {
            sync(shared, g.device).await?;
            if current() {
                task.done.store(written, Ordering::Release);
            }
            return Ok(());
        }
        if syncing.is_none() && last_sync.elapsed() >= Duration::from_millis(500) {
            let shared = Arc::clone(shared);
            let device = g.device;
            syncing = Some((
                written,
                tokio::task::spawn_blocking(move || shared.backends[device].sync()),
            ));
            last_sync = Instant::now();
        }
    }
    Ok(())
}

/// Writes `buf` at `at` (from the guard's start) while holding its region, skipping the blocks
/// hosts wrote.
async fn write_piece(
    shared: &Arc<Shared>,
    g: &Arc<Guard>,
    at: u64,
    buf: AlignedBuf,
) -> Result<AlignedBuf, String> {
    let r = (at / REGION) as usize;
    let mut spins = 0u32;
    while !g.hold(r) {
        // A host write is in flight there: it goes first.
        spins += 1;
        if spins < 64 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Let go of the region however this ends (the future dropped midway included).
    struct Held<'a>(&'a Guard, usize);
    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.0.release(self.1);
        }
    }
    let _held = Held(g, r);
    let runs = g.unwritten(at, at + buf.len() as u64);
    let (shared2, g2) = (Arc::clone(shared), Arc::clone(g));
    let res = tokio::task::spawn_blocking(move || {
        let b = &shared2.backends[g2.device];
        for (s, e) in runs {
            let data = &buf.as_slice()[(s - at) as usize..(e - at) as usize];
            let dev_at = g2.start + s;
            match &b.store {
                Store::File { file, .. } => file
                    .write_all_at(data, dev_at)
                    .map_err(|e| format!("write at {dev_at}: {e}"))?,
                Store::Memory(m) => m.write(dev_at, data),
            }
        }
        Ok::<AlignedBuf, String>(buf)
    })
    .await;
    res.map_err(|e| format!("writer: {e}"))?
}

async fn sync(shared: &Arc<Shared>, device: usize) -> Result<(), String> {
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || shared.backends[device].sync())
        .await
        .map_err(|e| format!("sync: {e}"))?
        .map_err(|e| format!("sync: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(at: u64, offset: u64, length: u64) -> v1::RebuildSource {
        v1::RebuildSource {
            at,
            offset,
            length,
            ..Default::default()
        }
    }

    #[test]
    fn pieces_follow_regions_and_sources() {
        // Two source pieces, the seam inside the second region.
        let s = [
            src(0, 1 << 30, REGION + 4096),
            src(REGION + 4096, 0, 2 * REGION),
        ];
        let len = 3 * REGION + 4096;
        let p = pieces(&s, 0, len);
        let got: Vec<(u64, u64, usize, u64)> = p
            .iter()
            .map(|p| (p.at, p.len, p.src, p.src_offset))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, REGION, 0, 1 << 30),
                (REGION, 4096, 0, (1 << 30) + REGION),
                (REGION + 4096, REGION - 4096, 1, 0),
                (2 * REGION, REGION, 1, REGION - 4096),
                (3 * REGION, 4096, 1, 2 * REGION - 4096),
            ]
        );
        // From a checkpoint.
        let p = pieces(&s, 2 * REGION, len);
        assert_eq!(p.first().map(|p| (p.at, p.src)), Some((2 * REGION, 1)));
        assert_eq!(p.iter().map(|p| p.len).sum::<u64>(), REGION + 4096);
    }
}
