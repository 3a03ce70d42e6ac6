//! Rotation of the token-signing key through the service: the answers nodes get list the new
//! key and the old one at once, mounts are signed with the old key until the switch and with
//! the new one after it, and the ring is stored before it is used.

use super::*;
use crate::store::load_or_make_keys;
use dasmesh_wire::{Token, TokenError, VerifyingKey};
use std::time::Duration;
use v1::control_plane_server::ControlPlane as _;
use v1::node_registry_server::NodeRegistry as _;

/// Whether `token` (text) carries `key`'s signature; any other refusal is a test failure.
fn signed_with(token: &str, key: &VerifyingKey) -> bool {
    let t = Token::from_text(token).unwrap();
    let c = t.claim_unverified().unwrap();
    match t.verify(key, c.issued_at_ms, c.node_id, c.device_id) {
        Ok(_) => true,
        Err(TokenError::BadSignature) => false,
        Err(e) => panic!("token refused for another reason: {e}"),
    }
}

fn text(k: &VerifyingKey) -> String {
    dasmesh_wire::key_to_text(k.as_bytes())
}

fn keys(list: &[Vec<u8>]) -> Vec<String> {
    list.iter()
        .map(|k| dasmesh_wire::key_to_text(k.as_slice().try_into().unwrap()))
        .collect()
}

#[tokio::test]
async fn a_rotated_key_signs_mounts_only_after_the_switch() {
    let dir = tempfile::tempdir().unwrap();
    // Heartbeats every 1000 ms: tokens switch 3 s after the rotation.
    let svc = controller(dir.path());
    let ids = two_nodes(&svc).await;
    svc.create(Request::new(v1::CreateVolumeRequest {
        name: "v".into(),
        size_bytes: 64 << 20,
        layout: Some(Layout::Mirror { copies: 2 }.into()),
        requirements: None,
    }))
    .await
    .unwrap();
    let mount = |host: &str| {
        Request::new(v1::MountRequest {
            holder_key: Vec::new(),
            volume: "v".into(),
            host_id: host.into(),
            access: v1::Access::ReadOnly as i32,
            ttl_ms: 0,
        })
    };
    let beat = || async {
        svc.heartbeat(Request::new(v1::HeartbeatRequest {
            rebuilds: vec![],
            node_id: ids[0],
            usage: vec![],
        }))
        .await
        .unwrap()
        .into_inner()
        .signing_public_keys
    };
    let old = SigningKey::from_bytes(&[7; 32]).verifying_key();
    assert_eq!(keys(&beat().await), [text(&old)]);

    let before = now_ms();
    let r = svc
        .rotate_signing_key(Request::new(v1::RotateSigningKeyRequest {}))
        .await
        .unwrap()
        .into_inner();
    let after = now_ms();
    let new = dasmesh_wire::verifying_key_from_text(&r.public_key).unwrap();
    assert_ne!(new, old);
    assert!(
        (before + 3000..=after + 3000).contains(&r.switch_at_ms),
        "switch at {} for a rotation within {before}..={after}",
        r.switch_at_ms
    );
    assert_eq!(r.accepted_keys, [text(&new), text(&old)]);
    // Stored before it is used: a controller started again on this directory reads it.
    let stored = load_or_make_keys(dir.path()).unwrap();
    assert_eq!(stored.ring(), svc.0.controller().unwrap().keys().ring());

    // Nodes hear of both keys at once, the new one first; the single key is the signing one.
    assert_eq!(keys(&beat().await), [text(&new), text(&old)]);
    let reg = svc
        .register(Request::new(v1::RegisterRequest {
            data_tls: false,
            node_id: ids[1],
            address: "127.0.0.1:7701".into(),
            version: "t".into(),
            failure_domain: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys(&reg.signing_public_keys), [text(&new), text(&old)]);
    assert_eq!(reg.signing_public_key, old.to_bytes());

    // Before the switch: signed with the old key.
    let m = svc.mount(mount("early")).await.unwrap().into_inner();
    assert_eq!(m.extents.len(), 2);
    for e in &m.extents {
        let issued = Token::from_text(&e.token)
            .unwrap()
            .claim_unverified()
            .unwrap()
            .issued_at_ms;
        assert!(issued < r.switch_at_ms, "the mount took 3 s");
        assert!(signed_with(&e.token, &old) && !signed_with(&e.token, &new));
    }

    // After it: with the new key, and nodes still accept the old one for its tokens.
    tokio::time::sleep(Duration::from_millis(
        r.switch_at_ms.saturating_sub(now_ms()) + 20,
    ))
    .await;
    let m = svc.mount(mount("late")).await.unwrap().into_inner();
    for e in &m.extents {
        assert!(signed_with(&e.token, &new) && !signed_with(&e.token, &old));
    }
    assert_eq!(keys(&beat().await), [text(&new), text(&old)]);
    assert_eq!(
        svc.0.controller().unwrap().public_key(),
        new.to_bytes(),
        "registration answers name the new key"
    );

    // A controller started again on the directory signs with the new key too.
    drop(svc);
    let ctl = Controller::new(
        Box::new(RedbStore::open(dir.path()).unwrap()),
        load_or_make_keys(dir.path()).unwrap(),
        1000,
    )
    .unwrap();
    assert_eq!(ctl.public_key(), new.to_bytes());
    assert_eq!(ctl.accepted_keys(now_ms()).len(), 2);
}
