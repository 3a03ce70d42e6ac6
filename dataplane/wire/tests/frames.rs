//! Property tests: every frame round-trips; every decoder and check survives arbitrary bytes and
//! rejects malformed input with the right status; the SEARCH matcher agrees with a naive scan.

use dasmesh_wire::*;
use proptest::prelude::*;

fn any_op_code() -> impl Strategy<Value = u8> {
    prop_oneof![1u8..=6, any::<u8>()]
}

proptest! {
    #[test]
    fn request_round_trips(op in any_op_code(), flags in any::<u8>(), tag in any::<u64>(), offset in any::<u64>(), length in any::<u64>()) {
        let h = RequestHeader { op, flags, tag: Tag(tag), offset, length };
        prop_assert_eq!(RequestHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn reply_round_trips(status in any::<u16>(), flags in any::<u16>(), tag in any::<u64>(), payload_len in any::<u32>()) {
        let h = ReplyHeader { status, flags, tag: Tag(tag), payload_len };
        prop_assert_eq!(ReplyHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn hello_round_trips(min in any::<u16>(), max in any::<u16>(), dev in any::<u32>(), len in 1u16..=1024) {
        let h = Hello { min_version: min, max_version: max, device_id: DeviceId(dev), token_len: len };
        prop_assert_eq!(Hello::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn hello_reply_round_trips(v in any::<u16>(), st in any::<u16>(), dev in any::<u32>(), bs in any::<u32>(),
                               pbs in any::<u32>(), mio in any::<u32>(), mif in any::<u32>(), size in any::<u64>(),
                               lo in any::<u64>(), ll in any::<u64>(), caps in any::<u32>(), msh in any::<u32>()) {
        let r = HelloReply { version: v, status: st, device_id: DeviceId(dev), block_size: bs, physical_block_size: pbs,
            max_io_size: mio, max_inflight: mif, device_size: size, lent_offset: lo, lent_length: ll,
            capabilities: Capabilities(caps), max_search_hits: msh };
        prop_assert_eq!(HelloReply::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn search_body_round_trips(max_hits in 1u32.., pattern in proptest::collection::vec(any::<u8>(), 1..=64)) {
        let b = SearchBody { max_hits, pattern };
        prop_assert_eq!(SearchBody::decode(&b.encode().unwrap()), Ok(b));
    }

    #[test]
    fn claim_and_token_round_trip(node in any::<u64>(), vol in any::<u64>(), dev in any::<u32>(), off in any::<u64>(),
                                  len in any::<u64>(), rw in any::<bool>(), epoch in any::<u64>(), iat in any::<u64>(),
                                  exp in any::<u64>(), nonce in any::<u64>(), seed in any::<[u8; 32]>()) {
        let c = Claim { node_id: NodeId(node), volume_id: VolumeId(vol), device_id: DeviceId(dev), range_offset: off,
            range_length: len, rights: if rw { Rights::ReadWrite } else { Rights::ReadOnly }, epoch: Epoch(epoch),
            issued_at_ms: iat, expires_at_ms: exp, nonce };
        prop_assert_eq!(Claim::decode(&c.encode()), Ok(c));
        let key = SigningKey::from_bytes(&seed);
        let t = c.sign(&key);
        prop_assert_eq!(Token::from_text(&t.to_text()), Ok(t));
        prop_assert_eq!(Token::from_bytes(t.as_bytes()), Ok(t));
        if exp > 0 {
            let got = t.verify(&key.verifying_key(), exp - 1, NodeId(node), DeviceId(dev));
            prop_assert_eq!(got, Ok(c));
        }
        // now == expiry is already expired.
        let expired = t.verify(&key.verifying_key(), exp, NodeId(node), DeviceId(dev));
        let is_expired = matches!(expired, Err(TokenError::Expired { .. }));
        prop_assert!(is_expired, "not expired at its expiry");
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = RequestHeader::decode(&bytes);
        let _ = ReplyHeader::decode(&bytes);
        let _ = Hello::decode(&bytes);
        let _ = HelloReply::decode(&bytes);
        let _ = SearchBody::decode(&bytes);
        let _ = Claim::decode(&bytes);
        let _ = Token::from_bytes(&bytes);
        let _ = Token::from_text(&String::from_utf8_lossy(&bytes));
        if let Ok(t) = Token::from_bytes(&bytes) {
            let key = SigningKey::from_bytes(&[3; 32]).verifying_key();
            prop_assert!(t.verify(&key, 0, NodeId(0), DeviceId(0)).is_err());
        }
    }

    #[test]
    fn check_request_never_panics_and_accepts_only_valid(op in any_op_code(), flags in any::<u8>(), offset in any::<u64>(),
            length in any::<u64>(), bs_shift in 9u32..=16, max_io in any::<u32>(), ro in any::<u64>(), rl in any::<u64>(),
            writable in any::<bool>()) {
        let h = RequestHeader { op, flags, tag: Tag(1), offset, length };
        let l = RequestLimits { block_size: 1 << bs_shift, max_io_size: max_io, range_offset: ro, range_length: rl, writable };
        if let Ok(op) = check_request(&h, &l) {
            prop_assert_eq!(flags & !op.allowed_flags(), 0);
            prop_assert!(writable || !op.is_write());
            if op != Op::Flush {
                let bs = 1u64 << bs_shift;
                prop_assert!(length > 0 && offset % bs == 0 && length % bs == 0);
                prop_assert!(offset >= ro && offset + length <= ro.saturating_add(rl));
            }
        }
    }

    #[test]
    fn searcher_matches_naive_with_any_chunking(data in proptest::collection::vec(0u8..3, 0..600),
            pattern in proptest::collection::vec(0u8..3, 1..5), cuts in proptest::collection::vec(1usize..50, 1..20),
            max_hits in 1usize..50) {
        let naive: Vec<u64> = if data.len() >= pattern.len() {
            (0..=data.len() - pattern.len()).filter(|i| data[*i..*i + pattern.len()] == pattern[..]).map(|i| i as u64 + 7).collect()
        } else { vec![] };
        let mut s = Searcher::new(&pattern, max_hits);
        let (mut at, mut k) = (0usize, 0usize);
        while at < data.len() {
            let n = cuts[k % cuts.len()].min(data.len() - at);
            s.feed(7 + at as u64, &data[at..at + n]);
            at += n;
            k += 1;
        }
        let (hits, truncated) = s.finish();
        let want: Vec<u64> = naive.iter().copied().take(max_hits).collect();
        prop_assert_eq!(hits, want);
        prop_assert_eq!(truncated, naive.len() > max_hits);
    }
}

fn limits() -> RequestLimits {
    RequestLimits {
        block_size: 4096,
        max_io_size: 1 << 20,
        range_offset: 1 << 20,
        range_length: 1 << 20,
        writable: true,
    }
}

fn check(op: u8, flags: u8, offset: u64, length: u64, l: &RequestLimits) -> Result<Op, Status> {
    check_request(
        &RequestHeader {
            op,
            flags,
            tag: Tag(0),
            offset,
            length,
        },
        l,
    )
}

#[test]
fn malformed_requests_get_the_right_status() {
    let l = limits();
    let m = 1u64 << 20;
    assert_eq!(check(1, 0, m, 4096, &l), Ok(Op::Read));
    assert_eq!(check(0, 0, m, 4096, &l), Err(Status::UnknownOp));
    assert_eq!(check(7, 0, m, 4096, &l), Err(Status::UnknownOp));
    assert_eq!(check(1, FLAG_FUA, m, 4096, &l), Err(Status::BadFlags));
    assert_eq!(check(2, 2, m, 4096, &l), Err(Status::BadFlags));
    assert_eq!(check(2, FLAG_FUA, m, 4096, &l), Ok(Op::Write));
    assert_eq!(check(5, FLAG_FUA, m, 4096, &l), Ok(Op::WriteZeroes));
    assert_eq!(check(4, FLAG_FUA, m, 4096, &l), Err(Status::BadFlags));
    assert_eq!(check(1, 0, m, 0, &l), Err(Status::InvalidLength));
    assert_eq!(check(6, 0, m, 0, &l), Err(Status::InvalidLength));
    assert_eq!(check(3, 0, 0, 0, &l), Ok(Op::Flush));
    assert_eq!(check(3, 0, 0, 4096, &l), Err(Status::InvalidLength));
    assert_eq!(check(1, 0, m, 2 * m, &l), Err(Status::TooLarge));
    // DISCARD, WRITE_ZEROES and SEARCH are not bounded by max_io (only by the range).
    let wide = RequestLimits {
        range_length: 8 * m,
        ..l
    };
    assert_eq!(check(4, 0, m, 4 * m, &wide), Ok(Op::Discard));
    assert_eq!(check(6, 0, m, 4 * m, &wide), Ok(Op::Search));
    assert_eq!(check(1, 0, m + 512, 4096, &l), Err(Status::Misaligned));
    assert_eq!(check(1, 0, m, 4000, &l), Err(Status::Misaligned));
    assert_eq!(check(1, 0, 0, 4096, &l), Err(Status::OutOfRange));
    assert_eq!(check(1, 0, 2 * m - 4096, 8192, &l), Err(Status::OutOfRange));
    assert_eq!(check(1, 0, 2 * m - 4096, 4096, &l), Ok(Op::Read));
    assert_eq!(
        check(1, 0, u64::MAX - 4095, 4096, &l),
        Err(Status::OutOfRange)
    );
    let ro = RequestLimits {
        writable: false,
        ..l
    };
    for op in [2u8, 4, 5] {
        assert_eq!(check(op, 0, m, 4096, &ro), Err(Status::ReadOnly), "op {op}");
    }
    for op in [1u8, 6] {
        assert!(check(op, 0, m, 4096, &ro).is_ok(), "op {op}");
    }
    assert_eq!(check(3, 0, 0, 0, &ro), Ok(Op::Flush));
}

#[test]
fn malformed_frames_are_bad_frames() {
    let good = RequestHeader::new(Op::Read, 0, Tag(1), 0, 4096).encode();
    assert!(RequestHeader::decode(&good).is_ok());
    assert_eq!(RequestHeader::decode(&good[..31]), Err(Status::BadFrame));
    assert_eq!(RequestHeader::decode(&[]), Err(Status::BadFrame));
    for (at, v) in [(0usize, b'X'), (3, 0), (6, 1), (7, 0x80)] {
        let mut b = good;
        b[at] = v;
        assert_eq!(
            RequestHeader::decode(&b),
            Err(Status::BadFrame),
            "byte {at}"
        );
    }
    let reply = ReplyHeader::status(Tag(1), Status::Ok).encode();
    assert_eq!(ReplyHeader::decode(&reply[..23]), Err(Status::BadFrame));
    let mut r = reply;
    r[20] = 1;
    assert_eq!(ReplyHeader::decode(&r), Err(Status::BadFrame));
    r = reply;
    r[0] = 0;
    assert_eq!(ReplyHeader::decode(&r), Err(Status::BadFrame));

    let hello = Hello {
        min_version: 1,
        max_version: 1,
        device_id: DeviceId(0),
        token_len: 152,
    }
    .encode();
    assert_eq!(Hello::decode(&hello[..31]), Err(Status::BadFrame));
    for at in [0usize, 18, 19, 20, 31] {
        let mut b = hello;
        b[at] ^= 0xff;
        assert_eq!(Hello::decode(&b), Err(Status::BadFrame), "hello byte {at}");
    }
    for len in [0u16, 1025, u16::MAX] {
        let b = Hello {
            min_version: 1,
            max_version: 1,
            device_id: DeviceId(0),
            token_len: len,
        }
        .encode();
        assert_eq!(Hello::decode(&b), Err(Status::BadToken), "token_len {len}");
    }
    assert_eq!(HelloReply::decode(&[0u8; 63]), Err(Status::BadFrame));
    assert_eq!(HelloReply::decode(&[0u8; 64]), Err(Status::BadFrame));
}

#[test]
fn malformed_search_bodies() {
    let good = SearchBody {
        max_hits: 5,
        pattern: b"ab".to_vec(),
    }
    .encode()
    .unwrap();
    assert_eq!(SearchBody::decode(&good[..71]), Err(Status::BadFrame));
    let mut b = good;
    b[6] = 1;
    assert_eq!(SearchBody::decode(&b), Err(Status::BadFrame), "reserved");
    for len in [0u16, 65, 1000] {
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
    let mut b = good;
    b[8 + 10] = 1;
    assert_eq!(
        SearchBody::decode(&b),
        Err(Status::BadPattern),
        "non-zero padding"
    );
    assert_eq!(
        SearchBody {
            max_hits: 1,
            pattern: vec![]
        }
        .encode(),
        Err(Status::BadPattern)
    );
    assert_eq!(
        SearchBody {
            max_hits: 1,
            pattern: vec![0; 65]
        }
        .encode(),
        Err(Status::BadPattern)
    );
    assert!(SearchBody {
        max_hits: 1,
        pattern: vec![0; 64]
    }
    .encode()
    .is_ok());
}

#[test]
fn malformed_tokens() {
    let key = SigningKey::from_bytes(&[5u8; 32]);
    let claim = Claim {
        node_id: NodeId(2),
        volume_id: VolumeId(1),
        device_id: DeviceId(0),
        range_offset: 0,
        range_length: 4096,
        rights: Rights::ReadOnly,
        epoch: Epoch(1),
        issued_at_ms: 0,
        expires_at_ms: 10_000,
        nonce: 1,
    };
    let t = claim.sign(&key);
    let vk = key.verifying_key();
    assert!(t.verify(&vk, 5, NodeId(2), DeviceId(0)).is_ok());
    assert_eq!(
        Token::from_bytes(&t.as_bytes()[..151]),
        Err(TokenError::BadLength(151))
    );
    assert_eq!(
        Token::from_bytes(&[t.as_bytes().as_slice(), &[0]].concat()),
        Err(TokenError::BadLength(153))
    );
    let text = t.to_text();
    assert_eq!(
        Token::from_text(&text[..text.len() - 4])
            .unwrap_err()
            .status(),
        Status::BadToken
    );
    assert_eq!(
        Token::from_text(&text.replace("dmt1.", "dmt2.")),
        Err(TokenError::BadEncoding)
    );
    assert_eq!(Token::from_text(&format!("  {text}\n")), Ok(t));
    // A claim with bad rights, format or reserved bytes, even correctly signed, is refused.
    for (at, v) in [(0usize, b'X'), (4, 2), (5, 3), (6, 1), (28, 1), (80, 1)] {
        let mut c = claim.encode();
        c[at] = v;
        let mut msg = b"dasmesh-token-v1".to_vec();
        msg.extend_from_slice(&c);
        use ed25519_dalek::Signer as _;
        let sig = key.sign(&msg).to_bytes();
        let forged = Token::from_bytes(&[c.as_slice(), &sig].concat()).unwrap();
        let e = forged.verify(&vk, 5, NodeId(2), DeviceId(0)).unwrap_err();
        assert!(matches!(e, TokenError::BadClaim(_)), "byte {at}: {e:?}");
        assert_eq!(e.status(), Status::BadToken);
    }
    assert!(matches!(
        t.verify(&vk, 5, NodeId(3), DeviceId(0)),
        Err(TokenError::WrongNode { .. })
    ));
    assert!(matches!(
        t.verify(&vk, 5, NodeId(2), DeviceId(1)),
        Err(TokenError::WrongDevice { .. })
    ));
    let wrong_key = SigningKey::from_bytes(&[6u8; 32]).verifying_key();
    assert_eq!(
        t.verify(&wrong_key, 5, NodeId(2), DeviceId(0)),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn version_negotiation() {
    assert_eq!(negotiate_version(1, 1), Some(1));
    assert_eq!(negotiate_version(1, 9), Some(1));
    assert_eq!(negotiate_version(2, 9), None);
    assert_eq!(negotiate_version(0, 0), None);
    assert_eq!(negotiate_version(5, 1), None);
}
