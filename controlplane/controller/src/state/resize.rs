//! Resizing a volume: shrinking cuts extents back (the tail waits for its discard before
//! reuse), growing appends new ones (a mirror's on each copy's own side of the pool).

use std::collections::BTreeSet;

use super::{
    alloc, candidates, freed, new_epoch, refuse_if_deleting, refuse_if_leased, volume, Error,
    ExtentRec, Layout, State, VolumeRec,
};
use crate::alloc::{CopyPlace, Piece};

/// Resizes volume `name` to `size` (rounded up to the alignment).
pub(super) fn resize(
    s: &mut State,
    name: &str,
    size: u64,
    headroom_pct: u64,
) -> Result<VolumeRec, Error> {
    let v = volume(s, name)?.clone();
    refuse_if_deleting(&v)?;
    if let Some(e) = v.extents.iter().find(|e| e.rebuild.is_some()) {
        return Err(Error::Invalid(format!(
            "volume {name:?}: copy {} is being rebuilt on node {}; resize it once that is done",
            e.piece.copy, e.piece.key.node
        )));
    }
    let size = alloc::align_up(size);
    if size == v.size {
        return Ok(v);
    }
    let out = if size < v.size {
        refuse_if_leased(s, name, "shrinking")?;
        if size == 0 {
            return Err(Error::Invalid(format!(
                "volume {name:?}: size must be greater than 0"
            )));
        }
        let shrunk = shrink(&v, size)?;
        // A fresh epoch: newer than any token for the freed ranges carried.
        let epoch = new_epoch(s)?;
        freed::record(s, &v, &shrunk, epoch);
        shrunk
    } else {
        grow(s, &v, size, headroom_pct)?
    };
    s.volumes.insert(name.to_string(), out.clone());
    Ok(out)
}

/// Cuts every copy's extents back to `size` bytes (the tail is freed); stripes cannot shrink.
fn shrink(v: &VolumeRec, size: u64) -> Result<VolumeRec, Error> {
    if let Layout::Stripe { width, .. } = v.layout {
        // Keep the stripe sets that start below the new size; the last may be partly used.
        let mut out = v.clone();
        out.size = size;
        let mut extents = v.extents.clone();
        extents.sort_by_key(|e| e.piece.index);
        out.extents.clear();
        let mut start = 0u64;
        for set in extents.chunks(width as usize) {
            if start >= size {
                break;
            }
            start += set.iter().map(|e| e.piece.length).sum::<u64>();
            out.extents.extend_from_slice(set);
        }
        return Ok(out);
    }
    let mut out = v.clone();
    out.size = size;
    let copies = match v.layout {
        Layout::Mirror { copies } => copies,
        _ => 1,
    };
    out.extents.clear();
    for copy in 0..copies {
        let mut mine: Vec<ExtentRec> = v
            .extents
            .iter()
            .filter(|e| e.piece.copy == copy)
            .copied()
            .collect();
        mine.sort_by_key(|e| e.piece.index);
        let mut left = size;
        for mut e in mine {
            if left == 0 {
                break;
            }
            e.piece.length = e.piece.length.min(left);
            left -= e.piece.length;
            out.extents.push(e);
        }
    }
    Ok(out)
}

/// Appends extents to reach `size` (single and concat become concat; mirror grows every copy,
/// each on nodes no other copy uses). New extents carry a fresh epoch.
fn grow(s: &mut State, v: &VolumeRec, size: u64, headroom_pct: u64) -> Result<VolumeRec, Error> {
    let extra = size - v.size;
    let mut out = v.clone();
    out.size = size;
    let cands = super::qos::admissible(s, candidates(s), v.layout, &v.req, headroom_pct)?;
    let pieces: Vec<Piece> = match v.layout {
        Layout::Single | Layout::Concat => {
            let base = v.extents.len() as u32;
            out.layout = Layout::Concat;
            alloc::allocate(&cands, Layout::Concat, extra, false)
                .map_err(Error::Insufficient)?
                .into_iter()
                .enumerate()
                .map(|(i, p)| Piece {
                    index: base + i as u32,
                    ..p
                })
                .collect()
        }
        Layout::Mirror { copies } => {
            let placed: Vec<CopyPlace> = (0..copies).map(|c| copy_place(s, v, c)).collect();
            alloc::allocate_mirror_growth(&cands, &placed, extra, v.req.spread_failure_domains)
                .map_err(Error::Insufficient)?
                .into_iter()
                .map(|p| Piece {
                    index: v.extents.iter().filter(|e| e.piece.copy == p.copy).count() as u32,
                    ..p
                })
                .collect()
        }
        Layout::Stripe { .. } => {
            // A new stripe set of `width` extents follows the existing sets (extent index
            // = set * width + stripe).
            let base = v.extents.len() as u32;
            alloc::allocate(&cands, v.layout, extra, false)
                .map_err(Error::Insufficient)?
                .into_iter()
                .map(|p| Piece {
                    index: p.index + base,
                    ..p
                })
                .collect()
        }
    };
    let epoch = new_epoch(s)?;
    out.extents
        .extend(pieces.into_iter().map(|piece| ExtentRec {
            piece,
            stale: false,
            rebuild: None,
            epoch,
        }));
    Ok(out)
}

/// The nodes copy `copy` of `v` has extents on, and their failure domains (a node the state no
/// longer knows has none).
fn copy_place(s: &State, v: &VolumeRec, copy: u32) -> CopyPlace {
    let nodes: BTreeSet<u64> = v
        .extents
        .iter()
        .filter(|e| e.piece.copy == copy)
        .map(|e| e.piece.key.node)
        .collect();
    let domains = nodes
        .iter()
        .filter_map(|n| s.nodes.get(n).map(|n| n.failure_domain.clone()))
        .collect();
    CopyPlace { nodes, domains }
}
