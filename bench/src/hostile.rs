//! `--hostile N`: misbehaving connections held open against a node target while it is measured
//! a second time, to see what they cost a well-behaved client (docs/node.md, "Budgets and
//! timeouts"). Four kinds in equal numbers, each kept at its count by a thread that replaces
//! the ones the node closes (its timeouts close the first two kinds):
//!
//! - a hello cut short, then silence (the handshake timeout);
//! - a 1 MiB WRITE header and none of its payload;
//! - a 256 KiB WRITE with 1,000 bytes of its payload, then silence;
//! - 16 READs of 1 MiB whose replies are never read.

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dasmesh_wire::{Hello, Op, RequestHeader, Tag, Token, PROTOCOL_VERSION};

/// The misbehaving connections and the thread that keeps them open.
pub struct Hostile {
    stop: Arc<AtomicBool>,
    reopened: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    HalfHello,
    HeaderOnly,
    PartialPayload,
    UnreadReplies,
}

const KINDS: [Kind; 4] = [
    Kind::HalfHello,
    Kind::HeaderOnly,
    Kind::PartialPayload,
    Kind::UnreadReplies,
];

impl Hostile {
    /// Opens `n` connections to `addr` (the token's device) and keeps them open until dropped.
    pub fn open(addr: &str, token: &Token, n: usize) -> anyhow::Result<Self> {
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            let kind = KINDS[i % KINDS.len()];
            conns.push((kind, connect(addr, token, kind)?));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let reopened = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, reopened) = (Arc::clone(&stop), Arc::clone(&reopened));
            let (addr, token) = (addr.to_string(), *token);
            std::thread::spawn(move || keep_open(conns, &addr, &token, &stop, &reopened))
        };
        Ok(Self {
            stop,
            reopened,
            thread: Some(thread),
        })
    }

    /// How many the node closed and were opened again so far.
    pub fn reopened(&self) -> u64 {
        self.reopened.load(Ordering::Relaxed)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn keep_open(
    mut conns: Vec<(Kind, TcpStream)>,
    addr: &str,
    token: &Token,
    stop: &AtomicBool,
    reopened: &AtomicU64,
) {
    let mut buf = [0u8; 1];
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        for (kind, s) in conns.iter_mut() {
            let closed = match s.peek(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != ErrorKind::WouldBlock,
            };
            if closed {
                if let Ok(fresh) = connect(addr, token, *kind) {
                    *s = fresh;
                    reopened.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn connect(addr: &str, token: &Token, kind: Kind) -> anyhow::Result<TcpStream> {
    let s = match kind {
        Kind::HalfHello => {
            let mut s = TcpStream::connect(addr)?;
            s.write_all(&hello(token)[..16])?;
            s
        }
        _ => {
            let (s, info) = crate::node::connect(addr, token)?;
            let (start, len) = (info.lent_offset, info.lent_length);
            let mut s = s;
            let big = (1u64 << 20).min(len);
            let frames: Vec<u8> = match kind {
                Kind::HeaderOnly => header(Op::Write, start, big),
                Kind::PartialPayload => {
                    let mut v = header(Op::Write, start, (256u64 << 10).min(len));
                    v.extend_from_slice(&[0u8; 1000]);
                    v
                }
                _ => (0..16).flat_map(|_| header(Op::Read, start, big)).collect(),
            };
            s.write_all(&frames)?;
            s
        }
    };
    // Nothing the node sends is read: a closed connection shows as EOF in `peek`.
    s.set_nonblocking(true)?;
    Ok(s)
}

fn hello(token: &Token) -> Vec<u8> {
    let device = token
        .claim_unverified()
        .map(|c| c.device_id)
        .unwrap_or_default();
    let h = Hello {
        min_version: 1,
        max_version: PROTOCOL_VERSION,
        device_id: device,
        token_len: token.as_bytes().len() as u16,
        flags: 0,
    };
    let mut v = h.encode().to_vec();
    v.extend_from_slice(token.as_bytes());
    v
}

fn header(op: Op, offset: u64, len: u64) -> Vec<u8> {
    RequestHeader::new(op, 0, Tag(1), offset, len)
        .encode()
        .to_vec()
}
