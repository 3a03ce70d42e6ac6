//! The transmission phase: [`check`] decides what a request header asks for (pure), and
//! [`transmit`] runs one connection: a reader that parses requests and spawns each into its own
//! task, and one writer that sends the replies, batching every reply that is ready into one
//! vectored write.
//!
//! A WRITE's payload is always read off the socket, also when the request is refused, so the
//! stream stays in sync. Memory is bounded per connection: a request takes a slot and its bytes
//! from two budgets before its payload is read, and gives them back once its reply is written;
//! when a budget is spent the reader waits.

use std::io::IoSlice;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::export::{Backend, Data, Export, MAX_BLOCK};
use crate::negotiate::drain;
use crate::poll::Activity;
use crate::proto::{self, Cmd, Errno, Request};

/// Requests in flight per connection at most.
pub const MAX_INFLIGHT: usize = 512;
/// Bytes of READ and WRITE data in flight per connection at most.
pub const MAX_INFLIGHT_BYTES: usize = 256 << 20;
/// The unit the byte budget is counted in.
const BUDGET_UNIT: usize = 4096;
/// Replies sent in one vectored write at most (two slices each; IOV_MAX is 1024).
const MAX_BATCH: usize = 256;

/// What a request asks for, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read `len` bytes at `offset`.
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u32,
    },
    /// Write the payload at `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// With FUA.
        fua: bool,
    },
    /// Flush.
    Flush,
    /// Discard.
    Trim {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// Write zeroes.
    Zeroes {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// With FUA.
        fua: bool,
    },
}

/// The decision on one request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Carry it out.
    Do(Action),
    /// Answer at once with this error (0: success with nothing to do, e.g. a zero length).
    Answer(u32),
    /// `NBD_CMD_DISC`: answer nothing, finish what is in flight, close.
    Disconnect,
    /// The header is not a request (bad magic): hard disconnect, as the spec allows; the
    /// stream cannot be trusted any more.
    Abandon,
}

/// Decides what to do with a request header. The payload of a WRITE follows whatever the verdict
/// (except [`Verdict::Abandon`]); the caller reads it off the socket.
pub fn check(r: &Request, e: &Export) -> Verdict {
    use Verdict::Answer;
    if r.magic != proto::REQUEST_MAGIC {
        return Verdict::Abandon;
    }
    let Some(cmd) = Cmd::from_code(r.kind) else {
        return Answer(Errno::Inval.code());
    };
    let allowed = match cmd {
        Cmd::WriteZeroes => proto::CMD_FLAG_FUA | proto::CMD_FLAG_NO_HOLE,
        // FUA is accepted on every command once SEND_FUA is advertised (the spec says so).
        _ => proto::CMD_FLAG_FUA,
    };
    if r.flags & !allowed != 0 {
        return Answer(Errno::Inval.code());
    }
    let fua = r.flags & proto::CMD_FLAG_FUA != 0;
    let writes = matches!(cmd, Cmd::Write | Cmd::Trim | Cmd::WriteZeroes);
    match cmd {
        Cmd::Disc => return Verdict::Disconnect,
        // Offset and length are reserved for FLUSH; they are ignored.
        Cmd::Flush => return Verdict::Do(Action::Flush),
        _ if writes && e.read_only => return Answer(Errno::Perm.code()),
        _ => {}
    }
    let len = u64::from(r.length);
    let past_end = match r.offset.checked_add(len) {
        Some(end) => end > e.size,
        None => true,
    };
    if past_end {
        // Writes past the end are ENOSPC, reads and trims EINVAL (the spec's error values).
        return Answer(match cmd {
            Cmd::Write | Cmd::WriteZeroes => Errno::NoSpc.code(),
            _ => Errno::Inval.code(),
        });
    }
    let bs = u64::from(e.min_block.max(1));
    if !r.offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
        return Answer(Errno::Inval.code());
    }
    if matches!(cmd, Cmd::Read | Cmd::Write) && r.length > MAX_BLOCK {
        return Answer(Errno::Inval.code());
    }
    if len == 0 {
        return Answer(0);
    }
    Verdict::Do(match cmd {
        Cmd::Read => Action::Read {
            offset: r.offset,
            len: r.length,
        },
        Cmd::Write => Action::Write {
            offset: r.offset,
            fua,
        },
        Cmd::Trim => Action::Trim {
            offset: r.offset,
            len,
        },
        Cmd::WriteZeroes => Action::Zeroes {
            offset: r.offset,
            len,
            fua,
        },
        Cmd::Flush | Cmd::Disc => unreachable!("handled above"),
    })
}

/// One reply on its way to the writer.
struct Reply {
    handle: u64,
    error: u32,
    data: Option<Data>,
    /// The request's budget, given back once the reply is written.
    _permits: Permits,
}

struct Permits {
    _slot: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// How a connection's transmission phase ended.
#[derive(Debug, thiserror::Error)]
pub enum TransmitError {
    /// The socket failed.
    #[error("transmission I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A request header had a bad magic: the connection was dropped.
    #[error("request magic {0:#010x} is not NBD_REQUEST_MAGIC; disconnected")]
    BadMagic(u32),
}

/// Serves requests from `rd`, answering on `wr`, until the client disconnects (Ok), the stream
/// breaks, or `stop` turns true (then: no new requests; what is in flight is finished and
/// answered). Returns when every reply has been written. Each request is counted in `activity`
/// while it runs (see [`crate::poll`]).
pub async fn transmit<R, W, B>(
    rd: R,
    wr: W,
    export: Arc<Export>,
    backend: Arc<B>,
    mut stop: watch::Receiver<bool>,
    activity: Arc<Activity>,
) -> Result<(), TransmitError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
    B: Backend,
{
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    let writer = tokio::spawn(write_replies(wr, rx));
    let slots = Arc::new(Semaphore::new(MAX_INFLIGHT));
    let bytes = Arc::new(Semaphore::new(MAX_INFLIGHT_BYTES / BUDGET_UNIT));
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let mut result = Ok(());
    loop {
        let mut h = [0u8; proto::REQUEST_LEN];
        let got = if rd.buffer().len() >= proto::REQUEST_LEN {
            rd.read_exact(&mut h).await.map(|_| true)
        } else {
            tokio::select! {
                biased;
                r = rd.read_exact(&mut h) => r.map(|_| true),
                _ = stop.wait_for(|s| *s) => Ok(false),
            }
        };
        match got {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => {
                result = Err(e.into());
                break;
            }
        }
        let req = Request::decode(&h);
        let verdict = check(&req, &export);
        let payload = if req.kind == Cmd::Write as u16 {
            req.length as usize
        } else {
            0
        };
        let budget = match verdict {
            Verdict::Do(Action::Read { len, .. }) => len as usize,
            Verdict::Do(Action::Write { .. }) => payload,
            _ => 0,
        };
        let permits = match acquire(&slots, &bytes, budget).await {
            Some(p) => p,
            None => break,
        };
        let action = match verdict {
            Verdict::Abandon => {
                result = Err(TransmitError::BadMagic(req.magic));
                break;
            }
            Verdict::Disconnect => break,
            Verdict::Answer(error) => {
                if payload > 0 {
                    if let Err(e) = drain(&mut rd, payload as u64).await {
                        result = Err(e.into());
                        break;
                    }
                }
                let _ = tx.send(Reply {
                    handle: req.handle,
                    error,
                    data: None,
                    _permits: permits,
                });
                continue;
            }
            Verdict::Do(a) => a,
        };
        let data = if let Action::Write { .. } = action {
            let mut d = vec![0u8; payload];
            if let Err(e) = rd.read_exact(&mut d).await {
                result = Err(e.into());
                break;
            }
            d
        } else {
            Vec::new()
        };
        let tx = tx.clone();
        let backend = Arc::clone(&backend);
        let busy = activity.begin();
        tokio::spawn(async move {
            let (error, data) = match run(&*backend, action, data).await {
                Ok(d) => (0, d),
                Err(f) => {
                    tracing::debug!(handle = req.handle, "request failed: {f}");
                    (f.code.code(), None)
                }
            };
            drop(busy);
            let _ = tx.send(Reply {
                handle: req.handle,
                error,
                data,
                _permits: permits,
            });
        });
    }
    // Requests in flight hold their own senders: the writer ends after the last reply.
    drop(tx);
    let written = writer.await.unwrap_or_else(|e| {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic())
        }
        Ok(())
    });
    result?;
    written.map_err(Into::into)
}

async fn acquire(slots: &Arc<Semaphore>, bytes: &Arc<Semaphore>, len: usize) -> Option<Permits> {
    let slot = Arc::clone(slots).acquire_owned().await.ok()?;
    let units = len.div_ceil(BUDGET_UNIT) as u32;
    let b = if units > 0 {
        Some(Arc::clone(bytes).acquire_many_owned(units).await.ok()?)
    } else {
        None
    };
    Some(Permits {
        _slot: slot,
        _bytes: b,
    })
}

async fn run<B: Backend>(
    b: &B,
    action: Action,
    data: Vec<u8>,
) -> Result<Option<Data>, crate::export::Failure> {
    match action {
        Action::Read { offset, len } => b.read(offset, len as usize).await.map(Some),
        Action::Write { offset, fua } => b.write(offset, &data, fua).await.map(|()| None),
        Action::Flush => b.flush().await.map(|()| None),
        Action::Trim { offset, len } => b.discard(offset, len).await.map(|()| None),
        Action::Zeroes { offset, len, fua } => {
            b.write_zeroes(offset, len, fua).await.map(|()| None)
        }
    }
}

/// The one writer of a connection: takes every reply that is ready and sends them in one
/// vectored write (headers and READ data, no copy of the data).
async fn write_replies<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Reply>,
) -> std::io::Result<()> {
    let mut batch: Vec<Reply> = Vec::with_capacity(MAX_BATCH);
    let mut headers: Vec<[u8; proto::SIMPLE_REPLY_LEN]> = Vec::with_capacity(MAX_BATCH);
    loop {
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            break;
        }
        headers.clear();
        headers.extend(batch.iter().map(|r| proto::simple_reply(r.handle, r.error)));
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * batch.len());
        for (r, h) in batch.iter().zip(&headers) {
            slices.push(IoSlice::new(h));
            if let Some(d) = r.data.as_ref().filter(|_| r.error == 0) {
                slices.push(IoSlice::new(d.as_slice()));
            }
        }
        let r = write_all_vectored(&mut wr, &mut slices).await;
        drop(slices);
        batch.clear();
        if let Err(e) = r {
            // The client is gone; the reader finds out on its side.
            tracing::debug!("writing replies: {e}");
            rx.close();
            return Err(e);
        }
    }
    let _ = wr.shutdown().await;
    Ok(())
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !slices.is_empty() {
        let n = wr.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(read_only: bool) -> Export {
        Export {
            name: "v".into(),
            description: String::new(),
            size: 1 << 20,
            min_block: 4096,
            read_only,
        }
    }

    fn req(kind: Cmd, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            magic: proto::REQUEST_MAGIC,
            flags,
            kind: kind as u16,
            handle: 1,
            offset,
            length,
        }
    }

    const EINVAL: Verdict = Verdict::Answer(22);

    #[test]
    fn valid_requests() {
        let e = export(false);
        assert_eq!(
            check(&req(Cmd::Read, 0, 4096, 8192), &e),
            Verdict::Do(Action::Read {
                offset: 4096,
                len: 8192
            })
        );
        assert_eq!(
            check(&req(Cmd::Write, 1, 0, 4096), &e),
            Verdict::Do(Action::Write {
                offset: 0,
                fua: true
            })
        );
        assert_eq!(
            check(&req(Cmd::WriteZeroes, 3, 0, 1 << 20), &e),
            Verdict::Do(Action::Zeroes {
                offset: 0,
                len: 1 << 20,
                fua: true
            })
        );
        assert_eq!(
            check(&req(Cmd::Flush, 1, 7, 9), &e),
            Verdict::Do(Action::Flush)
        );
        assert_eq!(check(&req(Cmd::Disc, 0, 0, 0), &e), Verdict::Disconnect);
        assert_eq!(check(&req(Cmd::Read, 0, 4096, 0), &e), Verdict::Answer(0));
    }

    #[test]
    fn refusals_follow_the_spec() {
        let e = export(false);
        let mut bad = req(Cmd::Read, 0, 0, 4096);
        bad.magic = 0x1256_0953;
        assert_eq!(check(&bad, &e), Verdict::Abandon);
        let mut unknown = req(Cmd::Read, 0, 0, 4096);
        unknown.kind = 5;
        assert_eq!(check(&unknown, &e), EINVAL);
        // NO_HOLE only with WRITE_ZEROES; DF never (no structured replies); unknown bits.
        assert_eq!(check(&req(Cmd::Write, 2, 0, 4096), &e), EINVAL);
        assert_eq!(check(&req(Cmd::Read, 4, 0, 4096), &e), EINVAL);
        assert_eq!(check(&req(Cmd::Read, 0x100, 0, 4096), &e), EINVAL);
        // Past the end: reads and trims EINVAL, writes and zeroes ENOSPC.
        assert_eq!(check(&req(Cmd::Read, 0, 1 << 20, 4096), &e), EINVAL);
        assert_eq!(check(&req(Cmd::Trim, 0, 1 << 20, 4096), &e), EINVAL);
        assert_eq!(
            check(&req(Cmd::Write, 0, (1 << 20) - 4096, 8192), &e),
            Verdict::Answer(28)
        );
        assert_eq!(
            check(&req(Cmd::WriteZeroes, 0, u64::MAX - 10, 4096), &e),
            Verdict::Answer(28)
        );
        // Misaligned.
        assert_eq!(check(&req(Cmd::Read, 0, 512, 4096), &e), EINVAL);
        assert_eq!(check(&req(Cmd::Write, 0, 0, 512), &e), EINVAL);
        // Larger than the maximum block size.
        let big = Export {
            size: 1 << 40,
            ..export(false)
        };
        assert_eq!(check(&req(Cmd::Read, 0, 0, MAX_BLOCK + 4096), &big), EINVAL);
        assert_eq!(check(&req(Cmd::Write, 0, 0, u32::MAX - 4095), &big), EINVAL);
        assert!(matches!(
            check(&req(Cmd::Trim, 0, 0, u32::MAX - 4095), &big),
            Verdict::Do(_)
        ));
    }

    #[test]
    fn read_only_refuses_writes_with_eperm() {
        let e = export(true);
        for c in [Cmd::Write, Cmd::Trim, Cmd::WriteZeroes] {
            assert_eq!(check(&req(c, 0, 0, 4096), &e), Verdict::Answer(1));
        }
        assert!(matches!(
            check(&req(Cmd::Read, 0, 0, 4096), &e),
            Verdict::Do(_)
        ));
        assert_eq!(
            check(&req(Cmd::Flush, 0, 0, 0), &e),
            Verdict::Do(Action::Flush)
        );
    }
}
