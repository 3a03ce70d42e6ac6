//! Tokens bound to their holder, end to end: a host that gives a key at mount gets tokens bound
//! to it (and keeps the binding across renewals); the real node opens them for that host only.
//! The host library binds every lease it takes.

use dasmesh_api::v1;
use dasmesh_client::{ConnectOptions, Connection, Error};
use dasmesh_testkit::Cluster;
use dasmesh_wire::{DeviceId, SigningKey, Status, Token};
use std::sync::Arc;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(
    x: &v1::Extent,
    t: &Token,
    holder: Option<&SigningKey>,
) -> Result<Connection, Error> {
    let opts = ConnectOptions {
        holder: holder.map(|k| Arc::new(k.clone())),
        ..Default::default()
    };
    Connection::connect(&x.node_address, DeviceId(x.device_id), t, &opts).await
}

#[test]
fn a_token_issued_to_one_host_is_refused_when_presented_by_another() {
    let c = Cluster::start(1);
    rt().block_on(async {
        c.create("v", "single", 16 << 20).await;
        let a = SigningKey::from_bytes(&rand::random());
        let b = SigningKey::from_bytes(&rand::random());
        let mut leases = v1::leases_client::LeasesClient::new(c.channel().await);
        let mount = |key: Vec<u8>| v1::MountRequest {
            volume: "v".into(),
            host_id: "host-a".into(),
            access: v1::Access::ReadWrite as i32,
            ttl_ms: 60_000,
            holder_key: key,
        };
        // A key of the wrong size is refused and takes nothing.
        let e = leases.mount(mount(vec![1; 31])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("holder_key"), "{}", e.message());

        let m = leases
            .mount(mount(a.verifying_key().to_bytes().to_vec()))
            .await
            .unwrap()
            .into_inner();
        let x = m.extents[0].extent.clone().unwrap();
        let t = Token::from_text(&m.extents[0].token).unwrap();
        assert_eq!(t.holder(), Some(a.verifying_key().to_bytes()), "bound to A");

        // B holds A's token (copied off A) but not A's key.
        match connect(&x, &t, None).await {
            Err(Error::Protocol(m)) => assert!(m.contains("holder key"), "{m}"),
            r => panic!("a bound token without a key: {:?}", r.map(|_| ())),
        }
        match connect(&x, &t, Some(&b)).await {
            Err(Error::Handshake(Status::NotHolder)) => {}
            r => panic!("B's key: {:?}", r.map(|_| ())),
        }
        // A, with its key: served.
        let conn = connect(&x, &t, Some(&a)).await.unwrap();
        conn.write(x.offset, &[5u8; 4096], false).await.unwrap();

        // A renewal keeps the binding.
        let lease_id = m.lease.unwrap().lease_id;
        let r = leases
            .renew(v1::RenewRequest {
                joined: vec![],
                lease_id,
                ttl_ms: 60_000,
            })
            .await
            .unwrap()
            .into_inner();
        let t2 = Token::from_text(&r.extents[0].token).unwrap();
        assert_eq!(t2.holder(), Some(a.verifying_key().to_bytes()));
        assert!(matches!(
            connect(&x, &t2, Some(&b)).await,
            Err(Error::Handshake(Status::NotHolder))
        ));
        connect(&x, &t2, Some(&a)).await.unwrap();
        leases
            .unmount(v1::UnmountRequest { lease_id })
            .await
            .unwrap();

        // The host library binds its leases: the tokens it holds name a key of its own.
        let v = dasmesh_client::Volume::mount(&c.url(), "v", Default::default())
            .await
            .unwrap();
        assert!(v.tokens_bound(), "bearer tokens from the library");
        v.write(0, &[6u8; 4096], false).await.unwrap();
        assert_eq!(v.read(0, 4096).await.unwrap(), vec![6u8; 4096]);
        v.unmount().await.unwrap();
    });
}
