//! NBD wire format: magic numbers, flags, option and command codes, and pure encoders and
//! decoders for every message the gateway sends or receives. No I/O here.
//!
//! Everything on the wire is big-endian. Written from the NBD protocol document
//! (NetworkBlockDevice/nbd, doc/proto.md).

/// `NBDMAGIC`: first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second server magic, and the magic of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can leave out the 124 zero bytes.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: leave out the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flag: always set.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: writes are refused.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: FLUSH is supported.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: the FUA command flag is supported.
pub const FLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: TRIM is supported.
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: WRITE_ZEROES (and its NO_HOLE flag) is supported.
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: a FLUSH or FUA on one connection covers writes acknowledged on every other.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag (WRITE_ZEROES): do not punch a hole.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Bytes of zero padding after the `NBD_OPT_EXPORT_NAME` answer unless NO_ZEROES was agreed.
pub const EXPORT_NAME_PADDING: usize = 124;
/// An option header: magic, option, length.
pub const OPTION_HEADER_LEN: usize = 16;
/// A request header: magic, flags, type, handle, offset, length.
pub const REQUEST_LEN: usize = 28;
/// A simple reply header: magic, error, handle.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Longest string the protocol allows (export names, messages).
pub const MAX_STRING: usize = 4096;

/// Handshake options the gateway knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Opt {
    /// Choose the export and go to transmission (no way to report an error).
    ExportName = 1,
    /// End the negotiation.
    Abort = 2,
    /// List the exports.
    List = 3,
    /// Upgrade to TLS (refused: the gateway has no TLS).
    StartTls = 5,
    /// Describe an export.
    Info = 6,
    /// Describe an export and go to transmission.
    Go = 7,
    /// Use structured replies (refused: simple replies only).
    StructuredReply = 8,
}

impl Opt {
    /// The option for a code, if the gateway knows it.
    pub fn from_code(code: u32) -> Option<Opt> {
        Some(match code {
            1 => Opt::ExportName,
            2 => Opt::Abort,
            3 => Opt::List,
            5 => Opt::StartTls,
            6 => Opt::Info,
            7 => Opt::Go,
            8 => Opt::StructuredReply,
            _ => return None,
        })
    }
}

/// Option reply types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Rep {
    /// Done, success.
    Ack = 1,
    /// One export (answer to LIST).
    Server = 2,
    /// One piece of information (answer to INFO and GO).
    Info = 3,
    /// Unknown option.
    ErrUnsup = 0x8000_0001,
    /// Known, but refused by policy.
    ErrPolicy = 0x8000_0002,
    /// Known, but malformed.
    ErrInvalid = 0x8000_0003,
    /// No such export.
    ErrUnknown = 0x8000_0006,
    /// The server is shutting down.
    ErrShutdown = 0x8000_0007,
    /// The option is too large to process.
    ErrTooBig = 0x8000_0009,
}

/// Information types in an `NBD_REP_INFO`.
pub mod info {
    /// Size and transmission flags (always sent).
    pub const EXPORT: u16 = 0;
    /// The canonical export name.
    pub const NAME: u16 = 1;
    /// A description for humans.
    pub const DESCRIPTION: u16 = 2;
    /// Minimum, preferred and maximum block size.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Cmd {
    /// Read.
    Read = 0,
    /// Write (payload follows the header).
    Write = 1,
    /// Disconnect (no reply).
    Disc = 2,
    /// Flush.
    Flush = 3,
    /// Discard.
    Trim = 4,
    /// Write zeroes.
    WriteZeroes = 6,
}

impl Cmd {
    /// The command for a type code, if the gateway knows it.
    pub fn from_code(code: u16) -> Option<Cmd> {
        Some(match code {
            0 => Cmd::Read,
            1 => Cmd::Write,
            2 => Cmd::Disc,
            3 => Cmd::Flush,
            4 => Cmd::Trim,
            6 => Cmd::WriteZeroes,
            _ => return None,
        })
    }
}

/// NBD error values (the `error` field of a reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[repr(u32)]
pub enum Errno {
    /// Not permitted (write to a read-only export).
    #[error("EPERM")]
    Perm = 1,
    /// I/O error.
    #[error("EIO")]
    Io = 5,
    /// Out of memory.
    #[error("ENOMEM")]
    NoMem = 12,
    /// Invalid argument (unknown command or flag, misaligned, out of range, too large).
    #[error("EINVAL")]
    Inval = 22,
    /// No space (write past the end, node out of space).
    #[error("ENOSPC")]
    NoSpc = 28,
    /// Value too large.
    #[error("EOVERFLOW")]
    Overflow = 75,
    /// Not supported.
    #[error("ENOTSUP")]
    NotSup = 95,
    /// The server is shutting down.
    #[error("ESHUTDOWN")]
    Shutdown = 108,
}

impl Errno {
    /// The value on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// A client option header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    /// Must be `IHAVEOPT`.
    pub magic: u64,
    /// The option code.
    pub option: u32,
    /// Bytes of option data that follow.
    pub length: u32,
}

impl OptionHeader {
    /// Parses the 16 header bytes.
    pub fn decode(b: &[u8; OPTION_HEADER_LEN]) -> OptionHeader {
        OptionHeader {
            magic: be64(&b[0..8]),
            option: be32(&b[8..12]),
            length: be32(&b[12..16]),
        }
    }

    /// The 16 header bytes.
    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut b = [0u8; OPTION_HEADER_LEN];
        b[0..8].copy_from_slice(&self.magic.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// Appends one option reply (header and data) to `out`.
pub fn put_option_reply(out: &mut Vec<u8>, option: u32, rep: Rep, data: &[u8]) {
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(rep as u32).to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// An option reply as a client sees it (used by tests and the raw test client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionReply {
    /// The option answered.
    pub option: u32,
    /// The reply type.
    pub rep: u32,
    /// Its data.
    pub data: Vec<u8>,
}

/// Parses one option reply off the front of `b`: the reply and the bytes it took, or `None` if
/// `b` is too short or the magic is wrong.
pub fn decode_option_reply(b: &[u8]) -> Option<(OptionReply, usize)> {
    if b.len() < 20 || be64(&b[0..8]) != OPT_REPLY_MAGIC {
        return None;
    }
    let len = be32(&b[16..20]) as usize;
    let data = b.get(20..20usize.checked_add(len)?)?.to_vec();
    Some((
        OptionReply {
            option: be32(&b[8..12]),
            rep: be32(&b[12..16]),
            data,
        },
        20 + len,
    ))
}

/// `NBD_REP_SERVER` data: the export name and a description.
pub fn rep_server(name: &str, description: &str) -> Vec<u8> {
    let mut d = Vec::with_capacity(4 + name.len() + description.len());
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(description.as_bytes());
    d
}

/// `NBD_INFO_EXPORT` data: size and transmission flags.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut d = Vec::with_capacity(12);
    d.extend_from_slice(&info::EXPORT.to_be_bytes());
    d.extend_from_slice(&size.to_be_bytes());
    d.extend_from_slice(&flags.to_be_bytes());
    d
}

/// `NBD_INFO_BLOCK_SIZE` data.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut d = Vec::with_capacity(14);
    d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    d.extend_from_slice(&min.to_be_bytes());
    d.extend_from_slice(&preferred.to_be_bytes());
    d.extend_from_slice(&max.to_be_bytes());
    d
}

/// `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION` data.
pub fn info_string(kind: u16, s: &str) -> Vec<u8> {
    let mut d = Vec::with_capacity(2 + s.len());
    d.extend_from_slice(&kind.to_be_bytes());
    d.extend_from_slice(s.as_bytes());
    d
}

/// The answer to `NBD_OPT_EXPORT_NAME`: size, flags and (unless NO_ZEROES) 124 zero bytes.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut d = Vec::with_capacity(10 + EXPORT_NAME_PADDING);
    d.extend_from_slice(&size.to_be_bytes());
    d.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        d.resize(10 + EXPORT_NAME_PADDING, 0);
    }
    d
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`: an export name and the information requested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoRequest {
    /// The export name (empty: the default export).
    pub name: String,
    /// The `NBD_INFO_*` types asked for.
    pub requests: Vec<u16>,
}

/// Why option data could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionDataError {
    /// The data is shorter than its own lengths say, or has bytes left over.
    #[error("option data of {len} bytes is malformed: {why}")]
    Malformed {
        /// Length of the data.
        len: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// The name is not UTF-8 or longer than 4096 bytes.
    #[error("export name is not a valid string ({len} bytes)")]
    BadName {
        /// Its length.
        len: usize,
    },
}

/// Parses `NBD_OPT_INFO` / `NBD_OPT_GO` data.
pub fn decode_info_request(d: &[u8]) -> Result<InfoRequest, OptionDataError> {
    let bad = |why| OptionDataError::Malformed { len: d.len(), why };
    if d.len() < 6 {
        return Err(bad("shorter than 6 bytes"));
    }
    let name_len = be32(&d[0..4]) as usize;
    if name_len > d.len() - 6 {
        return Err(bad("name longer than the data"));
    }
    let name = decode_name(&d[4..4 + name_len])?;
    let rest = &d[4 + name_len..];
    let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    let list = &rest[2..];
    if list.len() != 2 * n {
        return Err(bad("information request count does not match the data"));
    }
    let requests = list
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Ok(InfoRequest { name, requests })
}

/// Parses an export name (the whole data of `NBD_OPT_EXPORT_NAME`).
pub fn decode_name(d: &[u8]) -> Result<String, OptionDataError> {
    if d.len() > MAX_STRING || d.contains(&0) {
        return Err(OptionDataError::BadName { len: d.len() });
    }
    String::from_utf8(d.to_vec()).map_err(|_| OptionDataError::BadName { len: d.len() })
}

/// `NBD_OPT_INFO` / `NBD_OPT_GO` data for `req` (the client side; for tests).
pub fn encode_info_request(req: &InfoRequest) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(req.name.len() as u32).to_be_bytes());
    d.extend_from_slice(req.name.as_bytes());
    d.extend_from_slice(&(req.requests.len() as u16).to_be_bytes());
    for r in &req.requests {
        d.extend_from_slice(&r.to_be_bytes());
    }
    d
}

/// A transmission request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Must be `REQUEST_MAGIC`.
    pub magic: u32,
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub kind: u16,
    /// The client's handle, echoed in the reply.
    pub handle: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

impl Request {
    /// Parses the 28 header bytes.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Request {
        Request {
            magic: be32(&b[0..4]),
            flags: u16::from_be_bytes([b[4], b[5]]),
            kind: u16::from_be_bytes([b[6], b[7]]),
            handle: be64(&b[8..16]),
            offset: be64(&b[16..24]),
            length: be32(&b[24..28]),
        }
    }

    /// The 28 header bytes.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&self.magic.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A simple reply header: magic, error (0 for success), handle.
pub fn simple_reply(handle: u64, error: u32) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b
}

/// Parses a simple reply header: `(error, handle)`, or `None` if the magic is wrong.
pub fn decode_simple_reply(b: &[u8; SIMPLE_REPLY_LEN]) -> Option<(u32, u64)> {
    (be32(&b[0..4]) == SIMPLE_REPLY_MAGIC).then(|| (be32(&b[4..8]), be64(&b[8..16])))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn greeting_bytes() {
        let g = greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(u16::from_be_bytes([g[16], g[17]]), 0b11);
    }

    #[test]
    fn option_reply_layout() {
        let mut out = Vec::new();
        put_option_reply(&mut out, 7, Rep::ErrUnsup, b"no");
        assert_eq!(out.len(), 22);
        assert_eq!(&out[..8], &[0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9]);
        assert_eq!(&out[12..16], &[0x80, 0, 0, 1]);
        let (r, used) = decode_option_reply(&out).unwrap();
        assert_eq!(used, 22);
        assert_eq!(
            r,
            OptionReply {
                option: 7,
                rep: 0x8000_0001,
                data: b"no".to_vec()
            }
        );
    }

    #[test]
    fn info_payloads() {
        assert_eq!(info_export(1 << 30, 0x10d).len(), 12);
        let b = info_block_size(512, 4096, 32 << 20);
        assert_eq!(b.len(), 14);
        assert_eq!(&b[..2], &[0, 3]);
        assert_eq!(&b[10..], &(32u32 << 20).to_be_bytes());
        assert_eq!(export_name_reply(9, 1, false).len(), 134);
        assert_eq!(export_name_reply(9, 1, true).len(), 10);
    }

    #[test]
    fn info_request_parse() {
        let req = InfoRequest {
            name: "vol".into(),
            requests: vec![info::BLOCK_SIZE, info::NAME],
        };
        let d = encode_info_request(&req);
        assert_eq!(decode_info_request(&d).unwrap(), req);
        // Name length pointing past the data.
        let mut bad = d.clone();
        bad[3] = 200;
        assert!(decode_info_request(&bad).is_err());
        // Count that does not match.
        let mut bad = d.clone();
        bad.push(0);
        assert!(decode_info_request(&bad).is_err());
        assert!(decode_info_request(&[0, 0, 0]).is_err());
        // Empty name, no requests: the default export.
        assert_eq!(
            decode_info_request(&[0, 0, 0, 0, 0, 0]).unwrap(),
            InfoRequest {
                name: String::new(),
                requests: vec![]
            }
        );
        assert!(decode_name(&[b'a', 0]).is_err());
        assert!(decode_name(&[0xff]).is_err());
    }

    #[test]
    fn request_and_reply_layout() {
        let r = Request {
            magic: REQUEST_MAGIC,
            flags: CMD_FLAG_FUA,
            kind: Cmd::Write as u16,
            handle: 0x0102_0304_0506_0708,
            offset: 4096,
            length: 512,
        };
        let b = r.encode();
        assert_eq!(&b[..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(Request::decode(&b), r);
        let s = simple_reply(42, Errno::Inval.code());
        assert_eq!(&s[..4], &[0x67, 0x44, 0x66, 0x98]);
        assert_eq!(decode_simple_reply(&s), Some((22, 42)));
        assert_eq!(Cmd::from_code(5), None);
        assert_eq!(Cmd::from_code(6), Some(Cmd::WriteZeroes));
        assert_eq!(Opt::from_code(4), None);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_info_request(&bytes);
            let _ = decode_name(&bytes);
            let _ = decode_option_reply(&bytes);
            if bytes.len() >= REQUEST_LEN {
                let h: [u8; REQUEST_LEN] = bytes[..REQUEST_LEN].try_into().unwrap();
                let r = Request::decode(&h);
                prop_assert_eq!(r.encode(), h);
                let _ = Cmd::from_code(r.kind);
            }
            if bytes.len() >= OPTION_HEADER_LEN {
                let h: [u8; OPTION_HEADER_LEN] = bytes[..OPTION_HEADER_LEN].try_into().unwrap();
                prop_assert_eq!(OptionHeader::decode(&h).encode(), h);
            }
        }

        #[test]
        fn info_request_roundtrip(name in "[a-z0-9-]{0,64}", reqs in proptest::collection::vec(any::<u16>(), 0..8)) {
            let req = InfoRequest { name, requests: reqs };
            prop_assert_eq!(decode_info_request(&encode_info_request(&req)).unwrap(), req);
        }
    }
}
