//! Test support shared by the workspace's integration tests: start the real `dasmesh-node`
//! binary on 127.0.0.1 with a fresh key pair and temp dir, mint tokens for it, signal it, restart
//! it, and kill it when the test ends (also when it panics).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod cluster;
pub mod etcd;
pub mod prometheus;

pub use cluster::{layout, node_has_faults, Cluster};

use dasmesh_wire::{Claim, DeviceId, Epoch, NodeId, Rights, SigningKey, Token, VolumeId};

/// Path of a workspace binary next to the running test (`cargo build --workspace --bins` first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Tests run from target/<profile>/deps; binaries live in target/<profile>.
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A running node; killed on drop.
pub struct Node {
    child: Option<Child>,
    /// The address it listens on.
    pub addr: String,
    /// Its temp dir: `keys/signing.key` and `keys/public.key` (the `dasmesh keygen` layout) and
    /// any file backends named with `{dir}`.
    pub dir: tempfile::TempDir,
    /// The key its tokens are signed with.
    pub key: SigningKey,
    args: Vec<String>,
}

impl Node {
    /// Starts a node with these `--backend` specs and extra flags (`{dir}` becomes the temp dir in
    /// both).
    pub fn start(backends: &[&str], extra: &[&str]) -> Node {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("temp dir");
        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).expect("keys dir");
        std::fs::write(
            keys.join("signing.key"),
            dasmesh_wire::key_to_text(&key.to_bytes()),
        )
        .expect("signing key");
        let pk = keys.join("public.key");
        std::fs::write(
            &pk,
            dasmesh_wire::key_to_text(key.verifying_key().as_bytes()),
        )
        .expect("public key");
        let mut args: Vec<String> = ["--listen", "127.0.0.1:0", "--no-pin", "--trust-key"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(pk.display().to_string());
        for b in backends {
            args.push("--backend".into());
            args.push(b.replace("{dir}", &dir.path().display().to_string()));
        }
        args.extend(
            extra
                .iter()
                .map(|s| s.replace("{dir}", &dir.path().display().to_string())),
        );
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
        let mut child = Command::new(bin("dasmesh-node"))
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dasmesh-node");
        let stdout = child.stdout.take().expect("stdout");
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
        self.addr = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        self.child = Some(child);
    }

    /// The key directory, as `dasmesh token mint --key` expects it.
    pub fn key_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// A token for any node, `device`, bytes `[start, end)`, valid for an hour.
    pub fn token(&self, device: u32, start: u64, end: u64, rights: Rights, epoch: u64) -> Token {
        self.token_with(device, start, end, rights, epoch, 0, &self.key, 3_600_000)
    }

    /// A token with every field chosen (a negative `ttl_ms` gives an expired token).
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
            epoch: Epoch(epoch),
            expires_at_ms: (now as i64 + ttl_ms) as u64,
            ..claim(device, start, end, rights, Default::default())
        }
        .sign(key)
    }

    /// A token for any node, `device`, bytes `[start, end)`, valid for an hour, of `volume` (0:
    /// none, as minted by hand), under service `terms` (signed as is: the node judges them).
    pub fn token_terms(
        &self,
        device: u32,
        (start, end): (u64, u64),
        rights: Rights,
        volume: u64,
        terms: dasmesh_wire::Terms,
    ) -> Token {
        Claim {
            volume_id: VolumeId(volume),
            ..claim(device, start, end, rights, terms)
        }
        .sign(&self.key)
    }

    /// Sends `signal` (TERM, KILL, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Waits for the node to exit (panics after `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("node running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
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

    /// SIGTERM, then wait for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait(Duration::from_secs(30))
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        self.signal("KILL");
        self.wait(Duration::from_secs(10));
    }

    /// Starts the node again with the same flags (on a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the node first");
        self.spawn();
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node running").id()
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

/// Any workspace binary that prints `listening ADDR` as its first line; killed on drop.
pub struct Process {
    /// The child.
    pub child: Child,
    /// The address it printed.
    pub addr: String,
    name: String,
    args: Vec<String>,
}

/// A free port on 127.0.0.1 (`127.0.0.1:PORT`), for a process that must come back on the same
/// address after a restart.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").to_string()
}

impl Process {
    /// Starts `name` (a workspace binary) with `args` and waits for its `listening` line.
    pub fn spawn(name: &str, args: &[String]) -> Process {
        // DASMESH_TEST_LOG=info (or any RUST_LOG filter) shows the processes' logs.
        let log = std::env::var("DASMESH_TEST_LOG").unwrap_or_else(|_| "error".into());
        let mut child = Command::new(bin(name))
            .args(args)
            .env("RUST_LOG", log)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"))
            .to_string();
        Process {
            child,
            addr,
            name: name.to_string(),
            args: args.to_vec(),
        }
    }

    /// Starts the same binary with the same arguments again (after it exited or was killed).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let again = Process::spawn(&self.name, &self.args);
        // The old child was reaped above: dropping it signals nothing.
        drop(std::mem::replace(self, again));
    }

    /// A controller with its state in `dir`, heartbeats every 200 ms, without identities
    /// (`--insecure-no-auth`; the tests of identities start theirs with certificates).
    pub fn controller(dir: &Path, listen: &str) -> Process {
        Process::controller_with(dir, listen, &[])
    }

    /// [`Process::controller`] with more flags (e.g. `--replace-after`).
    pub fn controller_with(dir: &Path, listen: &str, extra: &[&str]) -> Process {
        let mut args: Vec<String> = [
            "--listen",
            listen,
            "--data-dir",
            &dir.display().to_string(),
            "--heartbeat",
            "200ms",
            "--insecure-no-auth",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        Process::spawn("dasmesh-controller", &args)
    }

    /// A node registering with the controller at `ctl`, a 256 MiB file backend and a 1 MiB
    /// owner reservation, its state in `dir/name`, unpinned and polling by interrupt (it shares
    /// the cores with other nodes and clients).
    pub fn node(dir: &Path, ctl: &str, name: &str) -> Process {
        Process::node_at(dir, ctl, name, "127.0.0.1:0")
    }

    /// [`Process::node`] listening on `listen` (e.g. from [`free_addr`], to restart on it).
    pub fn node_at(dir: &Path, ctl: &str, name: &str, listen: &str) -> Process {
        Process::node_with(dir, ctl, name, listen, &[])
    }

    /// [`Process::node_at`] with more flags (e.g. `--fault-file`).
    pub fn node_with(dir: &Path, ctl: &str, name: &str, listen: &str, extra: &[&str]) -> Process {
        let mut args = vec![
            "--listen".to_string(),
            listen.into(),
            "--no-pin".into(),
            // Cluster tests run several nodes and clients on a few cores: no spinning.
            "--poll".into(),
            "interrupt".into(),
            "--controller".into(),
            format!("http://{ctl}"),
            "--state-dir".into(),
            dir.join(name).display().to_string(),
            "--reserve".into(),
            "1M".into(),
            "--backend".into(),
            format!("file:{}:256M", dir.join(format!("{name}.img")).display()),
            // No probe at each start (it takes half a second): figures as given.
            "--device-iops".into(),
            "100000".into(),
            "--device-mib-s".into(),
            "2000".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Process::spawn("dasmesh-node", &args)
    }

    /// Sends `sig` with kill(1) and returns at once (`STOP`, `CONT`).
    pub fn send(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Sends `sig` with kill(1) and waits up to 10 s for the exit.
    pub fn signal(&mut self, sig: &str) -> ExitStatus {
        self.send(sig);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit after SIG{sig}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A claim for any node, `device`, bytes `[start, end)`, epoch 1, valid for an hour, with a
/// random nonce.
fn claim(device: u32, start: u64, end: u64, rights: Rights, terms: dasmesh_wire::Terms) -> Claim {
    let now = now_ms();
    Claim {
        terms,
        node_id: NodeId(0),
        volume_id: VolumeId(0),
        device_id: DeviceId(device),
        range_offset: start,
        range_length: end - start,
        rights,
        epoch: Epoch(1),
        issued_at_ms: now,
        expires_at_ms: now + 3_600_000,
        nonce: rand::random(),
    }
}

/// A read-write token for device 0 of node 0, first MiB, signed with a fixed key: for scripted
/// fake nodes, which do not check signatures.
pub fn fake_node_token() -> Token {
    Claim {
        terms: Default::default(),
        node_id: NodeId(0),
        volume_id: VolumeId(0),
        device_id: DeviceId(0),
        range_offset: 0,
        range_length: 1 << 20,
        rights: Rights::ReadWrite,
        epoch: Epoch(1),
        issued_at_ms: 0,
        expires_at_ms: u64::MAX,
        nonce: 0,
    }
    .sign(&SigningKey::from_bytes(&[1; 32]))
}
