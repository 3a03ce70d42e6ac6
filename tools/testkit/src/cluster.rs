//! A controller and storage nodes on 127.0.0.1, and volumes created through the control plane's
//! gRPC API: what every end-to-end test of the host path starts from.

use dasmesh_api::{v1, Controllers, Layout};

use crate::{free_addr, Process};

/// A controller and nodes (256 MiB file backends), each on a fixed address so it can be
/// restarted on it; all killed on drop.
pub struct Cluster {
    /// Their state and files.
    pub dir: tempfile::TempDir,
    /// The controller.
    pub ctl: Process,
    /// The nodes, `n0`, `n1`, ...
    pub nodes: Vec<Process>,
}

/// Whether the node binary was built with fault injection (`--features
/// dasmesh-node/fault-injection`, as `scripts/test.sh` builds it).
pub fn node_has_faults() -> bool {
    std::process::Command::new(crate::bin("dasmesh-node"))
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--fault-file"))
        .unwrap_or(false)
}

/// A layout from its command-line spelling: `single`, `concat`, `stripe:N[:UNIT]`, `mirror:N`
/// (see [`Layout`]); panics on anything else.
pub fn layout(spec: &str) -> v1::Layout {
    spec.parse::<Layout>()
        .unwrap_or_else(|e| panic!("layout {spec:?}: {e}"))
        .into()
}

impl Cluster {
    /// A controller and `n` nodes.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[], &[])
    }

    /// [`Cluster::start`] with more flags for the controller and for every node.
    pub fn start_with(n: usize, ctl_extra: &[&str], node_extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ctl = Process::controller_with(&dir.path().join("ctl"), &free_addr(), ctl_extra);
        let mut c = Cluster {
            dir,
            ctl,
            nodes: Vec::new(),
        };
        for _ in 0..n {
            c.add_node(node_extra);
        }
        c
    }

    /// Starts one more node (`n<i>`, with `extra` flags); returns its index.
    pub fn add_node(&mut self, extra: &[&str]) -> usize {
        let i = self.nodes.len();
        let n = Process::node_with(
            self.dir.path(),
            &self.ctl.addr,
            &format!("n{i}"),
            &free_addr(),
            extra,
        );
        self.nodes.push(n);
        i
    }

    /// [`Cluster::start`] with nodes that inject the device faults of their fault file
    /// ([`Cluster::set_faults`]); `None` when the node was built without fault injection (the
    /// caller then skips, saying so).
    pub fn start_with_faults(n: usize) -> Option<Cluster> {
        if !node_has_faults() {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let ctl = Process::controller(&dir.path().join("ctl"), &free_addr());
        let nodes = (0..n)
            .map(|i| {
                let faults = dir.path().join(format!("n{i}.faults"));
                let faults = faults.display().to_string();
                let extra = ["--fault-file", faults.as_str()];
                Process::node_with(
                    dir.path(),
                    &ctl.addr,
                    &format!("n{i}"),
                    &free_addr(),
                    &extra,
                )
            })
            .collect();
        Some(Cluster { dir, ctl, nodes })
    }

    /// Replaces node `i`'s faults (`DEVICE KIND START..END` lines: dataplane/node/src/fault.rs)
    /// and waits until the node has read them.
    pub fn set_faults(&self, i: usize, text: &str) {
        std::fs::write(self.dir.path().join(format!("n{i}.faults")), text).expect("fault file");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    /// The controller's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.ctl.addr)
    }

    /// What every generated client runs on to reach the controller (connected on first use).
    pub async fn channel(&self) -> Controllers {
        Controllers::parse(&self.url()).expect("the controller's URL")
    }

    /// Creates volume `name` of `size` bytes with `layout` (see [`layout`]), at a price of 2 per
    /// GiB-hour.
    pub async fn create(&self, name: &str, layout: &str, size: u64) -> v1::Volume {
        v1::volumes_client::VolumesClient::new(self.channel().await)
            .create(v1::CreateVolumeRequest {
                name: name.into(),
                size_bytes: size,
                layout: Some(self::layout(layout)),
                requirements: Some(v1::Requirements {
                    price_per_gib_hour: 2.0,
                    ..Default::default()
                }),
            })
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"))
            .into_inner()
    }

    /// Resizes volume `name`.
    pub async fn resize(&self, name: &str, size: u64) -> v1::Volume {
        v1::volumes_client::VolumesClient::new(self.channel().await)
            .resize(v1::ResizeVolumeRequest {
                expect_version: 0,
                name: name.into(),
                size_bytes: size,
            })
            .await
            .unwrap_or_else(|e| panic!("resize {name}: {e}"))
            .into_inner()
    }

    /// Volume `name` as the controller records it.
    pub async fn get(&self, name: &str) -> v1::Volume {
        v1::volumes_client::VolumesClient::new(self.channel().await)
            .get(v1::GetVolumeRequest { name: name.into() })
            .await
            .unwrap_or_else(|e| panic!("get {name}: {e}"))
            .into_inner()
    }

    /// Which of [`Cluster::nodes`] serves `addr`.
    pub fn node_index(&self, addr: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.addr == addr)
            .unwrap_or_else(|| panic!("no node at {addr}"))
    }
}
