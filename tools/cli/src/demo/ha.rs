//! `dasmesh demo --ha` (and the last step of `dasmesh demo` where etcd is installed): etcd, two
//! controllers over it and three nodes that know both; a mirror written and read back without a
//! pause while the active controller is killed with SIGKILL; the standby takes over, the host's
//! lease is renewed by it, and the killed controller comes back as a standby.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use dasmesh_api::tls::Role;

use super::pki::Pki;
use dasmesh_api::{v1, CertDir, ControllerOptions, Controllers};
use dasmesh_client::{Access, MountOptions, Volume};

use super::cluster::{binary, Proc};
use crate::ctl::{exec, ControllerCmd, Ctl};

/// The etcd server binary: `$DASMESH_ETCD`, else `etcd` on the PATH (Debian's `etcd-server`,
/// which scripts/setup.sh installs).
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DASMESH_ETCD") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    })
}

/// A one-member etcd on two free loopback ports, its data in `dir`; killed on drop.
struct Etcd {
    child: Child,
    url: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Etcd {
    fn start(dir: &Path) -> anyhow::Result<Etcd> {
        let bin = etcd_binary()
            .ok_or_else(|| anyhow!("etcd not found (scripts/setup.sh installs etcd-server)"))?;
        let (client, peer) = (free_port()?, free_port()?);
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let child = Command::new(&bin)
            .args([
                "--name",
                "demo",
                "--data-dir",
                &dir.join("etcd").display().to_string(),
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("demo={peer_url}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let e = Etcd { child, url };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !e.healthy() {
            if Instant::now() > deadline {
                bail!(
                    "etcd did not become healthy in 20 s (see {})",
                    dir.join("etcd.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(e)
    }

    /// `GET /health` answers `"health":"true"`.
    fn healthy(&self) -> bool {
        let addr = self.url.trim_start_matches("http://");
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut body = String::new();
        s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_ok()
            && s.read_to_string(&mut body).is_ok()
            && body.contains("\"health\":\"true\"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn heading(text: &str) {
    println!("\n== HA. {text}");
}

/// Runs the HA demo in `dir` (made and removed by the caller).
pub async fn run(dir: &Path) -> anyhow::Result<()> {
    heading("etcd, two controllers over it, three nodes that know both");
    let etcd = Etcd::start(dir)?;
    println!("etcd {} (pid {})", etcd.url, etcd.child.id());
    let ctl_bin = binary("dasmesh-controller")?;
    let node_bin = binary("dasmesh-node")?;
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // One CA for the pair: both controllers show the same controller certificate (for
    // 127.0.0.1), the nodes theirs, the demo an operator's and its host a host's.
    let pki = Pki::make(dir)?;
    let ctl_cert = pki
        .issue(Role::Controller, "ha-controller")?
        .display()
        .to_string();
    let operator = pki.load(Role::Operator, "ha-operator")?;
    let host = pki.load(Role::Host, "demo-ha-host")?;
    let addrs = [
        format!("127.0.0.1:{}", free_port()?),
        format!("127.0.0.1:{}", free_port()?),
    ];
    let ctl_args = |addr: &str| {
        s(&[
            "--listen",
            addr,
            "--etcd",
            &etcd.url,
            "--heartbeat",
            "500ms",
            "--election-ttl",
            "2s",
            "--cert",
            &ctl_cert,
        ])
    };
    let mut ctls = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let p = Proc::start(
            &format!("controller{}", i + 1),
            &ctl_bin,
            &ctl_args(a),
            dir.join(format!("controller{}.log", i + 1)),
        )?;
        println!("{} https://{} (pid {})", p.name, p.addr, p.pid());
        ctls.push(p);
        // The first is active before the second starts: the roles are easy to follow.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let list = addrs
        .iter()
        .map(|a| format!("https://{a}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let name = format!("ha-n{i}");
        let cert = pki.issue(Role::Node, &name)?.display().to_string();
        let p = Proc::start(
            &name,
            &node_bin,
            &s(&[
                "--listen",
                "127.0.0.1:0",
                "--no-pin",
                "--poll",
                "interrupt",
                "--controller",
                &list,
                "--cert",
                &cert,
                "--state-dir",
                &dir.join(&name).display().to_string(),
                "--backend",
                "memory:64M",
            ]),
            dir.join(format!("{name}.log")),
        )?;
        nodes.push(p);
    }
    let reach = |cert: &CertDir| {
        Controllers::parse_with(
            &list,
            ControllerOptions {
                failover_wait: Duration::from_secs(15),
                tls: Some(cert.client_config()),
                ..Default::default()
            },
        )
    };
    let ctl = reach(&operator)?;
    super::wait_for_nodes(&list, &operator, 3).await?;
    println!("$ dasmesh --controller {list} controller list");
    exec(&ctl, false, Ctl::Controller(ControllerCmd::List)).await?;

    heading("a mirror, written and read back in a loop by a host that knows both controllers");
    v1::volumes_client::VolumesClient::new(ctl.clone())
        .create(v1::CreateVolumeRequest {
            name: "ha-mirror".into(),
            size_bytes: 16 << 20,
            layout: Some("mirror:2".parse::<dasmesh_api::Layout>()?.into()),
            requirements: None,
        })
        .await
        .map_err(crate::ctl::status)?;
    let ttl = Duration::from_secs(4);
    // The host has a host's certificate: it mounts in its own name and renews its own lease.
    let vol = Volume::mount_on(
        reach(&host)?,
        "ha-mirror",
        MountOptions {
            host: "demo-ha-host".into(),
            access: Access::ReadWrite,
            ttl,
            cert: Some(host.clone()),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| anyhow!("mounting ha-mirror: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let io = tokio::spawn({
        let (vol, stop, rounds) = (vol.clone(), Arc::clone(&stop), Arc::clone(&rounds));
        async move {
            let mut worst = Duration::ZERO;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let off = (i % 1024) * 4096;
                let data = vec![(i % 253) as u8; 4096];
                let t = Instant::now();
                vol.write(off, &data, false)
                    .await
                    .map_err(|e| anyhow!("write {i}: {e}"))?;
                let back = vol
                    .read(off, 4096)
                    .await
                    .map_err(|e| anyhow!("read {i}: {e}"))?;
                ensure!(back == data, "block {} read back wrong", off / 4096);
                worst = worst.max(t.elapsed());
                rounds.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(worst)
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "{} write+read rounds so far (lease TTL {ttl:?}, renewed through the controllers)",
        rounds.load(Ordering::Relaxed)
    );

    heading("SIGKILL the active controller while the host keeps writing");
    let active = ctl.active();
    let victim = ctls
        .iter_mut()
        .find(|p| format!("https://{}", p.addr) == active)
        .ok_or_else(|| anyhow!("the active controller {active} is not one of the demo's"))?;
    let (vname, vpid) = (victim.name.clone(), victim.pid());
    let before = rounds.load(Ordering::Relaxed);
    victim.kill()?;
    let killed = Instant::now();
    println!("killed {vname} ({active}, pid {vpid})");
    // A change, not a read (standbys answer reads): served once the standby has taken over.
    v1::leases_client::LeasesClient::new(ctl.clone())
        .renew(v1::RenewRequest {
            joined: vec![],
            lease_id: vol.lease_id(),
            ttl_ms: ttl.as_millis() as u64,
        })
        .await
        .map_err(crate::ctl::status)?;
    println!(
        "the standby took over: a lease renewal was served {:.2} s after the kill, by {}",
        killed.elapsed().as_secs_f64(),
        ctl.active()
    );
    // Past two lease TTLs: the lease is renewed by the new active controller.
    tokio::time::sleep(2 * ttl).await;
    let during = rounds.load(Ordering::Relaxed) - before;
    ensure!(
        during > 0,
        "host I/O stopped after the controller was killed"
    );
    let leases = v1::leases_client::LeasesClient::new(ctl.clone())
        .list(v1::ListLeasesRequest {
            volume: "ha-mirror".into(),
        })
        .await
        .map_err(crate::ctl::status)?
        .into_inner()
        .leases;
    ensure!(
        leases.iter().any(|l| l.host_id == "demo-ha-host"),
        "the host's lease did not survive the failover"
    );
    println!(
        "{during} more write+read rounds since the kill, every one verified; the host's lease lives on (renewed by the new active controller)"
    );

    heading("the killed controller comes back as a standby");
    let victim = ctls
        .iter_mut()
        .find(|p| p.name == vname)
        .expect("the victim is one of ours");
    let addr = victim.addr.clone();
    *victim = Proc::start(
        &vname,
        &ctl_bin,
        &ctl_args(&addr),
        dir.join(format!("{vname}.2.log")),
    )?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    exec(&ctl, false, Ctl::Controller(ControllerCmd::List)).await?;

    stop.store(true, Ordering::Relaxed);
    let worst = io.await.map_err(|e| anyhow!("I/O task: {e}"))??;
    println!(
        "host I/O: {} verified rounds in all, none failed; the slowest round took {:.1} ms",
        rounds.load(Ordering::Relaxed),
        worst.as_secs_f64() * 1000.0
    );
    vol.unmount().await.map_err(|e| anyhow!("unmount: {e}"))?;
    drop(nodes);
    drop(ctls);
    drop(etcd);
    Ok(())
}
