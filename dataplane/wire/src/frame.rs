//! Request and reply headers, the SEARCH body, and the static checks every request passes.
//!
//! Headers are fixed-size `#[repr(C)]` structs of little-endian byte arrays (alignment 1), so
//! they can be viewed straight out of any receive buffer with bytemuck, on any host.

use bytemuck::{Pod, Zeroable};

use crate::ids::Tag;
use crate::status::Status;

/// Magic opening every request: the bytes `DMRQ`.
pub const REQUEST_MAGIC: [u8; 4] = *b"DMRQ";
/// Magic opening every reply: the bytes `DMRP`.
pub const REPLY_MAGIC: [u8; 4] = *b"DMRP";
/// Size of a request header on the wire.
pub const REQUEST_HEADER_LEN: usize = 32;
/// Size of a reply header on the wire.
pub const REPLY_HEADER_LEN: usize = 24;
/// Size of the body following a SEARCH request header.
pub const SEARCH_BODY_LEN: usize = 72;
/// Longest SEARCH pattern.
pub const SEARCH_PATTERN_MAX: usize = 64;
/// Request flag: the write is durable when acknowledged (WRITE and WRITE_ZEROES).
pub const FLAG_FUA: u8 = 1;
/// Reply flag on SEARCH: the hit limit was reached, more matches may follow the last offset.
pub const REPLY_FLAG_TRUNCATED: u16 = 1;

/// The operations of protocol version 1.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read `length` bytes at `offset`; the reply carries them.
    Read = 1,
    /// Write the `length` payload bytes that follow the header at `offset`.
    Write = 2,
    /// Make every write acknowledged before this FLUSH was received durable.
    Flush = 3,
    /// Deallocate a range (the backend may or may not zero it, see the capabilities).
    Discard = 4,
    /// Make a range read back as zeroes.
    WriteZeroes = 5,
    /// Scan a range for a byte pattern; the reply lists the offsets of the matches.
    Search = 6,
}

impl Op {
    /// Every op, in code order.
    pub const ALL: [Op; 6] = [
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Discard,
        Op::WriteZeroes,
        Op::Search,
    ];

    /// The op for a wire code, `None` if unknown.
    pub fn from_code(code: u8) -> Option<Op> {
        Op::ALL.into_iter().find(|op| *op as u8 == code)
    }

    /// Whether this op changes stored data (needs a read-write token).
    pub fn is_write(self) -> bool {
        matches!(self, Op::Write | Op::Discard | Op::WriteZeroes)
    }

    /// The flag bits this op accepts.
    pub fn allowed_flags(self) -> u8 {
        match self {
            Op::Write | Op::WriteZeroes => FLAG_FUA,
            _ => 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RawRequest {
    magic: [u8; 4],
    op: u8,
    flags: u8,
    reserved: [u8; 2],
    tag: [u8; 8],
    offset: [u8; 8],
    length: [u8; 8],
}

/// A request header, decoded. `op` is the raw code so an unknown op can still be answered by tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// Raw op code (see [`Op`]).
    pub op: u8,
    /// Flag bits ([`FLAG_FUA`]).
    pub flags: u8,
    /// Echoed in the reply.
    pub tag: Tag,
    /// Byte offset on the device.
    pub offset: u64,
    /// Byte length (the payload length for WRITE).
    pub length: u64,
}

impl RequestHeader {
    /// A header for a known op.
    pub fn new(op: Op, flags: u8, tag: Tag, offset: u64, length: u64) -> Self {
        Self {
            op: op as u8,
            flags,
            tag,
            offset,
            length,
        }
    }

    /// Encodes to the 32 wire bytes.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let raw = RawRequest {
            magic: REQUEST_MAGIC,
            op: self.op,
            flags: self.flags,
            reserved: [0; 2],
            tag: self.tag.0.to_le_bytes(),
            offset: self.offset.to_le_bytes(),
            length: self.length.to_le_bytes(),
        };
        bytemuck::cast(raw)
    }

    /// Decodes the first 32 bytes of `bytes`. Fails with `BadFrame` when the buffer is short,
    /// the magic is wrong or a reserved byte is set: the stream can no longer be trusted.
    pub fn decode(bytes: &[u8]) -> Result<Self, Status> {
        let raw: &RawRequest = bytes
            .get(..REQUEST_HEADER_LEN)
            .map(bytemuck::from_bytes)
            .ok_or(Status::BadFrame)?;
        if raw.magic != REQUEST_MAGIC || raw.reserved != [0; 2] {
            return Err(Status::BadFrame);
        }
        Ok(Self {
            op: raw.op,
            flags: raw.flags,
            tag: Tag(u64::from_le_bytes(raw.tag)),
            offset: u64::from_le_bytes(raw.offset),
            length: u64::from_le_bytes(raw.length),
        })
    }

    /// The known op, if any.
    pub fn known_op(&self) -> Option<Op> {
        Op::from_code(self.op)
    }

    /// How many bytes follow this header on the wire: `length` for WRITE, the search body for
    /// SEARCH, none otherwise (including unknown ops, which by rule carry no payload).
    pub fn payload_len(&self) -> u64 {
        match self.known_op() {
            Some(Op::Write) => self.length,
            Some(Op::Search) => SEARCH_BODY_LEN as u64,
            _ => 0,
        }
    }
}

/// What a connection may do, from the token and the device: the input of [`check_request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// The device's logical block size; offsets and lengths are multiples of it.
    pub block_size: u32,
    /// The largest READ or WRITE length.
    pub max_io_size: u32,
    /// Start of the lent byte range (from the token, already clipped to the device).
    pub range_offset: u64,
    /// Length of the lent byte range.
    pub range_length: u64,
    /// Whether the token grants write rights.
    pub writable: bool,
}

/// The static checks of a request header against its connection's limits, in the order the
/// protocol document gives: op, flags, rights, length, alignment, range.
pub fn check_request(h: &RequestHeader, limits: &RequestLimits) -> Result<Op, Status> {
    let op = h.known_op().ok_or(Status::UnknownOp)?;
    if h.flags & !op.allowed_flags() != 0 {
        return Err(Status::BadFlags);
    }
    if op.is_write() && !limits.writable {
        return Err(Status::ReadOnly);
    }
    if op == Op::Flush {
        return if h.offset == 0 && h.length == 0 {
            Ok(op)
        } else {
            Err(Status::InvalidLength)
        };
    }
    if h.length == 0 {
        return Err(Status::InvalidLength);
    }
    if matches!(op, Op::Read | Op::Write) && h.length > u64::from(limits.max_io_size) {
        return Err(Status::TooLarge);
    }
    let bs = u64::from(limits.block_size.max(1));
    if !h.offset.is_multiple_of(bs) || !h.length.is_multiple_of(bs) {
        return Err(Status::Misaligned);
    }
    let end = h.offset.checked_add(h.length).ok_or(Status::OutOfRange)?;
    let range_end = limits.range_offset.saturating_add(limits.range_length);
    if h.offset < limits.range_offset || end > range_end {
        return Err(Status::OutOfRange);
    }
    Ok(op)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RawReply {
    magic: [u8; 4],
    status: [u8; 2],
    flags: [u8; 2],
    tag: [u8; 8],
    payload_len: [u8; 4],
    reserved: [u8; 4],
}

/// A reply header. `status` is kept raw on decode so a client can report a code from a newer node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyHeader {
    /// Status code (see [`Status`]).
    pub status: u16,
    /// Reply flags ([`REPLY_FLAG_TRUNCATED`]).
    pub flags: u16,
    /// The request's tag.
    pub tag: Tag,
    /// Bytes following this header: READ data, or 8 bytes per SEARCH hit.
    pub payload_len: u32,
}

impl ReplyHeader {
    /// A reply with no payload.
    pub fn status(tag: Tag, status: Status) -> Self {
        Self {
            status: status.code(),
            flags: 0,
            tag,
            payload_len: 0,
        }
    }

    /// Encodes to the 24 wire bytes.
    pub fn encode(&self) -> [u8; REPLY_HEADER_LEN] {
        let raw = RawReply {
            magic: REPLY_MAGIC,
            status: self.status.to_le_bytes(),
            flags: self.flags.to_le_bytes(),
            tag: self.tag.0.to_le_bytes(),
            payload_len: self.payload_len.to_le_bytes(),
            reserved: [0; 4],
        };
        bytemuck::cast(raw)
    }

    /// Decodes the first 24 bytes; `BadFrame` on a short buffer, wrong magic or reserved bits.
    pub fn decode(bytes: &[u8]) -> Result<Self, Status> {
        let raw: &RawReply = bytes
            .get(..REPLY_HEADER_LEN)
            .map(bytemuck::from_bytes)
            .ok_or(Status::BadFrame)?;
        if raw.magic != REPLY_MAGIC || raw.reserved != [0; 4] {
            return Err(Status::BadFrame);
        }
        Ok(Self {
            status: u16::from_le_bytes(raw.status),
            flags: u16::from_le_bytes(raw.flags),
            tag: Tag(u64::from_le_bytes(raw.tag)),
            payload_len: u32::from_le_bytes(raw.payload_len),
        })
    }

    /// The status as an enum; an unknown code maps to `Internal`.
    pub fn status_enum(&self) -> Status {
        Status::from_code(self.status).unwrap_or(Status::Internal)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RawSearch {
    max_hits: [u8; 4],
    pattern_len: [u8; 2],
    reserved: [u8; 2],
    pattern: [u8; SEARCH_PATTERN_MAX],
}

/// The body of a SEARCH request: what to look for and how many hits to return at most.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchBody {
    /// At most this many offsets are returned (1..= the node's limit).
    pub max_hits: u32,
    /// The byte pattern, 1..=64 bytes.
    pub pattern: Vec<u8>,
}

impl SearchBody {
    /// Encodes to the 72 wire bytes; `BadPattern` if the pattern is empty or longer than 64.
    pub fn encode(&self) -> Result<[u8; SEARCH_BODY_LEN], Status> {
        if self.pattern.is_empty() || self.pattern.len() > SEARCH_PATTERN_MAX {
            return Err(Status::BadPattern);
        }
        let mut raw = RawSearch {
            max_hits: self.max_hits.to_le_bytes(),
            pattern_len: (self.pattern.len() as u16).to_le_bytes(),
            reserved: [0; 2],
            pattern: [0; SEARCH_PATTERN_MAX],
        };
        raw.pattern[..self.pattern.len()].copy_from_slice(&self.pattern);
        Ok(bytemuck::cast(raw))
    }

    /// Decodes and checks a body: `BadFrame` when short or a reserved byte is set,
    /// `BadPattern` for a pattern length outside 1..=64, non-zero padding, or `max_hits` of 0.
    pub fn decode(bytes: &[u8]) -> Result<Self, Status> {
        let raw: &RawSearch = bytes
            .get(..SEARCH_BODY_LEN)
            .map(bytemuck::from_bytes)
            .ok_or(Status::BadFrame)?;
        if raw.reserved != [0; 2] {
            return Err(Status::BadFrame);
        }
        let len = usize::from(u16::from_le_bytes(raw.pattern_len));
        let max_hits = u32::from_le_bytes(raw.max_hits);
        if len == 0 || len > SEARCH_PATTERN_MAX || max_hits == 0 {
            return Err(Status::BadPattern);
        }
        if raw.pattern[len..].iter().any(|b| *b != 0) {
            return Err(Status::BadPattern);
        }
        Ok(Self {
            max_hits,
            pattern: raw.pattern[..len].to_vec(),
        })
    }
}
