//! `dasmesh demo`: the whole system on one machine in under a minute. A controller and three
//! nodes on loopback, volumes of every multi-node layout, data copied in and out and verified,
//! a search, a benchmark against a local-file baseline, usage with charges, a node killed under
//! a mirror while it is written, the lost copy replaced and rebuilt on another node, and a clean
//! shutdown. It prints what the real commands print
//! (the same code runs), checks every result, and exits non-zero when one is wrong.

mod cluster;
mod ha;
mod pki;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use clap::Args;
use dasmesh_api::{v1, CertDir, Controllers};
use dasmesh_client::{Access, MountOptions, Volume};
use rand::{RngCore as _, SeedableRng as _};

use crate::ctl::{exec, Ctl, NodeCmd, UsageArgs, VolumeCmd};
use crate::vol::{self, MountArgs};
use cluster::Cluster;

/// `dasmesh demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Leave the demo's directory (backing files, logs, controller state) in place.
    #[arg(long)]
    keep: bool,
    /// Make the demo's directory inside DIR (default: $TMPDIR, else /var/tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only the highly available control plane: etcd, two controllers, a failover under host
    /// I/O (needs etcd; the full demo ends with this step too where etcd is installed).
    #[arg(long, conflicts_with = "no_ha")]
    ha: bool,
    /// Skip the highly available control plane step even where etcd is installed.
    #[arg(long)]
    no_ha: bool,
}

/// The volumes: name, layout, size at creation, size after a resize.
const VOLUMES: [(&str, &str, u64, Option<u64>); 3] = [
    ("demo-mirror", "mirror:2", 32 << 20, None),
    ("demo-stripe", "stripe:3:64k", 48 << 20, None),
    // Created on one extent, then grown: the growth is a second extent, wherever the allocator
    // finds room.
    ("demo-concat", "concat", 16 << 20, Some(32 << 20)),
];
/// Price per GiB-hour of every demo volume (high, so a minute's charge shows).
const PRICE: f64 = 100.0;
/// The test data: a few MiB that do not end on a block boundary.
const DATA_LEN: usize = (8 << 20) + 777;
/// Planted where it straddles two 64 KiB stripe units, so in the stripe volume its halves are
/// on two different nodes.
const MARKER: &[u8] = b"the-dasmesh-demo-marker";
const MARKER_AT: usize = 5 * 65536 - 9;
/// Bytes of each target the benchmark uses.
const BENCH_SIZE: u64 = 32 << 20;
/// Measured time per target and workload (after a 250 ms warm-up).
const BENCH_RUNTIME: &str = "1500ms";
const HOST: &str = "demo-host";
/// How long the demo's controller waits for a lost node before it replaces the copies on it.
const REPLACE_AFTER: &str = "3s";

/// Runs the demo.
pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let parent = a.dir.clone().unwrap_or_else(|| {
        std::env::var_os("TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"))
    });
    // Fail on missing binaries before anything starts.
    cluster::binary("dasmesh-bench")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if a.ha {
        ensure!(
            ha::etcd_binary().is_some(),
            "--ha needs etcd (scripts/setup.sh installs Debian's etcd-server)"
        );
        return rt.block_on(ha_only(&parent, a.keep));
    }
    rt.block_on(async move {
        heading(1, "a controller and three storage nodes on loopback, a 256 MiB file each");
        let mut cl = Cluster::start(&parent, a.keep, 3, "256M", "500ms")?;
        let began = Instant::now();
        let r = tokio::select! {
            r = steps(&mut cl) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        };
        if let Err(e) = r {
            // `cl` is dropped on the way out: every process is stopped and the directory removed.
            if a.keep {
                eprintln!("the logs are in {}", cl.dir().display());
            }
            return Err(e);
        }
        if !a.no_ha {
            if ha::etcd_binary().is_some() {
                let d = cl.dir().join("ha");
                std::fs::create_dir_all(&d)?;
                ha::run(&d).await?;
            } else {
                println!("\n(the highly available control plane step needs etcd: scripts/setup.sh installs it)");
            }
        }
        if a.keep {
            let ctl = crate::ctl::controllers(&cl.url(), Duration::from_secs(15), Some(&cl.operator))?;
            println!("\n--keep: the pool stays up, with its console, until Ctrl-C");
            console_link(&ctl, &cl).await?;
            tokio::signal::ctrl_c().await?;
        }
        heading(11, "stop: SIGTERM to the nodes and the controller (in-flight I/O finishes, state is flushed)");
        let mut clean = true;
        for (name, status) in cl.stop(Duration::from_secs(15)) {
            match status {
                Some(s) if s.success() => println!("{name} exited 0"),
                Some(s) => {
                    println!("{name} exited with {s}");
                    clean = false;
                }
                None => {
                    println!("{name} did not exit within 15 s of SIGTERM and was killed");
                    clean = false;
                }
            }
        }
        println!("{}", cl.finish_dir());
        ensure!(clean, "a process did not shut down cleanly");
        println!(
            "\ndemo complete in {:.0} s: every check passed",
            began.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

/// `dasmesh demo --ha`: the failover step alone, in a directory of its own.
async fn ha_only(parent: &Path, keep: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("dasmesh-demo-ha.")
        .tempdir_in(parent)
        .with_context(|| format!("making a directory in {}", parent.display()))?;
    let began = Instant::now();
    let r = tokio::select! {
        r = ha::run(dir.path()) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    if keep {
        println!("kept {}", dir.keep().display());
    }
    r?;
    println!(
        "\nHA demo complete in {:.0} s: every check passed",
        began.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prints a link that signs a browser in to the controller's console as the demo's operator.
async fn console_link(ctl: &Controllers, cl: &Cluster) -> anyhow::Result<()> {
    let link = v1::control_plane_client::ControlPlaneClient::new(ctl.clone())
        .console_login(v1::ConsoleLoginRequest {})
        .await
        .context("a console login link")?
        .into_inner();
    println!("console {}", link.url);
    println!(
        "  (open it within 5 minutes; the browser warns that the certificate is of the demo's own CA, {})",
        cl.dir().join("pki").join("ca").join("ca.pem").display()
    );
    Ok(())
}

fn heading(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

async fn steps(cl: &mut Cluster) -> anyhow::Result<()> {
    let url = cl.url();
    println!("controller {url} (pid {})", cl.ctl.pid());
    let ctl = &crate::ctl::controllers(&url, Duration::from_secs(15), Some(&cl.operator))?;
    println!(
        "a CA of the demo's own in {}: the controller serves mutual TLS only; the nodes and this \
         demo (an operator) each show a certificate, and every call is checked against its role",
        cl.dir().join("pki").display()
    );
    for n in &cl.nodes {
        println!("node {} {} (pid {})", n.name, n.addr, n.pid());
    }
    println!("files and logs in {}", cl.dir().display());
    wait_for_nodes(&url, &cl.operator, cl.nodes.len()).await?;
    exec(ctl, false, Ctl::Node(NodeCmd::List)).await?;
    console_link(ctl, cl).await?;

    heading(2, "the pool: every device's lendable and free space");
    exec(ctl, false, Ctl::Pool).await?;

    heading(
        3,
        &format!("three volumes, {PRICE} per GiB-hour: a mirror of two copies, a stripe over three nodes (64 KiB unit), a concat grown onto a second extent"),
    );
    for (name, layout, size, grow) in VOLUMES {
        let create = VolumeCmd::Create {
            name: name.into(),
            size,
            layout: layout.into(),
            min_iops: 0,
            min_mib_s: 0,
            max_iops: 0,
            max_mib_s: 0,
            weight: 0,
            price: PRICE,
            spread_domains: false,
        };
        exec(ctl, false, Ctl::Volume(create)).await?;
        if let Some(size) = grow {
            let resize = VolumeCmd::Resize {
                name: name.into(),
                size,
            };
            exec(ctl, false, Ctl::Volume(resize)).await?;
            let v = vol::volume_info(ctl, name).await?;
            ensure!(
                v.extents.len() >= 2,
                "{name} should span two extents after the resize, has {}",
                v.extents.len()
            );
        }
    }

    heading(
        4,
        &format!("copy {DATA_LEN} bytes of pseudo-random data into each volume (`volume cp FILE NAME`), out again (`volume cp NAME FILE`), compare"),
    );
    let data = test_data();
    let input = cl.dir().join("data.bin");
    std::fs::write(&input, &data).with_context(|| format!("writing {}", input.display()))?;
    let m = MountArgs {
        host: HOST.into(),
        ..Default::default()
    };
    for (name, ..) in VOLUMES {
        vol::upload(ctl, &input, name, &m, false)
            .await?
            .print(false);
        let back = cl.dir().join(format!("{name}.out"));
        vol::download(ctl, name, &back, Some(DATA_LEN as u64), &m, false)
            .await?
            .print(false);
        let got = std::fs::read(&back)?;
        ensure!(
            got == data,
            "{name}: the bytes read back differ from those written (first at byte {})",
            first_difference(&got, &data)
        );
        println!("{name}: verified, all {} bytes identical", got.len());
    }

    heading(
        5,
        &format!("search every volume for {:?}, planted at byte {MARKER_AT} (the nodes scan their own extents)", String::from_utf8_lossy(MARKER)),
    );
    for (name, ..) in VOLUMES {
        let r = vol::search(ctl, name, MARKER, 0, None, 10, &m).await?;
        println!("{name}: hits at {:?}", r.hits);
        ensure!(
            r.hits == [MARKER_AT as u64] && !r.truncated,
            "{name}: expected one hit at {MARKER_AT}, got {:?}",
            r.hits
        );
    }
    println!(
        "(in {} the marker straddles two stripe units on two nodes: found across the seam)",
        VOLUMES[1].0
    );

    heading(
        6,
        "benchmark: a local file (the baseline, io_uring + O_DIRECT), then each volume through the nodes",
    );
    bench(cl.dir(), &url, &cl.operator).await?;

    heading(
        7,
        &format!("assured performance: {CAPPED} is promised {CAPPED_PROMISE} IOPS and capped at {CAPPED_CAP}; read flat out, its node holds it to the cap"),
    );
    capped(cl.dir(), ctl, &url, &cl.operator).await?;

    heading(
        8,
        "usage and charges (counted on the nodes, reported with their heartbeats)",
    );
    // The last I/O's counters arrive with the next heartbeats.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    exec(ctl, false, Ctl::Usage(UsageArgs::default())).await?;
    let usage = v1::usage_client::UsageClient::new(ctl.clone())
        .report(v1::UsageRequest::default())
        .await
        .map_err(crate::ctl::status)?
        .into_inner();
    let written: u64 = usage.records.iter().map(|u| u.write_bytes).sum();
    ensure!(
        usage.total_charge > 0.0 && written >= 3 * DATA_LEN as u64,
        "usage should show the copies' writes and a charge: {} bytes written, charge {}",
        written,
        usage.total_charge
    );
    println!(
        "{} leases, {} written in all; a charge is GiB-hours (size x lease time) x the volume's price",
        usage.records.len(),
        dasmesh_wire::units::format_amount(written)
    );

    heading(
        9,
        "SIGKILL the node holding the mirror's second copy while the mirror is written: writes and reads carry on",
    );
    let victim = kill_under_mirror(cl, ctl).await?;

    heading(
        10,
        &format!("the lost copy is replaced on the node no copy uses ({REPLACE_AFTER} without its node: --replace-after), and that node rebuilds it from copy 0"),
    );
    replaced_copy(ctl, &victim).await
}

/// Waits for the controller to replace the mirror's copy 1 (its node `victim` was killed) on
/// another node and for that node to rebuild it; then reads the new copy's extent straight from
/// its node, with a token of a read-only lease, and compares it with what was written.
async fn replaced_copy(ctl: &Controllers, victim: &str) -> anyhow::Result<()> {
    const NAME: &str = "demo-mirror";
    let t0 = Instant::now();
    let mut shown_rebuilding = false;
    let done = loop {
        let v = vol::volume_info(ctl, NAME).await?;
        let c1 = v.extents.iter().find(|e| e.copy == 1).cloned();
        if let Some(e) = c1.filter(|e| e.node_address != victim) {
            if e.rebuilding && !shown_rebuilding {
                println!(
                    "copy 1 moved to node {} ({}): REBUILDING, {} of {} copied so far",
                    e.node_id,
                    e.node_address,
                    dasmesh_wire::units::format_size(e.rebuilt_bytes),
                    dasmesh_wire::units::format_size(e.length)
                );
                shown_rebuilding = true;
            }
            if v.state == v1::VolumeState::Ok as i32 {
                break e;
            }
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(90),
            "{NAME}: copy 1 not replaced and rebuilt within 90 s: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "{NAME} is OK again {:.1} s after the demo waited: copy 1 rebuilt on node {} ({}), node to node",
        t0.elapsed().as_secs_f64(),
        done.node_id,
        done.node_address
    );
    exec(
        ctl,
        false,
        Ctl::Volume(VolumeCmd::Show { name: NAME.into() }),
    )
    .await?;
    // What the new node holds, read from it alone.
    let m = v1::leases_client::LeasesClient::new(ctl.clone())
        .mount(v1::MountRequest {
            volume: NAME.into(),
            host_id: HOST.into(),
            access: v1::Access::ReadOnly as i32,
            ttl_ms: 60_000,
            holder_key: Vec::new(),
        })
        .await
        .map_err(crate::ctl::status)?
        .into_inner();
    let lease_id = m.lease.as_ref().map_or(0, |l| l.lease_id);
    let read = async {
        let me = m
            .extents
            .iter()
            .find(|me| me.extent.as_ref().is_some_and(|e| e.copy == 1))
            .ok_or_else(|| anyhow!("{NAME}: no copy 1 in the mount information"))?;
        let e = me.extent.clone().unwrap_or_default();
        let token = dasmesh_wire::Token::from_text(&me.token)?;
        let s = dasmesh_client::NodeSession::connect(
            &e.node_address,
            dasmesh_wire::DeviceId(e.device_id),
            &token,
            1,
            &Default::default(),
        )
        .await
        .map_err(|err| anyhow!("connecting to {}: {err}", e.node_address))?;
        let mut got = Vec::with_capacity(MIRROR_LEN);
        for at in (0..MIRROR_LEN as u64).step_by(1 << 20) {
            got.extend(
                s.read(e.offset + at, 1 << 20)
                    .await
                    .map_err(|err| anyhow!("reading copy 1 on {}: {err}", e.node_address))?,
            );
        }
        ensure!(
            got == mirror_data(),
            "{NAME}: copy 1 on its new node differs at byte {}",
            first_difference(&got, &mirror_data())
        );
        println!(
            "read the {} MiB written before and after the kill from copy 1's new node alone: identical",
            MIRROR_LEN >> 20
        );
        Ok::<(), anyhow::Error>(())
    }
    .await;
    let _ = v1::leases_client::LeasesClient::new(ctl.clone())
        .unmount(v1::UnmountRequest { lease_id })
        .await;
    read
}

/// What the mirror step writes.
const MIRROR_LEN: usize = 4 << 20;

fn mirror_data() -> Vec<u8> {
    let mut data = vec![0u8; MIRROR_LEN];
    rand::rngs::StdRng::seed_from_u64(8).fill_bytes(&mut data);
    data
}

/// Up to 10 s for `n` nodes to be registered and up.
async fn wait_for_nodes(url: &str, cert: &CertDir, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    // Each look ends soon when the controller does not answer yet: this loop retries.
    let ctl = crate::ctl::controllers(url, Duration::from_millis(500), Some(cert))?;
    loop {
        let up = v1::pool_client::PoolClient::new(ctl.clone())
            .list_nodes(v1::ListNodesRequest {})
            .await
            .map(|r| {
                r.into_inner()
                    .nodes
                    .iter()
                    .filter(|x| x.state == v1::NodeState::Up as i32)
                    .count()
            })
            .unwrap_or(0);
        if up >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {up} of {n} nodes registered with the controller within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deterministic pseudo-random bytes with the marker planted.
fn test_data() -> Vec<u8> {
    let mut data = vec![0u8; DATA_LEN];
    rand::rngs::StdRng::seed_from_u64(0xda5_3e5).fill_bytes(&mut data);
    data[MARKER_AT..MARKER_AT + MARKER.len()].copy_from_slice(MARKER);
    data
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// `dasmesh-bench` (next to this binary) on the same workloads: a local file of the same size
/// first, then every volume.
/// The volume of step 7, its promise and its cap (IOPS).
const CAPPED: &str = "demo-capped";
const CAPPED_PROMISE: u64 = 1000;
const CAPPED_CAP: u64 = 2000;

/// Step 7: creates [`CAPPED`], shows its terms, reads it flat out with dasmesh-bench and checks
/// that it got its cap, give or take a tenth.
async fn capped(dir: &Path, ctl: &Controllers, url: &str, cert: &CertDir) -> anyhow::Result<()> {
    let create = VolumeCmd::Create {
        name: CAPPED.into(),
        size: BENCH_SIZE,
        layout: "single".into(),
        min_iops: CAPPED_PROMISE,
        min_mib_s: 0,
        max_iops: CAPPED_CAP,
        max_mib_s: 0,
        weight: 0,
        price: PRICE,
        spread_domains: false,
    };
    exec(ctl, false, Ctl::Volume(create)).await?;
    let json = dir.join("capped.json");
    println!("-- 4k random reads, 16 in flight, {BENCH_RUNTIME}");
    run_bench(
        &[format!("volume:{CAPPED}")],
        &["--rw", "randread", "--bs", "4k", "--iodepth", "16"],
        url,
        cert,
        Some(&json),
    )
    .await?;
    let out: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&json).with_context(|| format!("reading {}", json.display()))?,
    )?;
    let iops = out["results"][0]["iops"].as_f64().unwrap_or(0.0);
    let cap = CAPPED_CAP as f64;
    ensure!(
        (0.9 * cap..=1.05 * cap).contains(&iops),
        "{CAPPED}: read flat out at {iops:.0} IOPS, its cap is {CAPPED_CAP}"
    );
    println!("{CAPPED}: {iops:.0} IOPS asked for as fast as they could come, capped at {CAPPED_CAP}: held there by its node");
    // The heartbeats carry the reads' counts to the controller.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    exec(
        ctl,
        false,
        Ctl::Volume(VolumeCmd::Show {
            name: CAPPED.into(),
        }),
    )
    .await
}

/// Runs dasmesh-bench on `targets` with `workload`, as the demo's operator.
async fn run_bench(
    targets: &[String],
    workload: &[&str],
    url: &str,
    cert: &CertDir,
    json: Option<&Path>,
) -> anyhow::Result<()> {
    let bin = cluster::binary("dasmesh-bench")?;
    let mut cmd = tokio::process::Command::new(&bin);
    for t in targets {
        cmd.arg("--target").arg(t);
    }
    if let Some(j) = json {
        cmd.arg("--json").arg(j);
    }
    cmd.args(workload)
        .args([
            "--size",
            &BENCH_SIZE.to_string(),
            "--runtime",
            BENCH_RUNTIME,
            "--ramp",
            "250ms",
        ])
        .args(["--no-progress", "--controller", url])
        .arg("--cert")
        .arg(cert.dir())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let status = cmd
        .status()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    ensure!(status.success(), "dasmesh-bench failed ({status})");
    Ok(())
}

async fn bench(dir: &Path, url: &str, cert: &CertDir) -> anyhow::Result<()> {
    let local = dir.join("baseline.img");
    // Written in full, so the baseline reads real blocks rather than holes.
    std::fs::write(&local, vec![0x5a; BENCH_SIZE as usize])
        .with_context(|| format!("writing {}", local.display()))?;
    let mut targets = vec![format!("local:{}", local.display())];
    targets.extend(VOLUMES.iter().map(|(name, ..)| format!("volume:{name}")));
    for (what, workload) in [
        (
            "4k random writes, 16 in flight",
            ["--rw", "randwrite", "--bs", "4k", "--iodepth", "16"],
        ),
        (
            "128k sequential reads, 8 in flight",
            ["--rw", "read", "--bs", "128k", "--iodepth", "8"],
        ),
    ] {
        println!("-- {what}, {BENCH_RUNTIME} per target");
        run_bench(&targets, &workload, url, cert, None).await?;
    }
    Ok(())
}

/// Mounts the mirror, writes half of 4 MiB, kills the node of copy 1, writes the rest, flushes,
/// reads everything back; then checks that the controller shows the copy stale and the volume
/// degraded. Returns the killed node's address.
async fn kill_under_mirror(cl: &mut Cluster, ctl: &Controllers) -> anyhow::Result<String> {
    const NAME: &str = "demo-mirror";
    const LEN: usize = MIRROR_LEN;
    let info = vol::volume_info(ctl, NAME).await?;
    let victim = info
        .extents
        .iter()
        .find(|e| e.copy == 1)
        .ok_or_else(|| anyhow!("{NAME} has no second copy"))?
        .node_address
        .clone();
    let opts = MountOptions {
        host: HOST.into(),
        access: Access::ReadWrite,
        ttl: Duration::from_secs(60),
        ..Default::default()
    };
    let v = Volume::mount_on(ctl.clone(), NAME, opts)
        .await
        .map_err(|e| anyhow!("mounting {NAME}: {e}"))?;
    let r = async {
        let data = mirror_data();
        let half = LEN / 2;
        v.write(0, &data[..half], false)
            .await
            .map_err(|e| anyhow!("write before the kill: {e}"))?;
        println!("wrote {} MiB to {NAME} (both copies)", half >> 20);
        let node = cl
            .node_at(&victim)
            .ok_or_else(|| anyhow!("no demo node at {victim}"))?;
        let (name, pid) = (node.name.clone(), node.pid());
        node.kill()?;
        println!("killed node {name} ({victim}, pid {pid}) with SIGKILL");
        let t0 = Instant::now();
        v.write(half as u64, &data[half..], false)
            .await
            .map_err(|e| anyhow!("write after the kill: {e}"))?;
        v.flush()
            .await
            .map_err(|e| anyhow!("flush after the kill: {e}"))?;
        println!(
            "wrote {} MiB more and flushed in {:.2} s: the failed copy was reported, the write acknowledged by the other",
            (LEN - half) >> 20,
            t0.elapsed().as_secs_f64()
        );
        let back = v
            .read(0, LEN)
            .await
            .map_err(|e| anyhow!("read after the kill: {e}"))?;
        ensure!(
            back == data,
            "{NAME}: read back after the kill differs at byte {}",
            first_difference(&back, &data)
        );
        println!("read all {} MiB back: identical", LEN >> 20);
        Ok(())
    }
    .await;
    let ended = v
        .unmount()
        .await
        .map_err(|e| anyhow!("unmounting {NAME}: {e}"));
    r?;
    ended?;

    exec(
        ctl,
        false,
        Ctl::Volume(VolumeCmd::Show { name: NAME.into() }),
    )
    .await?;
    let after = vol::volume_info(ctl, NAME).await?;
    ensure!(
        after.state == v1::VolumeState::Degraded as i32,
        "{NAME} should be degraded, is in state {}",
        after.state
    );
    for e in &after.extents {
        ensure!(
            e.stale == (e.copy == 1),
            "{NAME}: copy {} on {} should {}be stale",
            e.copy,
            e.node_address,
            if e.copy == 1 { "" } else { "not " }
        );
    }
    println!(
        "{NAME} is DEGRADED: copy 1 is STALE (it missed writes), copy 0 serves reads and writes"
    );
    Ok(victim)
}
