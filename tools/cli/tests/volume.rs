//! `dasmesh volume cp|search|zero` as a user runs them: the real controller and nodes (started by
//! dasmesh-testkit from the workspace build), the `dasmesh` binary, files in a temp dir.

use std::path::Path;
use std::process::{Command, Output};

use dasmesh_testkit::Process;

struct Cluster {
    dir: tempfile::TempDir,
    url: String,
    _ctl: Process,
    _nodes: Vec<Process>,
}

impl Cluster {
    fn start(nodes: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ctl = Process::controller(&dir.path().join("ctl"), "127.0.0.1:0");
        let nodes = (0..nodes)
            .map(|i| Process::node(dir.path(), &ctl.addr, &format!("n{i}")))
            .collect();
        let url = format!("http://{}", ctl.addr);
        let c = Cluster {
            dir,
            url,
            _ctl: ctl,
            _nodes: nodes,
        };
        c.wait_for_nodes(c._nodes.len());
        c
    }

    /// Nodes register a moment after they print their address.
    fn wait_for_nodes(&self, n: usize) {
        for _ in 0..200 {
            let out = self.run(&["--json", "node", "list"]);
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let up = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|n| n["state"] == "up")
                    .count();
                if up >= n {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("{n} nodes did not come up");
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_dasmesh"))
            .args(["--controller", &self.url])
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run dasmesh")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "dasmesh {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Fails with exactly one line on stderr, which is returned.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let err = String::from_utf8(o.stderr).unwrap();
        assert!(!o.status.success(), "dasmesh {args:?} should fail");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        err
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// No lease is left on `volume`.
    fn no_leases(&self, volume: &str) {
        let ls: serde_json::Value =
            serde_json::from_str(&self.ok(&["--json", "lease", "list", "--volume", volume]))
                .unwrap();
        assert_eq!(ls.as_array().unwrap().len(), 0, "leases left: {ls}");
    }
}

fn data(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

fn read(p: &str) -> Vec<u8> {
    std::fs::read(Path::new(p)).unwrap()
}

#[test]
fn cp_round_trips_pads_the_tail_and_refuses_a_file_too_large() {
    let c = Cluster::start(2);
    c.ok(&[
        "volume", "create", "v", "--size", "8M", "--layout", "mirror:2",
    ]);
    // First fill 4 MiB with 0xff, so the zero padding of the next upload is visible.
    std::fs::write(c.path("ones.bin"), vec![0xffu8; 4 << 20]).unwrap();
    c.ok(&["volume", "cp", &c.path("ones.bin"), "v"]);

    // 3 MiB and 1000 bytes: not a multiple of the block size. A relative path: the file exists
    // here, so it is uploaded.
    let len = (3 << 20) + 1000;
    let input = data(len, 1);
    std::fs::write(c.path("in.bin"), &input).unwrap();
    let out: serde_json::Value =
        serde_json::from_str(&c.ok(&["--json", "volume", "cp", "in.bin", "v"])).unwrap();
    assert_eq!(out["bytes"], len as u64, "{out}");
    assert_eq!(out["to"], "volume v", "{out}");
    assert!(out["mib_s"].as_f64().unwrap() > 0.0, "{out}");

    // Out again, the same number of bytes.
    let human = c.ok(&[
        "volume",
        "cp",
        "v",
        &c.path("out.bin"),
        "--length",
        &len.to_string(),
    ]);
    assert!(
        human.starts_with("copied 3.0 MiB (3146728 bytes) from volume v to"),
        "{human}"
    );
    assert!(read(&c.path("out.bin")) == input, "round trip differs");

    // The whole volume: the file, zeroes to the end of its last block, the older 0xff after.
    c.ok(&["volume", "cp", "v", &c.path("all.bin")]);
    let all = read(&c.path("all.bin"));
    assert_eq!(all.len(), 8 << 20);
    let padded = len.next_multiple_of(4096);
    assert!(all[..len] == input[..]);
    assert!(all[len..padded].iter().all(|&b| b == 0), "tail padding");
    assert!(all[padded..4 << 20].iter().all(|&b| b == 0xff));
    assert!(all[4 << 20..].iter().all(|&b| b == 0));

    // A file one block larger than the volume: refused before anything is written.
    std::fs::write(c.path("big.bin"), vec![7u8; (8 << 20) + 4096]).unwrap();
    let err = c.fails(&["volume", "cp", &c.path("big.bin"), "v"]);
    assert!(
        err.contains("larger than volume v") && err.contains("8392704 bytes"),
        "{err}"
    );
    c.ok(&["volume", "cp", "v", &c.path("again.bin"), "--length", "4M"]);
    assert!(read(&c.path("again.bin"))[..len] == input[..]);

    // More than the volume holds, and a --length on an upload.
    let err = c.fails(&["volume", "cp", "v", &c.path("x.bin"), "--length", "9M"]);
    assert!(err.contains("more than volume v holds"), "{err}");
    let err = c.fails(&["volume", "cp", "in.bin", "v", "--length", "1M"]);
    assert!(err.contains("--length only applies to a download"), "{err}");

    // Both arguments local files: which way is not guessed; ./ settles it.
    std::fs::write(c.path("v"), b"a file named like the volume").unwrap();
    let err = c.fails(&["volume", "cp", "v", "out.bin"]);
    assert!(err.contains("ambiguous") && err.contains("./"), "{err}");
    c.ok(&["volume", "cp", "v", "./out.bin", "--length", "4k"]);
    assert_eq!(read(&c.path("out.bin")), input[..4096]);

    c.no_leases("v");
}

#[test]
fn search_finds_planted_patterns_and_zero_clears_the_volume() {
    let c = Cluster::start(2);
    c.ok(&[
        "volume",
        "create",
        "s",
        "--size",
        "8M",
        "--layout",
        "stripe:2:64k",
    ]);
    let mut input = data(4 << 20, 2);
    // One inside a stripe unit, one straddling two units (two nodes), one near the end.
    let at = [1000usize, 3 * 65536 - 5, (4 << 20) - 100];
    for a in at {
        input[a..a + 11].copy_from_slice(b"NEEDLE\x00\x01\x02\xfe!");
    }
    std::fs::write(c.path("in.bin"), &input).unwrap();
    c.ok(&["volume", "cp", "in.bin", "s"]);

    let hits = c.ok(&["volume", "search", "s", "NEEDLE"]);
    let want: Vec<String> = at.iter().map(|a| a.to_string()).collect();
    assert_eq!(hits.lines().collect::<Vec<_>>(), want, "{hits}");

    let v: serde_json::Value = serde_json::from_str(&c.ok(&[
        "--json",
        "volume",
        "search",
        "s",
        "4e 45 45 44 4c 45 00 01 02 fe 21",
        "--hex",
    ]))
    .unwrap();
    assert_eq!(v["hits"], serde_json::json!(at), "{v}");
    assert_eq!(v["truncated"], false);

    // A range that need not be aligned: only matches wholly inside it count.
    let inside = c.ok(&[
        "volume",
        "search",
        "s",
        "NEEDLE",
        "--offset",
        "1001",
        "--length",
        &((4 << 20) - 1001 - 95).to_string(),
    ]);
    assert_eq!(inside.trim(), (3 * 65536 - 5).to_string(), "{inside}");
    let v: serde_json::Value = serde_json::from_str(&c.ok(&[
        "--json",
        "volume",
        "search",
        "s",
        "NEEDLE",
        "--max-hits",
        "2",
    ]))
    .unwrap();
    assert_eq!(v["hits"], serde_json::json!(at[..2]), "{v}");
    assert_eq!(v["truncated"], true);
    let err = c.fails(&["volume", "search", "s", "abc", "--hex"]);
    assert!(err.contains("odd number of hex digits"), "{err}");

    let z = c.ok(&["volume", "zero", "s"]);
    assert!(z.starts_with("zeroed volume s (8M"), "{z}");
    c.ok(&["volume", "cp", "s", "back.bin"]);
    let back = read(&c.path("back.bin"));
    assert_eq!(back.len(), 8 << 20);
    assert!(back.iter().all(|&b| b == 0), "zeroed volume reads zero");
    assert_eq!(c.ok(&["volume", "search", "s", "NEEDLE"]).trim(), "");
    c.no_leases("s");
}

#[test]
fn errors_name_the_cause_in_one_line() {
    let c = Cluster::start(1);
    let err = c.fails(&["volume", "cp", "nope", "out.bin"]);
    assert!(
        err.contains("nope: no such local file, and no volume of that name"),
        "{err}"
    );
    std::fs::write(c.path("in.bin"), [1u8; 4096]).unwrap();
    let err = c.fails(&["volume", "cp", "in.bin", "nope"]);
    assert!(err.contains("unknown volume \"nope\""), "{err}");
    let err = c.fails(&["volume", "search", "nope", "x"]);
    assert!(err.contains("unknown volume \"nope\""), "{err}");
    let err = c.fails(&["volume", "zero", "nope"]);
    assert!(err.contains("unknown volume \"nope\""), "{err}");

    // Leased read-write by another host: the holder is named; a read-only search still works.
    c.ok(&["volume", "create", "held", "--size", "4M"]);
    c.ok(&["lease", "mount", "held", "--host", "other-host", "--rw"]);
    for args in [
        &["volume", "zero", "held"][..],
        &["volume", "cp", "in.bin", "held"][..],
    ] {
        let err = c.fails(args);
        assert!(
            err.contains("cannot mount volume held read-write")
                && err.contains("already has a read-write lease")
                && err.contains("other-host"),
            "{err}"
        );
    }
    assert_eq!(c.ok(&["volume", "search", "held", "x"]).trim(), "");

    let o = Command::new(env!("CARGO_BIN_EXE_dasmesh"))
        .args([
            "--controller",
            "http://127.0.0.1:1",
            "--failover-wait",
            "200ms",
        ])
        .args(["volume", "zero", "v"])
        .output()
        .unwrap();
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(!o.status.success());
    assert!(
        err.contains("cannot reach the controller at http://127.0.0.1:1"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

/// Promised performance and moving copies, as an operator meets them: `pool` shows what each
/// device can do (here the figures the test nodes are given: 100,000 IOPS, 2,000 MiB/s) and what
/// is promised; a promise is admitted within that less the headroom, and a refusal says what is
/// short; `volume replace-copy` refusals name the cause.
#[test]
fn promises_and_copy_moves_are_refused_in_words() {
    let c = Cluster::start(2);
    let pool: serde_json::Value = serde_json::from_str(&c.ok(&["--json", "pool"])).unwrap();
    for d in pool["devices"].as_array().unwrap() {
        assert_eq!(
            (d["read_iops"].as_u64(), d["mib_s"].as_u64()),
            (Some(100_000), Some(2000)),
            "{d}"
        );
    }
    c.ok(&[
        "volume", "create", "fast", "--size", "4M", "--iops", "60000", "--mib-s", "500",
    ]);
    let err = c.fails(&[
        "volume", "create", "greedy", "--size", "4M", "--layout", "mirror:2", "--iops", "60000",
    ]);
    // One device has 30,000 left (90,000 less the 60,000 promised), the other 90,000: a mirror
    // needs two.
    assert!(
        err.contains("among the 1 of 2 devices with 60000 IOPS and 0 MiB/s unpromised"),
        "{err}"
    );
    let err = c.fails(&[
        "volume", "create", "greedy", "--size", "4M", "--iops", "95000",
    ]);
    assert!(
        err.contains("has 90000 IOPS unpromised, 95000 needed"),
        "{err}"
    );
    assert!(c
        .fails(&["volume", "show", "greedy"])
        .contains("unknown volume"));
    let pool = c.ok(&["pool"]);
    assert!(pool.contains("(60000)") && pool.contains("(500)"), "{pool}");

    c.ok(&[
        "volume", "create", "m", "--size", "4M", "--layout", "mirror:2",
    ]);
    let err = c.fails(&["volume", "replace-copy", "m", "--copy", "1"]);
    assert!(
        err.contains("no node outside the nodes of the copies"),
        "{err}"
    );
    let err = c.fails(&["volume", "replace-copy", "m", "--copy", "2"]);
    assert!(err.contains("there is no copy 2"), "{err}");
    let err = c.fails(&["volume", "replace-copy", "fast", "--copy", "0"]);
    assert!(err.contains("not a mirror"), "{err}");
}

#[test]
fn caps_and_weights_reach_the_tokens_and_bad_terms_are_refused_in_words() {
    let c = Cluster::start(1);
    c.ok(&[
        "volume",
        "create",
        "capped",
        "--size",
        "4M",
        "--iops",
        "1000",
        "--max-iops",
        "5000",
        "--max-mib-s",
        "100",
        "--weight",
        "200",
    ]);
    let show = c.ok(&["volume", "show", "capped"]);
    assert!(
        show.contains(
            "terms: promised 1000 IOPS, 0 MiB/s; capped at 5000 IOPS, 100 MiB/s; weight 200"
        ),
        "{show}"
    );
    assert!(show.contains("delivered lately: never leased"), "{show}");
    // The writer's and a reader's tokens carry the same terms: nodes schedule the volume as one.
    let token_terms = |access: &str, host: &str| {
        let m: serde_json::Value = serde_json::from_str(
            &c.ok(&["--json", "lease", "mount", "capped", "--host", host, access]),
        )
        .unwrap();
        let file = c.dir.path().join(format!("token-{host}"));
        std::fs::write(&file, m["extents"][0]["token"].as_str().unwrap()).unwrap();
        let t: serde_json::Value = serde_json::from_str(&c.ok(&[
            "--json",
            "token",
            "show",
            "--token-file",
            file.to_str().unwrap(),
        ]))
        .unwrap();
        t["terms"].clone()
    };
    assert_eq!(
        token_terms("--rw", "writer"),
        serde_json::json!({"min_iops": 1000, "max_iops": 5000, "min_mib_s": 0, "max_mib_s": 100, "weight": 200, "read_cost": 1})
    );
    assert_eq!(
        token_terms("--ro", "reader"),
        serde_json::json!({"min_iops": 1000, "max_iops": 5000, "min_mib_s": 0, "max_mib_s": 100, "weight": 200, "read_cost": 1})
    );
    let usage = c.ok(&["usage", "--volume", "capped"]);
    assert!(
        usage.contains("promised") && usage.contains("1000"),
        "{usage}"
    );

    // Bad terms, each refused in words before anything is placed.
    for (args, why) in [
        (
            vec!["--iops", "1000", "--max-iops", "500"],
            "the cap of 500 IOPS is below the promise of 1000 IOPS",
        ),
        (
            vec!["--max-mib-s", "99999999999"],
            "past what any device may say it does",
        ),
        (vec!["--weight", "256"], "weight 256 is not in 1..=255"),
        // A promise above what any device here can do (100,000 IOPS each, 10% kept back).
        (
            vec!["--iops", "200000"],
            "has 89000 IOPS unpromised, 200000 needed",
        ),
    ] {
        let mut a = vec!["volume", "create", "bad", "--size", "4M"];
        a.extend(args);
        let err = c.fails(&a);
        assert!(err.contains(why), "{a:?}: {err}");
    }
    assert!(c
        .fails(&["volume", "show", "bad"])
        .contains("unknown volume"));
    // Terms a token cannot carry are refused when minting by hand, too.
    let keys = c.dir.path().join("keys");
    c.ok(&["keygen", "--out", keys.to_str().unwrap()]);
    let err = c.fails(&[
        "token",
        "mint",
        "--key",
        keys.to_str().unwrap(),
        "--device",
        "0",
        "--range",
        "0..1M",
        "--rights",
        "ro",
        "--min-iops",
        "10",
        "--max-iops",
        "5",
    ]);
    assert!(
        err.contains("terms promise more IOPS than they cap"),
        "{err}"
    );
}
