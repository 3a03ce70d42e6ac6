//! Several connections to one device of a node, used round-robin.

use std::sync::atomic::{AtomicUsize, Ordering};

use dasmesh_wire::{DeviceId, HelloReply, Token};

use crate::{AlignedBuf, ConnectOptions, Connection, Error, SearchResult};

/// A pool of connections to the same node device; requests are spread round-robin.
pub struct NodeSession {
    conns: Vec<Connection>,
    next: AtomicUsize,
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
        Ok(Self {
            conns,
            next: AtomicUsize::new(0),
        })
    }

    fn pick(&self) -> &Connection {
        &self.conns[self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len()]
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
