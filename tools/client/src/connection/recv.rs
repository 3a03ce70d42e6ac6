//! Receiving: one caller at a time reads the socket for everyone.
//!
//! The reader is whichever waiting caller got there first (the *leader*). It reads replies back
//! to back through one buffer (many per system call), checks each against its request with the
//! wire crate's framer and expected-payload rule, copies READ data into that request's buffer and
//! wakes its caller, until its own reply is in. Then it steps down and wakes one other waiting
//! caller to take over. A single task with many requests in flight therefore reads all of their
//! replies itself, and no task exists just to read. A request whose caller went away keeps its
//! slot until its reply is read; if nobody is left to read, a short-lived task drains those
//! replies (the only task spawned, and only after a cancellation).

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use dasmesh_wire::{check_reply, Event, Framer, ReplyHeader};

use super::slots::{Dest, Phase, SlotState};
use super::Inner;
use crate::Error;

/// The receive buffer's size: many small replies per system call.
pub(crate) const RECV_BUF: usize = 256 << 10;
/// Payloads at least this long are read straight into their destination.
const DIRECT_MIN: u64 = 32 << 10;

pub(crate) struct Recv {
    buf: Box<[u8]>,
    framer: Framer<ReplyHeader>,
    /// The slot whose payload is being read.
    current: Option<usize>,
    /// The next receive asks the socket itself (the runtime said readable, or we spin).
    ask: bool,
}

impl Recv {
    pub(crate) fn new() -> Self {
        Self {
            buf: vec![0u8; RECV_BUF].into_boxed_slice(),
            framer: Framer::new(),
            current: None,
            ask: false,
        }
    }
}

/// Why the leader stopped reading.
pub(super) enum Drive {
    /// `done()` holds (its own reply is in, or nothing is left to drain).
    Done,
    /// The socket has nothing more; the caller's task is registered for when it has.
    Pending,
    /// The connection failed (every waiter has its error).
    Failed,
}

impl Inner {
    fn recv(&self) -> MutexGuard<'_, Recv> {
        self.recv.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads and hands out replies until `done()` or the socket would block. Only the leader
    /// calls this.
    pub(super) fn drive(&self, cx: &mut Context<'_>, done: &dyn Fn() -> bool) -> Drive {
        let mut recv = self.recv();
        let mut spin_until: Option<Instant> = None;
        loop {
            if self.stopped() {
                return Drive::Failed;
            }
            if done() {
                return Drive::Done;
            }
            let r = match self.read_direct(&mut recv) {
                Some(r) => r,
                None => self.read_buffered(&mut recv),
            };
            let asked = std::mem::replace(&mut recv.ask, !self.spin.is_zero());
            match r {
                Ok(()) => spin_until = None,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !self.spin.is_zero() {
                        let until = *spin_until.get_or_insert_with(|| Instant::now() + self.spin);
                        if Instant::now() < until {
                            std::hint::spin_loop();
                            continue;
                        }
                    }
                    match self.sock.poll_read_ready(cx) {
                        // After a receive of our own that found nothing, Ready is stale: it
                        // is cleared, and the socket asked once more (for an event that came
                        // in between). Otherwise the read that found the socket empty has
                        // cleared it and Ready is news; the socket is asked itself all the
                        // same, so a readiness that try_read does not see (a runtime shut
                        // down) cannot loop without a system call.
                        Poll::Ready(Ok(())) => {
                            if asked {
                                self.sock.clear_read();
                            }
                            recv.ask = true;
                        }
                        Poll::Ready(Err(e)) => {
                            self.fail_io(e);
                            return Drive::Failed;
                        }
                        Poll::Pending => return Drive::Pending,
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail_io(e);
                    return Drive::Failed;
                }
            }
        }
    }

    /// One receive: unless `ask`, only when the runtime has seen the socket readable since a
    /// receive last found it empty ([`Sock::try_read`]), so in a ping-pong of batches the
    /// first look after sending costs no system call.
    fn sock_read(&self, ask: bool, buf: &mut [u8]) -> std::io::Result<usize> {
        if ask {
            self.sock.read(buf)
        } else {
            self.sock.try_read(buf)
        }
    }

    fn fail_io(&self, e: std::io::Error) {
        if e.kind() == std::io::ErrorKind::InvalidData {
            self.fail(Error::Protocol(e.to_string()));
        } else {
            tracing::debug!("connection reader stopped: {e}");
            self.fail(Error::Closed);
        }
    }

    /// A large payload straight from the socket into its caller's buffer (`None`: not the case).
    fn read_direct(&self, recv: &mut Recv) -> Option<std::io::Result<()>> {
        let remaining = recv.framer.payload_remaining();
        if remaining < DIRECT_MIN {
            return None;
        }
        let idx = recv.current?;
        let ask = recv.ask;
        let mut s = self.slots.lock(idx);
        if s.phase != Phase::Waiting {
            return None;
        }
        let filled = s.filled;
        let room = s.dest.room(filled)?;
        let want = room.len().min(remaining as usize);
        let n = match self.sock_read(ask, &mut room[..want]) {
            Ok(0) => return Some(Err(eof())),
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        s.filled += n;
        recv.framer.skip_payload(n as u64);
        if recv.framer.payload_remaining() == 0 {
            recv.current = None;
            self.finish(idx, s);
        }
        Some(Ok(()))
    }

    /// One receive into the buffer, and every reply (or part of one) it holds handed out.
    fn read_buffered(&self, recv: &mut Recv) -> std::io::Result<()> {
        let Recv {
            buf,
            framer,
            current,
            ask,
        } = recv;
        let n = match self.sock_read(*ask, buf) {
            Ok(0) => return Err(eof()),
            Ok(n) => n,
            Err(e) => return Err(e),
        };
        let mut at = 0;
        while at < n {
            let (used, event) = framer
                .next(&buf[at..n])
                .map_err(|_| bad("bad reply magic".into()))?;
            at += used;
            match event {
                None => {}
                Some(Event::Header(h)) => {
                    let idx = self.on_header(&h)?;
                    if h.payload_len > 0 {
                        *current = Some(idx);
                    }
                }
                Some(Event::Payload(bytes)) => {
                    let idx = current.expect("payload follows a header");
                    let mut s = self.slots.lock(idx);
                    if s.phase == Phase::Waiting {
                        let filled = s.filled;
                        match s.dest.room(filled) {
                            Some(room) => room[..bytes.len()].copy_from_slice(bytes),
                            None => {
                                if let Dest::Hits(v) = &mut s.dest {
                                    v.extend_from_slice(bytes);
                                }
                            }
                        }
                    }
                    s.filled += bytes.len();
                    if framer.payload_remaining() == 0 {
                        *current = None;
                        self.finish(idx, s);
                    }
                }
            }
        }
        Ok(())
    }

    /// Matches a reply header to its request; a reply without payload finishes it.
    fn on_header(&self, h: &ReplyHeader) -> std::io::Result<usize> {
        let idx = (h.tag.0 & 0xffff) as usize;
        if idx >= self.slots.len() {
            return Err(bad(format!("reply for unknown tag {}", h.tag)));
        }
        let mut s = self.slots.lock(idx);
        if s.tag != h.tag.0
            || !matches!(s.phase, Phase::Waiting | Phase::Abandoned | Phase::TimedOut)
        {
            return Err(bad(format!("reply for unknown tag {}", h.tag)));
        }
        if let Err(msg) = check_reply(s.op, s.length, s.max_hits, h) {
            // This request learns why; fail() gives everyone else the same reason.
            if s.phase == Phase::Waiting {
                self.slots
                    .wake_done(idx, s, Some(Error::Protocol(msg.clone())));
            }
            return Err(bad(msg));
        }
        s.reply = Some(*h);
        if h.payload_len == 0 {
            self.finish(idx, s);
        } else if let Dest::Hits(v) = &mut s.dest {
            v.reserve(h.payload_len as usize);
        }
        Ok(idx)
    }

    /// A reply is complete: its caller is woken, or an abandoned slot is freed.
    fn finish(&self, idx: usize, mut s: MutexGuard<'_, SlotState>) {
        match s.phase {
            Phase::Waiting => self.slots.wake_done(idx, s, None),
            // Its caller has not taken its Timeout yet: it gets that, and the slot is then free.
            Phase::TimedOut => self.slots.wake_done(idx, s, Some(Error::Timeout)),
            Phase::Abandoned => {
                s.phase = Phase::Free;
                s.dest = Dest::None;
                drop(s);
                self.slots.release(idx);
                self.abandoned.fetch_sub(1, Ordering::AcqRel);
                self.permits.add_permits(1);
            }
            Phase::Free | Phase::Done => {}
        }
    }

    /// The leader steps down: another waiting caller is woken to take over, or, if only
    /// abandoned requests are left in flight, a task drains their replies.
    pub(super) fn step_down(self: &Arc<Self>) {
        self.leader.store(false, Ordering::SeqCst);
        if let Some(idx) = self.slots.first_waiting() {
            let w = self.slots.lock(idx).waker.take();
            self.slots.set_waiting(idx, false);
            if let Some(w) = w {
                w.wake();
            }
            return;
        }
        if self.abandoned.load(Ordering::Acquire) > 0 && !self.stopped() {
            let inner = Arc::clone(self);
            self.rt.spawn(drain(inner));
        }
    }
}

/// Reads and drops the replies of requests whose callers went away, while nobody else reads.
async fn drain(inner: Arc<Inner>) {
    let mut leading = false;
    std::future::poll_fn(|cx| {
        if !leading {
            if inner
                .leader
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                // Someone else reads: the abandoned replies are theirs to drop.
                return Poll::Ready(());
            }
            leading = true;
        }
        let nothing_left = || inner.abandoned.load(Ordering::Acquire) == 0;
        let waiter = || inner.slots.first_waiting().is_some();
        match inner.drive(cx, &|| nothing_left() || waiter()) {
            Drive::Pending => Poll::Pending,
            Drive::Done | Drive::Failed => {
                leading = false;
                inner.step_down();
                Poll::Ready(())
            }
        }
    })
    .await;
}

fn eof() -> std::io::Error {
    std::io::ErrorKind::UnexpectedEof.into()
}

fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}
