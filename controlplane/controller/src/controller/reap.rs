//! The reaper: zeroes the ranges that changed hands (a deleted volume's extents, a shrink's cut-off
//! tails) on their nodes, then makes them allocatable again.

use dasmesh_wire::{Capabilities, Claim, DeviceId, Epoch, NodeId, Rights, VolumeId};

use std::sync::Arc;

use super::{now_ms, Controller};
use crate::state::{Command, State, VolumeRec};

/// The most one WRITE_ZEROES of the reaper covers.
const ZERO_PIECE: u64 = 256 << 20;

impl Controller {
    /// Discards the ranges shrinks gave back and the extents of every DELETING volume on their
    /// nodes, then makes them allocatable again: a freed range once it was discarded, a volume
    /// once all its extents were. Whatever sits on an unreachable node waits for a later call,
    /// so a range is never handed out with the old data on it.
    pub async fn reap_deleting(self: &Arc<Self>) {
        self.reap_freed().await;
        let (volumes, addrs) = self.read(|s| {
            let v: Vec<VolumeRec> = s.volumes.values().filter(|v| v.deleting).cloned().collect();
            (v, addresses(s))
        });
        let addr = |node: u64| addrs.get(&node).cloned().unwrap_or_default();
        for v in volumes {
            let mut all = true;
            for e in &v.extents {
                let p = e.piece;
                let node = addr(p.key.node);
                let at = Range {
                    key: p.key,
                    offset: p.offset,
                    length: p.length,
                };
                // Newer than any token of the volume's leases and of the range's past owners.
                let epoch = e.token_epoch(v.epoch);
                if let Err(err) = self.discard(v.id, at, epoch, &node).await {
                    tracing::warn!(volume = %v.name, node = %node, "discard failed, will retry: {err}");
                    all = false;
                }
            }
            if all {
                match self
                    .run(Command::PurgeVolume {
                        name: v.name.clone(),
                    })
                    .await
                {
                    Ok(_) => {
                        tracing::info!(volume = %v.name, "deleted: extents discarded and freed")
                    }
                    Err(err) => tracing::warn!(volume = %v.name, "purge: {err}"),
                }
            }
        }
    }

    /// Discards the ranges shrinks gave back, each on its node, and makes each one that was
    /// discarded allocatable again; the others wait for a later call.
    pub async fn reap_freed(self: &Arc<Self>) {
        let (freed, addrs) = self.read(|s| (s.freed.clone(), addresses(s)));
        let addr = |node: u64| addrs.get(&node).cloned().unwrap_or_default();
        for f in freed {
            let node = addr(f.key.node);
            let at = Range {
                key: f.key,
                offset: f.offset,
                length: f.length,
            };
            if let Err(err) = self.discard(f.volume_id, at, f.epoch, &node).await {
                tracing::warn!(node = %node, offset = f.offset, length = f.length, "discard of a freed range failed, will retry: {err}");
                continue;
            }
            if let Err(err) = self
                .run(Command::Discarded {
                    key: f.key,
                    offset: f.offset,
                    length: f.length,
                })
                .await
            {
                // Another reaper got there first, or the store failed (then: again later).
                tracing::warn!(node = %node, offset = f.offset, "freed range: {err}");
            }
        }
    }

    /// Makes a range read back as zeroes at its node, with a token the controller signs for
    /// itself: a discard where the device promises that discarded blocks read as zeroes, else
    /// WRITE_ZEROES (a block device may return old data from discarded blocks).
    async fn discard(
        &self,
        volume_id: u64,
        at: Range,
        epoch: u64,
        addr: &str,
    ) -> Result<(), dasmesh_client::Error> {
        let claim = Claim {
            terms: Default::default(),
            node_id: NodeId(at.key.node),
            volume_id: VolumeId(volume_id),
            device_id: DeviceId(at.key.device),
            range_offset: at.offset,
            range_length: at.length,
            rights: Rights::ReadWrite,
            epoch: Epoch(epoch),
            issued_at_ms: now_ms(),
            expires_at_ms: now_ms() + 60_000,
            nonce: 0,
        };
        let tls = match self.read(|s| s.nodes.get(&at.key.node).is_some_and(|n| n.data_tls)) {
            false => None,
            true => Some(DATA_TLS.get().cloned().ok_or_else(|| {
                dasmesh_client::Error::Invalid(format!(
                    "node {addr} serves its data plane over mutual TLS, and this controller has \
                     no certificate (--cert) to show it"
                ))
            })?),
        };
        let opts = dasmesh_client::ConnectOptions {
            connect_timeout: std::time::Duration::from_secs(3),
            tls,
            ..Default::default()
        };
        let c = dasmesh_client::Connection::connect(
            addr,
            DeviceId(at.key.device),
            &claim.sign(&self.signing_key(now_ms())),
            &opts,
        )
        .await?;
        if c.info().capabilities.has(Capabilities::DISCARD_ZEROES) {
            c.discard(at.offset, at.length).await?;
        } else {
            // Zeroing writes every byte: in pieces that each finish well inside the request
            // timeout, even on a slow disk.
            let end = at.offset + at.length;
            for off in (at.offset..end).step_by(ZERO_PIECE as usize) {
                c.write_zeroes(off, ZERO_PIECE.min(end - off), false)
                    .await?;
            }
        }
        c.flush().await
    }
}

/// TLS for the data plane of nodes that serve it (`dasmesh-node --tls`), made from this
/// controller's certificate at start; unset without one.
pub static DATA_TLS: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> =
    std::sync::OnceLock::new();

fn addresses(s: &State) -> std::collections::BTreeMap<u64, String> {
    s.nodes
        .values()
        .map(|n| (n.id, n.address.clone()))
        .collect()
}

/// A byte range of one device, to discard.
#[derive(Clone, Copy, Debug)]
struct Range {
    key: crate::alloc::DeviceKey,
    offset: u64,
    length: u64,
}
