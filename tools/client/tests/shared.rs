//! One `Volume` shared by many tasks on many threads, against the real controller and node:
//! random reads and writes checked against a model while a proxy in front of the node cuts
//! every connection under them, and while callers drop their requests midway. Nothing may be
//! read that was never written there, no acknowledged write may be lost, and when the dust
//! settles no request is left in flight (no reply matching lost, no slot or buffer leaked).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dasmesh_client::{AlignedBuf, MountOptions, Volume};
use dasmesh_testkit::{free_addr, Cluster, Process};
use rand::{Rng, SeedableRng};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const BLOCK: usize = 4096;
const TASKS: u64 = 12;
const BLOCKS_PER_TASK: u64 = 48;

/// A TCP proxy in front of `target`; `cut()` closes every connection through it.
struct Cutter {
    addr: String,
    cut: watch::Sender<u64>,
    cuts: AtomicU64,
}

impl Cutter {
    async fn start(target: String) -> Arc<Cutter> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, rx) = watch::channel(0u64);
        let c = Arc::new(Cutter {
            addr: l.local_addr().unwrap().to_string(),
            cut: tx,
            cuts: AtomicU64::new(0),
        });
        tokio::spawn(async move {
            while let Ok((mut client, _)) = l.accept().await {
                let target = target.clone();
                let mut rx = rx.clone();
                rx.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut node) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = node.set_nodelay(true);
                    let _ = client.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut node) => {}
                        _ = rx.changed() => {}
                    }
                    // Both sockets close here: requests in flight on them are cut off.
                });
            }
        });
        c
    }

    fn cut(&self) {
        self.cuts.fetch_add(1, Ordering::Relaxed);
        self.cut.send_modify(|g| *g += 1);
    }
}

/// A node registering with the controller at `ctl`, advertising the proxy's address.
fn node_behind(dir: &std::path::Path, ctl: &str, listen: &str, advertise: &str) -> Process {
    let args = [
        "--listen",
        listen,
        "--advertise",
        advertise,
        "--no-local-socket",
        "--no-pin",
        "--poll",
        "interrupt",
        "--controller",
        &format!("http://{ctl}"),
        "--state-dir",
        &dir.join("n0").display().to_string(),
        "--backend",
        &format!("file:{}:64M", dir.join("n0.img").display()),
    ];
    Process::spawn("dasmesh-node", &args.map(String::from))
}

/// Block contents name their block and version: nothing else can pass for them.
fn pattern(block: u64, version: u64) -> AlignedBuf {
    let mut b = AlignedBuf::new(BLOCK);
    let word = (block << 32 | version).to_le_bytes();
    for c in b.as_mut_slice().chunks_exact_mut(8) {
        c.copy_from_slice(&word);
    }
    b
}

/// The version a block's bytes hold (`None`: not one whole pattern of this block; 0: never
/// written, all zero).
fn version_of(block: u64, data: &[u8]) -> Option<u64> {
    if data.iter().all(|b| *b == 0) {
        return Some(0);
    }
    let w = u64::from_le_bytes(data[..8].try_into().unwrap());
    let whole = data.chunks_exact(8).all(|c| c == &data[..8]);
    (whole && w >> 32 == block).then_some(w & 0xffff_ffff)
}

/// What the model knows about one block: writes are issued in increasing versions; `acked` is
/// the newest one acknowledged, `issued` the newest one sent. A write whose caller gave up, or
/// that failed on a cut connection, may still reach the node and land at any later time (a
/// dropped future does not call back what the node already has), even after a newer write was
/// acknowledged: `loose` is the oldest such version.
#[derive(Default, Clone, Copy)]
struct Known {
    acked: u64,
    issued: u64,
    loose: Option<u64>,
}

impl Known {
    /// The oldest version a read may return.
    fn floor(&self) -> u64 {
        self.loose.map_or(self.acked, |l| l.min(self.acked))
    }
}

struct Stats {
    ok: AtomicUsize,
    failed: AtomicUsize,
    cancelled: AtomicUsize,
}

/// One task: random reads and writes of its own blocks, a few at a time. `cancel`: some
/// requests are given up (their futures dropped) after a random few microseconds.
async fn worker(
    vol: Volume,
    task: u64,
    seed: u64,
    model: Arc<Mutex<Vec<Known>>>,
    until: Instant,
    cancel: bool,
    stats: Arc<Stats>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ task);
    let first = task * BLOCKS_PER_TASK;
    while Instant::now() < until {
        // Up to 4 requests at once, on distinct blocks.
        let mut picks: Vec<u64> = (0..rng.gen_range(1..=4))
            .map(|_| first + rng.gen_range(0..BLOCKS_PER_TASK))
            .collect();
        picks.sort_unstable();
        picks.dedup();
        let ops = picks.into_iter().map(|block| {
            let write = rng.gen_bool(0.5);
            let give_up = cancel && rng.gen_bool(0.3);
            let wait = Duration::from_micros(rng.gen_range(0..300));
            let vol = vol.clone();
            let model = Arc::clone(&model);
            let stats = Arc::clone(&stats);
            async move {
                let at = block * BLOCK as u64;
                let before = model.lock().unwrap()[block as usize];
                let op = async {
                    if write {
                        let v = before.issued + 1;
                        model.lock().unwrap()[block as usize].issued = v;
                        vol.write(at, &pattern(block, v), false)
                            .await
                            .map(|()| Some(v))
                    } else {
                        let b = vol.read_into(at, AlignedBuf::new(BLOCK)).await?;
                        let v = version_of(block, &b)
                            .unwrap_or_else(|| panic!("block {block}: bytes of another block"));
                        let now = model.lock().unwrap()[block as usize];
                        // Written at some point, and not older than what was acknowledged
                        // before the read began.
                        assert!(
                            v >= before.floor().min(now.floor()) && v <= now.issued,
                            "block {block}: read version {v}, acked {} issued {} loose {:?}",
                            before.acked,
                            now.issued,
                            now.loose
                        );
                        Ok(None)
                    }
                };
                let loose = |model: &Mutex<Vec<Known>>| {
                    if write {
                        let mut m = model.lock().unwrap();
                        let k = &mut m[block as usize];
                        k.loose = Some(
                            k.loose
                                .map_or(before.issued + 1, |l| l.min(before.issued + 1)),
                        );
                    }
                };
                let r = if give_up {
                    match tokio::time::timeout(wait, op).await {
                        Ok(r) => r,
                        Err(_) => {
                            loose(&model);
                            stats.cancelled.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                } else {
                    op.await
                };
                match r {
                    Ok(Some(v)) => {
                        let mut m = model.lock().unwrap();
                        let k = &mut m[block as usize];
                        k.acked = k.acked.max(v);
                        stats.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => {
                        stats.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    // A cut connection can fail a request even after its retry: its block is
                    // then one of the versions issued, which the model allows.
                    Err(_) => {
                        loose(&model);
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        futures_util::future::join_all(ops).await;
    }
}

async fn run(cancel: bool, cut_every: Option<Duration>, secs: u64) {
    let cluster = Cluster::start(0);
    let dir = cluster.dir.path().to_path_buf();
    let listen = free_addr();
    let cutter = Cutter::start(listen.clone()).await;
    let _node = node_behind(&dir, &cluster.ctl.addr, &listen, &cutter.addr);
    // The node registers itself; wait until a volume fits.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = dasmesh_api::v1::volumes_client::VolumesClient::new(cluster.channel().await)
            .create(dasmesh_api::v1::CreateVolumeRequest {
                name: "shared".into(),
                size_bytes: 32 << 20,
                layout: Some(dasmesh_testkit::layout("single")),
                requirements: None,
            })
            .await;
        match r {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("create: {e}"),
        }
    }
    let opts = MountOptions {
        host: "shared-test".into(),
        connections: 3,
        queue_depth: 16,
        local_socket: false,
        request_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let vol = Volume::mount(&cluster.url(), "shared", opts).await.unwrap();
    let seed: u64 = std::env::var("DASMESH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (set DASMESH_SEED to replay)");
    let model = Arc::new(Mutex::new(vec![
        Known::default();
        (TASKS * BLOCKS_PER_TASK) as usize
    ]));
    let stats = Arc::new(Stats {
        ok: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        cancelled: AtomicUsize::new(0),
    });
    let until = Instant::now() + Duration::from_secs(secs);
    let stop = Arc::new(AtomicBool::new(false));
    let cutting = cut_every.map(|every| {
        let (cutter, stop) = (Arc::clone(&cutter), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(every).await;
                cutter.cut();
            }
        })
    });
    let mut set = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        set.spawn(worker(
            vol.clone(),
            t,
            seed,
            Arc::clone(&model),
            until,
            cancel,
            Arc::clone(&stats),
        ));
    }
    while let Some(r) = set.join_next().await {
        r.expect("a worker panicked (see above)");
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = cutting {
        h.await.unwrap();
    }
    let (ok, failed, cancelled) = (
        stats.ok.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
        stats.cancelled.load(Ordering::Relaxed),
    );
    eprintln!(
        "{ok} ok, {failed} failed, {cancelled} cancelled, {} cuts",
        cutter.cuts.load(Ordering::Relaxed)
    );
    assert!(ok > 500, "too little got through: {ok}");
    if cut_every.is_some() {
        assert!(cutter.cuts.load(Ordering::Relaxed) >= 5);
        assert!(
            failed * 4 < ok,
            "most requests survive a cut by their retry: {failed} failed"
        );
    } else {
        assert_eq!(failed, 0, "nothing fails without cuts");
    }
    if cancel {
        assert!(cancelled > 20, "the test cancels requests: {cancelled}");
    }
    // Settled: no request is left in flight (abandoned replies were all read and dropped).
    let deadline = Instant::now() + Duration::from_secs(10);
    while vol.requests_in_flight() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} requests still in flight",
            vol.requests_in_flight()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every block holds a version that was issued, none older than the last acknowledged unless
    // a write given up on was older.
    let m = model.lock().unwrap().clone();
    for (block, k) in m.iter().enumerate() {
        let b = vol
            .read_into(block as u64 * BLOCK as u64, AlignedBuf::new(BLOCK))
            .await
            .unwrap();
        let v = version_of(block as u64, &b).expect("a whole pattern");
        assert!(
            v >= k.floor() && v <= k.issued,
            "block {block}: version {v}, acked {} issued {} loose {:?}",
            k.acked,
            k.issued,
            k.loose
        );
    }
    vol.unmount().await.unwrap();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn many_tasks_on_many_threads_share_a_volume_while_connections_are_cut() {
    runtime().block_on(run(false, Some(Duration::from_millis(150)), 4));
}

#[test]
fn dropped_requests_lose_no_reply_matching_and_leak_no_slot() {
    runtime().block_on(run(true, None, 3));
}

#[test]
fn dropped_requests_and_cut_connections_together() {
    runtime().block_on(run(true, Some(Duration::from_millis(250)), 3));
}
