//! Active and standby controllers over etcd. Every controller campaigns for one election key
//! (`<prefix>leader`) bound to an etcd lease of `ttl`: the one that creates the key is active;
//! the others are standbys that name it to every caller. The active one keeps its lease alive;
//! if it cannot (it was stopped, cut off, or etcd lost its quorum) the lease lapses, the key
//! goes, and a standby takes over within about `ttl`. The key's create revision guards every
//! commit ([`crate::store::etcd::EtcdStore`]): a deposed controller's writes fail even before
//! it notices, so two actives can never both change the pool.
//!
//! A new active controller loads the state and the token-signing key ring from etcd, and gives
//! every node a grace period (its liveness starts at the takeover), so nodes are not marked down
//! for the old one's silence. It signs with the same keys the old one did, a rotation included:
//! the old one stored its ring before it used it ([`crate::keys`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::keys::Keys;
use crate::service::{now_ms, Controller};
use crate::store::etcd::{Etcd, EtcdStore};
use crate::store::StoreError;

/// What this controller is now.
#[derive(Clone)]
pub enum Role {
    /// Serving: the pool's one writer.
    Active(Arc<Controller>),
    /// Following: the active controller's URL when one is elected.
    Standby(Option<String>),
}

/// The role, shared by the services and the election.
pub struct Roles {
    role: RwLock<Role>,
    /// This controller's URL (what callers are told to use).
    pub url: String,
    /// The shared store, when there is one (its controllers' presences are read there).
    pub etcd: Option<Etcd>,
    /// Where the state lives, in words.
    pub store: String,
}

impl Roles {
    /// A controller that is and stays active (the embedded store: there is no election).
    pub fn active(ctl: Arc<Controller>, url: String, store: String) -> Arc<Roles> {
        Arc::new(Roles {
            role: RwLock::new(Role::Active(ctl)),
            url,
            etcd: None,
            store,
        })
    }

    /// A standby over `etcd` until the election says otherwise.
    pub fn standby(url: String, etcd: Etcd) -> Arc<Roles> {
        Arc::new(Roles {
            role: RwLock::new(Role::Standby(None)),
            url,
            store: format!("etcd {} (prefix {})", etcd.endpoints, etcd.prefix),
            etcd: Some(etcd),
        })
    }

    /// The role now.
    pub fn get(&self) -> Role {
        self.role.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, r: Role) {
        *self.role.write().unwrap_or_else(|e| e.into_inner()) = r;
    }

    /// The active controller, when this is it.
    pub fn controller(&self) -> Option<Arc<Controller>> {
        match self.get() {
            Role::Active(c) => Some(c),
            Role::Standby(_) => None,
        }
    }
}

/// What each controller publishes about itself under `controllers/` (for `controller list`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// Its URL.
    pub url: String,
    /// `active` or `standby`.
    pub role: String,
    /// When it last wrote this, ms since the epoch.
    pub seen_ms: u64,
}

/// The cluster's token-signing key ring: the one in etcd (a ring, or the one key earlier builds
/// kept there), or a new key put there if there is none yet (the first controller makes it, as
/// a plain key, which every build reads; every other controller reads the same).
pub async fn key_ring(etcd: &Etcd) -> Result<Keys, StoreError> {
    let key = etcd.key("signing-key");
    let fresh = dasmesh_wire::key_to_text(&rand::random::<[u8; 32]>());
    let text = etcd
        .call(move |mut c| async move {
            let r = c
                .txn(
                    Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key.clone(), fresh.clone(), None)])
                        .or_else([TxnOp::get(key, None)]),
                )
                .await?;
            if r.succeeded() {
                return Ok(fresh);
            }
            let got = r.op_responses().into_iter().find_map(|o| match o {
                etcd_client::TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            });
            Ok(got.unwrap_or_default())
        })
        .await?;
    Keys::parse(&text).map_err(|e| StoreError::Corrupt(format!("signing-key in etcd: {e}")))
}

/// The controllers that published their presence, newest first.
pub async fn presences(etcd: &Etcd) -> Result<Vec<Presence>, StoreError> {
    let key = etcd.key("controllers/");
    let vals = etcd
        .call(move |mut c| async move {
            let r = c.get(key, Some(GetOptions::new().with_prefix())).await?;
            Ok(r.kvs()
                .iter()
                .map(|kv| kv.value().to_vec())
                .collect::<Vec<_>>())
        })
        .await?;
    let mut out: Vec<Presence> = vals
        .iter()
        .filter_map(|v| serde_json::from_slice(v).ok())
        .collect();
    out.sort_by(|a, b| (a.role != "active", &a.url).cmp(&(b.role != "active", &b.url)));
    Ok(out)
}

/// How the election runs.
#[derive(Clone, Debug)]
pub struct ElectionOptions {
    /// The election lease's time to live: how long a silent active controller stays active.
    pub ttl: Duration,
    /// How often a standby looks for a free key.
    pub poll: Duration,
    /// The key's TTL in whole seconds is at least 1 (etcd's unit).
    pub heartbeat_ms: u64,
}

/// Runs the election for ever on the etcd runtime: campaigns, serves as active while the
/// lease holds, steps down when it does not, and publishes this controller's presence.
pub fn spawn(etcd: Etcd, roles: Arc<Roles>, opts: ElectionOptions) {
    let rt = etcd.runtime().clone();
    rt.spawn(async move {
        loop {
            if let Err(e) = campaign(&etcd, &roles, &opts).await {
                tracing::warn!("election: {e}");
            }
            if roles.controller().is_some() {
                tracing::warn!("stepping down: this controller is a standby now");
            }
            roles.set(Role::Standby(None));
            tokio::time::sleep(opts.poll).await;
        }
    });
}

/// How often a controller rewrites its presence record.
const PRESENCE_EVERY: Duration = Duration::from_secs(5);

fn ttl_secs(ttl: Duration) -> i64 {
    ttl.as_secs().max(1) as i64
}

async fn publish(etcd: &Etcd, url: &str, role: &str, lease: i64) -> Result<(), StoreError> {
    let p = Presence {
        url: url.to_string(),
        role: role.to_string(),
        seen_ms: now_ms(),
    };
    let key = etcd.key(&format!("controllers/{url}"));
    let v = serde_json::to_vec(&p).map_err(|e| StoreError::Db(e.to_string()))?;
    etcd.call(move |mut c| async move {
        c.put(key, v, Some(PutOptions::new().with_lease(lease)))
            .await?;
        Ok(())
    })
    .await
}

/// One term: a lease, a try for the key; as a standby, follows until the key is free; as the
/// active one, serves until the lease cannot be kept. Returns when the term ends.
async fn campaign(
    etcd: &Etcd,
    roles: &Arc<Roles>,
    opts: &ElectionOptions,
) -> Result<(), StoreError> {
    let ttl = ttl_secs(opts.ttl);
    let lease = etcd
        .call(move |mut c| async move { Ok(c.lease_grant(ttl, None).await?.id()) })
        .await?;
    let leader = etcd.key("leader");
    let me = roles.url.clone();
    let keep = Duration::from_millis((opts.ttl.as_millis() as u64 / 3).max(100));
    // Keep the lease alive whatever the role: it also carries this controller's presence.
    let (mut keeper, mut kstream) = etcd
        .call(move |mut c| async move { c.lease_keep_alive(lease).await })
        .await?;
    let mut last_kept = tokio::time::Instant::now();
    let mut won: Option<i64> = None;
    let lost = Arc::new(AtomicBool::new(false));
    let mut published: Option<(&str, tokio::time::Instant)> = None;
    loop {
        if won.is_none() {
            let (l2, me2) = (leader.clone(), me.clone());
            let (ok, holder, rev) = etcd
                .call(move |mut c| async move {
                    let r = c
                        .txn(
                            Txn::new()
                                .when([Compare::create_revision(l2.clone(), CompareOp::Equal, 0)])
                                .and_then([TxnOp::put(
                                    l2.clone(),
                                    me2,
                                    Some(PutOptions::new().with_lease(lease)),
                                )])
                                .or_else([TxnOp::get(l2, None)]),
                        )
                        .await?;
                    let rev = r.header().map(|h| h.revision()).unwrap_or(0);
                    let holder = r.op_responses().into_iter().find_map(|o| match o {
                        etcd_client::TxnOpResponse::Get(g) => g
                            .kvs()
                            .first()
                            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                        _ => None,
                    });
                    Ok((r.succeeded(), holder, rev))
                })
                .await?;
            if ok {
                // Read after winning: a rotation by the one before is in it.
                let loaded = match etcd.load(now_ms()).await {
                    Ok(l) => key_ring(etcd).await.map(|k| (l, k)),
                    Err(e) => Err(e),
                };
                let ((state, last_log), keys) = match loaded {
                    Ok(x) => x,
                    Err(e) => {
                        // A controller that cannot load the state must not hold the key (nobody
                        // would serve until its lease lapsed, again and again): give it back.
                        tracing::error!("won the election but cannot load the state: {e}");
                        let l3 = leader.clone();
                        let _ = etcd
                            .call(move |mut c| async move {
                                c.txn(
                                    Txn::new()
                                        .when([Compare::create_revision(
                                            l3.clone(),
                                            CompareOp::Equal,
                                            rev,
                                        )])
                                        .and_then([TxnOp::delete(l3, None)]),
                                )
                                .await
                            })
                            .await;
                        return Err(e);
                    }
                };
                let store = EtcdStore::new(etcd.clone(), rev, last_log, Arc::clone(&lost));
                let ctl = Controller::with_state(state, Box::new(store), keys, opts.heartbeat_ms);
                roles.set(Role::Active(Arc::new(ctl)));
                won = Some(rev);
                tracing::info!(url = %me, revision = rev, "active: this controller won the election");
            } else {
                let holder = holder.filter(|h| !h.is_empty());
                if let Role::Standby(ref cur) = roles.get() {
                    if *cur != holder {
                        tracing::info!(active = ?holder, "standby");
                    }
                }
                roles.set(Role::Standby(holder));
            }
        }
        let role = if won.is_some() { "active" } else { "standby" };
        // On a change of role, else every PRESENCE_EVERY (each is an etcd write).
        if published.is_none_or(|(r, at)| r != role || at.elapsed() >= PRESENCE_EVERY) {
            match publish(etcd, &me, role, lease).await {
                Ok(()) => published = Some((role, tokio::time::Instant::now())),
                Err(e) => tracing::debug!("presence: {e}"),
            }
        }
        // Keep the lease; a lapse ends the term.
        let _ = keeper.keep_alive().await;
        match tokio::time::timeout(keep, kstream.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => last_kept = tokio::time::Instant::now(),
            Ok(Ok(Some(_))) => {
                return Err(StoreError::NotActive("the election lease expired".into()));
            }
            Ok(Ok(None)) | Ok(Err(_)) => {
                return Err(StoreError::Db("the lease keep-alive stream ended".into()));
            }
            Err(_) => {}
        }
        // Unkept for a whole ttl (less a margin): assume the lease is gone before etcd says so.
        if last_kept.elapsed() + keep >= opts.ttl {
            return Err(StoreError::NotActive(format!(
                "the election lease was not kept for {:?}",
                last_kept.elapsed()
            )));
        }
        if lost.load(Ordering::SeqCst) {
            return Err(StoreError::NotActive(
                "a commit found the election key gone".into(),
            ));
        }
        tokio::time::sleep(if won.is_some() {
            keep
        } else {
            opts.poll.min(keep)
        })
        .await;
    }
}
