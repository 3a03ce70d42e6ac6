//! dasmesh-node: a storage node serving raw block devices over the dasmesh block protocol.
//!
//! One reactor thread per core (`--cores`), each pinned, each with its own io_uring ring,
//! registered buffer arena, fixed-file table and connections (see `docs/node.md`). The
//! listening socket is shared with SO_REUSEPORT so the kernel spreads connections over them.
//! Clients on the same machine reach the node over an abstract Unix socket named after its
//! address ([`bind_local`]), which every reactor accepts on too.
//! `unsafe` lives only in the ring (`reactor`), buffer (`arena`) and syscall (`sys`) modules.

pub mod agent;
pub mod arena;
pub mod backend;
pub mod barrier;
pub mod budget;
pub mod config;
mod conn;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod fence;
pub mod guard;
pub mod metrics;
mod offload;
pub mod probe;
pub mod qos;
mod reactor;
pub mod rebuild;
pub mod revoke;
pub mod session;
pub mod sys;
pub mod tls;
pub mod usage;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use dasmesh_wire::{DeviceId, NodeId, VerifyingKey};

use crate::backend::Backend;
use crate::barrier::WriteLanes;
use crate::config::{Config, PollMode, Reserve};
use crate::fence::FenceTable;
use crate::revoke::Revocations;

/// What every reactor of a node shares (read-mostly).
pub struct Shared {
    /// The backends, indexed by device id.
    pub backends: Vec<Backend>,
    /// Highest epochs seen.
    pub fence: FenceTable,
    /// Leases revoked before their tokens expire (from the controller's heartbeat answers).
    pub revoked: Revocations,
    /// The owner's part of every device, which no token may touch.
    pub reserve: Reserve,
    /// Modifying ops in flight per reactor, which a new session waits for (`barrier.rs`).
    pub writes: WriteLanes,
    /// The keys a token may be signed with, the controller's current one first (from
    /// --trust-key, one key; or from the controller at registration and in every heartbeat
    /// answer, several after a key rotation). Empty until known.
    pub trust_keys: std::sync::RwLock<Vec<VerifyingKey>>,
    /// This node's id (from --node-id, or assigned at registration).
    pub node_id: std::sync::atomic::AtomicU64,
    /// Set to start a clean shutdown.
    pub shutdown: AtomicBool,
    /// Polling mode.
    pub poll: PollMode,
    /// Adaptive spin window.
    pub spin: Duration,
    /// Largest READ/WRITE.
    pub max_io: u32,
    /// Requests in flight per connection.
    pub max_inflight: u32,
    /// Largest SEARCH hit limit.
    pub max_search_hits: u32,
    /// Grace period of a clean shutdown.
    pub shutdown_grace: Duration,
    /// Submit each device I/O at once rather than with the loop's batch.
    pub eager_submit: bool,
    /// Per-lease usage for the heartbeats (collected only when registered with a controller).
    pub usage: usage::UsageTable,
    /// The rebuilds this node runs, for `/metrics` (the agent's own list is its thread's).
    pub rebuilds: std::sync::Mutex<Vec<rebuild::Shown>>,
    /// Whether to collect usage at all.
    pub collect_usage: bool,
    /// Timeouts and per-connection budgets (`budget.rs`).
    pub bounds: budget::Bounds,
    /// The nonces of the holder proofs taken lately, so none opens a second connection
    /// (touched once per handshake with a bound token, never per request).
    pub proofs: std::sync::Mutex<dasmesh_wire::ProofWindow>,
    /// Refuse bearer tokens (`--require-holder`).
    pub require_holder: bool,
    /// Ranges being rebuilt, which host writes mark (`guard.rs`).
    pub guards: guard::Guards,
    /// The per-lease scheduler (`qos.rs`).
    pub qos: qos::Qos,
    /// Each reactor's counts for `/metrics` (`metrics.rs`); none without `--metrics`.
    pub metrics: Option<metrics::Metrics>,
    /// Faults injected into device I/O (`--fault-file`; test builds only).
    #[cfg(feature = "fault-injection")]
    pub faults: Arc<fault::Faults>,
}

impl Shared {
    /// The first trusted key (the controller's current one), if any is known yet.
    pub fn trust_key(&self) -> Option<VerifyingKey> {
        self.trust_keys().first().copied()
    }

    /// Every trusted key, the controller's current one first.
    pub fn trust_keys(&self) -> Vec<VerifyingKey> {
        self.trust_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the trusted keys; says so in the log when they changed.
    pub fn set_trust_keys(&self, keys: Vec<VerifyingKey>) {
        let mut k = self.trust_keys.write().unwrap_or_else(|e| e.into_inner());
        if *k != keys {
            let current = keys
                .first()
                .map(|k| dasmesh_wire::key_to_text(k.as_bytes()));
            tracing::info!(keys = keys.len(), current = ?current, "token-signing keys");
            *k = keys;
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.node_id.load(std::sync::atomic::Ordering::Acquire))
    }
}

/// How many holder-proof nonces a node remembers (about 60 bytes each): enough for over 2,000
/// new connections a second held for the 30 s a proof's clock may be off.
pub const PROOF_NONCES: usize = 65_536;

/// Opens the backends and reads the trust key named by `cfg`.
pub fn open_shared(cfg: &Config) -> anyhow::Result<Shared> {
    let mut backends = Vec::new();
    for (i, spec) in cfg.backends.iter().enumerate() {
        backends.push(Backend::open(DeviceId(i as u32), spec)?);
    }
    let trust_keys = match &cfg.trust_key {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--trust-key {}: {e}", path.display()))?;
            vec![dasmesh_wire::verifying_key_from_text(&text)
                .map_err(|e| anyhow::anyhow!("--trust-key {}: {e}", path.display()))?]
        }
        None => Vec::new(),
    };
    let shared = Shared {
        backends,
        fence: match &cfg.state_dir {
            Some(dir) => FenceTable::persistent(dir.clone())
                .map_err(|e| anyhow::anyhow!("--state-dir {}: {e}", dir.display()))?,
            None => FenceTable::default(),
        },
        revoked: Revocations::default(),
        reserve: cfg.reserve,
        writes: WriteLanes::new(cfg.cores),
        trust_keys: std::sync::RwLock::new(trust_keys),
        node_id: std::sync::atomic::AtomicU64::new(cfg.node().0),
        shutdown: AtomicBool::new(false),
        poll: cfg.poll_mode(),
        spin: cfg.spin,
        max_io: cfg.max_io as u32,
        max_inflight: cfg.max_inflight,
        max_search_hits: cfg.max_search_hits,
        shutdown_grace: cfg.shutdown_grace,
        eager_submit: !cfg.batch_submit,
        usage: usage::UsageTable::default(),
        rebuilds: std::sync::Mutex::default(),
        collect_usage: cfg.controller.is_some(),
        bounds: budget::Bounds {
            handshake_timeout_ms: cfg.handshake_timeout.as_millis() as u64,
            payload_timeout_ms: cfg.payload_timeout.as_millis() as u64,
            send_timeout_ms: cfg.send_timeout.as_millis() as u64,
            slot_budget: cfg.conn_slot_budget,
            send_budget: cfg.conn_send_budget,
            slow_device_ops: cfg.fault_slow_device_ops,
        },
        proofs: std::sync::Mutex::new(dasmesh_wire::ProofWindow::new(PROOF_NONCES)),
        require_holder: cfg.require_holder,
        guards: Default::default(),
        qos: qos::Qos::new(!cfg.no_qos, cfg.qos_period),
        metrics: cfg.metrics.map(|_| metrics::Metrics::new(cfg.cores)),
        #[cfg(feature = "fault-injection")]
        faults: Default::default(),
    };
    // Ranges a previous run was rebuilding: guarded before any host can write to them.
    rebuild::restore_guards(&shared, cfg.state_dir.as_ref());
    Ok(shared)
}

/// Binds one listener per reactor on the same address (SO_REUSEPORT); port 0 picks a free
/// port for the first and the rest share it.
pub fn bind_listeners(addr: &str, n: usize) -> anyhow::Result<(SocketAddr, Vec<TcpListener>)> {
    use socket2::{Domain, Socket, Type};
    let mut target: SocketAddr = addr
        .parse()
        .map_err(|e| anyhow::anyhow!("--listen {addr}: {e}"))?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&target.into())
            .map_err(|e| anyhow::anyhow!("--listen {target}: {e}"))?;
        s.listen(1024)?;
        let l: TcpListener = s.into();
        target = l.local_addr()?;
        out.push(l);
    }
    Ok((target, out))
}

/// Binds the same-host listener for the node reachable at `advertised` (the address hosts are
/// given): the abstract Unix socket [`dasmesh_wire::local_socket_name`] names. `Ok(None)` when the
/// address is too long for a socket name.
pub fn bind_local(advertised: &str) -> anyhow::Result<Option<UnixListener>> {
    use std::os::linux::net::SocketAddrExt;
    let Some(name) = dasmesh_wire::local_socket_name(advertised) else {
        return Ok(None);
    };
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    // A node that has just exited may hold the name a little longer: the kernel releases its
    // ring, and with it the listener an accept was armed on, after the process is gone.
    let deadline = std::time::Instant::now() + LOCAL_BIND_PATIENCE;
    loop {
        match UnixListener::bind_addr(&addr) {
            Ok(l) => return Ok(Some(l)),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => anyhow::bail!(
                "same-host socket @{name}: {e} (another node with this address in this network \
                 namespace? --no-local-socket goes without it)"
            ),
        }
    }
}

/// How long [`bind_local`] waits for a name still held by a node that has just exited.
pub const LOCAL_BIND_PATIENCE: Duration = Duration::from_secs(3);

/// What one reactor accepts connections on.
pub struct Listeners {
    /// Its TCP listener (one per reactor, SO_REUSEPORT); none with `--tls`, where the TLS
    /// terminator holds the port and relays to the same-host socket.
    pub tcp: Option<TcpListener>,
    /// The same-host listener (one socket, shared by every reactor), if enabled.
    pub local: Option<UnixListener>,
}

/// Runs reactor `id` on the current thread until shutdown.
pub fn run_reactor(id: usize, shared: Arc<Shared>, listeners: Listeners) -> std::io::Result<()> {
    sys::tune_allocator();
    reactor::Reactor::new(id, shared, listeners)?.run()
}
