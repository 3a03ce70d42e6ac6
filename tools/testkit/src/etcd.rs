//! A real etcd cluster on 127.0.0.1 for tests: N members of Debian's etcd (3.4) on free ports,
//! their data and logs in one temp dir, members killed, restarted, stopped and continued by the
//! test, and everything killed and removed when the cluster is dropped (also when the test panics).
//!
//! Nothing here uses etcdctl or an etcd client crate: health is one plain HTTP/1.0 request to
//! `/health`, and [`http`] is there for tests that talk to etcd's v3 JSON gateway.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// How long [`EtcdCluster::start`] and [`EtcdCluster::restart`] wait for health.
const HEALTHY_WITHIN: Duration = Duration::from_secs(20);
/// How long one `/health` request may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Whole starts tried before giving up, when a member lost the race for one of its ports.
const START_ATTEMPTS: usize = 3;
/// Log lines per member put into an error.
const LOG_TAIL_LINES: usize = 15;

/// The etcd binary: `$DASMESH_ETCD` when set (`None` if that is no file), else `/usr/bin/etcd`,
/// else `etcd` on `PATH`; `None` when there is none (`scripts/setup.sh` installs Debian's
/// `etcd-server`).
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DASMESH_ETCD") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let usr = PathBuf::from("/usr/bin/etcd");
    if usr.is_file() {
        return Some(usr);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// Whether etcd is installed; when it is not, prints why test `test` is skipped and returns false.
pub fn require_etcd(test: &str) -> bool {
    if etcd_binary().is_some() {
        return true;
    }
    eprintln!("skipping {test}: etcd not installed (scripts/setup.sh installs etcd-server)");
    false
}

/// One HTTP/1.0 request to `url` (`http://HOST:PORT`) for `path`, with `body` as JSON when it is
/// given (then the method is POST, else GET); the whole exchange must end within `timeout`.
/// Returns the status code and the body.
pub fn http(
    url: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let host = url
        .strip_prefix("http://")
        .ok_or_else(|| bad(format!("not an http:// URL: {url:?}")))?;
    let addr: SocketAddr = host
        .parse()
        .map_err(|e| bad(format!("not HOST:PORT in {url:?}: {e}")))?;
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    let request = match body {
        Some(b) => format!(
            "POST {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n"),
    };
    s.set_write_timeout(Some(timeout))?;
    s.write_all(request.as_bytes())?;
    // An HTTP/1.0 server closes the connection after its reply: read to the end, but never past
    // the deadline (a read timeout alone would restart with every byte that arrives).
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            // Linux reports a read timeout as EAGAIN.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(std::io::ErrorKind::TimedOut.into())
            }
            Err(e) => return Err(e),
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad(format!("no end of headers in {reply:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(format!("no status in {head:?}")))?;
    Ok((status, body.to_string()))
}

/// One member: its name and ports, and its process while it runs.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// A running etcd cluster on 127.0.0.1. Member `i` keeps its ports and its data dir
/// (`dir/mI.etcd`) for the cluster's life and logs to `dir/mI.log`; every member is killed and
/// the temp dir removed on drop.
pub struct EtcdCluster {
    etcd: PathBuf,
    dir: tempfile::TempDir,
    token: String,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts a new cluster of `members` members (3 is the usual) and waits until each answers
    /// `/health` with `"health":"true"`. Fails when etcd is not installed, or when the cluster
    /// is not healthy within 20 s (the members' log tails are in the error).
    pub fn start(members: usize) -> anyhow::Result<EtcdCluster> {
        anyhow::ensure!(members > 0, "an etcd cluster needs at least one member");
        let etcd = etcd_binary().ok_or_else(|| {
            anyhow!(
                "etcd not installed: no $DASMESH_ETCD, /usr/bin/etcd or etcd on PATH \
                 (scripts/setup.sh installs etcd-server)"
            )
        })?;
        let mut attempt = 1;
        loop {
            let mut cluster = EtcdCluster::spawn_all(&etcd, members)?;
            match cluster.wait_healthy(0..members) {
                Ok(()) => return Ok(cluster),
                // Ports are free when picked but can be taken before etcd binds them (tests run
                // in parallel): start the whole cluster again on new ports.
                Err(e) if attempt < START_ATTEMPTS && cluster.lost_port_race() => {
                    eprintln!("etcd: attempt {attempt} lost a port race, starting again: {e:#}");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A fresh temp dir, free ports and every member spawned with `--initial-cluster-state new`.
    fn spawn_all(etcd: &Path, members: usize) -> anyhow::Result<EtcdCluster> {
        let dir = tempfile::tempdir().context("temp dir for etcd")?;
        let ports = free_ports(2 * members)?;
        let token = format!(
            "dasmesh-test-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let mut cluster = EtcdCluster {
            etcd: etcd.to_path_buf(),
            dir,
            token,
            members: (0..members)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client_port: ports[2 * i],
                    peer_port: ports[2 * i + 1],
                    child: None,
                })
                .collect(),
        };
        for i in 0..members {
            cluster.spawn(i, "new")?;
        }
        Ok(cluster)
    }

    /// Spawns member `i` with `--initial-cluster-state state`, its output appended to its log.
    fn spawn(&mut self, i: usize, state: &str) -> anyhow::Result<()> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let log_path = self.log_path(i);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        writeln!(
            log,
            "--- dasmesh testkit: starting {} ({state}) ---",
            m.name
        )?;
        let data_dir = self.dir.path().join(format!("{}.etcd", m.name));
        let mut cmd = Command::new(&self.etcd);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // etcd reads every flag from an ETCD_* variable too; one left in the environment (say
        // ETCD_DATA_DIR) must not reach the members.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", self.etcd.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Waits until each member in `which` answers healthy; fails when one exits or after
    /// [`HEALTHY_WITHIN`], with every member's log tail.
    fn wait_healthy(&mut self, which: std::ops::Range<usize>) -> anyhow::Result<()> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        let mut pending: Vec<usize> = which.collect();
        while !pending.is_empty() {
            for &i in &pending {
                let child = self.members[i].child.as_mut().expect("member spawned");
                if let Some(status) = child.try_wait()? {
                    self.members[i].child = None;
                    bail!(
                        "etcd member {} exited with {status} before it was healthy\n{}",
                        self.members[i].name,
                        self.log_tails()
                    );
                }
            }
            pending.retain(|&i| !self.is_healthy(i));
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let names: Vec<_> = pending.iter().map(|&i| &self.members[i].name).collect();
                bail!(
                    "etcd members {names:?} not healthy within {HEALTHY_WITHIN:?}\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Whether a member exited because one of its ports was taken.
    fn lost_port_race(&self) -> bool {
        (0..self.members.len()).any(|i| {
            self.members[i].child.is_none()
                && std::fs::read_to_string(self.log_path(i))
                    .is_ok_and(|log| log.contains("address already in use"))
        })
    }

    /// How many members the cluster has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never: [`EtcdCluster::start`] refuses 0).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Each member's client URL, `http://127.0.0.1:PORT`, in member order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// The client URLs joined with commas: what `dasmesh-controller --etcd` takes.
    pub fn endpoints(&self) -> String {
        self.client_urls().join(",")
    }

    /// The temp dir that holds every member's data dir and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Member `i`'s log (its stdout and stderr, appended to on each restart).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    /// The last lines of every member's log, headed by the member's name.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for (i, m) in self.members.iter().enumerate() {
            let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            out.push_str(&format!(
                "--- {} ({}) ---\n",
                m.name,
                self.log_path(i).display()
            ));
            for l in tail {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Member `i`'s process id, while it has one.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Whether member `i`'s process is alive (a stopped one is); false after [`EtcdCluster::kill`]
    /// or when it exited by itself.
    pub fn is_running(&self, i: usize) -> bool {
        // We are its parent and have not reaped it, so its pid is still its own: an exited
        // member is a zombie ("Z"), a stopped one "T".
        self.pid(i).is_some_and(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // The state follows the command name, which is in parentheses.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state != "Z" && state != "X")
            })
        })
    }

    /// Whether member `i` answers `/health` with `"health":"true"` within a second: it runs, it
    /// has a leader, and a read through it succeeds.
    pub fn is_healthy(&self, i: usize) -> bool {
        self.members[i].child.is_some()
            && http(
                &self.members[i].client_url(),
                "/health",
                None,
                HEALTH_TIMEOUT,
            )
            .is_ok_and(|(status, body)| status == 200 && body.contains(r#""health":"true""#))
    }

    /// Whether a majority of the members are healthy.
    pub fn healthy_quorum(&self) -> bool {
        let healthy = (0..self.len()).filter(|&i| self.is_healthy(i)).count();
        healthy > self.len() / 2
    }

    /// SIGKILLs member `i` and reaps it. Panics if it is not running.
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        let mut child = m
            .child
            .take()
            .unwrap_or_else(|| panic!("etcd member {} is not running", m.name));
        child
            .kill()
            .unwrap_or_else(|e| panic!("kill etcd member {}: {e}", m.name));
        child
            .wait()
            .unwrap_or_else(|e| panic!("wait for etcd member {}: {e}", m.name));
    }

    /// Starts member `i` again, after [`EtcdCluster::kill`], on the same ports and data dir
    /// (`--initial-cluster-state existing`), and waits until it is healthy, which needs a
    /// quorum of the cluster up. Member `i`'s ports were free while it was down: another
    /// process can have taken one, and then the restart fails.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(child) = self.members[i].child.as_mut() {
            match child.try_wait()? {
                None => bail!("etcd member {} is still running", self.members[i].name),
                Some(_) => self.members[i].child = None,
            }
        }
        self.spawn(i, "existing")?;
        self.wait_healthy(i..i + 1)
    }

    /// SIGSTOPs member `i`: it holds its ports and state but answers nothing. Panics if it is
    /// not running.
    pub fn stop(&self, i: usize) {
        self.signal(i, "STOP");
    }

    /// SIGCONTs member `i` after [`EtcdCluster::stop`].
    pub fn cont(&self, i: usize) {
        self.signal(i, "CONT");
    }

    /// Sends `sig` to member `i` with kill(1) (the test kit has no unsafe code for libc).
    fn signal(&self, i: usize, sig: &str) {
        let name = &self.members[i].name;
        let pid = self
            .pid(i)
            .unwrap_or_else(|| panic!("etcd member {name} is not running"));
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} {pid} (etcd member {name})");
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // SIGKILL ends a stopped member too; reap each before the TempDir removes its data dir.
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// `n` distinct free ports on 127.0.0.1: every listener is held until all are bound, so no port
/// comes twice, then all are released for etcd to bind.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("bind 127.0.0.1:0")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}
