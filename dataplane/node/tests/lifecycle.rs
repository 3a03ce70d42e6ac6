//! Durability across SIGKILL, clean shutdown under load, and out-of-order completion.

mod common;

use std::io::Write as _;
use std::time::Duration;

use common::{pattern, req, Node, Raw};
use dasmesh_wire::{Op, RequestHeader, Rights, SearchBody, Status, Tag, FLAG_FUA};

const MIB: u64 = 1 << 20;

#[test]
fn flushed_and_fua_writes_survive_sigkill() {
    let mut node = Node::start(&["file:{dir}/d0.img:16M"], &[]);
    let t = node.token(0, 0, 16 * MIB, Rights::ReadWrite, 1);
    let mut c = Raw::open(&node.addr, 0, &t);
    let mut expect = Vec::new();
    for i in 0..16u64 {
        let data = pattern(64 << 10, i);
        c.send(&req(Op::Write, i, i * MIB, data.len() as u64), &data);
        expect.push((i * MIB, data));
    }
    for _ in 0..16 {
        assert_eq!(c.recv().0.status_enum(), Status::Ok);
    }
    c.send(&req(Op::Flush, 100, 0, 0), &[]);
    let (h, _) = c.recv();
    assert_eq!((h.status_enum(), h.tag), (Status::Ok, Tag(100)));
    // A FUA write is durable when acknowledged, without a FLUSH.
    let fua = pattern(4096, 77);
    c.send(
        &RequestHeader::new(Op::Write, FLAG_FUA, Tag(101), 15 * MIB + 512 * 1024, 4096),
        &fua,
    );
    assert_eq!(c.recv().0.status_enum(), Status::Ok);
    expect.push((15 * MIB + 512 * 1024, fua));
    node.kill();
    node.restart();
    let t = node.token(0, 0, 16 * MIB, Rights::ReadOnly, 1);
    let mut c = Raw::open(&node.addr, 0, &t);
    for (off, data) in &expect {
        c.send(&req(Op::Read, 1, *off, data.len() as u64), &[]);
        let (h, p) = c.recv();
        assert_eq!(h.status_enum(), Status::Ok);
        assert!(p == *data, "bytes at {off} lost after SIGKILL");
    }
}

#[test]
fn clean_shutdown_under_load_answers_or_closes_and_exits_zero() {
    let mut node = Node::start(&["file:{dir}/d0.img:64M", "memory:16M"], &[]);
    let mut writers = Vec::new();
    for (k, device) in [(0u64, 0u32), (1, 0), (2, 1), (3, 1)] {
        let t = node.token(device, 0, 16 * MIB, Rights::ReadWrite, 1);
        let mut c = Raw::open(&node.addr, device, &t);
        c.s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        writers.push(std::thread::spawn(move || {
            // Keep 32 requests in flight until the node stops answering; count outcomes.
            let data = pattern(16 << 10, k);
            let (mut sent, mut ok, mut refused) = (0u64, 0u64, 0u64);
            let send = |c: &mut Raw, n: u64| {
                let op = if n.is_multiple_of(2) {
                    Op::Write
                } else {
                    Op::Read
                };
                let off = (n * 16384) % (16 * MIB);
                let h = req(op, n, off, 16384);
                let payload: &[u8] = if op == Op::Write { &data } else { &[] };
                let mut v = h.encode().to_vec();
                v.extend_from_slice(payload);
                c.s.write_all(&v).is_ok()
            };
            for _ in 0..32 {
                assert!(send(&mut c, sent));
                sent += 1;
            }
            loop {
                let h = match c.try_recv() {
                    Ok((h, _)) => h,
                    Err(e) => {
                        // Closed by the node: fine, as long as it did not hang (read timeout)
                        // or send garbage.
                        assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "node hung");
                        assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "node hung");
                        assert_ne!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
                        break;
                    }
                };
                match h.status_enum() {
                    Status::Ok => ok += 1,
                    Status::ShuttingDown => refused += 1,
                    s => panic!("unexpected status {s:?} during shutdown"),
                }
                if send(&mut c, sent) {
                    sent += 1;
                }
            }
            (sent, ok, refused)
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    let status = node.stop();
    assert!(status.success(), "node exited with {status:?}");
    for w in writers {
        let (sent, ok, refused) = w.join().unwrap();
        assert!(ok > 0, "no request completed before shutdown");
        assert!(ok + refused <= sent);
    }
}

#[test]
fn replies_come_back_out_of_order_matched_by_tag() {
    let node = Node::start(&["file:{dir}/d0.img:64M"], &[]);
    let t = node.token(0, 0, 64 * MIB, Rights::ReadWrite, 1);
    let mut c = Raw::open(&node.addr, 0, &t);
    // A search over 64 MiB takes 64 sequential chunk reads; a 4k read sent after it takes one.
    let body = SearchBody {
        max_hits: 10,
        pattern: b"needle".to_vec(),
    }
    .encode()
    .unwrap();
    c.send(&req(Op::Search, 1, 0, 64 * MIB), &body);
    c.send(&req(Op::Read, 2, 0, 4096), &[]);
    let first = c.recv().0;
    let second = c.recv().0;
    assert_eq!((first.tag, first.status_enum()), (Tag(2), Status::Ok));
    assert_eq!((second.tag, second.status_enum()), (Tag(1), Status::Ok));
    assert_eq!(second.payload_len, 0, "an empty file has no needle");
}

#[test]
fn fencing_epochs_survive_a_restart_with_a_state_dir() {
    let mut node = Node::start(&["file:{dir}/d0.img:4M"], &["--state-dir", "{dir}/state"]);
    let newer = node.token(0, 0, 2 * MIB, Rights::ReadWrite, 5);
    let _ = Raw::open(&node.addr, 0, &newer);
    node.kill();
    node.restart();
    let older = node.token(0, MIB, 3 * MIB, Rights::ReadWrite, 4);
    let (_, reply) = Raw::hello(&node.addr, 0, older.as_bytes());
    assert_eq!(
        reply.status_enum(),
        Status::StaleEpoch,
        "the fence was forgotten by the restart"
    );
    let _ = Raw::open(&node.addr, 0, &newer);
    let disjoint = node.token(0, 3 * MIB, 4 * MIB, Rights::ReadWrite, 1);
    let _ = Raw::open(&node.addr, 0, &disjoint);
}
