//! The handlers over a real store: failure reports, their statuses and the volume state.

use super::*;
use crate::store::RedbStore;
use v1::leases_server::Leases as _;
use v1::volumes_server::Volumes as _;

fn controller(dir: &std::path::Path) -> Svc {
    let store = RedbStore::open(dir).unwrap();
    let ctl = Controller::new(Box::new(store), SigningKey::from_bytes(&[7; 32]), 1000).unwrap();
    Svc(Arc::new(ctl))
}

fn report(lease_id: u64, copies: &[u32]) -> Request<v1::ReportFailureRequest> {
    Request::new(v1::ReportFailureRequest {
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
            .execute(Command::Register {
                node_id: 0,
                address: format!("127.0.0.1:{}", 7700 + i),
                version: "t".into(),
                failure_domain: String::new(),
                now_ms: now_ms(),
            })
            .unwrap()
        else {
            panic!()
        };
        svc.0
            .execute(Command::ReportDevices {
                node_id: n.id,
                devices: vec![state::DeviceRec {
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
            layout: Some(layout_msg(Layout::Mirror { copies: 2 })),
            requirements: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.state, v1::VolumeState::Ok as i32);
    let mount = |rw: bool, host: &str| v1::MountRequest {
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
