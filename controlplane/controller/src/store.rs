//! Where the state lives between restarts. The logic never sees the store: after `apply`
//! succeeds on a copy of the state, the new state and the command are written in one
//! transaction, and only then does the copy replace the live state. A crash (even SIGKILL) at
//! any point loses nothing acknowledged.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

use crate::state::{Command, State};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database failed.
    #[error("store: {0}")]
    Db(String),
    /// The stored state could not be decoded.
    #[error("store holds an unreadable state: {0}")]
    Corrupt(String),
    /// The state or command would not read back as written (nothing was committed): storing it
    /// would leave a controller that cannot start again.
    #[error("store refuses to commit what it could not read back: {0}")]
    Unfaithful(String),
}

/// Persistence of the controller's state (redb embedded; etcd for HA comes later).
pub trait Store: Send + Sync {
    /// The last committed state (empty on a fresh store).
    fn load(&self) -> Result<State, StoreError>;
    /// Commits `state` as the result of `cmd`, atomically.
    fn commit(&self, state: &State, cmd: &Command) -> Result<(), StoreError>;
}

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("commands");

/// The embedded store: one redb file in the data directory.
pub struct RedbStore {
    db: Database,
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) `dir/controller.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(db_err)?;
        let db = Database::create(dir.join("controller.redb")).map_err(db_err)?;
        Ok(Self { db })
    }
}

/// `v` encoded, after checking that it decodes to itself: JSON has no NaN or infinity (serde
/// writes `null` and cannot read it back), so one bad number committed would make every later
/// `load` fail.
fn faithful<T>(v: &T, what: &str) -> Result<Vec<u8>, StoreError>
where
    T: Serialize + DeserializeOwned + PartialEq,
{
    let bytes =
        serde_json::to_vec(v).map_err(|e| StoreError::Unfaithful(format!("{what}: {e}")))?;
    match serde_json::from_slice::<T>(&bytes) {
        Ok(back) if back == *v => Ok(bytes),
        Ok(_) => Err(StoreError::Unfaithful(format!(
            "{what} decodes to a different value"
        ))),
        Err(e) => Err(StoreError::Unfaithful(format!("{what}: {e}"))),
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<State, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = match tx.open_table(STATE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(State::default()),
            Err(e) => return Err(db_err(e)),
        };
        match table.get("state").map_err(db_err)? {
            Some(v) => {
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))
            }
            None => Ok(State::default()),
        }
    }

    fn commit(&self, state: &State, cmd: &Command) -> Result<(), StoreError> {
        let bytes = faithful(state, "state")?;
        let cmd = faithful(cmd, "command")?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(STATE).map_err(db_err)?;
            t.insert("state", bytes.as_slice()).map_err(db_err)?;
            let mut log = tx.open_table(LOG).map_err(db_err)?;
            let next = log
                .last()
                .map_err(db_err)?
                .map(|(k, _)| k.value() + 1)
                .unwrap_or(1);
            log.insert(next, cmd.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{apply, Command};

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = Command::Register {
            node_id: 0,
            address: "a:1".into(),
            version: "v".into(),
            failure_domain: String::new(),
            now_ms: 1,
        };
        {
            let st = RedbStore::open(dir.path()).unwrap();
            assert_eq!(st.load().unwrap(), State::default());
            let mut s = State::default();
            apply(&mut s, cmd.clone()).unwrap();
            st.commit(&s, &cmd).unwrap();
        }
        let st = RedbStore::open(dir.path()).unwrap();
        let s = st.load().unwrap();
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.nodes.values().next().unwrap().address, "a:1");
    }

    /// A NaN price reached the store once and the controller could not start again.
    #[test]
    fn a_state_that_would_not_read_back_is_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let st = RedbStore::open(dir.path()).unwrap();
        let cmd = Command::Register {
            node_id: 0,
            address: "a:1".into(),
            version: "v".into(),
            failure_domain: String::new(),
            now_ms: 1,
        };
        let mut good = State::default();
        apply(&mut good, cmd.clone()).unwrap();
        st.commit(&good, &cmd).unwrap();
        for price in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut bad = good.clone();
            bad.usage.insert(
                9,
                crate::state::UsageRec {
                    lease_id: 9,
                    price_per_gib_hour: price,
                    ..Default::default()
                },
            );
            let e = st.commit(&bad, &cmd).unwrap_err();
            assert!(matches!(e, StoreError::Unfaithful(_)), "{price}: {e}");
        }
        // An ordinary fraction reads back exactly (serde_json's float_roundtrip).
        let mut priced = good.clone();
        priced.usage.insert(
            9,
            crate::state::UsageRec {
                lease_id: 9,
                price_per_gib_hour: 0.1 + 0.2,
                ..Default::default()
            },
        );
        st.commit(&priced, &cmd).unwrap();
        drop(st);
        let st = RedbStore::open(dir.path()).unwrap();
        assert_eq!(st.load().unwrap(), priced);
    }
}
