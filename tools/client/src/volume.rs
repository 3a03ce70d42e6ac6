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

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dasmesh_api::v1;
use dasmesh_wire::{DeviceId, Op, Status, Token};
use futures_util::future::join_all;
use tonic::transport::{Channel, Endpoint};

use crate::layout::{Extent, Layout, Map, Piece};
use crate::{AlignedBuf, ConnectOptions, Error, NodeSession, SearchResult};

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
    /// [`ConnectOptions::spin`]); zero by default.
    pub spin: Duration,
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

/// Errors of the transport (the request may be retried on a fresh connection).
fn is_transport(e: &Error) -> bool {
    matches!(
        e,
        Error::Io(_) | Error::Closed | Error::Timeout | Error::Protocol(_)
    )
}

/// Errors that mean the copy, not the host, failed: the copy missed the write.
fn copy_failed(e: &Error) -> bool {
    is_transport(e)
        || matches!(
            e.status(),
            Some(Status::IoError | Status::ShuttingDown | Status::Internal | Status::NoSpace)
        )
}

/// The connections to one extent.
struct Link {
    addr: String,
    device: DeviceId,
    token: Mutex<Token>,
    current: RwLock<Option<Arc<NodeSession>>>,
    connecting: tokio::sync::Mutex<()>,
    max_io: AtomicU64,
    block_size: AtomicU32,
    connections: usize,
    opts: ConnectOptions,
}

impl Link {
    fn current(&self) -> Option<Arc<NodeSession>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, s: Option<Arc<NodeSession>>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    async fn connect(&self) -> Result<Arc<NodeSession>, Error> {
        let token = *self.token.lock().unwrap_or_else(|p| p.into_inner());
        let s = NodeSession::connect(
            &self.addr,
            self.device,
            &token,
            self.connections,
            &self.opts,
        )
        .await?;
        let info = s.info();
        self.max_io
            .store(u64::from(info.max_io_size.max(4096)), Ordering::Relaxed);
        self.block_size
            .store(info.block_size.max(1), Ordering::Relaxed);
        Ok(Arc::new(s))
    }

    /// The open session, connecting first if there is none.
    async fn session(&self) -> Result<Arc<NodeSession>, Error> {
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let _one = self.connecting.lock().await;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let s = self.connect().await?;
        self.set(Some(Arc::clone(&s)));
        Ok(s)
    }

    /// Forgets `s` if it is still the current session (it failed).
    fn invalidate(&self, s: &Arc<NodeSession>) {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, s)) {
            *cur = None;
        }
    }

    /// Takes a renewed token: a fresh session replaces the current one (calls in flight finish
    /// on the old one, which closes when they are done).
    async fn renew(&self, token: Token) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = token;
        let _one = self.connecting.lock().await;
        match self.connect().await {
            Ok(s) => self.set(Some(s)),
            // Reconnects on next use.
            Err(e) => {
                tracing::debug!(addr = %self.addr, "reconnect after renewal failed: {e}");
                self.set(None);
            }
        }
    }
}

/// One request on one extent.
enum Io<'a> {
    Read,
    Write { data: &'a [u8], fua: bool },
    Discard,
    Zeroes { fua: bool },
    Search { pattern: &'a [u8], max_hits: u32 },
}

enum Out {
    None,
    Data(Vec<u8>),
    Hits(SearchResult),
}

struct Inner {
    name: String,
    ctl: Channel,
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

fn to_layout(l: Option<&v1::Layout>) -> Result<Layout, Error> {
    let l = l.ok_or_else(|| Error::Invalid("mount information without a layout".into()))?;
    Ok(match v1::LayoutKind::try_from(l.kind) {
        Ok(v1::LayoutKind::Single) => Layout::Single,
        Ok(v1::LayoutKind::Concat) => Layout::Concat,
        Ok(v1::LayoutKind::Stripe) => Layout::Stripe {
            width: l.width,
            unit: l.stripe_unit_bytes,
        },
        Ok(v1::LayoutKind::Mirror) => Layout::Mirror { copies: l.width },
        _ => return Err(Error::Invalid(format!("unknown layout kind {}", l.kind))),
    })
}

fn to_extent(x: &v1::Extent) -> Extent {
    Extent {
        node_id: x.node_id,
        address: x.node_address.clone(),
        device: x.device_id,
        offset: x.offset,
        length: x.length,
        copy: x.copy,
        index: x.index,
        stale: x.stale,
    }
}

fn same_place(a: &Extent, b: &Extent) -> bool {
    (a.node_id, a.device, a.offset, a.copy, a.index)
        == (b.node_id, b.device, b.offset, b.copy, b.index)
}

impl Volume {
    /// Takes a lease on `name` from the controller at `controller` (`http://host:port`) and
    /// connects to every node that holds its extents.
    pub async fn mount(controller: &str, name: &str, opts: MountOptions) -> Result<Volume, Error> {
        let ctl = Endpoint::from_shared(controller.to_string())
            .map_err(|e| Error::Invalid(format!("controller address {controller:?}: {e}")))?
            .connect_timeout(opts.connect_timeout)
            .timeout(Duration::from_secs(15))
            .connect_lazy();
        let m = v1::leases_client::LeasesClient::new(ctl.clone())
            .mount(v1::MountRequest {
                volume: name.to_string(),
                host_id: opts.host.clone(),
                access: match opts.access {
                    Access::ReadOnly => v1::Access::ReadOnly,
                    Access::ReadWrite => v1::Access::ReadWrite,
                } as i32,
                ttl_ms: opts.ttl.as_millis() as u64,
            })
            .await
            .map_err(|s| control(&format!("mount {name}"), s))?
            .into_inner();
        let lease = m
            .lease
            .clone()
            .ok_or_else(|| Error::Control("mount answer without a lease".into()))?;
        let lease_id = lease.lease_id;
        match Self::open(ctl.clone(), name, opts, lease, m).await {
            Ok(v) => Ok(v),
            Err(e) => {
                // Give the lease back rather than leave the volume locked until expiry.
                let _ = v1::leases_client::LeasesClient::new(ctl)
                    .unmount(v1::UnmountRequest { lease_id })
                    .await;
                Err(e)
            }
        }
    }

    async fn open(
        ctl: Channel,
        name: &str,
        opts: MountOptions,
        lease: v1::Lease,
        m: v1::MountResponse,
    ) -> Result<Volume, Error> {
        let layout = to_layout(m.layout.as_ref())?;
        let mut extents = Vec::new();
        let mut links = Vec::new();
        let copts = ConnectOptions {
            queue_depth: opts.queue_depth,
            connect_timeout: opts.connect_timeout,
            local_socket: opts.local_socket,
            spin: opts.spin,
        };
        for me in &m.extents {
            let x = me
                .extent
                .as_ref()
                .ok_or_else(|| Error::Invalid("mount information: an empty extent".into()))?;
            links.push(Link {
                addr: x.node_address.clone(),
                device: DeviceId(x.device_id),
                token: Mutex::new(Token::from_text(&me.token)?),
                current: RwLock::new(None),
                connecting: tokio::sync::Mutex::new(()),
                max_io: AtomicU64::new(1 << 20),
                block_size: AtomicU32::new(512),
                connections: opts.connections.max(1),
                opts: copts.clone(),
            });
            extents.push(to_extent(x));
        }
        let map = Map::new(m.size_bytes, layout, extents)?;
        let copies = map.copies();
        let inner = Arc::new(Inner {
            name: name.to_string(),
            ctl,
            lease: Mutex::new(lease),
            opts,
            map: RwLock::new(map),
            links,
            next_copy: AtomicUsize::new(0),
            avoid_until: (0..copies).map(|_| AtomicU64::new(0)).collect(),
            reporting: tokio::sync::Mutex::new(()),
            gate: tokio::sync::RwLock::new(()),
            closed: AtomicBool::new(false),
            renewer: Mutex::new(None),
        });
        let v = Volume { inner };
        v.connect_all().await?;
        if v.inner.opts.renew {
            let weak = Arc::downgrade(&v.inner);
            let h = tokio::spawn(renew_loop(weak));
            *v.inner.renewer.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
        }
        Ok(v)
    }

    /// Connects every extent. A mirror copy that cannot be reached is left for the first write
    /// to find (and report); any other extent must connect.
    async fn connect_all(&self) -> Result<(), Error> {
        let map = self.map().clone();
        let results = join_all(self.inner.links.iter().map(|l| l.session())).await;
        let mut per_copy_ok = vec![true; map.copies()];
        for (i, r) in results.into_iter().enumerate() {
            let e = &map.extents()[i];
            if let Err(err) = r {
                if map.copies() == 1 || !copy_failed(&err) {
                    return Err(err);
                }
                tracing::warn!(
                    volume = %self.inner.name,
                    copy = e.copy,
                    node = %e.address,
                    "mirror copy unreachable at mount: {err}"
                );
                per_copy_ok[e.copy as usize] = false;
            }
        }
        if !per_copy_ok
            .iter()
            .enumerate()
            .any(|(c, ok)| *ok && map.copy_is_healthy(c))
        {
            return Err(Error::Unavailable(format!(
                "volume {:?}: no healthy copy could be reached",
                self.inner.name
            )));
        }
        Ok(())
    }

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

    /// Extents with their stale flags as this host knows them.
    pub fn extents(&self) -> Vec<Extent> {
        self.map().extents().to_vec()
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), Error> {
        self.map().check_range(offset, len)?;
        let bs = u64::from(self.block_size());
        if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(Error::Invalid(format!(
                "offset {offset} and length {len} must be multiples of the block size {bs}"
            )));
        }
        Ok(())
    }

    /// `pieces` further cut at each extent's largest request size (reads and writes only).
    fn chunks(&self, pieces: Vec<Piece>, cut: bool) -> Vec<Piece> {
        if !cut {
            return pieces;
        }
        let mut out = Vec::with_capacity(pieces.len());
        for p in pieces {
            let max = self.inner.links[p.extent].max_io.load(Ordering::Relaxed);
            let mut done = 0;
            while done < p.len {
                let len = (p.len - done).min(max);
                out.push(Piece {
                    extent: p.extent,
                    device_offset: p.device_offset + done,
                    volume_offset: p.volume_offset + done,
                    len,
                });
                done += len;
            }
        }
        out
    }

    /// One request on one extent; a transport failure is retried once on a fresh connection.
    async fn on_extent(&self, p: Piece, base: u64, io: &Io<'_>) -> Result<Out, Error> {
        let link = &self.inner.links[p.extent];
        let mut retried = false;
        loop {
            let s = link.session().await?;
            let limit = match io {
                Io::Search { .. } => None,
                _ => Some(self.inner.opts.request_timeout),
            };
            let r = timed(limit, async {
                match io {
                    Io::Read => s.read(p.device_offset, p.len as usize).await.map(Out::Data),
                    Io::Write { data, fua } => {
                        let at = (p.volume_offset - base) as usize;
                        s.write(p.device_offset, &data[at..at + p.len as usize], *fua)
                            .await
                            .map(|()| Out::None)
                    }
                    Io::Discard => s.discard(p.device_offset, p.len).await.map(|()| Out::None),
                    Io::Zeroes { fua } => s
                        .write_zeroes(p.device_offset, p.len, *fua)
                        .await
                        .map(|()| Out::None),
                    Io::Search { pattern, max_hits } => s
                        .search(p.device_offset, p.len, pattern, *max_hits)
                        .await
                        .map(Out::Hits),
                }
            })
            .await;
            match r {
                Err(e) if is_transport(&e) && !retried => {
                    link.invalidate(&s);
                    retried = true;
                }
                r => return r,
            }
        }
    }

    /// Copies reads may be served from, preferred first (round robin, recent failures last).
    fn read_order(&self) -> Vec<usize> {
        let map = self.map();
        let n = map.copies();
        let start = self.inner.next_copy.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let mut order: Vec<usize> = (0..n)
            .map(|i| (start + i) % n)
            .filter(|&c| map.copy_is_healthy(c))
            .collect();
        order.sort_by_key(|&c| self.inner.avoid_until[c].load(Ordering::Relaxed) > now);
        order
    }

    /// Runs `io` over `[offset, offset+len)` of one readable copy, trying the next copy when
    /// one fails; returns each piece's result in volume order.
    async fn on_readable_copy(
        &self,
        offset: u64,
        len: u64,
        io: &Io<'_>,
    ) -> Result<Vec<(Piece, Out)>, Error> {
        let order = self.read_order();
        let mut last = None;
        for copy in order {
            let cut = matches!(io, Io::Read);
            let pieces = self.chunks(self.map().pieces(copy, offset, len), cut);
            let results = join_all(pieces.iter().map(|p| self.on_extent(*p, offset, io))).await;
            match results.into_iter().collect::<Result<Vec<Out>, Error>>() {
                Ok(outs) => return Ok(pieces.into_iter().zip(outs).collect()),
                Err(e) if self.map().copies() > 1 && copy_failed(&e) => {
                    tracing::warn!(volume = %self.inner.name, copy, "read failed, trying another copy: {e}");
                    self.inner.avoid_until[copy].store(now_ms() + 5_000, Ordering::Relaxed);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::Unavailable(format!("volume {:?}: no healthy copy", self.inner.name))
        }))
    }

    /// Runs a modifying `io` on every healthy copy; a copy that fails it is reported stale.
    async fn on_every_copy(&self, offset: u64, len: u64, io: &Io<'_>) -> Result<(), Error> {
        if self.inner.opts.access == Access::ReadOnly {
            let op = match io {
                Io::Discard => Op::Discard,
                Io::Zeroes { .. } => Op::WriteZeroes,
                _ => Op::Write,
            };
            return Err(Error::Request {
                op,
                status: Status::ReadOnly,
            });
        }
        let _gate = self.inner.gate.read().await;
        let plan: Vec<(usize, Vec<Piece>)> = {
            let map = self.map();
            (0..map.copies())
                .filter(|&c| map.copy_is_healthy(c))
                .map(|c| {
                    let ps = map.pieces(c, offset, len);
                    (c, ps)
                })
                .collect()
        };
        if plan.is_empty() {
            return Err(Error::Unavailable(format!(
                "volume {:?}: no healthy copy",
                self.inner.name
            )));
        }
        let cut = matches!(io, Io::Write { .. });
        let results = join_all(plan.into_iter().map(|(copy, pieces)| async move {
            let pieces = self.chunks(pieces, cut);
            let rs = join_all(pieces.into_iter().map(|p| self.on_extent(p, offset, io))).await;
            (copy, rs.into_iter().find_map(Result::err))
        }))
        .await;
        let total = results.len();
        let mut failed = Vec::new();
        let mut first = None;
        for (copy, err) in results {
            match err {
                None => {}
                Some(e) if total > 1 && copy_failed(&e) => {
                    failed.push(copy);
                    first.get_or_insert(e);
                }
                // The host's own refusal (or a single copy): the write failed.
                Some(e) => return Err(e),
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let why = first.expect("a failure");
        if failed.len() == total {
            return Err(why);
        }
        self.report_failed(&failed, &why).await?;
        Ok(())
    }

    /// Has the control plane mark `copies` stale (before the write is acknowledged).
    async fn report_failed(&self, copies: &[usize], why: &Error) -> Result<(), Error> {
        let _one = self.inner.reporting.lock().await;
        let fresh: Vec<u32> = {
            let map = self.map();
            copies
                .iter()
                .filter(|&&c| map.copy_is_healthy(c))
                .map(|&c| c as u32)
                .collect()
        };
        if fresh.is_empty() {
            return Ok(());
        }
        tracing::warn!(volume = %self.inner.name, copies = ?fresh, "mirror copies failed a write: {why}");
        let r = v1::leases_client::LeasesClient::new(self.inner.ctl.clone())
            .report_failure(v1::ReportFailureRequest {
                lease_id: self.lease_id(),
                copies: fresh.clone(),
                reason: why.to_string(),
            })
            .await
            .map_err(|s| control("report a failed mirror copy", s))?
            .into_inner();
        let mut map = self.inner.map.write().unwrap_or_else(|p| p.into_inner());
        for c in fresh {
            map.mark_stale(c as usize);
        }
        merge_stale(&mut map, r.extents.iter().map(to_extent));
        Ok(())
    }

    /// The one piece a request maps to when it needs no split and no choice of copy (the fast
    /// path of single, concat and stripe volumes).
    fn direct(&self, offset: u64, len: u64) -> Option<Piece> {
        let map = self.map();
        if map.copies() != 1 {
            return None;
        }
        let mut ps = map.pieces(0, offset, len);
        let p = ps.pop()?;
        let max = self.inner.links[p.extent].max_io.load(Ordering::Relaxed);
        (ps.is_empty() && p.len <= max).then_some(p)
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        self.check(offset, len as u64)?;
        if let Some(p) = self.direct(offset, len as u64) {
            if let Out::Data(d) = self.on_extent(p, offset, &Io::Read).await? {
                return Ok(d);
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

    /// Reads `buf.len()` bytes at `offset` into `buf`.
    pub async fn read_into(&self, offset: u64, mut buf: AlignedBuf) -> Result<AlignedBuf, Error> {
        let len = buf.len() as u64;
        self.check(offset, len)?;
        if let Some(p) = self.direct(offset, len) {
            // Straight into the caller's buffer; a transport failure is retried once.
            let link = &self.inner.links[p.extent];
            let limit = Some(self.inner.opts.request_timeout);
            let s = link.session().await?;
            return match timed(limit, s.read_into(p.device_offset, buf)).await {
                Err(e) if is_transport(&e) => {
                    link.invalidate(&s);
                    let s = link.session().await?;
                    let buf = AlignedBuf::new(len as usize);
                    timed(limit, s.read_into(p.device_offset, buf)).await
                }
                r => r,
            };
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
        self.check(offset, data.len() as u64)?;
        let io = Io::Write { data, fua };
        if self.inner.opts.access == Access::ReadWrite {
            if let Some(p) = self.direct(offset, data.len() as u64) {
                return self.on_extent(p, offset, &io).await.map(|_| ());
            }
        }
        self.on_every_copy(offset, data.len() as u64, &io).await
    }

    /// Deallocates a range (it may or may not read back as zeroes; see `write_zeroes`).
    pub async fn discard(&self, offset: u64, len: u64) -> Result<(), Error> {
        self.check(offset, len)?;
        self.on_every_copy(offset, len, &Io::Discard).await
    }

    /// Makes a range read back as zeroes.
    pub async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), Error> {
        self.check(offset, len)?;
        self.on_every_copy(offset, len, &Io::Zeroes { fua }).await
    }

    /// Makes every write acknowledged so far durable, on every node holding the volume.
    pub async fn flush(&self) -> Result<(), Error> {
        let map = self.map().clone();
        // A FLUSH covers every acknowledged write on its node device: one per device will do.
        let mut seen = std::collections::HashSet::new();
        let targets: Vec<usize> = (0..self.inner.links.len())
            .filter(|&i| {
                let e = &map.extents()[i];
                map.copy_is_healthy(e.copy as usize) && seen.insert((e.address.clone(), e.device))
            })
            .collect();
        let map = &map;
        let results = join_all(targets.iter().map(|&i| async move {
            let link = &self.inner.links[i];
            let limit = Some(self.inner.opts.request_timeout);
            let r = match link.session().await {
                Ok(s) => timed(limit, s.flush_one()).await,
                Err(e) => Err(e),
            };
            (map.extents()[i].copy as usize, r)
        }))
        .await;
        let copies = map.copies();
        let mut failed = Vec::new();
        let mut first = None;
        for (copy, r) in results {
            if let Err(e) = r {
                if copies > 1 && copy_failed(&e) {
                    if !failed.contains(&copy) {
                        failed.push(copy);
                    }
                    first.get_or_insert(e);
                } else {
                    return Err(e);
                }
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let why = first.expect("a failure");
        let healthy = (0..copies).filter(|&c| map.copy_is_healthy(c)).count();
        if failed.len() >= healthy || self.inner.opts.access == Access::ReadOnly {
            return Err(why);
        }
        self.report_failed(&failed, &why).await
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

    /// Copies a healthy copy's data onto every stale copy of a mirror, flushes them, and has the
    /// control plane mark them healthy again; returns the copies rebuilt. Needs a read-write
    /// mount (the lease is exclusive); writes through this handle wait until it is done.
    /// `progress(done, total)` is called as bytes are copied.
    pub async fn rebuild(&self, mut progress: impl FnMut(u64, u64)) -> Result<Vec<u32>, Error> {
        if self.inner.opts.access != Access::ReadWrite {
            return Err(Error::Invalid("a rebuild needs a read-write mount".into()));
        }
        let _alone = self.inner.gate.write().await;
        let (stale, size, max_io) = {
            let map = self.map();
            let stale: Vec<usize> = (0..map.copies())
                .filter(|&c| !map.copy_is_healthy(c))
                .collect();
            let max_io = (0..map.extents().len())
                .map(|i| self.inner.links[i].max_io.load(Ordering::Relaxed))
                .min()
                .unwrap_or(1 << 20);
            (stale, map.size(), max_io)
        };
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        if stale.len() == self.map().copies() {
            return Err(Error::Unavailable(format!(
                "volume {:?}: no healthy copy to rebuild from",
                self.inner.name
            )));
        }
        let chunk = (max_io.min(1 << 20) / u64::from(self.block_size())).max(1)
            * u64::from(self.block_size());
        let mut at = 0;
        while at < size {
            let n = chunk.min(size - at);
            let data = self.read(at, n as usize).await?;
            let io = Io::Write {
                data: &data,
                fua: false,
            };
            let writes: Vec<Piece> = {
                let map = self.map();
                stale.iter().flat_map(|&c| map.pieces(c, at, n)).collect()
            };
            let results = join_all(writes.iter().map(|p| self.on_extent(*p, at, &io))).await;
            for (p, r) in writes.iter().zip(results) {
                if let Err(e) = r {
                    let x = self.map().extents()[p.extent].clone();
                    return Err(Error::Unavailable(format!(
                        "copy {} (node {} at {}) cannot be written: {e}",
                        x.copy, x.node_id, x.address
                    )));
                }
            }
            at += n;
            progress(at, size);
        }
        let targets: Vec<usize> = {
            let map = self.map();
            (0..map.extents().len())
                .filter(|&i| stale.contains(&(map.extents()[i].copy as usize)))
                .collect()
        };
        for i in targets {
            let s = self.inner.links[i].session().await?;
            timed(Some(self.inner.opts.request_timeout), s.flush_one()).await?;
        }
        let copies: Vec<u32> = stale.iter().map(|&c| c as u32).collect();
        let r = v1::leases_client::LeasesClient::new(self.inner.ctl.clone())
            .report_rebuilt(v1::ReportRebuiltRequest {
                lease_id: self.lease_id(),
                copies: copies.clone(),
            })
            .await
            .map_err(|s| control("report the rebuilt copies", s))?
            .into_inner();
        let mut map = self.inner.map.write().unwrap_or_else(|p| p.into_inner());
        for &c in &stale {
            map.set_stale(c, false);
        }
        merge_stale(&mut map, r.extents.iter().map(to_extent));
        Ok(copies)
    }

    /// Renews the lease now (the background task does this on its own).
    pub async fn renew(&self) -> Result<(), Error> {
        renew_once(&self.inner).await
    }

    /// Flushes, closes every connection and ends the lease.
    pub async fn unmount(self) -> Result<(), Error> {
        let flushed = if self.inner.opts.access == Access::ReadWrite {
            self.flush().await
        } else {
            Ok(())
        };
        self.inner.closed.store(true, Ordering::Release);
        if let Some(h) = self
            .inner
            .renewer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.abort();
        }
        for l in &self.inner.links {
            if let Some(s) = l.current() {
                s.close().await;
            }
            l.set(None);
        }
        let ended = v1::leases_client::LeasesClient::new(self.inner.ctl.clone())
            .unmount(v1::UnmountRequest {
                lease_id: self.lease_id(),
            })
            .await
            .map(|_| ())
            .map_err(|s| control("unmount", s));
        flushed.and(ended)
    }
}

/// `fut`, failed with [`Error::Timeout`] if it takes longer than `limit`.
async fn timed<T>(
    limit: Option<Duration>,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match limit {
        Some(d) => tokio::time::timeout(d, fut)
            .await
            .unwrap_or(Err(Error::Timeout)),
        None => fut.await,
    }
}

/// Takes the controller's stale flags (a copy never becomes fresh again here: only a rebuild,
/// which means a new mount, clears it).
fn merge_stale(map: &mut Map, from: impl Iterator<Item = Extent>) {
    for x in from {
        if x.stale {
            let copy = map
                .extents()
                .iter()
                .find(|e| same_place(e, &x))
                .map(|e| e.copy as usize);
            if let Some(c) = copy {
                map.mark_stale(c);
            }
        }
    }
}

async fn renew_once(inner: &Inner) -> Result<(), Error> {
    let lease_id = inner
        .lease
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .lease_id;
    let m = v1::leases_client::LeasesClient::new(inner.ctl.clone())
        .renew(v1::RenewRequest {
            lease_id,
            ttl_ms: inner.opts.ttl.as_millis() as u64,
        })
        .await
        .map_err(|s| control("renew", s))?
        .into_inner();
    if let Some(l) = m.lease {
        *inner.lease.lock().unwrap_or_else(|p| p.into_inner()) = l;
    }
    let fresh: Vec<(Extent, String)> = m
        .extents
        .iter()
        .filter_map(|me| me.extent.as_ref().map(|x| (to_extent(x), me.token.clone())))
        .collect();
    {
        let mut map = inner.map.write().unwrap_or_else(|p| p.into_inner());
        merge_stale(&mut map, fresh.iter().map(|(x, _)| x.clone()));
    }
    let map = inner.map.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut jobs = Vec::new();
    for (i, e) in map.extents().iter().enumerate() {
        let Some((_, t)) = fresh.iter().find(|(x, _)| same_place(x, e)) else {
            continue;
        };
        let token = Token::from_text(t)?;
        if map.copy_is_healthy(e.copy as usize) {
            jobs.push((i, token));
        } else {
            // A stale copy takes no I/O until a rebuild: keep its token current, let its
            // connections go.
            *inner.links[i]
                .token
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = token;
            inner.links[i].set(None);
        }
    }
    join_all(jobs.into_iter().map(|(i, t)| inner.links[i].renew(t))).await;
    Ok(())
}

async fn renew_loop(weak: Weak<Inner>) {
    let mut failures = 0u32;
    loop {
        let wait = {
            let Some(inner) = weak.upgrade() else { return };
            if inner.closed.load(Ordering::Acquire) {
                return;
            }
            let l = inner
                .lease
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let left = l.expires_at_ms.saturating_sub(now_ms());
            if failures == 0 {
                // After a third of what is left (the lease was just taken or extended).
                Duration::from_millis((left / 3).max(100))
            } else {
                Duration::from_millis((left / 4).clamp(100, 1_000))
            }
        };
        tokio::time::sleep(wait).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        match renew_once(&inner).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(volume = %inner.name, "lease renewal failed ({failures}): {e}");
            }
        }
    }
}
