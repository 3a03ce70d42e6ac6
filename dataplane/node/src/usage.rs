//! Per-lease usage counters: reactors count on each connection without locks and hand their
//! counts to this table now and then; the registration agent takes them with every heartbeat.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a lease that counts nothing more is still shown in `/metrics`.
pub const SHOWN_IDLE: Duration = Duration::from_secs(600);
/// The most leases shown in `/metrics`; past it, the one idle longest is forgotten.
pub const SHOWN_MAX: usize = 4096;

/// Bytes and operations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes read (READ data, SEARCH ranges scanned).
    pub read_bytes: u64,
    /// Bytes written (WRITE and WRITE_ZEROES ranges).
    pub write_bytes: u64,
    /// Read-class operations.
    pub read_ops: u64,
    /// Write-class operations (WRITE, WRITE_ZEROES, DISCARD, FLUSH).
    pub write_ops: u64,
}

impl Usage {
    /// Whether nothing was counted.
    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }

    fn add(&mut self, o: &Usage) {
        self.read_bytes += o.read_bytes;
        self.write_bytes += o.write_bytes;
        self.read_ops += o.read_ops;
        self.write_ops += o.write_ops;
    }
}

/// Usage by lease id (the token's nonce), waiting for the next heartbeat; and each lease's
/// counts since it was first seen, for `/metrics`.
#[derive(Debug, Default)]
pub struct UsageTable {
    pending: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    pending: HashMap<u64, Usage>,
    shown: HashMap<u64, (Usage, Instant)>,
}

impl UsageTable {
    /// Adds a connection's counts for `lease`.
    pub fn add(&self, lease: u64, u: &Usage) {
        if u.is_zero() {
            return;
        }
        let mut m = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        m.pending.entry(lease).or_default().add(u);
        let now = Instant::now();
        if m.shown.len() >= SHOWN_MAX && !m.shown.contains_key(&lease) {
            if let Some(oldest) = m.shown.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                m.shown.remove(&oldest);
            }
        }
        let e = m.shown.entry(lease).or_insert((Usage::default(), now));
        e.0.add(u);
        e.1 = now;
    }

    /// Takes everything counted so far.
    pub fn take(&self) -> Vec<(u64, Usage)> {
        let mut m = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        m.pending.drain().collect()
    }

    /// Each lease's counts since it was first seen (those that counted anything in the last
    /// [`SHOWN_IDLE`]), by lease id.
    pub fn shown(&self) -> Vec<(u64, Usage)> {
        let mut m = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        m.shown.retain(|_, (_, t)| t.elapsed() < SHOWN_IDLE);
        let mut v: Vec<(u64, Usage)> = m.shown.iter().map(|(k, (u, _))| (*k, *u)).collect();
        v.sort_unstable_by_key(|(k, _)| *k);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_up_and_drains() {
        let t = UsageTable::default();
        t.add(
            7,
            &Usage {
                read_bytes: 10,
                read_ops: 1,
                ..Default::default()
            },
        );
        t.add(
            7,
            &Usage {
                write_bytes: 5,
                write_ops: 1,
                ..Default::default()
            },
        );
        t.add(8, &Usage::default());
        let got = t.take();
        assert_eq!(
            got,
            vec![(
                7,
                Usage {
                    read_bytes: 10,
                    write_bytes: 5,
                    read_ops: 1,
                    write_ops: 1
                }
            )]
        );
        assert!(t.take().is_empty());
        // What /metrics shows is not drained by the heartbeats.
        t.add(
            7,
            &Usage {
                read_ops: 2,
                ..Default::default()
            },
        );
        let shown = t.shown();
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].1.read_ops, 3);
        assert_eq!(shown[0].1.write_bytes, 5);
    }

    #[test]
    fn no_more_than_shown_max_leases_are_shown() {
        let t = UsageTable::default();
        let one = Usage {
            write_ops: 1,
            ..Default::default()
        };
        for lease in 0..(SHOWN_MAX as u64 + 10) {
            t.add(lease, &one);
        }
        let shown = t.shown();
        assert_eq!(shown.len(), SHOWN_MAX);
        assert!(
            shown.iter().any(|(k, _)| *k == SHOWN_MAX as u64 + 9),
            "the newest kept"
        );
    }
}
