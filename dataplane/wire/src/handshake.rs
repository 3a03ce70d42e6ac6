//! The handshake: the client's [`Hello`] (versions, device, token) and the node's [`HelloReply`]
//! (chosen version, status, and what the connection may do).

use bytemuck::{Pod, Zeroable};

use crate::ids::DeviceId;
use crate::status::Status;

/// Magic opening both handshake messages: the bytes `DASMESH!`.
pub const HELLO_MAGIC: [u8; 8] = *b"DASMESH!";
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Size of the fixed part of a [`Hello`]; the token bytes follow it.
pub const HELLO_LEN: usize = 32;
/// Size of a [`HelloReply`].
pub const HELLO_REPLY_LEN: usize = 64;
/// Largest token a node accepts in a hello.
pub const MAX_TOKEN_LEN: usize = 1024;

/// Picks the highest version both sides speak, or `None`.
pub fn negotiate_version(client_min: u16, client_max: u16) -> Option<u16> {
    (client_min <= PROTOCOL_VERSION && PROTOCOL_VERSION <= client_max).then_some(PROTOCOL_VERSION)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RawHello {
    magic: [u8; 8],
    min_version: [u8; 2],
    max_version: [u8; 2],
    device_id: [u8; 4],
    token_len: [u8; 2],
    flags: [u8; 2],
    reserved: [u8; 12],
}

/// The client's opening message; `token_len` bytes of binary token follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Lowest protocol version the client speaks.
    pub min_version: u16,
    /// Highest protocol version the client speaks.
    pub max_version: u16,
    /// The device the client wants; must match the token's.
    pub device_id: DeviceId,
    /// Length of the token that follows.
    pub token_len: u16,
    /// Flag bits ([`Hello::PROOF`]); unknown bits are refused.
    pub flags: u16,
}

impl Hello {
    /// A [`Proof`](crate::Proof) of [`PROOF_LEN`](crate::PROOF_LEN) bytes follows the token.
    pub const PROOF: u16 = 1;

    /// Bytes that follow the 32-byte hello: the token and, with [`Hello::PROOF`], the proof.
    pub fn trailer_len(&self) -> usize {
        usize::from(self.token_len)
            + if self.flags & Self::PROOF != 0 {
                crate::PROOF_LEN
            } else {
                0
            }
    }

    /// Encodes to the 32 wire bytes.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        bytemuck::cast(RawHello {
            magic: HELLO_MAGIC,
            min_version: self.min_version.to_le_bytes(),
            max_version: self.max_version.to_le_bytes(),
            device_id: self.device_id.0.to_le_bytes(),
            token_len: self.token_len.to_le_bytes(),
            flags: self.flags.to_le_bytes(),
            reserved: [0; 12],
        })
    }

    /// Decodes; `BadFrame` for a short buffer, wrong magic, or set flag/reserved bytes;
    /// `BadToken` for a token length of 0 or over [`MAX_TOKEN_LEN`].
    pub fn decode(bytes: &[u8]) -> Result<Self, Status> {
        let raw: &RawHello = bytes
            .get(..HELLO_LEN)
            .map(bytemuck::from_bytes)
            .ok_or(Status::BadFrame)?;
        let flags = u16::from_le_bytes(raw.flags);
        if raw.magic != HELLO_MAGIC || flags & !Self::PROOF != 0 || raw.reserved != [0; 12] {
            return Err(Status::BadFrame);
        }
        let token_len = u16::from_le_bytes(raw.token_len);
        if token_len == 0 || usize::from(token_len) > MAX_TOKEN_LEN {
            return Err(Status::BadToken);
        }
        Ok(Self {
            min_version: u16::from_le_bytes(raw.min_version),
            max_version: u16::from_le_bytes(raw.max_version),
            device_id: DeviceId(u32::from_le_bytes(raw.device_id)),
            token_len,
            flags,
        })
    }
}

/// What a node's device supports, announced in the [`HelloReply`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// FLUSH is meaningful (the device has a volatile cache or the backend buffers).
    pub const FLUSH: u32 = 1;
    /// FUA writes are honoured.
    pub const FUA: u32 = 1 << 1;
    /// DISCARD is accepted.
    pub const DISCARD: u32 = 1 << 2;
    /// WRITE_ZEROES is accepted.
    pub const WRITE_ZEROES: u32 = 1 << 3;
    /// SEARCH is accepted.
    pub const SEARCH: u32 = 1 << 4;
    /// A discarded range reads back as zeroes.
    pub const DISCARD_ZEROES: u32 = 1 << 5;
    /// The node takes bound (format-2) tokens with a proof of holding (Hello flag `PROOF`).
    pub const HOLDER_PROOF: u32 = 1 << 6;
    /// All capabilities defined by protocol version 1.
    pub const ALL: u32 = 0x7f;

    /// Whether every bit of `bits` is set.
    pub fn has(self, bits: u32) -> bool {
        self.0 & bits == bits
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RawHelloReply {
    magic: [u8; 8],
    version: [u8; 2],
    status: [u8; 2],
    device_id: [u8; 4],
    block_size: [u8; 4],
    physical_block_size: [u8; 4],
    max_io_size: [u8; 4],
    max_inflight: [u8; 4],
    device_size: [u8; 8],
    lent_offset: [u8; 8],
    lent_length: [u8; 8],
    capabilities: [u8; 4],
    max_search_hits: [u8; 4],
}

/// The node's answer to a [`Hello`]. On a non-`Ok` status only `magic`, `version` and `status`
/// are meaningful and the node closes the connection after sending it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HelloReply {
    /// The chosen protocol version (0 on `VersionMismatch`).
    pub version: u16,
    /// Raw status code (see [`Status`]).
    pub status: u16,
    /// The device this connection serves.
    pub device_id: DeviceId,
    /// Logical block size: offsets and lengths are multiples of it.
    pub block_size: u32,
    /// Physical block size (writes of this granularity avoid read-modify-write).
    pub physical_block_size: u32,
    /// Largest READ or WRITE length.
    pub max_io_size: u32,
    /// Requests the node keeps in flight per connection; more wait in the socket.
    pub max_inflight: u32,
    /// The device's size in bytes.
    pub device_size: u64,
    /// Start of the range the token lends, clipped to the device.
    pub lent_offset: u64,
    /// Length of that range.
    pub lent_length: u64,
    /// Capability bits ([`Capabilities`]).
    pub capabilities: Capabilities,
    /// Largest `max_hits` a SEARCH may ask for.
    pub max_search_hits: u32,
}

impl HelloReply {
    /// A refusal: only the version and the status are set.
    pub fn refuse(version: u16, status: Status) -> Self {
        Self {
            version,
            status: status.code(),
            ..Self::default()
        }
    }

    /// Encodes to the 64 wire bytes.
    pub fn encode(&self) -> [u8; HELLO_REPLY_LEN] {
        bytemuck::cast(RawHelloReply {
            magic: HELLO_MAGIC,
            version: self.version.to_le_bytes(),
            status: self.status.to_le_bytes(),
            device_id: self.device_id.0.to_le_bytes(),
            block_size: self.block_size.to_le_bytes(),
            physical_block_size: self.physical_block_size.to_le_bytes(),
            max_io_size: self.max_io_size.to_le_bytes(),
            max_inflight: self.max_inflight.to_le_bytes(),
            device_size: self.device_size.to_le_bytes(),
            lent_offset: self.lent_offset.to_le_bytes(),
            lent_length: self.lent_length.to_le_bytes(),
            capabilities: self.capabilities.0.to_le_bytes(),
            max_search_hits: self.max_search_hits.to_le_bytes(),
        })
    }

    /// Decodes; `BadFrame` for a short buffer or wrong magic.
    pub fn decode(bytes: &[u8]) -> Result<Self, Status> {
        let r: &RawHelloReply = bytes
            .get(..HELLO_REPLY_LEN)
            .map(bytemuck::from_bytes)
            .ok_or(Status::BadFrame)?;
        if r.magic != HELLO_MAGIC {
            return Err(Status::BadFrame);
        }
        Ok(Self {
            version: u16::from_le_bytes(r.version),
            status: u16::from_le_bytes(r.status),
            device_id: DeviceId(u32::from_le_bytes(r.device_id)),
            block_size: u32::from_le_bytes(r.block_size),
            physical_block_size: u32::from_le_bytes(r.physical_block_size),
            max_io_size: u32::from_le_bytes(r.max_io_size),
            max_inflight: u32::from_le_bytes(r.max_inflight),
            device_size: u64::from_le_bytes(r.device_size),
            lent_offset: u64::from_le_bytes(r.lent_offset),
            lent_length: u64::from_le_bytes(r.lent_length),
            capabilities: Capabilities(u32::from_le_bytes(r.capabilities)),
            max_search_hits: u32::from_le_bytes(r.max_search_hits),
        })
    }

    /// The status as an enum; an unknown code maps to `Internal`.
    pub fn status_enum(&self) -> Status {
        Status::from_code(self.status).unwrap_or(Status::Internal)
    }
}
