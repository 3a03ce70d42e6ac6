//! The controller proper: the live state, its store, the token-signing keys, and
//! [`Controller::execute`], the one way the state changes (a group commit through the store).

use std::sync::{Arc, Mutex, RwLock};

use dasmesh_api::v1;
use dasmesh_wire::{Claim, DeviceId, Epoch, NodeId, Rights, SigningKey, VolumeId};

use crate::keys::Keys;
use crate::service::msg::{extent_msg, lease_msg};
use crate::state::{apply, Command, Error, LeaseRec, Outcome, State, VolumeRec};
use crate::store::records::{self, Rec};
use crate::store::{Store, StoreError};

/// The controller: the live state, its store, and the token-signing keys.
pub struct Controller {
    state: Mutex<State>,
    /// A second copy of the live state, changed only by the committer: each batch is applied
    /// to it first, so a batch copies nothing (see [`Controller::commit_batch`]).
    shadow: Mutex<State>,
    store: Box<dyn Store>,
    /// The key ring ([`crate::keys`]): replaced whole by a rotation, once stored.
    keys: RwLock<Keys>,
    /// Held by the one caller that rotates the keys.
    rotating: Mutex<()>,
    /// Heartbeat interval handed to nodes.
    pub heartbeat_ms: u64,
    /// Commands waiting for the next commit, and whether a committer is draining them (see
    /// [`Controller::execute`]).
    queue: Mutex<Queue>,
}

/// The commands waiting for a commit. `committer` is true while one thread drains `pending`;
/// it is set and cleared only with the lock held, so no command is left without a committer.
#[derive(Default)]
struct Queue {
    pending: Vec<Waiting>,
    committer: bool,
}

/// A command waiting in a batch, and where its result goes.
struct Waiting {
    cmd: Command,
    done: Reply,
}

/// Where a command's result goes: a task awaiting it, or a thread blocked on it.
enum Reply {
    Task(tokio::sync::oneshot::Sender<Result<Outcome, CtlError>>),
    Thread(std::sync::mpsc::SyncSender<Result<Outcome, CtlError>>),
}

impl Reply {
    fn send(self, r: Result<Outcome, CtlError>) {
        // A caller that went away (a cancelled request) no longer wants the answer; the
        // command was committed all the same.
        let _ = match self {
            Reply::Task(tx) => tx.send(r).map_err(drop),
            Reply::Thread(tx) => tx.send(r).map_err(drop),
        };
    }
}

/// Sends each answer to its caller.
fn answer(answers: Vec<(Reply, Result<Outcome, CtlError>)>) {
    for (done, r) in answers {
        done.send(r);
    }
}

/// What a caller sees when the committer panicked before answering it.
fn committer_lost() -> CtlError {
    CtlError::Store(StoreError::Db(
        "the commit of this command failed (the committer panicked); it may not have been applied"
            .into(),
    ))
}

/// A refusal or a failure of the controller.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CtlError {
    /// The logic refused.
    #[error(transparent)]
    Refused(#[from] Error),
    /// The store failed: nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Controller {
    /// A controller over `store` (its state loaded; every node counts as having beaten now),
    /// signing with `keys` (a ring, or one key).
    pub fn new(
        store: Box<dyn Store>,
        keys: impl Into<Keys>,
        heartbeat_ms: u64,
    ) -> Result<Self, StoreError> {
        let state = store.load(now_ms())?;
        Ok(Self::with_state(state, store, keys, heartbeat_ms))
    }

    /// A controller over `store` holding `state` already (loaded by the caller).
    pub fn with_state(
        state: State,
        store: Box<dyn Store>,
        keys: impl Into<Keys>,
        heartbeat_ms: u64,
    ) -> Self {
        Self {
            shadow: Mutex::new(state.clone()),
            state: Mutex::new(state),
            store,
            keys: RwLock::new(keys.into()),
            rotating: Mutex::new(()),
            heartbeat_ms,
            queue: Mutex::new(Queue::default()),
        }
    }

    /// Applies a command: on a copy, then stored, then made live. Commands that arrive while a
    /// commit is under way wait for it and then go together, in arrival order, as one batch in
    /// one store transaction (a group commit: one disk sync, or one etcd round trip, for all of
    /// them; at most [`MAX_BATCH`] commands, and no more than fit one transaction of the store
    /// (see [`ops_bound`])). A command that changes no record
    /// (a heartbeat from a node that is up, a tick with nothing to do) writes nothing. A
    /// caller that finds no committer at work commits on its own thread until the queue is
    /// empty; the others wait for their answer.
    pub fn execute(&self, cmd: Command) -> Result<Outcome, CtlError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.enqueue(cmd, Reply::Thread(tx)) {
            // No committer was at work: this thread is it until the queue is empty.
            answer(self.drain());
        }
        rx.recv().unwrap_or_else(|_| Err(committer_lost()))
    }

    /// [`Controller::execute`] for async callers. The commit happens on a thread of tokio's
    /// blocking pool, one at a time: the runtime's workers go on reading requests meanwhile and
    /// the commands that arrive join the next batch, and a waiting request costs a task, not a
    /// thread (a thread per request, each woken after every batch, spent a third of the
    /// controller's time switching between threads).
    pub async fn run(self: &Arc<Self>, cmd: Command) -> Result<Outcome, CtlError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.enqueue(cmd, Reply::Task(tx)) {
            let me = Arc::clone(self);
            tokio::task::spawn_blocking(move || {
                let last = me.drain();
                // Let go first: whoever drops the controller after its last answer drops it
                // for good (its store closed), not a committer still on its way out.
                drop(me);
                answer(last);
            });
        }
        rx.await.unwrap_or_else(|_| Err(committer_lost()))
    }

    /// Queues `cmd`; true if the caller must start the committer (none was at work).
    fn enqueue(&self, cmd: Command, done: Reply) -> bool {
        let mut q = lock(&self.queue);
        q.pending.push(Waiting { cmd, done });
        !std::mem::replace(&mut q.committer, true)
    }

    /// The committer: batches of at most the store's size, in arrival order, until no command
    /// waits. Only one runs at a time (see [`Queue::committer`]). Returns the answers of the
    /// last batch, unsent: the queue was empty then, so they may be the controller's last.
    fn drain(&self) -> Vec<(Reply, Result<Outcome, CtlError>)> {
        let Some(mut batch) = self.take_batch() else {
            return Vec::new();
        };
        loop {
            // A panic (a bug, or a store that panics) fails its batch alone: its callers get
            // `committer_lost` as their answers drop, and the committer goes on with the
            // commands queued meanwhile, so none is left without one.
            let answers =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.commit_batch(batch)))
                    .unwrap_or_else(|_| {
                        tracing::error!("a commit panicked: its commands were not applied");
                        Vec::new()
                    });
            match self.take_batch() {
                Some(next) => {
                    answer(answers);
                    batch = next;
                }
                None => return answers,
            }
        }
    }

    /// The next batch, or `None` with the committer's flag cleared if no command waits.
    fn take_batch(&self) -> Option<Vec<Waiting>> {
        let mut q = lock(&self.queue);
        if q.pending.is_empty() {
            q.committer = false;
            return None;
        }
        // Commands while their bounds fit the store's transaction (the meta record, shared by
        // the batch, kept aside), and always the first.
        let budget = self.store.max_ops().saturating_sub(1);
        let mut used = 0usize;
        let n = q
            .pending
            .iter()
            .take(MAX_BATCH)
            .take_while(|w| {
                used = used.saturating_add(ops_bound(&w.cmd));
                used <= budget
            })
            .count()
            .max(1);
        Some(q.pending.drain(..n).collect())
    }

    /// Applies `batch` to a copy of the live state, commits what changed, then makes the copy
    /// live and returns each command's answer. Only the committer calls it, so the live state
    /// changes nowhere else and readers see it whole before and after.
    fn commit_batch(&self, batch: Vec<Waiting>) -> Vec<(Reply, Result<Outcome, CtlError>)> {
        // The batch goes to the shadow copy (equal to the live state between batches); the
        // records that differ are committed, and then the same commands are applied to the
        // live state too. `apply` is deterministic, so both copies stay equal; the commands
        // that are not applied in place copy the state inside `apply`, once each.
        let mut shadow = self.shadow.lock().unwrap_or_else(|poisoned| {
            // A committer panicked half way through a batch: the shadow may hold commands
            // that never went live. It starts again from the live state.
            self.shadow.clear_poison();
            let mut g = poisoned.into_inner();
            *g = lock(&self.state).clone();
            g
        });
        let mut applied = Vec::new();
        let mut answers = Vec::with_capacity(batch.len());
        // The records the batch can have changed, while every command says (see `touched`).
        let mut recs: Option<Vec<Rec>> = Some(Vec::new());
        for w in batch {
            let last_id = shadow.last_id;
            let pre = recs.as_ref().and_then(|_| touched(&shadow, &w.cmd));
            let r = apply(&mut shadow, w.cmd.clone());
            match (&mut recs, pre) {
                (Some(all), Some(keys)) => {
                    all.extend(keys);
                    // Records made under the ids it took.
                    for id in last_id.saturating_add(1)..=shadow.last_id {
                        all.extend([Rec::Node(id), Rec::Lease(id), Rec::Usage(id)]);
                    }
                }
                _ => recs = None,
            }
            if r.is_ok() {
                applied.push(w.cmd);
            }
            answers.push((w.done, r.map_err(CtlError::from)));
        }
        let diff = {
            let live = lock(&self.state);
            match &recs {
                Some(recs) => {
                    let d = records::diff_of(&live, &shadow, recs);
                    #[cfg(debug_assertions)]
                    if let (Ok(d), Ok(mut full)) = (&d, records::diff(&live, &shadow)) {
                        let mut d = d.clone();
                        d.sort();
                        full.sort();
                        assert_eq!(d, full, "a batch changed records it did not name");
                    }
                    d
                }
                None => records::diff(&live, &shadow),
            }
        };
        let stored = match diff {
            Ok(changes) if changes.is_empty() => Ok(()),
            Ok(changes) => self.store.commit(&changes, &applied),
            Err(e) => Err(e),
        };
        match stored {
            Ok(()) => {
                let mut live = lock(&self.state);
                for cmd in applied {
                    apply(&mut live, cmd).expect("a command applied to an equal state again");
                }
                debug_assert!(*live == *shadow, "the live state and its shadow differ");
            }
            Err(e) => {
                // Nothing is live: the shadow goes back to the live state.
                *shadow = lock(&self.state).clone();
                for (_, r) in &mut answers {
                    if r.is_ok() {
                        *r = Err(CtlError::Store(e.clone()));
                    }
                }
            }
        }
        answers
    }

    /// A read-only look at the state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&lock(&self.state))
    }

    /// The key ring now.
    pub fn keys(&self) -> Keys {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The key tokens are signed with at `now_ms`.
    pub fn signing_key(&self, now_ms: u64) -> SigningKey {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .signing(now_ms)
            .clone()
    }

    /// The public half of the key tokens are signed with now.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing_key(now_ms()).verifying_key().to_bytes()
    }

    /// The public halves of every key nodes are to accept at `now_ms`, current first.
    pub fn accepted_keys(&self, now_ms: u64) -> Vec<Vec<u8>> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .accepted(now_ms)
            .iter()
            .map(|k| k.to_bytes().to_vec())
            .collect()
    }

    /// Rotates the signing key at `now_ms` to a fresh one ([`Keys::rotate`]): the new ring is
    /// stored first, and only then used, so a failover or restart never goes back to a ring
    /// whose keys nodes were not told of. Returns the new ring.
    pub fn rotate_key(
        &self,
        now_ms: u64,
        switch_delay_ms: u64,
        keep_ms: u64,
    ) -> Result<Keys, CtlError> {
        let _one = lock(&self.rotating);
        let fresh = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let next = self.keys().rotate(&fresh, now_ms, switch_delay_ms, keep_ms);
        self.store.save_keys(&next.ring().to_json())?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = next.clone();
        Ok(next)
    }

    /// Mount information for a lease: every extent with a token for its node and device.
    pub(crate) fn mount_info(&self, l: &LeaseRec, v: &VolumeRec) -> v1::MountResponse {
        let key = self.signing_key(now_ms());
        // Checked when the lease was taken (`validate::holder_key`).
        let holder = l
            .holder
            .as_deref()
            .and_then(|h| dasmesh_wire::verifying_key_from_text(h).ok());
        let extents = self.read(|s| {
            v.extents
                .iter()
                .map(|e| {
                    let claim = Claim {
                        node_id: NodeId(e.piece.key.node),
                        volume_id: VolumeId(v.id),
                        device_id: DeviceId(e.piece.key.device),
                        range_offset: e.piece.offset,
                        range_length: e.piece.length,
                        rights: if l.rw {
                            Rights::ReadWrite
                        } else {
                            Rights::ReadOnly
                        },
                        epoch: Epoch(e.token_epoch(l.epoch)),
                        issued_at_ms: now_ms(),
                        expires_at_ms: l.expires_at_ms,
                        // The lease id, so nodes can count usage and schedule per lease.
                        nonce: l.id,
                        terms: crate::state::qos::terms(v.layout, &v.req),
                    };
                    v1::MountedExtent {
                        extent: Some(extent_msg(s, v, e)),
                        token: match &holder {
                            Some(h) => claim.sign_bound(&key, h),
                            None => claim.sign(&key),
                        }
                        .to_text(),
                    }
                })
                .collect()
        });
        v1::MountResponse {
            lease: Some(lease_msg(l, v)),
            size_bytes: v.size,
            layout: Some(v.layout.into()),
            extents,
        }
    }
}

/// The most commands one commit takes.
const MAX_BATCH: usize = 256;

/// The most store operations `cmd` adds to a commit: the records it can write or delete and
/// its log entry, not counting the meta record (written once per batch). The committer fills
/// a batch up to [`Store::max_ops`] with these; a test holds each to what the command really
/// writes.
pub(crate) fn ops_bound(cmd: &Command) -> usize {
    use crate::state::{MAX_DOWNS_PER_TICK, MAX_EXPIRIES_PER_TICK, MAX_FORGETS_PER_COMMAND};
    match cmd {
        // Its volume, the new lease and its usage.
        Command::Mount { .. } => 4,
        Command::Renew { joined, .. } => 2 + usize::from(!joined.is_empty()),
        // The lease and its usage.
        Command::Unmount { .. } => 3,
        // Its node, each usage record, and each volume with an extent rebuilding there (the
        // reports name extents, a handful at a time).
        Command::Heartbeat {
            usage, rebuilds, ..
        } => 2 + usage.len() + rebuilds.len(),
        // Each lease it ends (the lease and its usage) and each node it marks down.
        Command::Tick { .. } => 1 + 2 * MAX_EXPIRIES_PER_TICK + MAX_DOWNS_PER_TICK,
        Command::ForgetUsage { .. } => 1 + MAX_FORGETS_PER_COMMAND,
        // The rest change a volume or a node and a few records around it; rare next to the
        // ones above, they count for a share of a transaction.
        _ => 8,
    }
}

/// The records `cmd` can change in `s`, for the commands hosts and nodes send all the time;
/// `None` for the others (the whole state is compared then). Records made under new ids are
/// added by the caller.
fn touched(s: &State, cmd: &Command) -> Option<Vec<Rec>> {
    Some(match cmd {
        Command::Mount { volume, .. } => vec![Rec::Meta, Rec::Volume(volume.clone())],
        Command::Renew {
            lease_id, joined, ..
        } => {
            let mut r = vec![Rec::Lease(*lease_id)];
            if !joined.is_empty() {
                if let Some(l) = s.leases.get(lease_id) {
                    r.push(Rec::Volume(l.volume.clone()));
                }
            }
            r
        }
        Command::Unmount { lease_id, .. } => vec![Rec::Lease(*lease_id), Rec::Usage(*lease_id)],
        Command::Heartbeat {
            node_id,
            usage,
            rebuilds,
            ..
        } => std::iter::once(Rec::Node(*node_id))
            .chain(usage.iter().map(|c| Rec::Usage(c.lease_id)))
            .chain(
                s.volumes
                    .values()
                    .filter(|v| {
                        !rebuilds.is_empty()
                            && v.extents
                                .iter()
                                .any(|e| e.rebuild.is_some() && e.piece.key.node == *node_id)
                    })
                    .map(|v| Rec::Volume(v.name.clone())),
            )
            .collect(),
        // Nodes are few; the leases are the live ones (not the usage of past ones).
        Command::Tick { .. } => std::iter::once(Rec::Meta)
            .chain(s.nodes.keys().map(|&id| Rec::Node(id)))
            .chain(
                s.leases
                    .keys()
                    .flat_map(|&id| [Rec::Lease(id), Rec::Usage(id)]),
            )
            .collect(),
        _ => return None,
    })
}

pub mod reap;
pub mod rebuild;
