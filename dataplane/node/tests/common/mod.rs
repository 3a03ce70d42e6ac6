//! Test harness: starts the real `dasmesh-node` binary on 127.0.0.1 with a fresh key and temp
//! dir, mints tokens, and speaks the raw protocol over a blocking socket.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dasmesh_wire::{
    Claim, DeviceId, Epoch, Hello, HelloReply, NodeId, ReplyHeader, RequestHeader, Rights,
    SigningKey, Token, VolumeId, HELLO_REPLY_LEN, PROTOCOL_VERSION, REPLY_HEADER_LEN,
};

/// A running node; killed on drop.
pub struct Node {
    child: Option<Child>,
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub key: SigningKey,
    args: Vec<String>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

impl Node {
    /// Starts a node with these `--backend` specs (`{dir}` is replaced by the temp dir) and
    /// extra flags.
    pub fn start(backends: &[&str], extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let pk = dir.path().join("public.key");
        std::fs::write(
            &pk,
            dasmesh_wire::key_to_text(key.verifying_key().as_bytes()),
        )
        .unwrap();
        let mut args = vec![
            "--listen".to_string(),
            "127.0.0.1:0".to_string(),
            "--trust-key".to_string(),
            pk.display().to_string(),
            "--no-pin".to_string(),
        ];
        for b in backends {
            args.push("--backend".into());
            args.push(b.replace("{dir}", &dir.path().display().to_string()));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut n = Node {
            child: None,
            addr: String::new(),
            dir,
            key,
            args,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dasmesh-node"))
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dasmesh-node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut r = BufReader::new(stdout);
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the node never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("node did not print its address");
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        self.addr = addr;
        self.child = Some(child);
    }

    /// A token for `device` over `[start, end)`.
    pub fn token(&self, device: u32, start: u64, end: u64, rights: Rights, epoch: u64) -> Token {
        self.token_with(device, start, end, rights, epoch, 0, &self.key, 3_600_000)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn token_with(
        &self,
        device: u32,
        start: u64,
        end: u64,
        rights: Rights,
        epoch: u64,
        node: u64,
        key: &SigningKey,
        ttl_ms: i64,
    ) -> Token {
        let now = now_ms();
        Claim {
            node_id: NodeId(node),
            volume_id: VolumeId(0),
            device_id: DeviceId(device),
            range_offset: start,
            range_length: end - start,
            rights,
            epoch: Epoch(epoch),
            issued_at_ms: now,
            expires_at_ms: (now as i64 + ttl_ms) as u64,
            nonce: rand::random(),
        }
        .sign(key)
    }

    /// Sends `signal` (TERM, KILL) via kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Waits for exit (panics after `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                self.child = None;
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "node did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait(Duration::from_secs(30))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.signal("KILL");
        self.wait(Duration::from_secs(10));
    }

    /// Starts the node again with the same flags (a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the node first");
        self.args.retain(|_| true);
        self.spawn();
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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
        let mut b = [0u8; REPLY_HEADER_LEN];
        self.s.read_exact(&mut b).unwrap();
        let h = ReplyHeader::decode(&b).unwrap();
        let mut p = vec![0u8; h.payload_len as usize];
        self.s.read_exact(&mut p).unwrap();
        (h, p)
    }

    /// Whether the node has closed the connection (reads EOF or a reset).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}
