//! Per-lease usage counters: reactors count on each connection without locks and hand their
//! counts to this table now and then; the registration agent takes them with every heartbeat.

use std::collections::HashMap;
use std::sync::Mutex;

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

/// Usage by lease id (the token's nonce), waiting for the next heartbeat.
#[derive(Debug, Default)]
pub struct UsageTable {
    pending: Mutex<HashMap<u64, Usage>>,
}

impl UsageTable {
    /// Adds a connection's counts for `lease`.
    pub fn add(&self, lease: u64, u: &Usage) {
        if u.is_zero() {
            return;
        }
        let mut m = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(lease).or_default().add(u);
    }

    /// Takes everything counted so far.
    pub fn take(&self) -> Vec<(u64, Usage)> {
        let mut m = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        m.drain().collect()
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
    }
}
