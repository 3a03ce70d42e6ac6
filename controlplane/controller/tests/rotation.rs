//! The token-signing key rotated on a control plane of two controllers over etcd with one node
//! (issue 18): after the switch, mounts carry tokens signed with the new key and host I/O
//! works with them; a token signed with the old key before the rotation still opens a session;
//! a standby refuses to rotate; and once the active controller is killed, the one that takes
//! over signs with the same new key (it read the ring from etcd), and I/O still works. Skipped,
//! with a message, where etcd is not installed.

use std::time::{Duration, Instant};

use dasmesh_api::{v1, ControllerOptions, Controllers};
use dasmesh_client::{Access, ConnectOptions, Connection, MountOptions, Volume};
use dasmesh_testkit::etcd::{require_etcd, EtcdCluster};
use dasmesh_testkit::{free_addr, now_ms, Process};
use dasmesh_wire::{DeviceId, Token, TokenError, VerifyingKey};

mod common;
use common::{active_of, etcd_controller as controller};

async fn control(
    addr: &str,
) -> v1::control_plane_client::ControlPlaneClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    v1::control_plane_client::ControlPlaneClient::new(ch)
}

/// Whether `token` (text) carries `key`'s signature; any other refusal fails the test.
fn signed_with(token: &str, key: &VerifyingKey) -> bool {
    let t = Token::from_text(token).unwrap();
    let c = t.claim_unverified().unwrap();
    match t.verify(key, c.issued_at_ms, c.node_id, c.device_id) {
        Ok(_) => true,
        Err(TokenError::BadSignature) => false,
        Err(e) => panic!("token refused for another reason: {e}"),
    }
}

/// A read-only mount of `volume` through `ctl` for `host`: its tokens (text).
/// A mount sent on a connection to a controller killed since is "lost" (it may have been
/// applied, the client cannot tell); a read-only mount is safe to ask again.
async fn mount_tokens(ctl: &Controllers, volume: &str, host: &str) -> Vec<v1::MountedExtent> {
    let mut tries = 0;
    loop {
        let r = v1::leases_client::LeasesClient::new(ctl.clone())
            .mount(v1::MountRequest {
                holder_key: Vec::new(),
                volume: volume.into(),
                host_id: host.into(),
                access: v1::Access::ReadOnly as i32,
                ttl_ms: 60_000,
            })
            .await;
        match r {
            Ok(r) => return r.into_inner().extents,
            Err(e) if dasmesh_api::controllers::is_lost(&e) && tries < 3 => tries += 1,
            Err(e) => panic!("mount {volume} for {host}: {e}"),
        }
    }
}

/// Opens every extent of a mount at its node with its token: the node accepts the signature.
async fn open_all(extents: &[v1::MountedExtent]) {
    for me in extents {
        let x = me.extent.as_ref().unwrap();
        let c = Connection::connect(
            &x.node_address,
            DeviceId(x.device_id),
            &Token::from_text(&me.token).unwrap(),
            &ConnectOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("the node refused a token: {e}"));
        c.read(x.offset, 4096).await.unwrap();
    }
}

/// A read-write mount of `volume` for `host` through `urls`, a write and its read back.
async fn write_and_read(urls: &str, volume: &str, host: &str, fill: u8) {
    let vol = Volume::mount(
        urls,
        volume,
        MountOptions {
            host: host.into(),
            access: Access::ReadWrite,
            ttl: Duration::from_secs(10),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("mount {volume} for {host}: {e}"));
    let data = vec![fill; 64 << 10];
    vol.write(4096, &data, true).await.unwrap();
    assert_eq!(vol.read(4096, data.len()).await.unwrap(), data);
    vol.unmount().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_signs_after_the_switch_and_holds_across_a_failover() {
    if !require_etcd("a_rotated_key_signs_after_the_switch_and_holds_across_a_failover") {
        return;
    }
    let etcd = EtcdCluster::start(1).unwrap();
    let (a1, a2) = (free_addr(), free_addr());
    let mut ctls = vec![controller(&etcd, &a1)];
    active_of(&[&a1], Duration::from_secs(10)).await;
    ctls.push(controller(&etcd, &a2));
    let addrs = [a1.as_str(), a2.as_str()];
    let urls = format!("http://{a1},http://{a2}");
    let ctl = Controllers::parse_with(
        &urls,
        ControllerOptions {
            failover_wait: Duration::from_secs(20),
            ..Default::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _node = Process::node_at(dir.path(), &format!("{a1},http://{a2}"), "n0", &free_addr());
    // "r" for the mounts after the rotation; "o" for one before it, whose tokens (signed with
    // the old key) stay the newest of their volume (a later lease's would fence them).
    for name in ["r", "o"] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let made = v1::volumes_client::VolumesClient::new(ctl.clone())
                .create(v1::CreateVolumeRequest {
                    name: name.into(),
                    size_bytes: 16 << 20,
                    layout: Some(dasmesh_testkit::layout("single")),
                    requirements: None,
                })
                .await;
            if made.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "the node never registered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let before = mount_tokens(&ctl, "o", "before").await;

    // A standby refuses to rotate and names the active controller; the active one rotates.
    let first = active_of(&addrs, Duration::from_secs(10)).await;
    let refused = control(addrs[1 - first])
        .await
        .rotate_signing_key(v1::RotateSigningKeyRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    assert!(refused.message().contains(addrs[first]), "{refused}");
    let r = control(addrs[first])
        .await
        .rotate_signing_key(v1::RotateSigningKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    let new = dasmesh_wire::verifying_key_from_text(&r.public_key).unwrap();
    assert_eq!(r.accepted_keys.len(), 2, "{:?}", r.accepted_keys);
    assert_eq!(r.accepted_keys[0], r.public_key);
    let old = dasmesh_wire::verifying_key_from_text(&r.accepted_keys[1]).unwrap();
    assert!(before.iter().all(|e| signed_with(&e.token, &old)));

    // After the switch: tokens signed with the new key, which the node accepts (heartbeat
    // answers named it before the switch), and the old key's tokens still open sessions.
    tokio::time::sleep(Duration::from_millis(
        r.switch_at_ms.saturating_sub(now_ms()) + 50,
    ))
    .await;
    let after = mount_tokens(&ctl, "r", "after").await;
    assert!(after.iter().all(|e| signed_with(&e.token, &new)));
    open_all(&after).await;
    open_all(&before).await;
    write_and_read(&urls, "r", "h1", 1).await;

    // The active controller dies: the other takes over with the same ring.
    ctls[first].signal("KILL");
    let taken = mount_tokens(&ctl, "r", "taken-over").await;
    assert_eq!(active_of(&addrs, Duration::from_secs(10)).await, 1 - first);
    assert!(
        taken.iter().all(|e| signed_with(&e.token, &new)),
        "the controller that took over signs with another key"
    );
    open_all(&taken).await;
    open_all(&before).await;
    write_and_read(&urls, "r", "h2", 2).await;
}
