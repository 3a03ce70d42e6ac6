//! The `node:ADDR` target: the dasmesh protocol over one TCP connection per job, driven like a
//! fio engine (one thread, requests batched into one vectored write, replies read back to back
//! through the wire crate's framer, READ data copied straight into its slot), so that the
//! benchmark measures the node and the network, not an async runtime.

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use dasmesh_client::AlignedBuf;
use dasmesh_wire::{
    check_reply, Event, Framer, Hello, HelloReply, Op, ReplyHeader, RequestHeader, Status, Tag,
    Token, HELLO_REPLY_LEN, PROTOCOL_VERSION, REPLY_HEADER_LEN, REQUEST_HEADER_LEN,
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

/// Size of a job's receive buffer: many replies' headers (and small READs' data) per read.
const RBUF_LEN: usize = 256 << 10;

/// One job's connection and slot buffers.
pub struct NodeEngine {
    writer: SpinSocket,
    reader: SpinSocket,
    /// Received bytes; `rbuf[rstart..rend]` not yet given to the framer.
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    framer: Framer<ReplyHeader>,
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
        flags: 0,
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
                reader: SpinSocket { s, spin },
                rbuf: vec![0u8; RBUF_LEN].into_boxed_slice(),
                rstart: 0,
                rend: 0,
                framer: Framer::new(),
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

    /// Receives more bytes once the framer has taken every byte there was (so nothing moves).
    fn fill(&mut self) -> anyhow::Result<()> {
        debug_assert_eq!(self.rstart, self.rend);
        let n = self
            .reader
            .read(&mut self.rbuf)
            .context("reading replies from the node")?;
        if n == 0 {
            bail!("node closed the connection");
        }
        (self.rstart, self.rend) = (0, n);
        Ok(())
    }

    /// Reads one reply (waiting for it if need be) and its payload.
    fn read_reply(&mut self, out: &mut Vec<(usize, Result<(), String>)>) -> anyhow::Result<()> {
        let h = loop {
            let (used, ev) = self
                .framer
                .next(&self.rbuf[self.rstart..self.rend])
                .map_err(|_| anyhow::anyhow!("malformed reply from the node"))?;
            self.rstart += used;
            match ev {
                Some(Event::Header(h)) => break h,
                // Each reply's payload is taken whole below, before the next header.
                Some(Event::Payload(_)) => unreachable!("payload outside a reply"),
                None => self.fill()?,
            }
        };
        let slot = h.tag.0 as usize;
        if slot >= self.bufs.len() {
            bail!("reply for unknown tag {}", h.tag);
        }
        let op = match self.kinds[slot] {
            Kind::Read => Op::Read,
            Kind::Write => Op::Write,
        };
        check_reply(op, self.bs as u64, 0, &h).map_err(anyhow::Error::msg)?;
        // By the rule just checked, only an OK READ has a payload: its data, for its slot.
        let mut at = 0;
        while self.framer.payload_remaining() > 0 {
            let due = self.framer.payload_remaining() as usize;
            let have = self.rend - self.rstart;
            let n = if have > 0 {
                let n = have.min(due);
                self.bufs[slot][at..at + n]
                    .copy_from_slice(&self.rbuf[self.rstart..self.rstart + n]);
                self.rstart += n;
                n
            } else if due >= RBUF_LEN / 2 {
                // Large data goes straight into its slot rather than through the buffer.
                let n = self.reader.read(&mut self.bufs[slot][at..])?;
                if n == 0 {
                    bail!("node closed the connection");
                }
                n
            } else {
                self.fill()?;
                continue;
            };
            self.framer.skip_payload(n as u64);
            at += n;
        }
        self.in_flight -= 1;
        let st = h.status_enum();
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
        while self.in_flight > 0 && self.rend - self.rstart >= REPLY_HEADER_LEN {
            self.read_reply(out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The engine against a scripted fake node on 127.0.0.1: replies dribbled in pieces of a few
    //! bytes and out of order land in their slots; a reply that breaks the payload rule fails.

    use std::net::TcpListener;

    use dasmesh_wire::{Capabilities, HELLO_LEN};

    use super::*;

    const BS: usize = 4096;

    fn token() -> Token {
        dasmesh_testkit::fake_node_token()
    }

    /// A node that takes the handshake and `n` requests, then sends back what `answer` makes of
    /// them, in pieces of 1 to 7 bytes.
    fn fake(
        n: usize,
        answer: impl FnOnce(Vec<RequestHeader>) -> Vec<u8> + Send + 'static,
    ) -> (String, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            let mut hb = [0u8; HELLO_LEN];
            s.read_exact(&mut hb).unwrap();
            let hello = Hello::decode(&hb).unwrap();
            let mut tok = vec![0u8; usize::from(hello.token_len)];
            s.read_exact(&mut tok).unwrap();
            let reply = HelloReply {
                version: 1,
                status: Status::Ok.code(),
                device_id: hello.device_id,
                block_size: 4096,
                physical_block_size: 4096,
                max_io_size: 1 << 20,
                max_inflight: 64,
                device_size: 1 << 20,
                lent_offset: 0,
                lent_length: 1 << 20,
                capabilities: Capabilities(Capabilities::ALL),
                max_search_hits: 100,
            };
            s.write_all(&reply.encode()).unwrap();
            let mut reqs = Vec::new();
            for _ in 0..n {
                let mut b = [0u8; REQUEST_HEADER_LEN];
                s.read_exact(&mut b).unwrap();
                let h = RequestHeader::decode(&b).unwrap();
                std::io::copy(&mut (&mut s).take(h.payload_len()), &mut std::io::sink()).unwrap();
                reqs.push(h);
            }
            let out = answer(reqs);
            for (i, piece) in out.chunks(7).enumerate() {
                let (a, b) = piece.split_at(piece.len().min(1 + i % 7));
                // A client that fails mid-stream closes the socket: later pieces may not land.
                if s.write_all(a).is_err() || s.write_all(b).is_err() {
                    return;
                }
            }
        });
        (addr, t)
    }

    fn reply(tag: Tag, status: Status, payload: &[u8]) -> Vec<u8> {
        let h = ReplyHeader {
            status: status.code(),
            flags: 0,
            tag,
            payload_len: payload.len() as u32,
        };
        [&h.encode()[..], payload].concat()
    }

    #[test]
    fn replies_in_small_pieces_and_out_of_order_reach_their_slots() {
        let (addr, t) = fake(4, |reqs| {
            reqs.iter()
                .rev()
                .flat_map(|h| match h.known_op() {
                    Some(Op::Read) => {
                        reply(h.tag, Status::Ok, &vec![(h.offset / 4096) as u8 + 1; BS])
                    }
                    _ => reply(h.tag, Status::Ok, &[]),
                })
                .collect()
        });
        let (mut e, _) = NodeEngine::open(&addr, &token(), 4, BS, Duration::ZERO).unwrap();
        e.queue(0, Kind::Read, 0).unwrap();
        e.buf(1).fill(9);
        e.queue(1, Kind::Write, 4096).unwrap();
        e.queue(2, Kind::Read, 8192).unwrap();
        e.queue(3, Kind::Read, 3 * 4096).unwrap();
        let mut out = Vec::new();
        while out.len() < 4 {
            e.complete(&mut out).unwrap();
        }
        out.sort_by_key(|(slot, _)| *slot);
        let slots: Vec<usize> = out.iter().map(|(s, _)| *s).collect();
        assert_eq!(slots, [0, 1, 2, 3]);
        assert!(out.iter().all(|(_, r)| r.is_ok()), "{out:?}");
        // Each READ's data names its block: slot 0 block 0, slot 2 block 2, slot 3 block 3.
        for slot in [0, 2, 3] {
            assert!(
                e.buf(slot).iter().all(|b| *b == slot as u8 + 1),
                "slot {slot}"
            );
        }
        t.join().unwrap();
    }

    #[test]
    fn a_reply_that_breaks_the_payload_rule_is_an_error() {
        // An OK WRITE carries nothing; this one carries 8 bytes.
        let (addr, t) = fake(1, |reqs| reply(reqs[0].tag, Status::Ok, &[0; 8]));
        let (mut e, _) = NodeEngine::open(&addr, &token(), 1, BS, Duration::ZERO).unwrap();
        e.queue(0, Kind::Write, 0).unwrap();
        let mut out = Vec::new();
        let err = e.complete(&mut out).unwrap_err().to_string();
        assert!(err.contains("tag 0") && err.contains("8 bytes"), "{err}");
        t.join().unwrap();
        // A READ answered with less than it asked for.
        let (addr, t) = fake(1, |reqs| reply(reqs[0].tag, Status::Ok, &[0; 512]));
        let (mut e, _) = NodeEngine::open(&addr, &token(), 1, BS, Duration::ZERO).unwrap();
        e.queue(0, Kind::Read, 0).unwrap();
        let err = e.complete(&mut out).unwrap_err().to_string();
        assert!(err.contains("512 bytes") && err.contains("4096"), "{err}");
        t.join().unwrap();
        assert!(out.is_empty());
    }
}
