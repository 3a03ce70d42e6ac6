//! Resizing a volume: shrinking cuts extents back, growing appends new ones.

use super::{alloc, candidates, Error, ExtentRec, Layout, State, VolumeRec};

/// Cuts every copy's extents back to `size` bytes (the tail is freed); stripes cannot shrink.
pub(super) fn shrink(v: &VolumeRec, size: u64) -> Result<VolumeRec, Error> {
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

/// Appends extents to reach `size` (single and concat become concat; mirror grows every copy).
pub(super) fn grow(s: &State, v: &VolumeRec, size: u64) -> Result<VolumeRec, Error> {
    let extra = size - v.size;
    let mut out = v.clone();
    out.size = size;
    match v.layout {
        Layout::Single | Layout::Concat => {
            let pieces = alloc::allocate(&candidates(s), Layout::Concat, extra, false)
                .map_err(Error::Insufficient)?;
            let base = v.extents.len() as u32;
            for (i, mut p) in pieces.into_iter().enumerate() {
                p.index = base + i as u32;
                out.extents.push(ExtentRec {
                    piece: p,
                    stale: false,
                });
            }
            out.layout = Layout::Concat;
        }
        Layout::Mirror { copies } => {
            let pieces = alloc::allocate(
                &candidates(s),
                Layout::Mirror { copies },
                extra,
                v.req.spread_failure_domains,
            )
            .map_err(Error::Insufficient)?;
            for mut p in pieces {
                p.index = v.extents.iter().filter(|e| e.piece.copy == p.copy).count() as u32;
                out.extents.push(ExtentRec {
                    piece: p,
                    stale: false,
                });
            }
        }
        Layout::Stripe { .. } => {
            // A new stripe set of `width` extents follows the existing sets (extent index
            // = set * width + stripe).
            let pieces = alloc::allocate(&candidates(s), v.layout, extra, false)
                .map_err(Error::Insufficient)?;
            let base = v.extents.len() as u32;
            for mut p in pieces {
                p.index += base;
                out.extents.push(ExtentRec {
                    piece: p,
                    stale: false,
                });
            }
        }
    }
    Ok(out)
}
