//! The registration agent: on its own thread with a small tokio runtime, it registers the node
//! with the controller (keeping the assigned id in `--state-dir/node-id` so a restart is the same
//! node; an id the controller does not know is dropped for a fresh one), learns the token-signing
//! keys, reports every device and what it lends (after `--reserve`), heartbeats (handing the
//! revoked leases and the signing keys of each answer to the reactors: after a key rotation the
//! new key arrives this way before tokens are signed with it), and deregisters on a clean
//! shutdown. With
//! several controllers (`--controller a,b,c`) every call goes to the active one. The usage
//! counts a heartbeat carries are kept until a controller has taken them.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use dasmesh_api::{v1, ControllerOptions, Controllers};
use dasmesh_wire::VerifyingKey;

use crate::usage::{Usage, UsageTable};
use crate::{sys::now_ms, Shared};

/// What the agent needs to know.
pub struct AgentConfig {
    /// The controllers (see [`controllers`]).
    pub controllers: Controllers,
    /// Address hosts use for this node.
    pub advertise: String,
    /// Where the node id is kept.
    pub state_dir: Option<PathBuf>,
    /// The owner's part of each device.
    pub reserve: crate::config::Reserve,
    /// Failure domain.
    pub failure_domain: String,
    /// The data plane speaks mutual TLS (`--tls`).
    pub data_tls: bool,
    /// This node's client side of the data plane's TLS (from its certificate), for rebuilds
    /// that read from nodes that speak it.
    pub data_tls_client: Option<Arc<rustls::ClientConfig>>,
    /// How rebuilds copy.
    pub rebuild: crate::rebuild::Tuning,
    /// What each device can do, by device id (`probe.rs`).
    pub capabilities: Vec<crate::probe::Capability>,
}

type Client = v1::node_registry_client::NodeRegistryClient<Controllers>;

/// The controllers in `list` (one URL or a comma-separated list), as the agent reaches them: a
/// call that hangs (a controller cut off mid-call) gives way to the next controller after 10 s,
/// and a call that no controller serves fails after 3 s, since the agent repeats its calls
/// every beat anyway and must notice a shutdown between them. With `cert`, over mutual TLS.
pub fn controllers(
    list: &str,
    cert: Option<&dasmesh_api::CertDir>,
) -> Result<Controllers, dasmesh_api::ControllersError> {
    Controllers::parse_with(
        list,
        ControllerOptions {
            timeout: Some(Duration::from_secs(10)),
            failover_wait: Duration::from_secs(3),
            tls: cert.map(dasmesh_api::CertDir::client_config),
            ..Default::default()
        },
    )
}

fn id_file(c: &AgentConfig) -> Option<PathBuf> {
    c.state_dir.as_ref().map(|d| d.join("node-id"))
}

async fn register(c: &AgentConfig, shared: &Shared) -> anyhow::Result<(Client, u64)> {
    let ctl = &c.controllers;
    let mut client = Client::new(ctl.clone());
    let saved: u64 = id_file(c)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let request = |node_id| v1::RegisterRequest {
        node_id,
        address: c.advertise.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        failure_domain: c.failure_domain.clone(),
        data_tls: c.data_tls,
    };
    let r = match client.register(request(saved)).await {
        // The controller never assigned this id (its state was reset, or the id file came from
        // elsewhere): register as a new node, and the id file is rewritten below.
        Err(e) if saved != 0 && e.code() == tonic::Code::NotFound => {
            tracing::warn!(
                node_id = saved,
                "the controller does not know node id {saved} ({}); registering as a new node",
                e.message()
            );
            client.register(request(0)).await?
        }
        r => r?,
    }
    .into_inner();
    // A controller that predates key rotation sends the one key alone.
    let keys = if r.signing_public_keys.is_empty() {
        std::slice::from_ref(&r.signing_public_key)
    } else {
        &r.signing_public_keys[..]
    };
    shared.set_trust_keys(parse_keys(keys)?);
    shared.node_id.store(r.node_id, Ordering::Release);
    if let Some(p) = id_file(c) {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&p, format!("{}\n", r.node_id))?;
    }
    let devices = shared
        .backends
        .iter()
        .map(|b| {
            let (lendable_start, lendable_length) = c.reserve.lendable(b.size);
            let (reserved_start, reserved_length) = c.reserve.reserved(b.size);
            let cap = c
                .capabilities
                .get(b.id.0 as usize)
                .copied()
                .unwrap_or_default();
            v1::DeviceReport {
                device_id: b.id.0,
                path: b.name.clone(),
                block_size: b.block_size,
                size_bytes: b.size,
                lendable_start,
                lendable_length,
                reserved_start,
                reserved_length,
                read_iops: cap.read_iops,
                write_iops: cap.write_iops,
                mib_s: cap.mib_s,
            }
        })
        .collect();
    client
        .report_devices(v1::ReportDevicesRequest {
            node_id: r.node_id,
            devices,
        })
        .await?;
    tracing::info!(node_id = r.node_id, controller = %ctl.active(), "registered");
    Ok((client, u64::from(r.heartbeat_interval_ms.max(100))))
}

/// The public keys of an answer (32 bytes each).
pub fn parse_keys(keys: &[Vec<u8>]) -> anyhow::Result<Vec<VerifyingKey>> {
    keys.iter()
        .map(|k| {
            let b: [u8; 32] = k
                .as_slice()
                .try_into()
                .map_err(|_| anyhow::anyhow!("controller sent a {}-byte key", k.len()))?;
            Ok(VerifyingKey::from_bytes(&b)?)
        })
        .collect()
}

/// Takes the signing keys of a heartbeat answer, when it names any (a controller that predates
/// key rotation names none: the keys of the registration stay).
pub fn apply_keys(shared: &Shared, keys: &[Vec<u8>]) {
    if keys.is_empty() {
        return;
    }
    match parse_keys(keys) {
        Ok(k) => shared.set_trust_keys(k),
        Err(e) => tracing::warn!("heartbeat answer's keys ignored: {e}"),
    }
}

/// Hands a heartbeat answer's revoked leases to the reactors (`Shared::revoked`).
pub fn apply_revocations(shared: &Shared, revoked: &[v1::RevokedLease], now_ms: u64) {
    let added = shared.revoked.apply(
        revoked.iter().map(|l| (l.lease_id, l.expires_at_ms)),
        now_ms,
    );
    if added > 0 {
        tracing::info!(
            added,
            remembered = shared.revoked.len(),
            "leases revoked by the controller"
        );
    }
}

/// The most leases one heartbeat reports usage for: the controller stores each in one
/// transaction, and etcd caps a transaction at 128 operations.
pub const MAX_USAGE_PER_HEARTBEAT: usize = 100;

/// The usage counted since the last heartbeat, of at most [`MAX_USAGE_PER_HEARTBEAT`] leases:
/// those after `cursor` (a lease id) first, wrapping around, so that with more leases than
/// that every one gets its turn. The rest stay in the table for the next beats; `cursor`
/// moves to the last lease taken when some were left.
fn take_usage(table: &UsageTable, cursor: &mut u64) -> Vec<v1::LeaseUsage> {
    let mut all: Vec<v1::LeaseUsage> = table
        .take()
        .into_iter()
        .map(|(lease_id, u)| v1::LeaseUsage {
            lease_id,
            read_bytes: u.read_bytes,
            write_bytes: u.write_bytes,
            read_ops: u.read_ops,
            write_ops: u.write_ops,
        })
        .collect();
    if all.len() > MAX_USAGE_PER_HEARTBEAT {
        let after = *cursor;
        all.sort_unstable_by_key(|u| (u.lease_id <= after, u.lease_id));
        let rest = all.split_off(MAX_USAGE_PER_HEARTBEAT);
        restore_usage(table, &rest);
        *cursor = all.last().map_or(0, |u| u.lease_id);
    }
    all
}

/// Puts back the usage of a heartbeat that no controller took (it failed, or the controller
/// did not know the node), to go with the next one.
fn restore_usage(table: &UsageTable, usage: &[v1::LeaseUsage]) {
    for u in usage {
        table.add(
            u.lease_id,
            &Usage {
                read_bytes: u.read_bytes,
                write_bytes: u.write_bytes,
                read_ops: u.read_ops,
                write_ops: u.write_ops,
            },
        );
    }
}

/// Starts the agent. The returned channel reports the first registration (Ok or the error);
/// the agent keeps retrying in the background either way. Dropping `stop` ends it: it
/// deregisters and the thread exits.
pub fn start(
    c: AgentConfig,
    shared: Arc<Shared>,
    stop: mpsc::Receiver<()>,
) -> (
    mpsc::Receiver<Result<u64, String>>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::Builder::new()
        .name("agent".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                let stopped = || !matches!(stop.try_recv(), Err(mpsc::TryRecvError::Empty));
                let mut told = false;
                'outer: loop {
                    let (mut client, beat_ms) = match register(&c, &shared).await {
                        Ok(x) => x,
                        Err(e) => {
                            if !told {
                                let _ = tx.send(Err(e.to_string()));
                                told = true;
                            }
                            tracing::warn!(
                                "registration with {} failed: {e}; retrying",
                                c.controllers.urls().join(",")
                            );
                            if stopped() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                    let node_id = shared.node_id.load(Ordering::Acquire);
                    let mut usage_cursor = 0u64;
                    let mut rebuilds = crate::rebuild::Rebuilds::new(
                        Arc::clone(&shared),
                        c.data_tls_client.clone(),
                        c.state_dir.as_ref(),
                        c.rebuild,
                    );
                    loop {
                        // The first beat right after registering: a restarted node learns the
                        // revoked leases before it reports itself ready.
                        let usage = take_usage(&shared.usage, &mut usage_cursor);
                        let beat = client
                            .heartbeat(v1::HeartbeatRequest {
                                node_id,
                                usage: usage.clone(),
                                rebuilds: rebuilds.progress(),
                            })
                            .await;
                        match beat {
                            Ok(r) if !r.get_ref().known => {
                                // An unknown node's usage is not recorded: it goes with the
                                // first beat after the new registration.
                                restore_usage(&shared.usage, &usage);
                                // Not a tight loop should the controller keep forgetting us.
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue 'outer;
                            }
                            Ok(r) => {
                                let r = r.get_ref();
                                apply_keys(&shared, &r.signing_public_keys);
                                apply_revocations(&shared, &r.revoked, now_ms());
                                rebuilds.apply(&r.rebuilds);
                            }
                            Err(e) => {
                                restore_usage(&shared.usage, &usage);
                                tracing::warn!("heartbeat failed: {e}");
                            }
                        }
                        if !told {
                            let _ = tx.send(Ok(node_id));
                            told = true;
                        }
                        for _ in 0..(beat_ms / 50).max(1) {
                            if stopped() {
                                // Not held up for long by controllers that are gone.
                                let bye = client.deregister(v1::DeregisterRequest { node_id });
                                match tokio::time::timeout(Duration::from_secs(5), bye).await {
                                    Ok(Ok(_)) => tracing::info!(node_id, "deregistered"),
                                    Ok(Err(e)) => {
                                        tracing::warn!(node_id, "deregistration failed: {e}")
                                    }
                                    Err(_) => tracing::warn!(node_id, "deregistration timed out"),
                                }
                                return;
                            }
                            // A rebuild guarded a new range or finished: say so now rather
                            // than a beat later (each is a step the controller waits for).
                            if rebuilds.news() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        })
        .expect("spawn agent thread");
    (rx, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(read_bytes: u64, write_ops: u64) -> Usage {
        Usage {
            read_bytes,
            read_ops: 1,
            write_ops,
            ..Default::default()
        }
    }

    /// A heartbeat that no controller took gives its counts back, and they go with the next
    /// one together with what was counted in between.
    #[test]
    fn a_failed_heartbeat_keeps_its_usage() {
        let table = UsageTable::default();
        table.add(7, &counts(4096, 0));
        table.add(8, &counts(0, 2));
        let mut cursor = 0;
        let carried = take_usage(&table, &mut cursor);
        assert_eq!(carried.len(), 2);
        assert!(take_usage(&table, &mut cursor).is_empty());

        // Counted while the heartbeat was out; then it failed.
        table.add(7, &counts(512, 1));
        restore_usage(&table, &carried);

        let mut next = take_usage(&table, &mut cursor);
        next.sort_by_key(|u| u.lease_id);
        assert_eq!(
            next,
            vec![
                v1::LeaseUsage {
                    lease_id: 7,
                    read_bytes: 4096 + 512,
                    write_bytes: 0,
                    read_ops: 2,
                    write_ops: 1,
                },
                v1::LeaseUsage {
                    lease_id: 8,
                    read_bytes: 0,
                    write_bytes: 0,
                    read_ops: 1,
                    write_ops: 2,
                },
            ]
        );
    }

    /// A node with more leases than one heartbeat carries reports them over several beats,
    /// each lease in turn, and none is lost or counted twice.
    #[test]
    fn many_leases_report_over_several_beats_each_in_turn() {
        let table = UsageTable::default();
        let n = MAX_USAGE_PER_HEARTBEAT as u64 * 2 + 50;
        for id in 1..=n {
            table.add(id, &counts(1, 0));
        }
        let mut cursor = 0;
        let mut seen = std::collections::BTreeMap::new();
        for beat in 0..3 {
            let got = take_usage(&table, &mut cursor);
            assert!(
                got.len() <= MAX_USAGE_PER_HEARTBEAT,
                "beat {beat}: {}",
                got.len()
            );
            for u in got {
                *seen.entry(u.lease_id).or_insert(0) += u.read_bytes;
            }
            // The first leases stay busy: they must not keep the others out.
            for id in 1..=10 {
                table.add(id, &counts(1, 0));
            }
        }
        assert_eq!(
            seen.len() as u64,
            n,
            "every lease reported within three beats"
        );
        let rest = take_usage(&table, &mut cursor);
        for u in rest {
            *seen.entry(u.lease_id).or_insert(0) += u.read_bytes;
        }
        let total: u64 = seen.values().sum();
        assert_eq!(total, n + 30, "nothing lost, nothing twice");
    }
}
