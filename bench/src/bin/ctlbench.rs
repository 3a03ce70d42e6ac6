//! `dasmesh-ctlbench`: the control plane measured on its own. `mounts`: mount and unmount
//! latency and rate from many hosts at once; `probe`: the time until a mount is served again
//! (after an active controller is killed); `role`: whether one controller is active, standby
//! or down. Only the controllers are called, never a node: `bench/ctl-compare.sh` drives it.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use dasmesh_api::headers::{ROLE_HEADER, STANDBY};
use dasmesh_api::v1::leases_client::LeasesClient;
use dasmesh_api::v1::volumes_client::VolumesClient;
use dasmesh_api::{v1, ControllerOptions, Controllers, Layout};
use dasmesh_wire::units::parse_size;
use hdrhistogram::Histogram;
use tokio::sync::Barrier;
use tokio::time::Instant;
use tonic::{Code, Status};

/// How many error messages a run keeps to print.
const FIRST_ERRORS: usize = 5;
/// The slowest call a histogram can hold, in microseconds (an hour).
const MAX_US: u64 = 3_600_000_000;

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// dasmesh-ctlbench: measure the control plane (mount leases, failover).
#[derive(Parser, Debug)]
#[command(name = "dasmesh-ctlbench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Many hosts mounting (read-write) and unmounting in a loop: latency of each call and rate.
    Mounts(MountsArgs),
    /// Read-only mounts until one is served; prints `first mount after X.XXX s`, exits 1 on
    /// timeout.
    Probe(ProbeArgs),
    /// Prints `active`, `standby` or `down` for one controller.
    Role(RoleArgs),
}

#[derive(clap::Args, Debug)]
struct MountsArgs {
    /// The controller, or a comma-separated list of controllers (the active one is followed).
    #[arg(
        long,
        env = "DASMESH_CONTROLLER",
        default_value = "http://127.0.0.1:7600"
    )]
    controller: String,
    /// A certificate directory (an operator's: the hosts are h0, h1, ...): every connection
    /// is mutual TLS, to https:// controllers.
    #[arg(long, env = "DASMESH_CERT")]
    cert: Option<std::path::PathBuf>,
    /// Hosts calling at once (h0, h1, ...), each a task with its own connection.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    hosts: u32,
    /// Volumes PREFIX-0 ... PREFIX-(N-1); host i mounts PREFIX-(i % N), so hosts beyond N race
    /// for a volume's read-write lease.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    volumes: u32,
    /// How long the hosts keep mounting.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Each host stops after this many mount+unmount cycles (0: none, mount until --duration).
    /// `--rounds 1`: every host mounts and unmounts once, all at the same moment (a burst).
    #[arg(long, default_value_t = 0)]
    rounds: u32,
    /// Create the volumes first (those that exist are kept).
    #[arg(long)]
    create: bool,
    /// Size of each volume created.
    #[arg(long, default_value = "4M", value_parser = size_arg)]
    size: u64,
    /// Layout of each volume created.
    #[arg(long, default_value = "single")]
    layout: Layout,
    /// Lease length each mount asks for.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Volume name prefix.
    #[arg(long, default_value = "ctlbench")]
    prefix: String,
    /// Write the figures, the configuration, the git commit and the machine here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ProbeArgs {
    /// The controller, or a comma-separated list of controllers.
    #[arg(
        long,
        env = "DASMESH_CONTROLLER",
        default_value = "http://127.0.0.1:7600"
    )]
    controller: String,
    /// A certificate directory: mutual TLS to https:// controllers.
    #[arg(long, env = "DASMESH_CERT")]
    cert: Option<std::path::PathBuf>,
    /// The volume to mount (read-only, so it may be leased by others).
    #[arg(long)]
    volume: String,
    /// Give up (exit 1) after this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Lease length asked for (the lease is ended at once).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Host id the probe mounts as.
    #[arg(long, default_value = "ctlbench-probe")]
    host_id: String,
    /// Instead of letting the client library go round the list with its own back-off (what a
    /// host sees), make one round per call and try again every POLL (when the control plane
    /// serves again, to within POLL).
    #[arg(long, value_parser = humantime::parse_duration)]
    poll: Option<Duration>,
}

#[derive(clap::Args, Debug)]
struct RoleArgs {
    /// One controller's URL (http://HOST:PORT); never sent on to another.
    #[arg(long)]
    controller: String,
    /// How long to wait for the connection and the answer.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Mounts(a) => mounts(a).await,
        Cmd::Probe(a) => probe(a).await,
        Cmd::Role(a) => role(a).await,
    };
    if let Err(e) = r {
        eprintln!("dasmesh-ctlbench: {e:#}");
        std::process::exit(1);
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_US)
}

/// What one host (or, merged, all of them) measured.
struct Stats {
    /// Served mounts, µs.
    mount: Histogram<u64>,
    /// Served unmounts, µs.
    unmount: Histogram<u64>,
    /// Mounts refused because another host held the read-write lease, µs.
    busy: Histogram<u64>,
    mount_errors: u64,
    unmount_errors: u64,
    /// The first few error messages.
    first_errors: Vec<String>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            mount: histogram(),
            unmount: histogram(),
            busy: histogram(),
            mount_errors: 0,
            unmount_errors: 0,
            first_errors: Vec::new(),
        }
    }

    fn note(&mut self, what: String) {
        if self.first_errors.len() < FIRST_ERRORS {
            self.first_errors.push(what);
        }
    }

    fn merge(&mut self, o: Stats) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.mount.add(&o.mount);
        let _ = self.unmount.add(&o.unmount);
        let _ = self.busy.add(&o.busy);
        self.mount_errors += o.mount_errors;
        self.unmount_errors += o.unmount_errors;
        for e in o.first_errors {
            self.note(e);
        }
    }
}

/// One line of the table: an operation's count, rate and latency (ms).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
struct Row {
    op: &'static str,
    count: u64,
    rate_per_s: f64,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    p999_ms: Option<f64>,
    max_ms: Option<f64>,
    /// None where errors do not apply (busy refusals are not errors).
    errors: Option<u64>,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Row {
    /// From a histogram in µs over `elapsed`.
    fn of(op: &'static str, h: &Histogram<u64>, errors: Option<u64>, elapsed: Duration) -> Row {
        let count = h.len();
        let ms = |us: u64| (count > 0).then(|| round2(us as f64 / 1000.0));
        Row {
            op,
            count,
            rate_per_s: (count as f64 / elapsed.as_secs_f64().max(1e-9) * 10.0).round() / 10.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            errors,
        }
    }
}

/// The terminal table: one header line and one line per row.
fn table(rows: &[Row]) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    let mut out = format!(
        "{:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
        "op", "count", "rate/s", "p50 ms", "p90 ms", "p99 ms", "p999 ms", "max ms", "errors"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<8} {:>9} {:>9.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
            r.op,
            r.count,
            r.rate_per_s,
            ms(r.p50_ms),
            ms(r.p90_ms),
            ms(r.p99_ms),
            ms(r.p999_ms),
            ms(r.max_ms),
            r.errors.map_or_else(|| "-".to_string(), |e| e.to_string()),
        ));
    }
    out
}

/// A status in one line: its code and message.
fn status_line(s: &Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

fn volume_name(prefix: &str, host: u32, volumes: u32) -> String {
    format!("{prefix}-{}", host % volumes)
}

/// Creates PREFIX-0 ... PREFIX-(n-1); returns how many were made and how many existed.
async fn create_volumes(ctls: &Controllers, a: &MountsArgs) -> anyhow::Result<(u32, u32)> {
    let mut vols = VolumesClient::new(ctls.clone());
    let (mut made, mut existed) = (0, 0);
    for i in 0..a.volumes {
        let name = volume_name(&a.prefix, i, a.volumes);
        let req = v1::CreateVolumeRequest {
            name: name.clone(),
            size_bytes: a.size,
            layout: Some(a.layout.into()),
            requirements: None,
        };
        match vols.create(req).await {
            Ok(_) => made += 1,
            Err(s) if s.code() == Code::AlreadyExists => existed += 1,
            Err(s) => bail!("creating volume {name}: {}", status_line(&s)),
        }
    }
    Ok((made, existed))
}

/// One host: mount, unmount, again, until `duration` after the start or `rounds` cycles.
async fn host(
    i: u32,
    ctls: Controllers,
    volume: String,
    ttl_ms: u64,
    duration: Duration,
    rounds: u32,
    start: Arc<Barrier>,
) -> Stats {
    let mut st = Stats::new();
    let mut leases = LeasesClient::new(ctls);
    let host_id = format!("h{i}");
    // The connection is made before the clock starts: the table is about calls, not handshakes.
    let _ = leases
        .list(v1::ListLeasesRequest {
            volume: volume.clone(),
        })
        .await;
    start.wait().await;
    let deadline = Instant::now() + duration;
    let mut round = 0u32;
    while Instant::now() < deadline && (rounds == 0 || round < rounds) {
        round += 1;
        let t = Instant::now();
        let r = leases
            .mount(v1::MountRequest {
                holder_key: Vec::new(),
                volume: volume.clone(),
                host_id: host_id.clone(),
                access: v1::Access::ReadWrite as i32,
                ttl_ms,
            })
            .await;
        let us = micros(t.elapsed());
        let lease_id = match r {
            Ok(r) => {
                st.mount.saturating_record(us);
                match r.into_inner().lease {
                    Some(l) => l.lease_id,
                    None => {
                        st.mount_errors += 1;
                        st.note(format!(
                            "mount {volume} as {host_id}: answer without a lease"
                        ));
                        continue;
                    }
                }
            }
            Err(s) if s.code() == Code::FailedPrecondition => {
                st.busy.saturating_record(us);
                continue;
            }
            Err(s) => {
                st.mount_errors += 1;
                st.note(format!("mount {volume} as {host_id}: {}", status_line(&s)));
                // A controller that fails every call fast must not be spun against.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let t = Instant::now();
        match leases.unmount(v1::UnmountRequest { lease_id }).await {
            Ok(_) => st.unmount.saturating_record(micros(t.elapsed())),
            Err(s) => {
                st.unmount_errors += 1;
                st.note(format!(
                    "unmount lease {lease_id} of {volume}: {}",
                    status_line(&s)
                ));
            }
        }
    }
    st
}

/// The TLS configuration of `--cert DIR`, if given.
fn tls_of(
    dir: Option<&std::path::Path>,
) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    Ok(match dir {
        Some(d) => Some(
            dasmesh_api::CertDir::load(d)
                .with_context(|| format!("--cert {}", d.display()))?
                .client_config(),
        ),
        None => None,
    })
}

async fn mounts(a: MountsArgs) -> anyhow::Result<()> {
    let tls = tls_of(a.cert.as_deref())?;
    let parse = |list: &str| {
        Controllers::parse_with(
            list,
            ControllerOptions {
                tls: tls.clone(),
                ..Default::default()
            },
        )
    };
    let ctls = parse(&a.controller)?;
    if a.create {
        let (made, existed) = create_volumes(&ctls, &a).await?;
        println!(
            "volumes {}-0..{}: {made} created, {existed} existed",
            a.prefix, a.volumes
        );
    }
    let ttl_ms = a.ttl.as_millis() as u64;
    let start = Arc::new(Barrier::new(a.hosts as usize + 1));
    let mut tasks = Vec::with_capacity(a.hosts as usize);
    for i in 0..a.hosts {
        // A list of its own per host: its own connections, as separate hosts would have.
        let ctls = parse(&a.controller)?;
        let volume = volume_name(&a.prefix, i, a.volumes);
        tasks.push(tokio::spawn(host(
            i,
            ctls,
            volume,
            ttl_ms,
            a.duration,
            a.rounds,
            Arc::clone(&start),
        )));
    }
    start.wait().await;
    let t0 = Instant::now();
    let mut all = Stats::new();
    for t in tasks {
        all.merge(t.await.context("a host task failed")?);
    }
    let elapsed = t0.elapsed();
    let rows = [
        Row::of("mount", &all.mount, Some(all.mount_errors), elapsed),
        Row::of("unmount", &all.unmount, Some(all.unmount_errors), elapsed),
        Row::of("busy", &all.busy, None, elapsed),
    ];
    println!(
        "{} hosts on {} volumes for {:.1} s against {}",
        a.hosts,
        a.volumes,
        elapsed.as_secs_f64(),
        a.controller
    );
    print!("{}", table(&rows));
    let errors = all.mount_errors + all.unmount_errors;
    if errors > 0 {
        println!("{errors} errors; the first:");
        for e in &all.first_errors {
            println!("  {e}");
        }
    }
    if let Some(path) = &a.json {
        let doc = serde_json::json!({
            "tool": "dasmesh-ctlbench mounts",
            "git_commit": git_commit(),
            "machine": machine(),
            "config": {
                "controller": a.controller,
                "hosts": a.hosts,
                "volumes": a.volumes,
                "duration_s": a.duration.as_secs_f64(),
                "ttl_s": a.ttl.as_secs_f64(),
                "layout": a.layout.to_string(),
                "size_bytes": a.size,
            },
            "elapsed_s": elapsed.as_secs_f64(),
            "ops": rows,
            "errors": errors,
            "first_errors": all.first_errors,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn probe(a: ProbeArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let opts = ControllerOptions {
        connect_timeout: Duration::from_secs(1),
        timeout: Some(Duration::from_secs(2)),
        failover_wait: a.poll.map_or(a.timeout, |_| Duration::ZERO),
        tls: tls_of(a.cert.as_deref())?,
    };
    let ctls = Controllers::parse_with(&a.controller, opts)?;
    let mut leases = LeasesClient::new(ctls);
    let deadline = t0 + a.timeout;
    let mut last = String::from("no attempt");
    let mut attempts = 0u32;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            println!(
                "no mount within {:.3} s ({attempts} attempts); last: {last}",
                a.timeout.as_secs_f64()
            );
            std::process::exit(1);
        }
        attempts += 1;
        let req = v1::MountRequest {
            holder_key: Vec::new(),
            volume: a.volume.clone(),
            host_id: a.host_id.clone(),
            access: v1::Access::ReadOnly as i32,
            ttl_ms: a.ttl.as_millis() as u64,
        };
        match tokio::time::timeout(left, leases.mount(req)).await {
            Ok(Ok(r)) => {
                let took = t0.elapsed();
                println!("first mount after {:.3} s", took.as_secs_f64());
                if let Some(l) = r.into_inner().lease {
                    // The lease would lapse by itself after --ttl; ending it keeps the pool tidy.
                    let un = leases.unmount(v1::UnmountRequest {
                        lease_id: l.lease_id,
                    });
                    if let Err(s) = un.await {
                        eprintln!("unmount lease {}: {}", l.lease_id, status_line(&s));
                    }
                }
                return Ok(());
            }
            Ok(Err(s)) => last = status_line(&s),
            Err(_) => last = "timed out".into(),
        }
        if let Some(p) = a.poll {
            tokio::time::sleep(p.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }
}

/// What one controller is, from the answer to a call it serves only when active.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RoleIs {
    Active,
    Standby,
    Down,
}

impl RoleIs {
    fn of(r: &Result<(), Status>) -> RoleIs {
        match r {
            Ok(()) => RoleIs::Active,
            Err(s)
                if s.code() == Code::Unavailable
                    && s.metadata().get(ROLE_HEADER).is_some_and(|v| v == STANDBY) =>
            {
                RoleIs::Standby
            }
            Err(_) => RoleIs::Down,
        }
    }

    fn word(self) -> &'static str {
        match self {
            RoleIs::Active => "active",
            RoleIs::Standby => "standby",
            RoleIs::Down => "down",
        }
    }
}

async fn role(a: RoleArgs) -> anyhow::Result<()> {
    // A plain channel, not Controllers: that would follow a standby to the active controller.
    let ep = tonic::transport::Endpoint::from_shared(a.controller.clone())
        .with_context(|| format!("--controller {:?}", a.controller))?
        .connect_timeout(a.timeout)
        .timeout(a.timeout);
    let r = match ep.connect().await {
        // A call only the active controller serves (a standby answers reads too): renewing
        // lease 0, which never exists, is refused NOT_FOUND by the active one, changing nothing.
        Ok(ch) => match LeasesClient::new(ch)
            .renew(v1::RenewRequest {
                joined: vec![],
                lease_id: 0,
                ttl_ms: 0,
            })
            .await
        {
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Ok(_) => Ok(()),
            Err(s) => Err(s),
        },
        Err(e) => Err(Status::unavailable(format!("connect: {e}"))),
    };
    let is = RoleIs::of(&r);
    if let (RoleIs::Down, Err(s)) = (is, &r) {
        eprintln!("{}: {}", a.controller, status_line(s));
    }
    println!("{}", is.word());
    Ok(())
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "hostname": read("/proc/sys/kernel/hostname").trim(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_takes_its_defaults_and_units() {
        let c =
            Cli::try_parse_from(["x", "mounts", "--controller", "http://a:1,http://b:2"]).unwrap();
        let Cmd::Mounts(m) = c.cmd else {
            panic!("not mounts")
        };
        assert_eq!((m.hosts, m.volumes), (100, 100));
        assert_eq!(m.duration, Duration::from_secs(10));
        assert_eq!(m.ttl, Duration::from_secs(60));
        assert_eq!(m.size, 4 << 20);
        assert_eq!(m.layout, Layout::Single);
        assert!(!m.create && m.json.is_none());

        let c = Cli::try_parse_from([
            "x",
            "mounts",
            "--hosts",
            "7",
            "--volumes",
            "3",
            "--duration",
            "250ms",
            "--create",
            "--size",
            "1G",
            "--layout",
            "mirror:2",
        ])
        .unwrap();
        let Cmd::Mounts(m) = c.cmd else {
            panic!("not mounts")
        };
        assert_eq!((m.hosts, m.volumes, m.size), (7, 3, 1 << 30));
        assert_eq!(m.duration, Duration::from_millis(250));
        assert_eq!(m.layout, Layout::Mirror { copies: 2 });
        assert!(m.create);
        assert_eq!(volume_name(&m.prefix, 5, m.volumes), "ctlbench-2");

        for bad in [
            &["x", "mounts", "--hosts", "0"][..],
            &["x", "mounts", "--duration", "10"],
            &["x", "mounts", "--layout", "pyramid"],
            &["x", "probe"],
            &["x", "role"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn probe_and_role_parse() {
        let c = Cli::try_parse_from(["x", "probe", "--volume", "v", "--timeout", "3s"]).unwrap();
        let Cmd::Probe(p) = c.cmd else {
            panic!("not probe")
        };
        assert_eq!(
            (p.volume.as_str(), p.timeout),
            ("v", Duration::from_secs(3))
        );
        assert_eq!((p.ttl, p.poll), (Duration::from_secs(5), None));
        let c = Cli::try_parse_from(["x", "role", "--controller", "http://a:1"]).unwrap();
        let Cmd::Role(r) = c.cmd else {
            panic!("not role")
        };
        assert_eq!(r.timeout, Duration::from_secs(1));
    }

    #[test]
    fn rows_are_in_ms_and_the_table_lines_up() {
        let mut h = histogram();
        // 2 µs .. 2 ms: below 2048 a histogram of 3 digits holds every value exactly.
        for us in 1..=1000u64 {
            h.record(us * 2).unwrap();
        }
        let r = Row::of("mount", &h, Some(2), Duration::from_secs(2));
        assert_eq!(r.count, 1000);
        assert_eq!(r.rate_per_s, 500.0);
        assert_eq!(
            (r.p50_ms, r.p99_ms, r.max_ms),
            (Some(1.0), Some(1.98), Some(2.0))
        );
        let empty = Row::of("busy", &histogram(), None, Duration::from_secs(2));
        assert_eq!((empty.count, empty.p99_ms), (0, None));

        let t = table(&[r, empty]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{t}");
        assert!(
            lines[0].starts_with("op ") && lines[0].ends_with("errors"),
            "{t}"
        );
        let mount: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            mount,
            ["mount", "1000", "500.0", "1.00", "1.80", "1.98", "2.00", "2.00", "2"],
            "{t}"
        );
        let busy: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            busy,
            ["busy", "0", "0.0", "-", "-", "-", "-", "-", "-"],
            "{t}"
        );
    }

    #[test]
    fn a_standby_is_told_from_a_dead_one() {
        assert_eq!(RoleIs::of(&Ok(())), RoleIs::Active);
        let mut s = Status::unavailable("standby controller");
        s.metadata_mut().insert(
            ROLE_HEADER,
            tonic::metadata::MetadataValue::from_static(STANDBY),
        );
        assert_eq!(RoleIs::of(&Err(s)), RoleIs::Standby);
        assert_eq!(
            RoleIs::of(&Err(Status::unavailable("connect: refused"))),
            RoleIs::Down
        );
        // A controller that lost etcd answers UNAVAILABLE without the header: not serving.
        assert_eq!(RoleIs::of(&Err(Status::unavailable("etcd"))), RoleIs::Down);
    }

    #[test]
    fn merged_stats_keep_only_the_first_errors() {
        let mut a = Stats::new();
        for i in 0..4 {
            a.note(format!("a{i}"));
        }
        let mut b = Stats::new();
        b.mount_errors = 3;
        b.mount.record(7).unwrap();
        for i in 0..4 {
            b.note(format!("b{i}"));
        }
        a.merge(b);
        assert_eq!(a.first_errors, ["a0", "a1", "a2", "a3", "b0"]);
        assert_eq!((a.mount_errors, a.mount.len()), (3, 1));
    }
}
