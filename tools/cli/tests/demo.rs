//! `dasmesh demo` end to end: it starts the workspace's controller, nodes and benchmark runner
//! itself (next to the `dasmesh` binary: `cargo build --workspace --bins` first). One test in a
//! file of its own, so it never runs alongside the other cluster tests (cargo runs test binaries
//! one after another); it takes about 25 s.

use std::process::Command;

#[test]
fn demo_runs_every_step_and_leaves_nothing_behind() {
    let parent = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dasmesh"))
        .args(["demo", "--dir"])
        .arg(parent.path())
        .output()
        .expect("run dasmesh demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for want in [
        "== 1. a controller and three storage nodes",
        "== 2. the pool",
        "== 3. three volumes",
        "== 4. copy ",
        "== 5. search every volume",
        "== 6. benchmark",
        "== 7. assured performance",
        "== 8. usage and charges",
        "== 9. SIGKILL the node holding the mirror's second copy",
        "== 10. the lost copy is replaced on the node no copy uses",
        "== 11. stop",
        "demo-mirror: verified, all 8389385 bytes identical",
        "demo-stripe: verified, all 8389385 bytes identical",
        "demo-concat: verified, all 8389385 bytes identical",
        "demo-stripe: hits at [327671]",
        "volume:demo-mirror",
        "capped at 2000: held there by its node",
        "terms: promised 1000 IOPS, 0 MiB/s; capped at 2000 IOPS, - MiB/s",
        "total charge",
        "demo-mirror is DEGRADED",
        "copy 1 rebuilt on node",
        "from copy 1's new node alone: identical",
        "controller exited 0",
        "demo complete",
        "console https://127.0.0.1:",
        "/login?code=",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
    // Where etcd is installed the demo ends with the highly available control plane.
    let etcd = Command::new("sh")
        .args(["-c", "command -v etcd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if etcd {
        for want in [
            "== HA. SIGKILL the active controller while the host keeps writing",
            "every one verified; the host's lease lives on",
            "== HA. the killed controller comes back as a standby",
            "none failed",
        ] {
            assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
        }
    } else {
        eprintln!(
            "etcd not installed: the demo's HA step is not checked (scripts/setup.sh installs it)"
        );
    }
    // Exactly the ten numbered headings, in order.
    let headings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("== ") && !l.starts_with("== HA."))
        .collect();
    assert_eq!(headings.len(), 11, "{headings:#?}");
    for (i, h) in headings.iter().enumerate() {
        assert!(h.starts_with(&format!("== {}. ", i + 1)), "{h}");
    }
    // Every process it started is gone, and so is its directory.
    for line in stdout.lines().filter(|l| l.contains("(pid ")) {
        let pid = line.rsplit("(pid ").next().unwrap().trim_end_matches(')');
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "still running: {line}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    demo_keep_serves_the_console_until_ctrl_c();
}

/// `dasmesh demo --keep`: after the steps the pool stays up with its console, signed in with
/// the link it prints, until Ctrl-C (run after the demo above, not beside it: each takes both
/// cores).
fn demo_keep_serves_the_console_until_ctrl_c() {
    use std::io::BufRead as _;
    let parent = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dasmesh"))
        .args(["demo", "--keep", "--no-ha", "--dir"])
        .arg(parent.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run dasmesh demo --keep");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    let mut kept = false;
    let link = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!("the demo ended without keeping the pool up:\n{seen}");
        };
        seen.push_str(&line);
        seen.push('\n');
        kept |= line.contains("--keep: the pool stays up");
        if let (true, Some(url)) = (kept, line.strip_prefix("console ")) {
            break url.to_string();
        }
    };
    // The link signs curl in (a cookie), and the console shows the demo's pool.
    let jar = parent.path().join("cookies");
    let curl = |args: &[&str]| {
        let o = Command::new("curl")
            .args(["-sk", "--max-time", "10", "-b"])
            .arg(&jar)
            .arg("-c")
            .arg(&jar)
            .args(args)
            .output()
            .expect("curl (scripts/setup.sh installs it)");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    curl(&["-o", "/dev/null", &link]);
    let base = link.split("/login").next().unwrap();
    let state = curl(&[&format!("{base}/api/state")]);
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    for line in lines.map_while(Result::ok) {
        seen.push_str(&line);
        seen.push('\n');
    }
    let status = child.wait().unwrap();
    for want in [
        "\"me\":\"operator operator\"",
        "\"name\":\"demo-mirror\"",
        "\"state\":\"up\"",
    ] {
        assert!(
            state.contains(want),
            "{want} missing from the console's view: {state}"
        );
    }
    assert!(status.success(), "demo --keep: {status}\n{seen}");
    assert!(seen.contains("== 11. stop"), "{seen}");
    assert!(seen.contains("demo complete"), "{seen}");
}

#[test]
fn demo_help_shows_its_options_and_missing_binaries_are_named() {
    // --help is enough to see the options; a full second run would double the time.
    let out = Command::new(env!("CARGO_BIN_EXE_dasmesh"))
        .args(["demo", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--keep") && help.contains("--dir") && help.contains("--ha"),
        "{help}"
    );

    // A copy of dasmesh alone in a directory: the demo says what is missing and how to build it.
    let dir = tempfile::tempdir().unwrap();
    let lone = dir.path().join("dasmesh");
    std::fs::copy(env!("CARGO_BIN_EXE_dasmesh"), &lone).unwrap();
    let out = Command::new(&lone).arg("demo").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("not found in") && err.contains("cargo build --release --workspace --bins"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}
