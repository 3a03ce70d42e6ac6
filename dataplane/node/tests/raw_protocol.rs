//! The node refuses every bad handshake and bad request with the right status, keeps serving
//! everyone else, and changes no stored byte. Driven over raw sockets with dasmesh-wire.

mod common;

use common::{req, Node, Raw};
use dasmesh_wire::{
    Op, RequestHeader, Rights, SearchBody, SigningKey, Status, Tag, FLAG_FUA, REPLY_FLAG_TRUNCATED,
};

const MIB: u64 = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes a known pattern, returns it, for "no stored byte changed" checks.
fn seed(node: &Node) -> Vec<u8> {
    let t = node.token(0, 0, 4 * MIB, Rights::ReadWrite, 1);
    let mut c = Raw::open(&node.addr, 0, &t);
    let data = pattern(64 << 10, 7);
    c.send(&req(Op::Write, 1, 0, data.len() as u64), &data);
    assert_eq!(c.recv().0.status_enum(), Status::Ok);
    data
}

/// A well-behaved client still gets served and the seeded bytes are unchanged.
fn still_intact(node: &Node, data: &[u8]) {
    let t = node.token(0, 0, 4 * MIB, Rights::ReadOnly, 1);
    let mut c = Raw::open(&node.addr, 0, &t);
    c.send(&req(Op::Read, 9, 0, data.len() as u64), &[]);
    let (h, p) = c.recv();
    assert_eq!(h.status_enum(), Status::Ok);
    assert_eq!(h.tag, Tag(9));
    assert!(p == data, "stored bytes changed");
}

#[test]
fn handshake_refusals() {
    let node = Node::start(&["memory:4M", "file:{dir}/d1.img:1M"], &["--node-id", "3"]);
    let data = seed(&node);
    let good = node.token(0, 0, 4 * MIB, Rights::ReadWrite, 1);

    let mut flipped = good.as_bytes().to_vec();
    flipped[40] ^= 0x10;
    let other_key = SigningKey::from_bytes(&[9u8; 32]);
    let cases: Vec<(&str, Vec<u8>, u32, Status)> = vec![
        ("bit-flipped token", flipped.to_vec(), 0, Status::BadToken),
        (
            "forged token",
            node.token_with(0, 0, MIB, Rights::ReadWrite, 1, 0, &other_key, 60_000)
                .as_bytes()
                .to_vec(),
            0,
            Status::BadToken,
        ),
        (
            "truncated token",
            good.as_bytes()[..100].to_vec(),
            0,
            Status::BadToken,
        ),
        (
            "expired token",
            node.token_with(0, 0, MIB, Rights::ReadWrite, 1, 0, &node.key, -1000)
                .as_bytes()
                .to_vec(),
            0,
            Status::Expired,
        ),
        (
            "wrong node",
            node.token_with(0, 0, MIB, Rights::ReadWrite, 1, 7, &node.key, 60_000)
                .as_bytes()
                .to_vec(),
            0,
            Status::WrongNode,
        ),
        (
            "token for another device",
            good.as_bytes().to_vec(),
            1,
            Status::WrongDevice,
        ),
        (
            "no such device",
            node.token(5, 0, MIB, Rights::ReadWrite, 1)
                .as_bytes()
                .to_vec(),
            5,
            Status::WrongDevice,
        ),
        (
            "range beyond the device",
            node.token(1, 8 * MIB, 9 * MIB, Rights::ReadWrite, 1)
                .as_bytes()
                .to_vec(),
            1,
            Status::OutOfRange,
        ),
    ];
    for (what, token, device, want) in cases {
        let (mut raw, reply) = Raw::hello(&node.addr, device, &token);
        assert_eq!(reply.status_enum(), want, "{what}");
        assert!(raw.is_closed(), "{what}: connection should be closed");
    }
    // The right node id is accepted.
    let mine = node.token_with(0, 0, MIB, Rights::ReadOnly, 1, 3, &node.key, 60_000);
    let (_, reply) = Raw::hello(&node.addr, 0, mine.as_bytes());
    assert_eq!(reply.status_enum(), Status::Ok);

    let (mut raw, reply) = Raw::hello_versions(&node.addr, 0, good.as_bytes(), 2, 9);
    assert_eq!(reply.status_enum(), Status::VersionMismatch);
    assert!(raw.is_closed());

    // Garbage instead of a hello.
    let mut raw = Raw::connect(&node.addr);
    std::io::Write::write_all(&mut raw.s, &[0xAB; 64]).unwrap();
    let mut b = [0u8; dasmesh_wire::HELLO_REPLY_LEN];
    std::io::Read::read_exact(&mut raw.s, &mut b).unwrap();
    assert_eq!(
        dasmesh_wire::HelloReply::decode(&b).unwrap().status_enum(),
        Status::BadFrame
    );
    assert!(raw.is_closed());

    still_intact(&node, &data);
}

#[test]
fn request_refusals_keep_the_connection_and_the_data() {
    let node = Node::start(&["memory:4M", "file:{dir}/d1.img:4M"], &[]);
    let data = seed(&node);
    for device in [0u32, 1] {
        // Lend [1M, 3M) only.
        let rw = node.token(device, MIB, 3 * MIB, Rights::ReadWrite, 1);
        let ro = node.token(device, MIB, 3 * MIB, Rights::ReadOnly, 1);
        let mut c = Raw::open(&node.addr, device, &rw);
        let mut r = Raw::open(&node.addr, device, &ro);
        let block = pattern(4096, 1);
        let cases: Vec<(&str, RequestHeader, Vec<u8>, Status)> = vec![
            (
                "read below the lent range",
                req(Op::Read, 1, 0, 4096),
                vec![],
                Status::OutOfRange,
            ),
            (
                "read past the lent range",
                req(Op::Read, 2, 3 * MIB - 4096, 8192),
                vec![],
                Status::OutOfRange,
            ),
            (
                "write past the lent range",
                req(Op::Write, 3, 3 * MIB, 4096),
                block.clone(),
                Status::OutOfRange,
            ),
            (
                "offset overflow",
                req(Op::Read, 4, u64::MAX - 4095, 4096),
                vec![],
                Status::OutOfRange,
            ),
            (
                "misaligned offset",
                req(Op::Read, 5, MIB + 512, 4096),
                vec![],
                Status::Misaligned,
            ),
            (
                "misaligned write",
                req(Op::Write, 6, MIB + 100, 4096),
                block.clone(),
                Status::Misaligned,
            ),
            (
                "misaligned length",
                req(Op::Write, 7, MIB, 1000),
                vec![0u8; 1000],
                Status::Misaligned,
            ),
            (
                "zero-length read",
                req(Op::Read, 8, MIB, 0),
                vec![],
                Status::InvalidLength,
            ),
            (
                "zero-length write",
                req(Op::Write, 9, MIB, 0),
                vec![],
                Status::InvalidLength,
            ),
            (
                "oversize read",
                req(Op::Read, 10, MIB, 2 * MIB),
                vec![],
                Status::TooLarge,
            ),
            (
                "unknown op",
                RequestHeader {
                    op: 99,
                    flags: 0,
                    tag: Tag(11),
                    offset: MIB,
                    length: 4096,
                },
                vec![],
                Status::UnknownOp,
            ),
            (
                "FUA on a read",
                RequestHeader::new(Op::Read, FLAG_FUA, Tag(12), MIB, 4096),
                vec![],
                Status::BadFlags,
            ),
            (
                "flush with a range",
                req(Op::Flush, 13, MIB, 4096),
                vec![],
                Status::InvalidLength,
            ),
        ];
        for (what, h, payload, want) in cases {
            c.send(&h, &payload);
            let (rh, p) = c.recv();
            assert_eq!(
                (rh.status_enum(), rh.tag),
                (want, h.tag),
                "device {device}: {what}"
            );
            assert!(p.is_empty());
        }
        // Read-only token: every write-class op is refused, reads work.
        for (op, payload) in [
            (Op::Write, block.clone()),
            (Op::Discard, vec![]),
            (Op::WriteZeroes, vec![]),
        ] {
            r.send(&req(op, 20, MIB, 4096), &payload);
            assert_eq!(
                r.recv().0.status_enum(),
                Status::ReadOnly,
                "{op:?} with a read-only token"
            );
        }
        r.send(&req(Op::Read, 21, MIB, 4096), &[]);
        assert_eq!(r.recv().0.status_enum(), Status::Ok);
        // Bad search bodies.
        let mut body = SearchBody {
            max_hits: 1,
            pattern: b"x".to_vec(),
        }
        .encode()
        .unwrap();
        body[4] = 65; // pattern length 65
        c.send(&req(Op::Search, 22, MIB, 4096), &body);
        assert_eq!(c.recv().0.status_enum(), Status::BadPattern);
        let body = SearchBody {
            max_hits: 0,
            pattern: b"x".to_vec(),
        };
        let mut raw_body = SearchBody {
            max_hits: 1,
            ..body
        }
        .encode()
        .unwrap();
        raw_body[..4].copy_from_slice(&0u32.to_le_bytes());
        c.send(&req(Op::Search, 23, MIB, 4096), &raw_body);
        assert_eq!(c.recv().0.status_enum(), Status::BadPattern);
        // The connection still works after all of it.
        c.send(&req(Op::Write, 30, MIB, 4096), &block);
        assert_eq!(c.recv().0.status_enum(), Status::Ok);
        c.send(&req(Op::Read, 31, MIB, 4096), &[]);
        let (h, p) = c.recv();
        assert_eq!(h.status_enum(), Status::Ok);
        assert_eq!(p, block);
        // Search finds what was written; a limit of 1 truncates.
        let body = SearchBody {
            max_hits: 1,
            pattern: block[100..104].to_vec(),
        }
        .encode()
        .unwrap();
        c.send(&req(Op::Search, 32, MIB, 4096), &body);
        let (h, p) = c.recv();
        assert_eq!(h.status_enum(), Status::Ok);
        assert_eq!(p, (MIB + 100).to_le_bytes().to_vec());
        // The pattern repeats every 256 bytes, so one hit leaves more: the reply says so.
        assert_ne!(h.flags & REPLY_FLAG_TRUNCATED, 0);
    }
    still_intact(&node, &data);
}

#[test]
fn fatal_frames_close_only_their_connection() {
    let node = Node::start(&["memory:4M"], &["--max-io", "64k"]);
    let data = seed(&node);
    let t = node.token(0, 0, 4 * MIB, Rights::ReadWrite, 1);

    // Garbage bytes after a good handshake: BadFrame, then closed.
    let mut c = Raw::open(&node.addr, 0, &t);
    std::io::Write::write_all(&mut c.s, &[0x5Au8; 32]).unwrap();
    assert_eq!(c.recv().0.status_enum(), Status::BadFrame);
    assert!(c.is_closed());

    // A write larger than max-io: TooLarge, then closed (its payload cannot be skipped).
    let mut c = Raw::open(&node.addr, 0, &t);
    c.send(&req(Op::Write, 5, 0, 128 << 10), &[0xEE; 4096]);
    let (h, _) = c.recv();
    assert_eq!((h.status_enum(), h.tag), (Status::TooLarge, Tag(5)));
    assert!(c.is_closed());

    // A truncated frame (half a header, then hang up) and a truncated write payload.
    let mut c = Raw::open(&node.addr, 0, &t);
    std::io::Write::write_all(&mut c.s, &req(Op::Read, 1, 0, 4096).encode()[..10]).unwrap();
    drop(c);
    let mut c = Raw::open(&node.addr, 0, &t);
    let mut frame = req(Op::Write, 2, 0, 8192).encode().to_vec();
    frame.extend_from_slice(&[0xEE; 5000]);
    std::io::Write::write_all(&mut c.s, &frame).unwrap();
    drop(c);

    // Others are served and nothing was written by any of it.
    std::thread::sleep(std::time::Duration::from_millis(200));
    still_intact(&node, &data);
}

#[test]
fn newer_epoch_fences_older_token() {
    let node = Node::start(&["file:{dir}/d0.img:4M"], &[]);
    let old = node.token(0, 0, 2 * MIB, Rights::ReadWrite, 5);
    let mut a = Raw::open(&node.addr, 0, &old);
    let block = pattern(4096, 3);
    a.send(&req(Op::Write, 1, 0, 4096), &block);
    assert_eq!(a.recv().0.status_enum(), Status::Ok);

    // A newer epoch over an overlapping range.
    let new = node.token(0, MIB, 3 * MIB, Rights::ReadWrite, 6);
    let mut b = Raw::open(&node.addr, 0, &new);
    a.send(&req(Op::Write, 2, 0, 4096), &pattern(4096, 99));
    assert_eq!(a.recv().0.status_enum(), Status::StaleEpoch);
    a.send(&req(Op::Read, 3, 0, 4096), &[]);
    assert_eq!(a.recv().0.status_enum(), Status::StaleEpoch);
    // A fresh connection with the old epoch is refused at the handshake.
    let (_, reply) = Raw::hello(&node.addr, 0, old.as_bytes());
    assert_eq!(reply.status_enum(), Status::StaleEpoch);
    // A disjoint range with an old epoch is unaffected.
    let other = node.token(0, 3 * MIB, 4 * MIB, Rights::ReadWrite, 1);
    let _ = Raw::open(&node.addr, 0, &other);
    // The new holder is served; the old holder's refused write changed nothing.
    b.send(&req(Op::Read, 4, MIB, 4096), &[]);
    assert_eq!(b.recv().0.status_enum(), Status::Ok);
    let same = node.token(0, 0, 2 * MIB, Rights::ReadOnly, 6);
    let mut c = Raw::open(&node.addr, 0, &same);
    c.send(&req(Op::Read, 5, 0, 4096), &[]);
    assert_eq!(c.recv().1, block);
}

#[test]
fn expiry_is_checked_on_every_request() {
    let node = Node::start(&["memory:1M"], &[]);
    let t = node.token_with(0, 0, 1 << 20, Rights::ReadWrite, 1, 0, &node.key, 1500);
    let mut c = Raw::open(&node.addr, 0, &t);
    c.send(&req(Op::Read, 1, 0, 4096), &[]);
    assert_eq!(c.recv().0.status_enum(), Status::Ok);
    std::thread::sleep(std::time::Duration::from_millis(1600));
    c.send(&req(Op::Read, 2, 0, 4096), &[]);
    assert_eq!(c.recv().0.status_enum(), Status::Expired);
}

/// A request stream with every kind of frame, sent in pieces that cut headers, WRITE payloads
/// (copied and received straight into a slot) and a SEARCH body anywhere, with a pause after
/// each piece so that the node receives them apart, is answered exactly as the stream sent whole.
#[test]
fn a_request_stream_cut_anywhere_is_answered_as_if_sent_whole() {
    let node = Node::start(&["memory:4M"], &[]);
    let t = node.token(0, 0, 4 * MIB, Rights::ReadWrite, 1);
    let small = pattern(4096, 1);
    // Above the node's copy limit (16 KiB): received straight into its arena slot.
    let large = pattern(64 << 10, 2);
    let needle = small[100..108].to_vec();
    let body = SearchBody {
        max_hits: 4,
        pattern: needle,
    }
    .encode()
    .unwrap();
    let unknown = RequestHeader {
        op: 99,
        flags: 0,
        tag: Tag(4),
        offset: 0,
        length: 4096,
    };
    let frames: Vec<(RequestHeader, Vec<u8>)> = vec![
        (req(Op::Write, 1, 0, 4096), small.clone()),
        (req(Op::Read, 2, 0, 4096), vec![]),
        (req(Op::Search, 3, 0, MIB), body.to_vec()),
        (unknown, vec![]),
        (req(Op::Write, 5, MIB, large.len() as u64), large.clone()),
        (req(Op::Flush, 6, 0, 0), vec![]),
        (req(Op::Read, 7, MIB, large.len() as u64), vec![]),
        (
            RequestHeader::new(Op::Read, FLAG_FUA, Tag(8), 0, 4096),
            vec![],
        ),
    ];
    // The same bytes are already stored, so that the answers do not depend on whether a READ
    // in the stream runs before or after the WRITE ahead of it.
    let mut c = Raw::open(&node.addr, 0, &t);
    for (h, p) in frames
        .iter()
        .filter(|(h, _)| h.known_op() == Some(Op::Write))
    {
        c.send(h, p);
        assert_eq!(c.recv().0.status_enum(), Status::Ok);
    }
    let mut stream = Vec::new();
    let mut cuts = std::collections::BTreeSet::new();
    for (h, p) in &frames {
        let at = stream.len();
        for d in [1, 5, 31, 32, 33] {
            cuts.insert(at + d);
        }
        if !p.is_empty() {
            cuts.insert(at + 32 + p.len() / 2);
            cuts.insert(at + 32 + p.len() - 1);
        }
        stream.extend_from_slice(&h.encode());
        stream.extend_from_slice(p);
    }
    cuts.retain(|c| *c < stream.len());
    let answers = |cuts: &[usize]| {
        let mut c = Raw::open(&node.addr, 0, &t);
        let mut at = 0;
        for &end in cuts.iter().chain([&stream.len()]) {
            std::io::Write::write_all(&mut c.s, &stream[at..end]).unwrap();
            at = end;
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let mut got = std::collections::BTreeMap::new();
        for _ in 0..frames.len() {
            let (h, p) = c.recv();
            got.insert(h.tag.0, (h.status_enum(), h.flags, p));
        }
        got
    };
    let whole = answers(&[]);
    let cut = answers(&cuts.into_iter().collect::<Vec<_>>());
    assert_eq!(whole.len(), frames.len());
    assert!(whole == cut, "answers differ: whole {whole:?}\ncut {cut:?}");
    let status = |tag: u64| whole[&tag].0;
    assert_eq!(whole[&2].2, small);
    assert_eq!(whole[&7].2, large);
    // The pattern repeats every 256 bytes: 16 matches, the first 4 reported, truncated.
    let hits: Vec<u8> = [100u64, 356, 612, 868]
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    assert_eq!((&whole[&3].2, whole[&3].1), (&hits, REPLY_FLAG_TRUNCATED));
    assert_eq!(status(4), Status::UnknownOp);
    assert_eq!(status(8), Status::BadFlags);
    for tag in [1, 5, 6] {
        assert_eq!(status(tag), Status::Ok, "tag {tag}");
    }
}
