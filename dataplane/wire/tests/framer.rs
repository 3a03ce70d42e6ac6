//! The framer: any sequence of request or reply frames, encoded into one stream and fed in
//! pieces split anywhere, decodes to the same headers and payload bytes as the stream fed whole;
//! a consumer that reads payloads itself (`skip_payload`) sees the same headers; a damaged
//! header stops the stream with `BadFrame` at that frame; and `check_reply` follows the
//! expected-payload rule of docs/protocol.md.

use std::fmt::Debug;

use dasmesh_wire::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

type Frames<H> = Vec<(H, Vec<u8>)>;

/// A request frame: every op with the payload the protocol gives it (WRITE data, a SEARCH body),
/// and unknown op codes, which carry none.
fn request_frame() -> impl Strategy<Value = (RequestHeader, Vec<u8>)> {
    let body = prop_oneof![
        (1u32..1000, vec(any::<u8>(), 1..=SEARCH_PATTERN_MAX)).prop_map(|(max_hits, pattern)| {
            SearchBody { max_hits, pattern }.encode().unwrap().to_vec()
        }),
        // The framer does not judge bodies: any 72 bytes frame the same.
        vec(any::<u8>(), SEARCH_BODY_LEN),
    ];
    prop_oneof![
        (
            any::<u8>(),
            any::<u64>(),
            any::<u64>(),
            vec(any::<u8>(), 0..96)
        )
            .prop_map(|(flags, tag, offset, data)| {
                let h = RequestHeader {
                    op: Op::Write as u8,
                    flags,
                    tag: Tag(tag),
                    offset,
                    length: data.len() as u64,
                };
                (h, data)
            }),
        (any::<u64>(), any::<u64>(), any::<u64>(), body).prop_map(|(tag, offset, length, b)| {
            (
                RequestHeader::new(Op::Search, 0, Tag(tag), offset, length),
                b,
            )
        }),
        (
            prop_oneof![
                Just(Op::Read as u8),
                Just(Op::Flush as u8),
                Just(Op::Discard as u8),
                Just(Op::WriteZeroes as u8),
                Just(0u8),
                7u8..=255,
            ],
            any::<u8>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(op, flags, tag, offset, length)| {
                let h = RequestHeader {
                    op,
                    flags,
                    tag: Tag(tag),
                    offset,
                    length,
                };
                (h, Vec::new())
            }),
    ]
}

/// A reply frame: READ data, SEARCH hits (truncated or not), and statuses without payload
/// (any code, known or not).
fn reply_frame() -> impl Strategy<Value = (ReplyHeader, Vec<u8>)> {
    prop_oneof![
        (any::<u64>(), vec(any::<u8>(), 0..128)).prop_map(|(tag, data)| {
            let h = ReplyHeader {
                status: Status::Ok.code(),
                flags: 0,
                tag: Tag(tag),
                payload_len: data.len() as u32,
            };
            (h, data)
        }),
        (any::<u64>(), vec(any::<u64>(), 0..8), any::<bool>()).prop_map(|(tag, hits, t)| {
            let data: Vec<u8> = hits.iter().flat_map(|h| h.to_le_bytes()).collect();
            let h = ReplyHeader {
                status: Status::Ok.code(),
                flags: if t { REPLY_FLAG_TRUNCATED } else { 0 },
                tag: Tag(tag),
                payload_len: data.len() as u32,
            };
            (h, data)
        }),
        (any::<u64>(), any::<u16>(), any::<u16>()).prop_map(|(tag, status, flags)| {
            let h = ReplyHeader {
                status,
                flags,
                tag: Tag(tag),
                payload_len: 0,
            };
            (h, Vec::new())
        }),
    ]
}

fn encode_requests(frames: &Frames<RequestHeader>) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|(h, p)| [&h.encode()[..], p].concat())
        .collect()
}

fn encode_replies(frames: &Frames<ReplyHeader>) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|(h, p)| [&h.encode()[..], p].concat())
        .collect()
}

/// Split points for `len` bytes out of arbitrary indices (sorted, each piece may be empty).
fn cuts_of(len: usize, picks: &[Index]) -> Vec<usize> {
    let mut cuts: Vec<usize> = picks.iter().map(|i| i.index(len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

fn pieces<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts {
        out.push(&stream[at..c]);
        at = c;
    }
    out.push(&stream[at..]);
    out
}

/// Feeds `stream` to a fresh framer in the pieces `cuts` make and collects the frames; the error
/// names the frame whose header failed. Checks the framer's bookkeeping on the way.
fn feed<H: FrameHeader + Debug + PartialEq>(
    stream: &[u8],
    cuts: &[usize],
) -> Result<Frames<H>, (usize, Status)> {
    let mut f = Framer::<H>::new();
    let mut frames: Frames<H> = Vec::new();
    assert!(f.at_boundary());
    for piece in pieces(stream, cuts) {
        let mut rest = piece;
        // An empty piece (a read of nothing) is no event.
        if rest.is_empty() {
            assert_eq!(f.next(rest).map_err(|s| (frames.len(), s))?, (0, None));
        }
        while !rest.is_empty() {
            let (used, ev) = f.next(rest).map_err(|s| (frames.len(), s))?;
            assert!(
                used > 0 && used <= rest.len(),
                "used {used} of {}",
                rest.len()
            );
            rest = &rest[used..];
            match ev {
                Some(Event::Header(h)) => {
                    assert!(used <= H::LEN);
                    assert_eq!(f.payload_remaining(), h.payload_len());
                    if h.payload_len() > 0 {
                        assert_eq!(f.current(), Some(&h));
                        assert!(!f.at_boundary());
                    } else {
                        assert_eq!(f.current(), None);
                        assert!(f.at_boundary());
                    }
                    frames.push((h, Vec::new()));
                }
                Some(Event::Payload(p)) => {
                    assert!(!p.is_empty());
                    assert_eq!(p.len(), used);
                    let (h, data) = frames.last_mut().expect("a payload follows a header");
                    data.extend_from_slice(p);
                    let left = h.payload_len() - data.len() as u64;
                    assert_eq!(f.payload_remaining(), left);
                    assert_eq!(f.current().is_some(), left > 0);
                }
                None => {
                    assert!(rest.is_empty(), "no event with bytes left");
                    assert!(!f.at_boundary(), "a partial header is held");
                }
            }
        }
    }
    assert!(f.at_boundary(), "a whole stream ends between frames");
    Ok(frames)
}

/// Like [`feed`], but reads every payload "elsewhere" (straight from the piece, as a consumer
/// reading into its own buffer does) and tells the framer with `skip_payload`.
fn feed_skipping<H: FrameHeader + Debug>(stream: &[u8], cuts: &[usize]) -> Frames<H> {
    let mut f = Framer::<H>::new();
    let mut frames: Frames<H> = Vec::new();
    for piece in pieces(stream, cuts) {
        let mut rest = piece;
        while !rest.is_empty() {
            let due = f.payload_remaining();
            if due > 0 {
                let n = rest.len().min(due as usize);
                frames.last_mut().unwrap().1.extend_from_slice(&rest[..n]);
                f.skip_payload(n as u64);
                rest = &rest[n..];
                continue;
            }
            let (used, ev) = f.next(rest).unwrap();
            rest = &rest[used..];
            match ev {
                Some(Event::Header(h)) => frames.push((h, Vec::new())),
                Some(Event::Payload(_)) => panic!("payloads are skipped, never handed out"),
                None => assert!(rest.is_empty()),
            }
        }
    }
    assert!(f.at_boundary());
    frames
}

/// Damages frame `at`'s header: one byte of its magic or of its reserved bytes.
fn damage(stream: &mut [u8], frame_start: usize, byte: usize, xor: u8) {
    stream[frame_start + byte] ^= xor;
}

/// Where each frame starts in the stream.
fn starts<H: FrameHeader>(frames: &Frames<H>) -> Vec<usize> {
    let mut at = 0;
    frames
        .iter()
        .map(|(_, p)| {
            let s = at;
            at += H::LEN + p.len();
            s
        })
        .collect()
}

/// The rule written out again from docs/protocol.md, "Replies".
fn reference_rule(op: Op, length: u64, max_hits: u32, status: Status, payload: u64) -> bool {
    match (op, status) {
        (Op::Read, Status::Ok) => payload == length,
        (Op::Search, Status::Ok) => payload.is_multiple_of(8) && payload / 8 <= u64::from(max_hits),
        _ => payload == 0,
    }
}

proptest! {
    #[test]
    fn requests_decode_the_same_split_at_every_point(frames in vec(request_frame(), 0..8)) {
        let stream = encode_requests(&frames);
        prop_assert_eq!(feed::<RequestHeader>(&stream, &[]), Ok(frames.clone()));
        for k in 0..=stream.len() {
            prop_assert_eq!(feed::<RequestHeader>(&stream, &[k]), Ok(frames.clone()), "split at {}", k);
        }
    }

    #[test]
    fn replies_decode_the_same_split_at_every_point(frames in vec(reply_frame(), 0..8)) {
        let stream = encode_replies(&frames);
        prop_assert_eq!(feed::<ReplyHeader>(&stream, &[]), Ok(frames.clone()));
        for k in 0..=stream.len() {
            prop_assert_eq!(feed::<ReplyHeader>(&stream, &[k]), Ok(frames.clone()), "split at {}", k);
        }
    }

    #[test]
    fn requests_decode_the_same_in_random_pieces(
        frames in vec(request_frame(), 0..12),
        picks in vec(any::<Index>(), 0..24),
    ) {
        let stream = encode_requests(&frames);
        let cuts = cuts_of(stream.len(), &picks);
        prop_assert_eq!(feed::<RequestHeader>(&stream, &cuts), Ok(frames.clone()));
        // One byte at a time: every point a split.
        let every: Vec<usize> = (1..stream.len()).collect();
        prop_assert_eq!(feed::<RequestHeader>(&stream, &every), Ok(frames));
    }

    #[test]
    fn replies_decode_the_same_in_random_pieces(
        frames in vec(reply_frame(), 0..12),
        picks in vec(any::<Index>(), 0..24),
    ) {
        let stream = encode_replies(&frames);
        let cuts = cuts_of(stream.len(), &picks);
        prop_assert_eq!(feed::<ReplyHeader>(&stream, &cuts), Ok(frames.clone()));
        let every: Vec<usize> = (1..stream.len()).collect();
        prop_assert_eq!(feed::<ReplyHeader>(&stream, &every), Ok(frames));
    }

    #[test]
    fn skipping_payloads_gives_the_same_frames(
        requests in vec(request_frame(), 0..10),
        replies in vec(reply_frame(), 0..10),
        picks in vec(any::<Index>(), 0..24),
    ) {
        let stream = encode_requests(&requests);
        let cuts = cuts_of(stream.len(), &picks);
        prop_assert_eq!(feed_skipping::<RequestHeader>(&stream, &cuts), requests);
        let stream = encode_replies(&replies);
        let cuts = cuts_of(stream.len(), &picks);
        prop_assert_eq!(feed_skipping::<ReplyHeader>(&stream, &cuts), replies);
    }

    #[test]
    fn a_damaged_request_header_is_bad_frame_at_that_frame(
        frames in vec(request_frame(), 1..8),
        which in any::<Index>(),
        // Magic (0..4) or reserved (6..8).
        byte in prop_oneof![0usize..4, 6usize..8],
        xor in 1u8..=255,
        picks in vec(any::<Index>(), 0..8),
    ) {
        let mut stream = encode_requests(&frames);
        let i = which.index(frames.len());
        damage(&mut stream, starts(&frames)[i], byte, xor);
        let want = Err((i, Status::BadFrame));
        prop_assert_eq!(feed::<RequestHeader>(&stream, &[]), want.clone());
        prop_assert_eq!(feed::<RequestHeader>(&stream, &cuts_of(stream.len(), &picks)), want.clone());
        for k in 0..=stream.len() {
            prop_assert_eq!(feed::<RequestHeader>(&stream, &[k]), want.clone(), "split at {}", k);
        }
    }

    #[test]
    fn a_damaged_reply_header_is_bad_frame_at_that_frame(
        frames in vec(reply_frame(), 1..8),
        which in any::<Index>(),
        // Magic (0..4) or reserved (20..24).
        byte in prop_oneof![0usize..4, 20usize..24],
        xor in 1u8..=255,
        picks in vec(any::<Index>(), 0..8),
    ) {
        let mut stream = encode_replies(&frames);
        let i = which.index(frames.len());
        damage(&mut stream, starts(&frames)[i], byte, xor);
        let want = Err((i, Status::BadFrame));
        prop_assert_eq!(feed::<ReplyHeader>(&stream, &[]), want.clone());
        prop_assert_eq!(feed::<ReplyHeader>(&stream, &cuts_of(stream.len(), &picks)), want.clone());
        for k in 0..=stream.len() {
            prop_assert_eq!(feed::<ReplyHeader>(&stream, &[k]), want.clone(), "split at {}", k);
        }
    }

    #[test]
    fn peek_header_sees_the_frame_without_consuming_it(
        frames in vec(request_frame(), 1..4),
        cut in any::<Index>(),
    ) {
        let stream = encode_requests(&frames);
        let (h, p) = &frames[0];
        let n = cut.index(stream.len() + 1);
        let want = if n < REQUEST_HEADER_LEN { None } else { Some(*h) };
        prop_assert_eq!(peek_header::<RequestHeader>(&stream[..n]), Ok(want));
        prop_assert_eq!(h.frame_len(), (REQUEST_HEADER_LEN + p.len()) as u64);
        prop_assert_eq!(request_frame_len(h), h.frame_len());
    }

}

proptest! {
    // Cheap cases, and the edges (an OK SEARCH at exactly its hit limit) are a few in a hundred.
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn check_reply_follows_the_expected_payload_rule(
        op in prop::sample::select(Op::ALL.to_vec()),
        length in prop_oneof![0u64..100_000, any::<u64>()],
        max_hits in prop_oneof![0u32..64, any::<u32>()],
        status in prop_oneof![
            2 => Just(Status::Ok.code()),
            2 => prop::sample::select(Status::ALL.to_vec()).prop_map(Status::code),
            1 => any::<u16>(),
        ],
        pick in 0u8..7,
        any_len in any::<u32>(),
        hits in 0u32..80,
        tag in any::<u64>(),
    ) {
        // Mostly lengths near the interesting ones: the request's, whole hits, the hit limit
        // and one hit past it, partial hits.
        let payload_len = match pick {
            0 => length as u32,
            1 => hits.wrapping_mul(8),
            2 => hits.wrapping_mul(8).wrapping_add(1 + any_len % 7),
            3 => max_hits.wrapping_mul(8),
            4 => max_hits.wrapping_add(1).wrapping_mul(8),
            5 => 0,
            _ => any_len,
        };
        let reply = ReplyHeader { status, flags: 0, tag: Tag(tag), payload_len };
        let st = reply.status_enum();
        let ok = reference_rule(op, length, max_hits, st, u64::from(payload_len));
        let want = expected_reply_payload(op, length, max_hits, st);
        prop_assert_eq!(want.allows(u64::from(payload_len)), ok);
        match check_reply(op, length, max_hits, &reply) {
            Ok(()) => prop_assert!(ok),
            Err(e) => {
                prop_assert!(!ok);
                // The message names the offending length and the tag.
                prop_assert!(e.contains(&payload_len.to_string()), "{}", e);
                prop_assert!(e.contains(&tag.to_string()), "{}", e);
            }
        }
    }
}

#[test]
fn expected_payload_examples() {
    use ExpectedPayload::*;
    assert_eq!(
        expected_reply_payload(Op::Read, 4096, 0, Status::Ok),
        Exactly(4096)
    );
    assert_eq!(
        expected_reply_payload(Op::Search, 1 << 20, 10, Status::Ok),
        Hits { max: 80 }
    );
    for op in Op::ALL {
        for s in Status::ALL.into_iter().filter(|s| *s != Status::Ok) {
            assert_eq!(
                expected_reply_payload(op, 4096, 10, s),
                Exactly(0),
                "{op:?} {s:?}"
            );
        }
    }
    for op in [Op::Write, Op::Flush, Op::Discard, Op::WriteZeroes] {
        assert_eq!(expected_reply_payload(op, 4096, 10, Status::Ok), Exactly(0));
    }
    assert!(Hits { max: 80 }.allows(0));
    assert!(Hits { max: 80 }.allows(80));
    assert!(!Hits { max: 80 }.allows(88));
    assert!(!Hits { max: 80 }.allows(12));
    // A failed READ that carries data desynchronises nothing (the framer skips it), but it is
    // not what the protocol allows.
    let bad = ReplyHeader {
        status: Status::IoError.code(),
        flags: 0,
        tag: Tag(7),
        payload_len: 4096,
    };
    let e = check_reply(Op::Read, 4096, 0, &bad).unwrap_err();
    assert!(e.contains("4096") && e.contains("tag 7"), "{e}");
}

#[test]
fn a_cut_stream_is_not_at_a_boundary() {
    let h = RequestHeader::new(Op::Write, 0, Tag(1), 0, 4096);
    let mut f = Framer::<RequestHeader>::new();
    let b = h.encode();
    // Part of a header: held inside, nothing to hand out yet.
    assert_eq!(f.next(&b[..10]).unwrap(), (10, None));
    assert!(!f.at_boundary());
    assert_eq!(f.current(), None);
    assert_eq!(f.next(&b[10..]).unwrap(), (22, Some(Event::Header(h))));
    assert_eq!(f.payload_remaining(), 4096);
    assert_eq!(f.current(), Some(&h));
    // Mid-payload with nothing new: no event, nothing used.
    assert_eq!(f.next(&[]).unwrap(), (0, None));
    assert_eq!(
        f.next(&[9; 100]).unwrap(),
        (100, Some(Event::Payload(&[9; 100][..])))
    );
    f.skip_payload(3996);
    assert!(f.at_boundary());
    assert_eq!(f.current(), None);
}

#[test]
#[should_panic(expected = "skipped past")]
fn skipping_past_the_payload_panics() {
    let mut f = Framer::<ReplyHeader>::new();
    let h = ReplyHeader {
        status: 0,
        flags: 0,
        tag: Tag(1),
        payload_len: 8,
    };
    f.next(&h.encode()).unwrap();
    f.skip_payload(9);
}
