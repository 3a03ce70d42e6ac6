//! Frames: every header and body round-trips; decoding is canonical (what decodes re-encodes to
//! the same bytes); every decoder agrees with the rules of docs/protocol.md on arbitrary and on
//! slightly damaged input, and never panics.

use dasmesh_wire::*;
use proptest::collection::vec;
use proptest::prelude::*;

fn any_op_code() -> impl Strategy<Value = u8> {
    prop_oneof![1u8..=6, any::<u8>()]
}

/// `valid` with up to four bytes overwritten and its length changed a little: near-valid input,
/// which reaches the checks behind the magic far more often than uniformly random bytes do.
fn damaged(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = valid.len();
    (
        vec((0..n, any::<u8>()), 0..4),
        prop_oneof![4 => Just(n), 1 => 0..n, 1 => n..n + 8],
    )
        .prop_map(move |(edits, len)| {
            let mut b = valid.clone();
            for (at, v) in edits {
                b[at] = v;
            }
            b.resize(len, 0xa5);
            b
        })
}

fn request() -> impl Strategy<Value = RequestHeader> {
    (
        any_op_code(),
        any::<u8>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(op, flags, tag, offset, length)| RequestHeader {
            op,
            flags,
            tag: Tag(tag),
            offset,
            length,
        })
}

fn reply() -> impl Strategy<Value = ReplyHeader> {
    (any::<u16>(), any::<u16>(), any::<u64>(), any::<u32>()).prop_map(
        |(status, flags, tag, payload_len)| ReplyHeader {
            status,
            flags,
            tag: Tag(tag),
            payload_len,
        },
    )
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<u16>(),
        any::<u16>(),
        any::<u32>(),
        1..=MAX_TOKEN_LEN as u16,
    )
        .prop_map(|(min_version, max_version, dev, token_len)| Hello {
            min_version,
            max_version,
            device_id: DeviceId(dev),
            token_len,
            flags: 0,
        })
}

fn hello_reply() -> impl Strategy<Value = HelloReply> {
    (
        (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>()),
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>()),
        (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()),
    )
        .prop_map(
            |((v, st, dev, bs), (pbs, mio, mif, size), (lo, ll, caps, msh))| HelloReply {
                version: v,
                status: st,
                device_id: DeviceId(dev),
                block_size: bs,
                physical_block_size: pbs,
                max_io_size: mio,
                max_inflight: mif,
                device_size: size,
                lent_offset: lo,
                lent_length: ll,
                capabilities: Capabilities(caps),
                max_search_hits: msh,
            },
        )
}

fn search_body() -> impl Strategy<Value = SearchBody> {
    (1u32.., vec(any::<u8>(), 1..=SEARCH_PATTERN_MAX))
        .prop_map(|(max_hits, pattern)| SearchBody { max_hits, pattern })
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

proptest! {
    #[test]
    fn request_round_trips(h in request(), extra in vec(any::<u8>(), 0..16)) {
        let b = h.encode();
        prop_assert_eq!(RequestHeader::decode(&b), Ok(h));
        // Bytes after the header (a payload, the next request) do not matter.
        prop_assert_eq!(RequestHeader::decode(&[&b[..], &extra].concat()), Ok(h));
        prop_assert_eq!(h.known_op(), Op::from_code(h.op));
    }

    #[test]
    fn payload_len_follows_the_op(h in request()) {
        let want = match h.op {
            2 => h.length,
            6 => SEARCH_BODY_LEN as u64,
            _ => 0,
        };
        prop_assert_eq!(h.payload_len(), want);
    }

    #[test]
    fn reply_round_trips(h in reply(), extra in vec(any::<u8>(), 0..16)) {
        let b = h.encode();
        prop_assert_eq!(ReplyHeader::decode(&b), Ok(h));
        prop_assert_eq!(ReplyHeader::decode(&[&b[..], &extra].concat()), Ok(h));
        let want = Status::from_code(h.status).unwrap_or(Status::Internal);
        prop_assert_eq!(h.status_enum(), want);
    }

    #[test]
    fn hello_round_trips(h in hello(), token in vec(any::<u8>(), 0..16)) {
        let b = h.encode();
        prop_assert_eq!(Hello::decode(&b), Ok(h));
        // The token follows the fixed part and is not the decoder's business.
        prop_assert_eq!(Hello::decode(&[&b[..], &token].concat()), Ok(h));
    }

    #[test]
    fn hello_reply_round_trips(r in hello_reply()) {
        prop_assert_eq!(HelloReply::decode(&r.encode()), Ok(r));
        let want = Status::from_code(r.status).unwrap_or(Status::Internal);
        prop_assert_eq!(r.status_enum(), want);
    }

    #[test]
    fn refusals_round_trip(v in any::<u16>(), i in 0..Status::ALL.len()) {
        let s = Status::ALL[i];
        let r = HelloReply::refuse(v, s);
        let back = HelloReply::decode(&r.encode()).unwrap();
        prop_assert_eq!(back.status_enum(), s);
        prop_assert_eq!(back.version, v);
        prop_assert_eq!(back, HelloReply { version: v, status: s.code(), ..HelloReply::default() });
        let e = ReplyHeader::status(Tag(9), s);
        prop_assert_eq!(ReplyHeader::decode(&e.encode()).unwrap().status_enum(), s);
        prop_assert_eq!(e.payload_len, 0);
    }

    #[test]
    fn search_body_round_trips(b in search_body()) {
        let bytes = b.encode().unwrap();
        prop_assert_eq!(SearchBody::decode(&bytes), Ok(b.clone()));
        prop_assert_eq!(le16(&bytes, 4) as usize, b.pattern.len());
        prop_assert!(bytes[8 + b.pattern.len()..].iter().all(|x| *x == 0));
    }

    #[test]
    fn version_negotiation(min in 0u16..4, max in 0u16..4) {
        let want = (min <= PROTOCOL_VERSION && PROTOCOL_VERSION <= max).then_some(PROTOCOL_VERSION);
        prop_assert_eq!(negotiate_version(min, max), want);
    }

    // ---- every decoder against the documented rules, on damaged input ----

    #[test]
    fn request_decode_follows_the_rules(b in request().prop_flat_map(|h| damaged(h.encode().to_vec()))) {
        let ok = b.len() >= REQUEST_HEADER_LEN && b[..4] == REQUEST_MAGIC && b[6..8] == [0, 0];
        match RequestHeader::decode(&b) {
            Ok(h) => {
                prop_assert!(ok);
                prop_assert_eq!(&h.encode()[..], &b[..REQUEST_HEADER_LEN]);
            }
            Err(s) => {
                prop_assert!(!ok);
                prop_assert_eq!(s, Status::BadFrame);
            }
        }
    }

    #[test]
    fn reply_decode_follows_the_rules(b in reply().prop_flat_map(|h| damaged(h.encode().to_vec()))) {
        let ok = b.len() >= REPLY_HEADER_LEN && b[..4] == REPLY_MAGIC && b[20..24] == [0; 4];
        match ReplyHeader::decode(&b) {
            Ok(h) => {
                prop_assert!(ok);
                prop_assert_eq!(&h.encode()[..], &b[..REPLY_HEADER_LEN]);
            }
            Err(s) => {
                prop_assert!(!ok);
                prop_assert_eq!(s, Status::BadFrame);
            }
        }
    }

    #[test]
    fn hello_decode_follows_the_rules(b in hello().prop_flat_map(|h| damaged(h.encode().to_vec()))) {
        let frame_ok = b.len() >= HELLO_LEN && b[..8] == HELLO_MAGIC && b[18..32].iter().all(|x| *x == 0);
        match Hello::decode(&b) {
            Ok(h) => {
                prop_assert!(frame_ok);
                prop_assert!((1..=MAX_TOKEN_LEN).contains(&usize::from(h.token_len)));
                prop_assert_eq!(&h.encode()[..], &b[..HELLO_LEN]);
            }
            Err(Status::BadFrame) => prop_assert!(!frame_ok),
            Err(Status::BadToken) => {
                prop_assert!(frame_ok);
                let len = usize::from(le16(&b, 16));
                prop_assert!(len == 0 || len > MAX_TOKEN_LEN, "token_len {}", len);
            }
            Err(s) => prop_assert!(false, "unexpected {:?}", s),
        }
    }

    #[test]
    fn hello_reply_decode_follows_the_rules(b in hello_reply().prop_flat_map(|r| damaged(r.encode().to_vec()))) {
        let ok = b.len() >= HELLO_REPLY_LEN && b[..8] == HELLO_MAGIC;
        match HelloReply::decode(&b) {
            Ok(r) => {
                prop_assert!(ok);
                prop_assert_eq!(&r.encode()[..], &b[..HELLO_REPLY_LEN]);
            }
            Err(s) => {
                prop_assert!(!ok);
                prop_assert_eq!(s, Status::BadFrame);
            }
        }
    }

    #[test]
    fn search_body_decode_follows_the_rules(b in search_body().prop_flat_map(|s| damaged(s.encode().unwrap().to_vec()))) {
        let frame_ok = b.len() >= SEARCH_BODY_LEN && b[6..8] == [0, 0];
        match SearchBody::decode(&b) {
            Ok(s) => {
                prop_assert!(frame_ok);
                prop_assert_eq!(&s.encode().unwrap()[..], &b[..SEARCH_BODY_LEN]);
            }
            Err(Status::BadFrame) => prop_assert!(!frame_ok),
            Err(Status::BadPattern) => {
                prop_assert!(frame_ok);
                let len = usize::from(le16(&b, 4));
                let bad = len == 0
                    || len > SEARCH_PATTERN_MAX
                    || le32(&b, 0) == 0
                    || b[8 + len..SEARCH_BODY_LEN].iter().any(|x| *x != 0);
                prop_assert!(bad);
            }
            Err(s) => prop_assert!(false, "unexpected {:?}", s),
        }
    }

    #[test]
    fn decoders_never_panic_on_random_bytes(bytes in vec(any::<u8>(), 0..200)) {
        prop_assert!(RequestHeader::decode(&bytes).is_ok() == (bytes.len() >= 32 && bytes[..4] == REQUEST_MAGIC && bytes[6..8] == [0, 0]));
        let _ = ReplyHeader::decode(&bytes);
        let _ = Hello::decode(&bytes);
        let _ = HelloReply::decode(&bytes);
        let _ = SearchBody::decode(&bytes);
        let _ = Claim::decode(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let _ = Token::from_text(&text);
        let _ = key_from_text(&text);
        let _ = verifying_key_from_text(&text);
        let _ = signing_key_from_text(&text);
        match Token::from_bytes(&bytes) {
            Ok(t) => {
                prop_assert!(bytes.len() == TOKEN_LEN || bytes.len() == BOUND_TOKEN_LEN);
                let _ = t.claim_unverified();
                let key = SigningKey::from_bytes(&[3; 32]).verifying_key();
                prop_assert!(t.verify(&key, 0, NodeId(0), DeviceId(0)).is_err());
            }
            Err(e) => prop_assert_eq!(e, TokenError::BadLength(bytes.len())),
        }
    }
}

// ---- malformed frames, case by case ----

#[test]
fn every_short_buffer_is_a_bad_frame() {
    let req = RequestHeader::new(Op::Read, 0, Tag(1), 0, 4096).encode();
    let rep = ReplyHeader::status(Tag(1), Status::Ok).encode();
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        device_id: DeviceId(0),
        token_len: TOKEN_LEN as u16,
        flags: 0,
    }
    .encode();
    let hr = HelloReply::refuse(1, Status::Ok).encode();
    let body = SearchBody {
        max_hits: 1,
        pattern: b"x".to_vec(),
    }
    .encode()
    .unwrap();
    for n in 0..REQUEST_HEADER_LEN {
        assert_eq!(
            RequestHeader::decode(&req[..n]),
            Err(Status::BadFrame),
            "{n}"
        );
    }
    for n in 0..REPLY_HEADER_LEN {
        assert_eq!(ReplyHeader::decode(&rep[..n]), Err(Status::BadFrame), "{n}");
    }
    for n in 0..HELLO_LEN {
        assert_eq!(Hello::decode(&hello[..n]), Err(Status::BadFrame), "{n}");
    }
    for n in 0..HELLO_REPLY_LEN {
        assert_eq!(HelloReply::decode(&hr[..n]), Err(Status::BadFrame), "{n}");
    }
    for n in 0..SEARCH_BODY_LEN {
        assert_eq!(SearchBody::decode(&body[..n]), Err(Status::BadFrame), "{n}");
    }
}

#[test]
fn request_magic_and_reserved_bytes() {
    let good = RequestHeader::new(Op::Read, 0, Tag(1), 0, 4096).encode();
    assert!(RequestHeader::decode(&good).is_ok());
    // Any bit of the magic or of the reserved bytes: the stream cannot be trusted any more.
    for at in [0usize, 1, 2, 3, 6, 7] {
        for bit in 0..8 {
            let mut b = good;
            b[at] ^= 1 << bit;
            assert_eq!(
                RequestHeader::decode(&b),
                Err(Status::BadFrame),
                "byte {at} bit {bit}"
            );
        }
    }
    // A reply where a request is expected (and vice versa) is a bad frame.
    let reply = ReplyHeader::status(Tag(1), Status::Ok).encode();
    assert_eq!(
        RequestHeader::decode(&[&reply[..], &[0; 8]].concat()),
        Err(Status::BadFrame)
    );
    assert_eq!(ReplyHeader::decode(&good), Err(Status::BadFrame));
    // Unknown ops and flags are not frame errors: they are answered by tag.
    let odd = RequestHeader {
        op: 0xee,
        flags: 0xff,
        tag: Tag(77),
        offset: 1,
        length: 2,
    };
    assert_eq!(RequestHeader::decode(&odd.encode()), Ok(odd));
    assert_eq!(odd.known_op(), None);
    assert_eq!(odd.payload_len(), 0);
}

#[test]
fn reply_magic_and_reserved_bytes() {
    let good = ReplyHeader {
        status: 0,
        flags: REPLY_FLAG_TRUNCATED,
        tag: Tag(5),
        payload_len: 16,
    }
    .encode();
    for at in [0usize, 1, 2, 3, 20, 21, 22, 23] {
        for bit in 0..8 {
            let mut b = good;
            b[at] ^= 1 << bit;
            assert_eq!(
                ReplyHeader::decode(&b),
                Err(Status::BadFrame),
                "byte {at} bit {bit}"
            );
        }
    }
    // Unknown status codes (a newer node) decode, and read as a failure.
    let mut b = good;
    b[4..6].copy_from_slice(&999u16.to_le_bytes());
    let h = ReplyHeader::decode(&b).unwrap();
    assert_eq!(h.status, 999);
    assert_eq!(h.status_enum(), Status::Internal);
}

#[test]
fn hello_magic_flags_reserved_and_token_len() {
    let hello = |token_len| Hello {
        min_version: 1,
        max_version: 1,
        device_id: DeviceId(0),
        token_len,
        flags: 0,
    };
    let good = hello(TOKEN_LEN as u16).encode();
    assert!(Hello::decode(&good).is_ok());
    for at in (0..8).chain(18..32) {
        let mut b = good;
        b[at] ^= 0x40;
        assert_eq!(Hello::decode(&b), Err(Status::BadFrame), "hello byte {at}");
    }
    for len in [0u16, MAX_TOKEN_LEN as u16 + 1, u16::MAX] {
        assert_eq!(
            Hello::decode(&hello(len).encode()),
            Err(Status::BadToken),
            "token_len {len}"
        );
    }
    for len in [1u16, TOKEN_LEN as u16, MAX_TOKEN_LEN as u16] {
        assert_eq!(Hello::decode(&hello(len).encode()), Ok(hello(len)));
    }
    // A bad magic wins over a bad token length.
    let mut b = hello(0).encode();
    b[0] = b'd';
    assert_eq!(Hello::decode(&b), Err(Status::BadFrame));
}

#[test]
fn hello_reply_magic() {
    let good = HelloReply::refuse(1, Status::Expired).encode();
    assert!(HelloReply::decode(&good).is_ok());
    assert_eq!(HelloReply::decode(&[0u8; 64]), Err(Status::BadFrame));
    for at in 0..8 {
        let mut b = good;
        b[at] ^= 0x01;
        assert_eq!(HelloReply::decode(&b), Err(Status::BadFrame), "byte {at}");
    }
    // Every other byte is data: any value decodes.
    let mut b = [0xffu8; HELLO_REPLY_LEN];
    b[..8].copy_from_slice(&HELLO_MAGIC);
    let r = HelloReply::decode(&b).unwrap();
    assert_eq!(
        (r.version, r.status, r.device_size, r.max_search_hits),
        (u16::MAX, u16::MAX, u64::MAX, u32::MAX)
    );
    assert_eq!(r.status_enum(), Status::Internal);
}

#[test]
fn malformed_search_bodies() {
    let body = |pattern: &[u8]| {
        SearchBody {
            max_hits: 5,
            pattern: pattern.to_vec(),
        }
        .encode()
        .unwrap()
    };
    let good = body(b"ab");
    for at in [6usize, 7] {
        let mut b = good;
        b[at] = 1;
        assert_eq!(
            SearchBody::decode(&b),
            Err(Status::BadFrame),
            "reserved {at}"
        );
    }
    for len in [0u16, 65, 1000, u16::MAX] {
        let mut b = good;
        b[4..6].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            SearchBody::decode(&b),
            Err(Status::BadPattern),
            "pattern_len {len}"
        );
    }
    let mut b = good;
    b[..4].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(
        SearchBody::decode(&b),
        Err(Status::BadPattern),
        "max_hits 0"
    );
    // Padding after the pattern must be zero, for every pattern length and padding byte.
    for len in 1..SEARCH_PATTERN_MAX {
        let good = body(&vec![b'p'; len]);
        assert!(SearchBody::decode(&good).is_ok());
        for at in 8 + len..SEARCH_BODY_LEN {
            let mut b = good;
            b[at] = 0x80;
            assert_eq!(
                SearchBody::decode(&b),
                Err(Status::BadPattern),
                "len {len} padding byte {at}"
            );
        }
    }
    // A reserved byte is a frame error even when the pattern is also bad.
    let mut b = good;
    b[7] = 1;
    b[4..6].copy_from_slice(&0u16.to_le_bytes());
    assert_eq!(SearchBody::decode(&b), Err(Status::BadFrame));
    // The encoder refuses what the decoder would.
    for pattern in [vec![], vec![0; SEARCH_PATTERN_MAX + 1]] {
        let s = SearchBody {
            max_hits: 1,
            pattern,
        };
        assert_eq!(s.encode(), Err(Status::BadPattern));
    }
    let full = SearchBody {
        max_hits: u32::MAX,
        pattern: vec![0; SEARCH_PATTERN_MAX],
    };
    assert_eq!(SearchBody::decode(&full.encode().unwrap()), Ok(full));
}

#[test]
fn status_codes_are_stable() {
    // Codes are part of the wire contract: a renumbering would break every deployed peer.
    let names: Vec<(u16, &str)> = Status::ALL.iter().map(|s| (s.code(), s.name())).collect();
    let want = [
        "Ok",
        "BadFrame",
        "UnknownOp",
        "BadFlags",
        "Misaligned",
        "OutOfRange",
        "TooLarge",
        "ReadOnly",
        "Expired",
        "BadToken",
        "WrongNode",
        "WrongDevice",
        "StaleEpoch",
        "VersionMismatch",
        "IoError",
        "NoSpace",
        "ShuttingDown",
        "BadPattern",
        "InvalidLength",
        "NoTrustKey",
        "Internal",
        "Revoked",
        "NotHolder",
    ];
    let want: Vec<(u16, &str)> = want
        .iter()
        .enumerate()
        .map(|(i, n)| (i as u16, *n))
        .collect();
    assert_eq!(names, want);
    for code in Status::ALL.len() as u16..=u16::MAX {
        assert_eq!(Status::from_code(code), None);
    }
    for code in 0..=u8::MAX {
        let op = Op::from_code(code);
        assert_eq!(op.map(|o| o as u8), (1..=6).contains(&code).then_some(code));
    }
}
