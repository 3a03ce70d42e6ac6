//! Test harness: the node process from dasmesh-testkit, and the raw protocol over a blocking
//! socket.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use dasmesh_wire::{
    DeviceId, Event, Framer, Hello, HelloReply, Op, ReplyHeader, RequestHeader, Tag, Token,
    HELLO_REPLY_LEN, PROTOCOL_VERSION, REPLY_HEADER_LEN,
};

#[allow(unused_imports)]
pub use dasmesh_testkit::Node;

/// A runtime of two worker threads, for tests that drive the node with the async client.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A raw protocol connection over a blocking socket.
pub struct Raw {
    pub s: TcpStream,
}

impl Raw {
    /// Connects and sends a hello with this token (binary), returning the node's answer.
    pub fn hello(addr: &str, device: u32, token: &[u8]) -> (Raw, HelloReply) {
        Self::hello_versions(addr, device, token, 1, PROTOCOL_VERSION)
    }

    pub fn hello_versions(
        addr: &str,
        device: u32,
        token: &[u8],
        min: u16,
        max: u16,
    ) -> (Raw, HelloReply) {
        let mut raw = Raw::connect(addr);
        let h = Hello {
            min_version: min,
            max_version: max,
            device_id: DeviceId(device),
            token_len: token.len() as u16,
            flags: 0,
        };
        raw.s.write_all(&h.encode()).unwrap();
        raw.s.write_all(token).unwrap();
        let mut b = [0u8; HELLO_REPLY_LEN];
        raw.s.read_exact(&mut b).unwrap();
        (raw, HelloReply::decode(&b).unwrap())
    }

    pub fn connect(addr: &str) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Raw { s }
    }

    /// A connection whose handshake must succeed.
    pub fn open(addr: &str, device: u32, token: &Token) -> Raw {
        let (raw, r) = Raw::hello(addr, device, token.as_bytes());
        assert_eq!(
            r.status_enum(),
            dasmesh_wire::Status::Ok,
            "handshake: {r:?}"
        );
        raw
    }

    pub fn send(&mut self, h: &RequestHeader, payload: &[u8]) {
        let mut v = h.encode().to_vec();
        v.extend_from_slice(payload);
        self.s.write_all(&v).unwrap();
    }

    /// Reads one reply and its payload.
    pub fn recv(&mut self) -> (ReplyHeader, Vec<u8>) {
        self.try_recv().unwrap()
    }

    /// Reads one reply and its payload through the wire crate's framer, reading no byte past
    /// it (tests also read the socket directly); an undecodable header is `InvalidData`.
    pub fn try_recv(&mut self) -> std::io::Result<(ReplyHeader, Vec<u8>)> {
        let mut f = Framer::<ReplyHeader>::new();
        let mut b = [0u8; REPLY_HEADER_LEN];
        self.s.read_exact(&mut b)?;
        let h = match f.next(&b) {
            Ok((_, Some(Event::Header(h)))) => h,
            other => {
                let e = format!("not a reply header: {other:?}");
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            }
        };
        let mut p = vec![0u8; f.payload_remaining() as usize];
        self.s.read_exact(&mut p)?;
        f.skip_payload(p.len() as u64);
        Ok((h, p))
    }

    /// Whether the node has closed the connection (reads EOF or a reset).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

/// A request header without flags.
pub fn req(op: Op, tag: u64, offset: u64, length: u64) -> RequestHeader {
    RequestHeader::new(op, 0, Tag(tag), offset, length)
}

/// `len` pseudo-random bytes from `seed` (xorshift), different for every seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
