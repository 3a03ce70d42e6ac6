//! The gateway's memory budget and the requests of clients that went away, against the real
//! gateway on a real cluster: clients that pipeline large READs and never read the replies keep
//! the gateway's memory within its budget while another client is still served, and what
//! departed clients had queued is not read from the node.

mod common;

use std::time::{Duration, Instant};

use common::client::Client;
use common::{runtime, Cluster, GatewayCluster as _};
use dasmesh_api::v1;
use dasmesh_nbd::proto::Cmd;

const SIZE: u64 = 64 << 20;
/// `--max-buffer 64M`: a 16 MiB share per connection, 16 MiB requests at most.
const BUDGET: u64 = 64 << 20;
const BIG: u32 = 16 << 20;
/// What the gateway holds besides the budget: its code, runtime, the volume's connections,
/// and a 256 KiB read buffer per connection.
const MARGIN: u64 = 48 << 20;

/// The resident memory of `pid`, in bytes.
fn vm_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/PID/status");
    kb << 10
}

/// How many sockets `pid` holds open.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

/// A client that pipelines `n` READs of `BIG` bytes and reads nothing back.
fn hog(addr: &str, n: u64) -> Client {
    let mut h = Client::connect(addr);
    let (_, _, bs) = h.go();
    assert_eq!(bs[2], BIG, "the maximum block size follows the budget");
    for k in 0..n {
        h.send(Cmd::Read as u16, 0, (k % 4) * u64::from(BIG), BIG, &[]);
    }
    h
}

#[test]
fn clients_that_read_no_replies_keep_the_gateway_within_its_budget() {
    let c = Cluster::start(1);
    c.create_now("hog", "single", SIZE);
    let gw = c.gateway("hog", &["--max-buffer", "64M", "--readahead", "0"]);
    let pid = gw.child.id();
    let mut small = Client::connect(&gw.addr);
    small.go();
    let data = pattern(64 << 10, 5);
    assert_eq!(small.write(0, &data), 0);
    // A request larger than the maximum block size is refused, not served.
    assert_eq!(small.read(0, 2 * BIG), Err(22));
    let before = vm_rss(pid);
    // Three clients queue 512 MiB of READs each and never read a reply: before the budget,
    // each held 256 MiB of replies (768 MiB in all).
    let hogs: Vec<Client> = (0..3).map(|_| hog(&gw.addr, 32)).collect();
    let mut peak = 0;
    for round in 0..60u64 {
        // The small client is served all along, with the right bytes.
        for i in 0..4u64 {
            let off = ((round * 4 + i) % 16) * 4096;
            let got = small.read(off, 4096).expect("a small read");
            assert!(
                got[..] == data[off as usize..][..4096],
                "read at {off} in round {round}"
            );
        }
        peak = peak.max(vm_rss(pid));
        assert!(
            peak <= BUDGET + MARGIN,
            "gateway VmRSS {} MiB in round {round} (budget {} MiB + margin {} MiB; {} MiB before the hogs)",
            peak >> 20,
            BUDGET >> 20,
            MARGIN >> 20,
            before >> 20
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "gateway VmRSS: {} MiB before the hogs, peak {} MiB with them",
        before >> 20,
        peak >> 20
    );
    drop(hogs);
}

/// The usage the nodes reported for `host`'s leases: (read_bytes, write_bytes).
fn usage(c: &Cluster, host: &str) -> (u64, u64) {
    runtime().block_on(async {
        let mut u = v1::usage_client::UsageClient::new(c.channel().await);
        let rep = u
            .report(v1::UsageRequest {
                host_id: host.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        rep.records
            .iter()
            .fold((0, 0), |(r, w), x| (r + x.read_bytes, w + x.write_bytes))
    })
}

#[test]
fn the_reads_of_clients_that_went_away_are_not_carried_out() {
    let c = Cluster::start(1);
    c.create_now("gone", "single", SIZE);
    let host = "nbd-gone-test";
    let gw = c.gateway(
        "gone",
        &["--max-buffer", "64M", "--readahead", "0", "--host", host],
    );
    let pid = gw.child.id();
    // A client that stays: its first read opens the volume's connections to the node, so the
    // gateway's socket count below is the one it returns to.
    let mut stay = Client::connect(&gw.addr);
    stay.go();
    assert_eq!(stay.read(0, 4096), Ok(vec![0; 4096]));
    let base = sockets(pid);
    // Eight clients queue 16 READs of 16 MiB each (2 GiB in all) and close their sockets.
    const CLIENTS: u64 = 8;
    const EACH: u64 = 16;
    for _ in 0..CLIENTS {
        drop(hog(&gw.addr, EACH));
    }
    let queued = CLIENTS * EACH * u64::from(BIG);
    // The gateway closes its side once it is done with them (before the fix: after reading
    // all 2 GiB).
    let deadline = Instant::now() + Duration::from_secs(180);
    while sockets(pid) > base {
        assert!(
            Instant::now() < deadline,
            "the gateway still holds {} sockets (of {base} before)",
            sockets(pid)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A marker written after them: the nodes report usage in order, so once the marker's
    // bytes are in, so is every read before it.
    assert_eq!(stay.write(4096, &[1; 4096]), 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (read, _) = loop {
        let u = usage(&c, host);
        if u.1 >= 4096 {
            break u;
        }
        assert!(Instant::now() < deadline, "no usage reported: {u:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "departed clients queued {} MiB of READs; the node read {} MiB for the gateway",
        queued >> 20,
        read >> 20
    );
    assert!(
        read < queued / 8,
        "the node read {read} bytes for the gateway; departed clients had queued {queued}"
    );
    // The gateway still serves.
    assert_eq!(stay.read(4096, 4096), Ok(vec![1; 4096]));
}

#[test]
fn a_client_that_reads_no_replies_does_not_hold_a_stopping_gateway() {
    let c = Cluster::start(1);
    c.create_now("stop", "single", SIZE);
    let mut gw = c.gateway("stop", &["--max-buffer", "64M", "--readahead", "0"]);
    let _hog = hog(&gw.addr, 32);
    // Its share fills with replies it does not read (the gateway's memory shows them).
    let deadline = Instant::now() + Duration::from_secs(30);
    while vm_rss(gw.child.id()) < u64::from(BIG) {
        assert!(Instant::now() < deadline, "the hog's reads never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = gw.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    // It waits STOP_GRACE (10 s) for the replies to be taken, then drops the connection.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not exit within 60 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "gateway exited with {status}");
    c.mount("stop").expect("the gateway's lease has ended");
}
