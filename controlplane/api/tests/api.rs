//! The generated API: every service is in the descriptor set (for reflection), and messages
//! survive an encode/decode round trip.

use dasmesh_api::v1;
use prost::Message;

#[test]
fn descriptor_set_names_every_service() {
    let set = prost_types_lite::services(dasmesh_api::FILE_DESCRIPTOR_SET);
    for s in ["NodeRegistry", "Pool", "Volumes", "Leases", "Usage"] {
        assert!(set.iter().any(|n| n == s), "{s} missing from {set:?}");
    }
}

#[test]
fn messages_round_trip() {
    let m = v1::MountResponse {
        lease: Some(v1::Lease {
            lease_id: 7,
            volume_id: 3,
            volume_name: "db".into(),
            host_id: "host-a".into(),
            access: v1::Access::ReadWrite as i32,
            epoch: 9,
            started_ms: 1,
            expires_at_ms: 2,
        }),
        size_bytes: 1 << 30,
        layout: Some(v1::Layout {
            kind: v1::LayoutKind::Mirror as i32,
            width: 2,
            stripe_unit_bytes: 0,
        }),
        extents: vec![v1::MountedExtent {
            extent: Some(v1::Extent {
                rebuilding: false,
                takes_writes: false,
                rebuilt_bytes: 0,
                epoch: 0,
                node_id: 1,
                node_address: "127.0.0.1:7700".into(),
                device_id: 0,
                offset: 0,
                length: 1 << 30,
                copy: 1,
                index: 0,
                stale: false,
                node_tls: true,
            }),
            token: "dmt1.x".into(),
        }],
    };
    let back = v1::MountResponse::decode(m.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back, m);
}

/// Just enough of descriptor.proto to list service names, without another dependency.
mod prost_types_lite {
    use prost::Message;

    #[derive(Clone, PartialEq, Message)]
    struct FileDescriptorSet {
        #[prost(message, repeated, tag = "1")]
        file: Vec<FileDescriptorProto>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct FileDescriptorProto {
        #[prost(message, repeated, tag = "6")]
        service: Vec<ServiceDescriptorProto>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct ServiceDescriptorProto {
        #[prost(string, optional, tag = "1")]
        name: Option<String>,
    }

    pub fn services(bytes: &[u8]) -> Vec<String> {
        FileDescriptorSet::decode(bytes)
            .unwrap()
            .file
            .into_iter()
            .flat_map(|f| f.service)
            .filter_map(|s| s.name)
            .collect()
    }
}
