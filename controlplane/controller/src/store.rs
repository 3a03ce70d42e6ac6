//! Where the state lives between restarts. The logic never sees the store: after `apply`
//! succeeds on a copy of the state, the new state and the command are written in one
//! transaction, and only then does the copy replace the live state. A crash (even SIGKILL) at
//! any point loses nothing acknowledged.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

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
        let bytes = serde_json::to_vec(state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let cmd = serde_json::to_vec(cmd).map_err(|e| StoreError::Corrupt(e.to_string()))?;
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
}
