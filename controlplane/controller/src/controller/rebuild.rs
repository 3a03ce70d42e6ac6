//! The controller's part in replacing lost mirror copies: its policy (a copy whose node has been
//! lost for long enough is replaced, [`Controller::replace_lost`]) and the rebuild tasks every
//! heartbeat answer hands a node ([`Controller::rebuild_tasks`]), with read tokens for the
//! healthy copy the node copies from (see `state::rebuild` for the phases).

use std::sync::Arc;

use dasmesh_api::v1;
use dasmesh_wire::{Claim, DeviceId, Epoch, NodeId, Rights, VolumeId};

use super::{now_ms, Controller};
use crate::state::rebuild::{copy_healthy, copy_pieces, lost_copies, Phase};
use crate::state::{Command, NodeState, Outcome, State, VolumeRec};

/// How long a read token for a rebuild's source lasts: the node gets a fresh one with every
/// heartbeat answer, and needs one only to open a connection.
const SOURCE_TOKEN_MS: u64 = 120_000;

impl Controller {
    /// Replaces every mirror copy with an extent on a node that is gone for good or has been
    /// down for more than `after_ms` (as this controller saw it: a controller that takes over
    /// counts from its start). A pool without room leaves the reason in the volume's note; the
    /// next call tries again.
    pub async fn replace_lost(self: &Arc<Self>, after_ms: u64) {
        let lost = self.read(|s| lost_copies(s, after_ms, now_ms()));
        for (volume, copy) in lost {
            let before = self.read(|s| s.volumes.get(&volume).map(|v| v.note.clone()));
            match self
                .run(Command::ReplaceCopy {
                    volume: volume.clone(),
                    copy,
                    node: None,
                    auto: true,
                    headroom_pct: crate::state::qos::headroom(),
                })
                .await
            {
                Ok(Outcome::Volume(v)) if v.note.is_empty() => {
                    tracing::warn!(volume = %volume, copy, "a node holding this copy is lost: copy replaced, rebuilding on its new nodes");
                }
                Ok(Outcome::Volume(v)) => {
                    if before.as_deref() != Some(v.note.as_str()) {
                        tracing::warn!(volume = %volume, copy, "{}", v.note);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(volume = %volume, copy, "replacing a lost copy: {e}"),
            }
        }
    }

    /// The rebuilds node `node_id` is to run, with read tokens for their sources once they copy.
    pub fn rebuild_tasks(&self, node_id: u64) -> Vec<v1::RebuildTask> {
        let key = self.signing_key(now_ms());
        self.read(|s| {
            let mut out = Vec::new();
            for v in s.volumes.values().filter(|v| !v.deleting) {
                for (i, e) in v.extents.iter().enumerate() {
                    let Some(rb) = e.rebuild.filter(|_| e.piece.key.node == node_id) else {
                        continue;
                    };
                    let sources = if rb.phase == Phase::Copy {
                        sources(s, v, i)
                            .into_iter()
                            .map(|mut src| {
                                let claim = Claim {
                                    terms: Default::default(),
                                    node_id: NodeId(src.node_id),
                                    volume_id: VolumeId(v.id),
                                    device_id: DeviceId(src.msg.device_id),
                                    range_offset: src.msg.offset,
                                    range_length: src.msg.length,
                                    rights: Rights::ReadOnly,
                                    epoch: Epoch(src.epoch),
                                    issued_at_ms: now_ms(),
                                    expires_at_ms: now_ms() + SOURCE_TOKEN_MS,
                                    nonce: 0,
                                };
                                src.msg.token = claim.sign(&key).to_text();
                                src.msg
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    out.push(v1::RebuildTask {
                        volume_id: v.id,
                        device_id: e.piece.key.device,
                        offset: e.piece.offset,
                        length: e.piece.length,
                        phase: match rb.phase {
                            Phase::Guard => v1::RebuildPhase::Guard,
                            Phase::Join => v1::RebuildPhase::Join,
                            Phase::Copy => v1::RebuildPhase::Copy,
                        } as i32,
                        done_bytes: rb.done,
                        sources,
                        attempt: rb.attempt,
                    });
                }
            }
            out
        })
    }
}

/// A source piece before its token is signed.
struct Source {
    node_id: u64,
    epoch: u64,
    msg: v1::RebuildSource,
}

/// Where extent `i` of `v` (rebuilding) reads from: the pieces of the first healthy copy whose
/// nodes are all up, cut to the extent's part of the volume; none when there is no such copy
/// (the node waits for a heartbeat answer that names one).
fn sources(s: &State, v: &VolumeRec, i: usize) -> Vec<Source> {
    let target = v.extents[i].piece;
    let Some(&(_, start)) = copy_pieces(v, target.copy).iter().find(|(x, _)| *x == i) else {
        return Vec::new();
    };
    let end = start + target.length;
    let up = |node: u64| s.nodes.get(&node).is_some_and(|n| n.state == NodeState::Up);
    let copies: std::collections::BTreeSet<u32> = v.extents.iter().map(|e| e.piece.copy).collect();
    let Some(src) = copies.into_iter().find(|&c| {
        c != target.copy
            && copy_healthy(v, c)
            && v.extents
                .iter()
                .filter(|e| e.piece.copy == c)
                .all(|e| up(e.piece.key.node))
    }) else {
        return Vec::new();
    };
    copy_pieces(v, src)
        .into_iter()
        .filter_map(|(j, from)| {
            let e = &v.extents[j];
            let (lo, hi) = (from.max(start), (from + e.piece.length).min(end));
            (lo < hi).then(|| {
                let n = &s.nodes[&e.piece.key.node];
                Source {
                    node_id: n.id,
                    epoch: e.token_epoch(v.epoch),
                    msg: v1::RebuildSource {
                        at: lo - start,
                        node_address: n.address.clone(),
                        node_tls: n.data_tls,
                        device_id: e.piece.key.device,
                        offset: e.piece.offset + (lo - from),
                        length: hi - lo,
                        token: String::new(),
                    },
                }
            })
        })
        .collect()
}
