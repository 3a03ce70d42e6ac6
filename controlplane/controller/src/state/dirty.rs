//! What changed on a stale mirror copy since it turned stale: the volume's byte ranges written
//! since, kept in whole [`REGION`]s, merged and bounded, so that a resync copies only those.
//!
//! The writer reports them with its failure reports (before it acknowledges the writes), so the
//! record survives the writer. A copy that turns stale with ranges starts its record with them;
//! one that turns stale without any (a failed flush, an older writer) has none and is copied in
//! full; a record that would pass [`MAX_RANGES`] is dropped (copied in full); a rebuilt copy's
//! record ends.

use super::{Error, VolumeRec};

/// The granularity of the record.
pub const REGION: u64 = 1 << 20;
/// The most ranges a copy's record keeps; past it the copy is copied in full.
pub const MAX_RANGES: usize = 1024;
/// The most ranges one report carries.
pub const MAX_REPORTED: usize = 256;

/// Checks a report's ranges: at most [`MAX_REPORTED`], none empty or past 2^64.
pub fn check(ranges: &[(u64, u64)]) -> Result<(), Error> {
    if ranges.len() > MAX_REPORTED {
        return Err(Error::Invalid(format!(
            "a report carries {} dirty ranges, at most {MAX_REPORTED}",
            ranges.len()
        )));
    }
    if let Some((o, l)) = ranges
        .iter()
        .find(|(o, l)| *l == 0 || o.checked_add(*l).is_none())
    {
        return Err(Error::Invalid(format!(
            "dirty range at {o} of {l} bytes: empty or past the largest offset"
        )));
    }
    Ok(())
}

/// `ranges` rounded out to whole regions, clipped to `size`, sorted and merged.
pub fn regions(ranges: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut r: Vec<(u64, u64)> = ranges
        .iter()
        .filter(|(o, _)| *o < size)
        .map(|&(o, l)| {
            let start = o - o % REGION;
            let end = o.saturating_add(l).min(size);
            let end = end.div_ceil(REGION).saturating_mul(REGION).min(size);
            (start, end)
        })
        .collect();
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Records a failure report on `v` for `copy`: `was_healthy` before it, with `ranges`.
pub fn record(v: &mut VolumeRec, copy: u32, was_healthy: bool, ranges: &[(u64, u64)]) {
    let had = v.dirty.remove(&copy);
    if ranges.is_empty() {
        // Nothing said about what it lacks: it is copied in full.
        return;
    }
    let base = match (was_healthy, had) {
        (true, _) => Vec::new(),
        (false, Some(h)) => h,
        // Stale already, with no record: it stays to be copied in full.
        (false, None) => return,
    };
    let mut all = base;
    all.extend(regions(ranges, v.size).into_iter().map(|(s, e)| (s, e - s)));
    let merged: Vec<(u64, u64)> = regions(&all, v.size)
        .into_iter()
        .map(|(s, e)| (s, e - s))
        .collect();
    if merged.len() <= MAX_RANGES {
        v.dirty.insert(copy, merged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::Layout;
    use crate::state::Requirements;

    const M: u64 = REGION;

    fn vol() -> VolumeRec {
        VolumeRec {
            note: String::new(),
            id: 1,
            name: "v".into(),
            size: 64 * M,
            layout: Layout::Mirror { copies: 2 },
            extents: Vec::new(),
            req: Requirements::default(),
            created_ms: 0,
            epoch: 1,
            deleting: false,
            dirty: Default::default(),
        }
    }

    #[test]
    fn regions_round_out_clip_and_merge() {
        assert_eq!(regions(&[(10, 1)], 64 * M), vec![(0, M)]);
        assert_eq!(regions(&[(M - 1, 2)], 64 * M), vec![(0, 2 * M)]);
        assert_eq!(
            regions(&[(5 * M, M), (0, 1), (M, 1), (70 * M, 1)], 64 * M),
            vec![(0, 2 * M), (5 * M, 6 * M)]
        );
        // The last region of a volume that is not a whole number of them.
        assert_eq!(regions(&[(M + 5, 1)], M + 4096), vec![(M, M + 4096)]);
        assert_eq!(regions(&[(0, u64::MAX)], 3 * M), vec![(0, 3 * M)]);
    }

    #[test]
    fn a_copy_gathers_what_was_written_while_it_was_stale() {
        let mut v = vol();
        record(&mut v, 1, true, &[(3 * M + 7, 10)]);
        assert_eq!(v.dirty[&1], vec![(3 * M, M)]);
        record(&mut v, 1, false, &[(4 * M, 1), (10 * M, 2 * M)]);
        assert_eq!(v.dirty[&1], vec![(3 * M, 2 * M), (10 * M, 2 * M)]);
        // A report without ranges: copied in full from now on, and no later report changes it.
        record(&mut v, 1, false, &[]);
        assert!(!v.dirty.contains_key(&1));
        record(&mut v, 1, false, &[(0, 1)]);
        assert!(!v.dirty.contains_key(&1));
        // Healthy again (rebuilt) and then failing: a fresh record.
        record(&mut v, 1, true, &[(0, 1)]);
        assert_eq!(v.dirty[&1], vec![(0, M)]);
    }

    #[test]
    fn a_record_past_its_bound_means_a_full_copy() {
        let mut v = vol();
        v.size = 4096 * M;
        let every_other: Vec<(u64, u64)> = (0..MAX_RANGES as u64).map(|i| (2 * i * M, 1)).collect();
        for (i, chunk) in every_other.chunks(MAX_REPORTED).enumerate() {
            // The first report turns the copy stale; the others add to its record.
            record(&mut v, 0, i == 0, chunk);
        }
        assert_eq!(v.dirty[&0].len(), MAX_RANGES);
        record(&mut v, 0, false, &[(2 * MAX_RANGES as u64 * M, 1)]);
        assert!(!v.dirty.contains_key(&0));
    }

    #[test]
    fn bad_reports_are_refused() {
        assert!(check(&[(0, 0)]).is_err());
        assert!(check(&[(u64::MAX, 2)]).is_err());
        assert!(check(&vec![(0, 1); MAX_REPORTED + 1]).is_err());
        assert!(check(&vec![(0, 1); MAX_REPORTED]).is_ok());
    }
}
