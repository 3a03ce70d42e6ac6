//! The lease: mount (take it, connect every extent), renew it in the background (new tokens,
//! fresh connections, the controller's stale flags), unmount (flush, close, give it back).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use dasmesh_api::{v1, ControllerOptions, Controllers};
use dasmesh_wire::{DeviceId, SigningKey, Token};
use futures_util::future::join_all;

use super::link::{Link, Target};
use super::mirror::copy_failed;
use super::{control, now_ms, Access, Inner, MountOptions, Volume};
use crate::layout::{Extent, Layout, Map};
use crate::{ConnectOptions, Error};

fn to_layout(l: Option<&v1::Layout>) -> Result<Layout, Error> {
    let l = l.ok_or_else(|| Error::Invalid("mount information without a layout".into()))?;
    Layout::try_from(l).map_err(|e| Error::Invalid(format!("mount information: {e}")))
}

pub(super) fn to_extent(x: &v1::Extent) -> Extent {
    Extent {
        node_id: x.node_id,
        address: x.node_address.clone(),
        device: x.device_id,
        offset: x.offset,
        length: x.length,
        copy: x.copy,
        index: x.index,
        stale: x.stale,
        rebuilding: x.rebuilding,
        takes_writes: x.takes_writes,
        epoch: x.epoch,
    }
}

/// How to connect to the node of extent `x`: `base`, with TLS when the node speaks it (made from
/// the mount's certificate once, kept in `tls`).
pub(super) fn connect_opts(
    opts: &MountOptions,
    base: &ConnectOptions,
    tls: &Mutex<Option<Arc<rustls::ClientConfig>>>,
    x: &v1::Extent,
) -> Result<ConnectOptions, Error> {
    if opts.require_tls && !x.node_tls {
        return Err(Error::Invalid(format!(
            "node {} serves its data plane in plaintext, and TLS was required",
            x.node_address
        )));
    }
    let mut copts = base.clone();
    if x.node_tls {
        let mut tls = tls.lock().unwrap_or_else(|p| p.into_inner());
        if tls.is_none() {
            let cert = opts.cert.as_ref().ok_or_else(|| {
                Error::Invalid(format!(
                    "node {} serves its data plane over mutual TLS: mount with a host \
                     certificate (--cert DIR or DASMESH_CERT)",
                    x.node_address
                ))
            })?;
            *tls = Some(
                cert.data_client_config()
                    .map_err(|e| Error::Invalid(e.to_string()))?,
            );
        }
        copts.tls = tls.clone();
    }
    Ok(copts)
}

fn same_place(a: &Extent, b: &Extent) -> bool {
    (a.node_id, a.device, a.offset, a.copy, a.index)
        == (b.node_id, b.device, b.offset, b.copy, b.index)
}

impl Volume {
    /// Takes a lease on `name` from the controllers in `controller` (`http://host:port`, or a
    /// comma-separated list of them: the call and every later one, renewals and failure reports,
    /// go to the active one) and connects to every node that holds its extents.
    pub async fn mount(controller: &str, name: &str, opts: MountOptions) -> Result<Volume, Error> {
        let ctl = Controllers::parse_with(
            controller,
            ControllerOptions {
                connect_timeout: opts.connect_timeout,
                timeout: Some(Duration::from_secs(15)),
                tls: opts.cert.as_ref().map(dasmesh_api::CertDir::client_config),
                ..Default::default()
            },
        )
        .map_err(|e| Error::Invalid(e.to_string()))?;
        Self::mount_on(ctl, name, opts).await
    }

    /// [`mount`](Self::mount) through controllers the caller already has (and shares).
    pub async fn mount_on(
        ctl: Controllers,
        name: &str,
        mut opts: MountOptions,
    ) -> Result<Volume, Error> {
        // A host certificate's name is the host: the controller takes leases in no other.
        if let Some(c) = opts
            .cert
            .as_ref()
            .filter(|c| c.identity.role == dasmesh_api::Role::Host)
        {
            opts.host = c.identity.name.clone();
        }
        // A key for this lease alone: the controller binds the lease's tokens to it, so a token
        // copied off this process opens nothing without it (docs/security.md).
        let holder = Arc::new(SigningKey::from_bytes(&rand::random()));
        let m = v1::leases_client::LeasesClient::new(ctl.clone())
            .mount(v1::MountRequest {
                volume: name.to_string(),
                host_id: opts.host.clone(),
                access: match opts.access {
                    Access::ReadOnly => v1::Access::ReadOnly,
                    Access::ReadWrite => v1::Access::ReadWrite,
                } as i32,
                ttl_ms: opts.ttl.as_millis() as u64,
                holder_key: holder.verifying_key().to_bytes().to_vec(),
            })
            .await
            .map_err(|s| match s.code() {
                // The one refusal of a mount with this code: another host's read-write lease.
                tonic::Code::FailedPrecondition => {
                    Error::Held(format!("mount {name}: {}", s.message()))
                }
                _ => control(&format!("mount {name}"), s),
            })?
            .into_inner();
        let lease = m
            .lease
            .clone()
            .ok_or_else(|| Error::Control("mount answer without a lease".into()))?;
        let lease_id = lease.lease_id;
        match Self::open(ctl.clone(), name, opts, lease, m, holder).await {
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

    pub(super) async fn open(
        ctl: Controllers,
        name: &str,
        opts: MountOptions,
        lease: v1::Lease,
        m: v1::MountResponse,
        holder: Arc<SigningKey>,
    ) -> Result<Volume, Error> {
        let layout = to_layout(m.layout.as_ref())?;
        let mut extents = Vec::new();
        let mut links = Vec::new();
        let copts = ConnectOptions {
            queue_depth: opts.queue_depth,
            connect_timeout: opts.connect_timeout,
            local_socket: opts.local_socket,
            spin: opts.spin,
            request_timeout: Some(opts.request_timeout),
            holder: Some(holder),
            tls: None,
        };
        let tls = Mutex::new(None);
        for me in &m.extents {
            let x = me
                .extent
                .as_ref()
                .ok_or_else(|| Error::Invalid("mount information: an empty extent".into()))?;
            links.push(Link {
                target: Mutex::new(Target {
                    addr: x.node_address.clone(),
                    device: DeviceId(x.device_id),
                    opts: connect_opts(&opts, &copts, &tls, x)?,
                }),
                token: Mutex::new(Token::from_text(&me.token)?),
                current: RwLock::new(None),
                connecting: tokio::sync::Mutex::new(()),
                max_io: AtomicU64::new(1 << 20),
                block_size: AtomicU32::new(512),
                connections: opts.connections.max(1),
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
            dirty: Default::default(),
            reports: AtomicU64::new(0),
            base: copts,
            tls,
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
    pub(super) async fn connect_all(&self) -> Result<(), Error> {
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

/// Takes the controller's stale flags from an answer to a report (a copy never becomes fresh
/// again here, and a copy being rebuilt that takes writes keeps taking them).
pub(super) fn merge_stale(map: &mut Map, from: impl Iterator<Item = Extent>) {
    for x in from {
        if x.stale && !x.takes_writes {
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

/// Renews the lease; when the answer shows rebuilding extents this host is to write to now,
/// waits for every write it sent before it knew of them and renews again naming them, so that
/// their nodes may start copying (docs/volumes.md, "Replacing a lost copy").
async fn renew_once(inner: &Inner) -> Result<(), Error> {
    // Extents this host knew to write before this renewal (at mount, or a renewal ago): every
    // write it sent since went to them, so they are joined already.
    let rw = inner.opts.access == Access::ReadWrite;
    let known = if rw { joined(inner) } else { Vec::new() };
    let newly = renew_with(inner, known).await?;
    if !newly.is_empty() && rw {
        drop(inner.gate.write().await);
        renew_with(inner, joined(inner)).await?;
    }
    Ok(())
}

/// The epochs of the rebuilding extents this host writes to.
fn joined(inner: &Inner) -> Vec<u64> {
    inner
        .map
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .extents()
        .iter()
        .filter(|e| e.stale && e.takes_writes)
        .map(|e| e.epoch)
        .collect()
}

/// One renewal (telling the controller of the rebuilding extents in `joined`). Takes the
/// controller's view of every extent: where it is (a replaced extent moves to its new node),
/// whether it is read, written, or neither. Returns the epochs of the rebuilding extents it
/// writes to now and did not before.
async fn renew_with(inner: &Inner, joined: Vec<u64>) -> Result<Vec<u64>, Error> {
    let lease_id = inner
        .lease
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .lease_id;
    let reports = inner.reports.load(Ordering::Acquire);
    let m = v1::leases_client::LeasesClient::new(inner.ctl.clone())
        .renew(v1::RenewRequest {
            lease_id,
            ttl_ms: inner.opts.ttl.as_millis() as u64,
            joined,
        })
        .await
        .map_err(|s| control("renew", s))?
        .into_inner();
    if let Some(l) = m.lease {
        *inner.lease.lock().unwrap_or_else(|p| p.into_inner()) = l;
    }
    // A failure report of this host's that went out meanwhile may be newer than this answer:
    // then only its stale flags count.
    let current = inner.reports.load(Ordering::Acquire) == reports;
    let mut newly = Vec::new();
    let mut moved = Vec::new();
    let mut again = Vec::new();
    {
        let mut map = inner.map.write().unwrap_or_else(|p| p.into_inner());
        for me in &m.extents {
            let Some(x) = me.extent.as_ref() else {
                continue;
            };
            let fresh = to_extent(x);
            let Some(i) = map
                .extents()
                .iter()
                .position(|e| (e.copy, e.index) == (fresh.copy, fresh.index))
            else {
                continue;
            };
            let old = map.extents()[i].clone();
            if (old.node_id, old.device, old.offset) != (fresh.node_id, fresh.device, fresh.offset)
            {
                if old.length != fresh.length {
                    continue;
                }
                tracing::info!(volume = %inner.name, copy = fresh.copy, from = %old.address, to = %fresh.address, "extent replaced on another node");
                moved.push((i, x.clone(), me.token.clone()));
            } else if !current {
                if fresh.stale {
                    map.mark_stale(fresh.copy as usize);
                }
                continue;
            }
            if fresh.takes_writes && fresh.stale && !(old.takes_writes && old.stale) {
                newly.push(fresh.epoch);
                again.push(fresh.copy as usize);
            }
            if !fresh.stale && old.stale {
                again.push(fresh.copy as usize);
            }
            map.set_extent(i, fresh);
        }
    }
    if !again.is_empty() {
        // Written again from here on: what it missed before is another matter (the rebuild).
        inner.dirty.healthy_again(&again);
    }
    for (i, x, token) in moved {
        let t = Target {
            addr: x.node_address.clone(),
            device: DeviceId(x.device_id),
            opts: connect_opts(&inner.opts, &inner.base, &inner.tls, &x)?,
        };
        inner.links[i].retarget(t, Token::from_text(&token)?);
    }
    let map = inner.map.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut jobs = Vec::new();
    for (i, e) in map.extents().iter().enumerate() {
        let Some(me) = m.extents.iter().find(|me| {
            me.extent
                .as_ref()
                .is_some_and(|x| (x.copy, x.index) == (e.copy, e.index))
        }) else {
            continue;
        };
        let token = Token::from_text(&me.token)?;
        if map.copy_takes_writes(e.copy as usize) {
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
    Ok(newly)
}

/// How often a writer renews while a copy of its mirror is stale or being rebuilt.
const MENDING_RENEW: Duration = Duration::from_secs(1);

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
            let wait = if failures == 0 {
                // After a third of what is left (the lease was just taken or extended).
                Duration::from_millis((left / 3).max(100))
            } else {
                Duration::from_millis((left / 4).clamp(100, 1_000))
            };
            // A copy not taking writes may be about to (a rebuild's join phase waits for this
            // writer's renewal): look every second while the mirror is not whole.
            let mending = inner.opts.access == Access::ReadWrite
                && inner
                    .map
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .extents()
                    .iter()
                    .any(|e| e.stale);
            if mending {
                wait.min(MENDING_RENEW)
            } else {
                wait
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
