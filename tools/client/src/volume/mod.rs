//! A mounted volume: a lease from the control plane, then I/O straight at the nodes.
//!
//! [`Volume::mount`] takes a lease, opens connections to every extent's node with the extent's
//! token, and renews the lease in the background (new tokens, new connections swapped in; calls
//! in flight finish on the old ones). Requests are split by the layout ([`crate::layout`]) and
//! the pieces run concurrently. A mirror write goes to every healthy copy; a copy whose node
//! fails it (I/O error, connection lost, node shutting down) is reported to the control plane,
//! which marks it stale, and only then is the write acknowledged from the others. Refusals that
//! are the host's own (stale epoch, expired token, read-only) are returned as they are: they
//! never mark a copy.
//!
//! Where things are: this file holds the [`Volume`] type and its I/O calls; `lease` mounts,
//! renews and unmounts; `link` keeps the connections to one extent; `route` splits a request
//! over extents and copies and runs the pieces; `mirror` writes to every copy and decides
//! (`verdict`, a pure function) what the copies' failures mean; `rebuild` copies a healthy copy
//! onto stale ones.

mod dirty;
mod lease;
mod link;
mod mirror;
mod rebuild;
mod route;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dasmesh_api::{v1, Controllers};

use crate::layout::{Extent, Layout, Map, Piece};
use crate::{AlignedBuf, Error, SearchResult};

use link::Link;
use mirror::copy_failed;
use route::{is_transport, Io, Out};

/// Read-only or read-write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Any number of these at once.
    ReadOnly,
    /// One at a time per volume; raises the volume's fencing epoch.
    ReadWrite,
}

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Who mounts (appears in leases and usage).
    pub host: String,
    /// Read-only or read-write.
    pub access: Access,
    /// Lease length (zero: the controller's default). Renewed at a third of it.
    pub ttl: Duration,
    /// Connections per extent.
    pub connections: usize,
    /// Requests in flight per connection at most.
    pub queue_depth: usize,
    /// Renew the lease in the background (off only to test expiry).
    pub renew: bool,
    /// Give up connecting (controller or node) after this long.
    pub connect_timeout: Duration,
    /// Give up waiting for a node's reply to a read, write, flush, discard or write-zeroes
    /// after this long (searches are not timed: they scan as much as they are asked to). The
    /// request is retried once on a fresh connection; on a mirror, a copy that still does not
    /// answer is reported stale like one that failed.
    pub request_timeout: Duration,
    /// Reach nodes on this machine over their same-host Unix socket rather than loopback TCP.
    pub local_socket: bool,
    /// How long a caller waiting for a node's reply polls the socket before it sleeps (see
    /// [`crate::ConnectOptions::spin`]); zero by default.
    pub spin: Duration,
    /// This host's certificate: the controllers are reached over mutual TLS (`https://`), and
    /// the lease is taken in the certificate's name (a host certificate's name is the host).
    pub cert: Option<dasmesh_api::CertDir>,
    /// Refuse to mount unless every node of the volume serves its data plane over mutual TLS
    /// (`dasmesh-node --tls`). Without it, TLS is used with the nodes that serve it (which
    /// needs `cert`) and plaintext with the others.
    pub require_tls: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            host: default_host(),
            access: Access::ReadWrite,
            ttl: Duration::ZERO,
            connections: 2,
            queue_depth: 64,
            renew: true,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            local_socket: true,
            spin: Duration::ZERO,
            cert: None,
            require_tls: false,
        }
    }
}

/// This machine's host name (for lease and usage records), or "host".
pub fn default_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".into())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn control(what: &str, s: tonic::Status) -> Error {
    Error::Control(format!("{what}: {} ({:?})", s.message(), s.code()))
}

struct Inner {
    name: String,
    ctl: Controllers,
    lease: Mutex<v1::Lease>,
    opts: MountOptions,
    map: RwLock<Map>,
    links: Vec<Link>,
    next_copy: AtomicUsize,
    /// Per copy: do not read from it before this time (ms); set when it failed a read.
    avoid_until: Vec<AtomicU64>,
    reporting: tokio::sync::Mutex<()>,
    /// Mirror writes hold it shared; a rebuild holds it alone (no write may slip past a copy
    /// being rebuilt).
    gate: tokio::sync::RwLock<()>,
    closed: AtomicBool,
    renewer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// A mirror's dirty-region tracking (`dirty.rs`).
    dirty: dirty::Tracker,
    /// Failure reports answered so far (a renewal sent before one may carry older flags).
    reports: AtomicU64,
    /// How to connect to a node (before TLS), for extents that move.
    base: crate::ConnectOptions,
    /// The data plane's TLS client side, made when the first node that speaks it is met.
    tls: Mutex<Option<Arc<rustls::ClientConfig>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(h) = self
            .renewer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.abort();
        }
    }
}

/// A mounted volume. Cheap to clone; calls may run concurrently from many tasks.
#[derive(Clone)]
pub struct Volume {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.inner.name)
            .field("lease", &self.lease_id())
            .finish()
    }
}

impl Volume {
    fn map(&self) -> std::sync::RwLockReadGuard<'_, Map> {
        self.inner.map.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.map().size()
    }

    /// Its layout.
    pub fn layout(&self) -> Layout {
        self.map().layout()
    }

    /// The largest logical block size of its devices: offsets and lengths must be multiples.
    pub fn block_size(&self) -> u32 {
        self.inner
            .links
            .iter()
            .map(|l| l.block_size.load(Ordering::Relaxed))
            .max()
            .unwrap_or(512)
    }

    /// Requests in flight to the nodes right now, over every open connection (including
    /// those whose callers went away and whose replies are still due).
    pub fn requests_in_flight(&self) -> usize {
        self.inner
            .links
            .iter()
            .filter_map(|l| l.current())
            .map(|s| s.in_flight())
            .sum()
    }

    /// The lease id.
    pub fn lease_id(&self) -> u64 {
        self.inner
            .lease
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lease_id
    }

    /// The lease as last granted or renewed.
    pub fn lease(&self) -> v1::Lease {
        self.inner
            .lease
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether every token this lease holds is bound to this process's lease key (a controller
    /// that predates holder binding gives bearer tokens).
    pub fn tokens_bound(&self) -> bool {
        self.inner.links.iter().all(|l| {
            l.token
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .holder()
                .is_some()
        })
    }

    /// Extents with their stale flags as this host knows them.
    pub fn extents(&self) -> Vec<Extent> {
        self.map().extents().to_vec()
    }

    /// On a mirror, a copy moved to another node (`dasmesh volume replace-copy`) refuses this
    /// host's old token with StaleEpoch until the host renews and learns where it went: renew
    /// once then, and try again (a host whose lease is fenced for real is refused again).
    pub(super) async fn fenced_retry<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        match f().await {
            Err(e)
                if e.status() == Some(dasmesh_wire::Status::StaleEpoch)
                    && self.map().copies() > 1 =>
            {
                tracing::info!(volume = %self.inner.name, "a node fenced this host's token: renewing the lease to learn what moved");
                // A lease that cannot be renewed (another host holds the volume now) keeps the
                // node's answer.
                if self.renew().await.is_err() {
                    return Err(e);
                }
                f().await
            }
            r => r,
        }
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        self.fenced_retry(|| self.read_once(offset, len)).await
    }

    async fn read_once(&self, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        self.check(offset, len as u64)?;
        if let Some((copy, p)) = self.read_piece(offset, len as u64) {
            match self.on_extent(p, offset, &Io::Read).await {
                Ok(Out::Data(d)) => return Ok(d),
                Ok(_) => {}
                Err(e) => self.read_failed(copy, e)?,
            }
        }
        let mut parts = self.on_readable_copy(offset, len as u64, &Io::Read).await?;
        if parts.len() == 1 {
            if let (_, Out::Data(d)) = parts.pop().expect("one") {
                return Ok(d);
            }
        }
        let mut out = vec![0u8; len];
        for (p, o) in parts {
            if let Out::Data(d) = o {
                let at = (p.volume_offset - offset) as usize;
                out[at..at + d.len()].copy_from_slice(&d);
            }
        }
        Ok(out)
    }

    /// The copy and the one piece of it a read goes to, when it needs no split.
    fn read_piece(&self, offset: u64, len: u64) -> Option<(usize, Piece)> {
        let copy = self.pick_copy()?;
        Some((copy, self.one_piece(copy, offset, len)?))
    }

    /// A read of one copy failed: on a mirror the copy is avoided for a while and the read
    /// fails over (`Ok`); anything else is the caller's error.
    fn read_failed(&self, copy: usize, e: Error) -> Result<(), Error> {
        if self.map().copies() > 1 && copy_failed(&e) {
            tracing::warn!(volume = %self.inner.name, copy, "read failed, trying another copy: {e}");
            self.inner.avoid_until[copy].store(now_ms() + 5_000, Ordering::Relaxed);
            return Ok(());
        }
        Err(e)
    }

    /// Reads `buf.len()` bytes at `offset` into `buf`.
    pub async fn read_into(&self, offset: u64, buf: AlignedBuf) -> Result<AlignedBuf, Error> {
        let len = buf.len();
        match self.read_into_once(offset, buf).await {
            // As `fenced_retry`, with a fresh buffer (the first went with the failed read).
            Err(e)
                if e.status() == Some(dasmesh_wire::Status::StaleEpoch)
                    && self.map().copies() > 1 =>
            {
                if self.renew().await.is_err() {
                    return Err(e);
                }
                self.read_into_once(offset, AlignedBuf::new(len)).await
            }
            r => r,
        }
    }

    async fn read_into_once(&self, offset: u64, mut buf: AlignedBuf) -> Result<AlignedBuf, Error> {
        let len = buf.len() as u64;
        self.check(offset, len)?;
        if let Some((copy, p)) = self.read_piece(offset, len) {
            // Straight into the caller's buffer; a transport failure is retried once.
            let link = &self.inner.links[p.extent];
            let s = link.session().await?;
            let r = match s.read_into(p.device_offset, buf).await {
                Err(e) if is_transport(&e) => {
                    link.invalidate(&s);
                    let s = link.session().await?;
                    let buf = AlignedBuf::new(len as usize);
                    s.read_into(p.device_offset, buf).await
                }
                r => r,
            };
            match r {
                Ok(b) => return Ok(b),
                Err(e) => self.read_failed(copy, e)?,
            }
            buf = AlignedBuf::new(len as usize);
        }
        for (p, o) in self.on_readable_copy(offset, len, &Io::Read).await? {
            if let Out::Data(d) = o {
                let at = (p.volume_offset - offset) as usize;
                buf.as_mut_slice()[at..at + d.len()].copy_from_slice(&d);
            }
        }
        Ok(buf)
    }

    /// Writes `data` at `offset` (to every healthy copy); with `fua` it is durable on return.
    pub async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), Error> {
        self.fenced_retry(|| self.write_once(offset, data, fua))
            .await
    }

    async fn write_once(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), Error> {
        self.check(offset, data.len() as u64)?;
        let io = Io::Write { data, fua };
        if self.inner.opts.access == Access::ReadWrite && self.map().copies() == 1 {
            if let Some(p) = self.one_piece(0, offset, data.len() as u64) {
                return self.on_extent(p, offset, &io).await.map(|_| ());
            }
        }
        self.on_every_copy(offset, data.len() as u64, &io).await
    }

    /// Deallocates a range (it may or may not read back as zeroes; see `write_zeroes`).
    pub async fn discard(&self, offset: u64, len: u64) -> Result<(), Error> {
        self.check(offset, len)?;
        self.fenced_retry(|| self.on_every_copy(offset, len, &Io::Discard))
            .await
    }

    /// Makes a range read back as zeroes.
    pub async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), Error> {
        self.check(offset, len)?;
        let io = Io::Zeroes { fua };
        self.fenced_retry(|| self.on_every_copy(offset, len, &io))
            .await
    }

    /// Offsets (in the volume) where `pattern` (1..=64 bytes) starts within
    /// `[offset, offset+len)`, increasing, at most `max_hits`. The nodes scan their own pieces;
    /// matches that straddle two pieces are found here from the bytes around each seam.
    pub async fn search(
        &self,
        offset: u64,
        len: u64,
        pattern: &[u8],
        max_hits: u32,
    ) -> Result<SearchResult, Error> {
        if pattern.is_empty() || pattern.len() > dasmesh_wire::SEARCH_PATTERN_MAX {
            return Err(Error::Invalid(format!(
                "search pattern must be 1..={} bytes, got {}",
                dasmesh_wire::SEARCH_PATTERN_MAX,
                pattern.len()
            )));
        }
        self.check(offset, len)?;
        let io = Io::Search { pattern, max_hits };
        let parts = self.on_readable_copy(offset, len, &io).await?;
        let end = offset + len;
        let plen = pattern.len() as u64;
        let bs = u64::from(self.block_size());
        let mut hits = Vec::new();
        let mut truncated = false;
        for (i, (p, o)) in parts.iter().enumerate() {
            if let Out::Hits(r) = o {
                hits.extend(
                    r.hits
                        .iter()
                        .map(|h| p.volume_offset + (h - p.device_offset)),
                );
                if r.truncated {
                    truncated = true;
                    break;
                }
            }
            // The seam after this piece.
            if plen > 1 && i + 1 < parts.len() {
                let seam = p.volume_offset + p.len;
                let lo = seam.saturating_sub(plen - 1).max(offset) / bs * bs;
                let hi = (seam + plen - 1).min(end).div_ceil(bs) * bs;
                let bytes = self.read(lo, (hi - lo) as usize).await?;
                for s in memchr::memmem::find_iter(&bytes, pattern) {
                    let at = lo + s as u64;
                    if at < seam && at + plen > seam && at >= offset && at + plen <= end {
                        hits.push(at);
                    }
                }
            }
        }
        if hits.len() > max_hits as usize {
            hits.truncate(max_hits as usize);
            truncated = true;
        }
        Ok(SearchResult { hits, truncated })
    }
}
