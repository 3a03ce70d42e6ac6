//! Test support: a real controller and nodes (dasmesh-testkit), volumes created through the
//! gRPC API, and the gateway (`dasmesh nbd serve`) as a child process, killed on drop.
#![allow(dead_code)]

pub mod client;

use std::path::Path;
use std::process::Command;

use dasmesh_testkit::Process;

pub use dasmesh_testkit::Cluster;

/// What the gateway tests do with a cluster, outside an async runtime.
pub trait GatewayCluster {
    /// Creates `name` with `layout` (`single`, `mirror:N`, `stripe:N:UNIT`) of `size` bytes.
    fn create_now(&self, name: &str, layout: &str, size: u64);
    /// Starts `dasmesh nbd serve VOLUME --listen 127.0.0.1:0` with `extra` flags.
    fn gateway(&self, volume: &str, extra: &[&str]) -> Process;
    /// Mounts `volume` read-write through the library and unmounts it (to see that the
    /// gateway's lease has ended).
    fn mount(&self, volume: &str) -> Result<(), dasmesh_client::Error>;
}

impl GatewayCluster for Cluster {
    fn create_now(&self, name: &str, layout: &str, size: u64) {
        runtime().block_on(self.create(name, layout, size));
    }

    fn gateway(&self, volume: &str, extra: &[&str]) -> Process {
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

    fn mount(&self, volume: &str) -> Result<(), dasmesh_client::Error> {
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
