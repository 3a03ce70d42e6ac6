//! The test-only fault injection (`--fault-file`, cargo feature `fault-injection`), against the
//! real node and a file backend: EIO on chosen ranges, short writes the node completes, I/O
//! that hangs, all turned on and off while the node runs.

mod common;

use std::time::Duration;

use common::{pattern, Node};
use dasmesh_client::{ConnectOptions, Connection, Error};
use dasmesh_wire::{DeviceId, Rights, Status};

const MIB: u64 = 1 << 20;

use dasmesh_testkit::node_has_faults as has_faults;

/// Writes the fault file and waits for the node to have read it.
fn faults(node: &Node, text: &str) {
    std::fs::write(node.dir.path().join("faults"), text).unwrap();
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn injected_faults_fail_cut_short_and_hang_device_io() {
    if !has_faults() {
        eprintln!(
            "SKIP: dasmesh-node was built without the fault-injection feature \
             (scripts/test.sh builds it with --features dasmesh-node/fault-injection)"
        );
        return;
    }
    let node = Node::start(
        &["file:{dir}/d.img:16M"],
        &["--fault-file", "{dir}/faults", "--poll", "interrupt"],
    );
    let t = node.token(0, 0, 16 * MIB, Rights::ReadWrite, 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = ConnectOptions {
            request_timeout: Some(Duration::from_secs(1)),
            local_socket: false,
            ..Default::default()
        };
        let c = Connection::connect(&node.addr, DeviceId(0), &t, &opts)
            .await
            .unwrap();
        let data = pattern(64 << 10, 1);
        c.write(0, &data, false).await.unwrap();

        // EIO on writes of the first MiB: refused there, fine elsewhere; reads still work.
        faults(&node, "0 eio-write 0..1M\n");
        let e = c.write(0, &data, false).await.unwrap_err();
        assert_eq!(e.status(), Some(Status::IoError), "{e}");
        c.write(2 * MIB, &data, false).await.unwrap();
        assert_eq!(c.read(0, data.len()).await.unwrap(), data);
        // And on reads.
        faults(&node, "0 eio-read 2M..3M\n");
        let e = c.read(2 * MIB, 4096).await.unwrap_err();
        assert_eq!(e.status(), Some(Status::IoError), "{e}");
        c.write(0, &data, false).await.unwrap();

        // Short writes: the node writes the rest, and the data is whole.
        faults(&node, "0 short-write 0..16M\n");
        let big = pattern(1 << 20, 2);
        c.write(4 * MIB, &big, true).await.unwrap();
        faults(&node, "");
        assert_eq!(c.read(4 * MIB, big.len()).await.unwrap(), big);

        // A hang: the request never completes and the client gives up on it; other ranges and
        // other connections go on.
        faults(&node, "0 hang 8M..9M\n");
        let e = c.read(8 * MIB, 4096).await.unwrap_err();
        assert!(matches!(e, Error::Timeout), "{e}");
        let c2 = Connection::connect(&node.addr, DeviceId(0), &t, &opts)
            .await
            .unwrap();
        assert_eq!(c2.read(4 * MIB, 4096).await.unwrap(), big[..4096]);

        // Cleared: everything works again.
        faults(&node, "# none\n");
        c2.write(0, &data, false).await.unwrap();
        assert_eq!(c2.read(8 * MIB, 4096).await.unwrap().len(), 4096);
    });
}

#[test]
fn a_bad_fault_file_is_refused_at_start() {
    if !has_faults() {
        eprintln!("SKIP: dasmesh-node was built without the fault-injection feature");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("faults");
    std::fs::write(&f, "0 boom 0..1M\n").unwrap();
    let out = std::process::Command::new(dasmesh_testkit::bin("dasmesh-node"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "memory:1M",
            "--fault-file",
        ])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1") && err.contains("kind is"), "{err}");
}
