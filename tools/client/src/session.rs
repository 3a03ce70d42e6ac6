//! Several connections to one device of a node. Each calling thread keeps to one of them (its
//! requests batch together on one socket, and threads do not contend for one connection's
//! reader and writer); a connection much busier than the others is skipped for the least busy.

use std::sync::atomic::{AtomicUsize, Ordering};

use dasmesh_wire::{DeviceId, HelloReply, Token};

use crate::{AlignedBuf, ConnectOptions, Connection, Error, SearchResult};

/// Below this many requests in flight a thread's own connection is always used.
const BUSY: usize = 8;
/// How many more requests than the least busy connection a thread's own must hold before the
/// thread's request goes to that one instead.
const IMBALANCE: usize = 32;

/// The connection for a request from the thread whose own connection is `lane`, given each
/// connection's requests in flight: its own, unless another has `IMBALANCE` fewer.
pub(crate) fn choose(lane: usize, loads: &[usize]) -> usize {
    let mine = loads[lane];
    if mine < BUSY {
        return lane;
    }
    let (least, &low) = loads
        .iter()
        .enumerate()
        .min_by_key(|(_, l)| **l)
        .expect("at least one connection");
    if low + IMBALANCE <= mine {
        least
    } else {
        lane
    }
}

/// A pool of connections to the same node device; requests are spread over them by thread.
pub struct NodeSession {
    conns: Vec<Connection>,
}

/// Numbers the threads that use any session, in the order they first do.
static THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static LANE: usize = THREADS.fetch_add(1, Ordering::Relaxed);
}

impl NodeSession {
    /// Opens `connections` (at least one) connections with the same token.
    pub async fn connect(
        addr: &str,
        device: DeviceId,
        token: &Token,
        connections: usize,
        opts: &ConnectOptions,
    ) -> Result<Self, Error> {
        let mut conns = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            conns.push(Connection::connect(addr, device, token, opts).await?);
        }
        Ok(Self { conns })
    }

    /// This thread's connection, unless it is much busier than another (see [`choose`]).
    fn pick(&self) -> &Connection {
        let n = self.conns.len();
        let lane = LANE.with(|l| *l) % n;
        if n == 1 || self.conns[lane].in_flight() < BUSY {
            return &self.conns[lane];
        }
        let loads: Vec<usize> = self.conns.iter().map(Connection::in_flight).collect();
        &self.conns[choose(lane, &loads)]
    }

    /// Requests in flight or queued on all its connections.
    pub fn in_flight(&self) -> usize {
        self.conns.iter().map(Connection::in_flight).sum()
    }

    /// What the node answered on the first connection.
    pub fn info(&self) -> &HelloReply {
        self.conns[0].info()
    }

    /// See [`Connection::read`].
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        self.pick().read(offset, len).await
    }

    /// See [`Connection::read_into`].
    pub async fn read_into(&self, offset: u64, buf: AlignedBuf) -> Result<AlignedBuf, Error> {
        self.pick().read_into(offset, buf).await
    }

    /// See [`Connection::write`].
    pub async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), Error> {
        self.pick().write(offset, data, fua).await
    }

    /// Flushes on every connection: writes acknowledged on any of them become durable.
    /// The flushes run at once, so a session costs one flush latency, not one per connection.
    pub async fn flush(&self) -> Result<(), Error> {
        let mut set = tokio::task::JoinSet::new();
        for c in &self.conns {
            let c = c.clone();
            set.spawn(async move { c.flush().await });
        }
        let mut first_err = None;
        while let Some(r) = set.join_next().await {
            let r = match r {
                Ok(r) => r,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Err(Error::Closed),
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// One FLUSH on one connection: it covers writes acknowledged on every connection to the
    /// node (a FLUSH is node-wide, see docs/protocol.md).
    pub async fn flush_one(&self) -> Result<(), Error> {
        self.pick().flush().await
    }

    /// See [`Connection::discard`].
    pub async fn discard(&self, offset: u64, len: u64) -> Result<(), Error> {
        self.pick().discard(offset, len).await
    }

    /// See [`Connection::write_zeroes`].
    pub async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), Error> {
        self.pick().write_zeroes(offset, len, fua).await
    }

    /// See [`Connection::search`].
    pub async fn search(
        &self,
        offset: u64,
        len: u64,
        pattern: &[u8],
        max_hits: u32,
    ) -> Result<SearchResult, Error> {
        self.pick().search(offset, len, pattern, max_hits).await
    }

    /// Closes every connection.
    pub async fn close(&self) {
        for c in &self.conns {
            c.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::choose;

    #[test]
    fn a_thread_keeps_to_its_connection_unless_it_is_far_busier() {
        assert_eq!(choose(1, &[0, 0, 0]), 1);
        assert_eq!(choose(1, &[0, 7, 0]), 1, "below BUSY: always its own");
        assert_eq!(
            choose(1, &[20, 40, 30]),
            1,
            "within IMBALANCE of the least busy"
        );
        assert_eq!(
            choose(1, &[20, 52, 30]),
            0,
            "far busier: the least busy one"
        );
        assert_eq!(choose(2, &[64, 64, 64]), 2, "all equally busy: its own");
        assert_eq!(choose(0, &[33, 5, 1]), 2);
    }
}
