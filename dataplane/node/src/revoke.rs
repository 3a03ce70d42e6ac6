//! Leases the control plane revoked before their tokens expire, shared by all reactors.
//!
//! The agent applies each heartbeat's list (`agent.rs`); a handshake whose token carries a
//! revoked lease id (the token's nonce) is refused with `Revoked`, and sessions already open
//! under one fail every further request with it. As with the fence table, the per-request cost
//! is one atomic load: a session compares the table's generation with the one it last checked,
//! and only when it has moved takes the lock to look its own lease up. An entry is forgotten
//! once its tokens have expired by the node's clock, the clock every token's expiry is checked
//! against: from then on the token is refused as `Expired` anyway.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Revoked lease ids and when their tokens expire.
#[derive(Debug, Default)]
pub struct Revocations {
    leases: Mutex<HashMap<u64, u64>>,
    generation: AtomicU64,
}

impl Revocations {
    /// Adds `(lease_id, expires_at_ms)` entries (keeping the later expiry of a lease already
    /// known) and forgets the entries expired at `now_ms`. An entry missing from `revoked` is
    /// kept until it expires: a lease once revoked stays revoked. Returns how many leases were
    /// newly revoked.
    pub fn apply(&self, revoked: impl IntoIterator<Item = (u64, u64)>, now_ms: u64) -> usize {
        let mut map = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, expires| *expires > now_ms);
        let mut added = 0;
        for (lease, expires) in revoked {
            if expires <= now_ms {
                continue;
            }
            let e = map.entry(lease).or_insert_with(|| {
                added += 1;
                expires
            });
            *e = (*e).max(expires);
        }
        if added > 0 {
            // Under the lock: a session that loads the new generation and then takes the lock
            // finds the new entries.
            self.generation.fetch_add(1, Ordering::Release);
        }
        added
    }

    /// Whether tokens of `lease` are revoked at `now_ms`.
    pub fn is_revoked(&self, lease: u64, now_ms: u64) -> bool {
        let map = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&lease).is_some_and(|expires| *expires > now_ms)
    }

    /// Changes whenever a lease is newly revoked.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// How many leases are remembered.
    pub fn len(&self) -> usize {
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a session knows of its own lease's standing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    /// The table's generation when the session last looked.
    pub generation: u64,
    /// Its lease was found revoked (for good: it stays so).
    pub revoked: bool,
}

impl Standing {
    /// Whether the session's `lease` is revoked: one atomic load, plus a lookup when the table
    /// changed since the last call.
    pub fn check(&mut self, table: &Revocations, lease: u64, now_ms: u64) -> bool {
        if !self.revoked {
            let g = table.generation();
            if g != self.generation {
                self.generation = g;
                self.revoked = table.is_revoked(lease, now_ms);
            }
        }
        self.revoked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_until_expiry_then_forgotten() {
        let t = Revocations::default();
        let g0 = t.generation();
        assert_eq!(t.apply([(7, 1_000), (8, 2_000)], 100), 2);
        assert_ne!(t.generation(), g0);
        assert!(t.is_revoked(7, 100) && t.is_revoked(8, 100));
        assert!(!t.is_revoked(9, 100));
        // The same list again changes nothing; a later expiry of a known lease is kept.
        let g1 = t.generation();
        assert_eq!(t.apply([(7, 1_500), (8, 2_000)], 200), 0);
        assert_eq!(t.generation(), g1);
        assert!(t.is_revoked(7, 1_200));
        // Missing from a later list: still revoked until its expiry.
        assert_eq!(t.apply([], 300), 0);
        assert!(t.is_revoked(8, 300));
        // Expired entries are forgotten; already expired ones are never added.
        assert_eq!(t.apply([(9, 1_600)], 1_600), 0);
        assert_eq!(t.len(), 1, "only lease 8 is left");
        assert!(!t.is_revoked(7, 1_600));
        assert_eq!(t.apply([], 2_000), 0);
        assert!(t.is_empty());
    }

    #[test]
    fn a_session_looks_its_lease_up_only_when_the_table_changed() {
        let t = Revocations::default();
        let mut s = Standing::default();
        assert!(!s.check(&t, 5, 0));
        t.apply([(6, 100)], 0);
        assert!(!s.check(&t, 5, 0), "another lease");
        assert_eq!(s.generation, t.generation());
        t.apply([(5, 100)], 0);
        assert!(s.check(&t, 5, 0));
        // Once revoked, it stays so, even after the table forgot the entry.
        t.apply([], 200);
        assert!(s.check(&t, 5, 200));
    }
}
