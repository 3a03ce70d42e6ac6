//! Resource bounds of the node against misbehaving clients: connections that stall mid-frame or
//! never read their replies cannot starve others, silent ones are closed after the timeouts,
//! clients that take no replies are closed after the send timeout, their memory comes back
//! when they close, and a slow FLUSH/DISCARD does not stop the reactor.
//! Every wait is bounded so that a regression fails instead of hanging.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{pattern, req, Node, Raw};
use dasmesh_wire::{
    DeviceId, Hello, Op, Rights, Status, Token, PROTOCOL_VERSION, REQUEST_HEADER_LEN,
};

const MIB: u64 = 1 << 20;
/// How long a well-behaved client waits for any one answer before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// A session whose handshake succeeded, with both directions bounded by [`PATIENCE`].
fn open(node: &Node, token: &Token) -> Raw {
    let c = Raw::open(&node.addr, 0, token);
    c.s.set_read_timeout(Some(PATIENCE)).unwrap();
    c.s.set_write_timeout(Some(PATIENCE)).unwrap();
    c
}

/// Writes `data` at `off` and reads it back, each step within [`PATIENCE`].
fn write_read(c: &mut Raw, tag: u64, off: u64, data: &[u8]) {
    c.send(&req(Op::Write, tag, off, data.len() as u64), data);
    let (h, _) = c.recv();
    assert_eq!(h.status_enum(), Status::Ok, "write of {} bytes", data.len());
    c.send(&req(Op::Read, tag + 1, off, data.len() as u64), &[]);
    let (h, p) = c.recv();
    assert_eq!(h.status_enum(), Status::Ok, "read of {} bytes", data.len());
    assert!(p == data, "read back other bytes at {off}");
}

/// Whether the node closes `s` within `within` (EOF or reset), as opposed to a read timeout.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn hello_bytes(token: &Token) -> Vec<u8> {
    let h = Hello {
        min_version: 1,
        max_version: PROTOCOL_VERSION,
        device_id: DeviceId(0),
        token_len: token.as_bytes().len() as u16,
        flags: 0,
    };
    let mut v = h.encode().to_vec();
    v.extend_from_slice(token.as_bytes());
    v
}

/// Resident memory of a process in KiB, from /proc/PID/status.
fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The five mappings of a process with the most resident memory, from /proc/PID/smaps.
fn largest_mappings(pid: u32) -> String {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut maps: Vec<(u64, String)> = Vec::new();
    let mut head = String::new();
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Rss:") {
            let kib = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            maps.push((kib, head.clone()));
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|w| w.contains('-'))
        {
            head = line.to_string();
        }
    }
    maps.sort_by_key(|m| std::cmp::Reverse(m.0));
    maps.iter()
        .take(5)
        .map(|(k, h)| format!("  {k} KiB  {h}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn stuck_writers_and_unread_readers_do_not_starve_others() {
    let node = Node::start(&["file:{dir}/d.img:64M"], &[]);
    let ro = node.token(0, 0, 64 * MIB, Rights::ReadOnly, 1);
    let rw = node.token(0, 0, 64 * MIB, Rights::ReadWrite, 1);
    // 32 connections (with a read-only token) send a 1 MiB WRITE header and never its payload.
    let mut hostile = Vec::new();
    for i in 0..32 {
        let mut c = open(&node, &ro);
        c.send(&req(Op::Write, i, 0, MIB), &[]);
        hostile.push(c);
    }
    // 4 connections ask for 256 READs of 1 MiB each and never read a reply.
    for i in 0..4u64 {
        let mut c = open(&node, &ro);
        let mut frames = Vec::new();
        for t in 0..256u64 {
            frames.extend_from_slice(&req(Op::Read, t, ((i * 256 + t) % 64) * MIB, MIB).encode());
        }
        c.s.write_all(&frames).unwrap();
        hostile.push(c);
    }
    // Let the node take everything they make it take.
    std::thread::sleep(Duration::from_millis(500));
    let mut good = open(&node, &rw);
    write_read(&mut good, 1, 0, &pattern(MIB as usize, 1));
    write_read(&mut good, 3, 8 * MIB, &pattern(4096, 2));
    write_read(&mut good, 5, 16 * MIB, &pattern(128 << 10, 3));
    // And a second client on a fresh connection.
    let mut other = open(&node, &rw);
    write_read(&mut other, 7, 32 * MIB, &pattern(MIB as usize, 4));
    drop(hostile);
}

#[test]
fn many_stalled_writers_leave_slots_for_others() {
    // More connections stuck mid-WRITE than the arena has slots (928), with a payload timeout
    // long enough that it never fires here: reads of every size and small writes must still be
    // served at once, and a large WRITE once the stalled payloads holding slots have been closed
    // for holding them while others wait (docs/node.md).
    let node = Node::start(&["file:{dir}/d.img:16M"], &["--payload-timeout", "10m"]);
    let ro = node.token(0, 0, 16 * MIB, Rights::ReadOnly, 1);
    let rw = node.token(0, 0, 16 * MIB, Rights::ReadWrite, 1);
    let mut good = open(&node, &rw);
    let big = pattern(MIB as usize, 7);
    write_read(&mut good, 1, 2 * MIB, &big);
    let mut hostile = Vec::new();
    for i in 0..1000u64 {
        let mut c = open(&node, &ro);
        // Half: a 4 KiB WRITE with a little of its payload; half: 256 KiB. Then nothing.
        let len = if i % 2 == 0 { 4096 } else { 256 << 10 };
        c.send(&req(Op::Write, i, 0, len), &[7u8; 100]);
        hostile.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    write_read(&mut good, 3, 0, &pattern(4096, 5));
    write_read(&mut good, 5, MIB, &pattern(16 << 10, 6));
    for (tag, len) in [(7, 4096u64), (8, 128 << 10), (9, MIB)] {
        good.send(&req(Op::Read, tag, 2 * MIB, len), &[]);
        let (h, p) = good.recv();
        assert_eq!(h.status_enum(), Status::Ok, "read of {len}");
        assert!(p[..] == big[..len as usize], "read of {len}");
    }
    let mut fresh = open(&node, &rw);
    write_read(&mut fresh, 11, 4 * MIB, &pattern(4096, 8));
    write_read(&mut fresh, 13, 5 * MIB, &pattern(64 << 10, 9));
    write_read(&mut fresh, 15, 6 * MIB, &pattern(MIB as usize, 10));
    drop(hostile);
}

#[test]
fn silent_handshakes_are_closed_after_the_timeout() {
    let node = Node::start(&["memory:4M"], &["--handshake-timeout", "300ms"]);
    let t = node.token(0, 0, 4 * MIB, Rights::ReadOnly, 1);
    // Nothing at all.
    let mut silent = Raw::connect(&node.addr);
    // Half a hello.
    let mut half = Raw::connect(&node.addr);
    half.s.write_all(&hello_bytes(&t)[..20]).unwrap();
    // The whole hello but half the token.
    let mut partial = Raw::connect(&node.addr);
    let h = hello_bytes(&t);
    partial.s.write_all(&h[..h.len() - 10]).unwrap();
    for (what, c) in [
        ("silent", &mut silent),
        ("half hello", &mut half),
        ("half token", &mut partial),
    ] {
        assert!(
            closed_within(&mut c.s, PATIENCE),
            "{what} connection kept open"
        );
    }
    // A handshake completed in time is served past the timeout.
    let mut ok = open(&node, &t);
    std::thread::sleep(Duration::from_millis(900));
    ok.send(&req(Op::Read, 1, 0, 4096), &[]);
    assert_eq!(ok.recv().0.status_enum(), Status::Ok);
}

#[test]
fn stalled_frames_are_closed_after_the_payload_timeout() {
    let node = Node::start(&["memory:4M"], &["--payload-timeout", "300ms"]);
    let rw = node.token(0, 0, 4 * MIB, Rights::ReadWrite, 1);
    // A large WRITE with part of its payload.
    let mut big = open(&node, &rw);
    big.send(&req(Op::Write, 1, 0, 256 << 10), &[1u8; 1000]);
    // A small WRITE with part of its payload (it rides in the staging buffer).
    let mut small = open(&node, &rw);
    small.send(&req(Op::Write, 1, 0, 8192), &[1u8; 100]);
    // A WRITE header and no payload at all.
    let mut header_only = open(&node, &rw);
    header_only.send(&req(Op::Write, 1, 0, MIB), &[]);
    // Part of a request header.
    let mut half_header = open(&node, &rw);
    half_header
        .s
        .write_all(&req(Op::Read, 1, 0, 4096).encode()[..REQUEST_HEADER_LEN / 2])
        .unwrap();
    for (what, c) in [
        ("large write", &mut big),
        ("small write", &mut small),
        ("header only", &mut header_only),
        ("half header", &mut half_header),
    ] {
        assert!(closed_within(&mut c.s, PATIENCE), "{what}: kept open");
    }
    // A connection idle between frames is not closed, and one that keeps sending its payload
    // slowly is not either.
    let mut idle = open(&node, &rw);
    let mut slow = open(&node, &rw);
    slow.send(&req(Op::Write, 2, 0, 4096), &[]);
    for chunk in [[3u8; 1024]; 4] {
        std::thread::sleep(Duration::from_millis(150));
        slow.s.write_all(&chunk).unwrap();
    }
    assert_eq!(slow.recv().0.status_enum(), Status::Ok);
    std::thread::sleep(Duration::from_millis(600));
    idle.send(&req(Op::Read, 3, 0, 4096), &[]);
    let (h, p) = idle.recv();
    assert_eq!(h.status_enum(), Status::Ok);
    assert_eq!(p, vec![3u8; 4096]);
}

#[test]
fn a_client_that_takes_no_replies_is_closed_after_the_send_timeout() {
    let node = Node::start(&["memory:64M"], &["--send-timeout", "300ms"]);
    let ro = node.token(0, 0, 64 * MIB, Rights::ReadOnly, 1);
    // More reply bytes than the socket buffers hold, none of them read.
    let mut deaf = open(&node, &ro);
    let mut frames = Vec::new();
    for t in 0..64u64 {
        frames.extend_from_slice(&req(Op::Read, t, t * MIB, MIB).encode());
    }
    deaf.s.write_all(&frames).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // Reading now drains what the kernel holds; a connection the node still served would then
    // send the rest and stay open.
    assert!(closed_within(&mut deaf.s, PATIENCE), "kept open");
    // A client that reads its replies is not closed, however many it asks for.
    let mut reader = open(&node, &ro);
    reader.s.write_all(&frames).unwrap();
    for _ in 0..64 {
        assert_eq!(reader.recv().0.status_enum(), Status::Ok);
    }
}

#[test]
fn clients_that_take_no_replies_cannot_starve_large_reads() {
    // Each 1 MiB READ's reply is sent from its slot, and the arena has 32 such slots: 64
    // connections asking for 16 each and reading none hold them all, well past what the
    // kernel's socket buffers absorb. Default timeouts: the slots must come back (the send
    // timeout, shortened while others wait for slots) and a well-behaved client be served.
    let node = Node::start(&["file:{dir}/d.img:64M"], &[]);
    let ro = node.token(0, 0, 64 * MIB, Rights::ReadOnly, 1);
    let rw = node.token(0, 0, 64 * MIB, Rights::ReadWrite, 1);
    let mut hostile = Vec::new();
    for i in 0..64u64 {
        let mut c = open(&node, &ro);
        let mut frames = Vec::new();
        for t in 0..16u64 {
            frames.extend_from_slice(&req(Op::Read, t, ((i + t) % 64) * MIB, MIB).encode());
        }
        c.s.write_all(&frames).unwrap();
        hostile.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut good = open(&node, &rw);
    write_read(&mut good, 1, 0, &pattern(MIB as usize, 5));
    write_read(&mut good, 3, 4 * MIB, &pattern(MIB as usize, 6));
    drop(hostile);
}

#[test]
fn memory_is_returned_after_hostile_connections_close() {
    let node = Node::start(&["memory:16M"], &[]);
    let ro = node.token(0, 0, 16 * MIB, Rights::ReadOnly, 1);
    // Warm up: the first connections and requests grow what the node keeps anyway.
    for _ in 0..4 {
        let mut c = open(&node, &ro);
        c.send(&req(Op::Read, 1, 0, 4096), &[]);
        c.recv();
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = vm_rss_kib(node.pid());
    let mut hostile = Vec::new();
    for _ in 0..900 {
        let mut c = open(&node, &ro);
        // A full receive buffer of READ headers whose replies are never read, then a partial
        // header.
        let mut frames = Vec::new();
        for t in 0..2000u64 {
            frames.extend_from_slice(&req(Op::Read, t, (t % 4096) * 4096, 4096).encode());
        }
        frames.extend_from_slice(&req(Op::Read, 1, 0, 4096).encode()[..10]);
        let _ = c.s.write_all(&frames);
        hostile.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let during = vm_rss_kib(node.pid());
    drop(hostile);
    // The node closes them as it sees the FINs; give it a bounded while. The bound leaves
    // room for allocator fragmentation (16-19 MiB was seen kept with other tests running
    // beside; the code before the fix kept about 100 MiB).
    let bound = 32 * 1024;
    let deadline = Instant::now() + PATIENCE;
    let mut after = vm_rss_kib(node.pid());
    while after > before + bound && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = vm_rss_kib(node.pid());
    }
    eprintln!(
        "VmRSS before {before} KiB, with 900 hostile connections {during} KiB, after {after} KiB"
    );
    if after > before + bound {
        eprintln!(
            "largest resident mappings:\n{}",
            largest_mappings(node.pid())
        );
    }
    assert!(
        after <= before + bound,
        "the node kept {} KiB after the connections closed (before {before}, during {during})",
        after - before
    );
    // Still serving.
    let mut c = open(&node, &ro);
    c.send(&req(Op::Read, 1, 0, 4096), &[]);
    assert_eq!(c.recv().0.status_enum(), Status::Ok);
}

#[test]
fn a_slow_flush_or_discard_does_not_stop_other_requests() {
    // Test-only fault: every FLUSH / DISCARD / WRITE_ZEROES takes 3 s in the backend.
    let node = Node::start(
        &["file:{dir}/d.img:16M"],
        &["--fault-slow-device-ops", "3s"],
    );
    let rw = node.token(0, 0, 16 * MIB, Rights::ReadWrite, 1);
    let mut reader = open(&node, &rw);
    write_read(&mut reader, 1, 0, &pattern(4096, 9));
    for (op, off, len) in [
        (Op::Flush, 0, 0),
        (Op::Discard, MIB, 4096),
        (Op::WriteZeroes, MIB, 4096),
    ] {
        let mut slow = open(&node, &rw);
        slow.send(&req(op, 1, off, len), &[]);
        std::thread::sleep(Duration::from_millis(200));
        // Answered while the slow op is still outstanding.
        let t0 = Instant::now();
        reader.send(&req(Op::Read, 2, 0, 4096), &[]);
        let (h, p) = reader.recv();
        assert_eq!(h.status_enum(), Status::Ok);
        assert_eq!(p, pattern(4096, 9));
        slow.s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let pending = matches!(slow.s.peek(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock);
        assert!(
            pending,
            "{op:?}: the read was answered only after the slow op ({:?})",
            t0.elapsed()
        );
        slow.s.set_nonblocking(false).unwrap();
        assert_eq!(slow.recv().0.status_enum(), Status::Ok, "{op:?}");
    }
}
