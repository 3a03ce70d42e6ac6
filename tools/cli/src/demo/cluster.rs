//! The demo's processes: a controller and storage nodes started from the binaries next to the
//! running `dasmesh`, each on a free loopback port, logging into the demo's directory. The
//! [`Cluster`] owns them: dropped (a failed step, Ctrl-C) it terminates every one and removes the
//! directory, so nothing outlives the demo.

use std::io::{BufRead as _, BufReader, Read as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use dasmesh_api::tls::{CertDir, Role};

use super::pki::Pki;

/// The directory holding the dasmesh binaries: the running executable's.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the running executable")?;
    Ok(exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?
        .to_path_buf())
}

/// The path of binary `name` next to this one, or a one-line error that says how to build it.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = bin_dir()?;
    let p = dir.join(name);
    if !p.is_file() {
        bail!(
            "{name} not found in {} (next to dasmesh): run `cargo build --release --workspace --bins` first",
            dir.display()
        );
    }
    Ok(p)
}

/// One started process.
pub struct Proc {
    /// `controller`, `n1`, ...
    pub name: String,
    /// The address it printed on its `listening` line.
    pub addr: String,
    /// Its stderr.
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts `bin` with `args`, stderr into `log`, and waits (up to 20 s) for its
    /// `listening ADDR` line.
    pub fn start(name: &str, bin: &Path, args: &[String], log: PathBuf) -> anyhow::Result<Proc> {
        let err =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            // Its own process group: a Ctrl-C on the terminal reaches only the demo, which then
            // stops its children in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the process never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        });
        let mut p = Proc {
            name: name.to_string(),
            addr: String::new(),
            log,
            child: Some(child),
        };
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        match line.trim().strip_prefix("listening ") {
            Some(addr) => p.addr = addr.to_string(),
            None => bail!(
                "{name} did not start (first line {:?}); its log says: {}",
                line.trim(),
                p.log_tail()
            ),
        }
        Ok(p)
    }

    /// Its process id (0 once it has exited).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The last lines of its log, on one line.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        let tail: Vec<&str> = lines.into_iter().rev().collect();
        if tail.is_empty() {
            "(nothing)".into()
        } else {
            tail.join(" | ")
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().with_context(|| format!("killing {}", self.name))?;
            c.wait()?;
        }
        Ok(())
    }

    /// Sends SIGTERM (if it is still running).
    fn term(&mut self) {
        if let Some(c) = &mut self.child {
            if let Ok(None) = c.try_wait() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(c.id().to_string())
                    .status();
            }
        }
    }

    /// Waits until `deadline` for it to exit, then kills it. `None`: it had been killed before,
    /// or had to be now.
    fn reap(&mut self, deadline: Instant) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A controller and its nodes, in a directory of their own, with a CA of their own.
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    keep: bool,
    /// The operator's certificate: the demo's own calls to the controller.
    pub operator: CertDir,
    /// The controller.
    pub ctl: Proc,
    /// The nodes, `n1`, `n2`, ...
    pub nodes: Vec<Proc>,
}

impl Cluster {
    /// Starts a controller (heartbeat `heartbeat`) and `n` nodes with a `size` file backend each
    /// (1 MiB of it kept for the owner) in a new directory under `parent`.
    pub fn start(
        parent: &Path,
        keep: bool,
        n: usize,
        size: &str,
        heartbeat: &str,
    ) -> anyhow::Result<Cluster> {
        let ctl_bin = binary("dasmesh-controller")?;
        let node_bin = binary("dasmesh-node")?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("dasmesh-demo.")
            .tempdir_in(parent)
            .with_context(|| format!("making a directory in {}", parent.display()))?;
        let d = dir.path().to_path_buf();
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let pki = Pki::make(&d)?;
        let ctl_cert = pki.issue(Role::Controller, "controller")?;
        let operator = pki.load(Role::Operator, "operator")?;
        // If the controller fails to start, `dir` is dropped (removed) on the way out.
        let ctl = Proc::start(
            "controller",
            &ctl_bin,
            &args(&[
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                &d.join("ctl").display().to_string(),
                "--heartbeat",
                heartbeat,
                "--replace-after",
                super::REPLACE_AFTER,
                "--cert",
                &ctl_cert.display().to_string(),
                // The operators' console (and /metrics), over TLS on a port of its own.
                "--http",
                "127.0.0.1:0",
            ]),
            d.join("controller.log"),
        )?;
        let mut cl = Cluster {
            dir: Some(dir),
            keep,
            operator,
            ctl,
            nodes: Vec::new(),
        };
        for i in 1..=n {
            let name = format!("n{i}");
            let cert = pki.issue(Role::Node, &name)?;
            let node = Proc::start(
                &name,
                &node_bin,
                &args(&[
                    "--listen",
                    "127.0.0.1:0",
                    // Three nodes and the client share this machine's cores: a spinning reactor
                    // would take the CPU from the others (docs/node.md, Polling).
                    "--no-pin",
                    "--poll",
                    "interrupt",
                    "--controller",
                    &cl.url(),
                    "--cert",
                    &cert.display().to_string(),
                    "--state-dir",
                    &d.join(&name).display().to_string(),
                    "--reserve",
                    "1M",
                    "--backend",
                    &format!("file:{}:{size}", d.join(format!("{name}.img")).display()),
                ]),
                d.join(format!("{name}.log")),
            )?;
            cl.nodes.push(node);
        }
        Ok(cl)
    }

    /// The controller's URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.ctl.addr)
    }

    /// The demo's directory.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("directory until dropped").path()
    }

    /// The node listening on `addr`.
    pub fn node_at(&mut self, addr: &str) -> Option<&mut Proc> {
        self.nodes.iter_mut().find(|n| n.addr == addr)
    }

    /// SIGTERM to every node still running (all at once), then to the controller; each group
    /// gets `grace` to exit. Returns each process with its exit status (`None` if it was killed
    /// before or had to be).
    pub fn stop(&mut self, grace: Duration) -> Vec<(String, Option<ExitStatus>)> {
        let mut out = Vec::new();
        let mut running: Vec<&mut Proc> = self
            .nodes
            .iter_mut()
            .filter(|n| n.child.is_some())
            .collect();
        let deadline = Instant::now() + grace;
        for n in running.iter_mut() {
            n.term();
        }
        for n in running {
            out.push((n.name.clone(), n.reap(deadline)));
        }
        self.ctl.term();
        out.push((self.ctl.name.clone(), self.ctl.reap(Instant::now() + grace)));
        out
    }

    /// Removes the directory now (or leaves it, with `--keep`); says which.
    pub fn finish_dir(&mut self) -> String {
        match self.dir.take() {
            Some(d) if self.keep => format!("kept {}", d.keep().display()),
            Some(d) => {
                let p = d.path().display().to_string();
                match d.close() {
                    Ok(()) => format!("removed {p}"),
                    Err(e) => format!("could not remove {p}: {e}"),
                }
            }
            None => String::new(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(5));
        if self.dir.is_some() {
            let said = self.finish_dir();
            eprintln!("dasmesh demo: processes stopped; {said}");
        }
    }
}
