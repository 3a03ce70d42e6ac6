//! Where the state lives between restarts. The logic never sees the store: a batch of commands
//! is applied to a copy of the state, the records it changed ([`records::diff`]) and the
//! commands are written in one transaction, and only then does the copy replace the live
//! state. A crash (even SIGKILL) at any point loses nothing acknowledged.
//!
//! Two stores keep the same records: [`RedbStore`], one embedded file (the one-machine
//! default), and the etcd store for several controllers.

use crate::state::{Command, State};

pub mod etcd;
pub mod records;
mod redb;

pub use self::redb::{load_or_make_keys, RedbStore};
pub use records::Change;

/// Commands kept in a store's log (for the operator: what changed and why) before the oldest
/// are dropped: the log is bounded like every other table.
pub const MAX_LOG: u64 = 10_000;

/// A store failure.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (nothing was committed).
    #[error("store: {0}")]
    Db(String),
    /// A stored record could not be decoded.
    #[error("store holds an unreadable state: {0}")]
    Corrupt(String),
    /// The store holds a key that is not one of ours: it belongs to something else, and
    /// nothing is read or written.
    #[error("store holds a key that is not dasmesh's ({0:?}): is it another program's data?")]
    Foreign(String),
    /// The state or command would not read back as written (nothing was committed): storing it
    /// would leave a controller that cannot start again.
    #[error("store refuses to commit what it could not read back: {0}")]
    Unfaithful(String),
    /// This controller is no longer the active one: its writes are refused.
    #[error("not the active controller: {0}")]
    NotActive(String),
}

/// Persistence of the controller's state.
pub trait Store: Send + Sync {
    /// The last committed state (empty on a fresh store); every node counts as having beaten at
    /// `now_ms`.
    fn load(&self, now_ms: u64) -> Result<State, StoreError>;
    /// Writes `changes` and appends `cmds` to the log, atomically.
    fn commit(&self, changes: &[Change], cmds: &[Command]) -> Result<(), StoreError>;
    /// The most operations (records written or deleted, log entries) one commit may hold:
    /// etcd caps a transaction's. The controller fills a batch up to it from each command's
    /// bound ([`crate::controller::ops_bound`]).
    fn max_ops(&self) -> usize {
        usize::MAX
    }
    /// Replaces the stored token-signing key ring ([`crate::keys::KeyRing`]'s JSON), durably,
    /// under the same guard as [`Store::commit`] (a deposed controller's rotation fails).
    fn save_keys(&self, ring_json: &[u8]) -> Result<(), StoreError>;
}
