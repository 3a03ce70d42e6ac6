//! One pipelined connection to one device of a node.
//!
//! Small requests (header and payload up to [`SMALL_FRAME`] bytes) are appended to an outbox
//! that one writer task sends in batches: at queue depth N a burst of requests costs one
//! `writev`, not N. Larger ones are written by their caller under the lock on the socket's write
//! half (header and payload in one vectored write, no copy of the payload). One reader task reads
//! replies through a buffer (many reply headers per receive) and hands each to the request
//! waiting on its tag, reading READ data straight into that request's buffer.
//! Cancelling a call never breaks the stream: see [`Frame`] for how a half-sent frame is finished,
//! and a request's queue slot is held until its reply has been read.

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dasmesh_wire::{
    DeviceId, Hello, HelloReply, Op, ReplyHeader, RequestHeader, SearchBody, Status, Tag, Token,
    FLAG_FUA, HELLO_REPLY_LEN, PROTOCOL_VERSION, REPLY_FLAG_TRUNCATED, REPLY_HEADER_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::stream::{ReadHalf, Stream, WriteHalf};
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
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            queue_depth: 64,
            connect_timeout: Duration::from_secs(5),
            local_socket: true,
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

/// Where a reply's payload goes.
enum Dest {
    /// No payload expected.
    None,
    /// READ data into a fresh vector of this length.
    Vec(usize),
    /// READ data into the caller's buffer.
    Buf(AlignedBuf),
    /// SEARCH hits.
    Hits,
}

/// A reply delivered to its request.
struct Done {
    header: ReplyHeader,
    dest: Dest,
    data: Vec<u8>,
}

struct Waiter {
    op: Op,
    dest: Dest,
    tx: oneshot::Sender<Result<Done, Error>>,
    /// The request's queue slot. It is given back when the reply has been read, not when the
    /// caller stops waiting: a cancelled request is still in flight on the node.
    _slot: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, Waiter>,
    closed: bool,
}

/// Frames up to this size (header included) go through the outbox (one copy, batched sends).
pub const SMALL_FRAME: usize = 32 << 10;

/// Small frames waiting for the writer task.
#[derive(Default)]
struct Outbox {
    queue: Mutex<Queued>,
    kick: tokio::sync::Notify,
}

/// The frames of the next batch, back to back, and where each one is (by tag).
#[derive(Default)]
struct Queued {
    bytes: Vec<u8>,
    frames: Vec<(u64, usize, usize)>,
}

impl Queued {
    /// Takes out a frame that was not sent yet; false if the writer already has it.
    fn remove(&mut self, tag: u64) -> bool {
        let Some(i) = self.frames.iter().position(|f| f.0 == tag) else {
            return false;
        };
        let (_, start, end) = self.frames.remove(i);
        self.bytes.drain(start..end);
        for f in &mut self.frames[i..] {
            f.1 -= end - start;
            f.2 -= end - start;
        }
        true
    }
}

/// Takes a small request's frame back out of the outbox if its call is dropped before the
/// writer task took it (so a cancelled request that never left is never sent).
struct Unsent<'a> {
    inner: &'a Inner,
    tag: u64,
    armed: bool,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if self.armed && lock(&self.inner.outbox.queue).remove(self.tag) {
            lock(&self.inner.pending).waiters.remove(&self.tag);
        }
    }
}

struct Inner {
    outbox: Arc<Outbox>,
    writer_task: Mutex<Option<JoinHandle<()>>>,
    info: HelloReply,
    local: bool,
    writer: Arc<tokio::sync::Mutex<WriteHalf>>,
    pending: Mutex<Pending>,
    next_tag: AtomicU64,
    slots: Arc<Semaphore>,
    /// Never holds permits; closed when the connection stops, which wakes every task waiting
    /// for the write lock or for room in a full socket buffer (nothing may hang on a dead peer).
    stopped: Semaphore,
    reader: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves the map consistent (single inserts and removes).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// Fails every waiter, refuses new requests and wakes blocked writers.
    fn fail_all(&self, why: impl Fn() -> Error) {
        let waiters = {
            let mut p = lock(&self.pending);
            p.closed = true;
            std::mem::take(&mut p.waiters)
        };
        for (_, w) in waiters {
            let _ = w.tx.send(Err(why()));
        }
        self.slots.close();
        self.stopped.close();
    }

    /// Sends the FIN once no writer is mid-frame (they all give up once `stopped` is closed).
    async fn shutdown_socket(&self) {
        let mut w = self.writer.lock().await;
        let _ = w.shutdown().await;
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(h) = lock(&self.reader).take() {
            h.abort();
        }
        if let Some(h) = lock(&self.writer_task).take() {
            h.abort();
        }
    }
}

/// Sends what the outbox holds, batch after batch, until the connection stops.
async fn write_batches(
    outbox: Arc<Outbox>,
    writer: Arc<tokio::sync::Mutex<WriteHalf>>,
    inner: std::sync::Weak<Inner>,
) {
    let mut batch = Queued::default();
    loop {
        outbox.kick.notified().await;
        loop {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            // The lock first, then the frames: until the batch is taken, a cancelled call can
            // still take its frame back.
            let mut w = tokio::select! {
                biased;
                _ = strong.stopped.acquire() => return,
                w = writer.lock() => w,
            };
            {
                let mut q = lock(&outbox.queue);
                if q.bytes.is_empty() {
                    break;
                }
                std::mem::swap(&mut *q, &mut batch);
            }
            let r = tokio::select! {
                biased;
                _ = strong.stopped.acquire() => return,
                r = w.write_all(&batch.bytes) => r,
            };
            drop(w);
            batch.bytes.clear();
            batch.frames.clear();
            if let Err(e) = r {
                tracing::debug!("sending requests: {e}");
                strong.fail_all(|| Error::Closed);
                return;
            }
        }
    }
}

/// A connection to one device of a node. Cheap to clone; calls may run concurrently.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.inner.info)
            .finish()
    }
}

impl Connection {
    /// Connects, sends the hello with `token`, and checks the node's answer.
    pub async fn connect(
        addr: &str,
        device: DeviceId,
        token: &Token,
        opts: &ConnectOptions,
    ) -> Result<Connection, Error> {
        let fut = Self::handshake(addr, device, token, opts.local_socket);
        let (stream, info) = tokio::time::timeout(opts.connect_timeout, fut)
            .await
            .map_err(|_| Error::Timeout)??;
        let local = stream.is_local();
        let (rd, wr) = stream.into_split();
        let depth = opts.queue_depth.clamp(1, info.max_inflight.max(1) as usize);
        let writer = Arc::new(tokio::sync::Mutex::new(wr));
        let outbox = Arc::new(Outbox::default());
        let inner = Arc::new(Inner {
            outbox: Arc::clone(&outbox),
            writer_task: Mutex::new(None),
            info,
            local,
            writer: Arc::clone(&writer),
            pending: Mutex::new(Pending::default()),
            next_tag: AtomicU64::new(1),
            slots: Arc::new(Semaphore::new(depth)),
            stopped: Semaphore::new(0),
            reader: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        *lock(&inner.writer_task) = Some(tokio::spawn(write_batches(outbox, writer, weak.clone())));
        let handle = tokio::spawn(async move {
            let why = read_replies(rd, &weak).await;
            if let Some(inner) = weak.upgrade() {
                tracing::debug!("connection reader stopped: {why}");
                let protocol = matches!(why, Error::Protocol(_));
                let msg = why.to_string();
                inner.fail_all(|| {
                    if protocol {
                        Error::Protocol(msg.clone())
                    } else {
                        Error::Closed
                    }
                });
                // A node that broke the protocol gets its connection closed, not left idle.
                inner.shutdown_socket().await;
            }
        });
        *lock(&inner.reader) = Some(handle);
        Ok(Connection { inner })
    }

    async fn handshake(
        addr: &str,
        device: DeviceId,
        token: &Token,
        local: bool,
    ) -> Result<(Stream, HelloReply), Error> {
        let mut s = Stream::connect(addr, local).await?;
        let bytes = token.as_bytes();
        let hello = Hello {
            min_version: 1,
            max_version: PROTOCOL_VERSION,
            device_id: device,
            token_len: bytes.len() as u16,
        };
        let mut msg = hello.encode().to_vec();
        msg.extend_from_slice(bytes);
        s.write_all(&msg).await?;
        let mut b = [0u8; HELLO_REPLY_LEN];
        s.read_exact(&mut b).await?;
        let reply = HelloReply::decode(&b)
            .map_err(|_| Error::Protocol("bad handshake reply magic".into()))?;
        match reply.status_enum() {
            Status::Ok => Ok((s, reply)),
            st => Err(Error::Handshake(st)),
        }
    }

    /// What the node answered at the handshake (block size, limits, lent range, capabilities).
    pub fn info(&self) -> &HelloReply {
        &self.inner.info
    }

    /// Whether this connection uses the node's same-host socket rather than TCP.
    pub fn is_local(&self) -> bool {
        self.inner.local
    }

    async fn call(
        &self,
        op: Op,
        flags: u8,
        offset: u64,
        length: u64,
        payload: &[u8],
        dest: Dest,
    ) -> Result<Done, Error> {
        let inner = &self.inner;
        let slot = Arc::clone(&inner.slots)
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed)?;
        let tag = inner.next_tag.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock(&inner.pending);
            if p.closed {
                return Err(Error::Closed);
            }
            p.waiters.insert(
                tag,
                Waiter {
                    op,
                    dest,
                    tx,
                    _slot: slot,
                },
            );
        }
        let header = RequestHeader::new(op, flags, Tag(tag), offset, length).encode();
        if header.len() + payload.len() <= SMALL_FRAME {
            // Once the writer task has it the frame is sent whole, whatever becomes of this
            // call; before that, dropping the call takes it back out.
            {
                let mut q = lock(&inner.outbox.queue);
                let start = q.bytes.len();
                q.bytes.extend_from_slice(&header);
                q.bytes.extend_from_slice(payload);
                let end = q.bytes.len();
                q.frames.push((tag, start, end));
            }
            let mut unsent = Unsent {
                inner,
                tag,
                armed: true,
            };
            inner.outbox.kick.notify_one();
            let done = rx.await;
            unsent.armed = false;
            let done = done.map_err(|_| Error::Closed)??;
            return match done.header.status_enum() {
                Status::Ok => Ok(done),
                status => Err(Error::Request { op, status }),
            };
        }
        let mut frame = Frame {
            inner: Arc::clone(inner),
            tag,
            head: &header,
            body: payload,
            writer: None,
            state: FrameState::Queued,
        };
        match frame.send().await {
            // Stopped while queued or sending: the waiter already holds the reason (a protocol
            // error, a close), which the reply channel below hands back.
            Ok(()) | Err(Error::Closed) => {}
            Err(e) => return Err(e),
        }
        drop(frame);
        let done = rx.await.map_err(|_| Error::Closed)??;
        match done.header.status_enum() {
            Status::Ok => Ok(done),
            status => Err(Error::Request { op, status }),
        }
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        let done = self
            .call(Op::Read, 0, offset, len as u64, &[], Dest::Vec(len))
            .await?;
        Ok(done.data)
    }

    /// Reads `buf.len()` bytes at `offset` straight into `buf`, and gives it back.
    pub async fn read_into(&self, offset: u64, buf: AlignedBuf) -> Result<AlignedBuf, Error> {
        let len = buf.len() as u64;
        let done = self
            .call(Op::Read, 0, offset, len, &[], Dest::Buf(buf))
            .await?;
        match done.dest {
            Dest::Buf(b) => Ok(b),
            _ => Err(Error::Protocol("read buffer lost".into())),
        }
    }

    /// Writes `data` at `offset`; with `fua` it is durable when this returns.
    pub async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), Error> {
        let flags = if fua { FLAG_FUA } else { 0 };
        self.call(
            Op::Write,
            flags,
            offset,
            data.len() as u64,
            data,
            Dest::None,
        )
        .await
        .map(|_| ())
    }

    /// Makes every write acknowledged so far durable.
    pub async fn flush(&self) -> Result<(), Error> {
        self.call(Op::Flush, 0, 0, 0, &[], Dest::None)
            .await
            .map(|_| ())
    }

    /// Discards (deallocates) a range.
    pub async fn discard(&self, offset: u64, len: u64) -> Result<(), Error> {
        self.call(Op::Discard, 0, offset, len, &[], Dest::None)
            .await
            .map(|_| ())
    }

    /// Makes a range read back as zeroes.
    pub async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), Error> {
        let flags = if fua { FLAG_FUA } else { 0 };
        self.call(Op::WriteZeroes, flags, offset, len, &[], Dest::None)
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
            .call(Op::Search, 0, offset, len, &body, Dest::Hits)
            .await?;
        Ok(SearchResult {
            hits: done
                .data
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            truncated: done.header.flags & REPLY_FLAG_TRUNCATED != 0,
        })
    }

    /// Closes the connection; every request in flight fails with `Closed`.
    pub async fn close(&self) {
        self.inner.fail_all(|| Error::Closed);
        if let Some(h) = lock(&self.inner.reader).take() {
            h.abort();
        }
        self.inner.shutdown_socket().await;
    }
}

/// How far a request's frame got onto the socket.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FrameState {
    /// Nothing written yet: a cancelled request can simply be forgotten.
    Queued,
    /// Part of the frame is on the wire: it must be finished, whatever happens to the caller.
    Partial,
    /// All written (or the connection failed): nothing left to do.
    Done,
}

/// One request's frame (header + payload, borrowed: never copied on the normal path) on its way
/// onto the socket. Dropping it mid-way (the caller's future was cancelled) keeps the stream
/// intact: a queued request is forgotten, a half-written one is finished by a background task.
struct Frame<'a> {
    inner: Arc<Inner>,
    tag: u64,
    head: &'a [u8],
    body: &'a [u8],
    writer: Option<OwnedMutexGuard<WriteHalf>>,
    state: FrameState,
}

impl Frame<'_> {
    /// Takes the write lock and writes the whole frame with vectored writes.
    async fn send(&mut self) -> Result<(), Error> {
        let stopped = &self.inner.stopped;
        let w = tokio::select! {
            biased;
            _ = stopped.acquire() => return Err(Error::Closed),
            w = Arc::clone(&self.inner.writer).lock_owned() => w,
        };
        let w = self.writer.insert(w);
        while !self.head.is_empty() || !self.body.is_empty() {
            let bufs = [IoSlice::new(self.head), IoSlice::new(self.body)];
            let r = tokio::select! {
                biased;
                // The connection failed and our waiter already got its error.
                _ = stopped.acquire() => {
                    self.state = FrameState::Done;
                    return Err(Error::Closed);
                }
                r = w.write_vectored(&bufs) => r,
            };
            let n = match r {
                Ok(0) => Err(std::io::ErrorKind::WriteZero.into()),
                r => r,
            };
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.state = FrameState::Done;
                    self.inner.fail_all(|| Error::Closed);
                    return Err(Error::Io(e));
                }
            };
            self.state = FrameState::Partial;
            let from_head = n.min(self.head.len());
            self.head = &self.head[from_head..];
            self.body = &self.body[n - from_head..];
        }
        self.state = FrameState::Done;
        self.writer = None;
        Ok(())
    }
}

impl Drop for Frame<'_> {
    fn drop(&mut self) {
        match self.state {
            FrameState::Done => {}
            FrameState::Queued => {
                // Never sent, so no reply will come: drop the waiter (and its queue slot).
                lock(&self.inner.pending).waiters.remove(&self.tag);
            }
            FrameState::Partial => {
                // The only copy of a payload: the caller's borrow ends here, the frame must not.
                let rest = [self.head, self.body].concat();
                let inner = Arc::clone(&self.inner);
                match (self.writer.take(), tokio::runtime::Handle::try_current()) {
                    (Some(mut w), Ok(rt)) => {
                        rt.spawn(async move {
                            let r = tokio::select! {
                                biased;
                                _ = inner.stopped.acquire() => return,
                                r = w.write_all(&rest) => r,
                            };
                            if let Err(e) = r {
                                tracing::debug!("finishing a cancelled request's frame: {e}");
                                inner.fail_all(|| Error::Closed);
                            }
                        });
                    }
                    _ => inner.fail_all(|| Error::Closed),
                }
            }
        }
    }
}

/// Reads replies until the socket closes or the node breaks the protocol; returns why it stopped.
async fn read_replies(rd: ReadHalf, inner: &std::sync::Weak<Inner>) -> Error {
    let mut rd = tokio::io::BufReader::with_capacity(64 << 10, rd);
    let mut hb = [0u8; REPLY_HEADER_LEN];
    loop {
        if let Err(e) = rd.read_exact(&mut hb).await {
            return Error::Io(e);
        }
        let header = match ReplyHeader::decode(&hb) {
            Ok(h) => h,
            Err(_) => return Error::Protocol("bad reply magic".into()),
        };
        // Only a weak reference between replies, so dropping every Connection ends this task.
        let Some(strong) = inner.upgrade() else {
            return Error::Closed;
        };
        let waiter = lock(&strong.pending).waiters.remove(&header.tag.0);
        drop(strong);
        let Some(mut w) = waiter else {
            return Error::Protocol(format!("reply for unknown tag {}", header.tag));
        };
        let len = header.payload_len as usize;
        let ok = header.status_enum() == Status::Ok;
        let expected = match (&w.dest, ok) {
            (Dest::Vec(n), true) => Some(*n),
            (Dest::Buf(b), true) => Some(b.len()),
            (Dest::Hits, true) if len.is_multiple_of(8) => Some(len),
            (Dest::Hits, true) => None,
            (Dest::None, _) | (_, false) => Some(0),
        };
        if expected != Some(len) {
            let msg = format!(
                "{:?} reply for tag {} carries {len} bytes, expected {expected:?}",
                w.op, header.tag
            );
            let _ = w.tx.send(Err(Error::Protocol(msg.clone())));
            return Error::Protocol(msg);
        }
        let mut data = Vec::new();
        let r = match &mut w.dest {
            Dest::Buf(b) => rd.read_exact(b.as_mut_slice()).await.map(|_| ()),
            _ if len > 0 => {
                data = vec![0u8; len];
                rd.read_exact(&mut data).await.map(|_| ())
            }
            _ => Ok(()),
        };
        if let Err(e) = r {
            let _ = w.tx.send(Err(Error::Closed));
            return Error::Io(e);
        }
        let _ = w.tx.send(Ok(Done {
            header,
            dest: w.dest,
            data,
        }));
    }
}
