//! The gateway's memory budget for request and reply data: one pool shared by every
//! connection (`--max-buffer`), of which one connection may hold at most a fixed share, so a
//! client that pipelines large READs and never reads the replies cannot take all of it.
//!
//! A READ takes its length from the budget before it runs and gives it back once its reply has
//! been written; a WRITE takes its length before its payload is read off the socket. While a
//! connection cannot get what its next request needs, it stops taking requests (its socket's
//! receive window closes: back-pressure), and waits until replies drain.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::export::MAX_BLOCK;

/// The budget when none is given: 256 MiB.
pub const DEFAULT_BUDGET: u64 = 256 << 20;
/// The smallest budget accepted: 1 MiB (a 256 KiB share, the largest request then allowed).
pub const MIN_BUDGET: u64 = 1 << 20;
/// The largest budget accepted.
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
    pool: Arc<Pool>,
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
            pool: Arc::new(Pool::new(units)),
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
        self.pool.free.load(SeqCst) * UNIT
    }

    /// A new connection's share of the budget.
    pub fn connection(&self) -> Share {
        let units = self.units / SHARES;
        Share {
            own: Arc::new(Pool::new(units)),
            pool: Arc::clone(&self.pool),
            units,
        }
    }
}

/// One connection's claim on the budget.
#[derive(Debug)]
pub struct Share {
    own: Arc<Pool>,
    pool: Arc<Pool>,
    /// The share's size in units.
    units: u64,
}

/// Bytes held for one request until it is dropped (after its reply is written).
#[derive(Debug, Default)]
pub struct Grant {
    _own: Option<Taken>,
    _pool: Option<Taken>,
}

impl Share {
    /// Waits until `bytes` fit both this connection's share and the pool. The share is taken
    /// first, so a connection waits for the pool with one request at most (per caller), and
    /// no cycle of waits can form between connections. Larger requests than
    /// [`Budget::max_request`] are refused before they get here; one larger than the whole
    /// share (an export whose minimum block exceeds it) takes the whole share, rather than
    /// waiting for ever.
    pub async fn acquire(&self, bytes: usize) -> Grant {
        let units = (bytes as u64).div_ceil(UNIT).min(self.units);
        if units == 0 {
            return Grant::default();
        }
        let own = self.own.take(units).await;
        let pool = self.pool.take(units).await;
        Grant {
            _own: Some(own),
            _pool: Some(pool),
        }
    }

    /// [`Share::acquire`] if it need not wait: `None` when either the share or the pool lacks
    /// the room now, or someone waits for it already.
    pub fn try_acquire(&self, bytes: usize) -> Option<Grant> {
        let units = (bytes as u64).div_ceil(UNIT).min(self.units);
        if units == 0 {
            return Some(Grant::default());
        }
        let own = self.own.try_now(units)?;
        let pool = self.pool.try_now(units)?;
        Some(Grant {
            _own: Some(own),
            _pool: Some(pool),
        })
    }
}

/// A count of free units shared by many tasks on many threads. Taking and giving back, while
/// nobody waits, is one atomic update: the pool is shared by every connection, and a lock (such
/// as the one inside tokio's semaphore, taken on every release) would be one lock every request
/// of every connection passes through. When units run short, takers queue in order (first come,
/// first served, as the semaphore did) and a new taker joins the queue rather than overtake it.
#[derive(Debug)]
struct Pool {
    free: AtomicU64,
    /// Takers in `queue`: while there are any, nobody takes past them.
    queued: AtomicUsize,
    queue: Mutex<VecDeque<Arc<Notify>>>,
}

/// Units taken from a pool, given back on drop.
#[derive(Debug)]
struct Taken {
    pool: Arc<Pool>,
    units: u64,
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.pool.give(self.units);
    }
}

/// A taker's place in the queue; leaves it on drop (also when the taker's future is dropped).
struct Place<'a> {
    pool: &'a Pool,
    me: Arc<Notify>,
    /// Cleared once it has taken its units (and left the queue).
    waiting: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.waiting {
            return;
        }
        let mut q = self.pool.lock();
        if let Some(i) = q.iter().position(|w| Arc::ptr_eq(w, &self.me)) {
            q.remove(i);
            self.pool.queued.fetch_sub(1, SeqCst);
            // The next in line may be able to take what is free now (the one leaving may
            // have been woken for it).
            if let Some(next) = q.front() {
                next.notify_one();
            }
        }
    }
}

impl Pool {
    fn new(units: u64) -> Pool {
        Pool {
            free: AtomicU64::new(units),
            queued: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<Notify>>> {
        // The queue is consistent after every update: a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn try_take(&self, units: u64) -> bool {
        let mut cur = self.free.load(SeqCst);
        loop {
            if cur < units {
                return false;
            }
            match self
                .free
                .compare_exchange_weak(cur, cur - units, SeqCst, SeqCst)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Takes `units` if nobody waits and they are free now.
    fn try_now(self: &Arc<Self>, units: u64) -> Option<Taken> {
        (self.queued.load(SeqCst) == 0 && self.try_take(units)).then(|| Taken {
            pool: Arc::clone(self),
            units,
        })
    }

    async fn take(self: &Arc<Self>, units: u64) -> Taken {
        let taken = || Taken {
            pool: Arc::clone(self),
            units,
        };
        if self.queued.load(SeqCst) == 0 && self.try_take(units) {
            return taken();
        }
        let mut place = Place {
            pool: self,
            me: Arc::new(Notify::new()),
            waiting: true,
        };
        {
            let mut q = self.lock();
            q.push_back(Arc::clone(&place.me));
            // After this, a giver sees a queue and wakes its head; a give that came before it
            // is seen by the head's first try below (both are SeqCst).
            self.queued.fetch_add(1, SeqCst);
        }
        loop {
            {
                let mut q = self.lock();
                let head = q.front().is_some_and(|w| Arc::ptr_eq(w, &place.me));
                if head && self.try_take(units) {
                    q.pop_front();
                    self.queued.fetch_sub(1, SeqCst);
                    if let Some(next) = q.front() {
                        next.notify_one();
                    }
                    place.waiting = false;
                    return taken();
                }
            }
            // A wake-up that came since the try left a permit: this returns at once then.
            place.me.notified().await;
        }
    }

    fn give(&self, units: u64) {
        self.free.fetch_add(units, SeqCst);
        if self.queued.load(SeqCst) > 0 {
            if let Some(head) = self.lock().front() {
                head.notify_one();
            }
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

    #[tokio::test]
    async fn a_taker_that_gives_up_in_the_queue_lets_the_next_one_through() {
        let b = Budget::new(4 << 20).unwrap();
        let (c1, c2, c3) = (b.connection(), b.connection(), b.connection());
        let held = [c1.acquire(1 << 20).await, c2.acquire(1 << 20).await];
        let _third = c3.acquire(1 << 20).await;
        let fourth = b.connection();
        let g = fourth.acquire(1 << 20).await;
        assert_eq!(b.available(), 0);
        // Two wait in line: the first gives up (its future dropped), the second gets the room.
        let first = b.connection();
        let second = b.connection();
        let mut queued_first = Box::pin(first.acquire(1 << 20));
        assert!(futures_poll(&mut queued_first).is_none());
        let waiting = tokio::spawn(async move { second.acquire(1 << 20).await });
        tokio::task::yield_now().await;
        drop(queued_first);
        drop(g);
        let got = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        let got = got.expect("the second in line gets the freed MiB").unwrap();
        assert_eq!(b.available(), 0);
        drop((got, held));
        assert_eq!(b.available(), 3 << 20);
    }

    /// Polls a future once.
    fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn many_threads_taking_and_giving_leave_the_pool_whole() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        // A pool of 256 units that 16 connections with shares of 64 units contend for.
        let b = Budget::new(MIN_BUDGET).unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let share = b.connection();
                rt.spawn(async move {
                    for n in 0..500usize {
                        let g = share.acquire(4096 * (1 + (n + i) % 8)).await;
                        tokio::task::yield_now().await;
                        drop(g);
                    }
                })
            })
            .collect();
        rt.block_on(async {
            for t in tasks {
                tokio::time::timeout(Duration::from_secs(60), t)
                    .await
                    .expect("nobody is left waiting for ever")
                    .unwrap();
            }
        });
        assert_eq!(b.available(), b.bytes());
    }
}
