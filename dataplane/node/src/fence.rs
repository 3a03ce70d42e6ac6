//! Fencing epochs: per device range, the highest epoch the node has admitted.
//!
//! A token is admitted only if no overlapping range has seen a newer epoch. Admitting a newer
//! epoch bumps a generation counter, which every connection compares on each request (one
//! atomic load); on a change it re-checks its own epoch and, if overtaken, fails with StaleEpoch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use dasmesh_wire::{DeviceId, Epoch, Status};

/// A lent byte range `[start, end)` of one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Range {
    fn overlaps(&self, o: &Range) -> bool {
        self.start < o.end && o.start < self.end
    }
}

/// The highest epoch seen per range, shared by all reactors.
#[derive(Debug, Default)]
pub struct FenceTable {
    ranges: Mutex<HashMap<DeviceId, Vec<(Range, Epoch)>>>,
    generation: AtomicU64,
}

impl FenceTable {
    /// Admits `epoch` for `range` of `device`, or refuses it with `StaleEpoch` if an overlapping
    /// range has seen a newer one.
    pub fn admit(&self, device: DeviceId, range: Range, epoch: Epoch) -> Result<(), Status> {
        let mut map = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        let entries = map.entry(device).or_default();
        let newest = entries
            .iter()
            .filter(|(r, _)| r.overlaps(&range))
            .map(|(_, e)| *e)
            .max();
        if newest.is_some_and(|n| n > epoch) {
            return Err(Status::StaleEpoch);
        }
        if newest.is_some_and(|n| n < epoch) {
            self.generation.fetch_add(1, Ordering::Release);
        }
        // Entries wholly inside the new range are superseded by it.
        entries.retain(|(r, _)| !(range.start <= r.start && r.end <= range.end));
        entries.push((range, epoch));
        Ok(())
    }

    /// Whether `epoch` is still the newest for every range overlapping `range`.
    pub fn is_current(&self, device: DeviceId, range: Range, epoch: Epoch) -> bool {
        let map = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&device).is_none_or(|entries| {
            entries
                .iter()
                .all(|(r, e)| !r.overlaps(&range) || *e <= epoch)
        })
    }

    /// Changes whenever a newer epoch is admitted over an older one.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: DeviceId = DeviceId(0);

    fn r(start: u64, end: u64) -> Range {
        Range { start, end }
    }

    #[test]
    fn newer_fences_older() {
        let t = FenceTable::default();
        assert_eq!(t.admit(D, r(0, 100), Epoch(1)), Ok(()));
        let g = t.generation();
        assert_eq!(t.admit(D, r(0, 100), Epoch(1)), Ok(()));
        assert_eq!(t.generation(), g, "same epoch again is no change");
        assert_eq!(t.admit(D, r(50, 150), Epoch(2)), Ok(()));
        assert_ne!(t.generation(), g);
        assert!(!t.is_current(D, r(0, 100), Epoch(1)));
        assert!(t.is_current(D, r(50, 150), Epoch(2)));
        assert_eq!(t.admit(D, r(0, 60), Epoch(1)), Err(Status::StaleEpoch));
        // Disjoint ranges and other devices are independent.
        assert_eq!(t.admit(D, r(200, 300), Epoch(1)), Ok(()));
        assert_eq!(t.admit(DeviceId(1), r(0, 100), Epoch(1)), Ok(()));
        assert!(t.is_current(D, r(150, 200), Epoch(0)));
    }
}
