//! What a mirror's writer tells the control plane about stale copies: which regions of the
//! volume a copy may lack, so that its resync copies only those (docs/volumes.md, "Resync of
//! what changed").
//!
//! Two things are kept:
//! - the regions written since the last successful flush: a copy that fails now may have lost
//!   any of them (its node acknowledged them, but they may not have reached its disk), so they
//!   go with a failure report;
//! - per stale copy, the regions the controller has recorded from this writer: a write to a
//!   region not among them is reported before it is acknowledged, so the record survives the
//!   writer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

/// The granularity (the controller's too).
pub(super) const REGION: u64 = 1 << 20;
/// Regions written since the last flush kept at most; past it a failing copy is copied in full.
const MAX_UNFLUSHED: usize = 4096;
/// The most ranges one report carries (the controller's bound).
const MAX_REPORTED: usize = 256;

enum Recorded {
    /// The controller records these regions of the copy (and it was told of them).
    Regions(BTreeSet<u64>),
    /// The controller keeps no record for the copy: it is copied in full; nothing to report.
    Untracked,
}

#[derive(Default)]
struct State {
    seq: u64,
    /// Region -> the sequence number of its last write.
    unflushed: BTreeMap<u64, u64>,
    /// Set (with the sequence number then) when `unflushed` overflowed.
    overflow: Option<u64>,
    recorded: HashMap<usize, Recorded>,
}

/// The writer's side of dirty-region tracking (one per mounted mirror).
#[derive(Default)]
pub(super) struct Tracker(Mutex<State>);

/// The regions `[offset, offset + len)` touches.
pub(super) fn regions_of(offset: u64, len: u64) -> std::ops::Range<u64> {
    let end = offset.saturating_add(len.max(1));
    offset / REGION..end.div_ceil(REGION)
}

/// Regions as merged byte ranges, or `None` when more than one report carries.
fn ranges(regions: impl Iterator<Item = u64>) -> Option<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for r in regions {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == r * REGION => last.1 += REGION,
            _ => out.push((r * REGION, REGION)),
        }
    }
    (out.len() <= MAX_REPORTED).then_some(out)
}

impl Tracker {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a modifying operation on `[offset, offset + len)` once its copies answered.
    pub(super) fn wrote(&self, offset: u64, len: u64) {
        let mut s = self.state();
        s.seq += 1;
        let seq = s.seq;
        if s.overflow.is_none() {
            for r in regions_of(offset, len) {
                s.unflushed.insert(r, seq);
            }
            if s.unflushed.len() > MAX_UNFLUSHED {
                s.unflushed.clear();
                s.overflow = Some(seq);
            }
        } else {
            s.overflow = Some(seq);
        }
    }

    /// Where a flush starts: [`Tracker::flushed`] takes it back.
    pub(super) fn flush_started(&self) -> u64 {
        self.state().seq
    }

    /// A flush that started at `upto` succeeded: what was written before it is on every
    /// healthy copy's disk.
    pub(super) fn flushed(&self, upto: u64) {
        let mut s = self.state();
        s.unflushed.retain(|_, seq| *seq > upto);
        if s.overflow.is_some_and(|o| o <= upto) {
            s.overflow = None;
        }
    }

    /// What a copy failing an operation on `op` (none for a flush) may lack: the regions
    /// written since the last flush and the operation's; `None`: too much to say (copied in
    /// full).
    pub(super) fn failed(&self, op: Option<(u64, u64)>) -> Option<Vec<(u64, u64)>> {
        let s = self.state();
        if s.overflow.is_some() {
            return None;
        }
        let mut all: BTreeSet<u64> = s.unflushed.keys().copied().collect();
        if let Some((o, l)) = op {
            all.extend(regions_of(o, l));
        }
        ranges(all.into_iter())
    }

    /// Of the stale `copies`, those whose record lacks a region of `ranges`.
    pub(super) fn unrecorded(&self, copies: &[usize], ranges: &[(u64, u64)]) -> Vec<usize> {
        let s = self.state();
        copies
            .iter()
            .copied()
            .filter(|c| match s.recorded.get(c) {
                Some(Recorded::Untracked) => false,
                Some(Recorded::Regions(have)) => ranges
                    .iter()
                    .any(|&(o, l)| regions_of(o, l).any(|r| !have.contains(&r))),
                None => true,
            })
            .collect()
    }

    /// The controller took a report of `regions` (`None`: none were sent) for `copies`, and
    /// keeps a record for those in `tracked`.
    pub(super) fn recorded(
        &self,
        copies: &[usize],
        regions: Option<&[(u64, u64)]>,
        tracked: &[u32],
    ) {
        let mut s = self.state();
        for &c in copies {
            if !tracked.contains(&(c as u32)) {
                s.recorded.insert(c, Recorded::Untracked);
                continue;
            }
            let e = s
                .recorded
                .entry(c)
                .or_insert_with(|| Recorded::Regions(BTreeSet::new()));
            if let (Recorded::Regions(have), Some(rs)) = (e, regions) {
                for &(o, l) in rs {
                    have.extend(regions_of(o, l));
                }
            }
        }
    }

    /// `copies` are healthy again: their records ended.
    pub(super) fn healthy_again(&self, copies: &[usize]) {
        let mut s = self.state();
        for c in copies {
            s.recorded.remove(c);
        }
    }

    /// The byte ranges of an operation, for a report.
    pub(super) fn op_ranges(offset: u64, len: u64) -> Vec<(u64, u64)> {
        ranges(regions_of(offset, len)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const M: u64 = REGION;

    #[test]
    fn a_failing_copy_may_lack_what_was_not_flushed() {
        let t = Tracker::default();
        t.wrote(0, 4096);
        t.wrote(5 * M + 1, M);
        assert_eq!(t.failed(None), Some(vec![(0, M), (5 * M, 2 * M)]));
        assert_eq!(
            t.failed(Some((M, 10))),
            Some(vec![(0, 2 * M), (5 * M, 2 * M)])
        );
        let at = t.flush_started();
        t.wrote(9 * M, 1); // during the flush: not covered by it
        t.flushed(at);
        assert_eq!(t.failed(None), Some(vec![(9 * M, M)]));
    }

    #[test]
    fn too_much_unflushed_means_a_full_copy_until_a_flush() {
        let t = Tracker::default();
        for i in 0..=MAX_UNFLUSHED as u64 {
            t.wrote(2 * i * M, 1);
        }
        assert_eq!(t.failed(None), None);
        let at = t.flush_started();
        t.flushed(at);
        assert_eq!(t.failed(None), Some(vec![]));
        // More separate ranges than a report carries.
        for i in 0..=MAX_REPORTED as u64 {
            t.wrote(2 * i * M, 1);
        }
        assert_eq!(t.failed(None), None);
    }

    #[test]
    fn a_stale_copy_is_told_each_region_once_unless_untracked() {
        let t = Tracker::default();
        assert_eq!(t.unrecorded(&[1, 2], &[(0, 4096)]), vec![1, 2]);
        t.recorded(&[1, 2], Some(&[(0, M)]), &[1]);
        assert_eq!(t.unrecorded(&[1, 2], &[(0, 4096)]), Vec::<usize>::new());
        assert_eq!(t.unrecorded(&[1, 2], &[(0, 1), (M, 4096)]), vec![1]);
        t.healthy_again(&[1, 2]);
        assert_eq!(t.unrecorded(&[1, 2], &[(0, 4096)]), vec![1, 2]);
    }

    #[test]
    fn regions_of_a_range() {
        assert_eq!(regions_of(0, 1), 0..1);
        assert_eq!(regions_of(M - 1, 2), 0..2);
        assert_eq!(regions_of(3 * M, M), 3..4);
        assert_eq!(regions_of(3 * M, 0), 3..4);
    }
}
