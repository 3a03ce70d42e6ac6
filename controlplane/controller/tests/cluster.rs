//! The real controller and nodes on 127.0.0.1: nodes register and report their devices, volumes
//! are carved, a mount lease's tokens open the extents at the nodes, a leased volume is locked,
//! everything acknowledged survives a SIGKILL of the controller, and a mirror's writer can have a
//! failed copy marked stale but never the last healthy one.

use std::time::Duration;

use dasmesh_api::v1;
use dasmesh_testkit::Process;

mod common;

use common::{channel, mount_and_open};

#[test]
fn nodes_register_volumes_lease_and_state_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Process::controller(&dir.path().join("ctl"), "127.0.0.1:0");
    let n1 = Process::node(dir.path(), &ctl.addr, "n1");
    let mut n2 = Process::node(dir.path(), &ctl.addr, "n2");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = channel(&ctl.addr).await;
        let mut pool = v1::pool_client::PoolClient::new(ch.clone());
        let nodes = pool
            .list_nodes(v1::ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes;
        assert_eq!(nodes.len(), 2);
        for n in &nodes {
            assert_eq!(n.state, v1::NodeState::Up as i32);
            assert_eq!(n.devices.len(), 1);
            let d = &n.devices[0];
            assert_eq!(
                (d.size_bytes, d.lendable_start, d.lendable_length),
                (256 << 20, 1 << 20, 255 << 20),
                "the 1M reserve is never lent"
            );
        }
        let addrs: Vec<&str> = nodes.iter().map(|n| n.address.as_str()).collect();
        assert!(addrs.contains(&n1.addr.as_str()) && addrs.contains(&n2.addr.as_str()));

        let mut vols = v1::volumes_client::VolumesClient::new(ch.clone());
        let layout = |kind: v1::LayoutKind, width| {
            Some(v1::Layout {
                kind: kind as i32,
                width,
                stripe_unit_bytes: 0,
            })
        };
        let m = vols
            .create(v1::CreateVolumeRequest {
                name: "m".into(),
                size_bytes: 64 << 20,
                layout: layout(v1::LayoutKind::Mirror, 2),
                requirements: Some(v1::Requirements {
                    price_per_gib_hour: 1.0,
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(m.extents.len(), 2);
        assert_ne!(m.extents[0].node_id, m.extents[1].node_id);
        let e = vols
            .create(v1::CreateVolumeRequest {
                name: "m3".into(),
                size_bytes: 64 << 20,
                layout: layout(v1::LayoutKind::Mirror, 3),
                requirements: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("need 3 nodes"), "{}", e.message());

        // Mount: one token per extent opens it at its node.
        let mut leases = v1::leases_client::LeasesClient::new(ch.clone());
        let (_, opened) = mount_and_open(&ch, "m", "host-a", v1::Access::ReadWrite).await;
        for (x, c) in &opened {
            c.write(x.offset, &[0x5A; 4096], true).await.unwrap();
            assert_eq!(c.read(x.offset, 4096).await.unwrap(), vec![0x5A; 4096]);
            let e = c.read(x.offset + x.length, 4096).await.unwrap_err();
            assert_eq!(
                e.status(),
                Some(dasmesh_wire::Status::OutOfRange),
                "outside the lent extent"
            );
        }
        // The nodes count the lease's bytes and ops and report them with their heartbeats.
        let mut usage = v1::usage_client::UsageClient::new(ch.clone());
        let mut seen = None;
        for _ in 0..50 {
            let rep = usage
                .report(v1::UsageRequest {
                    host_id: "host-a".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let r = rep.records[0].clone();
            if r.write_bytes >= 8192 && r.read_bytes >= 8192 {
                seen = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = seen.expect("usage from the nodes' heartbeats never arrived");
        assert_eq!(
            (r.write_bytes, r.read_bytes, r.write_ops, r.read_ops),
            (8192, 8192, 2, 2)
        );
        let e = leases
            .mount(v1::MountRequest {
                holder_key: Vec::new(),
                volume: "m".into(),
                host_id: "host-b".into(),
                access: v1::Access::ReadWrite as i32,
                ttl_ms: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("host-a"), "{}", e.message());
        let e = vols
            .delete(v1::DeleteVolumeRequest {
                expect_version: 0,
                name: "m".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("leased"), "{}", e.message());
    });

    // SIGKILL the controller: everything acknowledged is still there after a restart (on the
    // same address, where the nodes keep heartbeating).
    ctl.signal("KILL");
    let ctl2 = Process::controller(&dir.path().join("ctl"), &ctl.addr);
    rt.block_on(async {
        let ch = channel(&ctl2.addr).await;
        let mut vols = v1::volumes_client::VolumesClient::new(ch.clone());
        let m = vols
            .get(v1::GetVolumeRequest { name: "m".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (m.size_bytes, m.active_leases, m.extents.len()),
            (64 << 20, 1, 2)
        );
        let mut pool = v1::pool_client::PoolClient::new(ch.clone());
        let nodes = pool
            .list_nodes(v1::ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes;
        assert_eq!(nodes.len(), 2, "every node survives the restart");
        assert!(nodes.iter().all(|n| n.devices.len() == 1));
        let mut leases = v1::leases_client::LeasesClient::new(ch.clone());
        let ls = leases
            .list(v1::ListLeasesRequest { volume: "m".into() })
            .await
            .unwrap()
            .into_inner()
            .leases;
        assert_eq!(ls.len(), 1);
        assert_eq!(ls[0].host_id, "host-a");
        let mut usage = v1::usage_client::UsageClient::new(ch.clone());
        let rep = usage
            .report(v1::UsageRequest {
                host_id: "host-a".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rep.records.len(), 1);
        assert!(rep.records[0].gib_hours > 0.0);
    });

    // A node that shuts down cleanly deregisters: its state is GONE and its volumes stay.
    n2.signal("TERM");
    rt.block_on(async {
        let ch = channel(&ctl2.addr).await;
        let mut pool = v1::pool_client::PoolClient::new(ch.clone());
        let nodes = pool
            .list_nodes(v1::ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes;
        let gone = nodes.iter().find(|n| n.address == n2.addr).unwrap();
        assert_eq!(gone.state, v1::NodeState::Gone as i32);
        let mut vols = v1::volumes_client::VolumesClient::new(ch);
        let m = vols
            .get(v1::GetVolumeRequest { name: "m".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(m.state, v1::VolumeState::Degraded as i32);
    });
    drop(n1);
}

#[test]
fn three_nodes_every_layout_missed_beats_bad_input_and_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Process::controller(&dir.path().join("ctl"), "127.0.0.1:0");
    let _n1 = Process::node(dir.path(), &ctl.addr, "n1");
    let _n2 = Process::node(dir.path(), &ctl.addr, "n2");
    let mut n3 = Process::node(dir.path(), &ctl.addr, "n3");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = channel(&ctl.addr).await;
        let mut vols = v1::volumes_client::VolumesClient::new(ch.clone());
        let mk =
            |name: &str, size: u64, kind: v1::LayoutKind, width: u32| v1::CreateVolumeRequest {
                name: name.into(),
                size_bytes: size,
                layout: Some(v1::Layout {
                    kind: kind as i32,
                    width,
                    stripe_unit_bytes: 0,
                }),
                requirements: None,
            };
        for (name, kind, width, extents) in [
            ("s", v1::LayoutKind::Single, 0, 1),
            ("st", v1::LayoutKind::Stripe, 3, 3),
            ("m3", v1::LayoutKind::Mirror, 3, 3),
            ("c", v1::LayoutKind::Concat, 0, 2),
        ] {
            let size = if name == "c" { 400 << 20 } else { 32 << 20 };
            let v = vols
                .create(mk(name, size, kind, width))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(v.extents.len(), extents, "{name}");
            // Every extent's token opens exactly that extent at its node, read-only.
            let (lease, opened) = mount_and_open(&ch, name, "reader", v1::Access::ReadOnly).await;
            for (x, c) in &opened {
                c.read(x.offset + x.length - 4096, 4096).await.unwrap();
                let e = c.write(x.offset, &[0u8; 4096], false).await.unwrap_err();
                assert_eq!(e.status(), Some(dasmesh_wire::Status::ReadOnly), "{name}");
            }
            let mut leases = v1::leases_client::LeasesClient::new(ch.clone());
            leases
                .unmount(v1::UnmountRequest { lease_id: lease })
                .await
                .unwrap();
        }

        // Bad input: a clear code and reason, and nothing changes.
        let before = vols
            .list(v1::ListVolumesRequest {})
            .await
            .unwrap()
            .into_inner();
        let cases = [
            (
                mk("", 1 << 20, v1::LayoutKind::Single, 0),
                tonic::Code::InvalidArgument,
            ),
            (
                mk("z", 0, v1::LayoutKind::Single, 0),
                tonic::Code::InvalidArgument,
            ),
            (
                mk("z", 1 << 50, v1::LayoutKind::Single, 0),
                tonic::Code::ResourceExhausted,
            ),
            (
                mk("z", 1 << 20, v1::LayoutKind::Mirror, 1),
                tonic::Code::InvalidArgument,
            ),
            (
                v1::CreateVolumeRequest {
                    name: "z".into(),
                    size_bytes: 1 << 20,
                    layout: Some(v1::Layout {
                        kind: 99,
                        width: 0,
                        stripe_unit_bytes: 0,
                    }),
                    requirements: None,
                },
                tonic::Code::InvalidArgument,
            ),
            (
                v1::CreateVolumeRequest {
                    name: "z".into(),
                    size_bytes: 1 << 20,
                    layout: None,
                    requirements: None,
                },
                tonic::Code::InvalidArgument,
            ),
            (
                mk("s", 1 << 20, v1::LayoutKind::Single, 0),
                tonic::Code::AlreadyExists,
            ),
        ];
        for (req, code) in cases {
            let e = vols.create(req.clone()).await.unwrap_err();
            assert_eq!(e.code(), code, "{req:?}: {}", e.message());
            assert!(!e.message().is_empty());
        }
        let e = vols
            .get(v1::GetVolumeRequest {
                name: "nope".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let mut leases = v1::leases_client::LeasesClient::new(ch.clone());
        let e = leases
            .unmount(v1::UnmountRequest { lease_id: 4242 })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = leases
            .mount(v1::MountRequest {
                holder_key: Vec::new(),
                volume: "s".into(),
                host_id: "h".into(),
                access: 0,
                ttl_ms: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = leases
            .mount(v1::MountRequest {
                holder_key: Vec::new(),
                volume: "s".into(),
                host_id: String::new(),
                access: v1::Access::ReadOnly as i32,
                ttl_ms: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            vols.list(v1::ListVolumesRequest {})
                .await
                .unwrap()
                .into_inner(),
            before
        );

        // Reflection lists the services (what grpcurl uses for discovery).
        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let mut refl = ServerReflectionClient::new(ch.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = refl
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let resp = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            panic!("{resp:?}")
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        // The older protocol too: grpcurl before 1.9 and many other clients ask only for it.
        {
            use tonic_reflection::pb::v1alpha::{
                server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse, ServerReflectionRequest,
            };
            let req = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let resp = ServerReflectionClient::new(ch.clone())
                .server_reflection_info(tokio_stream::iter(vec![req]))
                .await
                .expect("reflection v1alpha is served")
                .into_inner()
                .message()
                .await
                .unwrap()
                .unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
                panic!("{resp:?}")
            };
            let alpha: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            // Each version lists its own reflection service; the others are the same.
            let ours = |v: &[String]| -> Vec<String> {
                v.iter()
                    .filter(|n| !n.starts_with("grpc.reflection."))
                    .cloned()
                    .collect()
            };
            assert_eq!(ours(&alpha), ours(&names), "v1alpha lists what v1 lists");
            names = alpha;
        }
        for s in [
            "dasmesh.v1.Volumes",
            "dasmesh.v1.Leases",
            "dasmesh.v1.NodeRegistry",
            "dasmesh.v1.Pool",
            "dasmesh.v1.Usage",
            "grpc.health.v1.Health",
        ] {
            assert!(names.iter().any(|n| n == s), "{s} not in {names:?}");
        }
    });

    // A node killed outright is marked down after three missed heartbeats (200 ms each here).
    n3.signal("KILL");
    rt.block_on(async {
        let mut pool = v1::pool_client::PoolClient::new(channel(&ctl.addr).await);
        for _ in 0..100 {
            let nodes = pool
                .list_nodes(v1::ListNodesRequest {})
                .await
                .unwrap()
                .into_inner()
                .nodes;
            if nodes.iter().find(|n| n.address == n3.addr).unwrap().state
                == v1::NodeState::Down as i32
            {
                // A volume with an extent on the dead node cannot be discarded there: it stays
                // DELETING (its range is not reused) instead of being freed with old data on it.
                let mut vols = v1::volumes_client::VolumesClient::new(channel(&ctl.addr).await);
                vols.delete(v1::DeleteVolumeRequest {
                    expect_version: 0,
                    name: "m3".into(),
                })
                .await
                .unwrap();
                let v = vols
                    .get(v1::GetVolumeRequest { name: "m3".into() })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(v.state, v1::VolumeState::Deleting as i32);
                vols.delete(v1::DeleteVolumeRequest {
                    expect_version: 0,
                    name: "s".into(),
                })
                .await
                .unwrap();
                let e = vols.get(v1::GetVolumeRequest { name: "s".into() }).await;
                assert_eq!(
                    e.unwrap_err().code(),
                    tonic::Code::NotFound,
                    "a volume on live nodes is purged at once"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("killed node never marked down");
    });
}

#[test]
fn a_range_reused_by_a_new_volume_is_not_fenced_off() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Process::controller(&dir.path().join("ctl"), "127.0.0.1:0");
    let _n = Process::node(dir.path(), &ctl.addr, "n1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = channel(&ctl.addr).await;
        let mut vols = v1::volumes_client::VolumesClient::new(ch.clone());
        let mut leases = v1::leases_client::LeasesClient::new(ch.clone());
        let single = Some(v1::Layout {
            kind: v1::LayoutKind::Single as i32,
            width: 0,
            stripe_unit_bytes: 0,
        });
        let mut offsets = Vec::new();
        // "a" is mounted read-write twice, so the node sees a higher epoch on the range than a
        // fresh volume would start with if epochs were counted per volume.
        for (name, cycles) in [("a", 2), ("b", 1)] {
            vols.create(v1::CreateVolumeRequest {
                name: name.into(),
                size_bytes: 8 << 20,
                layout: single,
                requirements: None,
            })
            .await
            .unwrap();
            for _ in 0..cycles {
                let (lease, mut opened) =
                    mount_and_open(&ch, name, "h", v1::Access::ReadWrite).await;
                let (x, c) = opened.remove(0);
                offsets.push(x.offset);
                if name == "b" {
                    // "a" wrote here, then was deleted: its extent was discarded before reuse.
                    assert_eq!(
                        c.read(x.offset, 4096).await.unwrap(),
                        vec![0u8; 4096],
                        "old data leaked"
                    );
                }
                c.write(x.offset, &[1u8; 4096], false).await.unwrap();
                leases
                    .unmount(v1::UnmountRequest { lease_id: lease })
                    .await
                    .unwrap();
            }
            vols.delete(v1::DeleteVolumeRequest {
                expect_version: 0,
                name: name.into(),
            })
            .await
            .unwrap();
        }
        assert_eq!(
            offsets[0], offsets[2],
            "the second volume reuses the first one's range"
        );
    });
}

#[test]
fn a_failed_mirror_copy_turns_stale_but_never_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Process::controller(&dir.path().join("ctl"), "127.0.0.1:0");
    let _n1 = Process::node(dir.path(), &ctl.addr, "n1");
    let _n2 = Process::node(dir.path(), &ctl.addr, "n2");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = channel(&ctl.addr).await;
        let mut vols = v1::volumes_client::VolumesClient::new(ch.clone());
        vols.create(v1::CreateVolumeRequest {
            name: "m".into(),
            size_bytes: 16 << 20,
            layout: Some(v1::Layout {
                kind: v1::LayoutKind::Mirror as i32,
                width: 2,
                stripe_unit_bytes: 0,
            }),
            requirements: None,
        })
        .await
        .unwrap();
        let (lease, opened) = mount_and_open(&ch, "m", "host-a", v1::Access::ReadWrite).await;
        assert_eq!(opened.len(), 2);
        let mut leases = v1::leases_client::LeasesClient::new(ch.clone());
        let r = leases
            .report_failure(v1::ReportFailureRequest {
                not_sent: false,
                dirty: Vec::new(),
                lease_id: lease,
                copies: vec![1],
                reason: "write to copy 1 timed out".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            r.extents.iter().all(|e| e.stale == (e.copy == 1)),
            "{:?}",
            r.extents
        );
        let v = vols
            .get(v1::GetVolumeRequest { name: "m".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v.state, v1::VolumeState::Degraded as i32);
        assert_eq!(v.extents.len(), 2);
        for e in &v.extents {
            assert_eq!(e.stale, e.copy == 1, "{e:?}");
        }
        // Copy 0 is the last healthy one.
        let e = leases
            .report_failure(v1::ReportFailureRequest {
                not_sent: false,
                dirty: Vec::new(),
                lease_id: lease,
                copies: vec![0],
                reason: "write to copy 0 failed".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("no healthy copy"), "{}", e.message());
        let after = vols
            .get(v1::GetVolumeRequest { name: "m".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(after, v, "a refused report changes nothing");
        // The healthy copy still serves I/O under the lease.
        let (x, c) = opened.iter().find(|(x, _)| x.copy == 0).unwrap();
        c.write(x.offset, &[7u8; 4096], true).await.unwrap();
        assert_eq!(c.read(x.offset, 4096).await.unwrap(), vec![7u8; 4096]);
    });
}
