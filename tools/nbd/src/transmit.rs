//! The transmission phase: [`check`] decides what a request header asks for (pure), and
//! [`transmit`] runs one connection: a reader that parses requests and queues them, a
//! dispatcher that runs each in its own task once the memory budget has room for it, and one
//! writer that sends the replies, batching every reply that is ready into one vectored write.
//!
//! A WRITE's payload is always read off the socket, also when the request is refused, so the
//! stream stays in sync. Memory is bounded across connections by [`crate::budget`], and per
//! connection by a count of requests read but not yet answered. A client that goes away without
//! `NBD_CMD_DISC` has its queued requests dropped and its READs in flight abandoned.

use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::budget::{Grant, Share};
use crate::export::{Backend, Data, Export};
use crate::negotiate::drain;
use crate::poll::Activity;
use crate::proto::{self, Cmd, Request};
pub use crate::request::{check, Action, Verdict};

/// Requests of one connection read but not yet answered, at most (their headers are small:
/// their data is bounded by the budget).
pub const MAX_INFLIGHT: usize = 512;
/// Replies sent in one vectored write at most (two slices each; IOV_MAX is 1024).
const MAX_BATCH: usize = 256;
/// How long a stopping gateway waits for a connection's replies to be taken before it drops
/// the connection: a client that reads no replies would otherwise hold the stop for ever.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the client has gone (its socket reached EOF without `NBD_CMD_DISC`, or broke): set
/// once, by the reader or the writer; every part of the connection stops when it is.
#[derive(Clone)]
struct Gone(Arc<watch::Sender<bool>>);

impl Gone {
    fn new() -> Gone {
        Gone(Arc::new(watch::channel(false).0))
    }

    fn set(&self) {
        self.0.send_replace(true);
    }

    fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`: this returns only once it is set.
        let _ = rx.wait_for(|g| *g).await;
    }
}

/// A request's handle, and what `/metrics` needs of it (`crate::metrics`).
#[derive(Clone, Copy, Debug)]
struct Handle {
    id: u64,
    kind: u16,
    len: u32,
    /// When it was read off the socket (only while metrics are kept).
    at: Option<std::time::Instant>,
}

impl Handle {
    fn of(req: &Request) -> Handle {
        Handle {
            id: req.handle,
            kind: req.kind,
            len: req.length,
            at: crate::metrics::now(),
        }
    }
}

/// A request read off the socket, waiting for the dispatcher.
enum Job {
    /// Answer at once (a refusal, or success with nothing to do).
    Answer {
        handle: Handle,
        error: u32,
        slot: OwnedSemaphorePermit,
    },
    /// Carry out `action`. A WRITE comes with its payload and the budget it was read into; a
    /// READ takes its budget when the dispatcher gets to it.
    Run {
        handle: Handle,
        action: Action,
        data: Vec<u8>,
        grant: Option<Grant>,
        slot: OwnedSemaphorePermit,
    },
}

/// One reply on its way to the writer.
struct Reply {
    handle: Handle,
    error: u32,
    data: Option<Data>,
    /// The request's slot and budget, given back once the reply is written (or dropped).
    _slot: OwnedSemaphorePermit,
    _grant: Grant,
}

/// How a connection's transmission phase ended.
#[derive(Debug, thiserror::Error)]
pub enum TransmitError {
    /// A request header had a bad magic: the connection was dropped.
    #[error("request magic {0:#010x} is not NBD_REQUEST_MAGIC; disconnected")]
    BadMagic(u32),
}

/// What became of a connection's requests when it ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ending {
    /// The client went away (EOF without `NBD_CMD_DISC`, or a broken socket).
    pub gone: bool,
    /// Requests read off the socket but never started, dropped because the client went away.
    pub dropped: u64,
    /// READs in flight abandoned because the client went away (the volume read stops there).
    pub abandoned: u64,
}

#[derive(Default)]
struct Tally {
    dropped: AtomicU64,
    abandoned: AtomicU64,
}

/// Serves requests from `rd`, answering on `wr`, until the client sends `NBD_CMD_DISC`, goes
/// away, or `stop` turns true. After DISC or `stop`: no new requests; those read are carried
/// out and answered (after `stop`, within [`STOP_GRACE`]: then the client counts as gone). When the client goes away (EOF or a socket error on either side), the
/// requests it queued are dropped unstarted and its READs in flight abandoned: nobody is left
/// to read their replies (writes in flight finish, so the volume never sees half a write
/// cancelled mid-way). READ and WRITE data come out of `share` (see [`crate::budget`]). Returns
/// once every request task of the connection has ended. Each request is counted in `activity`,
/// if given, while it runs (see [`crate::poll`]).
pub async fn transmit<R, W, B>(
    rd: R,
    wr: W,
    export: Arc<Export>,
    backend: Arc<B>,
    share: Share,
    stop: watch::Receiver<bool>,
    activity: Option<Arc<Activity>>,
) -> Result<Ending, TransmitError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
    B: Backend,
{
    let gone = Gone::new();
    let tally = Arc::new(Tally::default());
    let share = Arc::new(share);
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    let writer = tokio::spawn(write_replies(wr, rx, gone.clone()));
    let runner = Runner {
        replies: tx,
        backend,
        activity,
        gone: gone.clone(),
        tally: Arc::clone(&tally),
    };
    // Unbounded: the reader takes one of MAX_INFLIGHT slots before it queues a request.
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel::<Job>();
    let queue = Queue {
        jobs: jobs_tx,
        queued: Arc::new(AtomicUsize::new(0)),
    };
    let dispatcher = tokio::spawn(dispatch(
        jobs_rx,
        runner.clone(),
        Arc::clone(&share),
        Arc::clone(&queue.queued),
    ));
    let grace = tokio::spawn({
        let (gone, mut stop) = (gone.clone(), stop.clone());
        async move {
            if stop.wait_for(|s| *s).await.is_ok() {
                tokio::time::sleep(STOP_GRACE).await;
                tracing::warn!(
                    "stopping: replies still not taken after {STOP_GRACE:?}; disconnecting"
                );
                gone.set();
            }
        }
    });
    let result = read_requests(rd, &export, &share, (queue, runner), stop, &gone).await;
    for t in [dispatcher, writer] {
        if let Err(e) = t.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic())
            }
        }
    }
    grace.abort();
    result?;
    Ok(Ending {
        gone: gone.is_set(),
        dropped: tally.dropped.load(Ordering::Relaxed),
        abandoned: tally.abandoned.load(Ordering::Relaxed),
    })
}

/// The dispatcher's queue, and how many jobs it holds not yet started.
struct Queue {
    jobs: mpsc::UnboundedSender<Job>,
    queued: Arc<AtomicUsize>,
}

/// The reader: parses requests and starts each at once when nothing is queued before it and the
/// budget has room for it now (the common case: no hop through another task); otherwise queues
/// it for the dispatcher, so it sees the client's EOF even while the requests before it wait for
/// budget. Returns on DISC, `stop`, a bad magic (an error), or the client gone.
async fn read_requests<R: AsyncRead + Unpin, B: Backend>(
    rd: R,
    export: &Export,
    share: &Share,
    (queue, runner): (Queue, Runner<B>),
    mut stop: watch::Receiver<bool>,
    gone: &Gone,
) -> Result<(), TransmitError> {
    let slots = Arc::new(Semaphore::new(MAX_INFLIGHT));
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    loop {
        let mut h = [0u8; proto::REQUEST_LEN];
        // A stop ends the reading only between requests (a header half read is left unread).
        let whole = rd.buffer().len() >= proto::REQUEST_LEN;
        let got = tokio::select! {
            biased;
            _ = gone.wait() => return Ok(()),
            r = rd.read_exact(&mut h) => r.map(|_| true),
            _ = stop.wait_for(|s| *s), if !whole => Ok(false),
        };
        match got {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return went(gone, "reading requests", &e),
        }
        let req = Request::decode(&h);
        let verdict = check(&req, export);
        let payload = if req.kind == Cmd::Write as u16 {
            req.length as usize
        } else {
            0
        };
        let (answer, action) = match verdict {
            Verdict::Abandon => return Err(TransmitError::BadMagic(req.magic)),
            Verdict::Disconnect => return Ok(()),
            Verdict::Answer(error) => (Some(error), None),
            Verdict::Do(a) => (None, Some(a)),
        };
        let slot = tokio::select! {
            biased;
            _ = gone.wait() => return Ok(()),
            s = Arc::clone(&slots).acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return Ok(()),
            },
        };
        let job = match (answer, action) {
            (_, Some(action @ Action::Write { .. })) => {
                // Back-pressure: the payload is read only once the budget has room for it.
                let grant = tokio::select! {
                    biased;
                    _ = gone.wait() => return Ok(()),
                    g = share.acquire(payload) => g,
                };
                let mut data = vec![0u8; payload];
                let r = tokio::select! {
                    biased;
                    _ = gone.wait() => return Ok(()),
                    r = rd.read_exact(&mut data) => r,
                };
                if let Err(e) = r {
                    return went(gone, "reading a WRITE payload", &e);
                }
                Job::Run {
                    handle: Handle::of(&req),
                    action,
                    data,
                    grant: Some(grant),
                    slot,
                }
            }
            (_, Some(action)) => Job::Run {
                handle: Handle::of(&req),
                action,
                data: Vec::new(),
                grant: None,
                slot,
            },
            (error, None) => {
                if payload > 0 {
                    let r = tokio::select! {
                        biased;
                        _ = gone.wait() => return Ok(()),
                        r = drain(&mut rd, payload as u64) => r,
                    };
                    if let Err(e) = r {
                        return went(gone, "draining a refused WRITE", &e);
                    }
                }
                Job::Answer {
                    handle: Handle::of(&req),
                    error: error.unwrap_or(0),
                    slot,
                }
            }
        };
        // Nothing queued before it (the dispatcher counts a job down once it has started it):
        // start it here if it need not wait.
        let job = if queue.queued.load(Ordering::SeqCst) == 0 {
            match runner.try_start(job, share) {
                Some(j) => j,
                None => continue,
            }
        } else {
            job
        };
        queue.queued.fetch_add(1, Ordering::SeqCst);
        if queue.jobs.send(job).is_err() {
            // The dispatcher stopped: the client is gone.
            return Ok(());
        }
    }
}

/// Marks the client gone after a socket error or EOF. Not an error of the connection's: a
/// client may close without DISC (a hard disconnect, in the spec's words).
fn went(gone: &Gone, doing: &str, e: &std::io::Error) -> Result<(), TransmitError> {
    tracing::debug!("{doing}: {e}");
    gone.set();
    Ok(())
}

/// What starts a connection's requests: each runs in a task of its own and sends its reply to
/// the writer.
struct Runner<B> {
    replies: mpsc::UnboundedSender<Reply>,
    backend: Arc<B>,
    activity: Option<Arc<Activity>>,
    gone: Gone,
    tally: Arc<Tally>,
}

impl<B> Clone for Runner<B> {
    fn clone(&self) -> Self {
        Runner {
            replies: self.replies.clone(),
            backend: Arc::clone(&self.backend),
            activity: self.activity.clone(),
            gone: self.gone.clone(),
            tally: Arc::clone(&self.tally),
        }
    }
}

impl<B: Backend> Runner<B> {
    /// Starts `job` if it need not wait for budget; gives it back if it must.
    fn try_start(&self, job: Job, share: &Share) -> Option<Job> {
        match job {
            Job::Answer {
                handle,
                error,
                slot,
            } => self.answer(handle, error, slot),
            Job::Run {
                handle,
                action,
                data,
                grant,
                slot,
            } => {
                let grant = match (grant, action) {
                    (Some(g), _) => g,
                    (None, Action::Read { len, .. }) => match share.try_acquire(len as usize) {
                        Some(g) => g,
                        None => {
                            return Some(Job::Run {
                                handle,
                                action,
                                data,
                                grant: None,
                                slot,
                            })
                        }
                    },
                    (None, _) => Grant::default(),
                };
                self.start(handle, action, data, grant, slot);
            }
        }
        None
    }

    fn answer(&self, handle: Handle, error: u32, slot: OwnedSemaphorePermit) {
        let _ = self.replies.send(Reply {
            handle,
            error,
            data: None,
            _slot: slot,
            _grant: Grant::default(),
        });
    }

    /// Runs a request in a task of its own, holding `grant` until its reply is written.
    fn start(
        &self,
        handle: Handle,
        action: Action,
        data: Vec<u8>,
        grant: Grant,
        slot: OwnedSemaphorePermit,
    ) {
        let Runner {
            replies,
            backend,
            activity,
            gone,
            tally,
        } = self.clone();
        let busy = activity.as_ref().map(Activity::begin);
        tokio::spawn(async move {
            let work = run(&*backend, action, data);
            let r = if let Action::Read { .. } = action {
                // Nobody will read this reply: stop reading the volume for it.
                tokio::select! {
                    biased;
                    _ = gone.wait() => {
                        tally.abandoned.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    r = work => r,
                }
            } else {
                work.await
            };
            let (error, data) = match r {
                Ok(d) => (0, d),
                Err(f) => {
                    tracing::debug!(handle = handle.id, "request failed: {f}");
                    (f.code.code(), None)
                }
            };
            drop(busy);
            let _ = replies.send(Reply {
                handle,
                error,
                data,
                _slot: slot,
                _grant: grant,
            });
        });
    }
}

/// The dispatcher: takes queued requests in order, waits for each READ's budget, and starts
/// each; counts each down in `queued` once started. When the client is gone it stops, and drops
/// what is queued.
async fn dispatch<B: Backend>(
    mut jobs: mpsc::UnboundedReceiver<Job>,
    runner: Runner<B>,
    share: Arc<Share>,
    queued: Arc<AtomicUsize>,
) {
    let (gone, tally) = (runner.gone.clone(), Arc::clone(&runner.tally));
    loop {
        let job = tokio::select! {
            biased;
            _ = gone.wait() => break,
            j = jobs.recv() => match j {
                Some(j) => j,
                None => return,
            },
        };
        match job {
            Job::Answer {
                handle,
                error,
                slot,
            } => runner.answer(handle, error, slot),
            Job::Run {
                handle,
                action,
                data,
                grant,
                slot,
            } => {
                let grant = match (grant, action) {
                    (Some(g), _) => g,
                    (None, Action::Read { len, .. }) => tokio::select! {
                        biased;
                        _ = gone.wait() => {
                            tally.dropped.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        g = share.acquire(len as usize) => g,
                    },
                    (None, _) => Grant::default(),
                };
                runner.start(handle, action, data, grant, slot);
            }
        }
        queued.fetch_sub(1, Ordering::SeqCst);
    }
    // The client is gone: what it queued is never started.
    jobs.close();
    while jobs.try_recv().is_ok() {
        tally.dropped.fetch_add(1, Ordering::Relaxed);
    }
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
/// vectored write (headers and READ data, no copy of the data). Once the client is gone it
/// writes nothing more, and drops the replies still coming until every request task has ended.
async fn write_replies<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Reply>,
    gone: Gone,
) {
    let mut batch: Vec<Reply> = Vec::with_capacity(MAX_BATCH);
    let mut headers: Vec<[u8; proto::SIMPLE_REPLY_LEN]> = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = tokio::select! {
            biased;
            _ = gone.wait() => break,
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
        };
        if n == 0 {
            // Every sender is gone: the last reply is written.
            let _ = wr.shutdown().await;
            return;
        }
        headers.clear();
        headers.extend(
            batch
                .iter()
                .map(|r| proto::simple_reply(r.handle.id, r.error)),
        );
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * batch.len());
        for (r, h) in batch.iter().zip(&headers) {
            slices.push(IoSlice::new(h));
            if let Some(d) = r.data.as_ref().filter(|_| r.error == 0) {
                slices.push(IoSlice::new(d.as_slice()));
            }
        }
        let r = tokio::select! {
            biased;
            _ = gone.wait() => Ok(()),
            r = write_all_vectored(&mut wr, &mut slices) => r,
        };
        drop(slices);
        crate::metrics::record(
            batch
                .iter()
                .map(|r| (r.handle.kind, r.handle.len, r.error, r.handle.at)),
        );
        batch.clear();
        if let Err(e) = r {
            let _ = went(&gone, "writing replies", &e);
            break;
        }
    }
    drop(wr);
    drop(batch);
    while rx.recv().await.is_some() {}
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
    use crate::budget::Budget;
    use crate::export::{Failure, MemoryBackend, MAX_BLOCK};
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::io::{duplex, DuplexStream};

    const SIZE: usize = 8 << 20;

    /// Memory that counts the reads it starts; with `hold`, a read never finishes.
    struct Counted {
        mem: MemoryBackend,
        reads: AtomicUsize,
        hold: bool,
    }

    impl Backend for Counted {
        async fn read(&self, offset: u64, len: usize) -> Result<Data, Failure> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            if self.hold {
                std::future::pending::<()>().await;
            }
            self.mem.read(offset, len).await
        }
        async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), Failure> {
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

    fn export() -> Arc<Export> {
        Arc::new(Export {
            name: "v".into(),
            description: String::new(),
            size: SIZE as u64,
            min_block: 4096,
            max_block: MAX_BLOCK,
            read_only: false,
        })
    }

    type Conn = (
        DuplexStream,
        tokio::task::JoinHandle<Result<Ending, TransmitError>>,
        watch::Sender<bool>,
    );

    /// Starts a connection over an in-memory pipe of `pipe` bytes: the client's end, the
    /// connection's task, and its stop switch.
    fn start(backend: &Arc<Counted>, budget: &Budget, pipe: usize) -> Conn {
        let (client, server) = duplex(pipe);
        let (r, w) = tokio::io::split(server);
        let (stop_tx, stop) = watch::channel(false);
        let t = tokio::spawn(transmit(
            r,
            w,
            export(),
            Arc::clone(backend),
            budget.connection(),
            stop,
            None,
        ));
        (client, t, stop_tx)
    }

    fn read_req(handle: u64, offset: u64, len: u32) -> [u8; proto::REQUEST_LEN] {
        Request {
            magic: proto::REQUEST_MAGIC,
            flags: 0,
            kind: Cmd::Read as u16,
            handle,
            offset,
            length: len,
        }
        .encode()
    }

    #[tokio::test]
    async fn a_client_that_goes_away_has_its_queued_reads_dropped_and_the_running_abandoned() {
        let backend = Arc::new(Counted {
            mem: MemoryBackend::new(SIZE),
            reads: AtomicUsize::new(0),
            hold: true,
        });
        // A 4 MiB budget: a 1 MiB share, four 256 KiB reads at once.
        let budget = Budget::new(4 << 20).unwrap();
        let (mut client, t, _stop) = start(&backend, &budget, 64 << 10);
        for h in 0..32u64 {
            client.write_all(&read_req(h, 0, 256 << 10)).await.unwrap();
        }
        drop(client);
        let ending = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("the connection ends once its client is gone")
            .unwrap()
            .unwrap();
        let started = backend.reads.load(Ordering::Relaxed) as u64;
        assert!(
            started <= 4,
            "{started} reads started, a 1 MiB share allows 4"
        );
        // A READ started is abandoned whether or not its task got to the backend before the
        // client was seen gone; at most a share's worth was started.
        assert!(
            (started..=4).contains(&ending.abandoned),
            "{} abandoned, {started} reached the backend",
            ending.abandoned
        );
        assert_eq!(
            ending,
            Ending {
                gone: true,
                dropped: 32 - ending.abandoned,
                abandoned: ending.abandoned,
            }
        );
        // Everything the connection held is back in the pool.
        assert_eq!(budget.available(), budget.bytes());
    }

    #[tokio::test]
    async fn a_client_that_reads_no_replies_holds_its_share_at_most_until_it_does() {
        let backend = Arc::new(Counted {
            mem: MemoryBackend::new(SIZE),
            reads: AtomicUsize::new(0),
            hold: false,
        });
        backend
            .mem
            .write(0, &[7u8; 256 << 10], false)
            .await
            .unwrap();
        let budget = Budget::new(4 << 20).unwrap();
        let (mut client, t, _stop) = start(&backend, &budget, 64 << 10);
        for h in 0..16u64 {
            client.write_all(&read_req(h, 0, 256 << 10)).await.unwrap();
        }
        // Given time to run ahead, it has not: its share is spent on replies nobody reads.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(backend.reads.load(Ordering::Relaxed), 4);
        assert_eq!(budget.available(), budget.bytes() - budget.share());
        // Reading the replies lets the rest through, each whole and right.
        for _ in 0..16 {
            let mut h = [0u8; proto::SIMPLE_REPLY_LEN];
            client.read_exact(&mut h).await.unwrap();
            assert_eq!(proto::decode_simple_reply(&h).map(|r| r.0), Some(0));
            let mut d = vec![0u8; 256 << 10];
            client.read_exact(&mut d).await.unwrap();
            assert!(d.iter().all(|&b| b == 7));
        }
        let disc = Request {
            magic: proto::REQUEST_MAGIC,
            flags: 0,
            kind: Cmd::Disc as u16,
            handle: 99,
            offset: 0,
            length: 0,
        };
        client.write_all(&disc.encode()).await.unwrap();
        let ending = t.await.unwrap().unwrap();
        assert_eq!(ending, Ending::default());
        assert_eq!(budget.available(), budget.bytes());
    }
}
