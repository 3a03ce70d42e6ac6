//! Control-plane commands: nodes, pool, volumes, leases, usage. Tables by default, `--json` for
//! scripts; every refusal is one line with the controller's reason.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use dasmesh_api::{controllers, v1, CertDir, ControllerOptions, Controllers, Layout};
use dasmesh_wire::units::{format_amount, format_size, parse_size};
use serde_json::json;

/// Parses a size with units (`4k`, `10G`) for clap.
pub(crate) fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// `dasmesh node ...`.
#[derive(Subcommand)]
pub enum NodeCmd {
    /// Every registered node.
    List,
}

/// `dasmesh controller ...`.
#[derive(Subcommand)]
pub enum ControllerCmd {
    /// Every controller: its role (active or standby), its URL and when it was last heard of.
    List,
    /// Make a fresh token-signing key. Nodes hear of it at once; tokens are signed with it
    /// after three heartbeat intervals, and the key it replaces stays accepted until its tokens
    /// have expired. Prints the new public key and when tokens switch to it.
    RotateKey,
}

/// `dasmesh volume ...`.
#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Carve a volume from the pool.
    Create {
        /// Unique name.
        name: String,
        /// Size, e.g. 10G.
        #[arg(long, value_parser = size_arg)]
        size: u64,
        /// single, concat, stripe:N[:UNIT] or mirror:N.
        #[arg(long, default_value = "single")]
        layout: String,
        /// Promised IOPS: placed only where devices can take it (docs/qos.md).
        #[arg(long = "iops", visible_alias = "min-iops", default_value_t = 0)]
        min_iops: u64,
        /// Promised MiB/s, admitted the same way.
        #[arg(long = "mib-s", visible_alias = "min-mib-s", default_value_t = 0)]
        min_mib_s: u64,
        /// IOPS cap, held by the nodes (0: none).
        #[arg(long, default_value_t = 0)]
        max_iops: u64,
        /// MiB/s cap (0: none).
        #[arg(long, default_value_t = 0)]
        max_mib_s: u64,
        /// Weight in what nobody was promised, against other volumes on the same devices
        /// (1..=255; 0: the default, 100).
        #[arg(long, default_value_t = 0)]
        weight: u32,
        /// Price per GiB-hour.
        #[arg(long, default_value_t = 0.0)]
        price: f64,
        /// Put copies/extents in different failure domains.
        #[arg(long)]
        spread_domains: bool,
    },
    /// Every volume.
    List,
    /// One volume with its extents.
    Show {
        /// Its name.
        name: String,
    },
    /// Grow a volume (online), or shrink one that is not leased.
    Resize {
        /// Its name.
        name: String,
        /// New size.
        #[arg(long, value_parser = size_arg)]
        size: u64,
    },
    /// Delete a volume (refused while leased).
    Delete {
        /// Its name.
        name: String,
    },
    /// Move a mirror copy to other nodes: its new extents are rebuilt by their nodes from a
    /// healthy copy while the volume stays in use, and the old ones are freed. The controller
    /// does this on its own for a copy whose node has been down for --replace-after.
    ReplaceCopy {
        /// The volume.
        name: String,
        /// The copy (as `volume show` numbers them).
        #[arg(long)]
        copy: u32,
        /// The node to put it on (default: wherever fits, on a node no other copy uses).
        #[arg(long)]
        node: Option<u64>,
    },
    /// Host commands that mount the volume: cp, search, zero.
    #[command(flatten)]
    Host(crate::vol::HostCmd),
}

/// `dasmesh lease ...`.
#[derive(Subcommand)]
pub enum LeaseCmd {
    /// Take a lease: prints the mount information with one token per extent.
    Mount {
        /// The volume.
        name: String,
        /// Who holds it.
        #[arg(long)]
        host: String,
        /// Read-write (the default).
        #[arg(long, conflicts_with = "ro")]
        rw: bool,
        /// Read-only.
        #[arg(long)]
        ro: bool,
        /// Lease length.
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Extend a lease.
    Renew {
        /// The lease id.
        id: u64,
        /// New length from now.
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// End a lease.
    Unmount {
        /// The lease id.
        id: u64,
    },
    /// End a lease and fence its tokens (operator).
    Revoke {
        /// The lease id.
        id: u64,
    },
    /// Active leases.
    List {
        /// Only this volume's.
        #[arg(long)]
        volume: Option<String>,
    },
}

/// `dasmesh usage`.
#[derive(Args, Default)]
pub struct UsageArgs {
    /// Only this host.
    #[arg(long)]
    host: Option<String>,
    /// Only this volume.
    #[arg(long)]
    volume: Option<String>,
    /// Only the last DURATION (e.g. 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
}

/// Any control-plane command.
pub enum Ctl {
    /// Controllers.
    Controller(ControllerCmd),
    /// Nodes.
    Node(NodeCmd),
    /// Pool.
    Pool,
    /// Volumes.
    Volume(VolumeCmd),
    /// Leases.
    Lease(LeaseCmd),
    /// Usage.
    Usage(UsageArgs),
    /// A console login link.
    Console,
}

/// Parses `single`, `concat`, `stripe:N[:UNIT]`, `mirror:N` (the forms of [`Layout`]).
pub fn parse_layout(s: &str) -> anyhow::Result<v1::Layout> {
    Ok(s.parse::<Layout>()?.into())
}

fn layout_text(l: &Option<v1::Layout>) -> String {
    l.as_ref()
        .and_then(|l| Layout::try_from(l).ok())
        .map_or_else(|| "?".into(), |l| l.to_string())
}

fn state_name<T: std::fmt::Debug>(v: Result<T, prost::UnknownEnumValue>) -> String {
    v.map(|s| format!("{s:?}").to_lowercase())
        .unwrap_or_else(|_| "?".into())
}

/// A refusal as one line: the gRPC code and the controller's reason; or, when no controller
/// answered, which were tried and why.
pub fn status(e: tonic::Status) -> anyhow::Error {
    if controllers::is_unreachable(&e) || controllers::is_lost(&e) {
        return anyhow::anyhow!("{}", e.message());
    }
    anyhow::anyhow!("controller refused ({:?}): {}", e.code(), e.message())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn volume_json(v: &v1::Volume) -> serde_json::Value {
    json!({
        "volume_id": v.volume_id, "name": v.name, "size_bytes": v.size_bytes, "layout": layout_text(&v.layout),
        "state": state_name(v1::VolumeState::try_from(v.state)), "epoch": v.epoch, "active_leases": v.active_leases,
        "extents": v.extents.iter().map(|e| json!({"node_id": e.node_id, "node_address": e.node_address,
            "device_id": e.device_id, "offset": e.offset, "length": e.length, "copy": e.copy, "index": e.index,
            "stale": e.stale, "rebuilding": e.rebuilding, "takes_writes": e.takes_writes,
            "rebuilt_bytes": e.rebuilt_bytes})).collect::<Vec<_>>(),
        "note": v.note,
        "dirty": v.dirty.iter().map(|d| json!({"copy": d.copy,
            "ranges": d.ranges.iter().map(|r| json!({"offset": r.offset, "length": r.length})).collect::<Vec<_>>()}))
            .collect::<Vec<_>>(),
    })
}

fn mount_json(m: &v1::MountResponse) -> serde_json::Value {
    let l = m.lease.clone().unwrap_or_default();
    json!({
        "lease_id": l.lease_id, "volume": l.volume_name, "host": l.host_id,
        "access": if l.access == v1::Access::ReadWrite as i32 { "rw" } else { "ro" },
        "epoch": l.epoch, "expires_at_ms": l.expires_at_ms, "size_bytes": m.size_bytes, "layout": layout_text(&m.layout),
        "extents": m.extents.iter().map(|me| { let e = me.extent.clone().unwrap_or_default();
            json!({"node_id": e.node_id, "node_address": e.node_address, "device_id": e.device_id, "offset": e.offset,
                   "length": e.length, "copy": e.copy, "index": e.index, "stale": e.stale, "token": me.token}) }).collect::<Vec<_>>(),
    })
}

fn print_mount(m: &v1::MountResponse, json_out: bool) {
    if json_out {
        println!("{}", mount_json(m));
        return;
    }
    let l = m.lease.clone().unwrap_or_default();
    let left = l.expires_at_ms.saturating_sub(now_ms()) / 1000;
    println!(
        "lease {} on {} for {} ({}), epoch {}, expires in {left}s",
        l.lease_id,
        l.volume_name,
        l.host_id,
        if l.access == v1::Access::ReadWrite as i32 {
            "read-write"
        } else {
            "read-only"
        },
        l.epoch
    );
    println!(
        "{:<6} {:<6} {:<22} {:<7} {:>12} {:>10}",
        "copy", "index", "node", "device", "offset", "length"
    );
    for me in &m.extents {
        let e = me.extent.clone().unwrap_or_default();
        // A stale mirror copy missed writes: no reads from it until it is rebuilt.
        println!(
            "{:<6} {:<6} {:<22} {:<7} {:>12} {:>10}{}",
            e.copy,
            e.index,
            e.node_address,
            e.device_id,
            e.offset,
            format_size(e.length),
            if e.stale { " STALE" } else { "" }
        );
    }
    println!("(tokens with --json)");
}

/// Runs a control-plane command against the controllers `ctl`.
pub fn run(ctl: &Controllers, json_out: bool, cmd: Ctl) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(exec(ctl, json_out, cmd))
}

/// The controllers in `list` (`--controller`: one URL or a comma-separated list), reached
/// lazily: each call goes to the active one, and keeps trying the list for up to
/// `failover_wait` while none serves it. A call that hangs gives up after 15 s.
pub fn controllers(
    list: &str,
    failover_wait: Duration,
    cert: Option<&CertDir>,
) -> anyhow::Result<Controllers> {
    Controllers::parse_with(
        list,
        ControllerOptions {
            connect_timeout: Duration::from_secs(5),
            timeout: Some(Duration::from_secs(15)),
            failover_wait,
            tls: cert.map(CertDir::client_config),
        },
    )
    .context("--controller")
}

/// The certificate of this run (`--cert DIR` or `DASMESH_CERT`), read once.
static CERT: std::sync::OnceLock<Option<CertDir>> = std::sync::OnceLock::new();

/// Reads `--cert DIR` (or `DASMESH_CERT`) once; the same for every later call.
pub fn load_cert(flag: Option<&std::path::Path>) -> anyhow::Result<Option<&'static CertDir>> {
    if let Some(c) = CERT.get() {
        return Ok(c.as_ref());
    }
    let c = CertDir::from_flag_or_env(flag).context("--cert")?;
    Ok(CERT.get_or_init(|| c).as_ref())
}

/// The certificate read by [`load_cert`], for the commands that mount volumes.
pub fn cert() -> Option<CertDir> {
    CERT.get().cloned().flatten()
}

/// [`run`] on the caller's runtime (the demo prints exactly what the commands print).
pub async fn exec(ctl: &Controllers, json_out: bool, cmd: Ctl) -> anyhow::Result<()> {
    {
        let ch = ctl.clone();
        match cmd {
            Ctl::Node(NodeCmd::List) => {
                let nodes = v1::pool_client::PoolClient::new(ch)
                    .list_nodes(v1::ListNodesRequest {})
                    .await
                    .map_err(status)?
                    .into_inner()
                    .nodes;
                if json_out {
                    let v: Vec<_> = nodes.iter().map(|n| json!({"node_id": n.node_id, "address": n.address, "state": state_name(v1::NodeState::try_from(n.state)),
                        "version": n.version, "failure_domain": n.failure_domain, "last_heartbeat_ms": n.last_heartbeat_ms,
                        "devices": n.devices.iter().map(|d| json!({"device_id": d.device_id, "path": d.path, "block_size": d.block_size,
                            "size_bytes": d.size_bytes, "lendable_start": d.lendable_start, "lendable_length": d.lendable_length,
                            "free_bytes": d.free_bytes})).collect::<Vec<_>>()})).collect();
                    println!("{}", serde_json::Value::from(v));
                } else {
                    println!(
                        "{:<6} {:<22} {:<6} {:>7} {:>10} {:>10} {:<10}",
                        "id", "address", "state", "devices", "lendable", "free", "domain"
                    );
                    for n in &nodes {
                        let lend: u64 = n.devices.iter().map(|d| d.lendable_length).sum();
                        let free: u64 = n.devices.iter().map(|d| d.free_bytes).sum();
                        println!(
                            "{:<6} {:<22} {:<6} {:>7} {:>10} {:>10} {:<10}",
                            n.node_id,
                            n.address,
                            state_name(v1::NodeState::try_from(n.state)),
                            n.devices.len(),
                            format_size(lend),
                            format_size(free),
                            n.failure_domain
                        );
                    }
                }
            }
            Ctl::Controller(ControllerCmd::List) => {
                let r = v1::control_plane_client::ControlPlaneClient::new(ch)
                    .list_controllers(v1::ListControllersRequest {})
                    .await
                    .map_err(status)?
                    .into_inner();
                let now = now_ms();
                if json_out {
                    let v: Vec<_> = r
                        .controllers
                        .iter()
                        .map(|c| {
                            json!({"url": c.url, "role": c.role,
                        "seen_ms": c.seen_ms, "answering": c.answering})
                        })
                        .collect();
                    println!("{}", json!({"store": r.store, "controllers": v}));
                } else {
                    println!("{:<8} {:<28} {:>10}", "role", "url", "last seen");
                    for c in &r.controllers {
                        let ago = now.saturating_sub(c.seen_ms);
                        println!(
                            "{:<8} {:<28} {:>8.1} s{}",
                            c.role,
                            c.url,
                            ago as f64 / 1000.0,
                            if c.answering { "  (answered)" } else { "" }
                        );
                    }
                    println!("state: {}", r.store);
                }
            }
            Ctl::Console => {
                let r = v1::control_plane_client::ControlPlaneClient::new(ch)
                    .console_login(v1::ConsoleLoginRequest {})
                    .await
                    .map_err(status)?
                    .into_inner();
                if json_out {
                    println!("{}", json!({"url": r.url, "expires_ms": r.expires_ms}));
                } else {
                    println!("{}", r.url);
                    if r.expires_ms > 0 {
                        let left = r.expires_ms.saturating_sub(now_ms()) / 1000;
                        eprintln!(
                            "open it in a browser within {left} s; it works once, and signs that \
                             browser in as this certificate's identity for 12 hours"
                        );
                    }
                }
            }
            Ctl::Controller(ControllerCmd::RotateKey) => {
                let r = v1::control_plane_client::ControlPlaneClient::new(ch)
                    .rotate_signing_key(v1::RotateSigningKeyRequest {})
                    .await
                    .map_err(status)?
                    .into_inner();
                if json_out {
                    println!(
                        "{}",
                        json!({"public_key": r.public_key, "switch_at_ms": r.switch_at_ms,
                            "accepted_keys": r.accepted_keys})
                    );
                } else {
                    let at = std::time::UNIX_EPOCH + Duration::from_millis(r.switch_at_ms);
                    let wait = r.switch_at_ms.saturating_sub(now_ms());
                    println!("new public key  {}", r.public_key);
                    println!(
                        "tokens switch   at {} (in {:.1} s)",
                        humantime::format_rfc3339_millis(at),
                        wait as f64 / 1000.0
                    );
                    println!(
                        "nodes accept    {}",
                        r.accepted_keys.join("\n                ")
                    );
                }
            }
            Ctl::Pool => {
                let p = v1::pool_client::PoolClient::new(ch)
                    .list_devices(v1::ListDevicesRequest {})
                    .await
                    .map_err(status)?
                    .into_inner();
                if json_out {
                    println!(
                        "{}",
                        json!({"total_bytes": p.total_bytes, "free_bytes": p.free_bytes,
                        "devices": p.devices.iter().map(|d| json!({"node_id": d.node_id, "device_id": d.device_id, "path": d.path,
                            "lendable_length": d.lendable_length, "free_bytes": d.free_bytes,
                            "read_iops": d.read_iops, "write_iops": d.write_iops, "mib_s": d.mib_s,
                            "promised_iops": d.promised_iops, "promised_mib_s": d.promised_mib_s})).collect::<Vec<_>>()})
                    );
                } else {
                    println!(
                        "{:<6} {:<7} {:<36} {:>10} {:>10} {:>17} {:>13}",
                        "node",
                        "device",
                        "path",
                        "lendable",
                        "free",
                        "IOPS r/w (prom.)",
                        "MiB/s (prom.)"
                    );
                    for d in &p.devices {
                        // What it can do (0: not known) and what is promised of it.
                        let iops = if d.read_iops == 0 && d.write_iops == 0 {
                            "unknown".to_string()
                        } else {
                            format!("{}/{} ({})", d.read_iops, d.write_iops, d.promised_iops)
                        };
                        let mib = if d.mib_s == 0 {
                            "unknown".to_string()
                        } else {
                            format!("{} ({})", d.mib_s, d.promised_mib_s)
                        };
                        println!(
                            "{:<6} {:<7} {:<36} {:>10} {:>10} {:>17} {:>13}",
                            d.node_id,
                            d.device_id,
                            d.path,
                            format_size(d.lendable_length),
                            format_size(d.free_bytes),
                            iops,
                            mib
                        );
                    }
                    println!(
                        "pool: {} lendable, {} free",
                        format_size(p.total_bytes),
                        format_size(p.free_bytes)
                    );
                }
            }
            Ctl::Volume(c) => {
                let mut vols = v1::volumes_client::VolumesClient::new(ch.clone());
                let show = |v: &v1::Volume| {
                    if json_out {
                        println!("{}", volume_json(v));
                    } else {
                        println!(
                            "{} ({}): {} {}, {}, epoch {}, {} lease(s)",
                            v.name,
                            v.volume_id,
                            format_size(v.size_bytes),
                            layout_text(&v.layout),
                            state_name(v1::VolumeState::try_from(v.state)),
                            v.epoch,
                            v.active_leases
                        );
                        for e in &v.extents {
                            // A replacement its node fills: how far it got.
                            let rebuilding = format!(
                                " REBUILDING {:.0}% ({} of {})",
                                e.rebuilt_bytes as f64 * 100.0 / e.length.max(1) as f64,
                                format_size(e.rebuilt_bytes),
                                format_size(e.length)
                            );
                            println!(
                                "  copy {} index {}: node {} ({}) device {} bytes {}..{}{}",
                                e.copy,
                                e.index,
                                e.node_id,
                                e.node_address,
                                e.device_id,
                                e.offset,
                                e.offset + e.length,
                                match (e.rebuilding, e.stale) {
                                    (true, _) => rebuilding.as_str(),
                                    (false, true) => " STALE",
                                    (false, false) => "",
                                }
                            );
                        }
                        if let Some(t) = terms_text(v.requirements.as_ref()) {
                            println!("  terms: {t}");
                        }
                        if !v.note.is_empty() {
                            println!("  note: {}", v.note);
                        }
                        let stale: std::collections::BTreeSet<u32> = v
                            .extents
                            .iter()
                            .filter(|e| e.stale && !e.rebuilding)
                            .map(|e| e.copy)
                            .collect();
                        for c in stale {
                            match v.dirty.iter().find(|d| d.copy == c) {
                                Some(d) => println!(
                                    "  copy {c}: a rebuild copies {} (written while stale, in {} range(s))",
                                    format_size(d.ranges.iter().map(|r| r.length).sum()),
                                    d.ranges.len()
                                ),
                                None => println!("  copy {c}: a rebuild copies it in full"),
                            }
                        }
                    }
                };
                match c {
                    VolumeCmd::Create {
                        name,
                        size,
                        layout,
                        min_iops,
                        min_mib_s,
                        max_iops,
                        max_mib_s,
                        weight,
                        price,
                        spread_domains,
                    } => {
                        let req = v1::CreateVolumeRequest {
                            name,
                            size_bytes: size,
                            layout: Some(parse_layout(&layout)?),
                            requirements: Some(v1::Requirements {
                                max_iops,
                                max_mib_s,
                                weight,
                                min_iops,
                                min_mib_s,
                                price_per_gib_hour: price,
                                spread_failure_domains: spread_domains,
                            }),
                        };
                        show(&vols.create(req).await.map_err(status)?.into_inner());
                    }
                    VolumeCmd::List => {
                        let vs = vols
                            .list(v1::ListVolumesRequest {})
                            .await
                            .map_err(status)?
                            .into_inner()
                            .volumes;
                        if json_out {
                            println!(
                                "{}",
                                serde_json::Value::from(
                                    vs.iter().map(volume_json).collect::<Vec<_>>()
                                )
                            );
                        } else {
                            println!(
                                "{:<6} {:<20} {:>10} {:<14} {:<12} {:>6} {:>7}",
                                "id", "name", "size", "layout", "state", "epoch", "leases"
                            );
                            for v in &vs {
                                println!(
                                    "{:<6} {:<20} {:>10} {:<14} {:<12} {:>6} {:>7}",
                                    v.volume_id,
                                    v.name,
                                    format_size(v.size_bytes),
                                    layout_text(&v.layout),
                                    state_name(v1::VolumeState::try_from(v.state)),
                                    v.epoch,
                                    v.active_leases
                                );
                            }
                        }
                    }
                    VolumeCmd::Show { name } => {
                        let v = vols
                            .get(v1::GetVolumeRequest { name: name.clone() })
                            .await
                            .map_err(status)?
                            .into_inner();
                        show(&v);
                        if !json_out && terms_text(v.requirements.as_ref()).is_some() {
                            // Promised versus delivered: what the nodes counted for its leases.
                            let u = v1::usage_client::UsageClient::new(ch.clone())
                                .report(v1::UsageRequest {
                                    volume: name,
                                    ..Default::default()
                                })
                                .await
                                .map_err(status)?
                                .into_inner();
                            let live: Vec<_> = u.records.iter().filter(|r| r.active).collect();
                            if live.is_empty() {
                                // Nobody holds it now: what its last lease got.
                                match u.records.iter().max_by_key(|r| r.ended_ms) {
                                    Some(r) => println!(
                                        "  delivered lately: no lease now; its last lease ({}) \
                                         got {:.0} IOPS, {:.1} MiB/s (as its nodes counted them)",
                                        r.lease_id, r.recent_iops, r.recent_mib_s
                                    ),
                                    None => println!("  delivered lately: never leased"),
                                }
                            } else {
                                let (iops, mib_s) = live.iter().fold((0.0, 0.0), |(i, m), r| {
                                    (i + r.recent_iops, m + r.recent_mib_s)
                                });
                                println!(
                                    "  delivered lately: {iops:.0} IOPS, {mib_s:.1} MiB/s \
                                     (as its leases' nodes counted them)"
                                );
                            }
                        }
                    }
                    VolumeCmd::Resize { name, size } => show(
                        &vols
                            .resize(v1::ResizeVolumeRequest {
                                expect_version: 0,
                                name,
                                size_bytes: size,
                            })
                            .await
                            .map_err(status)?
                            .into_inner(),
                    ),
                    VolumeCmd::Delete { name } => {
                        vols.delete(v1::DeleteVolumeRequest {
                            expect_version: 0,
                            name: name.clone(),
                        })
                        .await
                        .map_err(status)?;
                        if json_out {
                            println!("{}", json!({"deleted": name}))
                        } else {
                            println!("deleted {name}")
                        }
                    }
                    VolumeCmd::ReplaceCopy { name, copy, node } => show(
                        &vols
                            .replace_copy(v1::ReplaceCopyRequest {
                                expect_version: 0,
                                name,
                                copy,
                                node_id: node.unwrap_or(0),
                            })
                            .await
                            .map_err(status)?
                            .into_inner(),
                    ),
                    // They mount the volume and do I/O; `main` sends them to `vol`.
                    VolumeCmd::Host(h) => crate::vol::exec(ctl, json_out, h).await?,
                }
            }
            Ctl::Lease(c) => {
                let mut leases = v1::leases_client::LeasesClient::new(ch);
                match c {
                    LeaseCmd::Mount {
                        name,
                        host,
                        rw: _,
                        ro,
                        ttl,
                    } => {
                        let access = if ro {
                            v1::Access::ReadOnly
                        } else {
                            v1::Access::ReadWrite
                        } as i32;
                        let m = leases
                            .mount(v1::MountRequest {
                                holder_key: Vec::new(),
                                volume: name,
                                host_id: host,
                                access,
                                ttl_ms: ttl.as_millis() as u64,
                            })
                            .await
                            .map_err(status)?;
                        print_mount(m.get_ref(), json_out);
                    }
                    LeaseCmd::Renew { id, ttl } => {
                        let m = leases
                            .renew(v1::RenewRequest {
                                joined: vec![],
                                lease_id: id,
                                ttl_ms: ttl.as_millis() as u64,
                            })
                            .await
                            .map_err(status)?;
                        print_mount(m.get_ref(), json_out);
                    }
                    LeaseCmd::Unmount { id } => {
                        leases
                            .unmount(v1::UnmountRequest { lease_id: id })
                            .await
                            .map_err(status)?;
                        if json_out {
                            println!("{}", json!({"unmounted": id}))
                        } else {
                            println!("lease {id} ended")
                        }
                    }
                    LeaseCmd::Revoke { id } => {
                        let r = leases
                            .revoke(v1::RevokeRequest { lease_id: id })
                            .await
                            .map_err(status)?
                            .into_inner();
                        if json_out {
                            println!("{}", json!({"revoked": id, "new_epoch": r.new_epoch}))
                        } else {
                            println!(
                                "lease {id} revoked; the volume's epoch is now {}",
                                r.new_epoch
                            )
                        }
                    }
                    LeaseCmd::List { volume } => {
                        let ls = leases
                            .list(v1::ListLeasesRequest {
                                volume: volume.unwrap_or_default(),
                            })
                            .await
                            .map_err(status)?
                            .into_inner()
                            .leases;
                        if json_out {
                            println!("{}", serde_json::Value::from(ls.iter().map(|l| json!({"lease_id": l.lease_id, "volume": l.volume_name, "host": l.host_id,
                                "access": if l.access == v1::Access::ReadWrite as i32 { "rw" } else { "ro" }, "epoch": l.epoch,
                                "started_ms": l.started_ms, "expires_at_ms": l.expires_at_ms})).collect::<Vec<_>>()));
                        } else {
                            println!(
                                "{:<6} {:<20} {:<16} {:<6} {:>6} {:>10}",
                                "id", "volume", "host", "access", "epoch", "expires in"
                            );
                            for l in &ls {
                                println!(
                                    "{:<6} {:<20} {:<16} {:<6} {:>6} {:>9}s",
                                    l.lease_id,
                                    l.volume_name,
                                    l.host_id,
                                    if l.access == v1::Access::ReadWrite as i32 {
                                        "rw"
                                    } else {
                                        "ro"
                                    },
                                    l.epoch,
                                    l.expires_at_ms.saturating_sub(now_ms()) / 1000
                                );
                            }
                        }
                    }
                }
            }
            Ctl::Usage(a) => {
                let start_ms = a
                    .since
                    .map(|d| now_ms().saturating_sub(d.as_millis() as u64))
                    .unwrap_or(0);
                let r = v1::usage_client::UsageClient::new(ch)
                    .report(v1::UsageRequest {
                        host_id: a.host.unwrap_or_default(),
                        volume: a.volume.unwrap_or_default(),
                        start_ms,
                        end_ms: 0,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                if json_out {
                    println!(
                        "{}",
                        json!({"total_charge": r.total_charge, "records": r.records.iter().map(|u| json!({"host": u.host_id, "volume": u.volume,
                        "lease_id": u.lease_id, "started_ms": u.started_ms, "ended_ms": u.ended_ms, "read_bytes": u.read_bytes,
                        "write_bytes": u.write_bytes, "read_ops": u.read_ops, "write_ops": u.write_ops, "gib_hours": u.gib_hours,
                        "charge": u.charge, "recent_iops": u.recent_iops, "recent_mib_s": u.recent_mib_s,
                        "average_iops": u.average_iops, "promised_iops": u.promised_iops,
                        "promised_mib_s": u.promised_mib_s, "max_iops": u.max_iops,
                        "max_mib_s": u.max_mib_s})).collect::<Vec<_>>()})
                    );
                } else {
                    println!(
                        "{:<16} {:<20} {:>6} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9}",
                        "host",
                        "volume",
                        "lease",
                        "read",
                        "written",
                        "GiB-h",
                        "charge",
                        "IOPS",
                        "avg IOPS",
                        "promised"
                    );
                    for u in &r.records {
                        // The service level: what it got lately and on average, against
                        // what its volume is promised.
                        println!(
                            "{:<16} {:<20} {:>6} {:>10} {:>10} {:>10.6} {:>10.4} {:>9.0} {:>9.0} {:>9}",
                            u.host_id,
                            u.volume,
                            u.lease_id,
                            format_amount(u.read_bytes),
                            format_amount(u.write_bytes),
                            u.gib_hours,
                            u.charge,
                            u.recent_iops,
                            u.average_iops,
                            u.promised_iops
                        );
                    }
                    println!("total charge {:.4}", r.total_charge);
                }
            }
        }
        Ok(())
    }
}

/// A volume's service terms in words, if it has any.
fn terms_text(r: Option<&v1::Requirements>) -> Option<String> {
    let r = r?;
    let mut parts = Vec::new();
    if r.min_iops > 0 || r.min_mib_s > 0 {
        parts.push(format!(
            "promised {} IOPS, {} MiB/s",
            r.min_iops, r.min_mib_s
        ));
    }
    if r.max_iops > 0 || r.max_mib_s > 0 {
        let cap = |x: u64| {
            if x == 0 {
                "-".to_string()
            } else {
                x.to_string()
            }
        };
        parts.push(format!(
            "capped at {} IOPS, {} MiB/s",
            cap(r.max_iops),
            cap(r.max_mib_s)
        ));
    }
    if r.weight > 0 {
        parts.push(format!("weight {}", r.weight));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_parse_or_say_why() {
        assert_eq!(
            parse_layout("single").unwrap().kind,
            v1::LayoutKind::Single as i32
        );
        assert_eq!(parse_layout("mirror:2").unwrap().width, 2);
        let s = parse_layout("stripe:4:1M").unwrap();
        assert_eq!((s.width, s.stripe_unit_bytes), (4, 1 << 20));
        for bad in ["raid5", "mirror", "mirror:x", "stripe:2:zz", "single:2", ""] {
            assert!(parse_layout(bad).is_err(), "{bad}");
        }
    }
}
