//! `dasmesh-hwtest`: qualifies block devices for dasmesh and prints a report. By default on two
//! loop devices it makes itself (512- and 4096-byte sectors, removed afterwards); with `--device`
//! on a device the operator names, which it overwrites (and refuses to, while the device is in
//! use or holds a signature, unless `--destroy-data`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use hw_tests::checks::Check;
use hw_tests::report::{DeviceReport, Report};
use hw_tests::rig::{Options, Rig};
use hw_tests::{device, Outcome};

/// Qualifies raw block devices for dasmesh: sector sizes, O_DIRECT, io_uring, flush durability
/// across a crash, discard and zeroing, the device's edges, a full verify pass, the node and
/// client end to end, and a short performance profile. Prints a report (--json for machines).
///
/// Without --device it makes two loop devices over sparse files (512- and 4096-byte sectors,
/// direct I/O on) and removes them afterwards: this needs root.
///
/// Example: dasmesh-hwtest --device /dev/loop3
#[derive(Parser, Debug)]
#[command(name = "dasmesh-hwtest", version, verbatim_doc_comment, after_long_help = AFTER_HELP)]
struct Args {
    /// A block device to qualify (repeatable). ITS DATA IS OVERWRITTEN.
    #[arg(long = "device", value_name = "PATH")]
    devices: Vec<PathBuf>,
    /// Overwrite a device that holds a filesystem, partition table or other signature.
    #[arg(long)]
    destroy_data: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Run only these checks (repeatable): io-uring, geometry, direct-io, alignment, edges,
    /// zeroes, flush-crash, verify, end-to-end, perf.
    #[arg(long = "check", value_name = "NAME", value_parser = check_arg)]
    checks: Vec<String>,
    /// Size of each loop device made when no --device is given.
    #[arg(long, default_value = "64M", value_parser = size_arg)]
    loop_size: u64,
    /// Measured time per target and workload of the performance profile.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    perf_runtime: Duration,
    /// Leave out the performance profile.
    #[arg(long)]
    no_perf: bool,
    /// The full verify pass runs on devices up to this size, and is skipped above it.
    #[arg(long, default_value = "1G", value_parser = size_arg)]
    verify_limit: u64,
}

const AFTER_HELP: &str = "\
Report: per device, one line per check (PASS, FAIL or SKIP with the reason), the details below it,
then a verdict: QUALIFIED when every check that ran passed. A SKIP means the check could not run
here (not root, no io_uring, turned off), never that it passed.

A device that is mounted, held by device mapper or md, or an active swap area is always refused.

Exit status: 0 qualified; 1 a check failed; 2 bad usage, a refused device, or nothing could run.
More: hw-tests/README.md.";

fn size_arg(s: &str) -> Result<u64, String> {
    dasmesh_wire::units::parse_size(s).map_err(|e| e.to_string())
}

fn check_arg(s: &str) -> Result<String, String> {
    Check::from_name(s)
        .map(|c| c.name().to_string())
        .ok_or_else(|| {
            let names: Vec<&str> = Check::ALL.iter().map(|c| c.name()).collect();
            format!("unknown check {s:?}; one of {}", names.join(", "))
        })
}

/// Refuses a device that must not be overwritten, saying why.
fn admit(dev: &std::path::Path, destroy: bool) -> anyhow::Result<()> {
    let u = device::usage(dev).with_context(|| format!("inspecting {}", dev.display()))?;
    if let Some(why) = u.in_use() {
        bail!(
            "refusing {}: {why}. Qualifying overwrites the device; free it first",
            dev.display()
        );
    }
    if let Err(e) = device::exclusive_open(dev) {
        bail!(
            "refusing {}: something holds it exclusively ({e})",
            dev.display()
        );
    }
    if let Some(sig) = u.signature {
        if !destroy {
            bail!(
                "refusing {}: it holds data ({sig}, found by blkid). Qualifying overwrites the \
                 device; add --destroy-data if that is what you want",
                dev.display()
            );
        }
        eprintln!(
            "{}: holds {sig}; overwriting it (--destroy-data)",
            dev.display()
        );
    }
    Ok(())
}

fn run_checks(rig: &mut Rig, origin: String, checks: &[Check]) -> DeviceReport {
    let device = rig.device().display().to_string();
    let kernel = rig.kernel;
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut results = Vec::new();
    for c in checks {
        if progress {
            eprint!("{device}: {} ...", c.name());
        }
        let r = c.run(rig);
        if progress {
            eprintln!(" {}", r.outcome.label());
        }
        results.push(r);
    }
    let origin = if rig.device().display().to_string() != device {
        format!("{origin}; reattached as {}", rig.device().display())
    } else {
        origin
    };
    DeviceReport {
        device,
        origin,
        kernel,
        results,
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("dasmesh-hwtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let a = Args::parse();
    let checks: Vec<Check> = if a.checks.is_empty() {
        Check::ALL.to_vec()
    } else {
        Check::ALL
            .into_iter()
            .filter(|c| a.checks.iter().any(|n| n == c.name()))
            .collect()
    };
    let opts = Options {
        perf_runtime: (!a.no_perf).then_some(a.perf_runtime),
        verify_limit: a.verify_limit,
    };
    hw_tests::env::tools_present().map_err(|s| anyhow::anyhow!("{s}"))?;
    let mut reports = Vec::new();
    if a.devices.is_empty() {
        for sector in [512u32, 4096] {
            let mut rig = Rig::on_loop(a.loop_size, sector, opts.clone()).map_err(|s| {
                anyhow::anyhow!(
                    "cannot make a loop device ({s}); run as root, or name a device with --device"
                )
            })?;
            let origin = format!(
                "loop device over a sparse {} file, {sector}-byte sectors, made for this run and removed after it",
                dasmesh_wire::units::format_size(a.loop_size)
            );
            reports.push(run_checks(&mut rig, origin, &checks));
        }
    } else {
        // Every device is admitted before any is touched.
        for d in &a.devices {
            admit(d, a.destroy_data)?;
        }
        for d in &a.devices {
            let mut rig = Rig::on_device(d, opts.clone())
                .with_context(|| format!("opening {}", d.display()))?;
            reports.push(run_checks(
                &mut rig,
                "named by the operator".into(),
                &checks,
            ));
        }
    }
    let report = Report::new(reports);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    let ran = report
        .devices
        .iter()
        .flat_map(|d| &d.results)
        .any(|r| r.outcome != Outcome::Skip);
    if !ran {
        bail!("no check could run here: see the SKIP lines for why");
    }
    Ok(report.qualified)
}
