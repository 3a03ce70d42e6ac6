//! The gateway driven by the tools people already have: nbdinfo, nbdcopy, qemu-img and fio's nbd
//! engine, against single, mirror and stripe volumes on a real controller and real nodes.
//! Each tool is probed first; a missing one is skipped with a message (CI installs them all).

mod common;

use std::process::Command;

use common::{have, random_file, run, Cluster, GatewayCluster as _};

const SIZE: u64 = 32 << 20;

#[test]
fn real_nbd_tools_on_every_layout() {
    let c = Cluster::start(3);
    for (name, layout) in [
        ("single", "single"),
        ("mirror", "mirror:2"),
        ("stripe", "stripe:2:65536"),
    ] {
        c.create_now(name, layout, SIZE);
        let mut gw = c.gateway(name, &[]);
        let uri = format!("nbd://{}/", gw.addr);
        let dir = c.dir.path();
        eprintln!("{name}: gateway on {uri}");

        if have("nbdinfo") {
            let j = run(Command::new("nbdinfo").args(["--json", &uri]));
            let compact: String = j.chars().filter(|c| !c.is_whitespace()).collect();
            for want in [
                format!("\"export-size\":{SIZE}"),
                "\"is_read_only\":false".into(),
                "\"can_flush\":true".into(),
                "\"can_fua\":true".into(),
                "\"can_trim\":true".into(),
                "\"can_zero\":true".into(),
                "\"can_multi_conn\":true".into(),
                "\"block_size_minimum\":4096".into(),
            ] {
                assert!(
                    compact.contains(&want),
                    "{name}: nbdinfo lacks {want}:\n{j}"
                );
            }
        }

        if have("nbdcopy") {
            let src = dir.join(format!("{name}-in.bin"));
            let out = dir.join(format!("{name}-out.bin"));
            let data = random_file(&src, SIZE as usize, 1);
            run(Command::new("nbdcopy").arg(&src).arg(&uri));
            run(Command::new("nbdcopy").arg(&uri).arg(&out));
            assert!(
                std::fs::read(&out).unwrap() == data,
                "{name}: nbdcopy out differs from what went in"
            );
        }

        if have("qemu-img") {
            let src = dir.join(format!("{name}-q-in.img"));
            let out = dir.join(format!("{name}-q-out.img"));
            let data = random_file(&src, SIZE as usize, 2);
            let target = format!("nbd://{}", gw.addr);
            run(Command::new("qemu-img")
                .args(["convert", "-n", "-f", "raw", "-O", "raw"])
                .arg(&src)
                .arg(&target));
            run(Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "raw", &target])
                .arg(&out));
            assert!(
                std::fs::read(&out).unwrap() == data,
                "{name}: qemu-img convert back differs"
            );
        }

        if have("fio") {
            let j = run(Command::new("fio").args([
                "--name=verify",
                "--ioengine=nbd",
                &format!("--uri={uri}"),
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=16",
                "--size=16M",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                "--verify_state_save=0",
                "--output-format=json",
            ]));
            let compact: String = j.chars().filter(|c| !c.is_whitespace()).collect();
            assert!(
                compact.contains("\"error\":0"),
                "{name}: fio reported an error:\n{j}"
            );
            assert!(
                !compact.contains("\"total_err\":") || compact.contains("\"total_err\":0"),
                "{name}: fio counted errors:\n{j}"
            );
        }

        // SIGTERM: exit 0 with the lease given back, so the volume mounts read-write again.
        let status = gw.signal("TERM");
        assert!(status.success(), "{name}: gateway exited with {status}");
        c.mount(name)
            .unwrap_or_else(|e| panic!("{name}: lease not ended by the gateway: {e}"));
    }
}
