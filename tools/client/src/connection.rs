//! One pipelined connection to one device of a node.
//!
//! Requests are written under a lock on the socket's write half (header and payload in one
//! vectored write, no copy of the payload); one reader task reads replies and hands each to the
//! request waiting on its tag, reading READ data straight into that request's buffer.

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dasmesh_wire::{
    DeviceId, Hello, HelloReply, Op, ReplyHeader, RequestHeader, SearchBody, Status, Tag, Token,
    FLAG_FUA, HELLO_REPLY_LEN, PROTOCOL_VERSION, REPLY_FLAG_TRUNCATED, REPLY_HEADER_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Semaphore};

use crate::{AlignedBuf, Error};

/// How to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Requests kept in flight at most (also capped by the node's `max_inflight`).
    pub queue_depth: usize,
    /// Give up connecting and handshaking after this long.
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            queue_depth: 64,
            connect_timeout: Duration::from_secs(5),
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
}

#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, Waiter>,
    closed: bool,
}

struct Inner {
    info: HelloReply,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Mutex<Pending>,
    next_tag: AtomicU64,
    slots: Semaphore,
    broken: AtomicBool,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Inner {
    /// Fails every waiter and refuses new requests.
    fn fail_all(&self, why: impl Fn() -> Error) {
        let waiters = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.closed = true;
            std::mem::take(&mut p.waiters)
        };
        for (_, w) in waiters {
            let _ = w.tx.send(Err(why()));
        }
        self.slots.close();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(h) = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.abort();
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

/// Marks the connection broken if a request is cancelled halfway through writing its frame.
struct WriteGuard<'a> {
    inner: &'a Inner,
    armed: bool,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.broken.store(true, Ordering::Release);
            self.inner.fail_all(|| Error::Closed);
        }
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
        let fut = Self::handshake(addr, device, token);
        let (stream, info) = tokio::time::timeout(opts.connect_timeout, fut)
            .await
            .map_err(|_| Error::Timeout)??;
        let (rd, wr) = stream.into_split();
        let depth = opts.queue_depth.clamp(1, info.max_inflight.max(1) as usize);
        let inner = Arc::new(Inner {
            info,
            writer: tokio::sync::Mutex::new(wr),
            pending: Mutex::new(Pending::default()),
            next_tag: AtomicU64::new(1),
            slots: Semaphore::new(depth),
            broken: AtomicBool::new(false),
            reader: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
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
            }
        });
        *inner.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(Connection { inner })
    }

    async fn handshake(
        addr: &str,
        device: DeviceId,
        token: &Token,
    ) -> Result<(TcpStream, HelloReply), Error> {
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
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

    async fn call(
        &self,
        op: Op,
        flags: u8,
        offset: u64,
        length: u64,
        payload: &[u8],
        dest: Dest,
    ) -> Result<Done, Error> {
        let inner = &*self.inner;
        let _permit = inner.slots.acquire().await.map_err(|_| Error::Closed)?;
        let tag = inner.next_tag.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.closed {
                return Err(Error::Closed);
            }
            p.waiters.insert(tag, Waiter { op, dest, tx });
        }
        let header = RequestHeader::new(op, flags, Tag(tag), offset, length).encode();
        {
            let mut w = inner.writer.lock().await;
            if inner.broken.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            let mut guard = WriteGuard { inner, armed: true };
            let r = write_all_vectored(&mut w, &header, payload).await;
            guard.armed = false;
            if let Err(e) = r {
                drop(w);
                inner.fail_all(|| Error::Closed);
                return Err(Error::Io(e));
            }
        }
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
        let mut w = self.inner.writer.lock().await;
        let _ = w.shutdown().await;
        self.inner.broken.store(true, Ordering::Release);
        self.inner.fail_all(|| Error::Closed);
    }
}

async fn write_all_vectored(
    w: &mut OwnedWriteHalf,
    head: &[u8],
    body: &[u8],
) -> std::io::Result<()> {
    let (mut h, mut b) = (head, body);
    while !h.is_empty() || !b.is_empty() {
        let n = w
            .write_vectored(&[IoSlice::new(h), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_h = n.min(h.len());
        h = &h[from_h..];
        b = &b[n - from_h..];
    }
    Ok(())
}

/// Reads replies until the socket closes or the node breaks the protocol; returns why it stopped.
async fn read_replies(mut rd: OwnedReadHalf, inner: &std::sync::Weak<Inner>) -> Error {
    let mut hb = [0u8; REPLY_HEADER_LEN];
    loop {
        if let Err(e) = rd.read_exact(&mut hb).await {
            return Error::Io(e);
        }
        let header = match ReplyHeader::decode(&hb) {
            Ok(h) => h,
            Err(_) => return Error::Protocol("bad reply magic".into()),
        };
        let Some(inner) = inner.upgrade() else {
            return Error::Closed;
        };
        let waiter = inner
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiters
            .remove(&header.tag.0);
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
