//! Every qualification check on fresh loop devices with 512-byte and 4096-byte sectors, each
//! test on its own device (made and removed by the test). Without root or loop devices every
//! test skips with one line saying why; where the machine allows a check, a skip is a failure.

use std::time::Duration;

use hw_tests::loopdev::LoopDevice;
use hw_tests::rig::Options;
use hw_tests::{env, Check, Outcome, Rig};

/// Small enough to be quick, large enough for every check's regions (alignment needs 12 MiB).
const SIZE: u64 = 32 << 20;

fn run(check: Check, sector: u32, test: &str) {
    let opts = Options {
        // A smoke run of the profile: its figures are not looked at here.
        perf_runtime: Some(Duration::from_millis(200)),
        verify_limit: SIZE,
    };
    let mut rig = match Rig::on_loop(SIZE, sector, opts) {
        Ok(r) => r,
        Err(why) => {
            eprintln!("SKIP {test}: {why}");
            return;
        }
    };
    let r = check.run(&mut rig);
    match r.outcome {
        Outcome::Pass => {}
        Outcome::Skip => {
            // Only io_uring being unavailable may make a check skip on a loop device we made.
            if let Err(why) = env::io_uring() {
                eprintln!("SKIP {test}: {} ({why})", r.summary);
            } else {
                panic!("{test} skipped although io_uring works: {}", r.summary);
            }
        }
        Outcome::Fail => panic!(
            "{test} on {}: {}\n  {}",
            rig.device().display(),
            r.summary,
            r.details.join("\n  ")
        ),
    }
}

macro_rules! check_tests {
    ($($name:ident: $check:expr, $sector:expr;)*) => {$(
        #[test]
        fn $name() {
            run($check, $sector, stringify!($name));
        }
    )*};
}

check_tests! {
    io_uring_512: Check::IoUring, 512;
    geometry_512: Check::Geometry, 512;
    geometry_4k: Check::Geometry, 4096;
    direct_io_512: Check::DirectIo, 512;
    direct_io_4k: Check::DirectIo, 4096;
    alignment_512: Check::Alignment, 512;
    alignment_4k: Check::Alignment, 4096;
    edges_512: Check::Edges, 512;
    edges_4k: Check::Edges, 4096;
    zeroes_512: Check::Zeroes, 512;
    zeroes_4k: Check::Zeroes, 4096;
    flush_crash_512: Check::FlushCrash, 512;
    flush_crash_4k: Check::FlushCrash, 4096;
    verify_512: Check::Verify, 512;
    verify_4k: Check::Verify, 4096;
    end_to_end_512: Check::EndToEnd, 512;
    end_to_end_4k: Check::EndToEnd, 4096;
    perf_profile_4k: Check::Perf, 4096;
}

/// Whether the kernel still has `backing` attached to the loop device `dev`.
fn attached(dev: &std::path::Path, backing: &std::path::Path) -> bool {
    let name = dev.file_name().unwrap().to_str().unwrap();
    std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
        .map(|b| b.trim().trim_end_matches(" (deleted)") == backing.display().to_string())
        .unwrap_or(false)
}

#[test]
fn loop_devices_are_removed_on_drop_and_on_panic() {
    let l = match LoopDevice::create(1 << 20, 512) {
        Ok(l) => l,
        Err(why) => {
            eprintln!("SKIP loop_devices_are_removed_on_drop_and_on_panic: {why}");
            return;
        }
    };
    let backing = l.backing().to_path_buf();
    let dev = l.path().to_path_buf();
    assert!(attached(&dev, &backing) && backing.exists());
    drop(l);
    assert!(
        !attached(&dev, &backing),
        "{} still attached",
        dev.display()
    );
    assert!(!backing.exists(), "{} left behind", backing.display());

    let seen = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(|| {
        let l = LoopDevice::create(1 << 20, 4096).expect("a second loop device");
        *seen.lock().unwrap() = Some((l.path().to_path_buf(), l.backing().to_path_buf()));
        panic!("a check panics while its device is attached");
    });
    assert!(r.is_err());
    let (dev, backing) = seen.lock().unwrap().take().expect("device was made");
    assert!(
        !attached(&dev, &backing),
        "{} still attached after a panic",
        dev.display()
    );
    assert!(
        !backing.exists(),
        "{} left behind after a panic",
        backing.display()
    );
}

#[test]
fn a_rig_survives_its_node_being_reattached_under_it() {
    // The crash cycle moves the rig to a new device path; later checks must follow it.
    let opts = Options {
        perf_runtime: None,
        verify_limit: SIZE,
    };
    let mut rig = match Rig::on_loop(SIZE, 4096, opts) {
        Ok(r) => r,
        Err(why) => {
            eprintln!("SKIP a_rig_survives_its_node_being_reattached_under_it: {why}");
            return;
        }
    };
    for c in [
        Check::FlushCrash,
        Check::FlushCrash,
        Check::Verify,
        Check::Geometry,
    ] {
        let r = c.run(&mut rig);
        if r.outcome == Outcome::Skip && env::io_uring().is_err() {
            eprintln!(
                "SKIP a_rig_survives_its_node_being_reattached_under_it: {}",
                r.summary
            );
            return;
        }
        assert_eq!(r.outcome, Outcome::Pass, "{}: {}", r.check, r.summary);
    }
}
