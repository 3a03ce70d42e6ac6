//! Replacing a mirror copy on another node, and the node-to-node rebuild that fills it.
//!
//! A copy whose node is lost (down longer than the replacement policy, or gone for good), or
//! that an operator moves, gets new extents on nodes no other copy uses; the old ones wait in
//! the freed list for their discard. Each new extent is filled by its own node, which pulls the
//! data from a healthy copy. It goes through three phases ([`Phase`]), which is what keeps a
//! host write from being lost to the copy (docs/volumes.md, "Replacing a lost copy"):
//!
//! 1. **Guard**: the node is told of the extent and starts to track every host write to it.
//!    Hosts neither read nor write it yet.
//! 2. **Join**: the node tracks. Hosts are told (on renewal) to write to it as well; the
//!    volume's writer says it does, after every write it sent before has completed (its next
//!    renewal carries the extent's epoch in `joined`). Without a writer this phase is skipped.
//! 3. **Copy**: the node copies from a healthy copy, never over a block a host wrote since
//!    phase 1, and reports how far it got (`done`, a checkpoint kept here: a restarted node, or
//!    a new controller, goes on from it). At the end the extent is healthy.
//!
//! A host write the extent fails (its node died, say) sends it back to phase 1 with its
//! checkpoint moved back to the first byte the writer says may be missing, and a new attempt
//! number: the node forgets which blocks hosts wrote (they wrote them to the other copies
//! alone since) and the extent leaves phase 1 only on a report of the new attempt.

use serde::{Deserialize, Serialize};

use super::{candidates, new_epoch, volume, Error, ExtentRec, Layout, NodeState, State, VolumeRec};
use crate::alloc::{self, CopyPlace};
use crate::state::FreedRange;

/// The most rebuilds one heartbeat reports: each can change a volume record, and a heartbeat
/// with its usage (at most 100 leases) stays one etcd transaction (128 operations). A node with
/// more reports them over several beats, each in turn.
pub const MAX_REPORTS: usize = 16;

/// Where a replacement extent is in its rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// The node is to track host writes to it; no host touches it yet.
    Guard,
    /// Tracked; the writer is to write to it too, and to say it does.
    Join,
    /// Every write reaches it; its node copies the rest from a healthy copy.
    Copy,
}

/// A replacement extent's rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebuild {
    /// The phase.
    pub phase: Phase,
    /// Bytes from the extent's start that are copied (the checkpoint).
    pub done: u64,
    /// Moves on each time a write failed on it: the node then forgets which blocks hosts wrote
    /// (they may have written them elsewhere since) and says so by reporting this number.
    #[serde(default)]
    pub attempt: u32,
}

/// What a node says of a rebuild it runs (in its heartbeat).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The device.
    pub device: u32,
    /// The extent's first byte on it.
    pub offset: u64,
    /// Its length.
    pub length: u64,
    /// The node tracks host writes to it.
    pub guarded: bool,
    /// The attempt its tracking started with ([`Rebuild::attempt`]).
    #[serde(default)]
    pub attempt: u32,
    /// Bytes from the extent's start copied and durable (while copying).
    pub done: u64,
}

/// Whether the volume has a read-write lease that can write now (its writer must join a new
/// extent before the copy starts).
fn has_writer(s: &State, v: &VolumeRec, now_ms: u64) -> bool {
    s.leases
        .values()
        .any(|l| l.volume == v.name && l.rw && l.epoch == v.epoch && l.expires_at_ms > now_ms)
}

/// Whether every extent of `copy` is healthy.
pub fn copy_healthy(v: &VolumeRec, copy: u32) -> bool {
    v.extents
        .iter()
        .filter(|e| e.piece.copy == copy)
        .all(|e| !e.stale)
}

/// The extents of `copy` in index order, each with the volume offset it starts at.
pub fn copy_pieces(v: &VolumeRec, copy: u32) -> Vec<(usize, u64)> {
    let mut idx: Vec<usize> = (0..v.extents.len())
        .filter(|&i| v.extents[i].piece.copy == copy)
        .collect();
    idx.sort_by_key(|&i| v.extents[i].piece.index);
    let mut at = 0;
    idx.into_iter()
        .map(|i| {
            let start = at;
            at += v.extents[i].piece.length;
            (i, start)
        })
        .collect()
}

/// Replaces every extent of `copy` of mirror `name` with new ones (on `node` if given) that
/// their nodes fill from a healthy copy. With `auto` (the controller's own policy), a pool with
/// no room is not an error: the volume keeps the reason in its note, and stays degraded.
pub(super) fn replace(
    s: &mut State,
    name: &str,
    copy: u32,
    node: Option<u64>,
    auto: bool,
    headroom_pct: u64,
) -> Result<VolumeRec, Error> {
    let v = volume(s, name)?.clone();
    super::refuse_if_deleting(&v)?;
    let Layout::Mirror { copies } = v.layout else {
        return Err(Error::Invalid(format!(
            "volume {name:?} is not a mirror: it has no copies to replace"
        )));
    };
    if copy >= copies {
        return Err(Error::Invalid(format!(
            "volume {name:?} has copies 0..{copies}, there is no copy {copy}"
        )));
    }
    if !(0..copies).any(|c| c != copy && copy_healthy(&v, c)) {
        let why = format!(
            "volume {name:?}: no other copy is healthy, so copy {copy} has nothing to be rebuilt from"
        );
        if auto {
            let mut out = v.clone();
            out.note = format!("copy {copy} is lost with its node, and {why}");
            s.volumes.insert(out.name.clone(), out.clone());
            return Ok(out);
        }
        return Err(Error::Invalid(why));
    }
    // Not on a node another copy uses (nor, when asked, in its failure domain), and not where
    // this copy is now: it moves off the node it is replaced for.
    let mut others = CopyPlace::default();
    for e in v.extents.iter().filter(|e| e.piece.copy != copy) {
        others.nodes.insert(e.piece.key.node);
        if let Some(n) = s.nodes.get(&e.piece.key.node) {
            others.domains.insert(n.failure_domain.clone());
        }
    }
    let own: std::collections::BTreeSet<u64> = v
        .extents
        .iter()
        .filter(|e| e.piece.copy == copy)
        .map(|e| e.piece.key.node)
        .collect();
    let mut cands = super::qos::admissible(s, candidates(s), v.layout, &v.req, headroom_pct)?;
    if let Some(id) = node {
        match s.nodes.get(&id) {
            None => return Err(Error::UnknownNode(id)),
            Some(n) if n.state != NodeState::Up => {
                return Err(Error::Invalid(format!("node {id} is not up")))
            }
            Some(_) if own.contains(&id) => {
                return Err(Error::Invalid(format!(
                    "copy {copy} of volume {name:?} is on node {id} already; name another node"
                )))
            }
            Some(_) if others.nodes.contains(&id) => {
                return Err(Error::Invalid(format!(
                    "node {id} holds another copy of volume {name:?}: two copies on one node \
                     would both be lost with it"
                )))
            }
            Some(_) => cands.retain(|c| c.key.node == id),
        }
    }
    others.nodes.extend(own);
    let pieces = copy_pieces(&v, copy);
    let lengths: Vec<u64> = pieces
        .iter()
        .map(|&(i, _)| v.extents[i].piece.length)
        .collect();
    let places = match alloc::allocate_copy(&cands, &others, &lengths, v.req.spread_failure_domains)
    {
        Ok(p) => p,
        Err(why) if auto => {
            let mut out = v.clone();
            out.note = format!("copy {copy} waits for a node to be rebuilt on: {why}");
            s.volumes.insert(out.name.clone(), out.clone());
            return Ok(out);
        }
        Err(why) => return Err(Error::Insufficient(format!("copy {copy}: {why}"))),
    };
    // Newer than any token for the old ranges or the new ones ever carried: the discards of
    // the old ranges fence whoever still holds a token for them.
    let epoch = new_epoch(s)?;
    let mut out = v.clone();
    for (&(i, _), (key, offset)) in pieces.iter().zip(places) {
        let old = v.extents[i].piece;
        s.freed.push(FreedRange {
            key: old.key,
            offset: old.offset,
            length: old.length,
            epoch,
            volume_id: v.id,
        });
        out.extents[i] = ExtentRec {
            piece: alloc::Piece { key, offset, ..old },
            stale: true,
            epoch,
            rebuild: Some(Rebuild {
                phase: Phase::Guard,
                done: 0,
                attempt: 0,
            }),
        };
    }
    out.dirty.remove(&copy);
    out.note.clear();
    s.volumes.insert(out.name.clone(), out.clone());
    Ok(out)
}

/// Takes a node's reports of the rebuilds it runs: a guarded extent moves on (to Join, or to
/// Copy when the volume has no writer), a copying one keeps its checkpoint, and one copied to
/// its end is healthy. Reports of extents not rebuilding on this node are ignored (one that
/// was replaced again, or deleted). Returns the volumes changed.
pub(super) fn progress(
    s: &mut State,
    node_id: u64,
    reports: &[Progress],
    now_ms: u64,
) -> Vec<String> {
    let mut changed = Vec::new();
    let names: Vec<String> = s
        .volumes
        .values()
        .filter(|v| {
            !v.deleting
                && v.extents
                    .iter()
                    .any(|e| e.rebuild.is_some() && e.piece.key.node == node_id)
        })
        .map(|v| v.name.clone())
        .collect();
    for name in names {
        let v = &s.volumes[&name];
        let writer = has_writer(s, v, now_ms);
        let mut out = v.clone();
        for e in out.extents.iter_mut() {
            let p = e.piece;
            let Some(rb) = e.rebuild.as_mut() else {
                continue;
            };
            let Some(r) = reports.iter().find(|r| {
                p.key.node == node_id
                    && r.device == p.key.device
                    && r.offset == p.offset
                    && r.length == p.length
            }) else {
                continue;
            };
            match rb.phase {
                Phase::Guard if r.guarded && r.attempt == rb.attempt => {
                    rb.phase = if writer { Phase::Join } else { Phase::Copy };
                }
                Phase::Join if !writer => rb.phase = Phase::Copy,
                // Only the current attempt's progress counts (a report sent before the node
                // learned of a new attempt may run ahead of the rewound checkpoint).
                Phase::Copy if r.guarded && r.attempt == rb.attempt && r.done > rb.done => {
                    rb.done = r.done.min(p.length);
                    if rb.done == p.length {
                        e.rebuild = None;
                        e.stale = false;
                    }
                }
                _ => {}
            }
        }
        let healthy: Vec<u32> = out
            .extents
            .iter()
            .map(|e| e.piece.copy)
            .filter(|&c| copy_healthy(&out, c))
            .collect();
        out.dirty.retain(|c, _| !healthy.contains(c));
        if out != *v {
            s.volumes.insert(name.clone(), out);
            changed.push(name);
        }
    }
    changed
}

/// The writer of volume `name` writes to the rebuilding extents whose epochs are in `joined`:
/// those waiting for it go on to copy.
pub(super) fn joined(v: &mut VolumeRec, joined: &[u64]) {
    for e in v.extents.iter_mut() {
        if let Some(rb) = e.rebuild.as_mut() {
            if rb.phase == Phase::Join && joined.contains(&e.epoch) {
                rb.phase = Phase::Copy;
            }
        }
    }
}

/// A write failed on rebuilding extents of the failed `copies` (their node died, say), or
/// (`not_sent`) writes were not sent to them: their checkpoint goes back to the first byte
/// `dirty` (volume byte ranges the writer says they may miss; none: anything) names within
/// them. Unless they were neither sent writes nor taking any yet (guard or join phase, not
/// sent), they go back to the guard phase under a new attempt: what their node marked as
/// written by hosts is no guide any more.
pub(super) fn failed(v: &mut VolumeRec, copies: &[u32], dirty: &[(u64, u64)], not_sent: bool) {
    for &c in copies {
        for (i, start) in copy_pieces(v, c) {
            let e = &mut v.extents[i];
            let Some(rb) = e.rebuild.as_mut() else {
                continue;
            };
            let end = start + e.piece.length;
            let first = if dirty.is_empty() {
                Some(0)
            } else {
                dirty
                    .iter()
                    .filter(|&&(o, l)| o < end && o.saturating_add(l) > start)
                    .map(|&(o, _)| o.saturating_sub(start))
                    .min()
            };
            if let Some(first) = first {
                rb.done = rb.done.min(first / alloc::ALIGN * alloc::ALIGN);
            }
            if !(not_sent && rb.phase != Phase::Copy) {
                rb.phase = Phase::Guard;
                rb.attempt = rb.attempt.wrapping_add(1);
            }
        }
    }
}

/// The copies of mirrors with an extent on a node that is lost for the policy: down or
/// deregistered (a clean shutdown deregisters too, so it counts the same) with no heartbeat for
/// more than `after_ms` (its last heartbeat as this controller saw it).
pub fn lost_copies(s: &State, after_ms: u64, now_ms: u64) -> Vec<(String, u32)> {
    let lost = |node: u64| {
        s.nodes.get(&node).is_none_or(|n| {
            n.state != NodeState::Up && now_ms.saturating_sub(n.last_heartbeat_ms) > after_ms
        })
    };
    let mut out = Vec::new();
    for v in s.volumes.values().filter(|v| !v.deleting) {
        let Layout::Mirror { copies } = v.layout else {
            continue;
        };
        for c in 0..copies {
            if v.extents
                .iter()
                .any(|e| e.piece.copy == c && lost(e.piece.key.node))
            {
                out.push((v.name.clone(), c));
            }
        }
    }
    out
}

/// Refuses a host's "rebuilt" report for copies their nodes are rebuilding.
pub(super) fn refuse_host_rebuild(v: &VolumeRec, copies: &[u32]) -> Result<(), Error> {
    if let Some(e) = v
        .extents
        .iter()
        .find(|e| copies.contains(&e.piece.copy) && e.rebuild.is_some())
    {
        return Err(Error::Invalid(format!(
            "volume {:?}: copy {} is being rebuilt by node {}, not by a host",
            v.name, e.piece.copy, e.piece.key.node
        )));
    }
    Ok(())
}
