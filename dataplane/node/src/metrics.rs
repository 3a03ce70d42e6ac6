//! The node's `/metrics` (Prometheus text format 0.0.4), served on `--metrics ADDR` by a thread
//! of its own (docs/node.md, "Metrics").
//!
//! Nothing is shared on the I/O path: each reactor counts in plain integers of its own
//! ([`ReactorStats`]) and copies them into its slot of [`Metrics`] every 100 ms, under a lock
//! only it and a scrape take. A request's latency is taken from the reactor loop's clock, read
//! once per turn of the loop, not per request: its resolution is one turn (microseconds under
//! load), its cost nothing per request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dasmesh_wire::{Op, Status};

use crate::Shared;

/// Upper bounds of the latency buckets, microseconds.
pub const LATENCY_US: [u64; 14] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
];

/// One device as one reactor saw it (cumulative).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceStats {
    /// Requests completed: reads (and searches), writes (and write-zeroes), others (flush,
    /// discard).
    pub ops: [u64; 3],
    /// Bytes read and written.
    pub bytes: [u64; 2],
    /// Requests that ended with a status other than Ok, by status code.
    pub errors: BTreeMap<u16, u64>,
    /// Requests by latency bucket ([`LATENCY_US`], then one past the last).
    pub latency: [u64; LATENCY_US.len() + 1],
    /// Sum of the latencies, microseconds.
    pub latency_sum_us: u64,
    /// Requests in flight at the last copy.
    pub inflight: u64,
}

impl DeviceStats {
    /// Counts a completed request.
    pub fn record(&mut self, op: Op, status: Status, len: u64, latency_us: u64) {
        if status != Status::Ok {
            *self.errors.entry(status.code()).or_default() += 1;
        }
        let (class, bytes) = match op {
            Op::Read | Op::Search => (0, Some(0)),
            Op::Write | Op::WriteZeroes => (1, Some(1)),
            Op::Flush | Op::Discard => (2, None),
        };
        self.ops[class] += 1;
        if let (Some(b), Status::Ok) = (bytes, status) {
            self.bytes[b] += len;
        }
        let i = LATENCY_US
            .iter()
            .position(|b| latency_us <= *b)
            .unwrap_or(LATENCY_US.len());
        self.latency[i] += 1;
        self.latency_sum_us += latency_us;
    }

    /// Adds `o`'s counts to these.
    pub fn add(&mut self, o: &DeviceStats) {
        for (a, b) in self.ops.iter_mut().zip(o.ops) {
            *a += b;
        }
        for (a, b) in self.bytes.iter_mut().zip(o.bytes) {
            *a += b;
        }
        for (k, v) in &o.errors {
            *self.errors.entry(*k).or_default() += v;
        }
        for (a, b) in self.latency.iter_mut().zip(o.latency) {
            *a += b;
        }
        self.latency_sum_us += o.latency_sum_us;
        self.inflight += o.inflight;
    }
}

/// How long a lease that answered nothing more and has no connection open is still shown.
pub const LEASE_SHOWN_MS: u64 = 600_000;
/// The most leases one reactor shows; past it, the one idle longest is forgotten.
pub const LEASES_SHOWN: usize = 1024;

/// One lease as one reactor saw it (cumulative over its connections there).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LeaseStats {
    /// Its requests.
    pub stats: DeviceStats,
    /// When it last answered a request or had a connection open here, ms of the reactor clock.
    pub seen_ms: u64,
}

/// What one reactor counted (cumulative).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReactorStats {
    /// By device index.
    pub devices: Vec<DeviceStats>,
    /// By lease id (the token's nonce).
    pub leases: std::collections::HashMap<u64, LeaseStats>,
    /// Time not spent waiting for work, ns (spinning counts as busy: it burns the core).
    pub busy_ns: u64,
}

/// Every reactor's latest copy.
#[derive(Debug)]
pub struct Metrics {
    reactors: Vec<Mutex<ReactorStats>>,
}

impl Metrics {
    /// Slots for `reactors` reactors.
    pub fn new(reactors: usize) -> Self {
        Metrics {
            reactors: (0..reactors).map(|_| Mutex::default()).collect(),
        }
    }

    /// Reactor `id`'s copy of what it counted.
    pub fn publish(&self, id: usize, s: &ReactorStats) {
        if let Some(slot) = self.reactors.get(id) {
            slot.lock().unwrap_or_else(|e| e.into_inner()).clone_from(s);
        }
    }
}

/// The metrics text.
pub fn render(shared: &Shared) -> String {
    let Some(m) = &shared.metrics else {
        return String::new();
    };
    let mut devices: Vec<DeviceStats> = vec![DeviceStats::default(); shared.backends.len()];
    let mut busy = Vec::new();
    for r in &m.reactors {
        let r = r.lock().unwrap_or_else(|e| e.into_inner());
        for (d, s) in devices.iter_mut().zip(&r.devices) {
            d.add(s);
        }
        busy.push(r.busy_ns);
    }
    let mut out = String::new();
    let dev = |i: usize| shared.backends[i].id.0;
    let rows: Vec<(String, &DeviceStats)> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("device=\"{}\"", dev(i)), d))
        .collect();
    write_stats(&mut out, "dasmesh_node", "device", &rows);
    family(
        &mut out,
        "dasmesh_node_reactor_busy_seconds_total",
        "counter",
        "Time each reactor was not waiting for work (its rate is the busy fraction)",
    );
    for (i, b) in busy.iter().enumerate() {
        let _ = writeln!(
            out,
            "dasmesh_node_reactor_busy_seconds_total{{reactor=\"{i}\"}} {}",
            *b as f64 / 1e9
        );
    }
    // Per volume extent in use (the scheduler's entries; none with --no-qos).
    let mut rows = shared.qos.totals();
    rows.sort_by_key(|(k, ..)| (k.device, k.offset));
    let labels: Vec<String> = rows
        .iter()
        .map(|(k, ..)| {
            let owner = match k.owner {
                crate::qos::Owner::Volume(v) => format!("volume=\"{v}\""),
                crate::qos::Owner::Token(t) => format!("volume=\"0\",token=\"{t}\""),
            };
            format!(
                "{owner},device=\"{}\",offset=\"{}\"",
                dev(k.device),
                k.offset
            )
        })
        .collect();
    let per_volume: [Family<Totals>; 4] = [
        ("dasmesh_node_volume_requests_total", "counter", "Reads, writes and searches started per volume extent in use, every lease of it together", |r| r.1 as f64),
        ("dasmesh_node_volume_bytes_total", "counter", "Their bytes", |r| r.2 as f64),
        ("dasmesh_node_volume_iops", "gauge", "Operations a second each volume extent got lately (the scheduler's view; docs/qos.md)", |r| r.3),
        ("dasmesh_node_volume_bytes_per_second", "gauge", "Bytes a second each volume extent got lately", |r| r.4),
    ];
    for (name, kind, help, value) in per_volume {
        family(&mut out, name, kind, help);
        for (l, r) in labels.iter().zip(&rows) {
            let _ = writeln!(out, "{name}{{{l}}} {}", value(r));
        }
    }
    // Per lease (its id, which its tokens carry), while any of its connections is open or it
    // answered a request in the last [`LEASE_SHOWN_MS`].
    let mut leases: BTreeMap<u64, DeviceStats> = BTreeMap::new();
    for r in &m.reactors {
        let r = r.lock().unwrap_or_else(|e| e.into_inner());
        for (lease, l) in &r.leases {
            leases.entry(*lease).or_default().add(&l.stats);
        }
    }
    let rows: Vec<(String, &DeviceStats)> = leases
        .iter()
        .map(|(lease, d)| (format!("lease=\"{lease}\""), d))
        .collect();
    write_stats(&mut out, "dasmesh_node_lease", "lease", &rows);
    // The rebuilds this node runs (a mirror copy's new extent filled from a healthy copy).
    let rebuilds = shared
        .rebuilds
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let name = "dasmesh_node_rebuild_bytes";
    family(
        &mut out,
        name,
        "gauge",
        "Each extent this node rebuilds: bytes copied (durable, from its start) and all of it",
    );
    for r in &rebuilds {
        let l = format!(
            "volume=\"{}\",device=\"{}\",offset=\"{}\"",
            r.volume,
            dev(r.device as usize),
            r.offset
        );
        let done = r
            .done
            .load(std::sync::atomic::Ordering::Acquire)
            .min(r.length);
        let _ = writeln!(out, "{name}{{{l},of=\"copied\"}} {done}");
        let _ = writeln!(out, "{name}{{{l},of=\"all\"}} {}", r.length);
    }
    out
}

/// One row of [`crate::qos::Qos::totals`].
type Totals = (crate::qos::Key, u64, u64, f64, f64);
/// A family written from rows of `T`: name, type, help, and each row's value.
type Family<T> = (&'static str, &'static str, &'static str, fn(&T) -> f64);

/// The request families of `rows` (each a label, `device="0"` or `lease="7"`, and its
/// counts), named `{prefix}_requests_total` and so on, by `what` in their help.
fn write_stats(out: &mut String, prefix: &str, what: &str, rows: &[(String, &DeviceStats)]) {
    let name = format!("{prefix}_requests_total");
    let help = format!("Requests completed (refused ones included), by {what} and op class");
    family(out, &name, "counter", &help);
    for (l, d) in rows {
        for (class, n) in ["read", "write", "other"].iter().zip(d.ops) {
            let _ = writeln!(out, "{name}{{{l},op=\"{class}\"}} {n}");
        }
    }
    let name = format!("{prefix}_bytes_total");
    family(
        out,
        &name,
        "counter",
        &format!("Bytes read and written, by {what}"),
    );
    for (l, d) in rows {
        for (dir, n) in ["read", "write"].iter().zip(d.bytes) {
            let _ = writeln!(out, "{name}{{{l},direction=\"{dir}\"}} {n}");
        }
    }
    let name = format!("{prefix}_errors_total");
    let help = format!("Requests that failed, by {what} and status");
    family(out, &name, "counter", &help);
    for (l, d) in rows {
        for (code, n) in &d.errors {
            let status =
                Status::from_code(*code).map_or_else(|| code.to_string(), |s| format!("{s:?}"));
            let _ = writeln!(out, "{name}{{{l},status=\"{status}\"}} {n}");
        }
    }
    let name = format!("{prefix}_inflight");
    family(
        out,
        &name,
        "gauge",
        &format!("Requests in flight, by {what}"),
    );
    for (l, d) in rows {
        let _ = writeln!(out, "{name}{{{l}}} {}", d.inflight);
    }
    let name = format!("{prefix}_request_duration_seconds");
    let help = format!("Request latency on the node (parsed to answered), by {what}");
    family(out, &name, "histogram", &help);
    for (l, d) in rows {
        let mut cum = 0;
        for (b, n) in LATENCY_US.iter().zip(d.latency) {
            cum += n;
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"{}\"}} {cum}", *b as f64 / 1e6);
        }
        let count: u64 = d.latency.iter().sum();
        let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{l}}} {}", d.latency_sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{{l}}} {count}");
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Serves `/metrics` on `listener` from a thread of its own, one connection at a time (a scrape
/// every few seconds needs no more). Anything but `GET /metrics` gets a 404.
pub fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 << 10 {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let (status, body) = if req.starts_with(b"GET /metrics ") {
                    ("200 OK", render(&shared))
                } else {
                    ("404 Not Found", "only GET /metrics here\n".to_string())
                };
                let _ = write!(
                    c,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_class_status_and_latency() {
        let mut d = DeviceStats::default();
        d.record(Op::Read, Status::Ok, 4096, 30);
        d.record(Op::Write, Status::Ok, 8192, 1_000_000);
        d.record(Op::Flush, Status::Ok, 0, 5);
        d.record(Op::Read, Status::OutOfRange, 4096, 1);
        assert_eq!(d.ops, [2, 1, 1]);
        assert_eq!(d.bytes, [4096, 8192], "a failed read moved no bytes");
        assert_eq!(d.errors[&Status::OutOfRange.code()], 1);
        assert_eq!(d.latency[0], 2, "1 and 5 us");
        assert_eq!(d.latency[2], 1, "30 us");
        assert_eq!(d.latency[LATENCY_US.len()], 1, "1 s: past the last bound");
        let mut sum = DeviceStats::default();
        sum.add(&d);
        sum.add(&d);
        assert_eq!(sum.ops, [4, 2, 2]);
        assert_eq!(sum.latency_sum_us, 2 * d.latency_sum_us);
    }
}
