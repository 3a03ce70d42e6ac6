//! Protocol misuse from a raw NBD client, against the real gateway on a real cluster: each
//! mistake is answered as the NBD spec says, the stream stays in sync after a refused WRITE, and
//! the gateway keeps serving other connections (also after one is dropped for a bad magic).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::client::Client;
use common::{Cluster, GatewayCluster as _};
use dasmesh_nbd::proto::{self, Cmd, InfoRequest, Rep, Request};

const SIZE: u64 = 16 << 20;
const EPERM: u32 = 1;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn misuse_is_answered_as_the_spec_says() {
    let c = Cluster::start(1);
    c.create_now("vol", "single", SIZE);
    let mut gw = c.gateway("vol", &[]);

    // Handshake: unknown options, STARTTLS, structured replies, LIST with data, an unknown
    // export: each answered with an error, and the negotiation goes on.
    let mut a = Client::connect(&gw.addr);
    for (opt, data, rep) in [
        (99u32, &b"xyz"[..], Rep::ErrUnsup),
        (5, b"", Rep::ErrUnsup),
        (8, b"", Rep::ErrUnsup),
        (3, b"x", Rep::ErrInvalid),
    ] {
        a.option(opt, data);
        let r = a.option_reply();
        assert_eq!((r.option, r.rep), (opt, rep as u32), "option {opt}");
    }
    a.option(3, b"");
    let r = a.option_reply();
    assert_eq!(r.rep, Rep::Server as u32);
    assert_eq!(&r.data[4..7], b"vol");
    assert_eq!(a.option_reply().rep, Rep::Ack as u32);
    let d = proto::encode_info_request(&InfoRequest {
        name: "other".into(),
        requests: vec![],
    });
    a.option(6, &d);
    assert_eq!(a.option_reply().rep, Rep::ErrUnknown as u32);
    let (size, flags, bs) = a.go();
    assert_eq!(size, SIZE);
    assert_eq!(flags, 1 | 4 | 8 | 32 | 64 | 256);
    assert_eq!(bs, [4096, 4096, 32 << 20]);

    // A second client, in transmission before anything goes wrong on the first.
    let mut b = Client::connect(&gw.addr);
    b.go();

    // Plain I/O works.
    let data = pattern(8192, 7);
    assert_eq!(a.write(4096, &data), 0);
    assert_eq!(a.read(4096, 8192).unwrap(), data);

    // Past the end: reads EINVAL (no payload), writes ENOSPC (payload drained).
    assert_eq!(a.read(SIZE, 4096), Err(EINVAL));
    assert_eq!(a.read(SIZE - 4096, 8192), Err(EINVAL));
    assert_eq!(a.write(SIZE - 4096, &pattern(8192, 1)), ENOSPC);
    // Misaligned to the 4096-byte minimum block size.
    assert_eq!(a.read(512, 4096), Err(EINVAL));
    assert_eq!(a.write(0, &pattern(512, 2)), EINVAL);
    // Larger than the 32 MiB maximum block size (the export is smaller, so also past the end:
    // EINVAL for the read, ENOSPC for the write; either way the payload is drained).
    assert_eq!(a.read(0, 64 << 20), Err(EINVAL));
    assert_eq!(a.write(0, &vec![0xaa; (32 << 20) + 4096]), ENOSPC);
    // Unknown command, unknown flag, a flag not for this command.
    let h = a.send(5, 0, 0, 4096, &[]);
    a.expect(h, EINVAL);
    let h = a.send(Cmd::Read as u16, 1 << 7, 0, 4096, &[]);
    a.expect(h, EINVAL);
    let h = a.send(
        Cmd::Write as u16,
        proto::CMD_FLAG_NO_HOLE,
        0,
        4096,
        &[9; 4096],
    );
    a.expect(h, EINVAL);
    // Nothing refused changed the volume, and the stream is still in sync.
    assert_eq!(a.read(4096, 8192).unwrap(), data);
    assert_eq!(a.read(0, 4096).unwrap(), vec![0; 4096]);

    // Pipelined: 48 requests at once, answered in any order, each with its own data.
    let mut want = std::collections::HashMap::new();
    for i in 0..16u64 {
        let d = pattern(4096, i as u8);
        let h = a.send(Cmd::Write as u16, 0, (64 + i) * 4096, 4096, &d);
        want.insert(h, None);
    }
    for h in want.keys().copied().collect::<Vec<_>>() {
        assert_eq!(a.reply().0, 0, "write {h}");
    }
    want.clear();
    for i in 0..32u64 {
        let h = a.send(Cmd::Read as u16, 0, (64 + i % 16) * 4096, 4096, &[]);
        want.insert(h, Some(pattern(4096, (i % 16) as u8)));
    }
    for _ in 0..32 {
        let (err, h) = a.reply();
        assert_eq!(err, 0);
        let mut d = vec![0u8; 4096];
        a.s.read_exact(&mut d).unwrap();
        assert_eq!(Some(&Some(d)), want.get(&h), "read {h}");
        want.remove(&h);
    }
    // FLUSH, TRIM, WRITE_ZEROES (with NO_HOLE and FUA).
    let h = a.send(Cmd::Flush as u16, 0, 0, 0, &[]);
    a.expect(h, 0);
    let h = a.send(Cmd::WriteZeroes as u16, 3, 4096, 4096, &[]);
    a.expect(h, 0);
    assert_eq!(a.read(4096, 4096).unwrap(), vec![0; 4096]);
    let h = a.send(Cmd::Trim as u16, 0, 1 << 20, 1 << 20, &[]);
    a.expect(h, 0);

    // A bad request magic: that connection is dropped...
    a.s.write_all(&[0x12; proto::REQUEST_LEN]).unwrap();
    assert!(a.closed(), "bad magic must disconnect");
    // ...and the others keep being served, old and new.
    assert_eq!(b.read(4096 * 2, 4096).unwrap(), data[4096..]);
    let mut n = Client::connect(&gw.addr);
    n.go();
    assert_eq!(n.read(4096 * 2, 4096).unwrap(), data[4096..]);
    // A bad option magic during the handshake: dropped too.
    let mut h = Client::connect(&gw.addr);
    h.s.write_all(&[0u8; 16]).unwrap();
    assert!(h.closed());
    // NBD_OPT_ABORT: acknowledged, then closed.
    let mut ab = Client::connect(&gw.addr);
    ab.option(2, b"");
    assert_eq!(ab.option_reply().rep, Rep::Ack as u32);
    assert!(ab.closed());
    // NBD_CMD_DISC: no reply, the connection closes.
    n.send(Cmd::Disc as u16, 0, 0, 0, &[]);
    assert!(n.closed());
    assert_eq!(b.read(4096 * 2, 4096).unwrap(), data[4096..]);

    // SIGTERM with a client still connected: exit 0, lease ended.
    let status = gw.signal("TERM");
    assert!(status.success(), "gateway exited with {status}");
    assert!(b.closed());
    c.mount("vol").expect("the gateway's lease has ended");

    // Read-only: writes, trims and zeroes refused with EPERM; reads served.
    let gw = c.gateway("vol", &["--read-only"]);
    let mut r = Client::connect(&gw.addr);
    let (_, flags, _) = r.go();
    assert_eq!(flags & proto::FLAG_READ_ONLY, proto::FLAG_READ_ONLY);
    assert_eq!(r.write(0, &pattern(4096, 3)), EPERM);
    let h = r.send(Cmd::Trim as u16, 0, 0, 4096, &[]);
    r.expect(h, EPERM);
    let h = r.send(Cmd::WriteZeroes as u16, 0, 0, 4096, &[]);
    r.expect(h, EPERM);
    assert_eq!(r.read(4096 * 2, 4096).unwrap(), data[4096..]);
}

#[test]
fn old_style_export_name_and_unix_socket() {
    let c = Cluster::start(1);
    c.create_now("u", "single", SIZE);
    let sock = c.dir.path().join("nbd.sock");
    let gw = c.gateway("u", &["--listen", &format!("unix:{}", sock.display())]);
    assert_eq!(gw.addr, format!("unix:{}", sock.display()));
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    // Fixed newstyle without NO_ZEROES: EXPORT_NAME is answered with 124 zero bytes.
    s.write_all(&1u32.to_be_bytes()).unwrap();
    let h = proto::OptionHeader {
        magic: proto::IHAVEOPT,
        option: 1,
        length: 1,
    };
    s.write_all(&h.encode()).unwrap();
    s.write_all(b"u").unwrap();
    let mut ans = [0u8; 134];
    s.read_exact(&mut ans).unwrap();
    assert_eq!(u64::from_be_bytes(ans[..8].try_into().unwrap()), SIZE);
    assert!(ans[10..].iter().all(|&b| b == 0));
    let r = Request {
        magic: proto::REQUEST_MAGIC,
        flags: 0,
        kind: Cmd::Read as u16,
        handle: 77,
        offset: 0,
        length: 4096,
    };
    s.write_all(&r.encode()).unwrap();
    let mut rep = [0u8; 16];
    s.read_exact(&mut rep).unwrap();
    assert_eq!(proto::decode_simple_reply(&rep), Some((0, 77)));
    let mut d = vec![1u8; 4096];
    s.read_exact(&mut d).unwrap();
    assert_eq!(d, vec![0; 4096]);
    // An unknown export name cannot be refused politely: the connection is closed.
    let mut s2 = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s2.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s2.read_exact(&mut g).unwrap();
    s2.write_all(&3u32.to_be_bytes()).unwrap();
    s2.write_all(&h.encode()).unwrap();
    s2.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(s2.read(&mut b), Ok(0) | Err(_)));
}

#[test]
fn readahead_stays_coherent_with_writes_from_any_connection() {
    // A reads a stream (the gateway fetches ahead of it); B writes and zeroes inside
    // what was fetched; every read A makes after B's acknowledgement sees B's bytes.
    let c = Cluster::start(2);
    c.create_now("ra", "mirror:2", SIZE);
    let gw = c.gateway("ra", &["--readahead", "8M"]);
    let mut a = Client::connect(&gw.addr);
    a.go();
    let mut b = Client::connect(&gw.addr);
    b.go();
    let base = pattern(SIZE as usize, 3);
    for off in (0..SIZE).step_by(1 << 20) {
        assert_eq!(b.write(off, &base[off as usize..][..1 << 20]), 0);
    }
    let mut model = base.clone();
    for round in 0..3u8 {
        // A streams through the first 2 MiB; the window then covers up to 6 MiB.
        for off in (0..2u64 << 20).step_by(128 << 10) {
            let got = a.read(off, 128 << 10).unwrap();
            same(&got, &model[off as usize..][..128 << 10], round, off);
        }
        // B changes bytes ahead of A: a write and a WRITE_ZEROES.
        let w_at = (3u64 << 20) + 4096 * u64::from(round);
        let data = pattern(64 << 10, 100 + round);
        assert_eq!(b.write(w_at, &data), 0);
        model[w_at as usize..][..data.len()].copy_from_slice(&data);
        let z_at = (5u64 << 20) + 8192;
        let h = b.send(Cmd::WriteZeroes as u16, 0, z_at, 16 << 10, &[]);
        b.expect(h, 0);
        model[z_at as usize..][..16 << 10].fill(0);
        // A goes on with its stream over the changed ranges.
        for off in ((2u64 << 20)..(6 << 20)).step_by(128 << 10) {
            let got = a.read(off, 128 << 10).unwrap();
            same(&got, &model[off as usize..][..128 << 10], round, off);
        }
        // And A's own write lands in what it fetched.
        let mine = pattern(4096, 200 + round);
        assert_eq!(a.write(7 << 20, &mine), 0);
        model[7 << 20..][..4096].copy_from_slice(&mine);
        for off in ((6u64 << 20)..(8 << 20)).step_by(128 << 10) {
            let got = a.read(off, 128 << 10).unwrap();
            same(&got, &model[off as usize..][..128 << 10], round, off);
        }
    }
    // The same bytes through a fresh connection (no readahead state of its own).
    let mut d = Client::connect(&gw.addr);
    d.go();
    for off in (0..8u64 << 20).step_by(1 << 20) {
        same(
            &d.read(off, 1 << 20).unwrap(),
            &model[off as usize..][..1 << 20],
            9,
            off,
        );
    }
}

/// Equal bytes, or a failure naming the first byte that differs (not a dump of both).
fn same(got: &[u8], want: &[u8], round: u8, at: u64) {
    if let Some(i) = (0..want.len()).find(|&i| got.get(i) != want.get(i)) {
        panic!(
            "round {round}: read at {at} differs at byte {} (got {:?}, want {})",
            at + i as u64,
            got.get(i),
            want[i]
        );
    }
    assert_eq!(got.len(), want.len());
}

/// CPU time (user + system, in clock ticks) the process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn an_adaptive_gateway_polls_only_while_requests_are_in_flight() {
    // `--poll adaptive`: busy while requests are in flight, asleep when none is,
    // also after refused requests and a client that goes away with requests pending.
    let c = Cluster::start(1);
    c.create_now("idle", "single", SIZE);
    let gw = c.gateway("idle", &["--poll", "adaptive"]);
    let mut a = Client::connect(&gw.addr);
    a.go();
    let data = pattern(1 << 20, 7);
    assert_eq!(a.write(0, &data), 0);
    for off in (0..1u64 << 20).step_by(64 << 10) {
        same(
            &a.read(off, 64 << 10).unwrap(),
            &data[off as usize..][..64 << 10],
            0,
            off,
        );
    }
    let h = a.send(Cmd::Read as u16, 0, SIZE, 4096, &[]); // past the end
    a.expect(h, EINVAL);
    // A second client sends requests and leaves without reading the replies.
    let mut b = Client::connect(&gw.addr);
    b.go();
    for i in 0..16u64 {
        b.send(Cmd::Read as u16, 0, i * 4096, 4096, &[]);
    }
    drop(b);
    std::thread::sleep(Duration::from_millis(500));
    let pid = gw.child.id();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - before;
    // A gateway still polling would use about 200 ticks (two seconds of a core).
    assert!(used <= 20, "idle gateway used {used} ticks in 2 s");
    // It still serves.
    same(&a.read(0, 4096).unwrap(), &data[..4096], 1, 0);
}

/// The CPUs each thread of `pid` may run on, as the kernel lists them (`0`, `0-1`, ...).
fn cpus_allowed(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list in status");
        out.push(line.trim().to_string());
    }
    out
}

#[test]
fn a_gateway_given_a_cpu_runs_every_thread_there() {
    let c = Cluster::start(1);
    c.create_now("pinned", "single", SIZE);
    // The first CPU this test may use (CPU 0 need not be one of them).
    let mine = cpus_allowed(std::process::id()).remove(0);
    let cpu = mine.split([',', '-']).next().unwrap().to_string();
    let gw = c.gateway("pinned", &["--cpu", &cpu]);
    let mut a = Client::connect(&gw.addr);
    a.go();
    let data = pattern(256 << 10, 3);
    assert_eq!(a.write(0, &data), 0);
    same(&a.read(0, 256 << 10).unwrap(), &data, 0, 0);
    let threads = cpus_allowed(gw.child.id());
    assert!(!threads.is_empty());
    assert!(
        threads.iter().all(|c| *c == cpu),
        "every thread on CPU {cpu}: {threads:?}"
    );
}
