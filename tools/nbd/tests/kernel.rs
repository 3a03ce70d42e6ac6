//! The Linux kernel's NBD client (`nbd-client` and /dev/nbdX) on a gateway export: the kernel
//! sees the volume's size, and O_DIRECT writes through the block device read back identical,
//! also from the volume through a fresh mount. Needs root, the nbd kernel module (a /dev/nbd0
//! that is not in use) and nbd-client; otherwise it is skipped with the reason.

mod common;

use std::path::Path;
use std::process::Command;

use common::{random_file, run, Cluster, GatewayCluster as _};

const SIZE: u64 = 32 << 20;
const DEV: &str = "/dev/nbd0";

/// Why the kernel client cannot be tested here, if it cannot.
fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("needs root".into());
    }
    if !Path::new(DEV).exists() {
        return Some(format!(
            "{DEV} missing (no nbd kernel module: modprobe nbd)"
        ));
    }
    if Path::new("/sys/block/nbd0/pid").exists() {
        return Some(format!("{DEV} is in use"));
    }
    if Command::new("nbd-client").arg("-V").output().is_err() {
        return Some("nbd-client not installed (scripts/setup.sh installs it)".into());
    }
    None
}

/// Disconnects the device however the test ends.
struct Attached;

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = Command::new("nbd-client").args(["-d", DEV]).output();
    }
}

#[test]
fn kernel_nbd_client_reads_and_writes_a_volume() {
    if let Some(why) = unavailable() {
        eprintln!("SKIP kernel_nbd_client_reads_and_writes_a_volume: {why}");
        return;
    }
    let c = Cluster::start(2);
    c.create_now("kvol", "mirror:2", SIZE);
    let gw = c.gateway("kvol", &[]);
    let (host, port) = gw.addr.rsplit_once(':').expect("HOST:PORT");
    run(Command::new("nbd-client").args(["-N", "kvol", host, port, DEV, "-b", "4096"]));
    let attached = Attached;
    let size = run(Command::new("blockdev").args(["--getsize64", DEV]));
    assert_eq!(
        size.trim(),
        SIZE.to_string(),
        "the kernel sees the volume's size"
    );
    let dir = c.dir.path();
    let src = dir.join("in.bin");
    let data = random_file(&src, 8 << 20, 11);
    let dd = |args: &[&str]| {
        run(Command::new("dd").args(args).arg("status=none"));
    };
    dd(&[
        &format!("if={}", src.display()),
        &format!("of={DEV}"),
        "bs=1M",
        "seek=4",
        "oflag=direct",
        "conv=fsync",
    ]);
    let back = dir.join("back.bin");
    dd(&[
        &format!("if={DEV}"),
        &format!("of={}", back.display()),
        "bs=1M",
        "skip=4",
        "count=8",
        "iflag=direct",
    ]);
    assert!(
        std::fs::read(&back).unwrap() == data,
        "read back through /dev/nbd0"
    );
    drop(attached);
    // The bytes are on the volume itself, not in a cache: the gateway's lease ends on SIGTERM
    // and a fresh mount reads them.
    let mut gw = gw;
    assert!(gw.signal("TERM").success());
    let url = c.url();
    let got = common::runtime().block_on(async move {
        let v = dasmesh_client::Volume::mount(
            &url,
            "kvol",
            dasmesh_client::MountOptions {
                host: "test-check".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let d = v.read(4 << 20, 8 << 20).await.unwrap();
        v.unmount().await.unwrap();
        d
    });
    assert!(got == data, "the volume holds what the kernel wrote");
}
