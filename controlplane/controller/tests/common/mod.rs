//! Shared by the controller's end-to-end tests: a gRPC channel to the real controller, and a
//! mount whose every extent is opened at its node with the lease's token.
#![allow(dead_code)]

use dasmesh_api::v1;
use dasmesh_client::{ConnectOptions, Connection};
use dasmesh_wire::{DeviceId, Token};

pub async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Mounts `volume` for `host` and opens every extent with its token, checking that the node
/// lends exactly that extent. Returns the lease id and each extent with its connection.
pub async fn mount_and_open(
    ch: &tonic::transport::Channel,
    volume: &str,
    host: &str,
    access: v1::Access,
) -> (u64, Vec<(v1::Extent, Connection)>) {
    let mut leases = v1::leases_client::LeasesClient::new(ch.clone());
    let m = leases
        .mount(v1::MountRequest {
            volume: volume.into(),
            host_id: host.into(),
            access: access as i32,
            ttl_ms: 60_000,
        })
        .await
        .unwrap_or_else(|e| panic!("mount {volume}: {e}"))
        .into_inner();
    let mut out = Vec::new();
    for me in m.extents {
        let x = me.extent.expect("extent");
        let token = Token::from_text(&me.token).unwrap();
        let c = Connection::connect(
            &x.node_address,
            DeviceId(x.device_id),
            &token,
            &ConnectOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("volume {volume}: {e}"));
        assert_eq!(
            (c.info().lent_offset, c.info().lent_length),
            (x.offset, x.length),
            "{volume}"
        );
        out.push((x, c));
    }
    (m.lease.expect("lease").lease_id, out)
}
