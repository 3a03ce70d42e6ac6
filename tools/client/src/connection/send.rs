//! Sending: requests go out in batches, written by whoever is sending at that moment.
//!
//! A small request (header and payload up to [`SMALL_FRAME`] bytes) is appended to the queue.
//! If nobody is writing to the socket or about to, its caller becomes the writer: it yields once
//! (so that the other tasks, or the other futures of its own task, that are ready to run queue
//! their requests too), then takes the whole queue and writes it with one system call, again
//! until the queue is empty. At queue depth N a burst costs about one write, not N, and no task
//! is woken to do it. Only when the socket is full does the connection's writer task take
//! over (it waits for room); callers never wait for the socket themselves.
//!
//! A large request (a big WRITE) is written by its caller straight from its buffer, once it has
//! the socket to itself. If that call is dropped halfway through the frame, the rest of the frame
//! is copied and the writer task finishes it: the stream never carries half a frame.

use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::Notify;

use super::Inner;
use crate::Error;

/// Frames up to this size (header included) are copied into the queue and batched.
pub const SMALL_FRAME: usize = 64 << 10;

#[derive(Default)]
pub(crate) struct SendQueue {
    /// Frames appended and not yet taken by a writer, back to back.
    bytes: Vec<u8>,
    /// Where each queued frame is in `bytes`, by tag (to take back a cancelled one).
    frames: Vec<(u64, usize, usize)>,
    /// Bytes that must go out before anything queued: the rest of a frame cut off midway.
    head: Vec<u8>,
    /// A spare buffer, swapped with `bytes` so batches reuse their allocations.
    spare: Vec<u8>,
    /// Someone is writing to the socket (a caller or the writer task).
    busy: bool,
    /// A caller will write the queue in a moment (it let other tasks queue theirs first).
    flusher: bool,
    /// Large requests waiting for the socket.
    large_waiting: usize,
}

pub(crate) struct Sender {
    queue: Mutex<SendQueue>,
    /// Woken when `busy` goes false and a large request waits.
    idle: Notify,
    /// Hands the socket to the writer task.
    pub(crate) kick: Arc<Notify>,
}

fn lock(m: &Mutex<SendQueue>) -> MutexGuard<'_, SendQueue> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The spare buffer, empty (it must never carry a sent batch back into the queue).
fn take_spare(q: &mut SendQueue) -> Vec<u8> {
    let mut spare = std::mem::take(&mut q.spare);
    spare.clear();
    spare
}

impl Sender {
    pub(crate) fn new() -> Self {
        Self {
            queue: Mutex::new(SendQueue::default()),
            idle: Notify::new(),
            kick: Arc::new(Notify::new()),
        }
    }

    /// Drops a frame that no writer has taken yet; false if it is already on its way.
    pub(crate) fn take_back(&self, tag: u64) -> bool {
        let mut q = lock(&self.queue);
        let Some(i) = q.frames.iter().position(|f| f.0 == tag) else {
            return false;
        };
        let (_, start, end) = q.frames.remove(i);
        q.bytes.drain(start..end);
        for f in &mut q.frames[i..] {
            f.1 -= end - start;
            f.2 -= end - start;
        }
        true
    }

    /// Marks the socket free; wakes a large request waiting for it.
    fn set_idle(&self, mut q: MutexGuard<'_, SendQueue>) {
        q.busy = false;
        let wake = q.large_waiting > 0;
        drop(q);
        if wake {
            self.idle.notify_waiters();
        }
    }
}

impl Inner {
    /// Queues a small frame. Returns true when this caller is to write the queue: nobody is
    /// writing or about to. It first lets the other ready tasks queue theirs (see
    /// [`Inner::flush_queued`]), so a burst of requests goes out in one system call.
    pub(super) fn queue_small(&self, tag: u64, header: &[u8], payload: &[u8]) -> bool {
        let mut q = lock(&self.send.queue);
        let start = q.bytes.len();
        q.bytes.extend_from_slice(header);
        q.bytes.extend_from_slice(payload);
        let end = q.bytes.len();
        q.frames.push((tag, start, end));
        if q.busy || q.flusher {
            return false;
        }
        q.flusher = true;
        true
    }

    /// The caller that [`Inner::queue_small`] chose writes what is queued, unless a writer
    /// already took it.
    pub(super) fn flush_queued(&self) {
        let batch = {
            let mut q = lock(&self.send.queue);
            q.flusher = false;
            if q.busy || q.bytes.is_empty() {
                return;
            }
            q.busy = true;
            q.frames.clear();
            let spare = take_spare(&mut q);
            std::mem::replace(&mut q.bytes, spare)
        };
        self.write_inline(batch);
    }

    /// Writes `batch` and whatever is queued meanwhile, without waiting: when the socket is
    /// full the rest goes to the writer task. The caller holds `busy`.
    fn write_inline(&self, mut batch: Vec<u8>) {
        let mut at = 0;
        loop {
            while at < batch.len() {
                match self.sock.write_vectored(&[IoSlice::new(&batch[at..])]) {
                    Ok(0) => {
                        self.fail(Error::Closed);
                        return;
                    }
                    Ok(n) => at += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let mut q = lock(&self.send.queue);
                        q.head.extend_from_slice(&batch[at..]);
                        batch.clear();
                        q.spare = batch;
                        drop(q);
                        // The writer task now owns the socket (busy stays set).
                        self.send.kick.notify_one();
                        return;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!("sending requests: {e}");
                        self.fail(Error::Closed);
                        return;
                    }
                }
            }
            batch.clear();
            at = 0;
            let mut q = lock(&self.send.queue);
            if q.bytes.is_empty() {
                q.spare = batch;
                self.send.set_idle(q);
                return;
            }
            q.frames.clear();
            std::mem::swap(&mut q.bytes, &mut batch);
        }
    }

    /// Waits until this large request may write the socket itself; returns what was queued
    /// before it (to go first). `Err` when the connection stopped.
    pub(super) async fn own_socket(&self) -> Result<Vec<u8>, Error> {
        loop {
            let idle = self.send.idle.notified();
            tokio::pin!(idle);
            {
                let mut q = lock(&self.send.queue);
                if self.stopped() {
                    return Err(Error::Closed);
                }
                if !q.busy {
                    q.busy = true;
                    q.frames.clear();
                    let spare = take_spare(&mut q);
                    return Ok(std::mem::replace(&mut q.bytes, spare));
                }
                q.large_waiting += 1;
                idle.as_mut().enable();
            }
            idle.await;
            lock(&self.send.queue).large_waiting -= 1;
        }
    }

    /// Writes `bufs` (as much as the socket takes now); `Ok(0)` only when all were empty.
    pub(super) fn write_now(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        self.sock.write_vectored(bufs)
    }

    /// Waits until the socket has room.
    pub(super) async fn writable(&self) -> std::io::Result<()> {
        self.sock.writable().await
    }

    /// A large request has written its frame: writes what was queued meanwhile, frees the socket.
    pub(super) fn release_socket(&self) {
        let batch = {
            let mut q = lock(&self.send.queue);
            if q.bytes.is_empty() {
                self.send.set_idle(q);
                return;
            }
            q.frames.clear();
            let spare = take_spare(&mut q);
            std::mem::replace(&mut q.bytes, spare)
        };
        self.write_inline(batch);
    }

    /// A large request was cut off midway: `rest` (copied) goes out first, by the writer task.
    pub(super) fn hand_over_rest(&self, rest: &[u8]) {
        let mut q = lock(&self.send.queue);
        let mut head = std::mem::take(&mut q.head);
        head.extend_from_slice(rest);
        q.head = head;
        drop(q);
        self.send.kick.notify_one();
    }

    /// Wakes whoever waits for the socket (the connection stopped).
    pub(super) fn wake_senders(&self) {
        self.send.idle.notify_waiters();
        self.send.kick.notify_one();
    }
}

/// The writer task: takes over the socket when a caller found it full, writes everything
/// queued, then frees it. Holds the connection only while it writes.
pub(super) async fn writer_task(inner: Weak<Inner>, kick: Arc<Notify>) {
    loop {
        kick.notified().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.stopped() {
            return;
        }
        if let Err(e) = drain_queue(&inner).await {
            tracing::debug!("sending requests: {e}");
            inner.fail(Error::Closed);
            return;
        }
    }
}

async fn drain_queue(inner: &Inner) -> std::io::Result<()> {
    let mut batch = Vec::new();
    loop {
        {
            let mut q = lock(&inner.send.queue);
            batch.clear();
            if q.head.is_empty() && q.bytes.is_empty() {
                q.spare = batch;
                inner.send.set_idle(q);
                return Ok(());
            }
            batch.append(&mut q.head);
            batch.append(&mut q.bytes);
            q.frames.clear();
        }
        let mut at = 0;
        while at < batch.len() {
            if inner.stopped.load(Ordering::Acquire) {
                return Ok(());
            }
            match inner.write_now(&[IoSlice::new(&batch[at..])]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => inner.writable().await?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
