//! The handlers over a real store: failure reports and their statuses, the volume state, input
//! bounds as gRPC statuses, claimed node ids, the revoked leases in heartbeat answers, and the
//! rotation of the signing key (`rotation.rs`).

use super::*;
use crate::alloc::Layout;
use crate::store::RedbStore;
use dasmesh_wire::SigningKey;
use v1::leases_server::Leases as _;
use v1::volumes_server::Volumes as _;

mod rotation;

fn controller(dir: &std::path::Path) -> Svc {
    let store = RedbStore::open(dir).unwrap();
    let ctl = Controller::new(Box::new(store), SigningKey::from_bytes(&[7; 32]), 1000).unwrap();
    Svc::active(Arc::new(ctl))
}

fn report(lease_id: u64, copies: &[u32]) -> Request<v1::ReportFailureRequest> {
    Request::new(v1::ReportFailureRequest {
        not_sent: false,
        dirty: Vec::new(),
        lease_id,
        copies: copies.to_vec(),
        reason: "write to copy failed: connection reset".into(),
    })
}

async fn get(svc: &Svc, name: &str) -> v1::Volume {
    svc.get(Request::new(v1::GetVolumeRequest { name: name.into() }))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_reported_copy_turns_stale_and_the_mirror_degraded_durably() {
    let dir = tempfile::tempdir().unwrap();
    let svc = controller(dir.path());
    for i in 0..2 {
        let Outcome::Node(n) = svc
            .0
            .controller()
            .unwrap()
            .execute(Command::Register {
                node_id: 0,
                address: format!("127.0.0.1:{}", 7700 + i),
                version: "t".into(),
                failure_domain: String::new(),
                name: String::new(),
                data_tls: false,
                now_ms: now_ms(),
            })
            .unwrap()
        else {
            panic!()
        };
        svc.0
            .controller()
            .unwrap()
            .execute(Command::ReportDevices {
                node_id: n.id,
                devices: vec![state::DeviceRec {
                    read_iops: 0,
                    write_iops: 0,
                    mib_s: 0,
                    device_id: 0,
                    path: "d".into(),
                    block_size: 4096,
                    size: 1 << 30,
                    lendable_start: 0,
                    lendable_length: 1 << 30,
                    reserved_start: 0,
                    reserved_length: 0,
                }],
            })
            .unwrap();
    }
    let v = svc
        .create(Request::new(v1::CreateVolumeRequest {
            name: "m".into(),
            size_bytes: 64 << 20,
            layout: Some(Layout::Mirror { copies: 2 }.into()),
            requirements: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.state, v1::VolumeState::Ok as i32);
    let mount = |rw: bool, host: &str| v1::MountRequest {
        holder_key: Vec::new(),
        volume: "m".into(),
        host_id: host.into(),
        access: if rw {
            v1::Access::ReadWrite
        } else {
            v1::Access::ReadOnly
        } as i32,
        ttl_ms: 0,
    };
    let lease = |m: v1::MountResponse| m.lease.unwrap().lease_id;
    let reader = lease(
        svc.mount(Request::new(mount(false, "r")))
            .await
            .unwrap()
            .into_inner(),
    );
    let writer = lease(
        svc.mount(Request::new(mount(true, "w")))
            .await
            .unwrap()
            .into_inner(),
    );

    let r = svc.report_failure(report(writer, &[1])).await.unwrap();
    let extents = r.into_inner().extents;
    assert_eq!(extents.len(), 2);
    assert!(
        extents.iter().all(|e| e.stale == (e.copy == 1)),
        "{extents:?}"
    );
    assert_eq!(get(&svc, "m").await.state, v1::VolumeState::Degraded as i32);

    for (lease, copies, code) in [
        (writer, vec![0], tonic::Code::FailedPrecondition),
        (reader, vec![1], tonic::Code::FailedPrecondition),
        (writer, vec![2], tonic::Code::InvalidArgument),
        (4242, vec![1], tonic::Code::NotFound),
    ] {
        let e = svc
            .report_failure(report(lease, &copies))
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "lease {lease} copies {copies:?}: {e}");
    }
    // Revoked: the old writer is refused; the new one is not.
    svc.revoke(Request::new(v1::RevokeRequest { lease_id: writer }))
        .await
        .unwrap();
    let e = svc.report_failure(report(writer, &[1])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    let writer2 = lease(
        svc.mount(Request::new(mount(true, "w2")))
            .await
            .unwrap()
            .into_inner(),
    );
    svc.report_failure(report(writer2, &[1])).await.unwrap();

    // Stored before the answer: a restarted controller still sees the stale copy.
    drop(svc);
    let svc = controller(dir.path());
    let v = get(&svc, "m").await;
    assert_eq!(v.state, v1::VolumeState::Degraded as i32);
    assert!(v.extents.iter().all(|e| e.stale == (e.copy == 1)));
}

async fn register(svc: &Svc, node_id: u64, address: &str) -> Result<u64, Status> {
    use v1::node_registry_server::NodeRegistry as _;
    let r = svc
        .register(Request::new(v1::RegisterRequest {
            data_tls: false,
            node_id,
            address: address.into(),
            version: "t".into(),
            failure_domain: String::new(),
        }))
        .await?;
    Ok(r.into_inner().node_id)
}

/// Two nodes of 1 GiB each, the owner keeping the first MiB, as the node reports them.
async fn two_nodes(svc: &Svc) -> Vec<u64> {
    use v1::node_registry_server::NodeRegistry as _;
    let mut ids = Vec::new();
    for i in 0..2 {
        let id = register(svc, 0, &format!("127.0.0.1:{}", 7700 + i))
            .await
            .unwrap();
        svc.report_devices(Request::new(v1::ReportDevicesRequest {
            node_id: id,
            devices: vec![v1::DeviceReport {
                read_iops: 0,
                write_iops: 0,
                mib_s: 0,
                device_id: 0,
                path: "d".into(),
                block_size: 4096,
                size_bytes: 1 << 30,
                lendable_start: 1 << 20,
                lendable_length: (1 << 30) - (1 << 20),
                reserved_start: 0,
                reserved_length: 1 << 20,
            }],
        }))
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

fn assert_refused<T: std::fmt::Debug>(r: Result<T, Status>, code: tonic::Code, what: &str) {
    let e = r.unwrap_err();
    assert_eq!(e.code(), code, "{what}: {e}");
    // Short enough for a header: gRPC stacks refuse a few KiB, and the client would then see
    // RESOURCE_EXHAUSTED instead of this refusal.
    assert!(
        e.message().len() < 512,
        "{what}: {} bytes",
        e.message().len()
    );
}

/// Issue 16 item 10: a 1 MB name was stored and echoed in errors too big for gRPC metadata.
#[tokio::test]
async fn megabyte_strings_get_invalid_argument_with_a_short_message() {
    use v1::node_registry_server::NodeRegistry as _;
    let dir = tempfile::tempdir().unwrap();
    let svc = controller(dir.path());
    let ids = two_nodes(&svc).await;
    let big = "n".repeat(1 << 20);
    let create = |name: String| {
        Request::new(v1::CreateVolumeRequest {
            name,
            size_bytes: 64 << 20,
            layout: Some(Layout::Single.into()),
            requirements: None,
        })
    };
    let code = tonic::Code::InvalidArgument;
    assert_refused(svc.create(create(big.clone())).await, code, "create");
    let get = svc
        .get(Request::new(v1::GetVolumeRequest { name: big.clone() }))
        .await;
    assert_refused(get, code, "get");
    let resize = svc
        .resize(Request::new(v1::ResizeVolumeRequest {
            expect_version: 0,
            name: big.clone(),
            size_bytes: 1 << 30,
        }))
        .await;
    assert_refused(resize, code, "resize");
    let delete = svc
        .delete(Request::new(v1::DeleteVolumeRequest {
            expect_version: 0,
            name: big.clone(),
        }))
        .await;
    assert_refused(delete, code, "delete");
    svc.create(create("v".into())).await.unwrap();
    let mount = |volume: &str, host: &str| {
        Request::new(v1::MountRequest {
            holder_key: Vec::new(),
            volume: volume.into(),
            host_id: host.into(),
            access: v1::Access::ReadOnly as i32,
            ttl_ms: 0,
        })
    };
    assert_refused(svc.mount(mount(&big, "h")).await, code, "mount name");
    assert_refused(svc.mount(mount("v", &big)).await, code, "mount host");
    for address in [big.as_str(), "not an address", "1.2.3.4:99999"] {
        assert_refused(register(&svc, 0, address).await, code, address);
    }
    let r = svc
        .register(Request::new(v1::RegisterRequest {
            data_tls: false,
            node_id: ids[0],
            address: "127.0.0.1:7700".into(),
            version: big.clone(),
            failure_domain: String::new(),
        }))
        .await;
    assert_refused(r, code, "version");
    // Nothing of it was stored.
    let nodes = svc.0.controller().unwrap().read(|s| s.nodes.clone());
    assert_eq!(nodes.len(), 2);
    assert!(nodes.values().all(|n| n.version == "t"));
    assert_eq!(svc.0.controller().unwrap().read(|s| s.volumes.len()), 1);
    // A NaN price is refused, and the controller still starts (the store holds nothing bad).
    let mut nan = create("nan".into()).into_inner();
    nan.requirements = Some(v1::Requirements {
        price_per_gib_hour: f64::NAN,
        ..Default::default()
    });
    assert_refused(svc.create(Request::new(nan)).await, code, "NaN price");
    drop(svc);
    let svc = controller(dir.path());
    assert_eq!(svc.0.controller().unwrap().read(|s| s.volumes.len()), 1);
}

/// Layouts come in through the shared `dasmesh_api::Layout`: its refusals (no layout, an
/// unknown kind, a width of 0) and the controller's bounds both answer INVALID_ARGUMENT with
/// the reason, and nothing is created.
#[tokio::test]
async fn bad_layouts_get_invalid_argument_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let svc = controller(dir.path());
    two_nodes(&svc).await;
    let msg = |kind: i32, width, unit| {
        Some(v1::Layout {
            kind,
            width,
            stripe_unit_bytes: unit,
        })
    };
    let stripe = v1::LayoutKind::Stripe as i32;
    let mirror = v1::LayoutKind::Mirror as i32;
    for (layout, says) in [
        (None, "layout is required"),
        (msg(0, 0, 0), "unknown layout kind 0"),
        (msg(99, 2, 0), "unknown layout kind 99"),
        (
            msg(stripe, 0, 4096),
            "stripe layout needs a width of at least 1",
        ),
        (
            msg(mirror, 0, 0),
            "mirror layout needs a width of at least 1",
        ),
        (msg(mirror, 1, 0), "a mirror has 2..=8 copies, got 1"),
        (
            msg(stripe, 2, 1000),
            "stripe unit 1000 must be a multiple of 4096",
        ),
    ] {
        let r = svc
            .create(Request::new(v1::CreateVolumeRequest {
                name: "v".into(),
                size_bytes: 64 << 20,
                layout,
                requirements: None,
            }))
            .await;
        let e = r.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{layout:?}: {e}");
        assert!(e.message().contains(says), "{layout:?}: {e}");
    }
    assert_eq!(svc.0.controller().unwrap().read(|s| s.volumes.len()), 0);
    // A stripe unit of 0 is the default one.
    let v = svc
        .create(Request::new(v1::CreateVolumeRequest {
            name: "v".into(),
            size_bytes: 64 << 20,
            layout: msg(stripe, 2, 0),
            requirements: None,
        }))
        .await
        .unwrap()
        .into_inner();
    let unit = v.layout.unwrap().stripe_unit_bytes;
    assert_eq!(unit, dasmesh_api::DEFAULT_STRIPE_UNIT);
}

/// Issue 16 item 5: ids are the controller's; a node that claims another gets NOT_FOUND and
/// registers with id 0.
#[tokio::test]
async fn a_claimed_node_id_gets_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let svc = controller(dir.path());
    let ids = two_nodes(&svc).await;
    let e = register(&svc, u64::MAX, "127.0.0.1:7800")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(e.message().contains("id 0"), "{e}");
    let next = register(&svc, 0, "127.0.0.1:7800").await.unwrap();
    assert_eq!(next, ids[1] + 1);
}

/// Issue 16 item 6: revoking a reader leaves the writer current, and every heartbeat answer
/// names the revoked leases until their tokens expire.
#[tokio::test]
async fn heartbeat_answers_carry_the_revoked_leases() {
    use v1::node_registry_server::NodeRegistry as _;
    let dir = tempfile::tempdir().unwrap();
    let svc = controller(dir.path());
    let ids = two_nodes(&svc).await;
    svc.create(Request::new(v1::CreateVolumeRequest {
        name: "m".into(),
        size_bytes: 64 << 20,
        layout: Some(Layout::Mirror { copies: 2 }.into()),
        requirements: None,
    }))
    .await
    .unwrap();
    let mount = |rw: bool| {
        Request::new(v1::MountRequest {
            holder_key: Vec::new(),
            volume: "m".into(),
            host_id: if rw { "gateway" } else { "reader" }.into(),
            access: if rw {
                v1::Access::ReadWrite
            } else {
                v1::Access::ReadOnly
            } as i32,
            ttl_ms: 0,
        })
    };
    let writer = svc.mount(mount(true)).await.unwrap().into_inner();
    let reader = svc.mount(mount(false)).await.unwrap().into_inner();
    let (writer, reader) = (writer.lease.unwrap(), reader.lease.unwrap());
    let beat = || async {
        svc.heartbeat(Request::new(v1::HeartbeatRequest {
            rebuilds: vec![],
            node_id: ids[0],
            usage: vec![],
        }))
        .await
        .unwrap()
        .into_inner()
    };
    assert!(beat().await.revoked.is_empty());
    let r = svc
        .revoke(Request::new(v1::RevokeRequest {
            lease_id: reader.lease_id,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.new_epoch, writer.epoch,
        "a reader's revocation fences no one else"
    );
    let answer = beat().await;
    assert!(answer.known);
    assert_eq!(
        answer.revoked,
        vec![v1::RevokedLease {
            lease_id: reader.lease_id,
            expires_at_ms: reader.expires_at_ms,
        }]
    );
    // The writer's failure reports are still accepted (they were refused as fenced).
    svc.report_failure(report(writer.lease_id, &[1]))
        .await
        .unwrap();
    // A long reason is cut, not refused: the writer waits on this answer to acknowledge.
    svc.report_failure(Request::new(v1::ReportFailureRequest {
        not_sent: false,
        dirty: Vec::new(),
        lease_id: writer.lease_id,
        copies: vec![1],
        reason: "r".repeat(1 << 20),
    }))
    .await
    .unwrap();
    // A node the controller does not know hears of them too.
    let unknown = svc
        .heartbeat(Request::new(v1::HeartbeatRequest {
            rebuilds: vec![],
            node_id: 4242,
            usage: vec![],
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!unknown.known);
    assert_eq!(unknown.revoked.len(), 1);
}
