//! A spare host: `dasmesh nbd serve VOLUME --standby` waits while another gateway holds the
//! volume read-write and serves once that lease ends. Its takeover after the active gateway is
//! SIGKILLed is bounded by the lease TTL plus a few seconds; a hung (SIGSTOPped) gateway that
//! wakes up after the takeover is fenced: its writes fail and the spare's data stays intact.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::client::Client;
use common::{Cluster, GatewayCluster};
use dasmesh_testkit::Process;

const TTL: &str = "3s";
const TTL_S: u64 = 3;

fn standby(url: &str, host: &str) -> std::thread::JoinHandle<Process> {
    let args: Vec<String> = [
        "--controller",
        url,
        "nbd",
        "serve",
        "v",
        "--listen",
        "127.0.0.1:0",
        "--standby",
        "--standby-poll",
        "200ms",
        "--ttl",
        TTL,
        "--host",
        host,
    ]
    .map(String::from)
    .to_vec();
    // Returns once the spare prints `listening`: when it has taken over.
    std::thread::spawn(move || Process::spawn("dasmesh", &args))
}

fn open(p: &Process) -> Client {
    let mut c = Client::connect(&p.addr);
    c.go();
    c
}

#[test]
fn a_spare_takes_over_from_a_dead_host_and_fences_a_hung_one() {
    let c = Cluster::start(2);
    c.create_now("v", "mirror:2", 16 << 20);
    let url = c.url();

    // The active gateway writes; a spare stands by (and does not serve meanwhile).
    let mut a = c.gateway("v", &["--ttl", TTL, "--host", "a"]);
    let first = vec![0xA1u8; 64 << 10];
    assert_eq!(open(&a).write(0, &first), 0);
    let spare = standby(&url, "b");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !spare.is_finished(),
        "the spare served while the volume was held"
    );

    // SIGKILL the active one: the spare serves within the TTL and a few seconds, and has the data.
    let t = Instant::now();
    a.signal("KILL");
    let b = spare.join().unwrap();
    let mut on_b = open(&b);
    assert_eq!(on_b.read(0, first.len() as u32).unwrap(), first);
    // From the SIGKILL to the first I/O the spare served.
    let took = t.elapsed();
    assert!(
        took <= Duration::from_secs(TTL_S + 3),
        "takeover took {took:?}, more than the {TTL} TTL + 3 s"
    );
    eprintln!("takeover after SIGKILL, to the first read served: {took:?}");

    // Now b is the active one and c stands by. b writes, then hangs (SIGSTOP) past its lease.
    let second = vec![0xB2u8; 64 << 10];
    assert_eq!(on_b.write(0, &second), 0);
    let spare = standby(&url, "c");
    std::thread::sleep(Duration::from_millis(500));
    b.send("STOP");
    let t = Instant::now();
    let cgw = spare.join().unwrap();
    let took = t.elapsed();
    assert!(
        took <= Duration::from_secs(TTL_S + 3),
        "takeover from a hung host took {took:?}"
    );
    eprintln!("takeover from a SIGSTOPped host, to serving: {took:?}");
    // b wakes up: its write is refused (the nodes fence its epoch), never applied.
    b.send("CONT");
    let late = vec![0xEEu8; 64 << 10];
    let e = on_b.write(0, &late);
    assert_ne!(e, 0, "the fenced host's write was accepted");
    let mut on_c = open(&cgw);
    assert_eq!(on_c.read(0, second.len() as u32).unwrap(), second);
    drop(b);
}

#[test]
fn a_standby_stopped_before_it_took_over_exits_cleanly_and_took_nothing() {
    let c = Cluster::start(1);
    c.create_now("v", "single", 4 << 20);
    let _a = c.gateway("v", &["--host", "a"]);
    let spare = Command::new(dasmesh_testkit::bin("dasmesh"))
        .args(["--controller", &c.url(), "nbd", "serve", "v", "--standby"])
        .args(["--listen", "127.0.0.1:0", "--standby-poll", "100ms"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let ok = Command::new("kill")
        .args(["-TERM", &spare.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let out = spare.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(out.stdout.is_empty(), "it served: {:?}", out.stdout);
    // It said why it waited, once (not once per try).
    assert_eq!(err.matches("standing by:").count(), 1, "{err}");
    assert!(err.contains("read-write lease"), "{err}");
}
