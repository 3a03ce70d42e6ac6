//! Results: the terminal table, the JSON document, and the SVG of latency percentile curves.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Lat {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

impl Lat {
    /// From a histogram in nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |q: f64| round1(h.value_at_quantile(q) as f64 / 1000.0);
        Self {
            p50: us(0.5),
            p90: us(0.9),
            p99: us(0.99),
            p999: us(0.999),
            max: round1(h.max() as f64 / 1000.0),
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Verify-mode counts.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// Blocks read back and found right.
    pub verified: u64,
    /// Blocks read that no verify run had written.
    pub unwritten: u64,
    /// Blocks read back wrong.
    pub mismatches: u64,
    /// The first wrong block.
    pub first_mismatch: Option<String>,
}

/// One target's figures.
#[derive(Clone, Debug, Serialize)]
pub struct TargetResult {
    /// The target as given.
    pub target: String,
    /// Access pattern.
    pub rw: String,
    /// Block size in bytes.
    pub bs: u64,
    /// Requests in flight per job.
    pub iodepth: usize,
    /// Jobs.
    pub numjobs: usize,
    /// Completions per second.
    pub iops: f64,
    /// Throughput.
    pub mib_s: f64,
    /// Completion latency.
    pub lat_us: Lat,
    /// IOPS over the first target's (the baseline); 1.0 for the baseline itself.
    pub ratio_to_baseline: f64,
    /// MiB/s per second of the measured window.
    pub timeline_mib_s: Vec<f64>,
    /// Failed requests.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Verify counts, in verify mode.
    pub verify: Option<VerifyReport>,
    /// Cumulative latency distribution for the plot: (percentile, microseconds).
    #[serde(skip)]
    pub curve: Vec<(f64, f64)>,
    /// CPU time (user + system) of this process, every thread of it, over the measured window
    /// per I/O completed in it, in microseconds: what the client side costs. None when the run
    /// stopped early or completed nothing.
    pub cpu_us_per_io: Option<f64>,
    /// The same for the process of `--cpu-pid` (e.g. the node), in microseconds.
    pub pid_cpu_us_per_io: Option<f64>,
}

/// The terminal table.
pub fn table(results: &[TargetResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<34} {:>10} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>9}",
        "target",
        "IOPS",
        "MiB/s",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "ratio",
        "cpu us/io"
    );
    for r in results {
        let _ = writeln!(
            s,
            "{:<34} {:>10.0} {:>9.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>7.2} {:>9}",
            truncate(&r.target, 34),
            r.iops,
            r.mib_s,
            r.lat_us.p50,
            r.lat_us.p90,
            r.lat_us.p99,
            r.lat_us.p999,
            r.lat_us.max,
            r.ratio_to_baseline,
            r.cpu_us_per_io
                .map(|c| format!("{c:.1}"))
                .unwrap_or_else(|| "-".into())
        );
        if let Some(cpu) = r.pid_cpu_us_per_io {
            let _ = writeln!(s, "  CPU of --cpu-pid: {cpu:.1} us per I/O");
        }
        if r.errors > 0 {
            let _ = writeln!(
                s,
                "  {} errors; first: {}",
                r.errors,
                r.first_error.as_deref().unwrap_or("?")
            );
        }
        if let Some(v) = &r.verify {
            let _ = writeln!(
                s,
                "  verify: {} good, {} never written, {} MISMATCHED{}",
                v.verified,
                v.unwritten,
                v.mismatches,
                v.first_mismatch
                    .as_deref()
                    .map(|m| format!(" (first: {m})"))
                    .unwrap_or_default()
            );
        }
    }
    s
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("...{}", &s[s.len() - (n - 3)..])
    }
}

/// The percentile curve of a histogram, from p0 to the max.
pub fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut pts = Vec::new();
    let mut p = 0.0f64;
    while p < 99.9999 {
        pts.push((p, h.value_at_quantile(p / 100.0) as f64 / 1000.0));
        // Denser toward the tail: step a tenth of the remaining distance to 100.
        p += ((100.0 - p) / 10.0).max(0.0001);
    }
    pts.push((100.0, h.max() as f64 / 1000.0));
    pts
}

/// An SVG of every target's latency percentile curve (x: percentile on a "nines" scale, y: log us).
pub fn svg(results: &[TargetResult], title: &str) -> String {
    let (w, h, ml, mr, mt, mb) = (900.0, 520.0, 70.0, 220.0, 40.0, 60.0);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let nines = |p: f64| -(1.0 - p / 100.0).max(1e-6).log10(); // 0 at p0, 1 at p90, 2 at p99 ...
    let xmax = 6.0;
    let (mut ymin, mut ymax) = (f64::MAX, 0.0f64);
    for r in results {
        for (_, us) in &r.curve {
            ymin = ymin.min(us.max(0.1));
            ymax = ymax.max(*us);
        }
    }
    if ymax <= 0.0 {
        ymin = 1.0;
        ymax = 10.0;
    }
    let (ly0, ly1) = (
        ymin.log10().floor(),
        ymax.log10().ceil().max(ymin.log10().floor() + 1.0),
    );
    let x = |p: f64| ml + pw * (nines(p) / xmax).min(1.0);
    let y = |us: f64| mt + ph * (1.0 - (us.max(0.1).log10() - ly0) / (ly1 - ly0));
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        ml + pw / 2.0,
        esc(title)
    );
    for (i, label) in ["p0", "p90", "p99", "p99.9", "p99.99", "p99.999", "max"]
        .iter()
        .enumerate()
    {
        let xx = ml + pw * i as f64 / xmax;
        let _ = writeln!(
            s,
            r##"<line x1="{xx}" y1="{mt}" x2="{xx}" y2="{}" stroke="#ddd"/><text x="{xx}" y="{}" text-anchor="middle">{label}</text>"##,
            mt + ph,
            mt + ph + 18.0
        );
    }
    let mut e = ly0;
    while e <= ly1 {
        let yy = y(10f64.powf(e));
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" y1="{yy}" x2="{}" y2="{yy}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            ml + pw,
            ml - 6.0,
            yy + 4.0,
            fmt_us(10f64.powf(e))
        );
        e += 1.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        ml + pw / 2.0,
        h - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" transform="rotate(-90 18 {})" text-anchor="middle">completion latency</text>"#,
        mt + ph / 2.0,
        mt + ph / 2.0
    );
    for (i, r) in results.iter().enumerate() {
        let c = colors[i % colors.len()];
        let pts: Vec<String> = r
            .curve
            .iter()
            .map(|(p, us)| format!("{:.1},{:.1}", x(*p), y(*us)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        let ly = mt + 16.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            w - mr + 10.0,
            w - mr + 30.0,
            w - mr + 35.0,
            ly + 4.0,
            esc(&truncate(&r.target, 28))
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{} ms", us / 1000.0)
    } else {
        format!("{us} us")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
