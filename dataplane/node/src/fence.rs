//! Fencing epochs: per device range, the highest epoch the node has admitted.
//!
//! A token is admitted only if no overlapping range has seen a newer epoch. Admitting a newer
//! epoch bumps a generation counter, which every connection compares on each request (one
//! atomic load); on a change it re-checks its own epoch and, if overtaken, fails with StaleEpoch.
//! With a state directory the table is written (temp file, fsync, rename, fsync of the directory)
//! before a handshake under a new epoch is answered, so a restart never forgets a fence; without
//! one the table lives in memory only.
//!
//! The generation is bumped and loaded `SeqCst`: the write barrier (`barrier.rs`) relies on a
//! single total order of the bump, the barrier's snapshot, and each write's number and check.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
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
    file: Option<PathBuf>,
}

/// One line of the fence file: `device start end epoch`.
fn encode(map: &HashMap<DeviceId, Vec<(Range, Epoch)>>) -> String {
    let mut lines: Vec<String> = map
        .iter()
        .flat_map(|(d, v)| {
            v.iter()
                .map(move |(r, e)| format!("{} {} {} {}", d.0, r.start, r.end, e.0))
        })
        .collect();
    lines.sort();
    lines.join("\n") + "\n"
}

impl FenceTable {
    /// A table kept durably in `dir/fences` (loaded if present).
    pub fn persistent(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("fences");
        let mut map: HashMap<DeviceId, Vec<(Range, Epoch)>> = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&file) {
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let f: Vec<u64> = line
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                let [d, start, end, e] = f[..] else {
                    return Err(std::io::Error::other(format!(
                        "{}:{}: malformed fence line {line:?}",
                        file.display(),
                        n + 1
                    )));
                };
                map.entry(DeviceId(d as u32))
                    .or_default()
                    .push((Range { start, end }, Epoch(e)));
            }
        }
        Ok(Self {
            ranges: Mutex::new(map),
            generation: AtomicU64::new(0),
            file: Some(file),
        })
    }

    fn save(&self, map: &HashMap<DeviceId, Vec<(Range, Epoch)>>) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let tmp = file.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(encode(map).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
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
            // Before the caller takes its write barrier, and under the lock, so that a
            // request which sees the new generation finds the new entry in `is_current`.
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        if entries.contains(&(range, epoch)) {
            return Ok(());
        }
        let before = entries.clone();
        // Entries wholly inside the new range are superseded by it.
        entries.retain(|(r, _)| !(range.start <= r.start && r.end <= range.end));
        entries.push((range, epoch));
        if let Err(e) = self.save(&map) {
            // Not durable: refuse (and forget it) rather than serve under a fence a restart
            // could lose.
            tracing::error!("cannot persist the fence table: {e}");
            map.insert(device, before);
            return Err(Status::Internal);
        }
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
        self.generation.load(Ordering::SeqCst)
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
    fn persistent_table_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let t = FenceTable::persistent(dir.path().to_path_buf()).unwrap();
            t.admit(D, r(0, 100), Epoch(7)).unwrap();
            t.admit(DeviceId(2), r(50, 60), Epoch(3)).unwrap();
        }
        let t = FenceTable::persistent(dir.path().to_path_buf()).unwrap();
        assert_eq!(t.admit(D, r(10, 20), Epoch(6)), Err(Status::StaleEpoch));
        assert_eq!(
            t.admit(DeviceId(2), r(0, 55), Epoch(2)),
            Err(Status::StaleEpoch)
        );
        assert_eq!(t.admit(D, r(0, 100), Epoch(7)), Ok(()));
        std::fs::write(dir.path().join("fences"), "garbage\n").unwrap();
        assert!(FenceTable::persistent(dir.path().to_path_buf()).is_err());
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
