//! The control plane's state and the one function that changes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alloc::{self, Candidate, DeviceKey, Layout, Piece};

pub mod dirty;
mod failure;
mod freed;
pub mod qos;
pub mod rebuild;
mod resize;
pub mod validate;

use failure::mark_copies;
pub use freed::FreedRange;

/// Leases one tick ends at most.
pub const MAX_EXPIRIES_PER_TICK: usize = 25;

/// Nodes one tick marks down at most (a rack that lost power goes down over a few ticks, so a
/// tick stays one small transaction; etcd caps the operations of one).
pub const MAX_DOWNS_PER_TICK: usize = 25;

/// Usage records of ended leases one [`Command::ForgetUsage`] drops at most (the oldest
/// first); the retention job repeats it until none past the retention is left.
pub const MAX_FORGETS_PER_COMMAND: usize = 100;

/// Heartbeats missed before a node is marked down.
pub const MISSED_BEATS: u64 = 3;

/// Health of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Heartbeating.
    Up,
    /// Missed heartbeats.
    Down,
    /// Deregistered.
    Gone,
}

/// A device a node reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRec {
    /// Id on the node.
    pub device_id: u32,
    /// Path or name.
    pub path: String,
    /// Logical block size.
    pub block_size: u32,
    /// Device size.
    pub size: u64,
    /// First lendable byte.
    pub lendable_start: u64,
    /// Lendable length.
    pub lendable_length: u64,
    /// First byte of the owner's reserved area (never lent).
    #[serde(default)]
    pub reserved_start: u64,
    /// Length of the owner's reserved area.
    #[serde(default)]
    pub reserved_length: u64,
    /// 4 KiB random reads per second at QD32, as the node measured it (0: not known).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub read_iops: u64,
    /// 4 KiB random writes per second at QD32 (0: not known).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub write_iops: u64,
    /// 1 MiB sequential MiB/s (0: not known).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mib_s: u64,
}

/// Not written when zero: a record without the figure reads back the same, and states written
/// before it existed keep their layout.
fn is_zero(x: &u64) -> bool {
    *x == 0
}

/// A registered node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRec {
    /// Id.
    pub id: u64,
    /// Data-plane address.
    pub address: String,
    /// Version.
    pub version: String,
    /// Failure domain.
    pub failure_domain: String,
    /// Health.
    pub state: NodeState,
    /// Last heartbeat, ms.
    pub last_heartbeat_ms: u64,
    /// Devices.
    pub devices: Vec<DeviceRec>,
    /// The name on the node's certificate, bound at its first registration with one (empty:
    /// registered without identities, and then not written, as before identities).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Its data plane speaks mutual TLS (`dasmesh-node --tls`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data_tls: bool,
}

/// One extent of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentRec {
    /// The piece.
    pub piece: Piece,
    /// A mirror copy that missed writes.
    pub stale: bool,
    /// The epoch current when the extent was allocated, newer than any epoch a token for any
    /// part of its range carried before (0: allocated before extents had epochs).
    #[serde(default)]
    pub epoch: u64,
    /// A replacement being filled by its node ([`rebuild`]); `stale` until it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<rebuild::Rebuild>,
}

impl ExtentRec {
    /// The epoch a token for this extent carries under a lease of `lease_epoch`: never older
    /// than the extent, so that a range a newer (since deleted) volume used is not fenced off
    /// for its new owner, while a newer read-write lease still fences every older holder.
    pub fn token_epoch(&self, lease_epoch: u64) -> u64 {
        lease_epoch.max(self.epoch)
    }
}

/// Lending conditions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Requirements {
    /// Promised IOPS.
    pub min_iops: u64,
    /// Promised MiB/s.
    pub min_mib_s: u64,
    /// Price per GiB-hour.
    pub price_per_gib_hour: f64,
    /// Spread over failure domains.
    pub spread_failure_domains: bool,
    /// IOPS cap (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_iops: u64,
    /// MiB/s cap (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_mib_s: u64,
    /// Weight in spare capacity (0: the default).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub weight: u32,
}

fn is_zero_u32(x: &u32) -> bool {
    *x == 0
}

/// A volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeRec {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Layout.
    pub layout: Layout,
    /// Extents.
    pub extents: Vec<ExtentRec>,
    /// Lending conditions.
    pub req: Requirements,
    /// Creation time, ms.
    pub created_ms: u64,
    /// Fencing epoch.
    pub epoch: u64,
    /// Deleted; its extents stay allocated until they are discarded on the nodes.
    #[serde(default)]
    pub deleting: bool,
    /// Per stale mirror copy, the byte ranges written since it turned stale (whole
    /// [`dirty::REGION`]s, merged); a stale copy without an entry is to be copied in full.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub dirty: std::collections::BTreeMap<u32, Vec<(u64, u64)>>,
    /// Why the volume is not as it should be and the controller cannot mend it yet (a lost
    /// copy with no node to be rebuilt on); empty when nothing is wrong or it is being mended.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// A lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRec {
    /// Id.
    pub id: u64,
    /// Volume name.
    pub volume: String,
    /// Holder.
    pub host: String,
    /// Read-write (else read-only).
    pub rw: bool,
    /// Epoch its tokens carry.
    pub epoch: u64,
    /// Start, ms.
    pub started_ms: u64,
    /// Expiry, ms.
    pub expires_at_ms: u64,
    /// The public key (hex) its tokens are bound to; `None`: bearer tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// Usage of one lease, kept after the lease ends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRec {
    /// Lease.
    pub lease_id: u64,
    /// Host.
    pub host: String,
    /// Volume name.
    pub volume: String,
    /// Volume size while leased.
    pub size: u64,
    /// Price per GiB-hour.
    pub price_per_gib_hour: f64,
    /// Start, ms.
    pub started_ms: u64,
    /// End, ms (None while active).
    pub ended_ms: Option<u64>,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read ops.
    pub read_ops: u64,
    /// Write ops.
    pub write_ops: u64,
    /// What the nodes counted lately, for the rate it gets ([`UsageRec::recent`]).
    #[serde(default, skip_serializing_if = "Recent::is_empty")]
    pub recent: Recent,
}

/// A lease's operations and bytes since `since_ms`, and the rate of the window before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recent {
    /// Start of the window being counted.
    pub since_ms: u64,
    /// Operations and bytes counted in it.
    pub ops: u64,
    /// Bytes.
    pub bytes: u64,
    /// Operations and bytes a second in the window before.
    pub ops_s: f64,
    /// Bytes a second.
    pub bytes_s: f64,
}

/// How long a window of [`Recent`] runs.
pub const RECENT_WINDOW_MS: u64 = 5_000;

impl Recent {
    fn is_empty(&self) -> bool {
        *self == Recent::default()
    }

    /// Adds counts that arrived at `now_ms` for a lease that began at `start_ms` (the first
    /// counts cover the time since then).
    fn add(&mut self, now_ms: u64, start_ms: u64, ops: u64, bytes: u64) {
        if self.since_ms == 0 {
            self.since_ms = start_ms.clamp(1, now_ms.max(1));
        }
        if now_ms >= self.since_ms + RECENT_WINDOW_MS {
            (self.ops_s, self.bytes_s) = self.rates(now_ms);
            (self.since_ms, self.ops, self.bytes) = (now_ms, 0, 0);
        }
        self.ops = self.ops.saturating_add(ops);
        self.bytes = self.bytes.saturating_add(bytes);
    }

    fn rates(&self, now_ms: u64) -> (f64, f64) {
        let secs = now_ms.saturating_sub(self.since_ms).max(1) as f64 / 1000.0;
        (self.ops as f64 / secs, self.bytes as f64 / secs)
    }
}

impl UsageRec {
    /// Operations and bytes a second the lease got lately, as its nodes counted them (a
    /// mirror's write once per copy): over the open window once it is a second old (until the
    /// lease ended, if it did), else over the window before.
    pub fn recent(&self, now_ms: u64) -> (f64, f64) {
        let r = &self.recent;
        let now = self.ended_ms.unwrap_or(now_ms);
        if r.since_ms == 0 {
            (0.0, 0.0)
        } else if now >= r.since_ms + 1000 {
            r.rates(now)
        } else {
            (r.ops_s, r.bytes_s)
        }
    }
}

/// Everything the controller knows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Last id handed out (nodes, volumes and leases share the counter).
    pub last_id: u64,
    /// Last fencing epoch handed out. Epochs come from one counter for all volumes, so a range
    /// that passes from a deleted volume to a new one never sees its epoch go backwards (nodes
    /// fence by device range, not by volume).
    #[serde(default)]
    pub last_epoch: u64,
    /// Nodes by id.
    pub nodes: BTreeMap<u64, NodeRec>,
    /// Volumes by name.
    pub volumes: BTreeMap<String, VolumeRec>,
    /// Active leases by id.
    pub leases: BTreeMap<u64, LeaseRec>,
    /// Usage by lease id (active and ended).
    pub usage: BTreeMap<u64, UsageRec>,
    /// Ranges freed by shrinking a volume, not discarded on their nodes yet: nothing is
    /// allocated on them until they are.
    #[serde(default)]
    pub freed: Vec<FreedRange>,
    /// Revoked leases whose tokens have not expired yet: lease id -> the tokens' expiry, ms.
    /// Every heartbeat answer carries them so nodes refuse those tokens; `Tick` forgets an entry
    /// once its tokens expire on their own.
    #[serde(default)]
    pub revoked: BTreeMap<u64, u64>,
}

impl State {
    /// Whether the usage of any lease that ended before `before_ms` is still kept.
    pub fn usage_ended_before(&self, before_ms: u64) -> bool {
        self.usage
            .values()
            .any(|u| u.ended_ms.is_some_and(|end| end < before_ms))
    }
}

/// Per-lease counters reported with a heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Lease.
    pub lease_id: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read ops.
    pub read_ops: u64,
    /// Write ops.
    pub write_ops: u64,
}

/// Everything that can change the state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A node registers (id 0: new).
    Register {
        node_id: u64,
        address: String,
        version: String,
        failure_domain: String,
        /// The name on the node's certificate (empty without identities): bound to the id at
        /// the first registration that shows one.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        name: String,
        /// Its data plane speaks mutual TLS.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        data_tls: bool,
        now_ms: u64,
    },
    /// A node reports its devices.
    ReportDevices {
        node_id: u64,
        devices: Vec<DeviceRec>,
    },
    /// A heartbeat with usage.
    Heartbeat {
        node_id: u64,
        usage: Vec<Counters>,
        now_ms: u64,
        /// The rebuilds the node runs ([`rebuild::Progress`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rebuilds: Vec<rebuild::Progress>,
    },
    /// Mark nodes that missed [`MISSED_BEATS`] beats down, end expired leases.
    Tick { now_ms: u64, heartbeat_ms: u64 },
    /// A node leaves cleanly.
    Deregister { node_id: u64 },
    /// Drop the usage records of leases that ended before `before_ms` (billing has had them):
    /// the usage table is bounded by a retention, not by the pool's whole history. At most
    /// [`MAX_FORGETS_PER_COMMAND`], the oldest first.
    ForgetUsage { before_ms: u64 },
    /// Create a volume.
    CreateVolume {
        name: String,
        size: u64,
        layout: Layout,
        req: Requirements,
        now_ms: u64,
        /// The part of each device's capability kept back from promises, percent ([`qos`]).
        #[serde(default = "qos::default_headroom")]
        headroom_pct: u64,
    },
    /// Resize a volume.
    ResizeVolume {
        name: String,
        size: u64,
        /// As in `CreateVolume`.
        #[serde(default = "qos::default_headroom")]
        headroom_pct: u64,
    },
    /// Delete a volume: it turns DELETING until its extents are discarded.
    DeleteVolume { name: String },
    /// Free a DELETING volume's extents (after they were discarded on the nodes).
    PurgeVolume { name: String },
    /// A freed range was discarded on its node: it can be allocated again.
    Discarded {
        key: DeviceKey,
        offset: u64,
        length: u64,
    },
    /// Take a lease.
    Mount {
        volume: String,
        host: String,
        rw: bool,
        ttl_ms: u64,
        now_ms: u64,
        /// The public key (hex) the lease's tokens are bound to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holder: Option<String>,
    },
    /// Extend a lease.
    Renew {
        lease_id: u64,
        ttl_ms: u64,
        now_ms: u64,
        /// The epochs of the rebuilding extents the writer now writes to ([`rebuild`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        joined: Vec<u64>,
    },
    /// End a lease.
    Unmount { lease_id: u64, now_ms: u64 },
    /// End a lease and fence its tokens.
    Revoke { lease_id: u64, now_ms: u64 },
    /// The read-write holder of a mirror reports copies that failed a write: every extent of
    /// them turns stale. The reason is kept in the store's command log.
    FailCopies {
        lease_id: u64,
        copies: Vec<u32>,
        reason: String,
        now_ms: u64,
        /// Byte ranges the copies may lack ([`dirty`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dirty: Vec<(u64, u64)>,
        /// The copies were not sent the writes (they took none): only what they miss is said.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        not_sent: bool,
    },
    /// The read-write holder of a mirror copied the data back onto stale copies: they are
    /// healthy again.
    RebuiltCopies {
        lease_id: u64,
        copies: Vec<u32>,
        now_ms: u64,
    },
    /// Give a mirror copy new extents (on `node`, or wherever fits) that their nodes rebuild
    /// from a healthy copy; the old ones are freed ([`rebuild`]). `auto`: the controller's own
    /// policy for a lost node, which records a pool without room in the volume's note rather
    /// than failing.
    ReplaceCopy {
        volume: String,
        copy: u32,
        node: Option<u64>,
        auto: bool,
        /// As in `CreateVolume`.
        #[serde(default = "qos::default_headroom")]
        headroom_pct: u64,
    },
    /// `then` (a resize, delete or copy replacement of `volume`), only if the volume's
    /// [`version`] is still `version`: a change made from a stale view is refused
    /// ([`Error::Stale`]) rather than applied blindly.
    IfVersion {
        volume: String,
        version: u64,
        then: Box<Command>,
    },
}

/// The version of a volume: a 53-bit hash of its record, so anything that changes the volume
/// (size, extents, copies' health, dirty ranges, epoch, note) changes it, without a counter to
/// keep in step with every command. Below 2^53 so JSON numbers carry it exactly; never 0 (the
/// API's "no check").
pub fn version(v: &VolumeRec) -> u64 {
    // FNV-1a over the record's JSON: the same on every controller and every run (std's
    // hasher promises neither).
    let bytes = serde_json::to_vec(v).expect("a volume record serializes");
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (h & ((1 << 53) - 1)).max(1)
}

/// What a command produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A node as now recorded.
    Node(NodeRec),
    /// A volume as now recorded.
    Volume(VolumeRec),
    /// A lease (with its volume, for mount information).
    Lease(LeaseRec, VolumeRec),
    /// Nothing to return.
    Done,
}

/// Why a command was refused (the state is unchanged).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    /// No such node (ids are assigned by the controller, never chosen by a node).
    #[error(
        "unknown node {0}: a node the controller does not know registers with id 0 to get a new id"
    )]
    UnknownNode(u64),
    /// A node's certificate names a node that is registered from another address.
    #[error(
        "node name {name:?} is registered as node {id} from {address}: refusing it from {from} (two nodes with one certificate?)"
    )]
    NameTaken {
        /// The name.
        name: String,
        /// The node that holds it.
        id: u64,
        /// Where that node is.
        address: String,
        /// Where this registration came from.
        from: String,
    },
    /// A node's certificate is not the one its id was registered with.
    #[error("node {id} is bound to the certificate of {bound:?}, not {name:?}")]
    NotThisNode {
        /// The node.
        id: u64,
        /// The name it was registered with.
        bound: String,
        /// The name shown now.
        name: String,
    },
    /// No such volume.
    #[error("unknown volume {0:?}")]
    UnknownVolume(String),
    /// No such lease.
    #[error("unknown lease {0}")]
    UnknownLease(u64),
    /// Name taken.
    #[error("volume {0:?} already exists")]
    VolumeExists(String),
    /// The volume is leased and the command would alter it.
    #[error("volume {volume:?} is leased (lease {lease} held by {host:?}); {what} is refused while it is")]
    Leased {
        volume: String,
        lease: u64,
        host: String,
        what: &'static str,
    },
    /// A second read-write lease.
    #[error("volume {volume:?} already has a read-write lease (lease {lease} held by {host:?})")]
    ReadWriteHeld {
        volume: String,
        lease: u64,
        host: String,
    },
    /// The pool cannot satisfy the request.
    #[error("cannot allocate: {0}")]
    Insufficient(String),
    /// A bad argument.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A counter (ids, epochs) would wrap; ids are never reused.
    #[error("the controller has handed out every {0}; none is reused")]
    Exhausted(&'static str),
    /// Only the volume's current read-write lease may mark mirror copies stale or rebuilt.
    #[error("lease {lease} is not the current read-write lease of volume {volume:?} ({why}); it cannot mark copies stale or rebuilt")]
    NotCurrentWriter {
        lease: u64,
        volume: String,
        why: NotWriter,
    },
    /// Marking these copies stale would leave the mirror without a healthy copy.
    #[error("volume {volume:?}: marking copies {copies:?} stale would leave no healthy copy")]
    LastHealthyCopy { volume: String, copies: Vec<u32> },
    /// The volume changed since the caller read it ([`Command::IfVersion`]).
    #[error("volume {volume:?} has changed since it was read (version {seen}, now {now}): nothing was done; look at it again and retry if the change still makes sense")]
    Stale { volume: String, seen: u64, now: u64 },
}

/// Why a lease is not its volume's current read-write lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotWriter {
    /// It was unmounted, revoked or expired and reaped.
    Ended,
    /// Its expiry has passed (not reaped yet).
    Expired { expires_at_ms: u64 },
    /// It is read-only.
    ReadOnly,
    /// A newer epoch fenced its tokens.
    Fenced { lease_epoch: u64, volume_epoch: u64 },
}

impl std::fmt::Display for NotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotWriter::Ended => write!(f, "it has ended"),
            NotWriter::Expired { expires_at_ms } => write!(f, "it expired at {expires_at_ms} ms"),
            NotWriter::ReadOnly => write!(f, "it is read-only"),
            NotWriter::Fenced {
                lease_epoch,
                volume_epoch,
            } => write!(
                f,
                "its epoch {lease_epoch} is fenced by the volume's epoch {volume_epoch}"
            ),
        }
    }
}

/// Applies one command. On error nothing has changed.
///
/// The commands a host or node sends all the time (mount, renew, unmount, heartbeat, tick)
/// check everything before they change anything, so they are applied in place; every other
/// command is applied to a copy that replaces the state only if it succeeds. (A copy costs as
/// much as the whole state: the usage of every past lease included.)
pub fn apply(s: &mut State, cmd: Command) -> Result<Outcome, Error> {
    if matches!(
        cmd,
        Command::Mount { .. }
            | Command::Renew { .. }
            | Command::Unmount { .. }
            | Command::Heartbeat { .. }
            | Command::Tick { .. }
    ) {
        return apply_inner(s, cmd);
    }
    let mut next = s.clone();
    let out = apply_inner(&mut next, cmd)?;
    *s = next;
    Ok(out)
}

fn new_id(s: &mut State) -> Result<u64, Error> {
    s.last_id = s.last_id.checked_add(1).ok_or(Error::Exhausted("id"))?;
    Ok(s.last_id)
}

fn new_epoch(s: &mut State) -> Result<u64, Error> {
    s.last_epoch = s
        .last_epoch
        .checked_add(1)
        .ok_or(Error::Exhausted("epoch"))?;
    Ok(s.last_epoch)
}

fn node_mut(s: &mut State, id: u64) -> Result<&mut NodeRec, Error> {
    s.nodes.get_mut(&id).ok_or(Error::UnknownNode(id))
}

fn volume<'a>(s: &'a State, name: &str) -> Result<&'a VolumeRec, Error> {
    s.volumes
        .get(name)
        .ok_or_else(|| Error::UnknownVolume(name.to_string()))
}

fn first_lease<'a>(s: &'a State, volume: &str) -> Option<&'a LeaseRec> {
    s.leases.values().find(|l| l.volume == volume)
}

fn refuse_if_deleting(v: &VolumeRec) -> Result<(), Error> {
    if v.deleting {
        return Err(Error::Invalid(format!(
            "volume {:?} is being deleted",
            v.name
        )));
    }
    Ok(())
}

fn refuse_if_leased(s: &State, volume: &str, what: &'static str) -> Result<(), Error> {
    match first_lease(s, volume) {
        Some(l) => Err(Error::Leased {
            volume: volume.into(),
            lease: l.id,
            host: l.host.clone(),
            what,
        }),
        None => Ok(()),
    }
}

/// The allocator's view: free ranges of every device of every node that is up.
pub fn candidates(s: &State) -> Vec<Candidate> {
    let mut used: BTreeMap<DeviceKey, Vec<(u64, u64)>> = BTreeMap::new();
    for v in s.volumes.values() {
        for e in &v.extents {
            used.entry(e.piece.key)
                .or_default()
                .push((e.piece.offset, e.piece.length));
        }
    }
    for f in &s.freed {
        used.entry(f.key).or_default().push((f.offset, f.length));
    }
    s.nodes
        .values()
        .filter(|n| n.state == NodeState::Up)
        .flat_map(|n| {
            let used = &used;
            n.devices.iter().map(move |d| {
                let key = DeviceKey {
                    node: n.id,
                    device: d.device_id,
                };
                Candidate {
                    key,
                    failure_domain: n.failure_domain.clone(),
                    free: alloc::free_ranges(
                        d.lendable_start,
                        d.lendable_length,
                        used.get(&key).map(Vec::as_slice).unwrap_or(&[]),
                    ),
                }
            })
        })
        .collect()
}

fn end_lease(s: &mut State, id: u64, now_ms: u64) -> Result<LeaseRec, Error> {
    let l = s.leases.remove(&id).ok_or(Error::UnknownLease(id))?;
    if let Some(u) = s.usage.get_mut(&id) {
        u.ended_ms = Some(now_ms);
    }
    Ok(l)
}

fn apply_inner(s: &mut State, cmd: Command) -> Result<Outcome, Error> {
    match cmd {
        Command::Register {
            node_id,
            address,
            version,
            failure_domain,
            name,
            data_tls,
            now_ms,
        } => {
            validate::registration(&address, &version, &failure_domain)?;
            // The node that holds this name now, if any (a node that left for good frees it).
            let holder = (!name.is_empty())
                .then(|| {
                    s.nodes
                        .values()
                        .find(|n| n.name == name && n.state != NodeState::Gone)
                })
                .flatten()
                .map(|n| (n.id, n.address.clone()));
            // A non-zero id must be one this controller handed out: a claimed id would move the
            // counter (or wrap it) and later ids would collide with real nodes and leases.
            let id = match (node_id, holder) {
                // The named node again, from where it was (it lost its state directory).
                (0, Some((id, at))) if at == address => id,
                (_, Some((id, at))) if id != node_id => {
                    return Err(Error::NameTaken {
                        name,
                        id,
                        address: at,
                        from: address,
                    })
                }
                (0, None) => new_id(s)?,
                (id, _) => match s.nodes.get(&id) {
                    Some(n) if !name.is_empty() && !n.name.is_empty() && n.name != name => {
                        return Err(Error::NotThisNode {
                            id,
                            bound: n.name.clone(),
                            name,
                        })
                    }
                    Some(_) => id,
                    None => return Err(Error::UnknownNode(id)),
                },
            };
            let n = s.nodes.entry(id).or_insert_with(|| NodeRec {
                id,
                address: address.clone(),
                version: version.clone(),
                failure_domain: failure_domain.clone(),
                state: NodeState::Up,
                last_heartbeat_ms: now_ms,
                devices: Vec::new(),
                name: String::new(),
                data_tls,
            });
            if !name.is_empty() {
                n.name = name;
            }
            n.address = address;
            n.version = version;
            n.failure_domain = failure_domain;
            n.data_tls = data_tls;
            n.state = NodeState::Up;
            n.last_heartbeat_ms = now_ms;
            Ok(Outcome::Node(n.clone()))
        }
        Command::ReportDevices { node_id, devices } => {
            node_mut(s, node_id)?;
            validate::devices(s, node_id, &devices)?;
            // Extents already on a device must stay inside what it now lends.
            for v in s.volumes.values() {
                for e in v.extents.iter().filter(|e| e.piece.key.node == node_id) {
                    let fits = devices.iter().any(|d| {
                        d.device_id == e.piece.key.device
                            && e.piece.offset >= d.lendable_start
                            && e.piece.offset + e.piece.length
                                <= d.lendable_start + d.lendable_length
                    });
                    if !fits {
                        return Err(Error::Invalid(format!(
                            "device {} no longer lends the extent of volume {:?} at {}",
                            e.piece.key.device, v.name, e.piece.offset
                        )));
                    }
                }
            }
            let n = node_mut(s, node_id)?;
            n.devices = devices;
            Ok(Outcome::Node(n.clone()))
        }
        Command::Heartbeat {
            node_id,
            usage,
            now_ms,
            rebuilds,
        } => {
            if rebuilds.len() > rebuild::MAX_REPORTS {
                return Err(Error::Invalid(format!(
                    "a heartbeat reports {} rebuilds, at most {} are accepted",
                    rebuilds.len(),
                    rebuild::MAX_REPORTS
                )));
            }
            if usage.len() > validate::MAX_USAGE_ENTRIES {
                return Err(Error::Invalid(format!(
                    "a heartbeat carries {} usage entries, at most {} are accepted",
                    usage.len(),
                    validate::MAX_USAGE_ENTRIES
                )));
            }
            let n = node_mut(s, node_id)?;
            n.last_heartbeat_ms = now_ms;
            // A node that beats is alive, whether it missed beats or deregistered before.
            n.state = NodeState::Up;
            for c in usage {
                if let Some(u) = s.usage.get_mut(&c.lease_id) {
                    // Counters only meter: they stop at the top rather than wrap to nothing.
                    u.read_bytes = u.read_bytes.saturating_add(c.read_bytes);
                    u.write_bytes = u.write_bytes.saturating_add(c.write_bytes);
                    u.read_ops = u.read_ops.saturating_add(c.read_ops);
                    u.write_ops = u.write_ops.saturating_add(c.write_ops);
                    u.recent.add(
                        now_ms,
                        u.started_ms,
                        c.read_ops.saturating_add(c.write_ops),
                        c.read_bytes.saturating_add(c.write_bytes),
                    );
                }
            }
            if !rebuilds.is_empty() {
                rebuild::progress(s, node_id, &rebuilds, now_ms);
            }
            Ok(Outcome::Done)
        }
        Command::Tick {
            now_ms,
            heartbeat_ms,
        } => {
            let silent = s
                .nodes
                .values_mut()
                .filter(|n| {
                    n.state == NodeState::Up
                        && now_ms.saturating_sub(n.last_heartbeat_ms)
                            > MISSED_BEATS.saturating_mul(heartbeat_ms)
                })
                .take(MAX_DOWNS_PER_TICK);
            for n in silent {
                n.state = NodeState::Down;
            }
            let expired: Vec<u64> = s
                .leases
                .values()
                .filter(|l| l.expires_at_ms <= now_ms)
                .map(|l| l.id)
                .collect();
            // A bounded number per tick, so one commit stays small (etcd caps a transaction);
            // the rest end on the next ticks, a heartbeat interval apart.
            for id in expired.into_iter().take(MAX_EXPIRIES_PER_TICK) {
                end_lease(s, id, now_ms)?;
            }
            s.revoked.retain(|_, expires_at_ms| *expires_at_ms > now_ms);
            Ok(Outcome::Done)
        }
        Command::ForgetUsage { before_ms } => {
            let mut old: Vec<(u64, u64)> = s
                .usage
                .iter()
                .filter_map(|(&id, u)| u.ended_ms.filter(|&end| end < before_ms).map(|e| (e, id)))
                .collect();
            old.sort_unstable();
            for (_, id) in old.into_iter().take(MAX_FORGETS_PER_COMMAND) {
                s.usage.remove(&id);
            }
            Ok(Outcome::Done)
        }
        Command::Deregister { node_id } => {
            let n = node_mut(s, node_id)?;
            n.state = NodeState::Gone;
            Ok(Outcome::Node(n.clone()))
        }
        Command::CreateVolume {
            name,
            size,
            layout,
            req,
            now_ms,
            headroom_pct,
        } => {
            validate::volume_name(&name)?;
            if s.volumes.contains_key(&name) {
                return Err(Error::VolumeExists(name));
            }
            validate::volume_size(&name, size)?;
            validate::layout(layout)?;
            validate::requirements(&req, layout)?;
            let all = candidates(s);
            let up = all.len();
            validate::headroom(headroom_pct)?;
            let cands = qos::admissible(s, all, layout, &req, headroom_pct)?;
            let pieces = alloc::allocate(&cands, layout, size, req.spread_failure_domains)
                .map_err(|why| {
                    Error::Insufficient(qos::among(why, cands.len(), up, layout, &req))
                })?;
            let epoch = new_epoch(s)?;
            let v = VolumeRec {
                id: new_id(s)?,
                name: name.clone(),
                size: alloc::align_up(size),
                layout,
                extents: pieces
                    .into_iter()
                    .map(|piece| ExtentRec {
                        piece,
                        stale: false,
                        epoch,
                        rebuild: None,
                    })
                    .collect(),
                req,
                created_ms: now_ms,
                epoch,
                deleting: false,
                dirty: Default::default(),
                note: String::new(),
            };
            s.volumes.insert(name, v.clone());
            Ok(Outcome::Volume(v))
        }
        Command::ResizeVolume {
            name,
            size,
            headroom_pct,
        } => {
            validate::headroom(headroom_pct)?;
            validate::volume_name(&name)?;
            validate::volume_size(&name, size)?;
            resize::resize(s, &name, size, headroom_pct).map(Outcome::Volume)
        }
        Command::IfVersion {
            volume: name,
            version: seen,
            then,
        } => {
            let of = match &*then {
                Command::ResizeVolume { name, .. } | Command::DeleteVolume { name } => name,
                Command::ReplaceCopy { volume, .. } => volume,
                other => {
                    return Err(Error::Invalid(format!(
                        "a version check guards a resize, delete or copy replacement, not {}",
                        validate::truncate(&format!("{other:?}"), 40)
                    )))
                }
            };
            if *of != name {
                return Err(Error::Invalid(format!(
                    "the version checked is of volume {:?}, the change is to {:?}",
                    validate::truncate(&name, 130),
                    validate::truncate(of, 130)
                )));
            }
            validate::volume_name(&name)?;
            let now = version(volume(s, &name)?);
            if now != seen {
                return Err(Error::Stale {
                    volume: name,
                    seen,
                    now,
                });
            }
            apply_inner(s, *then)
        }
        Command::DeleteVolume { name } => {
            validate::volume_name(&name)?;
            volume(s, &name)?;
            refuse_if_leased(s, &name, "deleting")?;
            let v = s.volumes.get_mut(&name).expect("checked above");
            v.deleting = true;
            Ok(Outcome::Volume(v.clone()))
        }
        Command::PurgeVolume { name } => {
            validate::volume_name(&name)?;
            if !volume(s, &name)?.deleting {
                return Err(Error::Invalid(format!(
                    "volume {name:?} is not being deleted"
                )));
            }
            s.volumes.remove(&name);
            Ok(Outcome::Done)
        }
        Command::Discarded {
            key,
            offset,
            length,
        } => freed::discarded(s, key, offset, length).map(|()| Outcome::Done),
        Command::Mount {
            volume: name,
            host,
            rw,
            ttl_ms,
            now_ms,
            holder,
        } => {
            validate::volume_name(&name)?;
            validate::host_id(&host)?;
            if let Some(h) = &holder {
                validate::holder_key(h)?;
            }
            let expires_at_ms = validate::expiry(ttl_ms, now_ms)?;
            let v = volume(s, &name)?.clone();
            refuse_if_deleting(&v)?;
            if rw {
                if let Some(l) = s.leases.values().find(|l| l.volume == name && l.rw) {
                    return Err(Error::ReadWriteHeld {
                        volume: name,
                        lease: l.id,
                        host: l.host.clone(),
                    });
                }
            }
            // Both counters checked before either moves: a refusal changes nothing (a mount
            // is applied in place, see `apply`).
            if s.last_id == u64::MAX {
                return Err(Error::Exhausted("id"));
            }
            if rw && s.last_epoch == u64::MAX {
                return Err(Error::Exhausted("epoch"));
            }
            let epoch = if rw { new_epoch(s)? } else { v.epoch };
            let id = new_id(s)?;
            let l = LeaseRec {
                id,
                volume: name.clone(),
                host: host.clone(),
                rw,
                epoch,
                started_ms: now_ms,
                expires_at_ms,
                holder,
            };
            let vol = s.volumes.get_mut(&name).expect("checked above");
            vol.epoch = epoch;
            let vol = vol.clone();
            s.leases.insert(id, l.clone());
            s.usage.insert(
                id,
                UsageRec {
                    lease_id: id,
                    host,
                    volume: name,
                    size: vol.size,
                    price_per_gib_hour: vol.req.price_per_gib_hour,
                    started_ms: now_ms,
                    ..Default::default()
                },
            );
            Ok(Outcome::Lease(l, vol))
        }
        Command::Renew {
            lease_id,
            ttl_ms,
            now_ms,
            joined,
        } => {
            let expires_at_ms = validate::expiry(ttl_ms, now_ms)?;
            let volume = &s
                .leases
                .get(&lease_id)
                .ok_or(Error::UnknownLease(lease_id))?
                .volume;
            // A renewal hands out tokens at the volume's current epoch.
            let vol = s
                .volumes
                .get(volume)
                .ok_or_else(|| Error::UnknownVolume(volume.clone()))?
                .clone();
            let l = s.leases.get_mut(&lease_id).expect("looked up above");
            l.expires_at_ms = expires_at_ms;
            l.epoch = vol.epoch;
            let l = l.clone();
            let mut vol = vol;
            if l.rw && !joined.is_empty() {
                rebuild::joined(&mut vol, &joined);
                s.volumes.insert(vol.name.clone(), vol.clone());
            }
            Ok(Outcome::Lease(l, vol))
        }
        Command::Unmount { lease_id, now_ms } => {
            end_lease(s, lease_id, now_ms)?;
            Ok(Outcome::Done)
        }
        Command::Revoke { lease_id, now_ms } => {
            let l = end_lease(s, lease_id, now_ms)?;
            // Nodes refuse this lease's tokens (their nonce is the lease id) until they expire.
            s.revoked.insert(l.id, l.expires_at_ms);
            // Only a writer's revocation raises the epoch: that fences its in-flight writes on
            // every node. A reader has nothing to fence, and raising the epoch would fence the
            // volume's current writer instead (its failure reports would then be refused).
            if l.rw {
                let epoch = new_epoch(s)?;
                let vol = s
                    .volumes
                    .get_mut(&l.volume)
                    .ok_or_else(|| Error::UnknownVolume(l.volume.clone()))?;
                vol.epoch = epoch;
            }
            let vol = volume(s, &l.volume)?;
            Ok(Outcome::Volume(vol.clone()))
        }
        Command::FailCopies {
            lease_id,
            copies,
            reason,
            now_ms,
            dirty,
            not_sent,
        } => {
            validate::copies(&copies)?;
            validate::reason(&reason)?;
            dirty::check(&dirty)?;
            mark_copies(s, lease_id, &copies, Some((&dirty, not_sent)), now_ms).map(Outcome::Volume)
        }
        Command::RebuiltCopies {
            lease_id,
            copies,
            now_ms,
        } => {
            validate::copies(&copies)?;
            mark_copies(s, lease_id, &copies, None, now_ms).map(Outcome::Volume)
        }
        Command::ReplaceCopy {
            volume,
            copy,
            node,
            auto,
            headroom_pct,
        } => {
            validate::volume_name(&volume)?;
            validate::headroom(headroom_pct)?;
            rebuild::replace(s, &volume, copy, node, auto, headroom_pct).map(Outcome::Volume)
        }
    }
}

#[cfg(test)]
mod tests;
