//! The `dasmesh` binary as a user runs it: keys, tokens, argument errors, and `io` commands
//! against a real node (dasmesh-testkit starts the workspace's build of `dasmesh-node`).

use std::path::Path;
use std::process::{Command, Output};

fn dasmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dasmesh"))
        .args(args)
        .output()
        .expect("run dasmesh")
}

fn ok(args: &[&str]) -> String {
    let o = dasmesh(args);
    assert!(
        o.status.success(),
        "dasmesh {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let o = dasmesh(args);
    assert!(!o.status.success(), "dasmesh {args:?} should fail");
    String::from_utf8(o.stderr).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn keygen_writes_keys_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    ok(&["keygen", "--out", s(&keys)]);
    let sk = std::fs::read_to_string(keys.join("signing.key")).unwrap();
    let pk = std::fs::read_to_string(keys.join("public.key")).unwrap();
    assert_eq!(sk.trim().len(), 64);
    let vk = dasmesh_wire::verifying_key_from_text(&pk).unwrap();
    let sk = dasmesh_wire::signing_key_from_text(&sk).unwrap();
    assert_eq!(sk.verifying_key(), vk);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(keys.join("signing.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let err = fails(&["keygen", "--out", s(&keys)]);
    assert!(err.contains("refusing to overwrite"), "{err}");
    ok(&["keygen", "--out", s(&keys), "--force"]);
    assert_ne!(
        std::fs::read_to_string(keys.join("public.key")).unwrap(),
        pk
    );
}

#[test]
fn token_mint_verifies_and_shows() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    ok(&["keygen", "--out", s(&keys)]);
    let text = ok(&[
        "token",
        "mint",
        "--key",
        s(&keys),
        "--node",
        "7",
        "--device",
        "2",
        "--range",
        "1M..2G",
        "--rights",
        "ro",
        "--ttl",
        "30m",
        "--epoch",
        "9",
    ]);
    assert_eq!(text.lines().count(), 1);
    let token = dasmesh_wire::Token::from_text(&text).unwrap();
    let vk = dasmesh_wire::verifying_key_from_text(
        &std::fs::read_to_string(keys.join("public.key")).unwrap(),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let c = token
        .verify(&vk, now, dasmesh_wire::NodeId(7), dasmesh_wire::DeviceId(2))
        .unwrap();
    assert_eq!(
        (c.range_offset, c.range_length),
        (1 << 20, (2 << 30) - (1 << 20))
    );
    assert_eq!(c.rights, dasmesh_wire::Rights::ReadOnly);
    assert_eq!(c.epoch, dasmesh_wire::Epoch(9));
    let ttl = c.expires_at_ms - c.issued_at_ms;
    assert_eq!(ttl, 30 * 60 * 1000);

    let tf = dir.path().join("tok");
    std::fs::write(&tf, &text).unwrap();
    let shown = ok(&["token", "show", "--token-file", s(&tf), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["device"], 2);
    assert_eq!(v["node"], 7);
    assert_eq!(v["rights"], "ro");
    assert_eq!(v["range_end"], 2u64 << 30);
}

#[test]
fn bad_arguments_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    ok(&["keygen", "--out", s(&keys)]);
    let mint = |range: &str| {
        fails(&[
            "token",
            "mint",
            "--key",
            s(&keys),
            "--device",
            "0",
            "--range",
            range,
            "--rights",
            "rw",
        ])
    };
    assert!(mint("100..4096").contains("multiples of 512"));
    assert!(mint("0..0").contains("non-empty"));
    assert!(mint("8k..4k").contains("invalid range"));
    assert!(mint("1x..2G").contains("invalid size"));
    let err = fails(&[
        "token",
        "mint",
        "--key",
        "/nonexistent",
        "--device",
        "0",
        "--range",
        "0..1M",
        "--rights",
        "rw",
    ]);
    assert!(err.contains("/nonexistent/signing.key"), "{err}");
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "not a token").unwrap();
    let err = fails(&["token", "show", "--token-file", s(&garbage)]);
    assert!(err.contains("token"), "{err}");
    let err = fails(&[
        "io",
        "read",
        "--node",
        "127.0.0.1:1",
        "--token-file",
        s(&garbage),
        "--device",
        "0",
        "--offset",
        "0",
        "--length",
        "4k",
        "--output",
        "-",
    ]);
    assert!(err.contains("token"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    let base = ["token", "mint", "--key", s(&keys), "--device", "0"];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter().chain(extra).map(|x| x.to_string()).collect()
    };
    let run = |a: Vec<String>| fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let err = run(with(&["--range", "0..1M", "--rights", "rx"]));
    assert!(err.contains("'rx'") && err.contains("rw"), "{err}");
    let err = run(with(&[
        "--range", "0..1M", "--rights", "ro", "--ttl", "forever",
    ]));
    assert!(err.contains("--ttl"), "{err}");
    let err = run(with(&["--rights", "ro"]));
    assert!(err.contains("--range"), "a missing flag is named: {err}");
    // Checked before the controller is asked for anything.
    let err = fails(&["nbd", "serve", "v", "--cpu", "100000"]);
    assert!(
        err.contains("--cpu 100000") && err.contains("not a CPU this process may run on"),
        "{err}"
    );
}

#[test]
fn token_show_reads_standard_input() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    ok(&["keygen", "--out", s(&keys)]);
    let text = ok(&[
        "token",
        "mint",
        "--key",
        s(&keys),
        "--device",
        "3",
        "--range",
        "4k..1M",
        "--rights",
        "rw",
        "--volume",
        "12",
    ]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_dasmesh"))
        .args(["token", "show"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let shown = String::from_utf8(out.stdout).unwrap();
    for want in [
        "device    3",
        "volume    12",
        "range     4k..1M",
        "rights    rw",
        "node      any",
    ] {
        assert!(shown.contains(want), "{want:?} in {shown}");
    }
}

#[test]
fn io_commands_round_trip_through_a_node() {
    // A small max I/O size makes `io write` and `io read` split 3 MiB into 48 requests, more
    // than their pipeline holds at once.
    let node = dasmesh_testkit::Node::start(&["file:{dir}/d.img:16M"], &["--max-io", "64k"]);
    let dir = tempfile::tempdir().unwrap();
    let keys = node.key_dir();
    let tok = dir.path().join("tok");
    let minted = ok(&[
        "token",
        "mint",
        "--key",
        s(&keys),
        "--device",
        "0",
        "--range",
        "0..16M",
        "--rights",
        "rw",
    ]);
    std::fs::write(&tok, minted).unwrap();
    let input = dir.path().join("in.bin");
    let mut data: Vec<u8> = (0..(3 << 20) as u32).map(|i| (i * 7 % 251) as u8).collect();
    data[(1 << 20) - 3..(1 << 20) + 5].copy_from_slice(b"XNEEDLEX");
    std::fs::write(&input, &data).unwrap();
    let t = [
        "--node",
        &node.addr,
        "--token-file",
        s(&tok),
        "--device",
        "0",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        extra
            .iter()
            .chain(t.iter())
            .map(|x| x.to_string())
            .collect()
    };
    let run = |args: Vec<String>| ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(with(&[
        "io",
        "write",
        "--offset",
        "4k",
        "--input",
        s(&input),
        "--json",
    ]));
    assert!(out.contains("\"written\":3145728"), "{out}");
    run(with(&["io", "flush"]));
    let back = dir.path().join("back.bin");
    run(with(&[
        "io",
        "read",
        "--offset",
        "4k",
        "--length",
        "3M",
        "--output",
        s(&back),
    ]));
    assert!(std::fs::read(&back).unwrap() == data);
    let hits = run(with(&[
        "io",
        "search",
        "--offset",
        "0",
        "--length",
        "16M",
        "--pattern",
        "NEEDLE",
    ]));
    assert_eq!(hits.trim(), ((1u64 << 20) - 2 + 4096).to_string());
    let none = run(with(&[
        "io",
        "search",
        "--offset",
        "0",
        "--length",
        "16M",
        "--pattern",
        "ABSENT",
    ]));
    assert_eq!(none.trim(), "");
    // Misaligned input length and a read past the range are refused with a reason.
    let odd = dir.path().join("odd.bin");
    std::fs::write(&odd, [1u8; 1000]).unwrap();
    let args = with(&["io", "write", "--offset", "0", "--input", s(&odd)]);
    let err = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("multiple of the block size"), "{err}");
    let args = with(&[
        "io", "read", "--offset", "16M", "--length", "4k", "--output", "-",
    ]);
    let err = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("OutOfRange"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // The hit limit: the node says more matches follow.
    let many = run(with(&[
        "io",
        "search",
        "--offset",
        "0",
        "--length",
        "16M",
        "--pattern",
        "E",
        "--max-hits",
        "2",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&many).unwrap();
    assert_eq!(v["hits"].as_array().unwrap().len(), 2, "{many}");
    assert_eq!(v["truncated"], true, "{many}");

    // A read-only token reads but cannot write: refused by the node, with the status named.
    let ro = dir.path().join("ro");
    let minted = ok(&[
        "token",
        "mint",
        "--key",
        s(&keys),
        "--device",
        "0",
        "--range",
        "0..16M",
        "--rights",
        "ro",
    ]);
    std::fs::write(&ro, minted).unwrap();
    let ro_args = |extra: &[&str]| -> Vec<String> {
        extra
            .iter()
            .chain(&[
                "--node",
                &node.addr,
                "--token-file",
                s(&ro),
                "--device",
                "0",
            ])
            .map(|x| x.to_string())
            .collect()
    };
    let args = ro_args(&[
        "io", "read", "--offset", "4k", "--length", "4k", "--output", "-",
    ]);
    let read_back = dasmesh(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(read_back.status.success());
    assert_eq!(
        read_back.stdout,
        &data[..4096],
        "a read to stdout is the bytes alone"
    );
    let args = ro_args(&["io", "write", "--offset", "0", "--input", s(&input)]);
    let err = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("ReadOnly"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

/// `args` with `--controller URL` in front.
fn against(url: &str, args: &[&str]) -> Vec<String> {
    ["--controller", url]
        .iter()
        .chain(args)
        .map(|x| x.to_string())
        .collect()
}

#[test]
fn control_plane_commands_against_a_real_controller() {
    use dasmesh_testkit::Process;
    let dir = tempfile::tempdir().unwrap();
    let ctl = Process::controller(&dir.path().join("ctl"), "127.0.0.1:0");
    let _n1 = Process::node(dir.path(), &ctl.addr, "n1");
    let _n2 = Process::node(dir.path(), &ctl.addr, "n2");
    let url = format!("http://{}", ctl.addr);
    let c = |args: &[&str]| against(&url, args);
    let run_ok = |args: Vec<String>| ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let run_fail = |args: Vec<String>| fails(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let nodes: serde_json::Value =
        serde_json::from_str(&run_ok(c(&["--json", "node", "list"]))).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 2);
    assert!(nodes.as_array().unwrap().iter().all(|n| n["state"] == "up"));
    assert!(run_ok(c(&["pool"])).contains("pool: 510M lendable"));
    // One controller alone: active, on the embedded store.
    let ctls: serde_json::Value =
        serde_json::from_str(&run_ok(c(&["--json", "controller", "list"]))).unwrap();
    assert_eq!(ctls["controllers"].as_array().unwrap().len(), 1, "{ctls}");
    assert_eq!(ctls["controllers"][0]["role"], "active");
    assert_eq!(ctls["controllers"][0]["answering"], true);
    assert!(
        ctls["store"].as_str().unwrap().starts_with("redb "),
        "{ctls}"
    );

    let v: serde_json::Value = serde_json::from_str(&run_ok(c(&[
        "volume", "create", "v1", "--size", "16M", "--layout", "mirror:2", "--price", "2.5",
        "--json",
    ])))
    .unwrap();
    assert_eq!(v["layout"], "mirror:2");
    assert_eq!(v["extents"].as_array().unwrap().len(), 2);
    let err = run_fail(c(&[
        "volume", "create", "v2", "--size", "16M", "--layout", "mirror:3",
    ]));
    assert!(err.contains("need 3 nodes"), "{err}");
    let err = run_fail(c(&[
        "volume", "create", "v2", "--size", "16M", "--layout", "raid5",
    ]));
    assert!(err.contains("bad layout"), "{err}");
    assert!(run_ok(c(&["volume", "list"])).contains("v1"));

    let m: serde_json::Value = serde_json::from_str(&run_ok(c(&[
        "--json", "lease", "mount", "v1", "--host", "h1", "--rw", "--ttl", "30m",
    ])))
    .unwrap();
    let lease = m["lease_id"].as_u64().unwrap();
    assert_eq!(m["access"], "rw");
    assert!(m["extents"][0]["token"]
        .as_str()
        .unwrap()
        .starts_with("dmt1."));
    let err = run_fail(c(&["lease", "mount", "v1", "--host", "h2", "--rw"]));
    assert!(
        err.contains("FailedPrecondition") && err.contains("h1"),
        "{err}"
    );
    let err = run_fail(c(&["volume", "delete", "v1"]));
    assert!(
        err.contains("leased") && err.contains(&format!("lease {lease}")),
        "{err}"
    );
    assert!(run_ok(c(&["lease", "list"])).contains("h1"));
    run_ok(c(&["lease", "renew", &lease.to_string(), "--ttl", "10m"]));
    run_ok(c(&["lease", "unmount", &lease.to_string()]));
    let usage: serde_json::Value =
        serde_json::from_str(&run_ok(c(&["--json", "usage", "--host", "h1"]))).unwrap();
    assert_eq!(usage["records"].as_array().unwrap().len(), 1);
    assert_eq!(usage["records"][0]["volume"], "v1");
    run_ok(c(&["volume", "delete", "v1"]));
    let err = run_fail(c(&["volume", "show", "v1"]));
    assert!(err.contains("NotFound"), "{err}");
    let dead = "http://127.0.0.1:1";
    let err = fails(&[
        "--controller",
        dead,
        "--failover-wait",
        "200ms",
        "node",
        "list",
    ]);
    assert!(
        err.contains("cannot reach the controller at http://127.0.0.1:1: "),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // A list, also from the environment, in which a dead controller comes first: each call
    // goes on to the live one.
    let list = format!("{dead},{url}");
    let nodes: serde_json::Value =
        serde_json::from_str(&run_ok(against(&list, &["--json", "node", "list"]))).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 2);
    let o = Command::new(env!("CARGO_BIN_EXE_dasmesh"))
        .env("DASMESH_CONTROLLER", &list)
        .arg("pool")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("pool: 510M lendable"), "{out}");
    let err = fails(&[
        "--controller",
        "http://127.0.0.1:1,http://127.0.0.1:2",
        "--failover-wait",
        "200ms",
        "pool",
    ]);
    assert!(
        err.contains("cannot reach the controller at http://127.0.0.1:1 or http://127.0.0.1:2 ("),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let err = fails(&["--controller", "127.0.0.1:7600", "pool"]);
    assert!(
        err.contains("--controller: bad controller URL \"127.0.0.1:7600\": no scheme"),
        "{err}"
    );
}

/// Runs dasmesh with `args`, its stdout a pipe whose reading end is closed before it writes:
/// (exit status, stderr).
fn into_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::Read as _;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_dasmesh"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dasmesh");
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap(), err)
}

#[test]
fn a_closed_pipe_on_stdout_ends_every_kind_of_command_quietly() {
    use dasmesh_testkit::Process;
    let dir = tempfile::tempdir().unwrap();
    let ctl = Process::controller(&dir.path().join("ctl"), "127.0.0.1:0");
    let _n = Process::node(dir.path(), &ctl.addr, "n1");
    let url = format!("http://{}", ctl.addr);
    let c = |args: &[&str]| against(&url, args);
    ok(&c(&["volume", "create", "v", "--size", "4M"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    let keys = dir.path().join("keys");
    ok(&["keygen", "--out", s(&keys)]);
    let node = dasmesh_testkit::Node::start(&["file:{dir}/d.img:4M"], &[]);
    let tok = dir.path().join("tok");
    let minted = ok(&[
        "token",
        "mint",
        "--key",
        s(&node.key_dir()),
        "--device",
        "0",
        "--range",
        "0..4M",
        "--rights",
        "ro",
    ]);
    std::fs::write(&tok, minted).unwrap();
    let mut runs: Vec<Vec<String>> = [
        &["volume", "list"][..],
        &["--json", "volume", "list"],
        &["pool"],
        &["node", "list"],
        &["lease", "list"],
        &["usage"],
    ]
    .iter()
    .map(|a| c(a))
    .collect();
    runs.push(
        [
            "token",
            "mint",
            "--key",
            s(&keys),
            "--device",
            "0",
            "--range",
            "0..1M",
            "--rights",
            "ro",
        ]
        .map(String::from)
        .to_vec(),
    );
    runs.push(
        [
            "io",
            "read",
            "--node",
            &node.addr,
            "--token-file",
            s(&tok),
            "--device",
            "0",
            "--offset",
            "0",
            "--length",
            "4M",
            "--output",
            "-",
        ]
        .map(String::from)
        .to_vec(),
    );
    for args in runs {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, err) = into_closed_pipe(&a);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "dasmesh {a:?} on a closed pipe: {err}"
        );
        assert_eq!(status.code(), Some(0), "dasmesh {a:?}: {status}: {err}");
    }
}

#[test]
fn an_nbd_budget_below_one_mib_is_refused_before_anything_starts() {
    // No controller listens there: the budget is checked before the mount is tried.
    let err = fails(&[
        "--controller",
        "http://127.0.0.1:9",
        "nbd",
        "serve",
        "v",
        "--max-buffer",
        "100k",
    ]);
    assert!(
        err.contains("--max-buffer") && err.contains("102400") && err.contains("1 MiB"),
        "{err}"
    );
    assert_eq!(err.matches("102400").count(), 1, "said once: {err}");
}

/// `dasmesh controller rotate-key`: the new key and when tokens switch to it; a second rotation
/// before the switch drops the key that never signed; the ring outlives a restart.
#[test]
fn controller_rotate_key_prints_the_new_key_and_when_tokens_switch() {
    use dasmesh_testkit::Process;
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Process::controller(&dir.path().join("ctl"), "127.0.0.1:0");
    let first = std::fs::read_to_string(dir.path().join("ctl/public.key")).unwrap();
    let first = first.trim();
    let url = format!("http://{}", ctl.addr);
    let run_ok = |args: &[&str]| {
        let a = against(&url, args);
        ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = run_ok(&["controller", "rotate-key"]);
    assert!(
        out.contains("new public key") && out.contains("tokens switch") && out.contains(first),
        "{out}"
    );
    let json = |out: String| -> serde_json::Value { serde_json::from_str(&out).unwrap() };
    let r = json(run_ok(&["--json", "controller", "rotate-key"]));
    let second = r["public_key"].as_str().unwrap().to_string();
    assert_eq!(
        r["accepted_keys"],
        serde_json::json!([second, first]),
        "{r}"
    );
    assert!(dir.path().join("ctl/signing-ring.json").exists());
    // Past the switch, and restarted: the ring was read back, the second key now signing.
    let wait = r["switch_at_ms"]
        .as_u64()
        .unwrap()
        .saturating_sub(dasmesh_testkit::now_ms());
    std::thread::sleep(std::time::Duration::from_millis(wait + 100));
    ctl.restart();
    let url = format!("http://{}", ctl.addr);
    let a = against(&url, &["--json", "controller", "rotate-key"]);
    let r = json(ok(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    let third = r["public_key"].as_str().unwrap();
    assert_eq!(
        r["accepted_keys"],
        serde_json::json!([third, second, first]),
        "{r}"
    );
}

#[test]
fn ca_and_certificates_are_made_shown_renewed_and_refused_when_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let out = ok(&["ca", "init", "--out", s(&ca), "--name", "lab"]);
    assert!(out.contains("CA \"lab\" made"), "{out}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ca.join("ca-key.pem")), 0o600);
    // A CA is never replaced: everything it issued would stop working.
    let err = fails(&["ca", "init", "--out", s(&ca)]);
    assert!(err.contains("already holds a CA"), "{err}");

    let web = dir.path().join("web3");
    let out = ok(&[
        "cert",
        "issue",
        "--ca",
        s(&ca),
        "--role",
        "host",
        "--name",
        "web3",
        "--out",
        s(&web),
    ]);
    assert!(out.contains("host \"web3\""), "{out}");
    assert_eq!(mode(&web.join("key.pem")), 0o600);
    assert_eq!(
        std::fs::read(web.join("ca.pem")).unwrap(),
        std::fs::read(ca.join("ca.pem")).unwrap(),
        "the CA's certificate travels with the identity's"
    );
    let ctl = dir.path().join("ctl");
    ok(&[
        "cert",
        "issue",
        "--ca",
        s(&ca),
        "--role",
        "controller",
        "--name",
        "ctl1",
        "--san",
        "127.0.0.1,ctl1.example",
        "--lifetime",
        "30days",
        "--out",
        s(&ctl),
    ]);
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "cert", "show", s(&ctl)])).unwrap();
    assert_eq!(shown["role"], "controller");
    assert_eq!(shown["name"], "ctl1");
    assert_eq!(
        shown["names"],
        serde_json::json!(["ctl1", "127.0.0.1", "ctl1.example"])
    );
    // Renewal: a new key, the same identity and names.
    let key = std::fs::read(ctl.join("key.pem")).unwrap();
    ok(&["cert", "renew", "--ca", s(&ca), "--dir", s(&ctl)]);
    assert_ne!(std::fs::read(ctl.join("key.pem")).unwrap(), key);
    let again: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "cert", "show", s(&ctl)])).unwrap();
    assert_eq!(again["names"], shown["names"]);
    assert_eq!(again["role"], "controller");

    // Bad input: each one line, nothing written.
    let bad = dir.path().join("bad");
    let err = fails(&[
        "cert",
        "issue",
        "--ca",
        s(&ca),
        "--role",
        "admin",
        "--name",
        "x",
        "--out",
        s(&bad),
    ]);
    assert!(err.contains("unknown role \"admin\""), "{err}");
    let err = fails(&[
        "cert",
        "issue",
        "--ca",
        s(&ca),
        "--role",
        "host",
        "--name",
        "a b",
        "--out",
        s(&bad),
    ]);
    assert!(err.contains("bad name \"a b\""), "{err}");
    let err = fails(&[
        "cert",
        "issue",
        "--ca",
        s(&ca),
        "--role",
        "host",
        "--name",
        "x",
        "--lifetime",
        "1s",
        "--out",
        s(&bad),
    ]);
    assert!(err.contains("between a minute and 100 years"), "{err}");
    let err = fails(&[
        "cert",
        "issue",
        "--ca",
        s(&web),
        "--role",
        "host",
        "--name",
        "x",
        "--out",
        s(&bad),
    ]);
    assert!(err.contains("ca-key.pem"), "{err}");
    assert!(!bad.exists(), "nothing written for a refused request");
    // A client with a certificate takes https:// controllers only, and one without http://.
    let err = fails(&[
        "--cert",
        s(&web),
        "--controller",
        "http://127.0.0.1:1",
        "node",
        "list",
    ]);
    assert!(err.contains("use https://HOST:PORT"), "{err}");
    let err = fails(&["--controller", "https://127.0.0.1:1", "node", "list"]);
    assert!(err.contains("https:// needs a certificate"), "{err}");
    let err = fails(&["--cert", s(&bad), "node", "list"]);
    assert!(err.contains("--cert"), "{err}");
}
