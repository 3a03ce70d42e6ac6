//! Ranges a volume gave back while it lives on (a shrink): they hold its old data, so they wait,
//! counted as used, until the controller has discarded them on their nodes.

use serde::{Deserialize, Serialize};

use super::{Error, State, VolumeRec};
use crate::alloc::DeviceKey;

/// A range waiting for its discard before it can be allocated again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreedRange {
    /// The device.
    pub key: DeviceKey,
    /// First byte on the device.
    pub offset: u64,
    /// Length.
    pub length: u64,
    /// The epoch the discard's token carries: newer than any token for the range ever carried,
    /// so the node admits it and it fences whoever might still hold an old token.
    pub epoch: u64,
    /// The volume that gave it back (named in the discard's token).
    pub volume_id: u64,
}

impl FreedRange {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Records every range `before` held that `after` (the same volume) no longer holds, to be
/// discarded with `epoch` before reuse.
pub(super) fn record(s: &mut State, before: &VolumeRec, after: &VolumeRec, epoch: u64) {
    for e in &before.extents {
        let p = e.piece;
        // Extents never overlap, so (device, offset) names one; a shrink only cuts the tail.
        let kept = after
            .extents
            .iter()
            .find(|x| x.piece.key == p.key && x.piece.offset == p.offset)
            .map_or(0, |x| x.piece.length.min(p.length));
        if kept < p.length {
            s.freed.push(FreedRange {
                key: p.key,
                offset: p.offset + kept,
                length: p.length - kept,
                epoch,
                volume_id: before.id,
            });
        }
    }
}

/// Drops a range from the waiting list once its node has discarded it.
pub(super) fn discarded(
    s: &mut State,
    key: DeviceKey,
    offset: u64,
    length: u64,
) -> Result<(), Error> {
    let at = s
        .freed
        .iter()
        .position(|f| f.key == key && f.offset == offset && f.length == length)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "no freed range {offset}+{length} of device {} on node {} waits for a discard",
                key.device, key.node
            ))
        })?;
    s.freed.remove(at);
    Ok(())
}
