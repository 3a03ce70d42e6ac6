//! The qualification report: per device, what it is and each check's outcome with its details,
//! then a verdict. As text for people and as JSON (`--json`) for machines.

use std::fmt::Write;

use serde::Serialize;

use crate::checks::{CheckResult, Outcome};
use crate::device::Geometry;

/// The report on one device.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceReport {
    /// The device path at the start of the run.
    pub device: String,
    /// What it is: an operator's device, or a loop device this run made.
    pub origin: String,
    /// The kernel's geometry.
    pub kernel: Geometry,
    /// Each check's result, in run order.
    pub results: Vec<CheckResult>,
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `dasmesh-hwtest` and its version.
    pub tool: String,
    /// The kernel release.
    pub kernel: String,
    /// CPUs online.
    pub cores: usize,
    /// One per device.
    pub devices: Vec<DeviceReport>,
    /// Checks passed, over all devices.
    pub passed: usize,
    /// Checks failed.
    pub failed: usize,
    /// Checks skipped.
    pub skipped: usize,
    /// Every check that ran passed (skips do not count against it).
    pub qualified: bool,
}

impl Report {
    /// A report over these devices, with the totals.
    pub fn new(devices: Vec<DeviceReport>) -> Report {
        let count = |o: Outcome| {
            devices
                .iter()
                .flat_map(|d| &d.results)
                .filter(|r| r.outcome == o)
                .count()
        };
        let (passed, failed, skipped) = (
            count(Outcome::Pass),
            count(Outcome::Fail),
            count(Outcome::Skip),
        );
        Report {
            tool: format!("dasmesh-hwtest {}", env!("CARGO_PKG_VERSION")),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            devices,
            passed,
            failed,
            skipped,
            qualified: failed == 0 && passed > 0,
        }
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: kernel {}, {} cores",
            self.tool, self.kernel, self.cores
        );
        for d in &self.devices {
            let _ = writeln!(s, "\n{}: {}", d.device, d.origin);
            let _ = writeln!(
                s,
                "  kernel: {} B logical / {} B physical sectors, {} ({} B)",
                d.kernel.logical,
                d.kernel.physical,
                dasmesh_wire::units::format_size(d.kernel.size),
                d.kernel.size
            );
            for r in &d.results {
                let _ = writeln!(
                    s,
                    "  {}  {:<11} {}  ({:.2} s)",
                    r.outcome.label(),
                    r.check,
                    r.summary,
                    r.seconds
                );
                for l in &r.details {
                    let _ = writeln!(s, "          {l}");
                }
            }
            let n = |o: Outcome| d.results.iter().filter(|r| r.outcome == o).count();
            let _ = writeln!(
                s,
                "  {} passed, {} failed, {} skipped",
                n(Outcome::Pass),
                n(Outcome::Fail),
                n(Outcome::Skip)
            );
        }
        let failed: Vec<String> = self
            .devices
            .iter()
            .flat_map(|d| {
                d.results
                    .iter()
                    .filter(|r| r.outcome == Outcome::Fail)
                    .map(move |r| format!("{} on {}", r.check, d.device))
            })
            .collect();
        let _ = write!(s, "\nverdict: ");
        if self.qualified {
            let _ = writeln!(
                s,
                "QUALIFIED ({} checks passed{})",
                self.passed,
                if self.skipped > 0 {
                    format!(", {} skipped: see SKIP lines for why", self.skipped)
                } else {
                    String::new()
                }
            );
        } else if failed.is_empty() {
            let _ = writeln!(s, "NOT QUALIFIED (no check could run here)");
        } else {
            let _ = writeln!(s, "NOT QUALIFIED: {} failed", failed.join(", "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(check: &'static str, outcome: Outcome) -> CheckResult {
        CheckResult {
            check,
            outcome,
            summary: format!("{check} summary"),
            details: vec!["a detail".into()],
            seconds: 0.5,
            data: None,
        }
    }

    fn device(results: Vec<CheckResult>) -> DeviceReport {
        DeviceReport {
            device: "/dev/loop9".into(),
            origin: "test".into(),
            kernel: Geometry {
                logical: 512,
                physical: 4096,
                size: 64 << 20,
            },
            results,
        }
    }

    #[test]
    fn a_failure_names_itself_in_the_verdict() {
        let r = Report::new(vec![device(vec![
            result("geometry", Outcome::Pass),
            result("zeroes", Outcome::Fail),
            result("perf", Outcome::Skip),
        ])]);
        assert_eq!((r.passed, r.failed, r.skipped), (1, 1, 1));
        assert!(!r.qualified);
        let t = r.text();
        assert!(t.contains("  FAIL  zeroes      zeroes summary"), "{t}");
        assert!(t.contains("          a detail"), "{t}");
        assert!(
            t.contains("512 B logical / 4096 B physical sectors, 64M"),
            "{t}"
        );
        assert!(
            t.contains("verdict: NOT QUALIFIED: zeroes on /dev/loop9 failed"),
            "{t}"
        );
    }

    #[test]
    fn skips_do_not_fail_but_are_mentioned_and_nothing_run_is_not_a_pass() {
        let r = Report::new(vec![device(vec![
            result("geometry", Outcome::Pass),
            result("perf", Outcome::Skip),
        ])]);
        assert!(r.qualified);
        assert!(r.text().contains("QUALIFIED (1 checks passed, 1 skipped"));
        let none = Report::new(vec![device(vec![result("perf", Outcome::Skip)])]);
        assert!(!none.qualified);
        assert!(none.text().contains("no check could run here"));
        let j = serde_json::to_value(&none).unwrap();
        assert_eq!(j["devices"][0]["results"][0]["outcome"], "skip");
    }
}
