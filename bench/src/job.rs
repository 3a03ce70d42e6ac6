//! One job: a thread driving one engine (a ring on a local device, or a connection to a node)
//! at the workload's queue depth, timing every completion into an HDR histogram.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng as _;

use crate::sys;
use crate::verify::{self, Check};
use crate::workload::{Kind, Picker, Workload};

/// What a benchmark target must do: keep requests in flight in numbered slots, each with a buffer.
pub trait Engine: Send {
    /// The slot's I/O buffer (block size bytes).
    fn buf(&mut self, slot: usize) -> &mut [u8];
    /// Queues a read or write of the slot's buffer at `offset`.
    fn queue(&mut self, slot: usize, kind: Kind, offset: u64) -> anyhow::Result<()>;
    /// Sends what is queued and waits for at least one completion; appends `(slot, result)`.
    fn complete(&mut self, out: &mut Vec<(usize, Result<(), String>)>) -> anyhow::Result<()>;
}

/// State shared by the jobs of one target run.
pub struct Shared {
    /// Ops completed so far (for the progress bar).
    pub done: AtomicU64,
    /// Set to stop early (an engine failed).
    pub abort: AtomicBool,
    /// Verify mode: blocks written and acknowledged.
    written: Vec<AtomicU64>,
    /// Verify mode: blocks with an op in flight (never two at once on one block).
    busy: Vec<AtomicU64>,
}

impl Shared {
    /// For a region of `blocks` blocks.
    pub fn new(blocks: u64, verify: bool) -> Self {
        let words = if verify {
            blocks.div_ceil(64) as usize
        } else {
            0
        };
        Self {
            done: AtomicU64::new(0),
            abort: AtomicBool::new(false),
            written: (0..words).map(|_| AtomicU64::new(0)).collect(),
            busy: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn bit(v: &[AtomicU64], b: u64) -> (&AtomicU64, u64) {
        (&v[(b / 64) as usize], 1 << (b % 64))
    }
}

/// What one job measured.
pub struct JobStats {
    /// Completion latency in nanoseconds (measured window only).
    pub hist: Histogram<u64>,
    /// Ops issued and completed in the measured window (the IOPS and latency figures).
    pub ops: u64,
    /// Ops completed in the measured window, whenever issued (the divisor of CPU per I/O).
    pub window_done: u64,
    /// Bytes moved in the measured window.
    pub bytes: u64,
    /// Ops completed per second of the measured window.
    pub timeline: Vec<u64>,
    /// Failed requests.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Verify: blocks read and found good.
    pub verified: u64,
    /// Verify: blocks read that were never written.
    pub unwritten: u64,
    /// Verify: blocks read that were wrong.
    pub mismatches: u64,
    /// The first mismatch.
    pub first_mismatch: Option<String>,
}

/// A histogram for latencies from 1 ns to 100 s at 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds")
}

struct InFlight {
    kind: Kind,
    offset: u64,
    start: Instant,
    check: bool,
}

/// Runs one job to the end of the workload's ramp + runtime.
pub fn run(
    engine: &mut dyn Engine,
    w: &Workload,
    region: (u64, u64),
    job: usize,
    shared: &Shared,
    t0: Instant,
) -> anyhow::Result<JobStats> {
    let mut picker = Picker::new(w, region.0, region.1, job, 0x5eed);
    let mut rng = rand::thread_rng();
    let measure_from = t0 + w.ramp;
    let end = measure_from + w.runtime;
    let interval =
        (w.rate_iops > 0).then(|| Duration::from_secs_f64(w.numjobs as f64 / w.rate_iops as f64));
    let mut next_issue = t0;
    let mut free: Vec<usize> = (0..w.iodepth).rev().collect();
    let mut inflight: Vec<Option<InFlight>> = (0..w.iodepth).map(|_| None).collect();
    let mut live = 0usize;
    let mut out = Vec::with_capacity(w.iodepth);
    let mut s = JobStats {
        hist: new_hist(),
        ops: 0,
        window_done: 0,
        bytes: 0,
        timeline: vec![0; w.runtime.as_secs().max(1) as usize + 1],
        errors: 0,
        first_error: None,
        verified: 0,
        unwritten: 0,
        mismatches: 0,
        first_mismatch: None,
    };
    loop {
        let now = Instant::now();
        let issuing = now < end && !shared.abort.load(Ordering::Relaxed);
        while let (true, Some(&slot)) = (issuing, free.last()) {
            let start = match interval {
                Some(iv) => {
                    if next_issue > now {
                        break;
                    }
                    let at = next_issue;
                    next_issue += iv;
                    at
                }
                None => now,
            };
            let (kind, offset) = pick(&mut picker, w, region, shared);
            let block = (offset - region.0) / w.bs;
            let mut check = false;
            if w.verify {
                if kind == Kind::Write {
                    verify::fill(engine.buf(slot), offset, rng.gen());
                } else {
                    let (word, bit) = Shared::bit(&shared.written, block);
                    check = word.load(Ordering::Acquire) & bit != 0;
                }
            }
            engine.queue(slot, kind, offset)?;
            free.pop();
            inflight[slot] = Some(InFlight {
                kind,
                offset,
                start,
                check,
            });
            live += 1;
        }
        if live == 0 {
            if !issuing {
                break;
            }
            // Paced and ahead of schedule: wait for the next issue time.
            std::thread::sleep(
                next_issue
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(10)),
            );
            continue;
        }
        engine.complete(&mut out)?;
        let now = Instant::now();
        for (slot, result) in out.drain(..) {
            let f = inflight[slot].take().expect("completion for an idle slot");
            live -= 1;
            free.push(slot);
            shared.done.fetch_add(1, Ordering::Relaxed);
            let block = (f.offset - region.0) / w.bs;
            if w.verify {
                let (word, bit) = Shared::bit(&shared.busy, block);
                word.fetch_and(!bit, Ordering::AcqRel);
            }
            if let Err(e) = result {
                s.errors += 1;
                s.first_error
                    .get_or_insert(format!("{:?} at {}: {e}", f.kind, f.offset));
                continue;
            }
            if w.verify {
                if f.kind == Kind::Write {
                    let (word, bit) = Shared::bit(&shared.written, block);
                    word.fetch_or(bit, Ordering::AcqRel);
                } else {
                    match verify::check(engine.buf(slot), f.offset) {
                        Check::Good => s.verified += 1,
                        Check::Unwritten if !f.check => s.unwritten += 1,
                        bad => {
                            s.mismatches += 1;
                            s.first_mismatch
                                .get_or_insert(format!("block at {}: {bad:?}", f.offset));
                        }
                    }
                }
            }
            let in_window = now >= measure_from && now <= end;
            s.window_done += u64::from(in_window);
            if f.start >= measure_from && in_window {
                let ns = now.duration_since(f.start).as_nanos() as u64;
                s.hist.record(ns.max(1)).expect("latency within bounds");
                s.ops += 1;
                s.bytes += w.bs;
                let sec = now.duration_since(measure_from).as_secs() as usize;
                if let Some(t) = s.timeline.get_mut(sec) {
                    *t += 1;
                }
            }
        }
    }
    Ok(s)
}

/// Picks the next op; in verify mode never one on a block that already has an op in flight.
fn pick(picker: &mut Picker, w: &Workload, region: (u64, u64), shared: &Shared) -> (Kind, u64) {
    loop {
        let (kind, offset) = picker.next();
        if !w.verify {
            return (kind, offset);
        }
        let (word, bit) = Shared::bit(&shared.busy, (offset - region.0) / w.bs);
        if word.fetch_or(bit, Ordering::AcqRel) & bit == 0 {
            return (kind, offset);
        }
    }
}

/// CPU time spent over the measured window, sampled at its edges by the thread that waits for
/// the jobs (asleep in between, so it adds nothing of its own).
pub struct WindowCpu {
    /// This process: every thread (jobs, tokio runtimes, the progress bar), user + system.
    pub own: Duration,
    /// `--cpu-pid`'s, in clock ticks.
    pub pid_ticks: Option<u64>,
}

/// Runs `numjobs` jobs on threads, one engine each, and gathers their stats and the CPU time
/// spent over the measured window (None when the run stopped before the window ended).
pub fn run_jobs(
    engines: Vec<Box<dyn Engine>>,
    w: &Workload,
    region: (u64, u64),
    shared: &Arc<Shared>,
    cpu_pid: Option<u32>,
) -> anyhow::Result<(Vec<JobStats>, Option<WindowCpu>)> {
    // One clock for every job and for the CPU samples: the window is the same for all.
    let t0 = Instant::now();
    let handles: Vec<_> = engines
        .into_iter()
        .enumerate()
        .map(|(job, mut e)| {
            let (w, shared) = (w.clone(), Arc::clone(shared));
            std::thread::Builder::new()
                .name(format!("job-{job}"))
                .spawn(move || {
                    let r = run(e.as_mut(), &w, region, job, &shared, t0);
                    if r.is_err() {
                        shared.abort.store(true, Ordering::Relaxed);
                    }
                    r
                })
        })
        .collect::<Result<_, _>>()?;
    let sample = || -> anyhow::Result<(Duration, Option<u64>)> {
        Ok((sys::self_cpu(), cpu_pid.map(sys::cpu_ticks).transpose()?))
    };
    let measure_from = t0 + w.ramp;
    let window = (|| -> anyhow::Result<Option<WindowCpu>> {
        if !sleep_until(measure_from, shared) {
            return Ok(None);
        }
        let a = sample()?;
        if !sleep_until(measure_from + w.runtime, shared) {
            return Ok(None);
        }
        let b = sample()?;
        Ok(Some(WindowCpu {
            own: b.0.saturating_sub(a.0),
            pid_ticks: b.1.zip(a.1).map(|(b, a)| b.saturating_sub(a)),
        }))
    })();
    if window.is_err() {
        shared.abort.store(true, Ordering::Relaxed);
    }
    let stats = handles
        .into_iter()
        .map(|h| h.join().map_err(|_| anyhow::anyhow!("a job panicked"))?)
        .collect::<anyhow::Result<_>>()?;
    Ok((stats, window?))
}

/// Sleeps until `at`; false if the run was aborted first.
fn sleep_until(at: Instant, shared: &Shared) -> bool {
    loop {
        if shared.abort.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= at {
            return true;
        }
        // Short naps: an aborted run is noticed within 50 ms.
        std::thread::sleep((at - now).min(Duration::from_millis(50)));
    }
}
