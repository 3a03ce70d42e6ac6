//! The controller's `/metrics` (Prometheus text format 0.0.4), served on `--http`: the pool as
//! the active controller sees it (nodes by state, capacity, volumes by state, leases), this
//! controller's role, and its gRPC calls (count by method and status, latency histogram).
//! Written by hand: a few dozen lines of text, no registry needed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use dasmesh_api::v1;

use crate::ha::{Role, Roles};
use crate::service::msg::{up_devices, volume_msg};
use crate::state::NodeState;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
struct Calls {
    /// Calls by gRPC status code.
    by_code: BTreeMap<u16, u64>,
    /// Calls at most each bucket's bound (not cumulative: summed when written).
    buckets: [u64; BUCKETS.len()],
    sum_s: f64,
    count: u64,
}

/// Calls by method (the API's methods only; any other path counts as `other`).
static CALLS: Mutex<BTreeMap<&'static str, Calls>> = Mutex::new(BTreeMap::new());

/// Counts a call of `path` that ended with gRPC status `code` after `took`.
pub fn observe(path: &str, code: u16, took: Duration) {
    let method = dasmesh_api::METHODS
        .iter()
        .copied()
        .find(|m| *m == path)
        .unwrap_or("other");
    let s = took.as_secs_f64();
    let mut calls = CALLS.lock().unwrap_or_else(|e| e.into_inner());
    let c = calls.entry(method).or_default();
    *c.by_code.entry(code).or_default() += 1;
    if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
        c.buckets[i] += 1;
    }
    c.sum_s += s;
    c.count += 1;
}

/// The metrics text.
pub fn render(roles: &Roles) -> String {
    let mut out = String::new();
    let active = matches!(roles.get(), Role::Active(_));
    family(
        &mut out,
        "dasmesh_controller_active",
        "gauge",
        "1 while this controller is the active one, 0 while a standby",
    );
    let _ = writeln!(out, "dasmesh_controller_active {}", u8::from(active));
    if let Some(ctl) = roles.controller() {
        ctl.read(|s| {
            family(
                &mut out,
                "dasmesh_nodes",
                "gauge",
                "Registered nodes by state",
            );
            for (state, name) in [
                (NodeState::Up, "up"),
                (NodeState::Down, "down"),
                (NodeState::Gone, "gone"),
            ] {
                let n = s.nodes.values().filter(|n| n.state == state).count();
                let _ = writeln!(out, "dasmesh_nodes{{state=\"{name}\"}} {n}");
            }
            let devices = up_devices(s);
            family(
                &mut out,
                "dasmesh_pool_lendable_bytes",
                "gauge",
                "Bytes the up nodes' devices lend",
            );
            let lendable: u64 = devices.iter().map(|d| d.lendable_length).sum();
            let _ = writeln!(out, "dasmesh_pool_lendable_bytes {lendable}");
            family(
                &mut out,
                "dasmesh_pool_free_bytes",
                "gauge",
                "Of those, bytes no extent uses",
            );
            let free: u64 = devices.iter().map(|d| d.free_bytes).sum();
            let _ = writeln!(out, "dasmesh_pool_free_bytes {free}");
            family(&mut out, "dasmesh_volumes", "gauge", "Volumes by state");
            let mut by_state: BTreeMap<&str, usize> = [
                "VOLUME_STATE_OK",
                "VOLUME_STATE_DEGRADED",
                "VOLUME_STATE_UNAVAILABLE",
                "VOLUME_STATE_DELETING",
            ]
            .into_iter()
            .map(|k| (k, 0))
            .collect();
            for v in s.volumes.values() {
                let state = v1::VolumeState::try_from(volume_msg(s, v).state)
                    .unwrap_or(v1::VolumeState::Unspecified);
                *by_state.entry(state.as_str_name()).or_default() += 1;
            }
            for (state, n) in by_state {
                let name = state.trim_start_matches("VOLUME_STATE_").to_lowercase();
                let _ = writeln!(out, "dasmesh_volumes{{state=\"{name}\"}} {n}");
            }
            family(
                &mut out,
                "dasmesh_volume_bytes",
                "gauge",
                "Bytes of all volumes",
            );
            let bytes: u64 = s.volumes.values().map(|v| v.size).sum();
            let _ = writeln!(out, "dasmesh_volume_bytes {bytes}");
            family(
                &mut out,
                "dasmesh_rebuild_bytes",
                "gauge",
                "Mirror extents being rebuilt on their node: bytes copied and in all",
            );
            for v in s.volumes.values() {
                for e in &v.extents {
                    if let Some(r) = &e.rebuild {
                        let l = format!(
                            "volume=\"{}\",copy=\"{}\",index=\"{}\",node=\"{}\"",
                            v.name, e.piece.copy, e.piece.index, e.piece.key.node
                        );
                        let _ =
                            writeln!(out, "dasmesh_rebuild_bytes{{{l},of=\"copied\"}} {}", r.done);
                        let _ = writeln!(
                            out,
                            "dasmesh_rebuild_bytes{{{l},of=\"all\"}} {}",
                            e.piece.length
                        );
                    }
                }
            }
            family(
                &mut out,
                "dasmesh_leases",
                "gauge",
                "Mount leases by access",
            );
            for (rw, name) in [(true, "rw"), (false, "ro")] {
                let n = s.leases.values().filter(|l| l.rw == rw).count();
                let _ = writeln!(out, "dasmesh_leases{{access=\"{name}\"}} {n}");
            }
        });
    }
    calls_text(&mut out);
    out
}

/// The gRPC calls' families.
fn calls_text(out: &mut String) {
    let calls = CALLS.lock().unwrap_or_else(|e| e.into_inner());
    family(
        out,
        "dasmesh_rpc_requests_total",
        "counter",
        "gRPC calls by method and status code",
    );
    for (method, c) in calls.iter() {
        for (code, n) in &c.by_code {
            let _ = writeln!(
                out,
                "dasmesh_rpc_requests_total{{method=\"{method}\",code=\"{code}\"}} {n}"
            );
        }
    }
    family(
        out,
        "dasmesh_rpc_duration_seconds",
        "histogram",
        "gRPC call latency by method",
    );
    for (method, c) in calls.iter() {
        let mut cum = 0;
        for (b, n) in BUCKETS.iter().zip(c.buckets) {
            cum += n;
            let _ = writeln!(
                out,
                "dasmesh_rpc_duration_seconds_bucket{{method=\"{method}\",le=\"{b}\"}} {cum}"
            );
        }
        let _ = writeln!(
            out,
            "dasmesh_rpc_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {}",
            c.count
        );
        let _ = writeln!(
            out,
            "dasmesh_rpc_duration_seconds_sum{{method=\"{method}\"}} {}",
            c.sum_s
        );
        let _ = writeln!(
            out,
            "dasmesh_rpc_duration_seconds_count{{method=\"{method}\"}} {}",
            c.count
        );
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_method_and_code_into_cumulative_buckets() {
        let m = "/dasmesh.v1.Pool/ListNodes";
        observe(m, 0, Duration::from_micros(300));
        observe(m, 0, Duration::from_millis(30));
        observe(m, 5, Duration::from_secs(10));
        observe("/not.a/Method", 12, Duration::from_millis(1));
        let calls = CALLS.lock().unwrap();
        let c = &calls[m];
        assert!(c.count >= 3 && c.by_code[&5] >= 1);
        assert!(calls.contains_key("other"));
        drop(calls);
        let mut text = String::new();
        calls_text(&mut text);
        assert!(text.contains(&format!(
            "dasmesh_rpc_requests_total{{method=\"{m}\",code=\"5\"}}"
        )));
        assert!(text.contains(&format!(
            "dasmesh_rpc_duration_seconds_bucket{{method=\"{m}\",le=\"+Inf\"}}"
        )));
    }
}
