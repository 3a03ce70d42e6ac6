//! Identities end to end: the real controller over mutual TLS with certificates of a CA made
//! here, and clients holding certificates of every role, of another CA, expired, or none.

mod common;

use common::{tls_channel, Pki};

use std::path::Path;
use std::time::{Duration, SystemTime};

use dasmesh_api::tls::{self, CertDir, Role};
use dasmesh_api::v1;
use dasmesh_testkit::{free_addr, Process};
use tonic::transport::Channel;
use tonic::{Code, Status};

fn start_controller(pki: &Pki, data: &Path) -> Process {
    let args = [
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--heartbeat".into(),
        "200ms".into(),
        "--cert".into(),
        pki.controller().display().to_string(),
        // The console too: its login link is one of the calls.
        "--http".into(),
        "127.0.0.1:0".into(),
    ];
    Process::spawn("dasmesh-controller", &args)
}

/// The call every role may not make unless the table says so, with a request that would
/// change the state if it were let through.
async fn call(ch: Channel, path: &str, f: &Fixture) -> Result<(), Status> {
    use v1::control_plane_client::ControlPlaneClient as Cp;
    use v1::leases_client::LeasesClient as L;
    use v1::node_registry_client::NodeRegistryClient as R;
    use v1::pool_client::PoolClient as P;
    use v1::usage_client::UsageClient as U;
    use v1::volumes_client::VolumesClient as V;
    let method = path.rsplit('/').next().unwrap();
    let service = path.split('/').nth(1).unwrap();
    let lease_id = f.lease_id;
    let node_id = f.node_id;
    let volume = || "t".to_string();
    match (service, method) {
        ("dasmesh.v1.NodeRegistry", "Register") => R::new(ch)
            .register(v1::RegisterRequest {
                data_tls: false,
                node_id: 0,
                address: "127.0.0.1:9".into(),
                version: "rogue".into(),
                failure_domain: String::new(),
            })
            .await
            .map(drop),
        ("dasmesh.v1.NodeRegistry", "ReportDevices") => R::new(ch)
            .report_devices(v1::ReportDevicesRequest {
                node_id,
                devices: vec![],
            })
            .await
            .map(drop),
        ("dasmesh.v1.NodeRegistry", "Heartbeat") => R::new(ch)
            .heartbeat(v1::HeartbeatRequest {
                rebuilds: vec![],
                node_id,
                usage: vec![],
            })
            .await
            .map(drop),
        ("dasmesh.v1.NodeRegistry", "Deregister") => R::new(ch)
            .deregister(v1::DeregisterRequest { node_id })
            .await
            .map(drop),
        ("dasmesh.v1.Pool", "ListNodes") => P::new(ch)
            .list_nodes(v1::ListNodesRequest {})
            .await
            .map(drop),
        ("dasmesh.v1.Pool", "ListDevices") => P::new(ch)
            .list_devices(v1::ListDevicesRequest {})
            .await
            .map(drop),
        ("dasmesh.v1.Pool", "GetNode") => P::new(ch)
            .get_node(v1::GetNodeRequest { node_id })
            .await
            .map(drop),
        ("dasmesh.v1.Volumes", "Create") => V::new(ch)
            .create(v1::CreateVolumeRequest {
                name: "made-by-a-stranger".into(),
                size_bytes: 4 << 20,
                layout: Some(dasmesh_api::Layout::Single.into()),
                ..Default::default()
            })
            .await
            .map(drop),
        ("dasmesh.v1.Volumes", "Get") => V::new(ch)
            .get(v1::GetVolumeRequest { name: volume() })
            .await
            .map(drop),
        ("dasmesh.v1.Volumes", "List") => {
            V::new(ch).list(v1::ListVolumesRequest {}).await.map(drop)
        }
        ("dasmesh.v1.Volumes", "Resize") => V::new(ch)
            .resize(v1::ResizeVolumeRequest {
                expect_version: 0,
                name: volume(),
                size_bytes: 8 << 20,
            })
            .await
            .map(drop),
        ("dasmesh.v1.Volumes", "Delete") => V::new(ch)
            .delete(v1::DeleteVolumeRequest {
                expect_version: 0,
                name: volume(),
            })
            .await
            .map(drop),
        ("dasmesh.v1.Volumes", "ReplaceCopy") => V::new(ch)
            .replace_copy(v1::ReplaceCopyRequest {
                expect_version: 0,
                name: volume(),
                copy: 0,
                node_id: 0,
            })
            .await
            .map(drop),
        ("dasmesh.v1.Leases", "Mount") => L::new(ch)
            .mount(v1::MountRequest {
                holder_key: Vec::new(),
                volume: volume(),
                host_id: String::new(),
                access: v1::Access::ReadOnly as i32,
                ttl_ms: 60_000,
            })
            .await
            .map(drop),
        ("dasmesh.v1.Leases", "Renew") => L::new(ch)
            .renew(v1::RenewRequest {
                joined: vec![],
                lease_id,
                ttl_ms: 60_000,
            })
            .await
            .map(drop),
        ("dasmesh.v1.Leases", "Unmount") => L::new(ch)
            .unmount(v1::UnmountRequest { lease_id })
            .await
            .map(drop),
        ("dasmesh.v1.Leases", "Revoke") => L::new(ch)
            .revoke(v1::RevokeRequest { lease_id })
            .await
            .map(drop),
        ("dasmesh.v1.Leases", "List") => L::new(ch)
            .list(v1::ListLeasesRequest { volume: volume() })
            .await
            .map(drop),
        ("dasmesh.v1.Leases", "ReportFailure") => L::new(ch)
            .report_failure(v1::ReportFailureRequest {
                not_sent: false,
                dirty: Vec::new(),
                lease_id,
                copies: vec![0],
                reason: "a stranger says so".into(),
            })
            .await
            .map(drop),
        ("dasmesh.v1.Leases", "ReportRebuilt") => L::new(ch)
            .report_rebuilt(v1::ReportRebuiltRequest {
                lease_id,
                copies: vec![0],
            })
            .await
            .map(drop),
        ("dasmesh.v1.Usage", "Report") => U::new(ch)
            .report(v1::UsageRequest::default())
            .await
            .map(drop),
        ("dasmesh.v1.ControlPlane", "ListControllers") => Cp::new(ch)
            .list_controllers(v1::ListControllersRequest {})
            .await
            .map(drop),
        ("dasmesh.v1.ControlPlane", "RotateSigningKey") => Cp::new(ch)
            .rotate_signing_key(v1::RotateSigningKeyRequest::default())
            .await
            .map(drop),
        ("dasmesh.v1.ControlPlane", "ConsoleLogin") => Cp::new(ch)
            .console_login(v1::ConsoleLoginRequest {})
            .await
            .map(drop),
        _ => panic!("no call for {path}: add it here and to the table"),
    }
}

/// Every method of the API (dasmesh-api's list, which its unit tests hold to the protos).
const EVERY: &[&str] = dasmesh_api::METHODS;

/// A registered node with a device, a mirror volume `t` on it... (one node: a single volume),
/// and a read-write lease on `t` held by host `ha`.
struct Fixture {
    node_id: u64,
    lease_id: u64,
}

/// Everything the operator can see, to compare before and after refused calls.
async fn snapshot(op: &Channel) -> String {
    let nodes = v1::pool_client::PoolClient::new(op.clone())
        .list_nodes(v1::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner();
    let vols = v1::volumes_client::VolumesClient::new(op.clone())
        .list(v1::ListVolumesRequest {})
        .await
        .unwrap()
        .into_inner();
    let leases = v1::leases_client::LeasesClient::new(op.clone())
        .list(v1::ListLeasesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let keys = v1::node_registry_client::NodeRegistryClient::new(op.clone());
    drop(keys);
    // Heartbeat times move by themselves; everything else must not.
    let nodes: Vec<_> = nodes
        .nodes
        .iter()
        .map(|n| (n.node_id, n.address.clone(), n.state, n.devices.len()))
        .collect();
    format!("{nodes:?}\n{:?}\n{:?}", vols.volumes, leases.leases)
}

async fn fixture(op: &Channel, node: &Channel, ha: &Channel) -> Fixture {
    let reg = v1::node_registry_client::NodeRegistryClient::new(node.clone())
        .register(v1::RegisterRequest {
            data_tls: false,
            node_id: 0,
            address: "127.0.0.1:7701".into(),
            version: "t".into(),
            failure_domain: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    v1::node_registry_client::NodeRegistryClient::new(node.clone())
        .report_devices(v1::ReportDevicesRequest {
            node_id: reg.node_id,
            devices: vec![dev_report()],
        })
        .await
        .unwrap();
    v1::volumes_client::VolumesClient::new(op.clone())
        .create(v1::CreateVolumeRequest {
            name: "t".into(),
            size_bytes: 4 << 20,
            layout: Some(dasmesh_api::Layout::Single.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let m = v1::leases_client::LeasesClient::new(ha.clone())
        .mount(v1::MountRequest {
            holder_key: Vec::new(),
            volume: "t".into(),
            host_id: String::new(),
            access: v1::Access::ReadWrite as i32,
            ttl_ms: 60_000,
        })
        .await
        .unwrap()
        .into_inner();
    let lease = m.lease.unwrap();
    assert_eq!(
        lease.host_id, "ha",
        "a host's lease is in its certificate's name"
    );
    Fixture {
        node_id: reg.node_id,
        lease_id: lease.lease_id,
    }
}

/// A controller over mutual TLS with the fixture in place, and channels of an operator, the
/// fixture's node (n1) and host (ha).
struct Setup {
    pki: Pki,
    _data: tempfile::TempDir,
    ctl: Process,
    op: Channel,
    ha: Channel,
    f: Fixture,
}

async fn setup() -> Setup {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let ctl = start_controller(&pki, data.path());
    let op = tls_channel(&ctl.addr, &pki.issue(Role::Operator, "ops"))
        .await
        .unwrap();
    let node = tls_channel(&ctl.addr, &pki.issue(Role::Node, "n1"))
        .await
        .unwrap();
    let ha = tls_channel(&ctl.addr, &pki.issue(Role::Host, "ha"))
        .await
        .unwrap();
    let f = fixture(&op, &node, &ha).await;
    Setup {
        pki,
        _data: data,
        ctl,
        op,
        ha,
        f,
    }
}

/// Every method for every role: a forbidden one is refused with PERMISSION_DENIED and changes
/// nothing; an allowed one is let through the table (what it then does is the handler's: the
/// node here is another node than the fixture's, so the handler refuses its calls about it).
#[tokio::test]
async fn every_role_is_held_to_its_calls() {
    let Setup {
        pki, ctl, op, f, ..
    } = setup().await;
    let roles = [
        (Role::Controller, pki.issue(Role::Controller, "ctl2")),
        (Role::Node, pki.issue(Role::Node, "n1")),
        (Role::Host, pki.issue(Role::Host, "ha")),
    ];
    let before = snapshot(&op).await;
    for (role, cert) in &roles {
        let ch = tls_channel(&ctl.addr, cert).await.unwrap();
        for path in EVERY {
            let r = call(ch.clone(), path, &f).await;
            let allowed = dasmesh_controller::authz::allowed(path, *role);
            match (&r, allowed) {
                (Err(s), false) => {
                    assert_eq!(s.code(), Code::PermissionDenied, "{role} {path}: {s:?}");
                    assert!(s.message().contains("may not call"), "{role} {path}: {s:?}");
                }
                (Ok(()), false) => panic!("{role} may not call {path}, and it was let through"),
                // Past the table, the handler may still refuse (a node speaking for another).
                (Err(s), true) => assert!(
                    !s.message().contains("may not call"),
                    "{role} may call {path}, and the table refused it: {s:?}"
                ),
                (Ok(()), true) => {}
            }
        }
        // Only the refused calls ran so far for the controller's certificate; the node's and
        // host's allowed ones may have changed things: compare after the first role only.
        if *role == Role::Controller {
            assert_eq!(
                snapshot(&op).await,
                before,
                "a refused call changed the state"
            );
        }
    }
    // The operator may call everything (the calls that need other arguments fail otherwise).
    for path in EVERY {
        if let Err(s) = call(op.clone(), path, &f).await {
            assert_ne!(s.code(), Code::PermissionDenied, "operator {path}: {s:?}");
        }
        // (The operator's own calls run after the others: Delete and Revoke end the fixture.)
    }
}

/// A host acts on its own leases only, and reads only the volumes it holds.
#[tokio::test]
async fn a_host_cannot_touch_another_hosts_lease() {
    let Setup {
        pki,
        ctl,
        op,
        ha,
        f,
        ..
    } = setup().await;
    let hb = tls_channel(&ctl.addr, &pki.issue(Role::Host, "hb"))
        .await
        .unwrap();
    let before = snapshot(&op).await;
    for path in [
        "/dasmesh.v1.Leases/Renew",
        "/dasmesh.v1.Leases/Unmount",
        "/dasmesh.v1.Leases/ReportFailure",
        "/dasmesh.v1.Leases/ReportRebuilt",
        "/dasmesh.v1.Volumes/Get",
    ] {
        let s = call(hb.clone(), path, &f).await.unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "hb {path}: {s:?}");
    }
    // It sees none of ha's leases, and cannot take a lease in ha's name.
    let seen = v1::leases_client::LeasesClient::new(hb.clone())
        .list(v1::ListLeasesRequest { volume: "t".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(seen.leases.is_empty(), "{:?}", seen.leases);
    let s = v1::leases_client::LeasesClient::new(hb.clone())
        .mount(v1::MountRequest {
            holder_key: Vec::new(),
            volume: "t".into(),
            host_id: "ha".into(),
            access: v1::Access::ReadOnly as i32,
            ttl_ms: 60_000,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert_eq!(
        snapshot(&op).await,
        before,
        "a refused call changed the state"
    );
    // ha itself may do all of it.
    let mine = v1::leases_client::LeasesClient::new(ha.clone())
        .list(v1::ListLeasesRequest { volume: "t".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.leases.len(), 1);
    call(ha.clone(), "/dasmesh.v1.Volumes/Get", &f)
        .await
        .unwrap();
    call(ha.clone(), "/dasmesh.v1.Leases/Renew", &f)
        .await
        .unwrap();
    call(ha.clone(), "/dasmesh.v1.Leases/Unmount", &f)
        .await
        .unwrap();
}

/// A node registers as the name on its certificate: another certificate cannot speak for it,
/// a second machine with the same name is refused, and a host's certificate registers nothing.
#[tokio::test]
async fn a_rogue_node_cannot_register_beat_or_be_given_extents() {
    let Setup {
        pki,
        ctl,
        op,
        ha,
        f,
        ..
    } = setup().await;
    let before = snapshot(&op).await;
    let reg = |ch: Channel, node_id: u64, address: &str| {
        let address = address.to_string();
        async move {
            v1::node_registry_client::NodeRegistryClient::new(ch)
                .register(v1::RegisterRequest {
                    data_tls: false,
                    node_id,
                    address,
                    version: "t".into(),
                    failure_domain: String::new(),
                })
                .await
        }
    };
    // A host's certificate.
    let s = reg(ha.clone(), 0, "127.0.0.1:7702").await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    // A second machine showing n1's certificate, from another address.
    let twin = tls_channel(&ctl.addr, &pki.issue(Role::Node, "n1"))
        .await
        .unwrap();
    let s = reg(twin.clone(), 0, "127.0.0.1:7799").await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("registered as node"), "{s:?}");
    // Another node's certificate speaking for n1.
    let n2 = tls_channel(&ctl.addr, &pki.issue(Role::Node, "n2"))
        .await
        .unwrap();
    let s = reg(n2.clone(), f.node_id, "127.0.0.1:7701")
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    for path in [
        "/dasmesh.v1.NodeRegistry/Heartbeat",
        "/dasmesh.v1.NodeRegistry/ReportDevices",
        "/dasmesh.v1.NodeRegistry/Deregister",
    ] {
        let s = call(n2.clone(), path, &f).await.unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "n2 {path}: {s:?}");
    }
    assert_eq!(
        snapshot(&op).await,
        before,
        "a refused call changed the state"
    );
    // n1 again from where it is (a lost state directory): the same id.
    let again = reg(twin, 0, "127.0.0.1:7701").await.unwrap().into_inner();
    assert_eq!(again.node_id, f.node_id);
    // n2 registers as itself; it has no devices, so a new volume's extents go to n1 only.
    let n2_id = reg(n2, 0, "127.0.0.1:7703")
        .await
        .unwrap()
        .into_inner()
        .node_id;
    let v = v1::volumes_client::VolumesClient::new(op.clone())
        .create(v1::CreateVolumeRequest {
            name: "u".into(),
            size_bytes: 4 << 20,
            layout: Some(dasmesh_api::Layout::Single.into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v
        .extents
        .iter()
        .all(|e| e.node_id == f.node_id && e.node_id != n2_id));
}

/// Plaintext, another CA's certificate and an expired one are refused at the TLS layer, each
/// with an error that says what is wrong.
#[tokio::test]
async fn strangers_are_refused_at_the_tls_layer_with_a_clear_error() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let ctl = start_controller(&pki, data.path());
    let list = |ctls: dasmesh_api::Controllers| async move {
        v1::pool_client::PoolClient::new(ctls)
            .list_nodes(v1::ListNodesRequest {})
            .await
    };
    let opts = |cert: Option<&Path>| dasmesh_api::ControllerOptions {
        failover_wait: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(2),
        tls: cert.map(|c| CertDir::load(c).unwrap().client_config()),
        ..Default::default()
    };
    // No certificate, plaintext.
    let plain =
        dasmesh_api::Controllers::parse_with(&format!("http://{}", ctl.addr), opts(None)).unwrap();
    let s = list(plain).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(
        s.message().contains("may serve TLS only"),
        "{}",
        s.message()
    );
    // Another CA's operator.
    let evil = pki.issue_with("evil-ca", Role::Operator, "ops", &[], SystemTime::now());
    let url = format!("https://{}", ctl.addr);
    let s = list(dasmesh_api::Controllers::parse_with(&url, opts(Some(&evil))).unwrap())
        .await
        .unwrap_err();
    assert!(s.message().contains("not from the CA"), "{}", s.message());
    // The server also refuses the client: another CA's certificate with this CA trusted.
    let mixed = pki.dir.path().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    for (from, f) in [(&evil, tls::CERT), (&evil, tls::KEY)] {
        std::fs::copy(from.join(f), mixed.join(f)).unwrap();
    }
    std::fs::copy(
        pki.controller().join(tls::CA_CERT),
        mixed.join(tls::CA_CERT),
    )
    .unwrap();
    let s = list(dasmesh_api::Controllers::parse_with(&url, opts(Some(&mixed))).unwrap())
        .await
        .unwrap_err();
    assert!(
        s.message().contains("refused this certificate"),
        "{}",
        s.message()
    );
    // An operator's certificate of this CA that expired yesterday.
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    let expired = pki.issue_with("ca", Role::Operator, "old", &[], two_days_ago);
    let s = list(dasmesh_api::Controllers::parse_with(&url, opts(Some(&expired))).unwrap())
        .await
        .unwrap_err();
    assert!(
        s.message().contains("refused this certificate"),
        "{}",
        s.message()
    );
    // A rogue node with any of these certificates (or none) cannot register or beat either:
    // node certificates of another CA, of this CA but expired, and no certificate at all.
    let rogue_other_ca = pki.issue_with("evil-ca", Role::Node, "n9", &[], SystemTime::now());
    let rogue_expired = pki.issue_with("ca", Role::Node, "n9", &[], two_days_ago);
    let register = |ctls: dasmesh_api::Controllers| async move {
        let mut r = v1::node_registry_client::NodeRegistryClient::new(ctls);
        let reg = r
            .register(v1::RegisterRequest {
                data_tls: false,
                node_id: 0,
                address: "127.0.0.1:7709".into(),
                version: "rogue".into(),
                failure_domain: String::new(),
            })
            .await;
        let beat = r
            .heartbeat(v1::HeartbeatRequest {
                rebuilds: vec![],
                node_id: 1,
                usage: vec![],
            })
            .await;
        (reg, beat)
    };
    let strangers = [
        dasmesh_api::Controllers::parse_with(&format!("http://{}", ctl.addr), opts(None)).unwrap(),
        dasmesh_api::Controllers::parse_with(&url, opts(Some(&rogue_other_ca))).unwrap(),
        dasmesh_api::Controllers::parse_with(&url, opts(Some(&rogue_expired))).unwrap(),
    ];
    for (i, c) in strangers.into_iter().enumerate() {
        let (reg, beat) = register(c).await;
        // Refused, and said why (the call is reported as maybe applied only where the
        // transport cannot tell: a closed connection under TLS 1.3).
        for e in [reg.unwrap_err(), beat.unwrap_err()] {
            assert!(
                e.message().contains("(the controller"),
                "stranger {i}: {e:?}"
            );
        }
    }
    // The right one works, and no rogue node made it into the pool (so none is given extents).
    let ok = pki.issue(Role::Operator, "ops");
    let nodes = list(dasmesh_api::Controllers::parse_with(&url, opts(Some(&ok))).unwrap())
        .await
        .unwrap()
        .into_inner();
    assert!(nodes.nodes.is_empty(), "{:?}", nodes.nodes);
}

/// Without a certificate the controller does not start, unless told it is a lab.
#[test]
fn no_certificate_no_start_unless_insecure_is_asked_for() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(dasmesh_testkit::bin("dasmesh-controller"))
        .args(["--listen", &free_addr(), "--data-dir"])
        .arg(data.path())
        .env_remove("DASMESH_CERT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no certificate: give --cert DIR"), "{err}");
    assert!(err.contains("--insecure-no-auth"), "{err}");
    // A node's certificate is not a controller's.
    let pki = Pki::new();
    let out = std::process::Command::new(dasmesh_testkit::bin("dasmesh-controller"))
        .args(["--listen", &free_addr(), "--data-dir"])
        .arg(data.path())
        .arg("--cert")
        .arg(pki.issue(Role::Node, "n1"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a controller"), "{err}");
}

/// An etcd that serves mutual TLS only, with the test's CA; killed on drop.
struct TlsEtcd {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_etcd(pki: &Pki) -> TlsEtcd {
    let dir = tempfile::tempdir().unwrap();
    let server = pki.issue_with(
        "ca",
        Role::Controller,
        "etcd",
        &["127.0.0.1"],
        SystemTime::now(),
    );
    let (client, peer) = (free_addr(), free_addr());
    let url = format!("https://{client}");
    let f = |n: &str| server.join(n).display().to_string();
    let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
    let child = std::process::Command::new(dasmesh_testkit::etcd::etcd_binary().unwrap())
        .args(["--name", "m0", "--data-dir"])
        .arg(dir.path().join("m0"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &format!("http://{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
        .args(["--initial-cluster", &format!("m0=http://{peer}")])
        .args(["--cert-file", &f(tls::CERT), "--key-file", &f(tls::KEY)])
        .args(["--trusted-ca-file", &f(tls::CA_CERT), "--client-cert-auth"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let etcd = TlsEtcd {
        child,
        url,
        _dir: dir,
    };
    // Up when a client with the controller's certificate gets an answer.
    let tls_opts = CertDir::load(&pki.controller()).unwrap().client_config();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = dasmesh_controller::store::etcd::Etcd::connect_tls(
            &etcd.url,
            "/probe/",
            Some(tls_opts.clone()),
        );
        match r {
            Ok(_) => return etcd,
            Err(e) if std::time::Instant::now() > deadline => panic!("etcd over TLS: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// With `--etcd https://...` the controller reaches etcd over mutual TLS with its own
/// certificate; etcd refuses another CA's, and https:// without a certificate is refused
/// before anything is tried.
#[tokio::test]
async fn the_controller_reaches_etcd_over_mutual_tls() {
    if !dasmesh_testkit::etcd::require_etcd("the_controller_reaches_etcd_over_mutual_tls") {
        return;
    }
    let pki = Pki::new();
    let etcd = tls_etcd(&pki);
    let ctl_args = |cert: &Path| {
        vec![
            "--listen".to_string(),
            "127.0.0.1:0".into(),
            "--etcd".into(),
            etcd.url.clone(),
            "--election-ttl".into(),
            "1s".into(),
            "--cert".into(),
            cert.display().to_string(),
        ]
    };
    let ctl = Process::spawn("dasmesh-controller", &ctl_args(&pki.controller()));
    let op = tls_channel(&ctl.addr, &pki.issue(Role::Operator, "ops"))
        .await
        .unwrap();
    // Active once it has won the election: a change goes through.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = v1::control_plane_client::ControlPlaneClient::new(op.clone())
            .rotate_signing_key(v1::RotateSigningKeyRequest::default())
            .await;
        match r {
            Ok(_) => break,
            Err(s) if std::time::Instant::now() > deadline => panic!("never active: {s:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let run = |args: Vec<String>| {
        std::process::Command::new(dasmesh_testkit::bin("dasmesh-controller"))
            .args(args)
            .env_remove("DASMESH_CERT")
            .output()
            .unwrap()
    };
    // Another CA's controller certificate: etcd does not let it in.
    let evil = pki.issue_with(
        "evil-ca",
        Role::Controller,
        "ctl",
        &["127.0.0.1"],
        SystemTime::now(),
    );
    let out = run(ctl_args(&evil));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach etcd"), "{err}");
    // https:// etcd without a certificate.
    let out = run(vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--etcd".into(),
        etcd.url.clone(),
        "--insecure-no-auth".into(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("https:// needs the controller's --cert"),
        "{err}"
    );
}

fn dev_report() -> v1::DeviceReport {
    v1::DeviceReport {
        device_id: 0,
        path: "/dev/x".into(),
        block_size: 4096,
        size_bytes: 1 << 30,
        lendable_start: 0,
        lendable_length: 1 << 30,
        ..Default::default()
    }
}

/// Each call a role may make succeeds for it, with arguments that fit: the table lets through
/// calls that then work, and together the roles cover every method of the API.
#[tokio::test]
async fn every_allowed_call_succeeds_for_its_role() {
    use v1::control_plane_client::ControlPlaneClient as Cp;
    use v1::leases_client::LeasesClient as L;
    use v1::node_registry_client::NodeRegistryClient as R;
    use v1::pool_client::PoolClient as P;
    use v1::usage_client::UsageClient as U;
    use v1::volumes_client::VolumesClient as V;
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let ctl = start_controller(&pki, data.path());
    let channel = |role, name: &str| {
        let cert = pki.issue(role, name);
        let addr = ctl.addr.clone();
        async move { tls_channel(&addr, &cert).await.unwrap() }
    };
    let op = channel(Role::Operator, "ops").await;
    let host = channel(Role::Host, "ha").await;
    let mut done = std::collections::BTreeSet::new();
    let mut did = |path: &'static str| done.insert(path);

    // Nodes, each as itself.
    let mut nodes = Vec::new();
    for (i, name) in ["n1", "n2", "n3"].into_iter().enumerate() {
        let ch = channel(Role::Node, name).await;
        let mut r = R::new(ch.clone());
        let node_id = r
            .register(v1::RegisterRequest {
                data_tls: false,
                node_id: 0,
                address: format!("127.0.0.1:{}", 7701 + i),
                version: "t".into(),
                failure_domain: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .node_id;
        r.report_devices(v1::ReportDevicesRequest {
            node_id,
            devices: vec![dev_report()],
        })
        .await
        .unwrap();
        r.heartbeat(v1::HeartbeatRequest {
            rebuilds: vec![],
            node_id,
            usage: vec![],
        })
        .await
        .unwrap();
        nodes.push((ch, node_id));
    }
    did("/dasmesh.v1.NodeRegistry/Register");
    did("/dasmesh.v1.NodeRegistry/ReportDevices");
    did("/dasmesh.v1.NodeRegistry/Heartbeat");

    // The operator: the pool and the volumes.
    P::new(op.clone())
        .list_nodes(v1::ListNodesRequest {})
        .await
        .unwrap();
    P::new(op.clone())
        .list_devices(v1::ListDevicesRequest {})
        .await
        .unwrap();
    P::new(op.clone())
        .get_node(v1::GetNodeRequest {
            node_id: nodes[0].1,
        })
        .await
        .unwrap();
    did("/dasmesh.v1.Pool/ListNodes");
    did("/dasmesh.v1.Pool/ListDevices");
    did("/dasmesh.v1.Pool/GetNode");
    for (name, layout) in [("m", "mirror:2"), ("s", "single")] {
        V::new(op.clone())
            .create(v1::CreateVolumeRequest {
                name: name.into(),
                size_bytes: 4 << 20,
                layout: Some(layout.parse::<dasmesh_api::Layout>().unwrap().into()),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    V::new(op.clone())
        .resize(v1::ResizeVolumeRequest {
            expect_version: 0,
            name: "s".into(),
            size_bytes: 8 << 20,
        })
        .await
        .unwrap();
    V::new(op.clone())
        .list(v1::ListVolumesRequest {})
        .await
        .unwrap();
    did("/dasmesh.v1.Volumes/Create");
    did("/dasmesh.v1.Volumes/Resize");
    did("/dasmesh.v1.Volumes/List");

    // The host: its own lease on the mirror, and everything it may do with it.
    let mut l = L::new(host.clone());
    let lease_id = l
        .mount(v1::MountRequest {
            holder_key: Vec::new(),
            volume: "m".into(),
            host_id: String::new(),
            access: v1::Access::ReadWrite as i32,
            ttl_ms: 60_000,
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap()
        .lease_id;
    l.renew(v1::RenewRequest {
        joined: vec![],
        lease_id,
        ttl_ms: 60_000,
    })
    .await
    .unwrap();
    let seen = l
        .list(v1::ListLeasesRequest { volume: "m".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.leases.len(), 1);
    V::new(host.clone())
        .get(v1::GetVolumeRequest { name: "m".into() })
        .await
        .unwrap();
    l.report_failure(v1::ReportFailureRequest {
        not_sent: false,
        dirty: Vec::new(),
        lease_id,
        copies: vec![1],
        reason: "a write to copy 1 failed".into(),
    })
    .await
    .unwrap();
    l.report_rebuilt(v1::ReportRebuiltRequest {
        lease_id,
        copies: vec![1],
    })
    .await
    .unwrap();
    l.unmount(v1::UnmountRequest { lease_id }).await.unwrap();
    did("/dasmesh.v1.Leases/Mount");
    did("/dasmesh.v1.Leases/Renew");
    did("/dasmesh.v1.Leases/List");
    did("/dasmesh.v1.Volumes/Get");
    did("/dasmesh.v1.Leases/ReportFailure");
    did("/dasmesh.v1.Leases/ReportRebuilt");
    did("/dasmesh.v1.Leases/Unmount");

    // The operator again: any host's lease, revocation, usage, the control plane, deletion.
    let other = L::new(op.clone())
        .mount(v1::MountRequest {
            holder_key: Vec::new(),
            volume: "s".into(),
            host_id: "web9".into(),
            access: v1::Access::ReadWrite as i32,
            ttl_ms: 60_000,
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(other.host_id, "web9", "an operator may mount for any host");
    L::new(op.clone())
        .revoke(v1::RevokeRequest {
            lease_id: other.lease_id,
        })
        .await
        .unwrap();
    U::new(op.clone())
        .report(v1::UsageRequest::default())
        .await
        .unwrap();
    Cp::new(op.clone())
        .list_controllers(v1::ListControllersRequest {})
        .await
        .unwrap();
    Cp::new(op.clone())
        .rotate_signing_key(v1::RotateSigningKeyRequest::default())
        .await
        .unwrap();
    // The mirror's copy 1 moves to the node no copy uses.
    let moved = V::new(op.clone())
        .replace_copy(v1::ReplaceCopyRequest {
            expect_version: 0,
            name: "m".into(),
            copy: 1,
            node_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(moved.extents.iter().any(|e| e.copy == 1 && e.rebuilding));
    did("/dasmesh.v1.Volumes/ReplaceCopy");
    V::new(op.clone())
        .delete(v1::DeleteVolumeRequest {
            expect_version: 0,
            name: "s".into(),
        })
        .await
        .unwrap();
    did("/dasmesh.v1.Leases/Revoke");
    did("/dasmesh.v1.Usage/Report");
    did("/dasmesh.v1.ControlPlane/ListControllers");
    did("/dasmesh.v1.ControlPlane/RotateSigningKey");
    let link = Cp::new(op.clone())
        .console_login(v1::ConsoleLoginRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(link.url.starts_with("https://127.0.0.1:"), "{link:?}");
    assert!(link.url.contains("/login?code="), "{link:?}");
    did("/dasmesh.v1.ControlPlane/ConsoleLogin");
    did("/dasmesh.v1.Volumes/Delete");

    // A node leaves, as itself.
    let (ch, node_id) = nodes.pop().unwrap();
    R::new(ch)
        .deregister(v1::DeregisterRequest { node_id })
        .await
        .unwrap();
    did("/dasmesh.v1.NodeRegistry/Deregister");

    let missed: Vec<_> = EVERY.iter().filter(|p| !done.contains(*p)).collect();
    assert!(missed.is_empty(), "never called with success: {missed:?}");
}
