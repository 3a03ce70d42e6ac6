//! A cluster whose every link is mutual TLS: the controller (`--cert`), a node serving its data
//! plane over TLS (`--tls`), and a host with a certificate. The node tells the controller at
//! registration; the controller tells hosts in each extent, and a host that requires TLS
//! mounts and does I/O over it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dasmesh_api::tls::{self, CertDir, IssueRequest, Role};
use dasmesh_api::{v1, ControllerOptions, Controllers};
use dasmesh_client::{MountOptions, Volume};
use dasmesh_testkit::Process;

fn issue(root: &Path, role: Role, name: &str) -> PathBuf {
    let out = root.join(name);
    let req = IssueRequest {
        role,
        name: name.into(),
        sans: vec!["127.0.0.1".into()],
        lifetime: Duration::from_secs(3600),
    };
    tls::issue(&root.join("ca"), &req, &out).unwrap();
    out
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn hosts_and_the_controller_reach_a_tls_node_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    tls::init_ca(&root.join("ca"), "test", Duration::from_secs(3600)).unwrap();
    let ctl = Process::spawn(
        "dasmesh-controller",
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &s(&root.join("ctl")),
            "--heartbeat",
            "200ms",
            "--cert",
            &s(&issue(root, Role::Controller, "ctl")),
        ]
        .map(String::from),
    );
    let _node = Process::spawn(
        "dasmesh-node",
        &[
            "--listen",
            "127.0.0.1:0",
            "--no-pin",
            "--poll",
            "interrupt",
            "--tls",
            "--cert",
            &s(&issue(root, Role::Node, "n1")),
            "--controller",
            &format!("https://{}", ctl.addr),
            "--state-dir",
            &s(&root.join("n1")),
            "--backend",
            "memory:64M",
        ]
        .map(String::from),
    );
    let url = format!("https://{}", ctl.addr);
    let op = CertDir::load(&issue(root, Role::Operator, "ops")).unwrap();
    let host = CertDir::load(&issue(root, Role::Host, "h1")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = Controllers::parse_with(
            &url,
            ControllerOptions {
                tls: Some(op.client_config()),
                ..Default::default()
            },
        )
        .unwrap();
        let mut vols = v1::volumes_client::VolumesClient::new(ch.clone());
        let deadline = Instant::now() + Duration::from_secs(20);
        let v = loop {
            let r = vols
                .create(v1::CreateVolumeRequest {
                    name: "v".into(),
                    size_bytes: 8 << 20,
                    layout: Some(dasmesh_testkit::layout("single")),
                    requirements: None,
                })
                .await;
            match r {
                Ok(v) => break v.into_inner(),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("create: {e}"),
            }
        };
        assert!(v.extents.iter().all(|x| x.node_tls), "{:?}", v.extents);

        let opts = MountOptions {
            cert: Some(host.clone()),
            local_socket: false,
            require_tls: true,
            ..Default::default()
        };
        let vol = Volume::mount(&url, "v", opts.clone()).await.unwrap();
        vol.write(4096, &[3u8; 8192], true).await.unwrap();
        assert_eq!(vol.read(4096, 8192).await.unwrap(), vec![3u8; 8192]);
        vol.unmount().await.unwrap();

        // Deleting the volume: the controller discards its extent at the node and only then
        // forgets it. (On one machine it reaches the node over the same-host socket, like any
        // client that may; over the network it would need its certificate, which it has.)
        vols.delete(v1::DeleteVolumeRequest {
            expect_version: 0,
            name: "v".into(),
        })
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = vols
                .list(v1::ListVolumesRequest {})
                .await
                .unwrap()
                .into_inner();
            if list.volumes.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the deleted volume was never purged: {:?}",
                list.volumes
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}
