//! Test support: a real controller and nodes (dasmesh-testkit), volumes created through the
//! gRPC API, and the gateway (`dasmesh nbd serve`) as a child process, killed on drop.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use dasmesh_api::v1;
use dasmesh_testkit::Process;

/// A controller and `n` nodes (256 MiB file backend each).
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ctl: Process,
    pub nodes: Vec<Process>,
}

impl Cluster {
    pub fn start(n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ctl = Process::controller(&dir.path().join("ctl"), "127.0.0.1:0");
        let nodes = (0..n)
            .map(|i| Process::node(dir.path(), &ctl.addr, &format!("n{i}")))
            .collect();
        Cluster { dir, ctl, nodes }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.ctl.addr)
    }

    /// Creates `name` with `layout` (`single`, `mirror:N`, `stripe:N:UNIT`) of `size` bytes.
    pub fn create(&self, name: &str, layout: &str, size: u64) {
        let (kind, width, unit) = match layout.split(':').collect::<Vec<_>>()[..] {
            ["single"] => (v1::LayoutKind::Single, 0, 0),
            ["stripe", w, u] => (
                v1::LayoutKind::Stripe,
                w.parse().unwrap(),
                u.parse().unwrap(),
            ),
            ["mirror", w] => (v1::LayoutKind::Mirror, w.parse().unwrap(), 0),
            _ => panic!("layout {layout}"),
        };
        let url = self.url();
        runtime().block_on(async move {
            let ch = tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .connect()
                .await
                .unwrap();
            v1::volumes_client::VolumesClient::new(ch)
                .create(v1::CreateVolumeRequest {
                    name: name.into(),
                    size_bytes: size,
                    layout: Some(v1::Layout {
                        kind: kind as i32,
                        width,
                        stripe_unit_bytes: unit,
                    }),
                    requirements: Some(v1::Requirements {
                        price_per_gib_hour: 1.0,
                        ..Default::default()
                    }),
                })
                .await
                .unwrap_or_else(|e| panic!("create {name}: {e}"));
        });
    }

    /// Starts `dasmesh nbd serve VOLUME --listen 127.0.0.1:0` with `extra` flags.
    pub fn gateway(&self, volume: &str, extra: &[&str]) -> Process {
        let mut args: Vec<String> = ["--controller", &self.url(), "nbd", "serve", volume]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !extra.contains(&"--listen") {
            args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Process::spawn("dasmesh", &args)
    }

    /// Mounts `volume` read-write through the library (to read back what the gateway wrote, or
    /// to see that the gateway's lease has ended).
    pub fn mount(&self, volume: &str) -> Result<(), dasmesh_client::Error> {
        let url = self.url();
        runtime().block_on(async move {
            let v = dasmesh_client::Volume::mount(
                &url,
                volume,
                dasmesh_client::MountOptions {
                    host: "test-check".into(),
                    ..Default::default()
                },
            )
            .await?;
            v.unmount().await
        })
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Whether `tool` can be run; prints why a test is skipped when not.
pub fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP part: {tool} not installed (scripts/setup.sh installs it)");
    }
    ok
}

/// Runs a command, panicking with its output if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `len` pseudo-random bytes from `seed`, written to `path`.
pub fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut d = vec![0u8; len];
    rng.fill(&mut d[..]);
    std::fs::write(path, &d).unwrap();
    d
}
