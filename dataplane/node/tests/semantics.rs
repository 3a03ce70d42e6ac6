//! Protocol semantics the node defines beyond the happy path (docs/protocol.md): which token
//! ranges a handshake refuses (the owner's reserved area, block alignment), what every refusal's
//! `version` carries, honest capabilities of a memory backend, undefined flag bits, a client that
//! connects while the node shuts down, and one that half-closes its side after its requests.

mod common;

use std::io::{Read as _, Write as _};
use std::net::Shutdown;

use common::{pattern, req, Node, Raw};
use dasmesh_wire::{
    Capabilities, HelloReply, Op, RequestHeader, Rights, SearchBody, Status, Tag, FLAG_FUA,
    HELLO_REPLY_LEN,
};

const MIB: u64 = 1 << 20;

/// Connects, sends a hello with `token`, and expects a refusal with `want`: the reply's
/// `version` must be `version` and the connection must be closed after it.
fn refused(node: &Node, device: u32, token: &[u8], want: Status, version: u16, what: &str) {
    let (mut raw, reply) = Raw::hello(&node.addr, device, token);
    assert_eq!(
        (reply.status_enum(), reply.version),
        (want, version),
        "{what}"
    );
    assert!(raw.is_closed(), "{what}: connection should be closed");
}

#[test]
fn tokens_touching_the_reserved_area_are_refused() {
    let node = Node::start(&["memory:4M"], &["--reserve", "1M"]);
    for (start, end) in [
        (0, 2 * MIB),
        (0, 4096),
        (MIB - 4096, MIB + 4096),
        (0, 64 * MIB),
    ] {
        let t = node.token(0, start, end, Rights::ReadWrite, 1);
        refused(
            &node,
            0,
            t.as_bytes(),
            Status::OutOfRange,
            1,
            &format!("token {start}..{end} over a 1 MiB reservation"),
        );
        let ro = node.token(0, start, end, Rights::ReadOnly, 1);
        refused(
            &node,
            0,
            ro.as_bytes(),
            Status::OutOfRange,
            1,
            "read-only tokens too",
        );
    }
    // The lendable area is served, up to the end of the device and beyond (clipped).
    for (start, end) in [(MIB, 2 * MIB), (MIB, 4 * MIB), (3 * MIB, 8 * MIB)] {
        let t = node.token(0, start, end, Rights::ReadWrite, 1);
        let mut c = Raw::open(&node.addr, 0, &t);
        c.send(&req(Op::Read, 1, start, 4096), &[]);
        assert_eq!(c.recv().0.status_enum(), Status::Ok);
    }

    // A reservation of the tail: START.. keeps everything from START on.
    let node = Node::start(&["memory:4M"], &["--reserve", "3M.."]);
    let t = node.token(0, 2 * MIB, 4 * MIB, Rights::ReadWrite, 1);
    refused(
        &node,
        0,
        t.as_bytes(),
        Status::OutOfRange,
        1,
        "2M..4M over a reserved tail from 3M",
    );
    let t = node.token(0, 0, 3 * MIB, Rights::ReadWrite, 1);
    let _ = Raw::open(&node.addr, 0, &t);
}

#[test]
fn token_ranges_off_the_block_size_are_refused() {
    let node = Node::start(&["memory:4M", "file:{dir}/d1.img:4M"], &[]);
    for device in [0u32, 1] {
        for (start, end) in [(512, 8192), (0, 6144), (4096, 4096 + 512), (512, 8 * MIB)] {
            let t = node.token(device, start, end, Rights::ReadWrite, 1);
            refused(
                &node,
                device,
                t.as_bytes(),
                Status::Misaligned,
                1,
                &format!("device {device}: token {start}..{end} on 4096-byte blocks"),
            );
        }
        // An aligned start with a range running past the device is clipped to its (aligned)
        // end, and served.
        let t = node.token(device, 4096, 8 * MIB + 512, Rights::ReadWrite, 1);
        let (_, reply) = Raw::hello(&node.addr, device, t.as_bytes());
        assert_eq!(reply.status_enum(), Status::Ok);
        assert_eq!(
            (reply.lent_offset, reply.lent_length),
            (4096, 4 * MIB - 4096)
        );
    }
}

#[test]
fn every_refusal_says_which_version_it_speaks() {
    let node = Node::start(&["memory:4M"], &[]);
    let good = node.token(0, 0, 4 * MIB, Rights::ReadWrite, 5);
    // Refusals after a common version was found carry it (1).
    let expired = node.token_with(0, 0, MIB, Rights::ReadWrite, 5, 0, &node.key, -1000);
    refused(&node, 0, expired.as_bytes(), Status::Expired, 1, "expired");
    refused(&node, 3, good.as_bytes(), Status::WrongDevice, 1, "device");
    let beyond = node.token(0, 8 * MIB, 9 * MIB, Rights::ReadWrite, 5);
    refused(&node, 0, beyond.as_bytes(), Status::OutOfRange, 1, "range");
    refused(
        &node,
        0,
        &good.as_bytes()[..100],
        Status::BadToken,
        1,
        "short token",
    );
    let _ = Raw::open(&node.addr, 0, &good);
    let older = node.token(0, 0, MIB, Rights::ReadWrite, 4);
    refused(&node, 0, older.as_bytes(), Status::StaleEpoch, 1, "epoch");
    // A node without a key to verify tokens with.
    let keyless = dasmesh_testkit::Process::spawn(
        "dasmesh-node",
        &[
            "--listen",
            "127.0.0.1:0",
            "--no-pin",
            "--backend",
            "memory:1M",
        ]
        .map(String::from),
    );
    let (mut raw, reply) = Raw::hello(&keyless.addr, 0, good.as_bytes());
    assert_eq!(
        (reply.status_enum(), reply.version),
        (Status::NoTrustKey, 1)
    );
    assert!(raw.is_closed());
    // Before a version is chosen: 0.
    let (mut raw, reply) = Raw::hello_versions(&node.addr, 0, good.as_bytes(), 2, 3);
    assert_eq!(
        (reply.status_enum(), reply.version),
        (Status::VersionMismatch, 0)
    );
    assert!(raw.is_closed());
    for (what, bytes) in [
        ("garbage", vec![0xABu8; 32]),
        ("zero token length", {
            let mut h = dasmesh_wire::Hello {
                min_version: 1,
                max_version: 1,
                device_id: dasmesh_wire::DeviceId(0),
                token_len: 1,
                flags: 0,
            }
            .encode();
            h[16] = 0;
            h.to_vec()
        }),
    ] {
        let mut raw = Raw::connect(&node.addr);
        raw.s.write_all(&bytes).unwrap();
        let mut b = [0u8; HELLO_REPLY_LEN];
        raw.s.read_exact(&mut b).unwrap();
        let r = HelloReply::decode(&b).unwrap();
        assert_eq!(r.version, 0, "{what}");
        assert_ne!(r.status_enum(), Status::Ok, "{what}");
        assert!(raw.is_closed(), "{what}");
    }
}

#[test]
fn a_memory_backend_announces_no_durability_and_flush_fua_still_answer() {
    let node = Node::start(&["memory:4M", "file:{dir}/d1.img:4M"], &[]);
    let durable = Capabilities::FLUSH | Capabilities::FUA;
    let t = node.token(0, 0, 4 * MIB, Rights::ReadWrite, 1);
    let (mut c, reply) = Raw::hello(&node.addr, 0, t.as_bytes());
    assert_eq!(reply.status_enum(), Status::Ok);
    assert_eq!(
        reply.capabilities.0 & durable,
        0,
        "memory cannot make anything durable: FLUSH and FUA must be clear"
    );
    assert!(reply.capabilities.has(
        Capabilities::DISCARD
            | Capabilities::WRITE_ZEROES
            | Capabilities::SEARCH
            | Capabilities::DISCARD_ZEROES
    ));
    // The file backend keeps them.
    let t1 = node.token(1, 0, 4 * MIB, Rights::ReadWrite, 1);
    let (_, r1) = Raw::hello(&node.addr, 1, t1.as_bytes());
    assert!(r1.capabilities.has(durable));
    // With the bits clear, a FUA write and a FLUSH are still answered Ok (docs/protocol.md,
    // Capabilities) and the write is applied.
    let data = pattern(8192, 5);
    c.send(
        &RequestHeader::new(Op::Write, FLAG_FUA, Tag(1), 8192, 8192),
        &data,
    );
    assert_eq!(c.recv().0.status_enum(), Status::Ok);
    c.send(
        &RequestHeader::new(Op::WriteZeroes, FLAG_FUA, Tag(2), 0, 4096),
        &[],
    );
    assert_eq!(c.recv().0.status_enum(), Status::Ok);
    c.send(&req(Op::Flush, 3, 0, 0), &[]);
    assert_eq!(c.recv().0.status_enum(), Status::Ok);
    c.send(&req(Op::Read, 4, 8192, 8192), &[]);
    let (h, p) = c.recv();
    assert_eq!(h.status_enum(), Status::Ok);
    assert!(p == data);
}

#[test]
fn undefined_flag_bits_are_answered_bad_flags_and_the_connection_continues() {
    let node = Node::start(&["memory:4M"], &[]);
    let t = node.token(0, 0, 4 * MIB, Rights::ReadWrite, 1);
    let mut c = Raw::open(&node.addr, 0, &t);
    let block = pattern(4096, 9);
    let body = SearchBody {
        max_hits: 4,
        pattern: b"ab".to_vec(),
    }
    .encode()
    .unwrap();
    // Every flag bit but FUA is undefined, on every op; FUA only on WRITE and WRITE_ZEROES.
    for bit in 1..8u8 {
        let flags = 1u8 << bit;
        for (op, payload) in [
            (Op::Read, vec![]),
            (Op::Write, block.clone()),
            (Op::Flush, vec![]),
            (Op::Discard, vec![]),
            (Op::WriteZeroes, vec![]),
            (Op::Search, body.to_vec()),
        ] {
            let len = if op == Op::Flush { 0 } else { 4096 };
            let h = RequestHeader::new(op, flags | FLAG_FUA, Tag(u64::from(bit)), 0, len);
            c.send(&h, &payload);
            let (r, p) = c.recv();
            assert_eq!(
                (r.status_enum(), r.tag),
                (Status::BadFlags, h.tag),
                "{op:?} with flags {flags:#x}"
            );
            assert!(p.is_empty());
        }
    }
    // The refused writes consumed their payloads and changed nothing; the stream is in step.
    c.send(&req(Op::Read, 100, 0, 4096), &[]);
    let (h, p) = c.recv();
    assert_eq!((h.status_enum(), h.tag), (Status::Ok, Tag(100)));
    assert!(p.iter().all(|b| *b == 0));
}

#[test]
fn a_client_connecting_during_shutdown_is_refused_at_once() {
    let mut node = Node::start(&["memory:4M"], &["--shutdown-grace", "60s"]);
    let t = node.token(0, 0, 4 * MIB, Rights::ReadWrite, 1);
    // A WRITE whose payload is partly sent keeps the node in its shutdown grace (one above
    // 16 KiB: a smaller WRITE is admitted only once its whole payload is in).
    let mut busy = Raw::open(&node.addr, 0, &t);
    let mut frame = req(Op::Write, 1, 0, 64 << 10).encode().to_vec();
    frame.extend_from_slice(&[0xEE; 4096]);
    busy.s.write_all(&frame).unwrap();
    // An idle session, closed by the node when its shutdown begins: the signal to go on.
    let mut idle = Raw::open(&node.addr, 0, &t);
    idle.send(&req(Op::Read, 2, 0, 4096), &[]);
    assert_eq!(idle.recv().0.status_enum(), Status::Ok);
    node.signal("TERM");
    assert!(idle.is_closed());

    // A new client gets ShuttingDown (version 0: its hello was not read) and a closed
    // connection, not a hang until the node exits.
    for _ in 0..3 {
        let (mut raw, reply) = Raw::hello(&node.addr, 0, t.as_bytes());
        assert_eq!(
            (reply.status_enum(), reply.version),
            (Status::ShuttingDown, 0)
        );
        assert!(raw.is_closed());
    }
    // The half-sent WRITE completes its payload and is refused; then the node exits cleanly.
    busy.s.write_all(&[0xEE; (64 << 10) - 4096]).unwrap();
    let (h, _) = busy.recv();
    assert_eq!((h.status_enum(), h.tag), (Status::ShuttingDown, Tag(1)));
    let status = node.wait(std::time::Duration::from_secs(30));
    assert!(status.success(), "node exited with {status:?}");
}

#[test]
fn a_half_closed_client_gets_every_reply() {
    let node = Node::start(&["file:{dir}/d0.img:64M", "memory:64M"], &[]);
    for device in [0u32, 1] {
        let t = node.token(device, 0, 64 * MIB, Rights::ReadWrite, 1);
        let mut c = Raw::open(&node.addr, device, &t);
        let data = pattern(64 << 10, u64::from(device) + 1);
        let body = SearchBody {
            max_hits: 10,
            pattern: data[1000..1016].to_vec(),
        }
        .encode()
        .unwrap();
        // Several requests, the last a SEARCH of the whole device (many chunk steps), then
        // the client's half of the connection is closed.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&req(Op::Write, 1, 32 * MIB, data.len() as u64).encode());
        bytes.extend_from_slice(&data);
        bytes.extend_from_slice(&req(Op::Read, 2, 0, 4096).encode());
        bytes.extend_from_slice(&req(Op::Search, 3, 0, 64 * MIB).encode());
        bytes.extend_from_slice(&body);
        c.s.write_all(&bytes).unwrap();
        c.s.shutdown(Shutdown::Write).unwrap();
        let mut tags = Vec::new();
        for _ in 0..3 {
            let (h, p) = c.recv();
            assert_eq!(
                h.status_enum(),
                Status::Ok,
                "device {device}: tag {:?}",
                h.tag
            );
            if h.tag == Tag(3) {
                assert_eq!(p, (32 * MIB + 1000).to_le_bytes().to_vec());
            }
            tags.push(h.tag.0);
        }
        tags.sort_unstable();
        assert_eq!(tags, [1, 2, 3], "device {device}");
        assert!(c.is_closed(), "the node closes once every reply is sent");
        // The write was applied.
        let mut r = Raw::open(&node.addr, device, &t);
        r.send(&req(Op::Read, 4, 32 * MIB, data.len() as u64), &[]);
        let (h, p) = r.recv();
        assert_eq!(h.status_enum(), Status::Ok);
        assert!(p == data, "device {device}: the write was not applied");
    }
}

#[test]
fn a_memory_search_does_not_hold_the_reactor() {
    let node = Node::start(&["memory:64M"], &[]);
    let t = node.token(0, 0, 64 * MIB, Rights::ReadWrite, 1);
    let mut c = Raw::open(&node.addr, 0, &t);
    // A match across the boundary of two 1 MiB chunks.
    let needle = b"needle-across-chunks";
    let mut block = vec![0u8; 8192];
    block[4096 - 10..4096 - 10 + needle.len()].copy_from_slice(needle);
    c.send(&req(Op::Write, 1, 2 * MIB - 4096, 8192), &block);
    assert_eq!(c.recv().0.status_enum(), Status::Ok);
    let body = SearchBody {
        max_hits: 10,
        pattern: needle.to_vec(),
    }
    .encode()
    .unwrap();
    // A SEARCH of 64 chunks, then a READ in the same segment: the READ is answered first.
    let mut bytes = req(Op::Search, 2, 0, 64 * MIB).encode().to_vec();
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(&req(Op::Read, 3, 0, 4096).encode());
    c.s.write_all(&bytes).unwrap();
    let first = c.recv().0;
    let (second, hits) = c.recv();
    assert_eq!((first.tag, first.status_enum()), (Tag(3), Status::Ok));
    assert_eq!((second.tag, second.status_enum()), (Tag(2), Status::Ok));
    assert_eq!(hits, (2 * MIB - 10).to_le_bytes().to_vec());
}
