//! The node's registration agent against a fake controller (a NodeRegistry served in the test):
//! a saved node id the controller does not know is replaced by a fresh one; leases the
//! heartbeat answers name as revoked are refused at the handshake and fail the requests of
//! sessions already open, with `Revoked`, while other leases keep working; and the signing keys
//! heartbeat answers name (after a key rotation) are each trusted, and only they.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{req, Raw};
use dasmesh_api::v1;
use dasmesh_api::v1::node_registry_server::{NodeRegistry, NodeRegistryServer};
use dasmesh_testkit::{now_ms, Process};
use dasmesh_wire::{
    Claim, DeviceId, Epoch, NodeId, Op, Rights, SigningKey, Status, Token, VolumeId,
};
use tonic::{Request, Response};

const MIB: u64 = 1 << 20;
/// The id the fake controller assigns to a node registering without one.
const ASSIGNED: u64 = 7;

/// What the fake controller saw and what it answers.
#[derive(Default)]
struct State {
    /// The node ids of every Register, in order.
    registers: Vec<u64>,
    /// Ids it knows (assigned by it).
    known: Vec<u64>,
    /// What every heartbeat answer lists as revoked.
    revoked: Vec<v1::RevokedLease>,
    /// The signing keys every heartbeat answer names (none: as a controller before rotation).
    keys: Vec<Vec<u8>>,
    heartbeats: u64,
    /// Every device report, in order.
    reports: Vec<Vec<v1::DeviceReport>>,
}

#[derive(Clone)]
struct Fake {
    key: Arc<SigningKey>,
    state: Arc<Mutex<State>>,
}

#[tonic::async_trait]
impl NodeRegistry for Fake {
    async fn register(
        &self,
        r: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, tonic::Status> {
        let id = r.into_inner().node_id;
        let mut s = self.state.lock().unwrap();
        s.registers.push(id);
        // As the controller does from now on: an id it never assigned is NOT_FOUND.
        if id != 0 && !s.known.contains(&id) {
            return Err(tonic::Status::not_found(format!("unknown node {id}")));
        }
        let id = if id == 0 { ASSIGNED } else { id };
        s.known.push(id);
        Ok(Response::new(v1::RegisterResponse {
            node_id: id,
            signing_public_key: self.key.verifying_key().to_bytes().to_vec(),
            heartbeat_interval_ms: 100,
            // As a controller before key rotation: the one key alone.
            signing_public_keys: vec![],
        }))
    }

    async fn report_devices(
        &self,
        r: Request<v1::ReportDevicesRequest>,
    ) -> Result<Response<v1::ReportDevicesResponse>, tonic::Status> {
        let devices = r.into_inner().devices;
        self.state.lock().unwrap().reports.push(devices);
        Ok(Response::new(v1::ReportDevicesResponse { node: None }))
    }

    async fn heartbeat(
        &self,
        _r: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, tonic::Status> {
        let mut s = self.state.lock().unwrap();
        s.heartbeats += 1;
        Ok(Response::new(v1::HeartbeatResponse {
            rebuilds: vec![],
            known: true,
            revoked: s.revoked.clone(),
            signing_public_keys: s.keys.clone(),
        }))
    }

    async fn deregister(
        &self,
        _r: Request<v1::DeregisterRequest>,
    ) -> Result<Response<v1::DeregisterResponse>, tonic::Status> {
        Ok(Response::new(v1::DeregisterResponse {}))
    }
}

/// Serves a fake controller on 127.0.0.1 on a thread of its own (it lives until the test
/// process ends); returns its address.
fn serve(fake: Fake) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
                    .unwrap();
            tx.send(incoming.local_addr().unwrap()).unwrap();
            tonic::transport::Server::builder()
                .add_service(NodeRegistryServer::new(fake))
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap()
}

fn fake() -> Fake {
    Fake {
        key: Arc::new(SigningKey::from_bytes(&rand::random::<[u8; 32]>())),
        state: Arc::default(),
    }
}

/// A node registering with the fake at `ctl`, a 4 MiB memory backend, its state in `state`.
fn node(ctl: SocketAddr, state: &std::path::Path) -> Process {
    node_with(ctl, state, &[])
}

/// [`node`] with more flags (more `--backend`s come before the memory one).
fn node_with(ctl: SocketAddr, state: &std::path::Path, extra: &[&str]) -> Process {
    let mut args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--no-pin",
        "--poll",
        "interrupt",
        "--controller",
        &format!("http://{ctl}"),
        "--state-dir",
        &state.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["--backend".to_string(), "memory:4M".to_string()]);
    Process::spawn("dasmesh-node", &args)
}

/// A read-write token for lease `lease` (its nonce) over the whole device.
fn token(key: &SigningKey, lease: u64) -> Token {
    let now = now_ms();
    Claim {
        terms: Default::default(),
        node_id: NodeId(ASSIGNED),
        volume_id: VolumeId(1),
        device_id: DeviceId(0),
        range_offset: 0,
        range_length: 4 * MIB,
        rights: Rights::ReadWrite,
        epoch: Epoch(1),
        issued_at_ms: now,
        expires_at_ms: now + 3_600_000,
        nonce: lease,
    }
    .sign(key)
}

/// Waits (bounded) until `cond` holds.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_id_the_controller_never_assigned_is_replaced() {
    let f = fake();
    let ctl = serve(f.clone());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("node-id"), "42\n").unwrap();
    let n = node(ctl, &state);
    // `listening` is printed after the first registration and heartbeat.
    assert_eq!(f.state.lock().unwrap().registers, [42, 0]);
    assert_eq!(
        std::fs::read_to_string(state.join("node-id"))
            .unwrap()
            .trim(),
        ASSIGNED.to_string()
    );
    // The node serves under its new id: a token for node 7 is accepted.
    let _ = Raw::open(&n.addr, 0, &token(&f.key, 1));
}

#[test]
fn revoked_leases_are_refused_and_others_keep_working() {
    let f = fake();
    let ctl = serve(f.clone());
    let dir = tempfile::tempdir().unwrap();
    let n = node(ctl, &dir.path().join("state"));
    let (a, b) = (token(&f.key, 11), token(&f.key, 12));
    let mut ca = Raw::open(&n.addr, 0, &a);
    let mut cb = Raw::open(&n.addr, 0, &b);
    ca.send(&req(Op::Write, 1, 0, 4096), &[1; 4096]);
    assert_eq!(ca.recv().0.status_enum(), Status::Ok);

    // The controller revokes lease 11 (and names one long expired, which changes nothing).
    {
        let mut s = f.state.lock().unwrap();
        s.revoked = vec![
            v1::RevokedLease {
                lease_id: 11,
                expires_at_ms: now_ms() + 3_600_000,
            },
            v1::RevokedLease {
                lease_id: 12,
                expires_at_ms: now_ms() - 1000,
            },
        ];
    }
    // The open session of lease 11 fails with Revoked once a heartbeat brought the news...
    let mut tag = 10;
    eventually("lease 11 revoked", || {
        tag += 1;
        ca.send(&req(Op::Read, tag, 0, 4096), &[]);
        let (h, _) = ca.recv();
        assert_eq!(h.tag.0, tag);
        match h.status_enum() {
            Status::Ok => false,
            Status::Revoked => true,
            s => panic!("unexpected {s:?}"),
        }
    });
    // ... for every later request, writes included, which change nothing.
    ca.send(&req(Op::Write, 2, 0, 4096), &[2; 4096]);
    assert_eq!(ca.recv().0.status_enum(), Status::Revoked);
    // A new handshake under lease 11 is refused and closed.
    let (mut raw, reply) = Raw::hello(&n.addr, 0, a.as_bytes());
    assert_eq!((reply.status_enum(), reply.version), (Status::Revoked, 1));
    assert!(raw.is_closed());
    // Lease 12 keeps working, on its open session and on a new one.
    cb.send(&req(Op::Read, 3, 0, 4096), &[]);
    let (h, p) = cb.recv();
    assert_eq!(h.status_enum(), Status::Ok);
    assert!(p.iter().all(|x| *x == 1), "the revoked write was applied");
    let mut cb2 = Raw::open(&n.addr, 0, &b);
    cb2.send(&req(Op::Read, 4, 0, 4096), &[]);
    assert_eq!(cb2.recv().0.status_enum(), Status::Ok);
}

/// Issue 18: a key rotation reaches the node in heartbeat answers, which name the new key and
/// the old one: tokens signed with either open sessions, one signed with a key never named is
/// refused. Answers that name no key (a controller before rotation) leave the keys as they are;
/// once the old key is no longer named, its tokens are refused.
#[test]
fn the_keys_heartbeats_name_are_each_trusted() {
    let f = fake();
    let ctl = serve(f.clone());
    let dir = tempfile::tempdir().unwrap();
    let n = node(ctl, &dir.path().join("state"));
    let old = &f.key;
    let new = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let stranger = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let status = |key: &SigningKey| {
        let t = token(key, 1);
        Raw::hello(&n.addr, 0, t.as_bytes()).1.status_enum()
    };
    // Beats that name no key keep the one of the registration.
    let beats = f.state.lock().unwrap().heartbeats;
    eventually("three more heartbeats", || {
        f.state.lock().unwrap().heartbeats >= beats + 3
    });
    assert_eq!(status(old), Status::Ok);
    assert_eq!(status(&new), Status::BadToken);

    // Rotated: the answers name the new key first, then the old one.
    f.state.lock().unwrap().keys = vec![
        new.verifying_key().to_bytes().to_vec(),
        old.verifying_key().to_bytes().to_vec(),
    ];
    eventually("the new key trusted", || status(&new) == Status::Ok);
    let mut s = Raw::open(&n.addr, 0, &token(old, 2));
    s.send(&req(Op::Write, 1, 0, 4096), &[3; 4096]);
    assert_eq!(s.recv().0.status_enum(), Status::Ok);
    let mut s = Raw::open(&n.addr, 0, &token(&new, 3));
    s.send(&req(Op::Read, 2, 0, 4096), &[]);
    let (h, p) = s.recv();
    assert_eq!(h.status_enum(), Status::Ok);
    assert!(
        p.iter().all(|b| *b == 3),
        "read back what the old key's session wrote"
    );
    assert_eq!(status(&stranger), Status::BadToken);

    // The old key's time is over: only the new one is named.
    f.state.lock().unwrap().keys = vec![new.verifying_key().to_bytes().to_vec()];
    eventually("the old key dropped", || status(old) == Status::BadToken);
    assert_eq!(status(&new), Status::Ok);
    assert_eq!(status(&stranger), Status::BadToken);
}

/// A node measures its devices at its first start (before it serves), reports the figures,
/// keeps them for its next starts; the flags stand in for the probe; a memory backend is not
/// probed (unknown: 0).
#[test]
fn devices_are_probed_once_and_their_figures_reported() {
    let f = fake();
    let ctl = serve(f.clone());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = format!("file:{}:16M", dir.path().join("d.img").display());
    let start = |extra: &[&str]| {
        let mut all = vec!["--backend", file.as_str()];
        all.extend_from_slice(extra);
        node_with(ctl, &state, &all)
    };
    let last = || f.state.lock().unwrap().reports.last().cloned().unwrap();
    let mut n = start(&[]);
    let first = last();
    assert!(
        first[0].read_iops > 0 && first[0].write_iops > 0 && first[0].mib_s > 0,
        "{first:?}"
    );
    assert_eq!(
        (first[1].read_iops, first[1].mib_s),
        (0, 0),
        "memory: unknown"
    );
    let kept = std::fs::read_to_string(state.join("capability")).unwrap();
    assert_eq!(kept.lines().count(), 2, "{kept}");
    n.signal("TERM");

    // The next start reports the kept figures, and flags override them.
    let mut n = start(&[]);
    assert_eq!(last()[0], first[0]);
    n.signal("TERM");
    let _n = start(&["--device-iops", "5000", "--device-mib-s", "300"]);
    let now = last();
    assert_eq!(
        (now[0].read_iops, now[0].write_iops, now[0].mib_s),
        (5000, 5000, 300)
    );
    assert_eq!((now[1].read_iops, now[1].mib_s), (5000, 300));
}
