//! The one framer: how a byte stream of requests or replies splits into frames, and what payload
//! a reply may carry. The node, the host library, the bench and the test kits all read their
//! streams through [`Framer`] and check replies with [`expected_reply_payload`], so the rules are
//! written once.
//!
//! A frame is a fixed-size header ([`RequestHeader`] or [`ReplyHeader`]) followed by the payload
//! the header announces ([`FrameHeader::payload_len`]). The framer is a push parser with no I/O
//! and no allocation: feed it whatever bytes arrived, in pieces of any size, and it hands back
//! each header once complete, then the payload bytes as they come. A consumer that wants payload
//! bytes somewhere else (a READ reply straight into the caller's buffer) reads them itself and
//! tells the framer with [`Framer::skip_payload`]. A reader that keeps its unparsed bytes
//! contiguous and may put a frame off until later (the node, whose requests wait for buffer
//! slots) takes headers with [`peek_header`] instead: the same decoding, nothing consumed.

use crate::frame::{Op, ReplyHeader, RequestHeader, REPLY_HEADER_LEN, REQUEST_HEADER_LEN};
use crate::status::Status;

/// A header that opens a frame.
pub trait FrameHeader: Copy {
    /// Its size on the wire.
    const LEN: usize;
    /// Its encoded bytes (an array of [`Self::LEN`] bytes).
    type Bytes: AsRef<[u8]>;
    /// Decodes the first [`Self::LEN`] bytes (`BadFrame` when they are not a header).
    fn decode_header(bytes: &[u8]) -> Result<Self, Status>;
    /// Encodes it to its [`Self::LEN`] wire bytes.
    fn encode_header(&self) -> Self::Bytes;
    /// Payload bytes that follow it.
    fn payload_len(&self) -> u64;
    /// Bytes its whole frame occupies on the wire (header and payload).
    fn frame_len(&self) -> u64 {
        Self::LEN as u64 + self.payload_len()
    }
}

impl FrameHeader for RequestHeader {
    const LEN: usize = REQUEST_HEADER_LEN;
    type Bytes = [u8; REQUEST_HEADER_LEN];
    fn decode_header(bytes: &[u8]) -> Result<Self, Status> {
        RequestHeader::decode(bytes)
    }
    fn encode_header(&self) -> Self::Bytes {
        self.encode()
    }
    fn payload_len(&self) -> u64 {
        RequestHeader::payload_len(self)
    }
}

impl FrameHeader for ReplyHeader {
    const LEN: usize = REPLY_HEADER_LEN;
    type Bytes = [u8; REPLY_HEADER_LEN];
    fn decode_header(bytes: &[u8]) -> Result<Self, Status> {
        ReplyHeader::decode(bytes)
    }
    fn encode_header(&self) -> Self::Bytes {
        self.encode()
    }
    fn payload_len(&self) -> u64 {
        u64::from(self.payload_len)
    }
}

/// The header at the start of `buf`, without consuming anything: `None` while fewer than
/// [`FrameHeader::LEN`] bytes are there. For a reader that keeps a stream's unparsed bytes
/// contiguous in its own buffer and may put off taking a frame (the node's staging buffer, where
/// a request waits for a free slot): it has no partial header to keep, so it needs no [`Framer`]
/// state, only the same rules. [`Framer::next`] decodes with it too.
#[inline]
pub fn peek_header<H: FrameHeader>(buf: &[u8]) -> Result<Option<H>, Status> {
    if buf.len() < H::LEN {
        return Ok(None);
    }
    H::decode_header(buf).map(Some)
}

/// What the framer found in the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a, H> {
    /// A complete header; its payload (if any) follows as [`Event::Payload`] pieces.
    Header(H),
    /// The next bytes of the current frame's payload (never empty).
    Payload(&'a [u8]),
}

const MAX_HEADER: usize = if REQUEST_HEADER_LEN > REPLY_HEADER_LEN {
    REQUEST_HEADER_LEN
} else {
    REPLY_HEADER_LEN
};

/// Splits a stream of frames with headers of type `H`. Header bytes split across two reads are
/// kept inside (at most one header's worth), so any split of the stream decodes the same.
#[derive(Clone, Debug)]
pub struct Framer<H> {
    partial: [u8; MAX_HEADER],
    have: usize,
    current: Option<H>,
    remaining: u64,
}

impl<H: FrameHeader> Default for Framer<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: FrameHeader> Framer<H> {
    /// A framer at the start of a stream.
    pub fn new() -> Self {
        Self {
            partial: [0; MAX_HEADER],
            have: 0,
            current: None,
            remaining: 0,
        }
    }

    /// Takes the next event from `input`: returns how many bytes of it were used and the event,
    /// or `None` once everything given is used up without completing one. A header that does not
    /// decode fails with `BadFrame`: the stream cannot be trusted after that.
    pub fn next<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<Event<'a, H>>), Status> {
        if self.remaining > 0 {
            let n = input
                .len()
                .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            if n == 0 {
                return Ok((0, None));
            }
            self.remaining -= n as u64;
            if self.remaining == 0 {
                self.current = None;
            }
            return Ok((n, Some(Event::Payload(&input[..n]))));
        }
        self.current = None;
        if self.have == 0 {
            // The common case: the whole header is in this buffer.
            if let Some(h) = peek_header(input)? {
                self.start(h);
                return Ok((H::LEN, Some(Event::Header(h))));
            }
        }
        let n = (H::LEN - self.have).min(input.len());
        self.partial[self.have..self.have + n].copy_from_slice(&input[..n]);
        self.have += n;
        if self.have < H::LEN {
            return Ok((n, None));
        }
        self.have = 0;
        let h = H::decode_header(&self.partial[..H::LEN])?;
        self.start(h);
        Ok((n, Some(Event::Header(h))))
    }

    fn start(&mut self, h: H) {
        self.remaining = h.payload_len();
        self.current = (self.remaining > 0).then_some(h);
    }

    /// Payload bytes of the current frame still to come (0 between frames).
    pub fn payload_remaining(&self) -> u64 {
        self.remaining
    }

    /// The header whose payload is being read, if one is.
    pub fn current(&self) -> Option<&H> {
        self.current.as_ref()
    }

    /// Whether the framer stands exactly between two frames (no partial header, no payload due).
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Records `n` payload bytes of the current frame as read elsewhere (straight from the
    /// socket into their destination). `n` must not exceed [`Self::payload_remaining`].
    pub fn skip_payload(&mut self, n: u64) {
        assert!(n <= self.remaining, "skipped past the frame's payload");
        self.remaining -= n;
        if self.remaining == 0 {
            self.current = None;
        }
    }
}

/// What payload an OK or failed reply to a request may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedPayload {
    /// Exactly this many bytes (READ: the request's length; any failed reply: 0).
    Exactly(u64),
    /// Whole 8-byte hit offsets, at most this many bytes (SEARCH).
    Hits {
        /// The most bytes: 8 times the request's hit limit.
        max: u64,
    },
}

impl ExpectedPayload {
    /// Whether `len` bytes fit the rule.
    pub fn allows(self, len: u64) -> bool {
        match self {
            ExpectedPayload::Exactly(n) => len == n,
            ExpectedPayload::Hits { max } => len.is_multiple_of(8) && len <= max,
        }
    }
}

impl std::fmt::Display for ExpectedPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedPayload::Exactly(n) => write!(f, "{n} bytes"),
            ExpectedPayload::Hits { max } => write!(f, "a multiple of 8 bytes up to {max}"),
        }
    }
}

/// The expected-payload rule of `docs/protocol.md`: an OK READ carries exactly the bytes asked
/// for, an OK SEARCH 8 bytes per hit (at most `max_hits`), every other reply nothing.
pub fn expected_reply_payload(
    op: Op,
    length: u64,
    max_hits: u32,
    status: Status,
) -> ExpectedPayload {
    match (op, status) {
        (Op::Read, Status::Ok) => ExpectedPayload::Exactly(length),
        (Op::Search, Status::Ok) => ExpectedPayload::Hits {
            max: u64::from(max_hits) * 8,
        },
        _ => ExpectedPayload::Exactly(0),
    }
}

/// Checks a reply header against the request it answers; the error says what was wrong.
pub fn check_reply(op: Op, length: u64, max_hits: u32, reply: &ReplyHeader) -> Result<(), String> {
    let want = expected_reply_payload(op, length, max_hits, reply.status_enum());
    if want.allows(u64::from(reply.payload_len)) {
        Ok(())
    } else {
        Err(format!(
            "{op:?} reply for tag {} carries {} bytes, expected {want}",
            reply.tag, reply.payload_len
        ))
    }
}

/// Bytes a request frame occupies on the wire (header and payload): [`FrameHeader::frame_len`].
pub fn request_frame_len(h: &RequestHeader) -> u64 {
    h.frame_len()
}
