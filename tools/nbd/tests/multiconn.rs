//! Multi-conn: several NBD connections to one export are served at once, on several threads,
//! none waiting for another's requests. The server runs in this process over a backend the test
//! controls (so a request can be held, or made to hold its thread), on the runtime
//! `dasmesh nbd serve` builds; the last test checks the real binary's threads.
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::client::Client;
use common::{Cluster, GatewayCluster};
use dasmesh_nbd::proto::{Cmd, Errno};
use dasmesh_nbd::runtime::{self, Threads};
use dasmesh_nbd::{
    Backend, Budget, Data, Export, Failure, ListenAddr, Listener, MemoryBackend, PollMode,
    DEFAULT_BUDGET, MAX_BLOCK,
};
use rand::{Rng, SeedableRng};
use tokio::sync::{oneshot, Notify};

const BLOCK: u64 = 4096;

/// A server of `backend` on the runtime `dasmesh nbd serve` builds for `threads`, run as the
/// command runs it (`block_on` on a thread of its own), listening on loopback TCP. Dropping it
/// stops the server and waits until it has.
struct Server {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    done: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = d.join();
        }
    }
}

fn start<B: Backend>(threads: Threads, backend: Arc<B>, size: u64) -> Server {
    let rt = runtime::build(threads).unwrap();
    let listener = rt
        .block_on(Listener::bind(&ListenAddr::Tcp("127.0.0.1:0".into())))
        .unwrap();
    let addr = listener.local_addr();
    let export = Arc::new(Export {
        name: "v".into(),
        description: String::new(),
        size,
        min_block: BLOCK as u32,
        max_block: MAX_BLOCK,
        read_only: false,
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let done = std::thread::spawn(move || {
        rt.block_on(dasmesh_nbd::serve(
            listener,
            export,
            backend,
            Budget::new(DEFAULT_BUDGET).unwrap(),
            async {
                let _ = stopped.await;
            },
            PollMode::Interrupt,
        ))
    });
    Server {
        addr,
        stop: Some(stop),
        done: Some(done),
    }
}

fn connect(addr: &str) -> Client {
    let mut c = Client::connect(addr);
    c.go();
    c
}

/// One request of a batch: where, how long, and the bytes written (none for a READ).
struct Req {
    offset: u64,
    len: usize,
    write: Option<Vec<u8>>,
}

/// Drives one connection: `batches` of 16 requests in flight at once (READs and WRITEs on
/// distinct 16 KiB slots of `region`, so their order does not matter), every reply checked
/// against a model of the region; returns the model.
fn drive(addr: &str, region: std::ops::Range<u64>, seed: u64, batches: usize) -> Vec<u8> {
    let mut c = connect(addr);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut model = vec![0u8; (region.end - region.start) as usize];
    let slots = (region.end - region.start) / (4 * BLOCK);
    for _ in 0..batches {
        let mut picked = std::collections::BTreeSet::new();
        while picked.len() < 16 {
            picked.insert(rng.gen_range(0..slots));
        }
        let mut sent = std::collections::HashMap::new();
        for slot in picked {
            let len = (BLOCK * rng.gen_range(1..=4u64)) as usize;
            let offset = region.start + slot * 4 * BLOCK;
            let write = rng.gen_bool(0.5).then(|| {
                let mut d = vec![0u8; len];
                rng.fill(&mut d[..]);
                d
            });
            let h = match &write {
                Some(d) => c.send(Cmd::Write as u16, 0, offset, len as u32, d),
                None => c.send(Cmd::Read as u16, 0, offset, len as u32, &[]),
            };
            sent.insert(h, Req { offset, len, write });
        }
        // Replies in any order; every one answers a request of the batch.
        for _ in 0..16 {
            let (err, h) = c.reply();
            assert_eq!(err, 0, "request {h} failed");
            let r = sent.get(&h).expect("a reply to a request in flight");
            let at = (r.offset - region.start) as usize;
            if r.write.is_none() {
                let mut d = vec![0u8; r.len];
                std::io::Read::read_exact(&mut c.s, &mut d).unwrap();
                assert!(
                    d == model[at..at + r.len],
                    "read at {} ({} bytes) differs from the model",
                    r.offset,
                    r.len
                );
            }
        }
        for r in sent.values() {
            if let Some(d) = &r.write {
                let at = (r.offset - region.start) as usize;
                model[at..at + r.len].copy_from_slice(d);
            }
        }
    }
    model
}

#[test]
fn many_connections_with_requests_in_flight_match_a_model() {
    const CONNS: u64 = 8;
    const SIZE: u64 = 32 << 20;
    let mem = Arc::new(MemoryBackend::new(SIZE as usize));
    let server = start(Threads::from_count(4), Arc::clone(&mem), SIZE);
    let region = |i: u64| i * SIZE / CONNS..(i + 1) * SIZE / CONNS;
    let workers: Vec<_> = (0..CONNS)
        .map(|i| {
            let addr = server.addr.clone();
            std::thread::spawn(move || drive(&addr, region(i), 1000 + i, 40))
        })
        .collect();
    let models: Vec<Vec<u8>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    // Every connection's writes, read back through another connection after a flush on it.
    let mut c = connect(&server.addr);
    let h = c.send(Cmd::Flush as u16, 0, 0, 0, &[]);
    c.expect(h, 0);
    for (i, m) in models.iter().enumerate() {
        let r = region(i as u64);
        let got = c.read(r.start, (r.end - r.start) as u32).unwrap();
        assert!(got == *m, "region of connection {i} differs from its model");
    }
    assert_eq!(mem.contents().len(), SIZE as usize);
}

/// Memory whose READs at `held` wait until `release` (counted in `waiting` meanwhile).
struct Gate {
    mem: MemoryBackend,
    held: u64,
    waiting: AtomicUsize,
    open: AtomicBool,
    release: Notify,
}

impl Backend for Gate {
    async fn read(&self, offset: u64, len: usize) -> Result<Data, Failure> {
        if offset == self.held {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while !self.open.load(Ordering::SeqCst) {
                let wake = self.release.notified();
                if self.open.load(Ordering::SeqCst) {
                    break;
                }
                wake.await;
            }
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

/// Waits (bounded) until `f` holds.
fn until(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < end, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_request_held_on_one_connection_stops_no_other_request() {
    const SIZE: u64 = 8 << 20;
    let gate = Arc::new(Gate {
        mem: MemoryBackend::new(SIZE as usize),
        held: 1 << 20,
        waiting: AtomicUsize::new(0),
        open: AtomicBool::new(false),
        release: Notify::new(),
    });
    let server = start(Threads::Auto, Arc::clone(&gate), SIZE);
    let mut a = connect(&server.addr);
    let mut b = connect(&server.addr);
    let data: Vec<u8> = (0..2 * BLOCK).map(|i| (i % 253) as u8).collect();
    assert_eq!(a.write(1 << 20, &data), 0);
    let held = a.send(Cmd::Read as u16, 0, 1 << 20, 2 * BLOCK as u32, &[]);
    until("the READ is held in the backend", || {
        gate.waiting.load(Ordering::SeqCst) == 1
    });
    // Another connection: its writes and reads complete while the READ is held...
    for i in 0..32u64 {
        let block = vec![i as u8 + 1; BLOCK as usize];
        assert_eq!(b.write((2 << 20) + i * BLOCK, &block), 0);
        assert_eq!(b.read((2 << 20) + i * BLOCK, BLOCK as u32).unwrap(), block);
    }
    // ...and so do the held connection's own later requests: its replies overtake.
    let later = a.send(Cmd::Read as u16, 0, 2 << 20, BLOCK as u32, &[]);
    assert_eq!(a.reply(), (0, later));
    let mut d = vec![0u8; BLOCK as usize];
    std::io::Read::read_exact(&mut a.s, &mut d).unwrap();
    assert_eq!(d, vec![1u8; BLOCK as usize]);
    gate.open.store(true, Ordering::SeqCst);
    gate.release.notify_waiters();
    assert_eq!(a.reply(), (0, held));
    let mut d = vec![0u8; 2 * BLOCK as usize];
    std::io::Read::read_exact(&mut a.s, &mut d).unwrap();
    assert_eq!(d, data);
}

/// Memory whose READs each hold their thread (a blocking wait, as a request that computes
/// would, in `block_in_place`) until `parties` of them are inside at once, or `BOUND`
/// passes: then they fail.
struct Rendezvous {
    mem: MemoryBackend,
    parties: usize,
    inside: Mutex<usize>,
    all_in: Condvar,
}

const BOUND: Duration = Duration::from_secs(10);

impl Rendezvous {
    /// Blocks the calling thread until all parties are inside; false after `BOUND`.
    fn meet(&self) -> bool {
        let mut n = self.inside.lock().unwrap();
        *n += 1;
        self.all_in.notify_all();
        let (_n, t) = self
            .all_in
            .wait_timeout_while(n, BOUND, |n| *n < self.parties)
            .unwrap();
        !t.timed_out()
    }
}

impl Backend for Rendezvous {
    async fn read(&self, offset: u64, len: usize) -> Result<Data, Failure> {
        if !tokio::task::block_in_place(|| self.meet()) {
            return Err(Failure {
                code: Errno::Io,
                why: "the other connections' reads never came in while this one ran".into(),
            });
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

#[test]
fn connections_are_served_on_several_threads_at_once() {
    // Four connections' READs each hold their thread until all four are inside the backend:
    // they all succeed only if the four are served at the same time, none queued behind
    // another connection's request. (The wait is in block_in_place: a worker that blocks
    // outright can leave tokio's I/O driver unpolled, and then the other READs never come in.
    // the_gateway_runs_a_worker_per_cpu_unless_told_otherwise counts the workers.)
    const K: usize = 4;
    const SIZE: u64 = 1 << 20;
    let r = Arc::new(Rendezvous {
        mem: MemoryBackend::new(SIZE as usize),
        parties: K,
        inside: Mutex::new(0),
        all_in: Condvar::new(),
    });
    let server = start(Threads::from_count(K), Arc::clone(&r), SIZE);
    let mut conns: Vec<Client> = (0..K).map(|_| connect(&server.addr)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let block = vec![i as u8 + 1; BLOCK as usize];
        assert_eq!(c.write(i as u64 * BLOCK, &block), 0);
    }
    let handles: Vec<u64> = conns
        .iter_mut()
        .enumerate()
        .map(|(i, c)| c.send(Cmd::Read as u16, 0, i as u64 * BLOCK, BLOCK as u32, &[]))
        .collect();
    for (i, (c, h)) in conns.iter_mut().zip(handles).enumerate() {
        assert_eq!(c.reply(), (0, h), "connection {i}'s READ ran alone");
        let mut d = vec![0u8; BLOCK as usize];
        std::io::Read::read_exact(&mut c.s, &mut d).unwrap();
        assert_eq!(d, vec![i as u8 + 1; BLOCK as usize]);
    }
}

/// Threads of `pid` named `nbd-worker` (the gateway runtime's workers).
fn workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter(|t| {
            let comm = std::fs::read_to_string(t.as_ref().unwrap().path().join("comm"));
            comm.is_ok_and(|c| c.trim() == "nbd-worker")
        })
        .count()
}

#[test]
fn the_gateway_runs_a_worker_per_cpu_unless_told_otherwise() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let c = Cluster::start(1);
    for v in ["auto", "three", "pinned"] {
        c.create_now(v, "single", 8 << 20);
    }
    let mine = std::fs::read_to_string("/proc/self/status").unwrap();
    let first_cpu = mine
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|l| l.trim().split([',', '-']).next().map(str::to_string))
        .unwrap();
    for (v, flags, want) in [
        ("auto", vec![], cpus),
        ("three", vec!["--threads", "3"], 3),
        ("pinned", vec!["--cpu", first_cpu.as_str()], 1),
    ] {
        let gw = c.gateway(v, &flags);
        let mut a = connect(&gw.addr);
        assert_eq!(a.write(0, &[5u8; 4096]), 0);
        assert_eq!(a.read(0, 4096).unwrap(), vec![5u8; 4096]);
        // One thread is the main thread's runtime: no workers then.
        let n = workers(gw.child.id());
        if want == 1 {
            assert_eq!(n, 0, "{v}: a single-thread runtime has no workers");
        } else {
            assert!(n >= want, "{v}: {n} workers, want {want}");
        }
    }
}
