//! One pipelined connection to one device of a node.
//!
//! The hot path pays no task spawn, no channel, no shared map and no hand-off to a helper task:
//! - a request claims a slot of a fixed table (its tag names the slot, see `slots.rs`);
//! - its frame is queued and written by whoever is writing at that moment, many frames per
//!   system call (`send.rs`);
//! - its caller reads replies for everyone while it waits, many per system call, and steps down
//!   when its own is in (`recv.rs`); READ data is copied once, from the receive buffer (or, for
//!   large replies, straight from the socket) into the request's buffer.
//!
//! The socket's readiness is all the async runtime provides: a caller whose reply is not there
//! yet sleeps until the socket is readable, or until the reader hands its reply over.
//! Cancelling a call never breaks the stream: a request not yet sent is taken back, one sent is
//! left to be answered (its reply is read and dropped), a frame cut off midway is finished.

mod recv;
mod send;
mod slots;

use std::future::poll_fn;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use dasmesh_wire::{
    DeviceId, Hello, HelloReply, Op, Proof, RequestHeader, SearchBody, SigningKey, Status, Tag,
    Token, FLAG_FUA, HELLO_REPLY_LEN, PROTOCOL_VERSION, REPLY_FLAG_TRUNCATED,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use self::recv::{Drive, Recv};
pub use self::send::SMALL_FRAME;
use self::send::{writer_task, Sender};
use self::slots::{Dest, Finished, Phase, Slots};
use crate::stream::{Sock, Stream};
use crate::{AlignedBuf, Error};

/// How to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Requests kept in flight at most (also capped by the node's `max_inflight`).
    pub queue_depth: usize,
    /// Give up connecting and handshaking after this long.
    pub connect_timeout: Duration,
    /// Use the node's same-host Unix socket when it runs on this machine (`stream.rs`).
    pub local_socket: bool,
    /// How long a caller waiting for its reply keeps polling the socket before it sleeps
    /// (zero: sleep at once). At queue depth 1 a sleeping thread's wake-up can cost more than
    /// the round trip; spinning trades a core for that latency.
    pub spin: Duration,
    /// A request (other than SEARCH) with no reply after this long fails with `Timeout`
    /// (checked by one watchdog per connection, to within a quarter of it; `None`: never).
    pub request_timeout: Option<Duration>,
    /// The private half of the key a bound (format-2) token names: the hello then carries a
    /// proof made with it (`docs/security.md`). A bound token without it cannot connect.
    pub holder: Option<Arc<SigningKey>>,
    /// Speak mutual TLS to the node (a node started with `--tls`), with this configuration
    /// (`CertDir::data_client_config`). The same-host socket, when used, is not on the network
    /// and takes no TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            queue_depth: 64,
            connect_timeout: Duration::from_secs(5),
            local_socket: true,
            spin: Duration::ZERO,
            request_timeout: None,
            holder: None,
            tls: None,
        }
    }
}

/// What a SEARCH found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchResult {
    /// Absolute byte offsets of the matches, increasing.
    pub hits: Vec<u64>,
    /// More matches exist than were asked for.
    pub truncated: bool,
}

pub(crate) struct Inner {
    sock: Sock,
    info: HelloReply,
    local: bool,
    slots: Slots,
    /// One permit per free slot: callers wait here when the queue is full.
    permits: Semaphore,
    send: Sender,
    recv: Mutex<Recv>,
    /// Someone reads the socket for everyone (see `recv.rs`).
    leader: AtomicBool,
    /// Sent requests whose callers went away and whose replies are still due.
    abandoned: AtomicUsize,
    stopped: AtomicBool,
    spin: Duration,
    /// Counts the request-timeout watchdog's rounds (requests note it when they are sent).
    tick: AtomicU64,
    request_timeout: Option<Duration>,
    rt: tokio::runtime::Handle,
}

impl Inner {
    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Counts a request whose reply is still to come but whose caller has gone (dropped, or
    /// given its `Timeout`). If nobody reads, that reply must still be taken off the socket:
    /// step_down starts a drain when no one else is waiting.
    fn abandon_one(self: &Arc<Self>) {
        self.abandoned.fetch_add(1, Ordering::AcqRel);
        if self
            .leader
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.step_down();
        }
    }

    /// Stops the connection: every waiting request fails with `why` (a copy of it), new ones
    /// are refused, and the socket is shut down (the node sees end-of-stream).
    fn fail(&self, why: Error) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let protocol = match &why {
            Error::Protocol(m) => Some(m.clone()),
            _ => None,
        };
        self.permits.close();
        for idx in 0..self.slots.len() {
            let mut s = self.slots.lock(idx);
            match s.phase {
                Phase::Waiting | Phase::TimedOut => {
                    let e = match &protocol {
                        Some(m) => Error::Protocol(m.clone()),
                        None => Error::Closed,
                    };
                    self.slots.wake_done(idx, s, Some(e));
                }
                Phase::Abandoned => {
                    s.phase = Phase::Free;
                    drop(s);
                    self.slots.release(idx);
                }
                Phase::Free | Phase::Done => {}
            }
        }
        self.abandoned.store(0, Ordering::Release);
        self.sock.shutdown();
        self.wake_senders();
    }
}

/// Closes the connection when the last handle to it goes.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.fail(Error::Closed);
    }
}

/// A connection to one device of a node. Cheap to clone; calls may run concurrently from many
/// tasks and threads.
#[derive(Clone)]
pub struct Connection {
    owner: Arc<Owner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.inner().info)
            .finish()
    }
}

/// What a call has done so far, for its cleanup when it is dropped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The slot is claimed, nothing queued or written.
    Claimed,
    /// A small frame is queued (maybe taken by a writer already).
    Queued,
    /// The frame is (or will surely be) on the wire.
    Sent,
    /// The result was taken.
    Finished,
}

/// A request's slot, cleaned up whatever becomes of the call.
struct Call<'a> {
    inner: &'a Arc<Inner>,
    idx: usize,
    tag: u64,
    stage: Stage,
    leader: bool,
    /// This call is to write the send queue (see `send.rs`).
    flusher: bool,
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        let inner = self.inner;
        if self.leader {
            self.leader = false;
            inner.step_down();
        }
        let never_sent = match self.stage {
            Stage::Finished => return,
            Stage::Claimed => true,
            Stage::Queued => inner.send.take_back(self.tag),
            Stage::Sent => false,
        };
        if self.flusher {
            // Others' frames are queued behind this call's promise to write them.
            self.flusher = false;
            inner.flush_queued();
        }
        let mut s = inner.slots.lock(self.idx);
        if never_sent || matches!(s.phase, Phase::Done) || inner.stopped() {
            s.phase = Phase::Free;
            s.dest = Dest::None;
            s.waker = None;
            s.error = None;
            drop(s);
            inner.slots.release(self.idx);
            inner.permits.add_permits(1);
        } else if matches!(s.phase, Phase::Waiting | Phase::TimedOut) {
            s.phase = Phase::Abandoned;
            s.waker = None;
            drop(s);
            inner.slots.set_waiting(self.idx, false);
            inner.abandon_one();
        }
    }
}

impl Call<'_> {
    /// Waits for the reply, reading the socket for everyone while this call is the leader.
    async fn finish(&mut self) -> Result<Finished, Error> {
        let inner = self.inner;
        let idx = self.idx;
        let r = poll_fn(|cx| loop {
            if let Some((r, freed)) = inner.slots.take_finished(idx) {
                if freed {
                    inner.permits.add_permits(1);
                }
                if self.leader {
                    self.leader = false;
                    if !freed {
                        inner.abandoned.fetch_add(1, Ordering::AcqRel);
                    }
                    inner.step_down();
                } else if !freed {
                    inner.abandon_one();
                }
                return Poll::Ready(r);
            }
            if !self.leader {
                if inner
                    .leader
                    .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
                {
                    // Someone else reads: wait to be handed the reply (or the socket).
                    {
                        let mut s = inner.slots.lock(idx);
                        if matches!(s.phase, Phase::Done | Phase::TimedOut) {
                            continue;
                        }
                        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            s.waker = Some(cx.waker().clone());
                        }
                    }
                    inner.slots.set_waiting(idx, true);
                    if inner.leader.load(Ordering::SeqCst) {
                        return Poll::Pending;
                    }
                    continue;
                }
                self.leader = true;
                inner.slots.set_waiting(idx, false);
            }
            let done = || matches!(inner.slots.lock(idx).phase, Phase::Done | Phase::TimedOut);
            match inner.drive(cx, &done) {
                Drive::Pending => {
                    // The watchdog wakes the reader too if its own request times out.
                    let mut s = inner.slots.lock(idx);
                    if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        s.waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                Drive::Done | Drive::Failed => {}
            }
        })
        .await;
        self.stage = Stage::Finished;
        r
    }
}

/// The proof of holding `token`'s key for a connection to `device` (`docs/protocol.md`).
fn holder_proof(token: &Token, key: &SigningKey, device: DeviceId) -> Result<Proof, Error> {
    let node = token
        .claim_unverified()
        .map_err(|e| Error::Protocol(format!("unreadable token: {e}")))?
        .node_id;
    let clock_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(Proof::make(
        token,
        key,
        node,
        device,
        clock_ms,
        rand::random(),
    ))
}

impl Connection {
    fn inner(&self) -> &Arc<Inner> {
        &self.owner.0
    }

    /// Connects, sends the hello with `token`, and checks the node's answer. Needs a tokio
    /// runtime with I/O enabled; the connection waits on that runtime's I/O driver.
    pub async fn connect(
        addr: &str,
        device: DeviceId,
        token: &Token,
        opts: &ConnectOptions,
    ) -> Result<Connection, Error> {
        let fut = Self::handshake(addr, device, token, opts);
        let (stream, info) = tokio::time::timeout(opts.connect_timeout, fut)
            .await
            .map_err(|_| Error::Timeout)??;
        let local = stream.is_local();
        let depth = opts
            .queue_depth
            .clamp(1, info.max_inflight.max(1) as usize)
            .min(slots::MAX_SLOTS);
        let sock = stream.into_sock()?;
        let send = Sender::new();
        let kick = Arc::clone(&send.kick);
        let inner = Arc::new(Inner {
            sock,
            info,
            local,
            slots: Slots::new(depth),
            permits: Semaphore::new(depth),
            send,
            recv: Mutex::new(Recv::new()),
            leader: AtomicBool::new(false),
            abandoned: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            spin: opts.spin,
            tick: AtomicU64::new(0),
            request_timeout: opts.request_timeout,
            rt: tokio::runtime::Handle::current(),
        });
        tokio::spawn(writer_task(Arc::downgrade(&inner), kick));
        if let Some(limit) = opts.request_timeout {
            tokio::spawn(watchdog(Arc::downgrade(&inner), limit));
        }
        Ok(Connection {
            owner: Arc::new(Owner(inner)),
        })
    }

    async fn handshake(
        addr: &str,
        device: DeviceId,
        token: &Token,
        opts: &ConnectOptions,
    ) -> Result<(Stream, HelloReply), Error> {
        let proof = match (token.holder(), &opts.holder) {
            (None, _) => None,
            (Some(_), Some(key)) => Some(holder_proof(token, key, device)?),
            (Some(_), None) => {
                return Err(Error::Protocol(
                    "the token is bound to a holder key and this connection was given none".into(),
                ))
            }
        };
        let mut s = Stream::connect(addr, opts.local_socket, opts.tls.as_ref()).await?;
        let bytes = token.as_bytes();
        let hello = Hello {
            min_version: 1,
            max_version: PROTOCOL_VERSION,
            device_id: device,
            token_len: bytes.len() as u16,
            flags: if proof.is_some() { Hello::PROOF } else { 0 },
        };
        let mut msg = hello.encode().to_vec();
        msg.extend_from_slice(bytes);
        if let Some(p) = proof {
            msg.extend_from_slice(&p.encode());
        }
        s.write_all(&msg).await?;
        let mut b = [0u8; HELLO_REPLY_LEN];
        if let Err(e) = s.read_exact(&mut b).await {
            if e.kind() == std::io::ErrorKind::UnexpectedEof && !s.is_tls() && !s.is_local() {
                return Err(Error::Protocol(format!(
                    "{addr} closed the connection before answering the hello (a node started \
                     with --tls takes TLS connections only: mount with a certificate)"
                )));
            }
            return Err(e.into());
        }
        let reply = HelloReply::decode(&b)
            .map_err(|_| Error::Protocol("bad handshake reply magic".into()))?;
        match reply.status_enum() {
            Status::Ok => Ok((s, reply)),
            st => Err(Error::Handshake(st)),
        }
    }

    /// What the node answered at the handshake (block size, limits, lent range, capabilities).
    pub fn info(&self) -> &HelloReply {
        &self.inner().info
    }

    /// Whether this connection uses the node's same-host socket rather than TCP.
    pub fn is_local(&self) -> bool {
        self.inner().local
    }

    /// Requests in flight or queued right now (for spreading load over connections).
    pub fn in_flight(&self) -> usize {
        let inner = self.inner();
        inner.slots.len() - inner.permits.available_permits()
    }

    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        op: Op,
        flags: u8,
        offset: u64,
        length: u64,
        max_hits: u32,
        payload: &[u8],
        dest: Dest,
    ) -> Result<Finished, Error> {
        let inner = self.inner();
        if inner.stopped() {
            return Err(Error::Closed);
        }
        let limit = inner.request_timeout.filter(|_| op != Op::Search);
        match inner.permits.try_acquire() {
            Ok(p) => p.forget(),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Error::Closed),
            // Every slot is taken: wait (no longer than the request may take in all).
            Err(tokio::sync::TryAcquireError::NoPermits) => timed(limit, async {
                inner.permits.acquire().await.map_err(|_| Error::Closed)
            })
            .await?
            .forget(),
        }
        let since = limit.map(|_| inner.tick.load(Ordering::Relaxed));
        let Some((idx, tag)) = inner.slots.claim(op, length, max_hits, dest, since) else {
            inner.permits.add_permits(1);
            return Err(Error::Closed);
        };
        let mut call = Call {
            inner,
            idx,
            tag,
            stage: Stage::Claimed,
            leader: false,
            flusher: false,
        };
        // A connection that failed while this slot was being claimed may have passed it by
        // already (fail() marks the slots it finds waiting): this call must not wait on it.
        // fail() sets `stopped` before it looks at any slot, so after the claim this sees it.
        if inner.stopped() {
            return Err(Error::Closed);
        }
        let header = RequestHeader::new(op, flags, Tag(tag), offset, length).encode();
        if header.len() + payload.len() <= SMALL_FRAME {
            call.stage = Stage::Queued;
            if inner.queue_small(tag, &header, payload) {
                call.flusher = true;
                yield_once().await;
                call.flusher = false;
                inner.flush_queued();
            }
        } else {
            // A node that stops reading would hold a large frame here past the watchdog.
            timed(limit, send_large(&mut call, &header, payload)).await?;
        }
        let done = call.finish().await?;
        match done.header.status_enum() {
            Status::Ok => Ok(done),
            status => Err(Error::Request { op, status }),
        }
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        let done = self
            .call(
                Op::Read,
                0,
                offset,
                len as u64,
                0,
                &[],
                Dest::Vec(vec![0u8; len]),
            )
            .await?;
        match done.dest {
            Dest::Vec(v) => Ok(v),
            _ => Err(Error::Protocol("read buffer lost".into())),
        }
    }

    /// Reads `buf.len()` bytes at `offset` straight into `buf`, and gives it back.
    pub async fn read_into(&self, offset: u64, buf: AlignedBuf) -> Result<AlignedBuf, Error> {
        let len = buf.len() as u64;
        let done = self
            .call(Op::Read, 0, offset, len, 0, &[], Dest::Buf(buf))
            .await?;
        match done.dest {
            Dest::Buf(b) => Ok(b),
            _ => Err(Error::Protocol("read buffer lost".into())),
        }
    }

    /// Writes `data` at `offset`; with `fua` it is durable when this returns.
    pub async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), Error> {
        let flags = if fua { FLAG_FUA } else { 0 };
        let len = data.len() as u64;
        self.call(Op::Write, flags, offset, len, 0, data, Dest::None)
            .await
            .map(|_| ())
    }

    /// Makes every write acknowledged so far durable.
    pub async fn flush(&self) -> Result<(), Error> {
        self.call(Op::Flush, 0, 0, 0, 0, &[], Dest::None)
            .await
            .map(|_| ())
    }

    /// Discards (deallocates) a range.
    pub async fn discard(&self, offset: u64, len: u64) -> Result<(), Error> {
        self.call(Op::Discard, 0, offset, len, 0, &[], Dest::None)
            .await
            .map(|_| ())
    }

    /// Makes a range read back as zeroes.
    pub async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), Error> {
        let flags = if fua { FLAG_FUA } else { 0 };
        self.call(Op::WriteZeroes, flags, offset, len, 0, &[], Dest::None)
            .await
            .map(|_| ())
    }

    /// Asks the node to scan `[offset, offset+len)` for `pattern` (1..=64 bytes).
    pub async fn search(
        &self,
        offset: u64,
        len: u64,
        pattern: &[u8],
        max_hits: u32,
    ) -> Result<SearchResult, Error> {
        let body = SearchBody {
            max_hits,
            pattern: pattern.to_vec(),
        }
        .encode()
        .map_err(|_| {
            Error::Invalid(format!(
                "search pattern must be 1..=64 bytes, got {}",
                pattern.len()
            ))
        })?;
        let done = self
            .call(
                Op::Search,
                0,
                offset,
                len,
                max_hits,
                &body,
                Dest::Hits(Vec::new()),
            )
            .await?;
        let hits = match &done.dest {
            Dest::Hits(v) => v
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            _ => Vec::new(),
        };
        Ok(SearchResult {
            hits,
            truncated: done.header.flags & REPLY_FLAG_TRUNCATED != 0,
        })
    }

    /// Closes the connection; every request in flight fails with `Closed`.
    pub async fn close(&self) {
        self.inner().fail(Error::Closed);
    }
}

/// `fut`, failed with [`Error::Timeout`] if it takes longer than `limit`: for the slow paths
/// (a full queue, a large frame's send) that the watchdog below does not see.
pub(crate) async fn timed<T>(
    limit: Option<Duration>,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match limit {
        Some(d) => tokio::time::timeout(d, fut)
            .await
            .unwrap_or(Err(Error::Timeout)),
        None => fut.await,
    }
}

/// Returns Pending once, having woken its own task: the other ready futures run (and queue
/// their frames) before this one goes on. Not `tokio::task::yield_now`: that defers the wake
/// to the runtime, and a current-thread runtime whose `block_on` future completes in that same
/// poll drops the deferred wake-ups (tokio 1.54), which left a flusher asleep with frames
/// queued behind it (a two-job `dasmesh-bench` run on one runtime hung so).
async fn yield_once() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// Watchdog rounds per request timeout: a request times out after 4 to 5 rounds.
const ROUNDS: u64 = 4;

/// Fails requests that got no reply within `limit` with `Timeout`: one task per connection,
/// waking every quarter of the limit, instead of a timer per request.
async fn watchdog(inner: std::sync::Weak<Inner>, limit: Duration) {
    let period = (limit / ROUNDS as u32).max(Duration::from_millis(1));
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.stopped() {
            return;
        }
        let now = inner.tick.fetch_add(1, Ordering::Relaxed) + 1;
        for idx in 0..inner.slots.len() {
            let mut s = inner.slots.lock(idx);
            let late = s.since.is_some_and(|t| now > t + ROUNDS);
            if s.phase == Phase::Waiting && late {
                s.phase = Phase::TimedOut;
                let w = s.waker.take();
                drop(s);
                inner.slots.set_waiting(idx, false);
                if let Some(w) = w {
                    w.wake();
                }
            }
        }
    }
}

/// Writes a large frame from the caller's buffer once the socket is free. Dropped midway, the
/// rest of the frame is copied and finished by the writer task.
async fn send_large(call: &mut Call<'_>, header: &[u8], payload: &[u8]) -> Result<(), Error> {
    let inner = call.inner;
    let before = inner.own_socket().await?;
    let mut cut = Cut {
        inner,
        parts: [&before[..], header, payload],
        owns: true,
    };
    call.stage = Stage::Sent;
    loop {
        let slices = [
            IoSlice::new(cut.parts[0]),
            IoSlice::new(cut.parts[1]),
            IoSlice::new(cut.parts[2]),
        ];
        if cut.parts.iter().all(|p| p.is_empty()) {
            break;
        }
        match inner.write_now(&slices) {
            Ok(0) => {
                cut.owns = false;
                inner.fail(Error::Closed);
                return Err(Error::Closed);
            }
            Ok(mut n) => {
                for p in &mut cut.parts {
                    let k = n.min(p.len());
                    *p = &p[k..];
                    n -= k;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Err(e) = inner.writable().await {
                    cut.owns = false;
                    inner.fail(Error::Closed);
                    return Err(Error::Io(e));
                }
                if inner.stopped() {
                    cut.owns = false;
                    return Err(Error::Closed);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                cut.owns = false;
                tracing::debug!("sending a request: {e}");
                inner.fail(Error::Closed);
                return Err(Error::Closed);
            }
        }
    }
    cut.owns = false;
    inner.release_socket();
    Ok(())
}

/// The unwritten rest of a large frame while its caller owns the socket.
struct Cut<'a> {
    inner: &'a Inner,
    parts: [&'a [u8]; 3],
    owns: bool,
}

impl Drop for Cut<'_> {
    fn drop(&mut self) {
        if self.owns {
            self.inner.hand_over_rest(&self.parts.concat());
        }
    }
}
