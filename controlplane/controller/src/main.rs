//! `dasmesh-controller`: the control plane. gRPC (registry, pool, volumes, leases, usage, plus
//! health and reflection) on `--listen`. Alone: state in redb inside `--data-dir`, tokens
//! signed with the key in `--data-dir/signing.key` (made on first start), or once a key was
//! rotated, with the ring in `--data-dir/signing-ring.json`. With `--etcd`: state, signing key
//! ring and election in etcd, shared by every controller given the same cluster and prefix; one
//! is active, the others are standbys (see `dasmesh_controller::ha`, `dasmesh_controller::keys`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use dasmesh_api::tls::{CertDir, Role};
use dasmesh_api::v1;
use dasmesh_controller::authz::Authorize;
use dasmesh_controller::ha::{self, Roles};
use dasmesh_controller::service::{Controller, Svc};
use dasmesh_controller::state::Command;
use dasmesh_controller::store::etcd::Etcd;
use dasmesh_controller::store::{load_or_make_keys, RedbStore};

/// dasmesh-controller: registers nodes, carves volumes, lends them with signed leases, meters use.
#[derive(Parser)]
#[command(name = "dasmesh-controller", version, about)]
struct Args {
    /// gRPC address (port 0 picks a free one; the chosen address is printed as `listening ADDR`).
    #[arg(long, default_value = "127.0.0.1:7600")]
    listen: SocketAddr,
    /// HTTP address for the operators' console and `/metrics` (docs/console.md; HTTPS with
    /// --cert). Port 0 picks a free one, printed as `http ADDR`. Off by default.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Directory for the state (controller.redb) and the signing key (without --etcd).
    #[arg(long, required_unless_present = "etcd")]
    data_dir: Option<PathBuf>,
    /// etcd client URLs (`http://HOST:PORT[,...]`): keep the state there and run as one of
    /// several controllers, active or standby.
    #[arg(long, env = "DASMESH_ETCD", conflicts_with = "data_dir")]
    etcd: Option<String>,
    /// Key prefix in etcd (one pool per prefix).
    #[arg(long, default_value = "/dasmesh/")]
    etcd_prefix: String,
    /// The URL other controllers and clients are told to use for this one (default:
    /// http://LISTEN-ADDRESS).
    #[arg(long)]
    advertise: Option<String>,
    /// How long an active controller that stops answering etcd stays active: a standby takes
    /// over within about this (whole seconds, at least 1).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    election_ttl: Duration,
    /// How long the usage of an ended lease is kept (for `dasmesh usage`) before it is dropped.
    #[arg(long, default_value = "90days", value_parser = humantime::parse_duration)]
    usage_retention: Duration,
    /// Heartbeat interval asked of nodes; three missed beats mark a node down.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Replace a mirror copy on other nodes once a node holding it has been down (or
    /// deregistered) this long; its new nodes rebuild it from a healthy copy. `0s`: never
    /// on its own (`dasmesh volume replace-copy` still does).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    replace_after: Duration,
    /// The part of every device's capability kept back from promised performance, percent
    /// (0..=90): volumes are admitted against the rest (docs/qos.md).
    #[arg(long, default_value_t = 10)]
    qos_headroom: u64,
    /// This controller's certificate directory (`dasmesh cert issue --role controller`): it
    /// serves mutual TLS only, and every call is checked against its caller's role.
    #[arg(long, env = "DASMESH_CERT", conflicts_with = "insecure_no_auth")]
    cert: Option<PathBuf>,
    /// Serve plaintext gRPC to anyone who can reach the port, with no identities and no
    /// checks: for a lab on a trusted network only.
    #[arg(long)]
    insecure_no_auth: bool,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Args::parse()).await {
        eprintln!("dasmesh-controller: {e:#}");
        std::process::exit(1);
    }
}

async fn run(a: Args) -> anyhow::Result<()> {
    // Nodes are told the interval as a u32 of ms; an hour is already far past any use.
    anyhow::ensure!(
        (Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&a.heartbeat),
        "--heartbeat {:?} must be 1ms..=1h",
        a.heartbeat
    );
    anyhow::ensure!(
        (Duration::from_secs(1)..=Duration::from_secs(60)).contains(&a.election_ttl),
        "--election-ttl {:?} must be 1s..=60s",
        a.election_ttl
    );
    anyhow::ensure!(
        a.qos_headroom <= 90,
        "--qos-headroom {} must be 0..=90 (percent)",
        a.qos_headroom
    );
    dasmesh_controller::state::qos::HEADROOM
        .store(a.qos_headroom, std::sync::atomic::Ordering::Relaxed);
    let heartbeat_ms = a.heartbeat.as_millis() as u64;
    let cert = match (&a.cert, a.insecure_no_auth) {
        (Some(dir), _) => {
            let c = CertDir::load(dir).with_context(|| format!("--cert {}", dir.display()))?;
            anyhow::ensure!(
                c.identity.role == Role::Controller,
                "--cert {}: the certificate is for {}, not a controller",
                dir.display(),
                c.identity
            );
            let data = c
                .data_client_config()
                .with_context(|| format!("--cert {}", dir.display()))?;
            let _ = dasmesh_controller::controller::reap::DATA_TLS.set(data);
            Some(c)
        }
        (None, true) => None,
        (None, false) => anyhow::bail!(
            "no certificate: give --cert DIR (made by `dasmesh cert issue --role controller`) \
             or set DASMESH_CERT; --insecure-no-auth serves anyone without checks (a lab only)"
        ),
    };
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("--listen {}", a.listen))?;
    let addr = listener.local_addr()?;
    let url = a.advertise.clone().unwrap_or_else(|| match &cert {
        Some(_) => format!("https://{addr}"),
        None => format!("http://{addr}"),
    });
    let roles = match (&a.etcd, &a.data_dir) {
        (Some(endpoints), _) => {
            let (endpoints, prefix) = (endpoints.clone(), a.etcd_prefix.clone());
            // https:// etcd: mutual TLS with this controller's certificate (the same CA).
            let tls = match (&cert, endpoints.trim_start().starts_with("https://")) {
                (Some(c), true) => Some(c.client_config()),
                _ => None,
            };
            // Connecting blocks until etcd answers (or says why not).
            let etcd =
                tokio::task::spawn_blocking(move || Etcd::connect_tls(&endpoints, &prefix, tls))
                    .await??;
            // Made now if there is none yet, and checked: each term reads it again.
            ha::key_ring(&etcd).await?;
            let roles = Roles::standby(url.clone(), etcd.clone());
            ha::spawn(
                etcd.clone(),
                Arc::clone(&roles),
                ha::ElectionOptions {
                    ttl: a.election_ttl,
                    poll: Duration::from_millis(250),
                    heartbeat_ms,
                },
            );
            tracing::info!(etcd = %etcd.endpoints, prefix = %etcd.prefix, "state in etcd");
            roles
        }
        (None, Some(dir)) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let keys = load_or_make_keys(dir)?;
            let store = RedbStore::open(dir)?;
            let ctl = Arc::new(Controller::new(Box::new(store), keys, heartbeat_ms)?);
            tracing::info!(data_dir = %dir.display(), "state in redb");
            Roles::active(ctl, url.clone(), format!("redb {}", dir.display()))
        }
        (None, None) => anyhow::bail!("give --data-dir DIR or --etcd URLS"),
    };

    let ticker = Arc::clone(&roles);
    let retention_ms = a.usage_retention.as_millis() as u64;
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_millis(heartbeat_ms));
        let mut forgot = tokio::time::Instant::now() - Duration::from_secs(3600);
        loop {
            t.tick().await;
            // Hourly, and at the start of each term: usage past its retention (in steps of
            // MAX_FORGETS_PER_COMMAND, one per tick, until none is left).
            if let (Some(ctl), true) = (
                ticker.controller(),
                forgot.elapsed() >= Duration::from_secs(3600),
            ) {
                let before_ms = dasmesh_controller::service::now_ms().saturating_sub(retention_ms);
                match ctl.run(Command::ForgetUsage { before_ms }).await {
                    // A bounded number at a time: again at the next tick while any is left.
                    Ok(_) if ctl.read(|s| s.usage_ended_before(before_ms)) => {}
                    Ok(_) => forgot = tokio::time::Instant::now(),
                    Err(e) => tracing::warn!("forgetting old usage: {e}"),
                }
            }
            // Only the active controller ticks; a standby's turn starts with a fresh grace.
            let Some(ctl) = ticker.controller() else {
                continue;
            };
            let now = dasmesh_controller::service::now_ms();
            if let Err(e) = ctl
                .run(Command::Tick {
                    now_ms: now,
                    heartbeat_ms,
                })
                .await
            {
                tracing::warn!("tick: {e}");
            }
        }
    });
    // Discards on the nodes in a task of their own: an unreachable node never delays the
    // ticks that mark nodes down and end expired leases.
    let reaper = Arc::clone(&roles);
    let replace_after_ms = a.replace_after.as_millis() as u64;
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_millis(heartbeat_ms));
        loop {
            t.tick().await;
            if let Some(ctl) = reaper.controller() {
                if replace_after_ms > 0 {
                    ctl.replace_lost(replace_after_ms).await;
                }
                ctl.reap_deleting().await;
            }
        }
    });

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<v1::volumes_server::VolumesServer<Svc>>()
        .await;
    // Both reflection versions: grpcurl before 1.9 and many other clients ask for v1alpha only.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(dasmesh_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let reflection = reflection().build_v1()?;
    let http = match a.http {
        Some(http) => {
            let l = tokio::net::TcpListener::bind(http)
                .await
                .with_context(|| format!("--http {http}"))?;
            let at = l.local_addr()?;
            // With identities, over TLS with this controller's certificate: a client shows one
            // of the cluster's, or signs in with a login link (docs/console.md).
            let tls = match &cert {
                Some(c) => Some(
                    c.http_server_config()
                        .with_context(|| format!("--cert {}", c.dir().display()))?,
                ),
                None => None,
            };
            let incoming = dasmesh_controller::console::listen::Incoming::new(l, tls)?;
            let roles = Arc::clone(&roles);
            tokio::spawn(async move {
                if let Err(e) = dasmesh_controller::console::serve(incoming, roles).await {
                    tracing::warn!("--http: {e}");
                }
            });
            Some(at)
        }
        None => None,
    };
    let svc = Svc(roles);
    println!("listening {addr}");
    // After `listening`, the line callers wait for first.
    if let Some(at) = http {
        println!("http {at}");
    }
    tracing::info!(%addr, %url, "controller ready");
    let mut server = tonic::transport::Server::builder();
    match &cert {
        Some(c) => {
            server = server
                .tls_config(c.server_config())
                .context("the TLS configuration")?;
            tracing::info!(identity = %c.identity, "mutual TLS: every caller shows a certificate of the cluster's CA");
        }
        None => {
            // Said at the start and every hour after, so it is never forgotten in a log.
            tokio::spawn(async {
                let mut t = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    t.tick().await;
                    tracing::warn!("--insecure-no-auth: anyone who reaches this port can do anything (create, delete, mount any volume, register a node)");
                }
            });
        }
    }
    server
        .layer(Authorize)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(v1::node_registry_server::NodeRegistryServer::new(
            svc.clone(),
        ))
        .add_service(v1::pool_server::PoolServer::new(svc.clone()))
        .add_service(v1::volumes_server::VolumesServer::new(svc.clone()))
        .add_service(v1::leases_server::LeasesServer::new(svc.clone()))
        .add_service(v1::usage_server::UsageServer::new(svc.clone()))
        .add_service(v1::control_plane_server::ControlPlaneServer::new(svc))
        .serve_with_incoming_shutdown(
            // No Nagle: a reply's trailers go out in a second small write, which would wait
            // for the client's delayed ACK (about 40 ms a call).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                tracing::info!("shutting down");
            },
        )
        .await?;
    Ok(())
}
