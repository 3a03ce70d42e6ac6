//! Random SIGKILLs of the active controller against a model. Three clients create, resize,
//! mount, renew, unmount and delete volumes of their own while the active one of two controllers
//! over a three-member etcd is killed, and restarted, at random moments. Each client keeps a model
//! of what its acknowledged operations did and checks every answer against it; a call that broke
//! off (it may or may not have been applied) is resolved by reading the volume and its leases
//! back, which must show one or the other. Afterwards the controllers' state must equal the
//! models, no two extents may overlap, and every deleted volume must be purged. Skipped, with a
//! message, where etcd is not installed.
//!
//! The seed (printed; `DASMESH_CHAOS_SEED` sets it) fixes each client's choices and the chaos
//! pauses. Where the kills land among the calls depends on timing, so a seed replays the same
//! choices but not the same interleaving.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dasmesh_api::controllers::is_lost;
use dasmesh_api::{v1, ControllerOptions, Controllers};
use dasmesh_testkit::etcd::{require_etcd, EtcdCluster};
use dasmesh_testkit::{free_addr, now_ms, Process};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

mod common;
use common::{active_of, etcd_controller as controller};

/// The seed when `DASMESH_CHAOS_SEED` is not set.
const DEFAULT_SEED: u64 = 20_261_207;
const CLIENTS: usize = 3;
/// Volume names per client: `c{client}-v{0..NAMES}`.
const NAMES: usize = 4;
/// The most operations per client; they run back to back until the chaos is over.
const MAX_OPS: usize = 400;
/// SIGKILLs of the active controller.
const KILLS: u32 = 4;
/// The clients stop here whatever they have done.
const RUN: Duration = Duration::from_secs(40);
/// Lease length asked by every mount and renewal.
const TTL_MS: u64 = 5_000;
const MIB: u64 = 1 << 20;
/// The largest size a volume is grown to.
const MAX_SIZE: u64 = 24 * MIB;
/// What the controller rounds sizes up to.
const ALIGN: u64 = 4096;
const SINGLE: i32 = v1::LayoutKind::Single as i32;
const CONCAT: i32 = v1::LayoutKind::Concat as i32;
const MIRROR: i32 = v1::LayoutKind::Mirror as i32;

/// What the model says of one volume name.
#[derive(Clone, Debug, PartialEq)]
enum Vol {
    /// Never created, or deleted and purged.
    Absent,
    /// Deleted: DELETING until its extents are discarded, then gone.
    Deleting { id: u64 },
    /// As the last acknowledged create or resize answered.
    Live { id: u64, size: u64, kind: i32 },
}

/// A read-write lease the model holds.
#[derive(Clone, Debug, PartialEq)]
struct Lease {
    id: u64,
    host: String,
    expires_at_ms: u64,
}

impl Lease {
    /// Whether the controller may have ended it by now (the test and the controllers share one
    /// clock, and an answer comes after the controller looked at its clock).
    fn expired(&self, now: u64) -> bool {
        now >= self.expires_at_ms
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create { size: u64, mirror: bool },
    Resize { size: u64 },
    Mount { host: String },
    Renew { lease: u64 },
    Unmount { lease: u64 },
    Delete,
}

const KINDS: [&str; 6] = ["create", "resize", "mount", "renew", "unmount", "delete"];

impl Op {
    fn kind(&self) -> usize {
        match self {
            Op::Create { .. } => 0,
            Op::Resize { .. } => 1,
            Op::Mount { .. } => 2,
            Op::Renew { .. } => 3,
            Op::Unmount { .. } => 4,
            Op::Delete => 5,
        }
    }
}

/// One volume name of a client: the model, and an operation whose outcome is not known yet.
#[derive(Clone, Debug)]
struct Slot {
    name: String,
    vol: Vol,
    lease: Option<Lease>,
    pending: Option<Op>,
}

/// What the clients saw: per operation kind, acknowledged / refused / ambiguous; ambiguous
/// outcomes read back applied / not applied; leases found ended by expiry; ambiguous errors
/// that were not a lost connection (the first one's text).
#[derive(Clone, Debug, Default)]
struct Stats {
    by_kind: [[u32; 3]; 6],
    applied: u32,
    not_applied: u32,
    expired: u32,
    not_lost: u32,
    not_lost_sample: Option<String>,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        for (mine, theirs) in self
            .by_kind
            .iter_mut()
            .flatten()
            .zip(o.by_kind.iter().flatten())
        {
            *mine += theirs;
        }
        self.applied += o.applied;
        self.not_applied += o.not_applied;
        self.expired += o.expired;
        self.not_lost += o.not_lost;
        if self.not_lost_sample.is_none() {
            self.not_lost_sample.clone_from(&o.not_lost_sample);
        }
    }
}

fn align(size: u64) -> u64 {
    size.div_ceil(ALIGN) * ALIGN
}

fn kind_of(v: &v1::Volume) -> i32 {
    v.layout.as_ref().map_or(0, |l| l.kind)
}

fn vol_of(v: &v1::Volume) -> Vol {
    if v.state == v1::VolumeState::Deleting as i32 {
        Vol::Deleting { id: v.volume_id }
    } else {
        Vol::Live {
            id: v.volume_id,
            size: v.size_bytes,
            kind: kind_of(v),
        }
    }
}

/// The refusals that are the logic's: nothing was applied.
fn definite(s: &tonic::Status) -> bool {
    !is_lost(s)
        && matches!(
            s.code(),
            Code::FailedPrecondition
                | Code::AlreadyExists
                | Code::NotFound
                | Code::ResourceExhausted
                | Code::InvalidArgument
        )
}

fn options() -> ControllerOptions {
    ControllerOptions {
        connect_timeout: Duration::from_secs(1),
        failover_wait: Duration::from_secs(20),
        ..Default::default()
    }
}

struct Client {
    c: usize,
    seed: u64,
    ctl: Controllers,
    rng: StdRng,
    slots: Vec<Slot>,
    stats: Stats,
    mounts: u32,
    /// Reads that resolve an outcome give up here.
    give_up: Instant,
}

impl Client {
    fn new(c: usize, urls: &str, seed: u64, give_up: Instant) -> Client {
        Client {
            c,
            seed,
            ctl: Controllers::parse_with(urls, options()).unwrap(),
            rng: StdRng::seed_from_u64(seed.wrapping_add(c as u64 + 1)),
            slots: (0..NAMES)
                .map(|i| Slot {
                    name: format!("c{c}-v{i}"),
                    vol: Vol::Absent,
                    lease: None,
                    pending: None,
                })
                .collect(),
            stats: Stats::default(),
            mounts: 0,
            give_up,
        }
    }

    /// Panics with everything needed to tell what went wrong.
    fn bug(&self, i: usize, op: &Op, what: String) -> ! {
        panic!(
            "seed {} client {} volume {:?}: {what}\n  operation {op:?}\n  model {:?}",
            self.seed, self.c, self.slots[i].name, self.slots[i]
        )
    }

    /// Operations on random names, nearly back to back (so that a kill finds calls in
    /// flight), until `over`, `until` or [`MAX_OPS`].
    async fn run(mut self, over: Arc<AtomicBool>, until: Instant) -> Client {
        for _ in 0..MAX_OPS {
            if over.load(Ordering::Relaxed) || Instant::now() >= until {
                break;
            }
            let i = self.rng.gen_range(0..NAMES);
            self.step(i).await;
            let pause = self.rng.gen_range(0..30);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        self
    }

    async fn step(&mut self, i: usize) {
        if let Some(op) = self.slots[i].pending.take() {
            self.resolve(i, &op).await;
        }
        let op = self.choose(i);
        let answer = self.send(i, &op).await;
        let now = now_ms();
        let k = op.kind();
        match answer {
            Ok((vol, leases)) => {
                self.stats.by_kind[k][0] += 1;
                match applied(&self.slots[i], &op, &vol, &leases, now) {
                    Ok(to) => self.adopt(i, &op, to),
                    Err(why) => self.bug(i, &op, format!("acknowledged, but {why}")),
                }
            }
            Err(s) if definite(&s) => {
                self.stats.by_kind[k][1] += 1;
                self.refused(i, &op, &s, now);
            }
            Err(s) => {
                self.stats.by_kind[k][2] += 1;
                if !is_lost(&s) {
                    self.stats.not_lost += 1;
                    self.stats
                        .not_lost_sample
                        .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                }
                self.slots[i].pending = Some(op);
            }
        }
    }

    /// A random operation for slot `i`, mostly ones the model expects to succeed, some that it
    /// expects refused.
    fn choose(&mut self, i: usize) -> Op {
        let r = self.rng.gen_range(0..100);
        let (vol, lease) = (self.slots[i].vol.clone(), self.slots[i].lease.clone());
        let grow = |rng: &mut StdRng, size: u64| {
            (size + rng.gen_range(1..=8) * MIB - rng.gen_range(0..3) * 1000).min(MAX_SIZE)
        };
        let shrink = |rng: &mut StdRng, size: u64| {
            let top = (size / MIB).saturating_sub(1).max(1);
            rng.gen_range(1..=top) * MIB - rng.gen_range(0..3) * 1000
        };
        match (vol, lease) {
            (Vol::Live { size, .. }, None) => match r {
                0..=24 => Op::Resize {
                    size: grow(&mut self.rng, size),
                },
                25..=34 => Op::Resize {
                    size: shrink(&mut self.rng, size),
                },
                35..=64 => self.mount(),
                65..=94 => Op::Delete,
                _ => self.create(),
            },
            (Vol::Live { size, .. }, Some(l)) => match r {
                0..=29 => Op::Renew { lease: l.id },
                30..=59 => Op::Unmount { lease: l.id },
                60..=74 => Op::Resize {
                    size: grow(&mut self.rng, size),
                },
                75..=84 => Op::Resize {
                    size: shrink(&mut self.rng, size),
                },
                85..=92 => Op::Delete,
                _ => self.mount(),
            },
            (_, _) => match r {
                0..=79 => self.create(),
                80..=86 => self.mount(),
                87..=93 => Op::Delete,
                _ => Op::Resize { size: 8 * MIB },
            },
        }
    }

    fn create(&mut self) -> Op {
        Op::Create {
            size: self.rng.gen_range(4..=16) * MIB - self.rng.gen_range(0..3) * 1000,
            mirror: self.rng.gen_bool(0.5),
        }
    }

    fn mount(&mut self) -> Op {
        self.mounts += 1;
        Op::Mount {
            host: format!("c{}-h{}", self.c, self.mounts),
        }
    }

    /// Sends `op`; when it is acknowledged, the volume and its leases as the answer says they
    /// are now (what the answer does not carry is the model's).
    async fn send(&self, i: usize, op: &Op) -> Result<(Vol, Vec<Lease>), tonic::Status> {
        let s = &self.slots[i];
        let name = s.name.clone();
        let mut vols = v1::volumes_client::VolumesClient::new(self.ctl.clone());
        let mut leases = v1::leases_client::LeasesClient::new(self.ctl.clone());
        let (access, ttl_ms) = (v1::Access::ReadWrite as i32, TTL_MS);
        let lease = |m: v1::MountResponse| {
            let mine = m.lease.iter().filter(|l| l.volume_name == s.name);
            mine.map(lease_of).collect()
        };
        let named = |v: v1::Volume| {
            if v.name != s.name {
                self.bug(i, op, format!("the answer names another volume: {v:?}"));
            }
            vol_of(&v)
        };
        let held: Vec<Lease> = s.lease.iter().cloned().collect();
        let deleted = match s.vol {
            Vol::Live { id, .. } | Vol::Deleting { id } => Vol::Deleting { id },
            Vol::Absent => Vol::Absent,
        };
        Ok(match op.clone() {
            Op::Create { size, mirror } => {
                let layout = Some(dasmesh_testkit::layout(if mirror {
                    "mirror:2"
                } else {
                    "single"
                }));
                let (size_bytes, requirements) = (size, None);
                let r = v1::CreateVolumeRequest {
                    name,
                    size_bytes,
                    layout,
                    requirements,
                };
                (named(vols.create(r).await?.into_inner()), vec![])
            }
            Op::Resize { size: size_bytes } => {
                // A shrink is only acknowledged once the lease has ended.
                let shrunk = matches!(s.vol, Vol::Live { size, .. } if align(size_bytes) < size);
                let r = v1::ResizeVolumeRequest {
                    expect_version: 0,
                    name,
                    size_bytes,
                };
                let v = named(vols.resize(r).await?.into_inner());
                (v, if shrunk { vec![] } else { held })
            }
            Op::Mount { host: host_id } => {
                let r = v1::MountRequest {
                    holder_key: Vec::new(),
                    volume: name,
                    host_id,
                    access,
                    ttl_ms,
                };
                (s.vol.clone(), lease(leases.mount(r).await?.into_inner()))
            }
            Op::Renew { lease: lease_id } => {
                let r = v1::RenewRequest {
                    lease_id,
                    ttl_ms,
                    joined: vec![],
                };
                (s.vol.clone(), lease(leases.renew(r).await?.into_inner()))
            }
            Op::Unmount { lease: lease_id } => {
                leases.unmount(v1::UnmountRequest { lease_id }).await?;
                (s.vol.clone(), vec![])
            }
            Op::Delete => {
                vols.delete(v1::DeleteVolumeRequest {
                    expect_version: 0,
                    name,
                })
                .await?;
                (deleted, vec![])
            }
        })
    }

    /// The model takes `to`, counting a lease that ended on its own.
    fn adopt(&mut self, i: usize, op: &Op, to: (Vol, Option<Lease>)) {
        let s = &mut self.slots[i];
        let ended = |l: &Option<Lease>| l.as_ref().map(|l| l.id);
        if s.lease.is_some() && ended(&s.lease) != ended(&to.1) && !matches!(op, Op::Unmount { .. })
        {
            self.stats.expired += 1;
        }
        (s.vol, s.lease) = to;
    }

    /// A refusal of the logic: it must be one the model predicts; the state is unchanged but
    /// for what time did (a purge, an expiry).
    fn refused(&mut self, i: usize, op: &Op, st: &tonic::Status, now: u64) {
        let s = self.slots[i].clone();
        let code = st.code();
        let leased = s.lease.is_some();
        let expired = s.lease.as_ref().is_some_and(|l| l.expired(now));
        let ok = match (op, &s.vol) {
            (Op::Create { .. }, Vol::Live { .. }) => code == Code::AlreadyExists,
            (Op::Create { .. }, Vol::Deleting { .. }) => {
                matches!(code, Code::AlreadyExists | Code::ResourceExhausted)
            }
            (Op::Create { .. }, Vol::Absent) => code == Code::ResourceExhausted,
            (Op::Resize { size }, Vol::Live { size: was, .. }) => {
                (code == Code::ResourceExhausted && align(*size) > *was)
                    || (code == Code::FailedPrecondition && align(*size) < *was && leased)
            }
            (Op::Mount { .. } | Op::Delete, Vol::Live { .. }) => {
                code == Code::FailedPrecondition && leased
            }
            (Op::Resize { .. } | Op::Mount { .. }, Vol::Deleting { .. }) => {
                matches!(code, Code::InvalidArgument | Code::NotFound)
            }
            (Op::Delete, Vol::Deleting { .. }) => code == Code::NotFound,
            (Op::Resize { .. } | Op::Mount { .. } | Op::Delete, Vol::Absent) => {
                code == Code::NotFound
            }
            (Op::Renew { .. } | Op::Unmount { .. }, _) => code == Code::NotFound && expired,
        };
        if !ok {
            self.bug(
                i,
                op,
                format!(
                    "a refusal the model does not predict: {code:?} {}",
                    st.message()
                ),
            );
        }
        if code == Code::NotFound {
            match (op, &s.vol) {
                (Op::Renew { .. } | Op::Unmount { .. }, _) => {
                    self.stats.expired += 1;
                    self.slots[i].lease = None;
                }
                (_, Vol::Deleting { .. }) => self.slots[i].vol = Vol::Absent,
                _ => {}
            }
        }
    }

    /// The volume and its leases as the active controller has them now.
    async fn read(&self, i: usize) -> (Vol, Vec<Lease>) {
        let name = self.slots[i].name.clone();
        let mut vols = v1::volumes_client::VolumesClient::new(self.ctl.clone());
        let mut leases = v1::leases_client::LeasesClient::new(self.ctl.clone());
        loop {
            let vol = match vols.get(v1::GetVolumeRequest { name: name.clone() }).await {
                Ok(v) => Ok(vol_of(&v.into_inner())),
                Err(s) if s.code() == Code::NotFound => Ok(Vol::Absent),
                Err(s) => Err(s),
            };
            let volume = name.clone();
            let got = match vol {
                Ok(vol) => leases
                    .list(v1::ListLeasesRequest { volume })
                    .await
                    .map(|l| (vol, l.into_inner().leases.iter().map(lease_of).collect())),
                Err(s) => Err(s),
            };
            match got {
                Ok(r) => return r,
                Err(s) => assert!(
                    Instant::now() < self.give_up,
                    "seed {} client {}: cannot read {name:?} back: {s}",
                    self.seed,
                    self.c
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads back the outcome of an operation that may or may not have been applied: the
    /// controller must show one or the other, and the model takes what it shows.
    async fn resolve(&mut self, i: usize, op: &Op) {
        let (vol, leases) = self.read(i).await;
        let now = now_ms();
        let s = &self.slots[i];
        let to = match unchanged(s, &vol, &leases, now) {
            Ok(to) => {
                self.stats.not_applied += 1;
                to
            }
            Err(why) => match applied(s, op, &vol, &leases, now) {
                Ok(to) => {
                    self.stats.applied += 1;
                    to
                }
                Err(why2) => self.bug(
                    i,
                    op,
                    format!(
                        "read back as neither not applied ({why}) nor applied ({why2}): \
                         {vol:?}, leases {leases:?}"
                    ),
                ),
            },
        };
        self.adopt(i, op, to);
    }

    /// Resolves what is pending and renews every lease held, so that what the model holds is
    /// what the controller must list.
    async fn finish(mut self) -> Client {
        for i in 0..NAMES {
            if let Some(op) = self.slots[i].pending.take() {
                self.resolve(i, &op).await;
            }
            let Some(l) = self.slots[i].lease.clone() else {
                continue;
            };
            let r = v1::leases_client::LeasesClient::new(self.ctl.clone())
                .renew(v1::RenewRequest {
                    joined: vec![],
                    lease_id: l.id,
                    ttl_ms: 60_000,
                })
                .await;
            match r {
                Ok(_) => {}
                Err(s) if s.code() == Code::NotFound && l.expired(now_ms()) => {
                    self.stats.expired += 1;
                    self.slots[i].lease = None;
                }
                Err(s) => self.bug(i, &Op::Renew { lease: l.id }, format!("final renewal: {s}")),
            }
        }
        self
    }
}

fn lease_of(l: &v1::Lease) -> Lease {
    Lease {
        id: l.lease_id,
        host: l.host_id.clone(),
        expires_at_ms: l.expires_at_ms,
    }
}

/// The model's lease against the leases read back, if nothing ended it but its expiry.
fn lease_kept(pre: &Option<Lease>, read: &[Lease], now: u64) -> Result<Option<Lease>, String> {
    match (pre, read) {
        (None, []) => Ok(None),
        (Some(l), []) if l.expired(now) => Ok(None),
        (Some(l), [r]) if r.id == l.id && r.host == l.host => Ok(Some(r.clone())),
        _ => Err(format!("lease {pre:?} read back as {read:?}")),
    }
}

/// The state read back, if it is the model's unchanged (but for a purge or an expiry).
fn unchanged(
    s: &Slot,
    vol: &Vol,
    leases: &[Lease],
    now: u64,
) -> Result<(Vol, Option<Lease>), String> {
    let same = match (&s.vol, vol) {
        (Vol::Deleting { .. }, Vol::Absent) => true,
        (a, b) => a == b,
    };
    if !same {
        return Err(format!("the volume changed to {vol:?}"));
    }
    Ok((vol.clone(), lease_kept(&s.lease, leases, now)?))
}

/// The state read back (or acknowledged), if it is the model's after `op`.
fn applied(
    s: &Slot,
    op: &Op,
    vol: &Vol,
    leases: &[Lease],
    now: u64,
) -> Result<(Vol, Option<Lease>), String> {
    // Whether the controller may have ended the lease the model holds.
    let unleased = s.lease.as_ref().is_none_or(|l| l.expired(now));
    let same_vol = *vol == s.vol;
    match (op, &s.vol, vol) {
        (
            Op::Create { size, mirror },
            Vol::Absent | Vol::Deleting { .. },
            Vol::Live {
                id,
                size: got,
                kind,
            },
        ) => {
            let want = if *mirror { MIRROR } else { SINGLE };
            let fresh = s.vol != Vol::Deleting { id: *id };
            if !fresh || *got != align(*size) || *kind != want || !leases.is_empty() {
                return Err(format!("not the volume created: {vol:?}, {leases:?}"));
            }
            Ok((vol.clone(), None))
        }
        (
            Op::Resize { size },
            Vol::Live {
                id,
                size: was,
                kind,
            },
            Vol::Live { .. },
        ) => {
            let grown = align(*size) > *was;
            let want = Vol::Live {
                id: *id,
                size: align(*size),
                kind: if grown && *kind == SINGLE {
                    CONCAT
                } else {
                    *kind
                },
            };
            if *vol != want {
                return Err(format!("not the resize's {want:?}"));
            }
            let lease = lease_kept(&s.lease, leases, now)?;
            if align(*size) < *was && lease.is_some() {
                return Err("shrunk while leased".into());
            }
            Ok((vol.clone(), lease))
        }
        (Op::Delete, Vol::Live { id, .. } | Vol::Deleting { id }, Vol::Deleting { id: got })
            if id == got && unleased && leases.is_empty() =>
        {
            Ok((vol.clone(), None))
        }
        (Op::Delete, Vol::Live { .. } | Vol::Deleting { .. }, Vol::Absent)
            if unleased && leases.is_empty() =>
        {
            Ok((Vol::Absent, None))
        }
        (Op::Mount { host }, Vol::Live { .. }, _) if same_vol && unleased => match leases {
            [l] if l.host == *host => Ok((vol.clone(), Some(l.clone()))),
            _ => Err(format!("not the mount's lease: {leases:?}")),
        },
        (Op::Unmount { .. }, _, _) if same_vol && leases.is_empty() => Ok((vol.clone(), None)),
        (Op::Renew { .. }, _, _) if same_vol && s.lease.is_some() => {
            Ok((vol.clone(), lease_kept(&s.lease, leases, now)?))
        }
        _ => Err(format!(
            "{op:?} cannot turn {:?} into {vol:?}, leases {leases:?}",
            s.vol
        )),
    }
}

/// SIGKILLs the active controller every 2-5 s and restarts it 0.5-2 s later, `KILLS` times or
/// until `stop`, then sets `over`; returns the controllers (running) and the number of kills.
async fn chaos(
    ctls: Vec<Process>,
    addrs: Vec<String>,
    seed: u64,
    stop: Arc<AtomicBool>,
    over: Arc<AtomicBool>,
) -> (Vec<Process>, u32) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc4a0_5c4a_05c4_a05c);
    let mut ctls: Vec<Option<Process>> = ctls.into_iter().map(Some).collect();
    let started = Instant::now();
    let mut kills = 0;
    'chaos: while kills < KILLS {
        let wait = Instant::now() + Duration::from_millis(rng.gen_range(2_000..5_000));
        while Instant::now() < wait {
            if stop.load(Ordering::Relaxed) {
                break 'chaos;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let i = active_of(&addrs, Duration::from_secs(15)).await;
        let mut p = ctls[i].take().expect("running");
        let at = started.elapsed();
        p = tokio::task::spawn_blocking(move || {
            p.signal("KILL");
            p
        })
        .await
        .unwrap();
        kills += 1;
        let down = Duration::from_millis(rng.gen_range(500..2_000));
        eprintln!(
            "chaos: SIGKILL of the active controller {} at {at:.1?}, restarted {down:?} later",
            addrs[i]
        );
        tokio::time::sleep(down).await;
        p = tokio::task::spawn_blocking(move || {
            p.restart();
            p
        })
        .await
        .unwrap();
        ctls[i] = Some(p);
    }
    over.store(true, Ordering::Relaxed);
    (
        ctls.into_iter().map(|p| p.expect("running")).collect(),
        kills,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_of_the_active_controller_lose_nothing_acknowledged() {
    if !require_etcd("random_kills_of_the_active_controller_lose_nothing_acknowledged") {
        return;
    }
    let seed = std::env::var("DASMESH_CHAOS_SEED").map_or(DEFAULT_SEED, |s| {
        s.trim()
            .parse()
            .unwrap_or_else(|e| panic!("DASMESH_CHAOS_SEED={s:?}: {e}"))
    });
    eprintln!("chaos: seed {seed} (DASMESH_CHAOS_SEED sets another)");
    let t0 = Instant::now();
    let etcd = EtcdCluster::start(3).unwrap();
    let addrs = vec![free_addr(), free_addr()];
    let mut ctls = vec![controller(&etcd, &addrs[0])];
    active_of(&addrs[..1], Duration::from_secs(10)).await;
    ctls.push(controller(&etcd, &addrs[1]));
    let urls = addrs
        .iter()
        .map(|a| format!("http://{a}"))
        .collect::<Vec<_>>()
        .join(",");
    let dir = tempfile::tempdir().unwrap();
    // Nodes given both controllers (node_at writes `http://` before the list).
    let ctl_arg = urls.trim_start_matches("http://").to_string();
    let _nodes: Vec<Process> = (0..3)
        .map(|i| Process::node_at(dir.path(), &ctl_arg, &format!("n{i}"), &free_addr()))
        .collect();
    let admin = Controllers::parse_with(&urls, options()).unwrap();
    let mut pool = v1::pool_client::PoolClient::new(admin.clone());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let up = match pool.list_devices(v1::ListDevicesRequest {}).await {
            Ok(d) => d.into_inner().devices.len(),
            Err(_) => 0,
        };
        if up == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the nodes never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "chaos: etcd, 2 controllers, 3 nodes up in {:.1?}",
        t0.elapsed()
    );

    let (stop, over) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let chaos = tokio::spawn(chaos(
        ctls,
        addrs.clone(),
        seed,
        Arc::clone(&stop),
        Arc::clone(&over),
    ));
    let until = Instant::now() + RUN;
    let give_up = until + Duration::from_secs(30);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(Client::new(c, &urls, seed, give_up).run(Arc::clone(&over), until)))
        .collect();
    let mut done = Vec::new();
    for c in clients {
        done.push(c.await.expect("a client failed"));
    }
    let ops_time = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (_ctls, kills) = chaos.await.expect("the chaos task failed");
    active_of(&addrs, Duration::from_secs(15)).await;
    let mut clients = Vec::new();
    for c in done {
        clients.push(c.finish().await);
    }

    // The controllers' state against the models.
    let mut vols = v1::volumes_client::VolumesClient::new(admin.clone());
    let volumes = vols
        .list(v1::ListVolumesRequest {})
        .await
        .unwrap()
        .into_inner()
        .volumes;
    let leases = v1::leases_client::LeasesClient::new(admin.clone())
        .list(v1::ListLeasesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .leases;
    let devices = pool
        .list_devices(v1::ListDevicesRequest {})
        .await
        .unwrap()
        .into_inner()
        .devices;
    let mut all = Stats::default();
    for c in &clients {
        all.add(&c.stats);
    }
    let per_kind: Vec<String> = KINDS
        .iter()
        .zip(all.by_kind)
        .map(|(k, [ok, no, amb])| format!("{k} {ok}/{no}/{amb}"))
        .collect();
    eprintln!(
        "chaos summary: seed {seed}, {kills} kills, operations until {ops_time:.1?}; \
         acknowledged/refused/ambiguous: {}; ambiguous read back as applied {}, not applied {}, \
         {} not a lost connection{}; leases found expired {}; at the end {} volumes, {} leases",
        per_kind.join(", "),
        all.applied,
        all.not_applied,
        all.not_lost,
        all.not_lost_sample
            .map(|s| format!(" ({s})"))
            .unwrap_or_default(),
        all.expired,
        volumes.len(),
        leases.len(),
    );
    let slots: Vec<&Slot> = clients.iter().flat_map(|c| &c.slots).collect();
    let wrong = disagreements(&slots, &volumes, &leases);
    assert!(
        wrong.is_empty(),
        "seed {seed}: the controller disagrees with the model:\n  {}",
        wrong.join("\n  ")
    );
    check_extents(seed, &volumes, &devices);

    // Every deleted volume is purged, by whichever controller is active now.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let volumes = vols
            .list(v1::ListVolumesRequest {})
            .await
            .unwrap()
            .into_inner()
            .volumes;
        let deleting: Vec<&v1::Volume> = volumes
            .iter()
            .filter(|v| matches!(vol_of(v), Vol::Deleting { .. }))
            .collect();
        if deleting.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: still DELETING after 15 s: {deleting:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("chaos: passed in {:.1?}", t0.elapsed());
}

/// Where the volumes and leases listed differ from the models.
fn disagreements(slots: &[&Slot], volumes: &[v1::Volume], leases: &[v1::Lease]) -> Vec<String> {
    let mut wrong = Vec::new();
    for s in slots {
        let got = volumes.iter().find(|v| v.name == s.name);
        let fine = match (&s.vol, got.map(vol_of)) {
            (Vol::Absent | Vol::Deleting { .. }, None) => true,
            (want, Some(got)) => *want == got,
            (Vol::Live { .. }, None) => false,
        };
        if !fine {
            wrong.push(format!("{}: model {:?}, controller {got:?}", s.name, s.vol));
        }
        let held: Vec<Lease> = leases
            .iter()
            .filter(|l| l.volume_name == s.name)
            .map(lease_of)
            .collect();
        let fine = match (&s.lease, &held[..]) {
            (None, []) => true,
            (Some(l), [h]) => h.id == l.id && h.host == l.host,
            _ => false,
        };
        if !fine {
            wrong.push(format!(
                "{}: model lease {:?}, controller {held:?}",
                s.name, s.lease
            ));
        }
    }
    for v in volumes
        .iter()
        .filter(|v| !slots.iter().any(|s| s.name == v.name))
    {
        wrong.push(format!("a volume no client made: {v:?}"));
    }
    wrong
}

/// No two extents share a byte of a device, each lies in what its device lends, and each copy
/// of a live volume covers exactly its size.
fn check_extents(seed: u64, volumes: &[v1::Volume], devices: &[v1::Device]) {
    let mut extents: Vec<(u64, u32, u64, u64, &str)> = volumes
        .iter()
        .flat_map(|v| {
            let name = v.name.as_str();
            v.extents
                .iter()
                .map(move |e| (e.node_id, e.device_id, e.offset, e.length, name))
        })
        .collect();
    extents.sort();
    for w in extents.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert!(
            (a.0, a.1) != (b.0, b.1) || a.2 + a.3 <= b.2,
            "seed {seed}: extents overlap on node {} device {}: {a:?} and {b:?}",
            a.0,
            a.1
        );
    }
    for e in &extents {
        let d = devices
            .iter()
            .find(|d| (d.node_id, d.device_id) == (e.0, e.1))
            .unwrap_or_else(|| panic!("seed {seed}: an extent on an unknown device: {e:?}"));
        assert!(
            e.2 >= d.lendable_start && e.2 + e.3 <= d.lendable_start + d.lendable_length,
            "seed {seed}: an extent outside what its device lends: {e:?}, {d:?}"
        );
    }
    for v in volumes
        .iter()
        .filter(|v| matches!(vol_of(v), Vol::Live { .. }))
    {
        let copies = match v.layout.as_ref() {
            Some(l) if l.kind == MIRROR => l.width,
            _ => 1,
        };
        for c in 0..copies {
            let sum: u64 = v
                .extents
                .iter()
                .filter(|e| e.copy == c)
                .map(|e| e.length)
                .sum();
            assert_eq!(sum, v.size_bytes, "seed {seed}: copy {c} of {v:?}");
        }
    }
}
