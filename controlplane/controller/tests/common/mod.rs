//! Shared by the controller's end-to-end tests: a gRPC channel to the real controller, and a
//! mount whose every extent is opened at its node with the lease's token.
#![allow(dead_code)]

use dasmesh_api::v1;
use dasmesh_client::{ConnectOptions, Connection};
use dasmesh_testkit::etcd::EtcdCluster;
use dasmesh_testkit::Process;
use dasmesh_wire::{DeviceId, Token};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use dasmesh_api::tls::{self, CertDir, IssueRequest, Role};
use tonic::transport::{Channel, Endpoint};

pub async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Mounts `volume` for `host` and opens every extent with its token, checking that the node
/// lends exactly that extent. Returns the lease id and each extent with its connection.
pub async fn mount_and_open(
    ch: &tonic::transport::Channel,
    volume: &str,
    host: &str,
    access: v1::Access,
) -> (u64, Vec<(v1::Extent, Connection)>) {
    let mut leases = v1::leases_client::LeasesClient::new(ch.clone());
    let m = leases
        .mount(v1::MountRequest {
            holder_key: Vec::new(),
            volume: volume.into(),
            host_id: host.into(),
            access: access as i32,
            ttl_ms: 60_000,
        })
        .await
        .unwrap_or_else(|e| panic!("mount {volume}: {e}"))
        .into_inner();
    let mut out = Vec::new();
    for me in m.extents {
        let x = me.extent.expect("extent");
        let token = Token::from_text(&me.token).unwrap();
        let c = Connection::connect(
            &x.node_address,
            DeviceId(x.device_id),
            &token,
            &ConnectOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("volume {volume}: {e}"));
        assert_eq!(
            (c.info().lent_offset, c.info().lent_length),
            (x.offset, x.length),
            "{volume}"
        );
        out.push((x, c));
    }
    (m.lease.expect("lease").lease_id, out)
}

/// A controller over `etcd`, heartbeats every 200 ms, a 1 s election lease.
pub fn etcd_controller(etcd: &EtcdCluster, listen: &str) -> Process {
    etcd_controller_with(etcd, listen, &[])
}

/// [`etcd_controller`] with more flags (e.g. `--http`).
pub fn etcd_controller_with(etcd: &EtcdCluster, listen: &str, extra: &[&str]) -> Process {
    let mut args = [
        "--listen",
        listen,
        "--etcd",
        &etcd.endpoints(),
        "--heartbeat",
        "200ms",
        "--election-ttl",
        "1s",
        "--insecure-no-auth",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    Process::spawn("dasmesh-controller", &args)
}

/// Whether the controller at `addr` serves (active), refuses as a standby, or is unreachable.
pub async fn role(addr: &str) -> &'static str {
    let ch = match tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
    {
        Ok(c) => c,
        Err(_) => return "down",
    };
    // A call only the active controller serves (a standby answers reads too): renewing lease
    // 0, which never exists, is refused NOT_FOUND by the active one and changes nothing.
    match v1::leases_client::LeasesClient::new(ch)
        .renew(v1::RenewRequest {
            joined: vec![],
            lease_id: 0,
            ttl_ms: 0,
        })
        .await
    {
        Err(s) if s.code() == tonic::Code::NotFound => "active",
        Err(s) if s.metadata().get("dasmesh-role").is_some() => "standby",
        _ => "down",
    }
}

/// Waits until exactly one of `addrs` is active; returns its index.
pub async fn active_of<S: AsRef<str>>(addrs: &[S], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let mut active = Vec::new();
        for (i, a) in addrs.iter().enumerate() {
            if role(a.as_ref()).await == "active" {
                active.push(i);
            }
        }
        assert!(active.len() <= 1, "two active controllers: {active:?}");
        if let [i] = active[..] {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "no active controller within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A CA, a controller's certificate for 127.0.0.1, and certificates issued on demand.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        tls::init_ca(&dir.path().join("ca"), "test", Duration::from_secs(3600)).unwrap();
        tls::init_ca(
            &dir.path().join("evil-ca"),
            "test",
            Duration::from_secs(3600),
        )
        .unwrap();
        let p = Pki { dir };
        p.issue_with(
            "ca",
            Role::Controller,
            "ctl",
            &["127.0.0.1"],
            SystemTime::now(),
        );
        p
    }

    pub fn issue_with(
        &self,
        ca: &str,
        role: Role,
        name: &str,
        sans: &[&str],
        now: SystemTime,
    ) -> PathBuf {
        let out = self.dir.path().join(format!("{ca}-{role}-{name}"));
        let req = IssueRequest {
            role,
            name: name.into(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            lifetime: Duration::from_secs(3600),
        };
        tls::issue_at(&self.dir.path().join(ca), &req, &out, now).unwrap();
        out
    }

    pub fn issue(&self, role: Role, name: &str) -> PathBuf {
        self.issue_with("ca", role, name, &[], SystemTime::now())
    }

    pub fn controller(&self) -> PathBuf {
        self.dir.path().join("ca-controller-ctl")
    }
}

/// A channel to `addr` over mutual TLS with the certificate in `cert`.
pub async fn tls_channel(addr: &str, cert: &Path) -> Result<Channel, String> {
    let c = CertDir::load(cert).unwrap();
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(c.client_config())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}
