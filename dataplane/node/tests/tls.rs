//! The data plane over mutual TLS (`--tls`), against the real node: a host with a certificate of
//! the cluster's CA reads and writes as over plaintext; a plaintext client, a client showing a
//! certificate of another CA and a client that does not trust the node's CA are refused at
//! the TLS layer, each with words that say so, and the node goes on serving.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Node;
use dasmesh_api::tls::{self, CertDir, IssueRequest, Role};
use dasmesh_client::{ConnectOptions, Connection, Error};
use dasmesh_wire::{DeviceId, Rights, Token};

const MIB: u64 = 1 << 20;

fn issue(root: &Path, ca: &str, role: Role, name: &str) -> PathBuf {
    let out = root.join(format!("{ca}-{name}"));
    let req = IssueRequest {
        role,
        name: name.into(),
        sans: vec!["127.0.0.1".into()],
        lifetime: Duration::from_secs(3600),
    };
    tls::issue(&root.join(ca), &req, &out).unwrap();
    out
}

/// A directory with `cert` and `key` of one identity beside the CA certificate of another.
fn mixed(root: &Path, ident: &Path, ca_of: &Path, name: &str) -> PathBuf {
    let out = root.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(ident.join(f), out.join(f)).unwrap();
    }
    std::fs::copy(ca_of.join("ca.pem"), out.join("ca.pem")).unwrap();
    out
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(node: &Node, t: &Token, cert: Option<&Path>) -> Result<Connection, Error> {
    let opts = ConnectOptions {
        local_socket: false,
        connect_timeout: Duration::from_secs(5),
        tls: cert.map(|c| CertDir::load(c).unwrap().data_client_config().unwrap()),
        ..Default::default()
    };
    Connection::connect(&node.addr, DeviceId(0), t, &opts).await
}

#[test]
fn the_data_plane_over_mutual_tls() {
    let pki = tempfile::tempdir().unwrap();
    let root = pki.path();
    tls::init_ca(&root.join("ca"), "test", Duration::from_secs(3600)).unwrap();
    tls::init_ca(&root.join("evil"), "test", Duration::from_secs(3600)).unwrap();
    let node_cert = issue(root, "ca", Role::Node, "n1");
    let host = issue(root, "ca", Role::Host, "h1");
    let evil_host = issue(root, "evil", Role::Host, "h1");
    let node = Node::start(
        &["memory:8M"],
        &["--tls", "--cert", &node_cert.display().to_string()],
    );
    let t = node.token(0, 0, 8 * MIB, Rights::ReadWrite, 1);
    rt().block_on(async {
        // A host of the CA: every op as over plaintext, large and small.
        let c = connect(&node, &t, Some(&host)).await.unwrap();
        assert!(!c.is_local());
        let big: Vec<u8> = (0..(1 << 20)).map(|i| (i * 7 % 251) as u8).collect();
        c.write(0, &big, false).await.unwrap();
        c.write(2 * MIB, &[9u8; 4096], true).await.unwrap();
        assert_eq!(c.read(0, 1 << 20).await.unwrap(), big);
        assert_eq!(c.read(2 * MIB, 4096).await.unwrap(), vec![9u8; 4096]);
        let reads = (0..64).map(|i| c.read(i * 4096, 4096));
        for (i, r) in futures_util::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(
                r.unwrap(),
                big[i * 4096..(i + 1) * 4096],
                "pipelined read {i}"
            );
        }

        // Plaintext to a TLS node: refused, and the client says why.
        match connect(&node, &t, None).await {
            Err(Error::Protocol(m)) => assert!(m.contains("--tls"), "{m}"),
            r => panic!("plaintext: {:?}", r.map(|_| ())),
        }
        // A certificate of another CA (the client trusts the right one): the node refuses it.
        let shows_evil = mixed(root, &evil_host, &host, "shows-evil");
        let e = connect(&node, &t, Some(&shows_evil))
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(e, Error::Io(_) | Error::Protocol(_) | Error::Closed),
            "{e:?}"
        );
        // A client that does not trust the node's CA refuses the node.
        let trusts_evil = mixed(root, &host, &evil_host, "trusts-evil");
        let e = connect(&node, &t, Some(&trusts_evil))
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(e.to_string().contains("TLS with"), "{e}");
        assert!(e.to_string().contains("certificate"), "{e}");

        // The node still serves the host, and its first connection is untouched.
        let again = connect(&node, &t, Some(&host)).await.unwrap();
        assert_eq!(again.read(2 * MIB, 4096).await.unwrap(), vec![9u8; 4096]);
        assert_eq!(c.read(0, 4096).await.unwrap(), big[..4096]);
    });
}

#[test]
fn tls_without_a_certificate_does_not_start() {
    let out = std::process::Command::new(dasmesh_testkit::bin("dasmesh-node"))
        .args(["--listen", "127.0.0.1:0", "--backend", "memory:1M", "--tls"])
        .env_remove("DASMESH_CERT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls needs the node's certificate"), "{err}");
}
