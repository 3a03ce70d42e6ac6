//! `dasmesh-hwtest` as an operator runs it: it refuses devices that hold data or are in use,
//! says why, and with consent qualifies a device and prints a readable (or JSON) report.

use std::path::Path;
use std::process::{Command, Output};

use hw_tests::env;
use hw_tests::loopdev::LoopDevice;

fn hwtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dasmesh-hwtest"))
        .args(args)
        .output()
        .expect("run dasmesh-hwtest")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn loop_or_skip(test: &str, size: u64, sector: u32) -> Option<LoopDevice> {
    match LoopDevice::create(size, sector) {
        Ok(l) => Some(l),
        Err(why) => {
            eprintln!("SKIP {test}: {why}");
            None
        }
    }
}

fn run_tool(tool: &str, args: &[&str], dev: &Path) -> bool {
    env::tool(tool).is_some_and(|t| {
        Command::new(t)
            .args(args)
            .arg(dev)
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn usage_errors_exit_2_with_the_reason() {
    let o = hwtest(&["--check", "bogus"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("unknown check \"bogus\""), "{}", text(&o));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("plain-file");
    std::fs::write(&f, [0u8; 4096]).unwrap();
    let o = hwtest(&["--device", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a block device"), "{}", text(&o));
}

#[test]
fn a_device_with_a_signature_is_refused_without_destroy_data() {
    let test = "a_device_with_a_signature_is_refused_without_destroy_data";
    let Some(l) = loop_or_skip(test, 16 << 20, 512) else {
        return;
    };
    let dev = l.path().to_str().unwrap().to_string();
    assert!(run_tool("mkswap", &[], l.path()), "mkswap {dev}");
    let o = hwtest(&["--device", &dev, "--no-perf"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains(&format!("refusing {dev}")), "{t}");
    assert!(
        t.contains("TYPE=swap") && t.contains("--destroy-data"),
        "{t}"
    );
    // Nothing was written: the signature is still there.
    let u = hw_tests::device::usage(l.path()).unwrap();
    assert!(
        u.signature.is_some_and(|s| s.contains("swap")),
        "signature gone"
    );

    let o = hwtest(&[
        "--device",
        &dev,
        "--destroy-data",
        "--check",
        "geometry",
        "--check",
        "edges",
        "--json",
    ]);
    if env::io_uring().is_err() {
        eprintln!("SKIP {test} (second half): no io_uring for the node");
        return;
    }
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert_eq!(j["qualified"], true, "{j}");
    assert_eq!(j["devices"][0]["device"], dev.as_str());
    let results = j["devices"][0]["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["check"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["geometry", "edges"]);
    assert!(results.iter().all(|r| r["outcome"] == "pass"), "{j}");
    assert_eq!(j["devices"][0]["kernel"]["logical"], 512);
}

#[test]
fn a_mounted_device_is_refused_even_with_destroy_data() {
    let test = "a_mounted_device_is_refused_even_with_destroy_data";
    if env::tool("mkfs.ext4").is_none() || env::tool("mount").is_none() {
        eprintln!("SKIP {test}: mkfs.ext4 or mount not found");
        return;
    }
    let Some(l) = loop_or_skip(test, 16 << 20, 4096) else {
        return;
    };
    assert!(run_tool("mkfs.ext4", &["-q", "-F"], l.path()), "mkfs.ext4");
    let mnt = tempfile::tempdir().unwrap();
    let mounted = Command::new(env::tool("mount").unwrap())
        .arg(l.path())
        .arg(mnt.path())
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("SKIP {test}: mount refused here (container without mount rights?)");
        return;
    }
    // Unmounted on the way out, also if an assertion fails, before the loop device goes.
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Unmount(mnt.path());
    let dev = l.path().to_str().unwrap();
    let o = hwtest(&["--device", dev, "--destroy-data", "--no-perf"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains(&format!(
            "refusing {dev}: it is mounted on {}",
            mnt.path().display()
        )),
        "{t}"
    );
}
