//! The framer over untrusted bytes (what a node reads from a client, a client from a node), fed
//! in pieces whose split points come from the input: it never panics, what it hands out
//! re-encodes to exactly the bytes it consumed, and the pieces decode the same as the whole.
#![no_main]

use dasmesh_wire::{
    Event, FrameHeader, Framer, Op, ReplyHeader, RequestHeader, Status, Tag, SEARCH_BODY_LEN,
};
use libfuzzer_sys::fuzz_target;

/// What a feed produced: each frame's header and payload, the stream bytes they account for,
/// and how it ended (the error, if a header did not decode).
#[derive(Debug, PartialEq)]
struct Outcome<H> {
    frames: Vec<(H, Vec<u8>)>,
    framed: Vec<u8>,
    error: Option<Status>,
    at_boundary: bool,
}

fn feed<H: FrameHeader>(stream: &[u8], cuts: &[usize]) -> Outcome<H> {
    let mut f = Framer::<H>::new();
    let mut out = Outcome {
        frames: Vec::new(),
        framed: Vec::new(),
        error: None,
        at_boundary: true,
    };
    let mut at = 0;
    let ends = cuts.iter().copied().chain([stream.len()]);
    'pieces: for end in ends {
        let mut rest = &stream[at..end];
        at = end;
        while !rest.is_empty() {
            let (used, ev) = match f.next(rest) {
                Ok(r) => r,
                Err(s) => {
                    out.error = Some(s);
                    break 'pieces;
                }
            };
            assert!(used > 0 && used <= rest.len());
            rest = &rest[used..];
            match ev {
                Some(Event::Header(h)) => {
                    out.framed.extend_from_slice(h.encode_header().as_ref());
                    out.frames.push((h, Vec::new()));
                }
                Some(Event::Payload(p)) => {
                    assert!(!p.is_empty() && p.len() == used);
                    out.framed.extend_from_slice(p);
                    out.frames
                        .last_mut()
                        .expect("payload after a header")
                        .1
                        .extend_from_slice(p);
                }
                None => assert!(rest.is_empty()),
            }
        }
    }
    out.at_boundary = f.at_boundary();
    // Everything handed out is the stream's own bytes, in order.
    assert_eq!(&stream[..out.framed.len()], &out.framed[..]);
    for (h, p) in &out.frames[..out.frames.len().saturating_sub(1)] {
        assert_eq!(p.len() as u64, h.payload_len());
    }
    let held = stream.len() - out.framed.len();
    match out.error {
        // The header that failed starts right after the last frame handed out.
        Some(s) => {
            assert_eq!(s, Status::BadFrame);
            assert!(f.payload_remaining() == 0 && held > 0);
            if held >= H::LEN {
                assert_eq!(H::decode_header(&stream[out.framed.len()..]).err(), Some(s));
            }
        }
        // What is left is a partial header the framer holds, or nothing.
        None => {
            assert!(held < H::LEN);
            assert_eq!(held == 0 && f.payload_remaining() == 0, f.at_boundary());
        }
    }
    out
}

fn check<H: FrameHeader + PartialEq + std::fmt::Debug>(
    stream: &[u8],
    cuts: &[usize],
) -> Outcome<H> {
    let whole = feed::<H>(stream, &[]);
    let split = feed::<H>(stream, cuts);
    assert_eq!(whole, split);
    whole
}

/// Well-formed frames built from the input (so that runs without coverage feedback, such as the
/// smoke run in scripts/test.sh, get past the magic): 4 bytes of header fields, then the
/// payload the header announces, taken from the input.
fn requests_from(mut d: &[u8]) -> Vec<(RequestHeader, Vec<u8>)> {
    let mut out = Vec::new();
    while let [op, flags, tag, len, rest @ ..] = d {
        let op = op % 8;
        let (length, n) = match Op::from_code(op) {
            Some(Op::Write) => {
                let n = usize::from(*len).min(rest.len());
                (n as u64, n)
            }
            // A SEARCH without its whole body ends the stream.
            Some(Op::Search) if rest.len() < SEARCH_BODY_LEN => break,
            Some(Op::Search) => (u64::from(*len), SEARCH_BODY_LEN),
            _ => (u64::from(*len), 0),
        };
        let h = RequestHeader {
            op,
            flags: *flags,
            tag: Tag(u64::from(*tag)),
            offset: 0,
            length,
        };
        assert_eq!(h.payload_len(), n as u64);
        out.push((h, rest[..n].to_vec()));
        d = &rest[n..];
    }
    out
}

fn replies_from(mut d: &[u8]) -> Vec<(ReplyHeader, Vec<u8>)> {
    let mut out = Vec::new();
    while let [status, flags, tag, len, rest @ ..] = d {
        let n = usize::from(*len).min(rest.len());
        let h = ReplyHeader {
            status: u16::from(*status % 24),
            flags: u16::from(*flags),
            tag: Tag(u64::from(*tag)),
            payload_len: n as u32,
        };
        out.push((h, rest[..n].to_vec()));
        d = &rest[n..];
    }
    out
}

fn encode<H: FrameHeader>(frames: &[(H, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (h, p) in frames {
        v.extend_from_slice(h.encode_header().as_ref());
        v.extend_from_slice(p);
    }
    v
}

/// Frames built from the input decode, whole and split, to exactly themselves.
fn built<H: FrameHeader + PartialEq + std::fmt::Debug>(frames: Vec<(H, Vec<u8>)>, cuts: &[usize]) {
    let bytes = encode(&frames);
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let got = check::<H>(&bytes, &cuts);
    assert_eq!(
        (got.frames, got.error, got.at_boundary),
        (frames, None, true)
    );
}

fuzz_target!(|data: &[u8]| {
    // [kind] [n] [n split points, 2 bytes each] [stream, or frames to build one from]
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let n = usize::from(n % 32);
    if rest.len() < 2 * n {
        return;
    }
    let (points, stream) = rest.split_at(2 * n);
    let mut cuts: Vec<usize> = points
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    match kind % 4 {
        0 => {
            check::<RequestHeader>(stream, &cuts);
        }
        1 => {
            check::<ReplyHeader>(stream, &cuts);
        }
        2 => built(requests_from(stream), &cuts),
        _ => built(replies_from(stream), &cuts),
    }
});
