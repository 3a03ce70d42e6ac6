//! Ranges and leases changing hands, with the real controller and nodes on 127.0.0.1: a
//! shrink's tail reaches the next volume only zeroed, a volume grown onto a range a newer
//! (deleted) volume fenced still mounts read-only, a grown mirror survives the loss of any one
//! node, and revoking a reader cuts off that reader alone.

use std::time::Duration;

use dasmesh_api::v1;
use dasmesh_client::{ConnectOptions, Connection};
use dasmesh_testkit::Process;

mod common;

use common::{channel, mount_and_open};
use dasmesh_wire::{DeviceId, Token};

const M: u64 = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn create(ch: &tonic::transport::Channel, name: &str, size: u64, layout: &str) -> v1::Volume {
    v1::volumes_client::VolumesClient::new(ch.clone())
        .create(v1::CreateVolumeRequest {
            name: name.into(),
            size_bytes: size,
            layout: Some(dasmesh_testkit::layout(layout)),
            requirements: None,
        })
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
        .into_inner()
}

async fn resize(ch: &tonic::transport::Channel, name: &str, size: u64) -> v1::Volume {
    v1::volumes_client::VolumesClient::new(ch.clone())
        .resize(v1::ResizeVolumeRequest {
            expect_version: 0,
            name: name.into(),
            size_bytes: size,
        })
        .await
        .unwrap_or_else(|e| panic!("resize {name}: {e}"))
        .into_inner()
}

async fn unmount(ch: &tonic::transport::Channel, lease_id: u64) {
    v1::leases_client::LeasesClient::new(ch.clone())
        .unmount(v1::UnmountRequest { lease_id })
        .await
        .unwrap();
}

/// Free bytes of node `id`'s (only) device.
async fn free_bytes(ch: &tonic::transport::Channel, id: u64) -> u64 {
    v1::pool_client::PoolClient::new(ch.clone())
        .get_node(v1::GetNodeRequest { node_id: id })
        .await
        .unwrap()
        .into_inner()
        .devices[0]
        .free_bytes
}

/// Fills every extent with `byte`, 1 MiB at a time, durably.
async fn fill(opened: &[(v1::Extent, Connection)], byte: u8) {
    for (x, c) in opened {
        for off in (x.offset..x.offset + x.length).step_by(M as usize) {
            c.write(off, &vec![byte; M as usize], false).await.unwrap();
        }
        c.flush().await.unwrap();
    }
}

/// Asserts that every byte of every extent reads back as zero.
async fn assert_zero(opened: &[(v1::Extent, Connection)], what: &str) {
    for (x, c) in opened {
        for off in (x.offset..x.offset + x.length).step_by(M as usize) {
            let got = c.read(off, M as usize).await.unwrap();
            let bad = got.iter().position(|b| *b != 0);
            assert!(
                bad.is_none(),
                "{what}: byte {} of the device reads {:#x}, not zero",
                off + bad.unwrap_or(0) as u64,
                got[bad.unwrap_or(0)]
            );
        }
    }
}

#[test]
fn a_shrunk_volumes_tail_reaches_the_next_volume_zeroed() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Process::controller(&dir.path().join("ctl"), "127.0.0.1:0");
    let _n = Process::node(dir.path(), &ctl.addr, "n1");
    runtime().block_on(async {
        let ch = channel(&ctl.addr).await;
        let a = create(&ch, "a", 64 * M, "single").await;
        let at = a.extents[0].offset;
        let (lease, opened) = mount_and_open(&ch, "a", "h", v1::Access::ReadWrite).await;
        fill(&opened, 0x5A).await;
        drop(opened);
        unmount(&ch, lease).await;
        resize(&ch, "a", 32 * M).await;
        // The only free space is the freed tail and what follows it, as one range: a best fit
        // starts exactly where "a" now ends.
        let b = create(&ch, "b", 32 * M, "single").await;
        assert_eq!(b.extents[0].offset, at + 32 * M, "b reuses a's tail");
        let (_, opened) = mount_and_open(&ch, "b", "h2", v1::Access::ReadOnly).await;
        assert_zero(&opened, "b over a's old tail").await;
        // The tail's discard fenced only the tail: what "a" kept still mounts and holds its data.
        let (_, opened) = mount_and_open(&ch, "a", "h3", v1::Access::ReadOnly).await;
        let (x, c) = &opened[0];
        assert_eq!((x.offset, x.length), (at, 32 * M));
        let last = c.read(at + 31 * M, M as usize).await.unwrap();
        assert!(last.iter().all(|b| *b == 0x5A), "a lost its data");
    });
}

#[test]
fn a_volume_grown_onto_a_newer_deleted_volumes_range_mounts_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Process::controller(&dir.path().join("ctl"), "127.0.0.1:0");
    let _n = Process::node(dir.path(), &ctl.addr, "n1");
    runtime().block_on(async {
        let ch = channel(&ctl.addr).await;
        create(&ch, "a", 32 * M, "single").await;
        let b = create(&ch, "b", 64 * M, "single").await;
        // b's read-write lease leaves a newer epoch than a's on b's range at the node.
        let (lease, opened) = mount_and_open(&ch, "b", "h", v1::Access::ReadWrite).await;
        fill(&opened, 0x6B).await;
        drop(opened);
        unmount(&ch, lease).await;
        v1::volumes_client::VolumesClient::new(ch.clone())
            .delete(v1::DeleteVolumeRequest {
                expect_version: 0,
                name: "b".into(),
            })
            .await
            .unwrap();
        let a = resize(&ch, "a", 96 * M).await;
        assert_eq!(
            (a.extents[1].offset, a.extents[1].length),
            (b.extents[0].offset, 64 * M),
            "a grows onto b's old range"
        );
        let (reader, opened) = mount_and_open(&ch, "a", "reader", v1::Access::ReadOnly).await;
        assert_zero(&opened[1..], "a's new extent").await;
        // A new writer still fences the reader, on every extent.
        let (_, writer) = mount_and_open(&ch, "a", "writer", v1::Access::ReadWrite).await;
        for (x, c) in &writer {
            c.write(x.offset, &[1u8; 4096], true).await.unwrap();
        }
        for (x, c) in &opened {
            let e = c.read(x.offset, 4096).await.unwrap_err();
            assert_eq!(e.status(), Some(dasmesh_wire::Status::StaleEpoch), "{x:?}");
        }
        let _ = reader;
    });
}

#[test]
fn a_grown_mirror_survives_losing_any_one_node() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Process::controller(&dir.path().join("ctl"), "127.0.0.1:0");
    let mut nodes: Vec<Process> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| Process::node(dir.path(), &ctl.addr, n))
        .collect();
    let rt = runtime();
    let dead = rt.block_on(async {
        let ch = channel(&ctl.addr).await;
        let m = create(&ch, "m", 64 * M, "mirror:2").await;
        let node_of = |copy: u32| m.extents.iter().find(|e| e.copy == copy).unwrap().node_id;
        let (x, y) = (node_of(0), node_of(1));
        // Fill so that copy 1's node y keeps 64M and copy 0's node x 63M: greedy best fit
        // would put copy 0's growth on y. A filler goes to the smallest free range that holds
        // it, ties to the lower node id; so fill the lower id of x and y first (both have
        // 191M, the third node 255M), then the other (the only one besides the third that
        // holds its filler).
        let mut fills = [(x, 63 * M), (y, 64 * M)];
        fills.sort();
        for (node, left) in fills {
            let f = create(
                &ch,
                &format!("fill-{node}"),
                free_bytes(&ch, node).await - left,
                "single",
            )
            .await;
            assert_eq!(
                f.extents[0].node_id, node,
                "the filler lands on node {node}"
            );
        }
        assert_eq!(
            (free_bytes(&ch, x).await, free_bytes(&ch, y).await),
            (63 * M, 64 * M)
        );
        let m = resize(&ch, "m", 128 * M).await;
        let nodes = |copy: u32| -> std::collections::BTreeSet<u64> {
            m.extents
                .iter()
                .filter(|e| e.copy == copy)
                .map(|e| e.node_id)
                .collect()
        };
        assert!(
            nodes(0).is_disjoint(&nodes(1)),
            "copy 0 on {:?}, copy 1 on {:?}",
            nodes(0),
            nodes(1)
        );
        y
    });
    // Kill copy 1's first node: copy 0 is whole elsewhere, so the mirror is only degraded.
    let addr = rt.block_on(async {
        v1::pool_client::PoolClient::new(channel(&ctl.addr).await)
            .get_node(v1::GetNodeRequest { node_id: dead })
            .await
            .unwrap()
            .into_inner()
            .address
    });
    let victim = nodes.iter_mut().find(|n| n.addr == addr).unwrap();
    victim.signal("KILL");
    rt.block_on(async {
        let ch = channel(&ctl.addr).await;
        let mut vols = v1::volumes_client::VolumesClient::new(ch);
        for _ in 0..100 {
            let m = vols
                .get(v1::GetVolumeRequest { name: "m".into() })
                .await
                .unwrap()
                .into_inner();
            if m.state != v1::VolumeState::Ok as i32 {
                assert_eq!(m.state, v1::VolumeState::Degraded as i32, "{m:?}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the killed node was never marked down");
    });
}

#[test]
fn revoking_a_reader_cuts_off_the_reader_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Process::controller(&dir.path().join("ctl"), "127.0.0.1:0");
    let _n = Process::node(dir.path(), &ctl.addr, "n1");
    runtime().block_on(async {
        let ch = channel(&ctl.addr).await;
        create(&ch, "v", 32 * M, "single").await;
        let (_, writer) = mount_and_open(&ch, "v", "writer", v1::Access::ReadWrite).await;
        let mut leases = v1::leases_client::LeasesClient::new(ch.clone());
        let m = leases
            .mount(v1::MountRequest {
                holder_key: Vec::new(),
                volume: "v".into(),
                host_id: "reader".into(),
                access: v1::Access::ReadOnly as i32,
                ttl_ms: 60_000,
            })
            .await
            .unwrap()
            .into_inner();
        let x = m.extents[0].extent.clone().unwrap();
        let token = Token::from_text(&m.extents[0].token).unwrap();
        let opts = ConnectOptions::default();
        let open = || Connection::connect(&x.node_address, DeviceId(x.device_id), &token, &opts);
        let reader = open().await.unwrap();
        reader.read(x.offset, 4096).await.unwrap();
        let epoch = m.lease.as_ref().unwrap().epoch;
        let r = leases
            .revoke(v1::RevokeRequest {
                lease_id: m.lease.unwrap().lease_id,
            })
            .await
            .unwrap()
            .into_inner();
        // The node learns of it with a heartbeat (200 ms here): the reader's session fails.
        let mut refused = None;
        for _ in 0..100 {
            match reader.read(x.offset, 4096).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    refused = e.status();
                    break;
                }
            }
        }
        assert_eq!(refused, Some(dasmesh_wire::Status::Revoked));
        let e = open().await.unwrap_err();
        assert_eq!(e.status(), Some(dasmesh_wire::Status::Revoked), "{e}");
        // The writer was not fenced: same epoch, and its session still writes.
        let (wx, wc) = &writer[0];
        wc.write(wx.offset, &[7u8; 4096], true).await.unwrap();
        let v = v1::volumes_client::VolumesClient::new(ch.clone())
            .get(v1::GetVolumeRequest { name: "v".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (r.new_epoch, v.epoch),
            (epoch, epoch),
            "a reader's revocation keeps the epoch"
        );
    });
}
