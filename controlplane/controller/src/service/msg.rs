//! The messages the services answer with, built from the state.

use dasmesh_api::v1;
use tonic::Status;

use crate::alloc::Layout;
use crate::state::{self, LeaseRec, NodeState, State, VolumeRec};

pub(crate) fn extent_msg(s: &State, v: &VolumeRec, e: &state::ExtentRec) -> v1::Extent {
    let _ = v;
    v1::Extent {
        node_id: e.piece.key.node,
        node_address: s
            .nodes
            .get(&e.piece.key.node)
            .map(|n| n.address.clone())
            .unwrap_or_default(),
        device_id: e.piece.key.device,
        offset: e.piece.offset,
        length: e.piece.length,
        copy: e.piece.copy,
        index: e.piece.index,
        stale: e.stale,
        node_tls: s.nodes.get(&e.piece.key.node).is_some_and(|n| n.data_tls),
        rebuilding: e.rebuild.is_some(),
        takes_writes: e
            .rebuild
            .is_some_and(|r| r.phase != state::rebuild::Phase::Guard),
        rebuilt_bytes: e.rebuild.map_or(0, |r| r.done),
        epoch: e.epoch,
    }
}

pub(crate) fn layout_from(l: Option<v1::Layout>) -> Result<Layout, Status> {
    let l = l.ok_or_else(|| Status::invalid_argument("layout is required"))?;
    Layout::try_from(&l).map_err(|e| Status::invalid_argument(e.to_string()))
}

pub(crate) fn lease_msg(l: &LeaseRec, v: &VolumeRec) -> v1::Lease {
    v1::Lease {
        lease_id: l.id,
        volume_id: v.id,
        volume_name: l.volume.clone(),
        host_id: l.host.clone(),
        access: if l.rw {
            v1::Access::ReadWrite
        } else {
            v1::Access::ReadOnly
        } as i32,
        epoch: l.epoch,
        started_ms: l.started_ms,
        expires_at_ms: l.expires_at_ms,
    }
}

pub(crate) fn volume_msg(s: &State, v: &VolumeRec) -> v1::Volume {
    let up = |node: u64| s.nodes.get(&node).is_some_and(|n| n.state == NodeState::Up);
    let state = match v.layout {
        _ if v.deleting => v1::VolumeState::Deleting,
        Layout::Mirror { copies } => {
            let good_copies = (0..copies)
                .filter(|c| {
                    v.extents
                        .iter()
                        .filter(|e| e.piece.copy == *c)
                        .all(|e| up(e.piece.key.node) && !e.stale)
                })
                .count() as u32;
            if good_copies == copies {
                v1::VolumeState::Ok
            } else if good_copies > 0 {
                v1::VolumeState::Degraded
            } else {
                v1::VolumeState::Unavailable
            }
        }
        _ if v.extents.iter().all(|e| up(e.piece.key.node)) => v1::VolumeState::Ok,
        _ => v1::VolumeState::Unavailable,
    };
    v1::Volume {
        volume_id: v.id,
        name: v.name.clone(),
        size_bytes: v.size,
        layout: Some(v.layout.into()),
        extents: v.extents.iter().map(|e| extent_msg(s, v, e)).collect(),
        requirements: Some(v1::Requirements {
            min_iops: v.req.min_iops,
            min_mib_s: v.req.min_mib_s,
            price_per_gib_hour: v.req.price_per_gib_hour,
            spread_failure_domains: v.req.spread_failure_domains,
            max_iops: v.req.max_iops,
            max_mib_s: v.req.max_mib_s,
            weight: v.req.weight,
        }),
        state: state as i32,
        created_ms: v.created_ms,
        epoch: v.epoch,
        version: state::version(v),
        active_leases: s.leases.values().filter(|l| l.volume == v.name).count() as u32,
        dirty: v
            .dirty
            .iter()
            .map(|(&copy, r)| v1::CopyDirty {
                copy,
                ranges: r
                    .iter()
                    .map(|&(offset, length)| v1::ByteRange { offset, length })
                    .collect(),
            })
            .collect(),
        note: v.note.clone(),
    }
}

/// The devices of the nodes that are up, as the API shows them.
pub(crate) fn up_devices(s: &State) -> Vec<v1::Device> {
    s.nodes
        .values()
        .filter(|n| n.state == state::NodeState::Up)
        .flat_map(|n| node_msg(s, n).devices)
        .collect()
}

pub(crate) fn node_msg(s: &State, n: &state::NodeRec) -> v1::Node {
    let cands = state::candidates(s);
    let promised = state::qos::promised(s);
    v1::Node {
        node_id: n.id,
        address: n.address.clone(),
        version: n.version.clone(),
        state: match n.state {
            NodeState::Up => v1::NodeState::Up,
            NodeState::Down => v1::NodeState::Down,
            NodeState::Gone => v1::NodeState::Gone,
        } as i32,
        last_heartbeat_ms: n.last_heartbeat_ms,
        failure_domain: n.failure_domain.clone(),
        devices: n
            .devices
            .iter()
            .map(|d| v1::Device {
                node_id: n.id,
                device_id: d.device_id,
                path: d.path.clone(),
                block_size: d.block_size,
                size_bytes: d.size,
                lendable_start: d.lendable_start,
                lendable_length: d.lendable_length,
                free_bytes: cands
                    .iter()
                    .find(|c| c.key.node == n.id && c.key.device == d.device_id)
                    .map(|c| c.free.iter().map(|r| r.1).sum())
                    .unwrap_or(0),
                read_iops: d.read_iops,
                write_iops: d.write_iops,
                mib_s: d.mib_s,
                promised_iops: promised
                    .get(&crate::alloc::DeviceKey {
                        node: n.id,
                        device: d.device_id,
                    })
                    .map_or(0, |p| p.0),
                promised_mib_s: promised
                    .get(&crate::alloc::DeviceKey {
                        node: n.id,
                        device: d.device_id,
                    })
                    .map_or(0, |p| p.1),
            })
            .collect(),
    }
}
