//! The node on a real block device: a loop device over a sparse file (root only; skipped with a
//! message elsewhere). Sizes come from the kernel's ioctls; data round-trips at 512-byte
//! alignment; WRITE_ZEROES goes through BLKZEROOUT, DISCARD through BLKDISCARD.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Node;
use dasmesh_client::{ConnectOptions, Connection};
use dasmesh_wire::{Capabilities, DeviceId, Rights, Status};
use rand::{Rng, SeedableRng};

/// A loop device, detached on drop (also when the test panics).
struct Loop {
    dev: String,
    _file: tempfile::TempDir,
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn make_loop(size: u64) -> Result<Loop, String> {
    // `id -u` says whether we are root.
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not root".into());
    }
    if !std::path::Path::new("/dev/loop-control").exists() {
        return Err("no /dev/loop-control".into());
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).map_err(|e| e.to_string())?;
    let img: PathBuf = dir.path().join("loop.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(size))
        .map_err(|e| e.to_string())?;
    let out = Command::new("losetup")
        .args(["--find", "--show", "--direct-io=on"])
        .arg(&img)
        .output()
        .map_err(|e| format!("losetup: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Loop {
        dev: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _file: dir,
    })
}

#[test]
fn node_serves_a_loop_device() {
    let lo = match make_loop(64 << 20) {
        Ok(l) => l,
        Err(why) => {
            eprintln!("SKIP node_serves_a_loop_device: needs root and loop devices ({why})");
            return;
        }
    };
    let node = Node::start(&[&format!("device:{}", lo.dev)], &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t = node.token(0, 0, 64 << 20, Rights::ReadWrite, 1);
        let c = Connection::connect(&node.addr, DeviceId(0), &t, &ConnectOptions::default())
            .await
            .unwrap();
        let info = *c.info();
        assert_eq!(
            info.block_size, 512,
            "a loop device has 512-byte logical sectors"
        );
        assert_eq!(info.device_size, 64 << 20);
        assert!(!info.capabilities.has(Capabilities::DISCARD_ZEROES));
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for _ in 0..40 {
            let len = rng.gen_range(1..=64usize) * 512;
            let off = rng.gen_range(0..((64 << 20) - len as u64) / 512) * 512;
            let mut data = vec![0u8; len];
            rng.fill(&mut data[..]);
            c.write(off, &data, false).await.unwrap();
            assert_eq!(
                c.read(off, len).await.unwrap(),
                data,
                "512-aligned round trip at {off}+{len}"
            );
        }
        c.write(1 << 20, &[0xAB; 8192], true).await.unwrap();
        c.flush().await.unwrap();
        c.write_zeroes((1 << 20) + 512, 1024, true).await.unwrap();
        let z = c.read(1 << 20, 2048).await.unwrap();
        assert!(z[..512].iter().all(|b| *b == 0xAB));
        assert!(z[512..1536].iter().all(|b| *b == 0));
        assert!(z[1536..].iter().all(|b| *b == 0xAB));
        c.discard(4 << 20, 1 << 20).await.unwrap();
        let e = c.read(256, 512).await.unwrap_err();
        assert_eq!(e.status(), Some(Status::Misaligned));
        let e = c.read(64 << 20, 512).await.unwrap_err();
        assert_eq!(e.status(), Some(Status::OutOfRange));
    });
}
