//! `dasmesh-node`: parse flags, open backends, start the pinned reactors, wait for SIGTERM/SIGINT,
//! shut down cleanly (finish in-flight I/O, flush every backend) and exit 0.

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use anyhow::Context as _;
use clap::Parser as _;
use dasmesh_node::config::Config;

enum Event {
    Signal(i32),
    ReactorExited(usize, std::io::Result<()>),
}

fn main() {
    if let Err(e) = run() {
        eprintln!("dasmesh-node: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let cfg = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    cfg.validate().map_err(anyhow::Error::msg)?;
    // Before any thread exists, so every thread inherits the mask and only the waiter sees them.
    dasmesh_node::sys::block_termination_signals().context("blocking signals")?;
    let shared = Arc::new(dasmesh_node::open_shared(&cfg)?);
    // Before any reactor serves: the probe writes back what it read, where no host may write.
    let caps = if cfg.controller.is_some() {
        capabilities(&cfg, &shared)
    } else {
        Vec::new()
    };
    // What the scheduler divides: the figures above, or without a controller the flags'.
    shared.qos.set_capacity(
        shared
            .backends
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let (iops, mib_s) = match caps.get(i) {
                    Some(c) => (c.read_iops.min(c.write_iops), c.mib_s),
                    None => (cfg.device_iops.unwrap_or(0), cfg.device_mib_s.unwrap_or(0)),
                };
                dasmesh_node::qos::Capacity {
                    iops,
                    bytes_s: mib_s << 20,
                }
            })
            .collect(),
    );
    for b in &shared.backends {
        tracing::info!(device = b.id.0, name = %b.name, size = b.size, block = b.block_size, "backend");
    }
    if shared.trust_key().is_none() && cfg.controller.is_none() {
        tracing::warn!("no --trust-key: every handshake will be refused with NoTrustKey");
    }
    let cert = match &cfg.cert {
        Some(dir) => {
            let c = dasmesh_api::CertDir::load(dir)
                .with_context(|| format!("--cert {}", dir.display()))?;
            anyhow::ensure!(
                c.identity.role == dasmesh_api::Role::Node,
                "--cert {}: the certificate is for {}, not a node",
                dir.display(),
                c.identity
            );
            Some(c)
        }
        None => None,
    };
    // With --tls the port is the TLS terminator's alone, and the reactors take connections
    // from the same-host socket only.
    #[cfg(feature = "fault-injection")]
    if let Some(p) = &cfg.fault_file {
        dasmesh_node::fault::watch(p.clone(), Arc::clone(&shared.faults))
            .with_context(|| format!("--fault-file {}", p.display()))?;
    }
    let (addr, listeners) =
        dasmesh_node::bind_listeners(&cfg.listen, if cfg.tls { 1 } else { cfg.cores })?;
    let (listeners, tls_listener): (Vec<Option<std::net::TcpListener>>, _) = if cfg.tls {
        let mut l = listeners;
        ((0..cfg.cores).map(|_| None).collect(), l.pop())
    } else {
        (listeners.into_iter().map(Some).collect(), None)
    };
    let advertise = cfg.advertise.clone().unwrap_or_else(|| addr.to_string());
    let local = if cfg.no_local_socket {
        None
    } else {
        let l = dasmesh_node::bind_local(&advertise)?;
        match &l {
            Some(_) => tracing::info!(
                "same-host clients: @{}{advertise}",
                dasmesh_wire::LOCAL_SOCKET_PREFIX
            ),
            None => tracing::warn!("address {advertise} too long for a same-host socket name"),
        }
        l
    };
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for (i, tcp) in listeners.into_iter().enumerate() {
        let local = match &local {
            Some(l) => Some(l.try_clone().context("sharing the same-host socket")?),
            None => None,
        };
        let listener = dasmesh_node::Listeners { tcp, local };
        let shared = Arc::clone(&shared);
        let tx = tx.clone();
        let core = (!cfg.no_pin && !cores.is_empty()).then(|| cores[i % cores.len()]);
        handles.push(
            std::thread::Builder::new()
                .name(format!("reactor-{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let r = dasmesh_node::run_reactor(i, shared, listener);
                    let _ = tx.send(Event::ReactorExited(i, r));
                })?,
        );
    }
    let tls = match (tls_listener, &cert) {
        (Some(listener), Some(c)) => {
            let config = c
                .data_server_config()
                .with_context(|| format!("--cert {}", c.dir().display()))?;
            let local_name = dasmesh_wire::local_socket_name(&advertise)
                .context("--tls: the advertised address is too long for a same-host socket")?;
            tracing::info!(%addr, identity = %c.identity, "data plane over mutual TLS");
            Some(dasmesh_node::tls::start(
                dasmesh_node::tls::TlsRelay {
                    listener,
                    config,
                    local_name,
                    threads: cfg.tls_threads,
                },
                Arc::clone(&shared),
            )?)
        }
        _ => None,
    };
    // Each reactor holds its own copy: the socket closes when the last reactor stops.
    drop(local);
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Ok(sig) = dasmesh_node::sys::wait_for_termination() {
                    let _ = tx.send(Event::Signal(sig));
                }
            })?;
    }
    // Register before announcing readiness, so the first host finds the node in the pool.
    let (agent_stop, agent) = match &cfg.controller {
        Some(url) => {
            let (stop_tx, stop_rx) = mpsc::channel();
            let controllers =
                dasmesh_node::agent::controllers(url, cert.as_ref()).context("--controller")?;
            let c = dasmesh_node::agent::AgentConfig {
                controllers,
                advertise: advertise.clone(),
                state_dir: cfg.state_dir.clone(),
                reserve: cfg.reserve,
                failure_domain: cfg.failure_domain.clone(),
                data_tls: cfg.tls,
                data_tls_client: match &cert {
                    Some(c) => Some(
                        c.data_client_config()
                            .with_context(|| format!("--cert {}", c.dir().display()))?,
                    ),
                    None => None,
                },
                capabilities: caps,
                rebuild: dasmesh_node::rebuild::Tuning {
                    depth: cfg.rebuild_depth,
                    mib_s: cfg.rebuild_mib_s,
                },
            };
            let (first, h) = dasmesh_node::agent::start(c, Arc::clone(&shared), stop_rx);
            match first.recv_timeout(std::time::Duration::from_secs(30)) {
                Ok(Ok(id)) => tracing::info!(node_id = id, "registered with {url}"),
                Ok(Err(e)) => tracing::warn!(
                    "not registered yet with {url} ({e}); retrying in the background"
                ),
                Err(_) => tracing::warn!("no answer from {url} yet; retrying in the background"),
            }
            (Some(stop_tx), Some(h))
        }
        None => (None, None),
    };
    // Serving before `listening` is printed, so that whoever waits for it can scrape at once.
    let metrics = match cfg.metrics {
        Some(m) => {
            let l = std::net::TcpListener::bind(m).with_context(|| format!("--metrics {m}"))?;
            let at = l.local_addr()?;
            dasmesh_node::metrics::serve(l, Arc::clone(&shared)).context("--metrics")?;
            Some(at)
        }
        None => None,
    };
    println!("listening {addr}");
    // After `listening`, the line callers wait for first.
    if let Some(at) = metrics {
        println!("metrics {at}");
    }
    std::io::stdout().flush()?;
    let mut failed = false;
    match rx.recv()? {
        Event::Signal(sig) => tracing::info!(signal = sig, "terminating"),
        Event::ReactorExited(i, r) => {
            tracing::error!(reactor = i, "reactor stopped unexpectedly: {r:?}");
            failed = true;
        }
    }
    shared.shutdown.store(true, Ordering::Release);
    for h in handles {
        let _ = h.join();
    }
    if let Some(h) = tls {
        let _ = h.join();
    }
    // Deregister after the last request was answered.
    drop(agent_stop);
    if let Some(h) = agent {
        let _ = h.join();
    }
    while let Ok(ev) = rx.try_recv() {
        if let Event::ReactorExited(i, Err(e)) = ev {
            tracing::error!(reactor = i, "reactor failed: {e}");
            failed = true;
        }
    }
    for b in &shared.backends {
        b.sync().with_context(|| format!("flushing {}", b.name))?;
    }
    tracing::info!("stopped cleanly");
    anyhow::ensure!(!failed, "a reactor failed");
    Ok(())
}

/// What each device can do: the flags' figures, else those kept in --state-dir, else a probe
/// (then kept), before any reactor serves (docs/qos.md).
fn capabilities(
    cfg: &dasmesh_node::config::Config,
    shared: &dasmesh_node::Shared,
) -> Vec<dasmesh_node::probe::Capability> {
    use dasmesh_node::probe::{self, Capability};
    let file = cfg.state_dir.as_ref().map(|d| d.join("capability"));
    let kept = match (&file, cfg.reprobe) {
        (Some(f), false) => probe::load(f),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    let mut measured = false;
    for b in &shared.backends {
        let (start, len) = cfg.reserve.lendable(b.size);
        let mut c = match kept.iter().find(|(id, _)| *id == b.id.0) {
            Some((_, c)) => *c,
            None if cfg.device_iops.is_some() && cfg.device_mib_s.is_some() => {
                Capability::default()
            }
            None => {
                let t = std::time::Instant::now();
                let c = probe::measure(b, start, len).unwrap_or_default();
                measured = true;
                tracing::info!(
                    device = b.id.0,
                    read_iops = c.read_iops,
                    write_iops = c.write_iops,
                    mib_s = c.mib_s,
                    "device probed in {:.1} s",
                    t.elapsed().as_secs_f64()
                );
                c
            }
        };
        if let Some(iops) = cfg.device_iops {
            (c.read_iops, c.write_iops) = (iops, iops);
        }
        if let Some(m) = cfg.device_mib_s {
            c.mib_s = m;
        }
        out.push(c);
    }
    if let (Some(f), true) = (&file, measured) {
        let list: Vec<(u32, Capability)> = shared
            .backends
            .iter()
            .map(|b| b.id.0)
            .zip(out.iter().copied())
            .collect();
        if let Err(e) =
            std::fs::create_dir_all(f.parent().unwrap_or(f)).and_then(|()| probe::save(f, &list))
        {
            tracing::warn!(path = %f.display(), "keeping the device figures: {e}");
        }
    }
    out
}
