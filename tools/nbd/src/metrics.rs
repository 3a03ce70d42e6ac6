//! The gateway's `/metrics` (Prometheus text format 0.0.4), on `dasmesh nbd serve --metrics ADDR`:
//! connections, and per NBD command the requests answered, their bytes, errors by errno and a
//! latency histogram (from read off the socket to the reply's write).
//!
//! Off unless [`enable`] was called: then a request notes the time it was read, and each
//! connection's writer adds the replies of a written batch under one lock (one per batch, not per
//! request).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::proto::Cmd;

/// Upper bounds of the latency buckets, microseconds.
const LATENCY_US: [u64; 12] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000,
];

static ENABLED: AtomicBool = AtomicBool::new(false);
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
static COUNTS: Mutex<BTreeMap<&'static str, Counts>> = Mutex::new(BTreeMap::new());

#[derive(Clone, Debug, Default)]
struct Counts {
    requests: u64,
    bytes: u64,
    errors: BTreeMap<u32, u64>,
    latency: [u64; LATENCY_US.len() + 1],
    latency_sum_us: u64,
}

/// Counts from now on (`--metrics`).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// The time a request was read, when counting.
pub(crate) fn now() -> Option<Instant> {
    ENABLED.load(Ordering::Relaxed).then(Instant::now)
}

/// A connection came (+1) or went (-1).
pub(crate) fn connections(delta: i64) {
    if delta >= 0 {
        CONNECTIONS.fetch_add(delta as u64, Ordering::Relaxed);
    } else {
        CONNECTIONS.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
    }
}

fn name(kind: u16) -> &'static str {
    match kind {
        k if k == Cmd::Read as u16 => "read",
        k if k == Cmd::Write as u16 => "write",
        k if k == Cmd::Flush as u16 => "flush",
        k if k == Cmd::Trim as u16 => "trim",
        k if k == Cmd::WriteZeroes as u16 => "write_zeroes",
        _ => "other",
    }
}

/// Adds replies just written: (command, length asked, errno, when the request was read).
pub(crate) fn record(replies: impl Iterator<Item = (u16, u32, u32, Option<Instant>)>) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let mut c = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    for (kind, len, error, at) in replies {
        let e = c.entry(name(kind)).or_default();
        e.requests += 1;
        if error == 0 {
            if kind == Cmd::Read as u16 || kind == Cmd::Write as u16 {
                e.bytes += u64::from(len);
            }
        } else {
            *e.errors.entry(error).or_default() += 1;
        }
        let us = at.map_or(0, |t| t.elapsed().as_micros() as u64);
        let i = LATENCY_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LATENCY_US.len());
        e.latency[i] += 1;
        e.latency_sum_us += us;
    }
}

/// The metrics text.
pub fn render() -> String {
    let mut out = String::new();
    let family = |out: &mut String, n: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {n} {help}\n# TYPE {n} {kind}");
    };
    family(
        &mut out,
        "dasmesh_nbd_connections",
        "gauge",
        "NBD clients connected",
    );
    let _ = writeln!(
        out,
        "dasmesh_nbd_connections {}",
        CONNECTIONS.load(Ordering::Relaxed)
    );
    let c = COUNTS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    family(
        &mut out,
        "dasmesh_nbd_requests_total",
        "counter",
        "Requests answered, by command",
    );
    for (cmd, n) in &c {
        let _ = writeln!(
            out,
            "dasmesh_nbd_requests_total{{command=\"{cmd}\"}} {}",
            n.requests
        );
    }
    family(
        &mut out,
        "dasmesh_nbd_bytes_total",
        "counter",
        "Bytes read and written by requests that succeeded",
    );
    for (cmd, n) in &c {
        let _ = writeln!(
            out,
            "dasmesh_nbd_bytes_total{{command=\"{cmd}\"}} {}",
            n.bytes
        );
    }
    family(
        &mut out,
        "dasmesh_nbd_errors_total",
        "counter",
        "Requests answered with an error, by command and errno",
    );
    for (cmd, n) in &c {
        for (errno, k) in &n.errors {
            let _ = writeln!(
                out,
                "dasmesh_nbd_errors_total{{command=\"{cmd}\",errno=\"{errno}\"}} {k}"
            );
        }
    }
    family(
        &mut out,
        "dasmesh_nbd_request_duration_seconds",
        "histogram",
        "From read off the socket to the reply written, by command",
    );
    for (cmd, n) in &c {
        let mut cum = 0;
        for (b, k) in LATENCY_US.iter().zip(n.latency) {
            cum += k;
            let _ = writeln!(
                out,
                "dasmesh_nbd_request_duration_seconds_bucket{{command=\"{cmd}\",le=\"{}\"}} {cum}",
                *b as f64 / 1e6
            );
        }
        let _ = writeln!(
            out,
            "dasmesh_nbd_request_duration_seconds_bucket{{command=\"{cmd}\",le=\"+Inf\"}} {}",
            n.requests
        );
        let _ = writeln!(
            out,
            "dasmesh_nbd_request_duration_seconds_sum{{command=\"{cmd}\"}} {}",
            n.latency_sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "dasmesh_nbd_request_duration_seconds_count{{command=\"{cmd}\"}} {}",
            n.requests
        );
    }
    out
}

/// Serves `/metrics` on `listener` until the runtime ends, one connection at a time (a scrape
/// every few seconds needs no more, and a client opening many connections holds at most one,
/// for at most 5 s); anything else gets a 404.
pub async fn serve(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    loop {
        let Ok((mut c, _)) = listener.accept().await else {
            continue;
        };
        let answer = async {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 << 10 {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let (status, body) = if req.starts_with(b"GET /metrics ") {
                ("200 OK", render())
            } else {
                ("404 Not Found", "only GET /metrics here\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = c.write_all(head.as_bytes()).await;
            let _ = c.write_all(body.as_bytes()).await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), answer).await;
    }
}
