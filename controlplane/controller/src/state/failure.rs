//! Failure and rebuild reports from a mirror's writer: copies that missed a write turn stale,
//! copies the writer copied the data back onto turn healthy.

use super::{volume, Error, Layout, NotWriter, State, VolumeRec};

/// Marks every extent of `copies` stale (`failed`: the byte ranges they may lack, see
/// [`super::dirty`], and whether they were not sent the writes) or healthy again (`None`), for
/// the volume's current read-write lease only, and never the last healthy copy stale.
pub(super) fn mark_copies(
    s: &mut State,
    lease_id: u64,
    copies: &[u32],
    failed: Option<(&[(u64, u64)], bool)>,
    now_ms: u64,
) -> Result<VolumeRec, Error> {
    let stale = failed.is_some();
    let dirty = failed.map(|f| f.0);
    let not_writer = |volume: &str, why| Error::NotCurrentWriter {
        lease: lease_id,
        volume: volume.into(),
        why,
    };
    let Some(l) = s.leases.get(&lease_id) else {
        // An ended lease keeps its usage record: say that it ended rather than "unknown".
        return Err(match s.usage.get(&lease_id) {
            Some(u) => not_writer(&u.volume, NotWriter::Ended),
            None => Error::UnknownLease(lease_id),
        });
    };
    let v = volume(s, &l.volume)?;
    if !l.rw {
        return Err(not_writer(&v.name, NotWriter::ReadOnly));
    }
    if l.expires_at_ms <= now_ms {
        return Err(not_writer(
            &v.name,
            NotWriter::Expired {
                expires_at_ms: l.expires_at_ms,
            },
        ));
    }
    if l.epoch != v.epoch {
        return Err(not_writer(
            &v.name,
            NotWriter::Fenced {
                lease_epoch: l.epoch,
                volume_epoch: v.epoch,
            },
        ));
    }
    let Layout::Mirror { copies: n } = v.layout else {
        return Err(Error::Invalid(format!(
            "volume {:?} is not a mirror: it has no copies to mark",
            v.name
        )));
    };
    if copies.is_empty() {
        return Err(Error::Invalid(format!(
            "volume {:?}: a report must name at least one copy",
            v.name
        )));
    }
    if let Some(c) = copies.iter().find(|&&c| c >= n) {
        return Err(Error::Invalid(format!(
            "volume {:?} has copies 0..{n}, there is no copy {c}",
            v.name
        )));
    }
    if !stale {
        super::rebuild::refuse_host_rebuild(v, copies)?;
    }
    let mut out = v.clone();
    if let Some((ranges, not_sent)) = failed {
        super::rebuild::failed(&mut out, copies, ranges, not_sent);
    }
    let is_healthy = |v: &VolumeRec, c: u32| {
        v.extents
            .iter()
            .filter(|e| e.piece.copy == c)
            .all(|e| !e.stale)
    };
    for &c in copies {
        match dirty {
            Some(ranges) => super::dirty::record(&mut out, c, is_healthy(v, c), ranges),
            None => {
                out.dirty.remove(&c);
            }
        }
    }
    for e in out.extents.iter_mut() {
        if copies.contains(&e.piece.copy) {
            e.stale = stale;
        }
    }
    let healthy = (0..n).any(|c| {
        out.extents
            .iter()
            .filter(|e| e.piece.copy == c)
            .all(|e| !e.stale)
    });
    if !healthy {
        return Err(Error::LastHealthyCopy {
            volume: out.name,
            copies: copies.to_vec(),
        });
    }
    s.volumes.insert(out.name.clone(), out.clone());
    Ok(out)
}
