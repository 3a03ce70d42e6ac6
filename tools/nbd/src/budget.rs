//! The gateway's memory budget for request and reply data: one pool shared by every
//! connection (`--max-buffer`), of which one connection may hold at most a fixed share, so a
//! client that pipelines large READs and never reads the replies cannot take all of it.
//!
//! A READ takes its length from the budget before it runs and gives it back once its reply has
//! been written; a WRITE takes its length before its payload is read off the socket. While a
//! connection cannot get what its next request needs, it stops taking requests (its socket's
//! receive window closes: back-pressure), and waits until replies drain.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::export::MAX_BLOCK;

/// The budget when none is given: 256 MiB.
pub const DEFAULT_BUDGET: u64 = 256 << 20;
/// The smallest budget accepted: 1 MiB (a 256 KiB share, the largest request then allowed).
pub const MIN_BUDGET: u64 = 1 << 20;
/// The largest budget accepted (its unit count must fit the semaphore's `u32` grants).
pub const MAX_BUDGET: u64 = 1 << 40;
/// The unit the budget is counted in.
const UNIT: u64 = 4096;
/// One connection holds at most this fraction of the budget: with fewer than this many
/// connections stalled, the others still find room.
pub const SHARES: u64 = 4;

/// A budget that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BudgetError {
    /// Outside [`MIN_BUDGET`, `MAX_BUDGET`].
    #[error("buffer budget {0} bytes: must be between 1 MiB and 1 TiB")]
    OutOfRange(u64),
}

/// The pool every connection draws from.
#[derive(Clone, Debug)]
pub struct Budget {
    pool: Arc<Semaphore>,
    units: u64,
}

impl Budget {
    /// A budget of `bytes` (rounded down to whole 4 KiB units).
    pub fn new(bytes: u64) -> Result<Budget, BudgetError> {
        if !(MIN_BUDGET..=MAX_BUDGET).contains(&bytes) {
            return Err(BudgetError::OutOfRange(bytes));
        }
        let units = bytes / UNIT;
        Ok(Budget {
            pool: Arc::new(Semaphore::new(units as usize)),
            units,
        })
    }

    /// The whole budget, in bytes.
    pub fn bytes(&self) -> u64 {
        self.units * UNIT
    }

    /// What one connection may hold at most, in bytes.
    pub fn share(&self) -> u64 {
        self.units / SHARES * UNIT
    }

    /// The largest READ or WRITE a client may send (advertised as the maximum block size):
    /// [`MAX_BLOCK`], or less when a connection's share is smaller. A power of two, so a
    /// multiple of any minimum block size up to it.
    pub fn max_request(&self) -> u32 {
        let share = self.share().min(u64::from(MAX_BLOCK));
        1u32 << share.ilog2()
    }

    /// Bytes not held by any connection now (for tests and logs).
    pub fn available(&self) -> u64 {
        self.pool.available_permits() as u64 * UNIT
    }

    /// A new connection's share of the budget.
    pub fn connection(&self) -> Share {
        let units = self.units / SHARES;
        Share {
            own: Arc::new(Semaphore::new(units as usize)),
            pool: Arc::clone(&self.pool),
            units: u32::try_from(units).unwrap_or(u32::MAX),
        }
    }
}

/// One connection's claim on the budget.
#[derive(Debug)]
pub struct Share {
    own: Arc<Semaphore>,
    pool: Arc<Semaphore>,
    /// The share's size in units.
    units: u32,
}

/// Bytes held for one request until it is dropped (after its reply is written).
#[derive(Debug, Default)]
pub struct Grant {
    _own: Option<OwnedSemaphorePermit>,
    _pool: Option<OwnedSemaphorePermit>,
}

impl Share {
    /// Waits until `bytes` fit both this connection's share and the pool. The share is taken
    /// first, so a connection waits for the pool with one request at most (per caller), and
    /// no cycle of waits can form between connections. Larger requests than
    /// [`Budget::max_request`] are refused before they get here; one larger than the whole
    /// share (an export whose minimum block exceeds it) takes the whole share, rather than
    /// waiting for ever.
    pub async fn acquire(&self, bytes: usize) -> Grant {
        let units = (bytes as u64).div_ceil(UNIT);
        if units == 0 {
            return Grant::default();
        }
        let units = u32::try_from(units).unwrap_or(u32::MAX).min(self.units);
        // Neither semaphore is ever closed: acquiring fails only on a closed one.
        let own = Arc::clone(&self.own).acquire_many_owned(units).await.ok();
        let pool = Arc::clone(&self.pool).acquire_many_owned(units).await.ok();
        Grant {
            _own: own,
            _pool: pool,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Long enough for a grant that can be had to be had; one that cannot never comes.
    const WAIT: Duration = Duration::from_millis(50);

    #[test]
    fn sizes() {
        let b = Budget::new(DEFAULT_BUDGET).unwrap();
        assert_eq!((b.bytes(), b.share()), (256 << 20, 64 << 20));
        assert_eq!(b.max_request(), MAX_BLOCK);
        let small = Budget::new(20 << 20).unwrap();
        assert_eq!(small.share(), 5 << 20);
        assert_eq!(small.max_request(), 4 << 20);
        assert_eq!(Budget::new(MIN_BUDGET).unwrap().max_request(), 256 << 10);
        assert_eq!(
            Budget::new(MIN_BUDGET - 1).unwrap_err(),
            BudgetError::OutOfRange(MIN_BUDGET - 1)
        );
        assert!(Budget::new(MAX_BUDGET + 1).is_err());
    }

    #[tokio::test]
    async fn a_connection_holds_its_share_at_most_and_others_still_get_room() {
        let b = Budget::new(16 << 20).unwrap();
        let hog = b.connection();
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(hog.acquire(1 << 20).await);
        }
        // Its share (4 MiB) is spent: the next request waits...
        let more = tokio::time::timeout(WAIT, hog.acquire(4096)).await;
        assert!(more.is_err(), "a fifth MiB beyond the share");
        // ...while another connection still gets room, and the pool counts both.
        let other = b.connection();
        let g = other.acquire(4 << 20).await;
        assert_eq!(b.available(), 8 << 20);
        drop(g);
        // A reply written gives its bytes back: the hog goes on.
        held.pop();
        let g = tokio::time::timeout(WAIT, hog.acquire(1 << 20)).await;
        assert!(g.is_ok());
        // A request larger than the whole share takes all of it rather than waiting for ever.
        drop(g);
        held.clear();
        let _all = tokio::time::timeout(WAIT, hog.acquire(8 << 20))
            .await
            .expect("the whole share");
        assert_eq!(b.available(), 12 << 20);
    }

    #[tokio::test]
    async fn a_full_pool_makes_connections_wait_until_replies_drain() {
        let b = Budget::new(4 << 20).unwrap();
        let conns: Vec<Share> = (0..4).map(|_| b.connection()).collect();
        let mut held: Vec<Grant> = Vec::new();
        for c in &conns {
            held.push(c.acquire(1 << 20).await);
        }
        assert_eq!(b.available(), 0);
        let fifth = b.connection();
        let waiting = tokio::time::timeout(WAIT, fifth.acquire(4096)).await;
        assert!(waiting.is_err(), "nothing left in the pool");
        held.clear();
        assert_eq!(b.available(), 4 << 20);
        let _g = fifth.acquire(1 << 20).await;
        assert_eq!(b.available(), 3 << 20);
    }
}
