//! The `node:ADDR` target: the dasmesh protocol over one TCP connection per job, driven like a
//! fio engine (one thread, requests batched into one vectored write, replies read back to back),
//! so that the benchmark measures the node and the network, not an async runtime.

use std::io::{BufReader, ErrorKind, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use dasmesh_client::AlignedBuf;
use dasmesh_wire::{
    Hello, HelloReply, Op, ReplyHeader, RequestHeader, Status, Tag, Token, HELLO_REPLY_LEN,
    PROTOCOL_VERSION, REPLY_HEADER_LEN, REQUEST_HEADER_LEN,
};

use crate::job::Engine;
use crate::workload::Kind;

/// A non-blocking socket that waits for data by spinning for a while, then by poll(2): at low
/// queue depths a blocked thread's wake-up costs more than the round trip it waits for.
struct SpinSocket {
    s: TcpStream,
    spin: Duration,
}

impl SpinSocket {
    fn io<T>(
        &mut self,
        write: bool,
        mut f: impl FnMut(&mut TcpStream) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let mut spin_until = None;
        loop {
            match f(&mut self.s) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let until = *spin_until.get_or_insert_with(|| Instant::now() + self.spin);
                    if Instant::now() < until {
                        std::hint::spin_loop();
                    } else {
                        crate::sys::wait_ready(self.s.as_raw_fd(), write)?;
                    }
                }
                r => return r,
            }
        }
    }
}

impl Read for SpinSocket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.io(false, |s| s.read(buf))
    }
}

/// One job's connection and slot buffers.
pub struct NodeEngine {
    writer: SpinSocket,
    reader: BufReader<SpinSocket>,
    bufs: Vec<AlignedBuf>,
    bs: usize,
    kinds: Vec<Kind>,
    queued: Vec<(usize, [u8; REQUEST_HEADER_LEN])>,
    in_flight: usize,
}

/// Connects to `addr` with `token` and returns the connection and what the node answered.
pub fn connect(addr: &str, token: &Token) -> anyhow::Result<(TcpStream, HelloReply)> {
    let device = token.claim_unverified()?.device_id;
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    let hello = Hello {
        min_version: 1,
        max_version: PROTOCOL_VERSION,
        device_id: device,
        token_len: token.as_bytes().len() as u16,
    };
    let mut msg = hello.encode().to_vec();
    msg.extend_from_slice(token.as_bytes());
    s.write_all(&msg)?;
    let mut b = [0u8; HELLO_REPLY_LEN];
    s.read_exact(&mut b)
        .context("reading the handshake reply")?;
    let r = HelloReply::decode(&b).map_err(|_| anyhow::anyhow!("not a dasmesh node at {addr}"))?;
    if r.status_enum() != Status::Ok {
        bail!(
            "node {addr} refused device {device}: {}",
            r.status_enum().name()
        );
    }
    Ok((s, r))
}

impl NodeEngine {
    /// Connects one job.
    pub fn open(
        addr: &str,
        token: &Token,
        depth: usize,
        bs: usize,
        spin: Duration,
    ) -> anyhow::Result<(Self, HelloReply)> {
        let (s, info) = connect(addr, token)?;
        s.set_nonblocking(true)?;
        if depth > info.max_inflight as usize {
            bail!(
                "iodepth {depth} is above the node's max_inflight {}",
                info.max_inflight
            );
        }
        if bs as u64 > u64::from(info.max_io_size) {
            bail!(
                "bs {bs} is above the node's max_io_size {}",
                info.max_io_size
            );
        }
        Ok((
            Self {
                writer: SpinSocket {
                    s: s.try_clone()?,
                    spin,
                },
                reader: BufReader::with_capacity(256 << 10, SpinSocket { s, spin }),
                bufs: (0..depth).map(|_| AlignedBuf::new(bs)).collect(),
                bs,
                kinds: vec![Kind::Read; depth],
                queued: Vec::with_capacity(depth),
                in_flight: 0,
            },
            info,
        ))
    }

    fn send_queued(&mut self) -> anyhow::Result<()> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let mut slices = Vec::with_capacity(self.queued.len() * 2);
        for (slot, h) in &self.queued {
            slices.push(IoSlice::new(h));
            if self.kinds[*slot] == Kind::Write {
                slices.push(IoSlice::new(&self.bufs[*slot]));
            }
        }
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = self.writer.io(true, |s| s.write_vectored(rest))?;
            if n == 0 {
                bail!("node closed the connection");
            }
            IoSlice::advance_slices(&mut rest, n);
        }
        self.in_flight += self.queued.len();
        self.queued.clear();
        Ok(())
    }

    fn read_reply(&mut self, out: &mut Vec<(usize, Result<(), String>)>) -> anyhow::Result<()> {
        let mut hb = [0u8; REPLY_HEADER_LEN];
        self.reader
            .read_exact(&mut hb)
            .context("node closed the connection")?;
        let h = ReplyHeader::decode(&hb)
            .map_err(|_| anyhow::anyhow!("malformed reply from the node"))?;
        let slot = h.tag.0 as usize;
        if slot >= self.bufs.len() {
            bail!("reply for unknown tag {}", h.tag);
        }
        let len = h.payload_len as usize;
        let st = h.status_enum();
        if st == Status::Ok && self.kinds[slot] == Kind::Read {
            if len != self.bs {
                bail!("read reply of {len} bytes, expected {}", self.bs);
            }
            self.reader.read_exact(&mut self.bufs[slot])?;
        } else if len > 0 {
            std::io::copy(
                &mut (&mut self.reader).take(len as u64),
                &mut std::io::sink(),
            )?;
        }
        self.in_flight -= 1;
        out.push((
            slot,
            if st == Status::Ok {
                Ok(())
            } else {
                Err(st.name().to_string())
            },
        ));
        Ok(())
    }
}

impl Engine for NodeEngine {
    fn buf(&mut self, slot: usize) -> &mut [u8] {
        &mut self.bufs[slot]
    }

    fn queue(&mut self, slot: usize, kind: Kind, offset: u64) -> anyhow::Result<()> {
        let op = match kind {
            Kind::Read => Op::Read,
            Kind::Write => Op::Write,
        };
        self.kinds[slot] = kind;
        let h = RequestHeader::new(op, 0, Tag(slot as u64), offset, self.bs as u64);
        self.queued.push((slot, h.encode()));
        Ok(())
    }

    fn complete(&mut self, out: &mut Vec<(usize, Result<(), String>)>) -> anyhow::Result<()> {
        self.send_queued()?;
        if self.in_flight == 0 {
            return Ok(());
        }
        self.read_reply(out)?;
        // Take every reply whose header has already arrived, without blocking for more.
        while self.in_flight > 0 && self.reader.buffer().len() >= REPLY_HEADER_LEN {
            self.read_reply(out)?;
        }
        Ok(())
    }
}
