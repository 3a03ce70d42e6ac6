//! A raw NBD client for the tests: the handshake, requests and replies byte by byte, so a test
//! can misbehave in ways a real client never would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use dasmesh_nbd::proto::{self, Cmd, InfoRequest, Rep, Request};

/// A raw NBD client over TCP.
pub struct Client {
    /// The socket.
    pub s: TcpStream,
    next: u64,
}

impl Client {
    /// Connects and sends the client flags (fixed newstyle, no zeroes).
    pub fn connect(addr: &str) -> Client {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(g, proto::greeting());
        s.write_all(&3u32.to_be_bytes()).unwrap();
        Client { s, next: 1 }
    }

    pub fn option(&mut self, option: u32, data: &[u8]) {
        let h = proto::OptionHeader {
            magic: proto::IHAVEOPT,
            option,
            length: data.len() as u32,
        };
        self.s.write_all(&h.encode()).unwrap();
        self.s.write_all(data).unwrap();
    }

    pub fn option_reply(&mut self) -> proto::OptionReply {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).unwrap();
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut all = h.to_vec();
        all.resize(20 + len, 0);
        self.s.read_exact(&mut all[20..]).unwrap();
        proto::decode_option_reply(&all).expect("an option reply").0
    }

    /// NBD_OPT_GO for the default export: (size, flags, block sizes).
    pub fn go(&mut self) -> (u64, u16, [u32; 3]) {
        let d = proto::encode_info_request(&InfoRequest {
            name: String::new(),
            requests: vec![proto::info::BLOCK_SIZE],
        });
        self.option(7, &d);
        let (mut size, mut flags, mut bs) = (0, 0, [0; 3]);
        loop {
            let r = self.option_reply();
            assert_eq!(r.option, 7);
            if r.rep == Rep::Ack as u32 {
                return (size, flags, bs);
            }
            assert_eq!(r.rep, Rep::Info as u32, "GO refused: {r:?}");
            let be32 = |i: usize| u32::from_be_bytes(r.data[i..i + 4].try_into().unwrap());
            match u16::from_be_bytes([r.data[0], r.data[1]]) {
                0 => {
                    size = u64::from_be_bytes(r.data[2..10].try_into().unwrap());
                    flags = u16::from_be_bytes([r.data[10], r.data[11]]);
                }
                3 => bs = [be32(2), be32(6), be32(10)],
                _ => {}
            }
        }
    }

    pub fn send(&mut self, kind: u16, flags: u16, offset: u64, length: u32, payload: &[u8]) -> u64 {
        let handle = self.next;
        self.next += 1;
        let r = Request {
            magic: proto::REQUEST_MAGIC,
            flags,
            kind,
            handle,
            offset,
            length,
        };
        self.s.write_all(&r.encode()).unwrap();
        self.s.write_all(payload).unwrap();
        handle
    }

    /// One reply header: (error, handle).
    pub fn reply(&mut self) -> (u32, u64) {
        let mut h = [0u8; proto::SIMPLE_REPLY_LEN];
        self.s.read_exact(&mut h).unwrap();
        proto::decode_simple_reply(&h).expect("simple reply magic")
    }

    pub fn expect(&mut self, handle: u64, error: u32) {
        assert_eq!(self.reply(), (error, handle));
    }

    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        let h = self.send(Cmd::Read as u16, 0, offset, len, &[]);
        let (err, got) = self.reply();
        assert_eq!(got, h);
        if err != 0 {
            return Err(err);
        }
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d).unwrap();
        Ok(d)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        let h = self.send(Cmd::Write as u16, 0, offset, data.len() as u32, data);
        let (err, got) = self.reply();
        assert_eq!(got, h);
        err
    }

    /// Whether the server closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}
