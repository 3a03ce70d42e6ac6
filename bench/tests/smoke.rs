//! The runner's quick smoke run, as CI does it: a node on the memory backend and a local file;
//! the JSON is complete (the bench's own CPU per I/O included), the plot is drawn, and verify
//! mode catches one corrupted block.
//! No timing is asserted.

use std::path::Path;
use std::process::Command;

use dasmesh_client::{ConnectOptions, Connection};
use dasmesh_testkit::Node;
use dasmesh_wire::{DeviceId, Rights};

fn bench(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_dasmesh-bench"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn quick_run_json_plot_and_verify_catch_a_corrupted_block() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let node = Node::start(&["memory:16M"], &[]);
    let token = node.token(0, 0, 16 << 20, Rights::ReadWrite, 1);
    let tok = dir.path().join("tok");
    std::fs::write(&tok, token.to_text()).unwrap();
    let img = dir.path().join("local.img");
    std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
    let target = format!("node:{}", node.addr);
    let (j, svg) = (dir.path().join("out.json"), dir.path().join("out.svg"));
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // Two targets, every figure in the JSON, and the plot.
    let (ok, out, err) = bench(&[
        "--quick",
        "--no-progress",
        "--target",
        &format!("local:{}", s(&img)),
        "--target",
        &target,
        "--token",
        &s(&tok),
        "--rw",
        "randrw",
        "--bs",
        "4k",
        "--iodepth",
        "4",
        "--numjobs",
        "2",
        "--size",
        "4M",
        "--runtime",
        "1s",
        "--json",
        &s(&j),
        "--plot",
        &s(&svg),
        "--cpu-pid",
        &node.pid().to_string(),
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("IOPS") && out.contains(&target), "{out}");
    assert!(out.lines().next().unwrap().ends_with("cpu us/io"), "{out}");
    let v = json(&j);
    assert!(v["git_commit"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(v["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(!v["machine"]["kernel"].as_str().unwrap().is_empty());
    assert_eq!(v["config"]["workload"]["iodepth"], 4);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with(' '))
        .skip(1)
        .collect();
    assert_eq!(rows.len(), results.len(), "{out}");
    for (r, row) in results.iter().zip(rows) {
        for k in [
            "target",
            "rw",
            "bs",
            "iodepth",
            "numjobs",
            "iops",
            "mib_s",
            "ratio_to_baseline",
        ] {
            assert!(!r[k].is_null(), "missing {k} in {r}");
        }
        for k in ["p50", "p90", "p99", "p999", "max"] {
            assert!(r["lat_us"][k].as_f64().unwrap() > 0.0, "lat_us.{k} in {r}");
        }
        assert!(r["iops"].as_f64().unwrap() > 0.0);
        assert_eq!(r["errors"], 0);
        assert_eq!(r["numjobs"], 2);
        // The bench's own CPU: every target costs it something per I/O, and a job can hardly
        // spend a whole second of CPU on one 4k I/O.
        let cpu = r["cpu_us_per_io"].as_f64().unwrap_or(f64::NAN);
        assert!(
            cpu.is_finite() && cpu > 0.0 && cpu < 1e6,
            "cpu_us_per_io in {r}"
        );
        // The table shows the same figure in the last column.
        assert_eq!(
            row.split_whitespace().last(),
            Some(format!("{cpu:.1}").as_str()),
            "{out}"
        );
        // --cpu-pid's CPU (the node's, idle during the local: run) is counted in ticks.
        let pid = r["pid_cpu_us_per_io"].as_f64().unwrap_or(f64::NAN);
        assert!(pid.is_finite() && pid >= 0.0, "pid_cpu_us_per_io in {r}");
    }
    assert_eq!(results[0]["ratio_to_baseline"], 1.0);
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.matches("<polyline").count() == 2);

    // Verify: fill every block, read back clean, corrupt one block, read back: caught.
    let common = [
        "--quick",
        "--no-progress",
        "--target",
        &target,
        "--token",
        &s(&tok),
        "--bs",
        "4k",
        "--iodepth",
        "8",
        "--size",
        "1M",
        "--verify",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        common.iter().chain(extra).map(|x| x.to_string()).collect()
    };
    let run = |args: Vec<String>| bench(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (ok, out, err) = run(with(&["--rw", "write", "--runtime", "500ms"]));
    assert!(ok, "{out}\n{err}");
    let (ok, out, err) = run(with(&[
        "--rw",
        "read",
        "--runtime",
        "500ms",
        "--json",
        &s(&j),
    ]));
    assert!(ok, "clean data failed verify: {out}\n{err}");
    let v = json(&j);
    assert!(v["results"][0]["verify"]["verified"].as_u64().unwrap() > 0);
    assert_eq!(v["results"][0]["verify"]["mismatches"], 0);
    assert_eq!(
        v["results"][0]["verify"]["unwritten"], 0,
        "every block was written"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = Connection::connect(&node.addr, DeviceId(0), &token, &ConnectOptions::default())
            .await
            .unwrap();
        let mut block = c.read(40960, 4096).await.unwrap();
        block[2000] ^= 0x40;
        c.write(40960, &block, true).await.unwrap();
    });
    let (ok, out, _) = run(with(&[
        "--rw",
        "read",
        "--runtime",
        "500ms",
        "--json",
        &s(&j),
    ]));
    assert!(!ok, "a corrupted block went unnoticed: {out}");
    assert!(out.contains("MISMATCHED"), "{out}");
    let v = json(&j);
    assert!(v["results"][0]["verify"]["mismatches"].as_u64().unwrap() >= 1);
    let first = v["results"][0]["verify"]["first_mismatch"]
        .as_str()
        .unwrap();
    assert!(
        first.contains("40960") && first.contains("BadChecksum"),
        "{first}"
    );
}

#[test]
fn paced_runs_never_issue_above_the_rate() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let img = dir.path().join("local.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let j = dir.path().join("out.json");
    let (ok, out, err) = bench(&[
        "--no-progress",
        "--target",
        &format!("local:{}", img.display()),
        "--rw",
        "randread",
        "--iodepth",
        "8",
        "--numjobs",
        "2",
        "--rate-iops",
        "400",
        "--runtime",
        "1s",
        "--ramp",
        "0s",
        "--json",
        j.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    // An upper bound, not a timing claim: pacing issues at most rate x elapsed (+1 per job).
    let iops = json(&j)["results"][0]["iops"].as_f64().unwrap();
    assert!(
        iops > 0.0 && iops <= 400.0 + 2.0,
        "{iops} IOPS with --rate-iops 400"
    );
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let (ok, _, err) = bench(&["--target", "nfs:somewhere"]);
    assert!(!ok && err.contains("unknown target"), "{err}");
    let (ok, _, err) = bench(&["--target", "node:127.0.0.1:1"]);
    assert!(!ok && err.contains("--token"), "{err}");
    let (ok, _, err) = bench(&["--target", "local:/nonexistent/x", "--quick"]);
    assert!(!ok && err.contains("/nonexistent/x"), "{err}");
    let (ok, _, err) = bench(&["--target", "local:/dev/null", "--bs", "3000"]);
    assert!(!ok && err.contains("power of two"), "{err}");
    let (ok, _, err) = bench(&["--target", "volume:v1"]);
    assert!(!ok && err.contains("control plane"), "{err}");
}

/// `volume:NAME` targets: a single and a mirror volume of a real controller and two nodes,
/// mounted through the control plane, verified randrw with two jobs each, and the lease given
/// back afterwards.
#[test]
fn volume_targets_of_any_layout_run_verified() {
    use dasmesh_api::v1;
    use dasmesh_testkit::Process;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ctl = Process::controller(&dir.path().join("ctl"), "127.0.0.1:0");
    let _n: Vec<Process> = (0..2)
        .map(|i| Process::node(dir.path(), &ctl.addr, &format!("n{i}")))
        .collect();
    let url = format!("http://{}", ctl.addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ch = dasmesh_api::Controllers::parse(&url).unwrap();
    for (name, kind, width) in [
        ("one", v1::LayoutKind::Single, 0),
        ("two", v1::LayoutKind::Mirror, 2),
    ] {
        rt.block_on(v1::volumes_client::VolumesClient::new(ch.clone()).create(
            v1::CreateVolumeRequest {
                name: name.into(),
                size_bytes: 8 << 20,
                layout: Some(v1::Layout {
                    kind: kind as i32,
                    width,
                    stripe_unit_bytes: 0,
                }),
                requirements: None,
            },
        ))
        .unwrap();
    }
    let j = dir.path().join("v.json");
    let (ok, out, err) = bench(&[
        "--quick",
        "--no-progress",
        "--controller",
        &url,
        "--target",
        "volume:one",
        "--target",
        "volume:two",
        "--rw",
        "randrw",
        "--verify",
        "--iodepth",
        "8",
        "--numjobs",
        "2",
        "--runtime",
        "1s",
        "--json",
        j.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    let v = json(&j);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        assert!(r["iops"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["verify"]["mismatches"], 0, "{r}");
        assert!(r["verify"]["verified"].as_u64().unwrap() > 0, "{r}");
        let cpu = r["cpu_us_per_io"].as_f64().unwrap_or(f64::NAN);
        assert!(cpu.is_finite() && cpu > 0.0, "cpu_us_per_io in {r}");
    }
    let leases = rt
        .block_on(
            v1::leases_client::LeasesClient::new(ch.clone()).list(v1::ListLeasesRequest::default()),
        )
        .unwrap()
        .into_inner()
        .leases;
    assert!(
        leases.is_empty(),
        "the runner gave its leases back: {leases:?}"
    );

    let (ok, _, err) = bench(&["--quick", "--controller", &url, "--target", "volume:nope"]);
    assert!(!ok && err.contains("nope"), "{err}");
}
