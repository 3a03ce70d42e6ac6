//! The real `dasmesh-node` binary serving one device, with a fresh key pair in a temp dir; killed
//! on drop. Its binary (and `dasmesh-bench`) is found next to the running executable.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use dasmesh_wire::{Claim, DeviceId, Epoch, NodeId, Rights, SigningKey, Token, VolumeId};

use crate::{Error, Result};

/// A workspace binary: beside this executable (`target/<profile>/dasmesh-hwtest`) or one level
/// up (a test runs from `target/<profile>/deps`).
pub fn find_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(Error::io("current exe"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let here = dir.join(name);
    if here.is_file() {
        return Ok(here);
    }
    let up = dir.parent().map(|d| d.join(name));
    match up {
        Some(p) if p.is_file() => Ok(p),
        _ => Err(Error::MissingBinary(here)),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A one-hour token for device 0, bytes `[start, end)`, epoch 1, signed with `key`.
fn sign(key: &SigningKey, start: u64, end: u64, rights: Rights) -> Token {
    let now = now_ms();
    Claim {
        terms: Default::default(),
        node_id: NodeId(0),
        volume_id: VolumeId(0),
        device_id: DeviceId(0),
        range_offset: start,
        range_length: end - start,
        rights,
        epoch: Epoch(1),
        issued_at_ms: now,
        expires_at_ms: now + 3_600_000,
        nonce: rand::random(),
    }
    .sign(key)
}

/// A running node serving one device as device id 0.
#[derive(Debug)]
pub struct NodeProcess {
    child: Option<Child>,
    /// The address it listens on.
    pub addr: String,
    key: SigningKey,
    dir: tempfile::TempDir,
}

impl NodeProcess {
    /// Starts a node on `dev` (`--backend device:DEV`) and waits for its address.
    pub fn start(dev: &Path) -> Result<NodeProcess> {
        let dir = tempfile::Builder::new()
            .prefix("dasmesh-hwtest-node-")
            .tempdir()
            .map_err(Error::io("node temp dir"))?;
        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let pk = dir.path().join("public.key");
        std::fs::write(
            &pk,
            dasmesh_wire::key_to_text(key.verifying_key().as_bytes()),
        )
        .map_err(Error::io("write public key"))?;
        let mut n = NodeProcess {
            child: None,
            addr: String::new(),
            key,
            dir,
        };
        n.spawn(dev)?;
        Ok(n)
    }

    fn spawn(&mut self, dev: &Path) -> Result<()> {
        let log_path = self.dir.path().join("node.log");
        let log = std::fs::File::create(&log_path).map_err(Error::io("node log"))?;
        let mut child = Command::new(find_bin("dasmesh-node")?)
            .args(["--listen", "127.0.0.1:0", "--no-pin", "--trust-key"])
            .arg(self.dir.path().join("public.key"))
            .arg("--backend")
            .arg(format!("device:{}", dev.display()))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(Error::io("spawn dasmesh-node"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the node never blocks on a full pipe.
            let _ = r.read_to_end(&mut Vec::new());
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        match line.trim().strip_prefix("listening ") {
            Some(a) => {
                self.addr = a.to_string();
                self.child = Some(child);
                Ok(())
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(3).collect();
                Err(Error::NodeStart(if tail.is_empty() {
                    format!("no address printed (first line {line:?})")
                } else {
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                }))
            }
        }
    }

    /// A token for device 0, bytes `[start, end)`, valid for an hour.
    pub fn token(&self, start: u64, end: u64, rights: Rights) -> Token {
        sign(&self.key, start, end, rights)
    }

    /// A token signed by a key the node does not trust.
    pub fn foreign_token(&self, start: u64, end: u64) -> Token {
        let other = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        sign(&other, start, end, Rights::ReadWrite)
    }

    /// SIGKILL: no shutdown, no final flush, as in a crash.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().map_err(Error::io("kill dasmesh-node"))?;
            c.wait().map_err(Error::io("reap dasmesh-node"))?;
        }
        Ok(())
    }

    /// Starts the node again (after [`NodeProcess::kill`]), on `dev`, which may be a new path.
    pub fn restart(&mut self, dev: &Path) -> Result<()> {
        self.kill()?;
        self.spawn(dev)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
