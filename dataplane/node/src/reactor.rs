//! A reactor: one thread, one io_uring, its own buffer arena and connections.
//!
//! The loop submits what the connections queued, reaps completions, and lets each touched
//! connection make progress (`pump`). Payloads go socket -> arena slot -> device and
//! device -> arena slot -> socket; the arena is registered with the ring (READ_FIXED /
//! WRITE_FIXED) and the backends are fixed files. Every SQE's memory (arena slot, receive
//! buffer, sendmsg state) is owned by a request or connection that outlives the SQE.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dasmesh_wire::{
    check_reply, check_request, negotiate_version, FrameHeader, Hello, HelloReply, Op, Proof,
    ReplyHeader, RequestHeader, RequestLimits, SearchBody, Searcher, Status, Token, HELLO_LEN,
    REPLY_FLAG_TRUNCATED, REQUEST_HEADER_LEN,
};
use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;
use socket2::Socket;

use crate::arena::{Arena, NUM_CLASSES, ZERO_LEN};
use crate::backend::Store;
use crate::barrier::{LaneWriter, WriteSeq};
use crate::budget::{self, SWEEP_EVERY_MS};
use crate::config::PollMode;
use crate::conn::{Conn, Payload, Phase, Reply, Req, SendState, Session, Stage, RBUF_LEN};
use crate::offload::{Call, Offload};
use crate::session::{self, Lendable};
use crate::{sys, Listeners, Shared};

mod bounds;
mod offloaded;

const UD_ACCEPT: u64 = 1 << 56;
const UD_RECV: u64 = 2 << 56;
const UD_SEND: u64 = 3 << 56;
const UD_IO: u64 = 4 << 56;
const UD_CANCEL: u64 = 5 << 56;
const UD_WAKE: u64 = 6 << 56;
const UD_KIND: u64 = 0xff << 56;
/// Replies gathered into one sendmsg at most.
const SEND_BATCH: usize = 256;
/// WRITE payloads up to this size are received with their headers into the staging buffer and
/// copied into their slot; larger ones go from the socket straight into the slot.
const COPY_MAX: usize = 16 << 10;
/// Bytes read per step of a SEARCH.
const SEARCH_CHUNK: u64 = 1 << 20;
/// How long a blocked reactor sleeps before it looks at the shutdown flag again.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How often a reactor publishes its `/metrics` counts.
const STATS_EVERY_MS: u64 = 100;
/// How often a reactor hands its scheduler counts over (`qos.rs`).
const QOS_FLUSH_MS: u64 = 2;
/// A throttled request due sooner than this is waited for spinning rather than sleeping.
const QOS_SPIN: Duration = Duration::from_micros(200);
/// Connections closed after which the reactor hands freed heap memory back to the system.
const TRIM_AFTER_CLOSES: usize = 64;
/// io_uring_enter flag asking the kernel to run deferred work and post completions.
const ENTER_GETEVENTS: u32 = 1;

/// A backend as the ring sees it.
#[derive(Clone, Copy)]
enum FileRef {
    Fixed(u32),
    Raw(RawFd),
}

/// Builds an SQE on a backend file, fixed or not.
macro_rules! on_file {
    ($f:expr, |$fd:ident| $body:expr) => {
        match $f {
            FileRef::Fixed(i) => {
                let $fd = types::Fixed(i);
                $body
            }
            FileRef::Raw(r) => {
                let $fd = types::Fd(r);
                $body
            }
        }
    };
}

/// Builds the ring with the best setup flags this kernel accepts.
fn build_ring(entries: u32) -> std::io::Result<(IoUring, &'static str)> {
    if let Ok(r) = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(entries * 4)
        .build(entries)
    {
        return Ok((r, "single-issuer+defer-taskrun"));
    }
    if let Ok(r) = IoUring::builder()
        .setup_coop_taskrun()
        .setup_cqsize(entries * 4)
        .build(entries)
    {
        return Ok((r, "coop-taskrun"));
    }
    Ok((IoUring::new(entries)?, "plain"))
}

/// A listening socket and whether an accept is armed on it.
struct Listener {
    sock: Socket,
    tcp: bool,
    armed: bool,
    /// Its accept was cancelled for good: the reactor is about to exit.
    cancelled: bool,
}

/// One reactor's state.
pub struct Reactor {
    // Declared first so it is dropped first: the kernel lets go of the arena before it is unmapped.
    ring: IoUring,
    id: usize,
    shared: Arc<Shared>,
    arena: Arena,
    fixed_bufs: bool,
    files: Vec<Option<FileRef>>,
    /// The TCP listener first, then the same-host one if any.
    listeners: Vec<Listener>,
    conns: Slab<Conn>,
    reqs: Slab<Req>,
    dirty: Vec<usize>,
    /// Connections waiting for a slot, by the smallest size class their request fits.
    stalled: [Vec<usize>; NUM_CLASSES],
    cqes: Vec<(u64, i32)>,
    now_ms: u64,
    stopping: Option<Instant>,
    /// Numbers this reactor's modifying ops in its shared write lane.
    writes: LaneWriter,
    /// Connections whose handshake reply waits for the write barrier.
    held: Vec<usize>,
    /// Modifying requests waiting for a rebuild to let go of their region (`guard.rs`).
    parked: Vec<usize>,
    /// Requests waiting for the start time their lease's terms give them (`qos.rs`), soonest
    /// first.
    throttled: BinaryHeap<Reverse<(u64, usize)>>,
    /// When counts were last handed to the scheduler.
    last_qos_flush: u64,
    /// What this reactor counted for `/metrics`; none without `--metrics`.
    stats: Option<crate::metrics::ReactorStats>,
    /// The loop's clock for request latencies (us since `born`), read once per turn while
    /// `stats` is kept.
    now_us: u64,
    born: Instant,
    /// When `stats` was last published.
    last_stats_ms: u64,
    /// Time spent waiting for work, ns (while `stats` is kept).
    idle_ns: u64,
    /// The helper thread for blocking device calls.
    offload: Offload,
    /// Connections freed since the heap was last trimmed.
    closed_since_trim: usize,
    /// When it was last trimmed.
    last_trim_ms: u64,
}

impl Reactor {
    /// Sets up the ring, registers the arena and the backend files.
    pub fn new(id: usize, shared: Arc<Shared>, listeners: Listeners) -> std::io::Result<Self> {
        let (ring, setup) = build_ring(1024)?;
        let mut arena = Arena::new()?;
        let iovecs = arena.iovecs();
        // SAFETY: the iovecs describe the arena's mappings, which live in `arena` as long as the
        // ring (the ring is dropped first, see the field order).
        let fixed_bufs = match unsafe { ring.submitter().register_buffers(&iovecs) } {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    reactor = id,
                    "cannot register buffers ({e}); using plain reads and writes"
                );
                false
            }
        };
        let raw: Vec<RawFd> = shared
            .backends
            .iter()
            .map(|b| match &b.store {
                Store::File { file, .. } => file.as_raw_fd(),
                Store::Memory(_) => -1,
            })
            .collect();
        let fixed_files = ring.submitter().register_files(&raw).is_ok();
        let files = raw
            .iter()
            .enumerate()
            .map(|(i, fd)| {
                (*fd >= 0).then_some(if fixed_files {
                    FileRef::Fixed(i as u32)
                } else {
                    FileRef::Raw(*fd)
                })
            })
            .collect();
        tracing::info!(
            reactor = id,
            setup,
            fixed_bufs,
            fixed_files,
            "reactor ready"
        );
        let writes = shared.writes.writer(id);
        let stats = shared
            .metrics
            .as_ref()
            .map(|_| crate::metrics::ReactorStats {
                devices: vec![Default::default(); shared.backends.len()],
                busy_ns: 0,
                leases: Default::default(),
            });
        let offload = Offload::start(id, Arc::clone(&shared))?;
        Ok(Self {
            ring,
            id,
            shared,
            arena,
            fixed_bufs,
            files,
            listeners: listeners
                .tcp
                .map(|l| Listener {
                    sock: l.into(),
                    tcp: true,
                    armed: false,
                    cancelled: false,
                })
                .into_iter()
                .chain(listeners.local.map(|l| Listener {
                    sock: l.into(),
                    tcp: false,
                    armed: false,
                    cancelled: false,
                }))
                .collect(),
            conns: Slab::new(),
            reqs: Slab::new(),
            dirty: Vec::new(),
            stalled: Default::default(),
            cqes: Vec::with_capacity(1024),
            now_ms: sys::now_ms(),
            stopping: None,
            writes,
            held: Vec::new(),
            parked: Vec::new(),
            throttled: BinaryHeap::new(),
            last_qos_flush: 0,
            stats,
            idle_ns: 0,
            now_us: 0,
            born: Instant::now(),
            last_stats_ms: 0,
            offload,
            closed_since_trim: 0,
            last_trim_ms: 0,
        })
    }

    /// Runs until shutdown completes (or the grace period runs out).
    pub fn run(mut self) -> std::io::Result<()> {
        for i in 0..self.listeners.len() {
            self.arm_accept(i);
        }
        self.arm_wake();
        let mut last_work = Instant::now();
        let mut last_usage_flush = self.now_ms;
        let mut last_sweep = self.now_ms;
        loop {
            self.now_ms = sys::now_ms();
            if self.stats.is_some() {
                self.now_us = self.born.elapsed().as_micros() as u64;
                if self.now_ms >= self.last_stats_ms + STATS_EVERY_MS {
                    self.publish_stats();
                }
            }
            if self.now_ms >= self.last_qos_flush + QOS_FLUSH_MS {
                self.flush_qos();
            }
            if self.now_ms >= last_usage_flush + 200 {
                self.flush_usage();
                last_usage_flush = self.now_ms;
            }
            if self.now_ms >= last_sweep + SWEEP_EVERY_MS {
                self.sweep_timeouts();
                last_sweep = self.now_ms;
            }
            if self.stopping.is_none() && self.shared.shutdown.load(Ordering::Acquire) {
                self.begin_shutdown();
            }
            if let Some(deadline) = self.stopping {
                // Accepting goes on while sessions drain, so that newcomers are refused with
                // ShuttingDown rather than left waiting; it stops once no session is left (not
                // once no connection is: a stream of refused newcomers must not keep it going).
                if self.conns.iter().all(|(_, c)| c.phase != Phase::Serving) {
                    self.stop_accepting();
                }
                if self.conns.is_empty() && !self.listeners.iter().any(|l| l.armed) {
                    break;
                }
                if Instant::now() > deadline {
                    tracing::warn!(
                        reactor = self.id,
                        conns = self.conns.len(),
                        "shutdown grace expired; closing with work in flight"
                    );
                    // The kernel may still touch connection buffers: leak them rather than free.
                    std::mem::forget(std::mem::take(&mut self.conns));
                    return Ok(());
                }
            }
            // A held handshake waits on other reactors' completions, which do not wake this
            // ring: poll rather than sleep until it is released.
            // A throttled request sleeps until its start time, unless that is too close to sleep.
            let until_start = self.throttled.peek().map(|Reverse((at, _))| {
                Duration::from_nanos(at.saturating_sub(self.shared.qos.now_ns()))
            });
            let spin = !self.held.is_empty()
                || !self.parked.is_empty()
                || until_start.is_some_and(|d| d < QOS_SPIN)
                || match self.shared.poll {
                    PollMode::Busy => true,
                    PollMode::Interrupt => false,
                    PollMode::Adaptive => last_work.elapsed() < self.shared.spin,
                };
            self.enter(spin, until_start.map_or(IDLE_WAIT, |d| d.min(IDLE_WAIT)))?;
            if self.reap() > 0 {
                last_work = Instant::now();
            }
            if !self.held.is_empty() {
                self.release_held();
            }
            if !self.parked.is_empty() {
                for ri in std::mem::take(&mut self.parked) {
                    self.dispatch(ri);
                }
            }
            if !self.throttled.is_empty() {
                self.release_throttled();
            }
            self.pump_dirty();
        }
        Ok(())
    }

    fn enter(&mut self, spin: bool, wait: Duration) -> std::io::Result<()> {
        if self.stats.is_some() && !spin {
            // The time spent waiting for work is the reactor's idle time.
            let t = Instant::now();
            let r = self.enter_ring(spin, wait);
            self.idle_ns += t.elapsed().as_nanos() as u64;
            return r;
        }
        self.enter_ring(spin, wait)
    }

    fn enter_ring(&mut self, spin: bool, wait: Duration) -> std::io::Result<()> {
        let r = if spin {
            let n = self.ring.submission().len() as u32;
            // SAFETY: no signal mask or extra argument is passed; GETEVENTS with min_complete 0
            // only runs deferred completions and never blocks.
            unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(n, 0, ENTER_GETEVENTS, None)
            }
        } else {
            let ts = types::Timespec::from(wait);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn reap(&mut self) -> usize {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        let n = cqes.len();
        for (ud, res) in cqes.drain(..) {
            let idx = (ud & !UD_KIND) as usize;
            match ud & UD_KIND {
                UD_ACCEPT => self.on_accept(idx, res),
                UD_RECV => self.on_recv(idx, res),
                UD_SEND => self.on_send(idx, res),
                UD_IO => self.on_io(idx, res),
                UD_WAKE => self.on_wake(res),
                _ => {}
            }
        }
        self.cqes = cqes;
        n
    }

    /// Queues an SQE, submitting first if the queue is full.
    ///
    /// # Safety
    /// Every buffer and struct the entry points to must stay valid and unmoved until its
    /// completion is reaped.
    unsafe fn push(&mut self, e: squeue::Entry) {
        loop {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            if let Err(err) = self.ring.submit() {
                tracing::warn!("submit with a full queue failed: {err}");
            }
        }
    }

    /// Queues a device SQE and submits it at once: a virtio disk loses 10-15% of its 4k random
    /// IOPS when a batch of reads reaches it in one submission instead of one by one
    /// (docs/performance.md).
    ///
    /// # Safety
    /// As for [`Reactor::push`].
    unsafe fn push_io(&mut self, e: squeue::Entry) {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.push(e) };
        if self.shared.eager_submit {
            if let Err(err) = self.ring.submit() {
                tracing::warn!("submit failed: {err}");
            }
        }
    }

    /// Counts a request refused before it became one (`/metrics`).
    fn count_refusal(&mut self, ci: usize, h: &RequestHeader, status: Status) {
        let Some(st) = self.stats.as_mut() else {
            return;
        };
        let (Some(sess), Some(op)) = (self.conns[ci].session.as_mut(), h.known_op()) else {
            return;
        };
        if let Some(d) = st.devices.get_mut(sess.device) {
            d.record(op, status, h.length, 0);
        }
        sess.stats.record(op, status, h.length, 0);
    }

    /// Copies what this reactor counted to its `/metrics` slot, with the requests it has in
    /// flight per device and its busy time so far.
    fn publish_stats(&mut self) {
        self.last_stats_ms = self.now_ms;
        let Some(mut s) = self.stats.take() else {
            return;
        };
        for d in &mut s.devices {
            d.inflight = 0;
        }
        // Each connection's requests since the last copy go to its lease's counts.
        for l in s.leases.values_mut() {
            l.stats.inflight = 0;
        }
        for (_, c) in self.conns.iter_mut() {
            if let Some(sess) = c.session.as_mut() {
                hand_over(&mut s, sess, self.now_ms);
            }
        }
        for (_, r) in self.reqs.iter() {
            let Some(sess) = self.conns.get(r.conn).and_then(|c| c.session.as_ref()) else {
                continue;
            };
            if let Some(d) = s.devices.get_mut(sess.device) {
                d.inflight += 1;
            }
            if let Some(l) = s.leases.get_mut(&sess.claim.nonce) {
                l.stats.inflight += 1;
            }
        }
        forget_idle_leases(&mut s, self.now_ms);
        // Busy time: all of it, less the waits for work.
        s.busy_ns = (self.born.elapsed().as_nanos() as u64).saturating_sub(self.idle_ns);
        if let Some(m) = &self.shared.metrics {
            m.publish(self.id, &s);
        }
        self.stats = Some(s);
    }

    /// Starts the throttled requests whose time has come (all of them once shutting down);
    /// drops those whose connection closed meanwhile.
    fn release_throttled(&mut self) {
        let now = self.shared.qos.now_ns();
        let all = self.stopping.is_some();
        while let Some(&Reverse((at, ri))) = self.throttled.peek() {
            if at > now && !all {
                break;
            }
            self.throttled.pop();
            let ci = self.reqs[ri].conn;
            if self.conns[ci].phase == Phase::Closing {
                self.drop_req(ri);
                self.try_reap(ci);
            } else if self.reqs[ri].op == Op::Write {
                self.start_write(ri);
            } else {
                self.dispatch(ri);
            }
        }
    }

    /// Asks the lease's scheduler entry when request `ri` may start (once per request); true
    /// when it must wait, and is then in `throttled`.
    fn pace(&mut self, ri: usize) -> bool {
        let r = &mut self.reqs[ri];
        if r.paced {
            return false;
        }
        r.paced = true;
        let (len, read) = (r.hdr.length, r.op != Op::Write);
        let Some(s) = self.conns[r.conn].session.as_mut() else {
            return false;
        };
        let Some(e) = &s.qos else {
            return false;
        };
        s.qos_counts.ops += 1;
        s.qos_counts.bytes += len;
        if !e.paced() {
            return false;
        }
        let now = self.shared.qos.now_ns();
        let at = e.start(now, len, read);
        if at <= now {
            return false;
        }
        s.qos_counts.held += 1;
        self.throttled.push(Reverse((at, ri)));
        true
    }

    /// Hands every connection's scheduler counts to its entry.
    fn flush_qos(&mut self) {
        self.last_qos_flush = self.now_ms;
        if !self.shared.qos.enabled() {
            return;
        }
        for (_, c) in self.conns.iter_mut() {
            if let Some(s) = c.session.as_mut() {
                if let Some(e) = &s.qos {
                    if !s.qos_counts.is_zero() {
                        e.add(&s.qos_counts);
                        s.qos_counts = Default::default();
                    }
                }
            }
        }
        // After the counts, so that an allocation sees this reactor's latest.
        self.shared.qos.tick(self.now_ms);
    }

    fn mark_dirty(&mut self, ci: usize) {
        if let Some(c) = self.conns.get_mut(ci) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(ci);
            }
        }
    }

    /// Answers the held handshakes whose write barrier has passed.
    fn release_held(&mut self) {
        let mut held = std::mem::take(&mut self.held);
        held.retain(|&ci| {
            let Some(c) = self.conns.get_mut(ci) else {
                return false;
            };
            let Some(h) = c.held.take_if(|h| self.shared.writes.passed(&h.0)) else {
                // Still waiting, or already released (a reused slot).
                return c.held.is_some();
            };
            c.sendq.push(h.1);
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(ci);
            }
            false
        });
        self.held = held;
    }

    fn pump_dirty(&mut self) {
        while let Some(ci) = self.dirty.pop() {
            if let Some(c) = self.conns.get_mut(ci) {
                c.dirty = false;
                self.pump(ci);
            }
        }
    }

    // ---- accept and shutdown ----

    fn arm_accept(&mut self, li: usize) {
        let e = opcode::Accept::new(
            types::Fd(self.listeners[li].sock.as_raw_fd()),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .flags(libc::SOCK_CLOEXEC)
        .build()
        .user_data(UD_ACCEPT | li as u64);
        // SAFETY: the entry points at no memory; the listener lives as long as the reactor.
        unsafe { self.push(e) };
        self.listeners[li].armed = true;
    }

    fn on_accept(&mut self, li: usize, res: i32) {
        self.listeners[li].armed = false;
        if res >= 0 {
            // SAFETY: a successful accept returns a new descriptor that nothing else owns.
            let sock = unsafe { Socket::from_raw_fd(res) };
            if self.listeners[li].tcp {
                let _ = sock.set_tcp_nodelay(true);
            }
            // During shutdown too: `pump` refuses it with ShuttingDown at once.
            match Conn::new(sock, self.now_ms) {
                Ok(c) => {
                    let ci = self.conns.insert(c);
                    self.mark_dirty(ci);
                }
                Err(e) => tracing::warn!("no memory for a new connection: {e}"),
            }
        } else if res != -libc::ECANCELED {
            tracing::warn!("accept failed: {}", std::io::Error::from_raw_os_error(-res));
        }
        if !self.listeners[li].cancelled {
            self.arm_accept(li);
        }
    }

    /// Cancels the armed accepts for good (the reactor exits once they are reaped).
    fn stop_accepting(&mut self) {
        for li in 0..self.listeners.len() {
            let l = &mut self.listeners[li];
            if l.armed && !l.cancelled {
                l.cancelled = true;
                let e = opcode::AsyncCancel::new(UD_ACCEPT | li as u64)
                    .build()
                    .user_data(UD_CANCEL);
                // SAFETY: a cancel points at no memory.
                unsafe { self.push(e) };
            }
        }
    }

    fn begin_shutdown(&mut self) {
        tracing::info!(reactor = self.id, conns = self.conns.len(), "shutting down");
        self.stopping = Some(Instant::now() + self.shared.shutdown_grace);
        // Accepts stay armed (see `run`); idle receives are cancelled so those connections close.
        let mut cancels = Vec::new();
        for (ci, c) in self.conns.iter() {
            if c.recv_armed && c.payload_req.is_none() {
                cancels.push(UD_RECV | ci as u64);
            }
        }
        for ud in cancels {
            let e = opcode::AsyncCancel::new(ud).build().user_data(UD_CANCEL);
            // SAFETY: a cancel points at no memory.
            unsafe { self.push(e) };
        }
        let all: Vec<usize> = self.conns.iter().map(|(ci, _)| ci).collect();
        for ci in all {
            self.mark_dirty(ci);
        }
    }

    // ---- connection progress ----

    /// Parses what arrived, arms the next receive, starts sending, and closes when due.
    fn pump(&mut self, ci: usize) {
        if self.conns[ci].phase == Phase::Closing {
            self.try_reap(ci);
            return;
        }
        self.parse(ci);
        let max_inflight = self.shared.max_inflight;
        let stopping = self.stopping.is_some();
        let c = &mut self.conns[ci];
        if c.phase == Phase::Closing {
            return;
        }
        if stopping && c.phase == Phase::Handshake && !c.close_after_send {
            // No complete hello yet (accepted during shutdown, or caught mid-hello by it):
            // refuse at once rather than wait for it. Version 0: no version was chosen.
            self.fatal(
                ci,
                Reply::hello(&HelloReply::refuse(0, Status::ShuttingDown)),
            );
        }
        let c = &mut self.conns[ci];
        if !c.recv_armed && !c.close_after_send {
            if let Some(ri) = c.payload_req {
                let r = &self.reqs[ri];
                let buf = r.buf.expect("write has a slot");
                // SAFETY: done < length <= the slot's capacity.
                let ptr = unsafe { self.arena.ptr(buf).add(r.done as usize) };
                let len = (r.hdr.length - r.done) as u32;
                self.arm_recv(ci, ptr, len);
            } else if !stopping
                && !c.peer_closed
                && !c.stalled
                && !c.parked
                && c.inflight < max_inflight
                && c.held.is_none()
            {
                if c.rstart > 0 {
                    c.rbuf.copy_within(c.rstart..c.rend, 0);
                    c.rend -= c.rstart;
                    c.rstart = 0;
                }
                let room = RBUF_LEN - c.rend;
                // One byte past what the parser needs: a large WRITE's slot is taken only once
                // its payload has started to arrive (parse_write), and that byte usually comes
                // with the header.
                let want = if c.recv_exact {
                    (c.need + 1).saturating_sub(c.rend).clamp(1, room)
                } else {
                    room
                };
                // SAFETY: rend + want <= RBUF_LEN.
                let ptr = unsafe { c.rbuf.as_mut_ptr().add(c.rend) };
                self.arm_recv(ci, ptr, want as u32);
            }
        }
        let c = &mut self.conns[ci];
        if c.sending.is_none() && !c.sendq.is_empty() {
            self.start_send(ci);
        }
        let waits = budget::waits_on_client(&self.conns[ci], max_inflight);
        let c = &mut self.conns[ci];
        if !waits {
            c.partial_since_ms = None;
        } else if c.partial_since_ms.is_none() {
            c.partial_since_ms = Some(self.now_ms);
        }
        let idle = c.sending.is_none() && c.sendq.is_empty() && c.payload_req.is_none();
        // A half-closed client is done once everything it sent is answered: what is left in
        // the receive buffer (after `parse` above) is an incomplete frame, never to be completed.
        let drained = c.peer_closed && c.inflight == 0 && !c.stalled && c.held.is_none();
        if idle && (c.close_after_send || drained || (stopping && c.inflight == 0 && !c.recv_armed))
        {
            self.close(ci);
        }
    }

    fn arm_recv(&mut self, ci: usize, ptr: *mut u8, len: u32) {
        let c = &mut self.conns[ci];
        c.recv_armed = true;
        let e = opcode::Recv::new(types::Fd(c.sock.as_raw_fd()), ptr, len)
            .build()
            .user_data(UD_RECV | ci as u64);
        // SAFETY: `ptr` is inside the connection's receive buffer or a write request's arena
        // slot; both are kept until this recv completes (a connection is only freed once
        // `recv_armed` is false, a request only once its payload receive is over).
        unsafe { self.push(e) };
    }

    fn on_recv(&mut self, ci: usize, res: i32) {
        let c = &mut self.conns[ci];
        c.recv_armed = false;
        if c.phase == Phase::Closing {
            // A payload receive may have been in flight into the slot: free it only now.
            if let Some(ri) = c.payload_req.take() {
                self.drop_req(ri);
            }
            self.try_reap(ci);
            return;
        }
        if res == 0 && c.payload_req.is_none() {
            // The client shut its sending side down: serve and answer what it sent, then close
            // (`pump`). Mid-payload, the WRITE is never applied: close now.
            c.peer_closed = true;
            self.mark_dirty(ci);
            return;
        }
        if res <= 0 {
            if res == -libc::ECANCELED {
                self.mark_dirty(ci);
                return;
            }
            if res < 0 && res != -libc::ECONNRESET {
                tracing::debug!(
                    conn = ci,
                    "recv failed: {}",
                    std::io::Error::from_raw_os_error(-res)
                );
            }
            self.close(ci);
            return;
        }
        let n = res as usize;
        // The payload timeout counts from the last byte received.
        c.partial_since_ms = None;
        if let Some(ri) = c.payload_req {
            let r = &mut self.reqs[ri];
            r.done += n as u64;
            if r.done == r.hdr.length {
                self.conns[ci].payload_req = None;
                self.reqs[ri].stage = Stage::Data;
                self.payload_arrived(ri);
                self.start_write(ri);
            }
        } else {
            c.rend += n;
        }
        self.mark_dirty(ci);
    }

    /// Sends a reply to a request.
    fn reply(&mut self, ci: usize, h: ReplyHeader, payload: Payload) {
        let c = &mut self.conns[ci];
        if c.phase == Phase::Closing {
            c.inflight -= 1;
            self.release(ci, payload);
            return;
        }
        c.unsent += h.payload_len as u64;
        c.sendq.push(Reply::request(h, payload));
        self.mark_dirty(ci);
    }

    /// Answers with an error and closes: the stream can no longer be trusted.
    fn fatal(&mut self, ci: usize, reply: Reply) {
        let c = &mut self.conns[ci];
        if reply.counts {
            c.inflight += 1;
        }
        c.sendq.push(reply);
        c.close_after_send = true;
    }

    /// Lets go of a reply's payload once it is sent or dropped.
    fn release(&mut self, ci: usize, payload: Payload) {
        let len = match &payload {
            Payload::None => 0,
            Payload::Arena(_, n) | Payload::Memory(_, n) => *n,
            Payload::Heap(v) => v.len(),
        };
        let c = &mut self.conns[ci];
        c.unsent = c.unsent.saturating_sub(len as u64);
        if let Payload::Arena(b, _) = payload {
            self.free_slot(ci, b);
        }
    }

    /// A slot of class `class` may be had: wakes the connections whose request it fits (only
    /// those: with hundreds stalled for large slots, waking all on every small one freed cost
    /// a QD1 reader 20 us of node CPU per I/O).
    fn wake_stalled(&mut self, class: usize) {
        for k in 0..=class.min(NUM_CLASSES - 1) {
            for ci in std::mem::take(&mut self.stalled[k]) {
                if let Some(c) = self.conns.get_mut(ci) {
                    c.stalled = false;
                    self.mark_dirty(ci);
                }
            }
        }
    }

    /// Connection `ci` waits for a slot of `len` bytes.
    fn stall(&mut self, ci: usize, len: usize) {
        let c = &mut self.conns[ci];
        if !c.stalled {
            c.stalled = true;
            let k = self.arena.class_for(len).unwrap_or(NUM_CLASSES - 1);
            self.stalled[k].push(ci);
        }
    }

    fn start_send(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        let take = c.sendq.len().min(SEND_BATCH);
        let items: Vec<Reply> = c.sendq.drain(..take).collect();
        let mut iovs = Vec::with_capacity(items.len() * 2);
        for it in &items {
            iovs.push(libc::iovec {
                iov_base: it.head.as_ptr() as *mut libc::c_void,
                iov_len: it.head_len,
            });
            let (p, len) = match &it.payload {
                Payload::None => continue,
                Payload::Arena(b, len) => (self.arena.ptr(*b) as *const u8, *len),
                Payload::Heap(v) => (v.as_ptr(), v.len()),
                Payload::Memory(p, len) => (*p, *len),
            };
            if len > 0 {
                iovs.push(libc::iovec {
                    iov_base: p as *mut libc::c_void,
                    iov_len: len,
                });
            }
        }
        // SAFETY: msghdr is plain data; all-zero is a valid empty message.
        let msg: libc::msghdr = unsafe { std::mem::zeroed() };
        let mut st = Box::new(SendState {
            items,
            iovs,
            pos: 0,
            msg,
        });
        st.msg.msg_iov = st.iovs.as_mut_ptr();
        st.msg.msg_iovlen = st.iovs.len() as _;
        let msg_ptr: *const libc::msghdr = &st.msg;
        let fd = c.sock.as_raw_fd();
        c.sending = Some(st);
        c.send_moved_ms = self.now_ms;
        self.push_send(ci, fd, msg_ptr);
    }

    fn push_send(&mut self, ci: usize, fd: RawFd, msg: *const libc::msghdr) {
        let e = opcode::SendMsg::new(types::Fd(fd), msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(UD_SEND | ci as u64);
        // SAFETY: the msghdr, its iovecs and every buffer they point to belong to the boxed
        // SendState held in `conn.sending` (and the memory backend, which lives for the
        // process) until this send completes.
        unsafe { self.push(e) };
    }

    fn on_send(&mut self, ci: usize, res: i32) {
        let c = &mut self.conns[ci];
        let st = c.sending.as_mut().expect("send completion without a send");
        if res > 0 && c.phase != Phase::Closing {
            c.send_moved_ms = self.now_ms;
            let mut n = res as usize;
            while n > 0 && st.pos < st.iovs.len() {
                let iov = &mut st.iovs[st.pos];
                if n >= iov.iov_len {
                    n -= iov.iov_len;
                    st.pos += 1;
                } else {
                    // SAFETY: n < iov_len, so the advanced pointer stays inside the buffer.
                    iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
                    iov.iov_len -= n;
                    n = 0;
                }
            }
            if st.pos < st.iovs.len() {
                // SAFETY: pos < iovs.len().
                st.msg.msg_iov = unsafe { st.iovs.as_mut_ptr().add(st.pos) };
                st.msg.msg_iovlen = (st.iovs.len() - st.pos) as _;
                let msg_ptr: *const libc::msghdr = &st.msg;
                let fd = c.sock.as_raw_fd();
                self.push_send(ci, fd, msg_ptr);
                return;
            }
        }
        let st = c.sending.take().expect("checked above");
        let failed = res <= 0;
        for it in st.items {
            if it.counts {
                self.conns[ci].inflight -= 1;
            }
            self.release(ci, it.payload);
        }
        if failed {
            self.close(ci);
        } else {
            self.mark_dirty(ci);
        }
    }

    /// Closes a connection: no more input; replies are dropped; the slot is freed once nothing
    /// in flight refers to it.
    fn close(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        if c.phase == Phase::Closing {
            return;
        }
        c.phase = Phase::Closing;
        // Wakes any recv or send still in flight on the socket.
        let _ = c.sock.shutdown(Shutdown::Both);
        let queued = std::mem::take(&mut c.sendq);
        // With a receive in flight into its slot, the payload's request is dropped when that
        // receive completes (on_recv), not before: the kernel may still be writing the slot.
        let payload_req = if c.recv_armed {
            None
        } else {
            c.payload_req.take()
        };
        for it in queued {
            if it.counts {
                self.conns[ci].inflight -= 1;
            }
            self.release(ci, it.payload);
        }
        if let Some(ri) = payload_req {
            self.drop_req(ri);
        }
        self.try_reap(ci);
    }

    fn try_reap(&mut self, ci: usize) {
        let c = &self.conns[ci];
        if c.phase == Phase::Closing && !c.recv_armed && c.sending.is_none() && c.live_reqs == 0 {
            let c = self.conns.remove(ci);
            self.closed_since_trim += 1;
            if let Some(mut s) = c.session {
                self.hand_over_usage(&s);
                if let Some(st) = self.stats.as_mut() {
                    hand_over(st, &mut s, self.now_ms);
                }
            }
        }
    }

    fn hand_over_usage(&self, s: &Session) {
        if self.shared.collect_usage {
            self.shared.usage.add(s.claim.nonce, &s.usage);
        }
    }

    /// Hands every connection's counts to the shared table (a few times a second, not per
    /// request: the I/O path takes no lock).
    fn flush_usage(&mut self) {
        if !self.shared.collect_usage {
            return;
        }
        for (_, c) in self.conns.iter_mut() {
            if let Some(s) = c.session.as_mut() {
                if !s.usage.is_zero() {
                    self.shared.usage.add(s.claim.nonce, &s.usage);
                    s.usage = Default::default();
                }
            }
        }
    }

    // ---- parsing ----

    fn parse(&mut self, ci: usize) {
        // Re-judged on every pass: whatever parked it may have come back.
        self.conns[ci].parked = false;
        let send_budget = self.shared.bounds.send_budget;
        loop {
            let c = &mut self.conns[ci];
            if c.payload_req.is_some()
                || c.close_after_send
                || c.stalled
                || c.parked
                || c.held.is_some()
                || c.phase == Phase::Closing
            {
                return;
            }
            if c.phase == Phase::Serving && c.unsent > send_budget {
                // Its replies are not being read: read no more requests until they drain.
                c.parked = true;
                return;
            }
            let progressed = match c.phase {
                Phase::Handshake => self.parse_hello(ci),
                _ => self.parse_request(ci),
            };
            if !progressed {
                return;
            }
        }
    }

    fn parse_hello(&mut self, ci: usize) -> bool {
        let c = &mut self.conns[ci];
        if c.avail().len() < HELLO_LEN {
            c.need = HELLO_LEN;
            return false;
        }
        let hello = match Hello::decode(c.avail()) {
            Ok(h) => h,
            Err(s) => {
                self.fatal(ci, Reply::hello(&HelloReply::refuse(0, s)));
                return false;
            }
        };
        let total = HELLO_LEN + hello.trailer_len();
        if c.avail().len() < total {
            c.need = total;
            return false;
        }
        let token_end = HELLO_LEN + usize::from(hello.token_len);
        let token = c.avail()[HELLO_LEN..token_end].to_vec();
        let proof = Proof::decode(&c.avail()[token_end..total]);
        c.rstart += total;
        let version = negotiate_version(hello.min_version, hello.max_version).unwrap_or(0);
        match self.open_session(&hello, &token, proof, version) {
            Ok((session, reply)) => {
                tracing::debug!(
                    conn = ci,
                    device = session.device,
                    epoch = session.claim.epoch.0,
                    "session opened"
                );
                // Taken after the fence table admitted the epoch (and bumped its generation if
                // it was newer): the old holder's writes are either counted here or refused.
                let barrier = self.shared.writes.barrier();
                let c = &mut self.conns[ci];
                c.session = Some(session);
                c.phase = Phase::Serving;
                match barrier {
                    None => c.sendq.push(Reply::hello(&reply)),
                    Some(b) => {
                        tracing::debug!(conn = ci, "session held for earlier writes");
                        c.held = Some(Box::new((b, Reply::hello(&reply))));
                        self.held.push(ci);
                    }
                }
                true
            }
            Err(s) => {
                tracing::info!(conn = ci, "handshake refused: {s}");
                self.fatal(ci, Reply::hello(&HelloReply::refuse(version, s)));
                false
            }
        }
    }

    fn open_session(
        &self,
        hello: &Hello,
        token: &[u8],
        proof: Option<Proof>,
        version: u16,
    ) -> Result<(Session, HelloReply), Status> {
        if version == 0 {
            return Err(Status::VersionMismatch);
        }
        if self.stopping.is_some() {
            return Err(Status::ShuttingDown);
        }
        let keys = self.shared.trust_keys();
        if keys.is_empty() {
            return Err(Status::NoTrustKey);
        }
        let device = hello.device_id.0 as usize;
        let backend = self
            .shared
            .backends
            .get(device)
            .ok_or(Status::WrongDevice)?;
        let token = Token::from_bytes(token).map_err(|e| e.status())?;
        let claim = session::verify_token(
            &token,
            &keys,
            self.now_ms,
            self.shared.node_id(),
            hello.device_id,
        )
        .map_err(|e| e.status())?;
        // Before anything the session changes (the fence table above all): a stolen token
        // without its holder's key must not even raise an epoch.
        session::check_holder(
            &token,
            &claim,
            proof.as_ref(),
            hello.device_id,
            self.now_ms,
            &self.shared.proofs,
            self.shared.require_holder,
        )
        .map_err(|e| {
            tracing::info!(volume = claim.volume_id.0, lease = claim.nonce, "{e}");
            e.status()
        })?;
        // Loaded before the lookup: a revocation applied in between moves it, and the session
        // looks again on its first request.
        let revoked_gen = self.shared.revoked.generation();
        if self.shared.revoked.is_revoked(claim.nonce, self.now_ms) {
            return Err(Status::Revoked);
        }
        let range = session::lent_range(
            claim.range_offset,
            claim.range_length,
            &Lendable {
                size: backend.size,
                block_size: backend.block_size,
                reserved: self.shared.reserve.reserved(backend.size),
            },
        )?;
        let (start, end) = (range.start, range.end);
        let fence_gen = self.shared.fence.generation();
        self.shared
            .fence
            .admit(hello.device_id, range, claim.epoch)?;
        let limits = RequestLimits {
            block_size: backend.block_size,
            max_io_size: self.shared.max_io,
            range_offset: start,
            range_length: end - start,
            writable: claim.rights.writable(),
        };
        let reply = HelloReply {
            version,
            status: Status::Ok.code(),
            device_id: hello.device_id,
            block_size: backend.block_size,
            physical_block_size: backend.physical_block_size,
            max_io_size: self.shared.max_io,
            max_inflight: self.shared.max_inflight,
            device_size: backend.size,
            lent_offset: start,
            lent_length: end - start,
            capabilities: backend.capabilities,
            max_search_hits: self.shared.max_search_hits,
        };
        let session = Session {
            device,
            claim,
            limits,
            range,
            fence_gen,
            fenced: false,
            standing: crate::revoke::Standing {
                generation: revoked_gen,
                revoked: false,
            },
            usage: Default::default(),
            qos: self.shared.qos.entry(
                crate::qos::Key {
                    owner: crate::qos::Owner::of(&claim),
                    device,
                    offset: start,
                },
                claim.terms,
            ),
            qos_counts: Default::default(),
            stats: Default::default(),
        };
        Ok((session, reply))
    }

    /// The checks every request passes before it touches the device. A modifying op that
    /// passes holds a number in the write lane, to be ended when it completes.
    fn admit(&mut self, ci: usize, h: &RequestHeader) -> Result<(Op, Option<WriteSeq>), Status> {
        let stopping = self.stopping.is_some();
        let s = self.conns[ci].session.as_mut().ok_or(Status::Internal)?;
        let op = check_request(h, &s.limits)?;
        session::supported(op, self.shared.backends[s.device].capabilities)?;
        if self.now_ms >= s.claim.expires_at_ms {
            return Err(Status::Expired);
        }
        // Numbered *before* the generation is loaded, so that a barrier taken after a raise
        // either counts this op or this op sees the raise (barrier.rs).
        let seq = matches!(op, Op::Write | Op::Discard | Op::WriteZeroes)
            .then(|| self.writes.begin(&self.shared.writes));
        let generation = self.shared.fence.generation();
        if !s.fenced && generation != s.fence_gen {
            if self
                .shared
                .fence
                .is_current(s.claim.device_id, s.range, s.claim.epoch)
            {
                s.fence_gen = generation;
            } else {
                s.fenced = true;
            }
        }
        let refused = if s.fenced {
            Some(Status::StaleEpoch)
        } else if s
            .standing
            .check(&self.shared.revoked, s.claim.nonce, self.now_ms)
        {
            Some(Status::Revoked)
        } else if stopping {
            Some(Status::ShuttingDown)
        } else {
            None
        };
        match refused {
            None => Ok((op, seq)),
            Some(status) => {
                if let Some(seq) = seq {
                    self.writes.end(&self.shared.writes, seq);
                }
                Err(status)
            }
        }
    }

    /// Parses one request if enough bytes are there; false when it must wait.
    fn parse_request(&mut self, ci: usize) -> bool {
        let max_inflight = self.shared.max_inflight;
        let c = &mut self.conns[ci];
        if c.inflight >= max_inflight {
            return false;
        }
        let h = match c.peek_request() {
            Ok(Some(h)) => h,
            Ok(None) => return false,
            Err(s) => {
                tracing::info!(conn = ci, "unparsable frame; closing the connection");
                self.fatal(
                    ci,
                    Reply::request(ReplyHeader::status(Default::default(), s), Payload::None),
                );
                return false;
            }
        };
        match h.known_op() {
            Some(Op::Write) => self.parse_write(ci, h),
            Some(Op::Search) => self.parse_search(ci, h),
            _ => {
                let verdict = self.admit(ci, &h);
                let memory = self.is_memory(ci);
                let buf = match verdict {
                    // Not modifying: a stall (parsed again later) leaves no lane number behind.
                    Ok((Op::Read, _)) if !memory => {
                        match self.take_slot(ci, h.length as usize, false) {
                            Some(b) => Some(b),
                            None => return false,
                        }
                    }
                    _ => None,
                };
                let c = &mut self.conns[ci];
                c.rstart += REQUEST_HEADER_LEN;
                c.inflight += 1;
                c.recv_exact = false;
                match verdict {
                    Err(s) => {
                        self.count_refusal(ci, &h, s);
                        self.reply(ci, ReplyHeader::status(h.tag, s), Payload::None)
                    }
                    Ok((op, seq)) => {
                        let ri = self.new_req(ci, h, op, buf, Stage::Data);
                        self.reqs[ri].write_seq = seq;
                        self.dispatch(ri);
                    }
                }
                true
            }
        }
    }

    fn parse_write(&mut self, ci: usize, h: RequestHeader) -> bool {
        if h.length > u64::from(self.shared.max_io) {
            // The payload cannot be skipped safely: answer and close.
            self.fatal(
                ci,
                Reply::request(ReplyHeader::status(h.tag, Status::TooLarge), Payload::None),
            );
            return false;
        }
        if h.length == 0 {
            let c = &mut self.conns[ci];
            c.rstart += REQUEST_HEADER_LEN;
            c.inflight += 1;
            self.reply(
                ci,
                ReplyHeader::status(h.tag, Status::InvalidLength),
                Payload::None,
            );
            return true;
        }
        let len = h.payload_len() as usize;
        // No slot for a payload that has not started to arrive, and none for a small one until
        // it is all in the staging buffer: a client that stops mid-WRITE then holds no slot, or
        // (a large one) a slot of the half of a class payloads may take (Arena::alloc_fair),
        // until the payload timeout closes it.
        let c = &mut self.conns[ci];
        let have = c.avail().len() - REQUEST_HEADER_LEN;
        let wanted = if len <= COPY_MAX { len } else { 1 };
        if have < wanted {
            c.need = REQUEST_HEADER_LEN + wanted;
            return false;
        }
        let Some(buf) = self.take_slot(ci, len, len > COPY_MAX) else {
            return false;
        };
        let c = &mut self.conns[ci];
        c.rstart += REQUEST_HEADER_LEN;
        c.inflight += 1;
        // Small payloads ride in the staging buffer with their headers (one receive for many
        // writes, then a copy); large ones are received straight into their slot.
        c.recv_exact = len > COPY_MAX;
        let have = c.avail().len().min(len);
        self.arena
            .bytes_mut(buf, have)
            .copy_from_slice(&c.rbuf[c.rstart..c.rstart + have]);
        c.rstart += have;
        let ri = self.new_req(ci, h, Op::Write, Some(buf), Stage::Receiving);
        self.reqs[ri].done = have as u64;
        if have < len {
            self.conns[ci].payload_req = Some(ri);
            false
        } else {
            self.reqs[ri].stage = Stage::Data;
            if len > COPY_MAX {
                self.payload_arrived(ri);
            }
            self.start_write(ri);
            true
        }
    }

    fn parse_search(&mut self, ci: usize, h: RequestHeader) -> bool {
        let c = &mut self.conns[ci];
        let total = h.frame_len() as usize;
        if c.avail().len() < total {
            c.need = total;
            return false;
        }
        let body = SearchBody::decode(&c.avail()[REQUEST_HEADER_LEN..total]);
        if body == Err(Status::BadFrame) {
            self.fatal(
                ci,
                Reply::request(ReplyHeader::status(h.tag, Status::BadFrame), Payload::None),
            );
            return false;
        }
        let verdict = self.admit(ci, &h).and_then(|(op, _)| {
            let body = body?;
            if body.max_hits > self.shared.max_search_hits {
                return Err(Status::TooLarge);
            }
            Ok((op, body))
        });
        let buf = match &verdict {
            Ok(_) => match self.take_slot(ci, h.length.min(SEARCH_CHUNK) as usize, false) {
                Some(b) => Some(b),
                None => return false,
            },
            Err(_) => None,
        };
        let c = &mut self.conns[ci];
        c.rstart += total;
        c.inflight += 1;
        c.recv_exact = false;
        match verdict {
            Err(s) => {
                self.count_refusal(ci, &h, s);
                self.reply(ci, ReplyHeader::status(h.tag, s), Payload::None)
            }
            Ok((op, body)) => {
                let ri = self.new_req(ci, h, op, buf, Stage::Data);
                self.reqs[ri].search = Some(Box::new(Searcher::new(
                    &body.pattern,
                    body.max_hits as usize,
                )));
                self.dispatch(ri);
            }
        }
        true
    }

    fn is_memory(&self, ci: usize) -> bool {
        self.conns[ci]
            .session
            .as_ref()
            .is_some_and(|s| matches!(self.shared.backends[s.device].store, Store::Memory(_)))
    }

    fn new_req(
        &mut self,
        ci: usize,
        hdr: RequestHeader,
        op: Op,
        buf: Option<crate::arena::BufId>,
        stage: Stage,
    ) -> usize {
        self.conns[ci].live_reqs += 1;
        self.reqs.insert(Req {
            conn: ci,
            hdr,
            op,
            buf,
            done: 0,
            stage,
            search: None,
            write_seq: None,
            guard: None,
            paced: false,
            started_us: self.now_us,
        })
    }

    /// Drops a request whose connection went away before it was dispatched.
    fn drop_req(&mut self, ri: usize) {
        if self.reqs[ri].stage == Stage::Receiving {
            self.payload_arrived(ri);
        }
        let r = self.reqs.remove(ri);
        if let Some(seq) = r.write_seq {
            self.writes.end(&self.shared.writes, seq);
        }
        if let Some(g) = &r.guard {
            g.host_done(r.hdr.offset, r.hdr.length);
        }
        if let Some(b) = r.buf {
            self.free_slot(r.conn, b);
        }
        let c = &mut self.conns[r.conn];
        c.live_reqs -= 1;
        c.inflight -= 1;
    }

    // ---- execution ----

    fn device(&self, ri: usize) -> usize {
        let ci = self.reqs[ri].conn;
        self.conns[ci]
            .session
            .as_ref()
            .map(|s| s.device)
            .expect("request on a session")
    }

    /// A fully received WRITE: check it, then write it.
    fn start_write(&mut self, ri: usize) {
        if self.pace(ri) {
            return;
        }
        let ci = self.reqs[ri].conn;
        let h = self.reqs[ri].hdr;
        // `done` counted payload bytes received; from here on it counts bytes written.
        self.reqs[ri].done = 0;
        match self.admit(ci, &h) {
            Ok((_, seq)) => {
                self.reqs[ri].write_seq = seq;
                self.dispatch(ri);
            }
            Err(s) => self.finish(ri, s, Payload::None, 0),
        }
    }

    fn dispatch(&mut self, ri: usize) {
        if matches!(self.reqs[ri].op, Op::Read | Op::Search) && self.pace(ri) {
            return;
        }
        let dev = self.device(ri);
        let shared = Arc::clone(&self.shared);
        let backend = &shared.backends[dev];
        let r = &self.reqs[ri];
        let (op, off, len) = (r.op, r.hdr.offset, r.hdr.length);
        let fua = r.hdr.flags & dasmesh_wire::FLAG_FUA != 0;
        if matches!(op, Op::Write | Op::Discard | Op::WriteZeroes) && r.guard.is_none() {
            // A range being rebuilt: its blocks are the host's from here on (`guard.rs`).
            if let Some(g) = self.shared.guards.find(dev, off, len) {
                if !g.host_begin(off, len) {
                    // The rebuild holds a region of it for a moment: again on the next turn.
                    self.parked.push(ri);
                    return;
                }
                self.reqs[ri].guard = Some(g);
            }
        }
        let r = &self.reqs[ri];
        match &backend.store {
            Store::Memory(m) => {
                match op {
                    Op::Read => {
                        let p = m.ptr(off, len as usize);
                        return self.finish(ri, Status::Ok, Payload::Memory(p, len as usize), 0);
                    }
                    Op::Write => {
                        let buf = r.buf.expect("write slot");
                        m.write(off, self.arena.bytes(buf, len as usize));
                    }
                    Op::Discard | Op::WriteZeroes => m.zero(off, len),
                    Op::Flush => {}
                    Op::Search => return self.memory_search_step(ri),
                }
                self.finish(ri, Status::Ok, Payload::None, 0)
            }
            Store::File { block_device, .. } => match op {
                Op::Read | Op::Write | Op::Search => self.submit_data(ri),
                Op::Flush => self.submit_sync(ri),
                Op::Discard | Op::WriteZeroes if *block_device => {
                    // Synchronous ioctls that can take long (a whole-range discard on some
                    // SSDs): on the helper thread, never on the reactor.
                    let call = if op == Op::Discard {
                        Call::Discard
                    } else {
                        Call::ZeroOut
                    };
                    self.offload(ri, call, fua, Stage::Offloaded);
                }
                Op::Discard | Op::WriteZeroes => {
                    let mode = if op == Op::Discard {
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                    } else {
                        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
                    };
                    if self.shared.bounds.slow_device_ops.is_some() {
                        // The test-only slow device: the call goes where a blocking one would.
                        return self.offload(ri, Call::Fallocate(mode), false, Stage::Fallocate);
                    }
                    self.reqs[ri].stage = Stage::Fallocate;
                    let f = self.files[dev].expect("file backend");
                    let e = on_file!(f, |fd| opcode::Fallocate::new(fd, len)
                        .offset(off)
                        .mode(mode)
                        .build());
                    // SAFETY: fallocate points at no memory.
                    unsafe { self.push_io(e.user_data(UD_IO | ri as u64)) };
                }
            },
        }
    }

    /// Scans the next chunk of a SEARCH of a memory backend. Between chunks the request waits
    /// for a no-op SQE, so the reactor serves everyone else in between, as it does while a file
    /// SEARCH waits for its chunk reads.
    fn memory_search_step(&mut self, ri: usize) {
        let shared = Arc::clone(&self.shared);
        let Store::Memory(m) = &shared.backends[self.device(ri)].store else {
            unreachable!("a memory SEARCH on a file backend");
        };
        let r = &mut self.reqs[ri];
        let at = r.hdr.offset + r.done;
        let n = (r.hdr.length - r.done).min(SEARCH_CHUNK) as usize;
        let buf = r.buf.expect("search slot");
        m.read(at, self.arena.bytes_mut(buf, n));
        let s = r.search.as_mut().expect("searcher");
        s.feed(at, self.arena.bytes(buf, n));
        r.done += n as u64;
        // A closed connection drops the reply: no use scanning on.
        let gone = self.conns[r.conn].phase == Phase::Closing;
        if s.is_done() || r.done == r.hdr.length || gone {
            return self.finish_search(ri);
        }
        r.stage = Stage::MemoryChunk;
        let e = opcode::Nop::new().build().user_data(UD_IO | ri as u64);
        // SAFETY: a no-op points at no memory.
        unsafe { self.push(e) };
    }

    /// Submits the next data transfer of a READ, WRITE, SEARCH chunk or zero-write.
    fn submit_data(&mut self, ri: usize) {
        let dev = self.device(ri);
        let f = self.files[dev].expect("file backend");
        let r = &self.reqs[ri];
        let off = r.hdr.offset + r.done;
        #[allow(unused_mut)]
        let mut left = r.hdr.length - r.done;
        #[cfg(feature = "fault-injection")]
        {
            use crate::fault::Verdict;
            let write = r.op == Op::Write || r.stage == Stage::ZeroWrite;
            match self
                .shared
                .faults
                .verdict(dev, write, r.done == 0, off, left)
            {
                // A no-op completes with 0 bytes moved, which on_io takes as an I/O error.
                Some(Verdict::Fail) => {
                    let e = opcode::Nop::new().build().user_data(UD_IO | ri as u64);
                    // SAFETY: a no-op points at no memory.
                    return unsafe { self.push(e) };
                }
                Some(Verdict::Hang) => return,
                Some(Verdict::Short(n)) => left = left.min(u64::from(n)),
                None => {}
            }
        }
        let fua = r.hdr.flags & dasmesh_wire::FLAG_FUA != 0;
        let e = if r.stage == Stage::ZeroWrite {
            let (zp, zi) = self.arena.zero();
            let n = left.min(ZERO_LEN as u64) as u32;
            if self.fixed_bufs {
                on_file!(f, |fd| opcode::WriteFixed::new(fd, zp, n, zi)
                    .offset(off)
                    .build())
            } else {
                on_file!(f, |fd| opcode::Write::new(fd, zp, n).offset(off).build())
            }
        } else {
            let buf = r.buf.expect("data slot");
            let idx = self.arena.buf_index(buf);
            let (ptr, n) = if r.op == Op::Search {
                // Each chunk is read into the start of the slot.
                (self.arena.ptr(buf), left.min(SEARCH_CHUNK) as u32)
            } else {
                // SAFETY: done < length <= the slot's capacity.
                (
                    unsafe { self.arena.ptr(buf).add(r.done as usize) },
                    left as u32,
                )
            };
            let write = r.op == Op::Write;
            let flags = if write && fua { libc::RWF_DSYNC } else { 0 };
            match (write, self.fixed_bufs) {
                (true, true) => on_file!(f, |fd| opcode::WriteFixed::new(fd, ptr, n, idx)
                    .offset(off)
                    .rw_flags(flags)
                    .build()),
                (true, false) => on_file!(f, |fd| opcode::Write::new(fd, ptr, n)
                    .offset(off)
                    .rw_flags(flags)
                    .build()),
                (false, true) => on_file!(f, |fd| opcode::ReadFixed::new(fd, ptr, n, idx)
                    .offset(off)
                    .build()),
                (false, false) => {
                    on_file!(f, |fd| opcode::Read::new(fd, ptr, n).offset(off).build())
                }
            }
        };
        // SAFETY: the slot (or the zero buffer) belongs to this request until its completion.
        unsafe { self.push_io(e.user_data(UD_IO | ri as u64)) };
    }

    fn submit_sync(&mut self, ri: usize) {
        if self.shared.bounds.slow_device_ops.is_some() {
            return self.offload(ri, Call::Sync, false, Stage::Sync);
        }
        let dev = self.device(ri);
        let f = self.files[dev].expect("file backend");
        self.reqs[ri].stage = Stage::Sync;
        let e = on_file!(f, |fd| opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build());
        // SAFETY: fsync points at no memory.
        unsafe { self.push_io(e.user_data(UD_IO | ri as u64)) };
    }

    fn on_io(&mut self, ri: usize, res: i32) {
        let r = &mut self.reqs[ri];
        let fua = r.hdr.flags & dasmesh_wire::FLAG_FUA != 0;
        match r.stage {
            Stage::MemoryChunk => self.memory_search_step(ri),
            Stage::Data | Stage::ZeroWrite => {
                if res < 0 {
                    return self.finish(ri, errno_status(-res), Payload::None, 0);
                }
                if res == 0 {
                    tracing::warn!("device returned 0 bytes at {}", r.hdr.offset + r.done);
                    return self.finish(ri, Status::IoError, Payload::None, 0);
                }
                if r.op == Op::Search {
                    let at = r.hdr.offset + r.done;
                    let buf = r.buf.expect("search slot");
                    let s = r.search.as_mut().expect("searcher");
                    s.feed(at, self.arena.bytes(buf, res as usize));
                    r.done += res as u64;
                    if s.is_done() || r.done == r.hdr.length {
                        return self.finish_search(ri);
                    }
                    return self.submit_data(ri);
                }
                r.done += res as u64;
                if r.done < r.hdr.length {
                    return self.submit_data(ri);
                }
                if r.stage == Stage::ZeroWrite && fua {
                    return self.submit_sync(ri);
                }
                if r.op == Op::Read {
                    let buf = r.buf.take().expect("read slot");
                    let len = r.hdr.length as usize;
                    return self.finish(ri, Status::Ok, Payload::Arena(buf, len), 0);
                }
                self.finish(ri, Status::Ok, Payload::None, 0)
            }
            Stage::Fallocate => {
                if res == -libc::EOPNOTSUPP || res == -libc::EINVAL {
                    // The filesystem cannot: write zeroes instead.
                    r.stage = Stage::ZeroWrite;
                    r.done = 0;
                    return self.submit_data(ri);
                }
                if res < 0 {
                    return self.finish(ri, errno_status(-res), Payload::None, 0);
                }
                if fua {
                    return self.submit_sync(ri);
                }
                self.finish(ri, Status::Ok, Payload::None, 0)
            }
            Stage::Sync | Stage::Offloaded => {
                let s = if res < 0 {
                    errno_status(-res)
                } else {
                    Status::Ok
                };
                self.finish(ri, s, Payload::None, 0)
            }
            Stage::Receiving => unreachable!("no I/O is submitted while receiving"),
        }
    }

    fn finish_search(&mut self, ri: usize) {
        let s = self.reqs[ri].search.take().expect("searcher");
        let (hits, truncated) = s.finish();
        let bytes: Vec<u8> = hits.iter().flat_map(|h| h.to_le_bytes()).collect();
        let flags = if truncated { REPLY_FLAG_TRUNCATED } else { 0 };
        self.finish(ri, Status::Ok, Payload::Heap(bytes), flags)
    }

    /// Ends a request: frees its slot (unless the payload carries it) and queues the reply.
    fn finish(&mut self, ri: usize, status: Status, payload: Payload, flags: u16) {
        let r = self.reqs.remove(ri);
        if let Some(seq) = r.write_seq {
            // Its device work is over (or never started): held handshakes may go on.
            self.writes.end(&self.shared.writes, seq);
        }
        if let Some(g) = &r.guard {
            g.host_done(r.hdr.offset, r.hdr.length);
        }
        if let Some(b) = r.buf {
            self.free_slot(r.conn, b);
        }
        let ci = r.conn;
        self.conns[ci].live_reqs -= 1;
        let payload_len = match &payload {
            Payload::None => 0,
            Payload::Arena(_, n) | Payload::Memory(_, n) => *n,
            Payload::Heap(v) => v.len(),
        };
        let h = ReplyHeader {
            status: status.code(),
            flags,
            tag: r.tag(),
            payload_len: payload_len as u32,
        };
        // The rule clients check replies by (the hit limit was checked when the SEARCH was parsed).
        debug_assert_eq!(check_reply(r.op, r.hdr.length, u32::MAX, &h), Ok(()));
        if let (Some(st), Some(sess)) = (self.stats.as_mut(), self.conns[ci].session.as_mut()) {
            let us = self.now_us.saturating_sub(r.started_us);
            if let Some(d) = st.devices.get_mut(sess.device) {
                d.record(r.op, status, r.hdr.length, us);
            }
            sess.stats.record(r.op, status, r.hdr.length, us);
        }
        if status != Status::Ok {
            tracing::debug!(conn = ci, op = ?r.op, offset = r.hdr.offset, length = r.hdr.length, "request failed: {status}");
        } else if let Some(sess) = self.conns[ci].session.as_mut() {
            let u = &mut sess.usage;
            match r.op {
                Op::Read | Op::Search => {
                    u.read_ops += 1;
                    u.read_bytes += r.hdr.length;
                }
                Op::Write | Op::WriteZeroes => {
                    u.write_ops += 1;
                    u.write_bytes += r.hdr.length;
                }
                Op::Discard | Op::Flush => u.write_ops += 1,
            }
        }
        self.reply(ci, h, payload);
        if self.conns[ci].phase == Phase::Closing {
            self.try_reap(ci);
        }
    }
}

/// The wire status for an errno from the device.
fn errno_status(errno: i32) -> Status {
    match errno {
        libc::ENOSPC => Status::NoSpace,
        libc::EINVAL => Status::Internal,
        _ => Status::IoError,
    }
}

/// Moves what `sess` counted since its last hand-over to its lease's counts in `s`.
fn hand_over(s: &mut crate::metrics::ReactorStats, sess: &mut Session, now_ms: u64) {
    let l = s.leases.entry(sess.claim.nonce).or_default();
    l.seen_ms = now_ms;
    if sess.stats != crate::metrics::DeviceStats::default() {
        l.stats.add(&std::mem::take(&mut sess.stats));
    }
}

/// Forgets the leases with nothing in flight that answered nothing and had no connection here
/// for [`crate::metrics::LEASE_SHOWN_MS`], and, past [`crate::metrics::LEASES_SHOWN`], those
/// seen longest ago.
fn forget_idle_leases(s: &mut crate::metrics::ReactorStats, now_ms: u64) {
    s.leases.retain(|_, l| {
        l.stats.inflight > 0 || now_ms.saturating_sub(l.seen_ms) < crate::metrics::LEASE_SHOWN_MS
    });
    while s.leases.len() > crate::metrics::LEASES_SHOWN {
        let Some(oldest) = s
            .leases
            .iter()
            .min_by_key(|(_, l)| l.seen_ms)
            .map(|(k, _)| *k)
        else {
            break;
        };
        s.leases.remove(&oldest);
    }
}
