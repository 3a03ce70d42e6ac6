//! The performance profile: `dasmesh-bench` with the device itself (`local:DEV`, io_uring and
//! O_DIRECT, the baseline) and the node serving it (`node:ADDR`) as targets of one run, for a
//! sequential and a random workload each way. Short runs: a profile, not a benchmark.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::node::find_bin;
use crate::{Error, Result};

/// One workload of the profile.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// `dasmesh-bench --rw`.
    pub rw: &'static str,
    /// Block size in bytes.
    pub bs: u64,
    /// Requests in flight.
    pub iodepth: usize,
}

/// The profile: sequential 1 MiB writes then reads, random 4 KiB writes then reads (random I/O
/// is done in blocks of the device's sector size when that is larger than 4 KiB).
pub fn workloads(block: u32) -> Vec<Workload> {
    let small = u64::from(block).max(4096);
    vec![
        Workload {
            rw: "write",
            bs: 1 << 20,
            iodepth: 8,
        },
        Workload {
            rw: "read",
            bs: 1 << 20,
            iodepth: 8,
        },
        Workload {
            rw: "randwrite",
            bs: small,
            iodepth: 32,
        },
        Workload {
            rw: "randread",
            bs: small,
            iodepth: 32,
        },
    ]
}

/// One target's figures for one workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// Access pattern.
    pub rw: String,
    /// Block size in bytes.
    pub bs: u64,
    /// Requests in flight.
    pub iodepth: usize,
    /// `local:DEV` or `node:ADDR`.
    pub target: String,
    /// Completions per second.
    pub iops: f64,
    /// Throughput.
    pub mib_s: f64,
    /// Median completion latency.
    pub p50_us: f64,
    /// 99th percentile completion latency.
    pub p99_us: f64,
    /// IOPS over the device's own (local) figure.
    pub ratio: f64,
    /// Failed requests.
    pub errors: u64,
}

#[derive(Deserialize)]
struct BenchOut {
    results: Vec<BenchResult>,
}

#[derive(Deserialize)]
struct BenchResult {
    target: String,
    rw: String,
    bs: u64,
    iodepth: usize,
    iops: f64,
    mib_s: f64,
    lat_us: BenchLat,
    ratio_to_baseline: f64,
    errors: u64,
}

#[derive(Deserialize)]
struct BenchLat {
    p50: f64,
    p99: f64,
}

/// Runs `w` against the device and the node (token text in `token`); `runtime` per target.
pub fn run(
    dev: &Path,
    addr: &str,
    token: &str,
    w: Workload,
    runtime: Duration,
) -> Result<Vec<Row>> {
    let dir = tempfile::tempdir().map_err(Error::io("perf temp dir"))?;
    let tok = dir.path().join("token");
    let json = dir.path().join("bench.json");
    std::fs::write(&tok, token).map_err(Error::io("write token file"))?;
    let ramp = (runtime / 10).max(Duration::from_millis(100));
    let mut cmd = Command::new(find_bin("dasmesh-bench")?);
    cmd.arg("--target")
        .arg(format!("local:{}", dev.display()))
        .arg("--target")
        .arg(format!("node:{addr}"))
        .arg("--token")
        .arg(&tok)
        .args(["--rw", w.rw, "--bs", &w.bs.to_string()])
        .args(["--iodepth", &w.iodepth.to_string()])
        .args([
            "--runtime",
            &humantime::format_duration(runtime).to_string(),
        ])
        .args(["--ramp", &humantime::format_duration(ramp).to_string()])
        .arg("--json")
        .arg(&json)
        // The checks before this one have already decided the device may be overwritten.
        .args(["--no-progress", "--destroy-data"]);
    let out = cmd.output().map_err(Error::io("run dasmesh-bench"))?;
    let parsed: Option<BenchOut> = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(parsed) = parsed else {
        return Err(Error::Command {
            command: format!("dasmesh-bench --rw {} --bs {}", w.rw, w.bs),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    };
    Ok(parsed
        .results
        .into_iter()
        .map(|r| Row {
            rw: r.rw,
            bs: r.bs,
            iodepth: r.iodepth,
            target: r.target,
            iops: r.iops,
            mib_s: r.mib_s,
            p50_us: r.lat_us.p50,
            p99_us: r.lat_us.p99,
            ratio: r.ratio_to_baseline,
            errors: r.errors,
        })
        .collect())
}

/// The profile as table lines.
pub fn table(rows: &[Row]) -> Vec<String> {
    let mut v = vec![format!(
        "{:<18} {:<7} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "workload", "target", "IOPS", "MiB/s", "p50 us", "p99 us", "ratio"
    )];
    for r in rows {
        let target = if r.target.starts_with("local:") {
            "device"
        } else {
            "node"
        };
        v.push(format!(
            "{:<18} {:<7} {:>9.0} {:>9.1} {:>9.1} {:>9.1} {:>6.2}",
            format!(
                "{} {} qd{}",
                r.rw,
                dasmesh_wire::units::format_size(r.bs),
                r.iodepth
            ),
            target,
            r.iops,
            r.mib_s,
            r.p50_us,
            r.p99_us,
            r.ratio
        ));
    }
    v
}
