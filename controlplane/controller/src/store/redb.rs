//! The embedded store: one redb file in the data directory, a table of records and a bounded
//! table of the commands that changed them; and beside it the token-signing key ring
//! (`signing-ring.json`, or before any rotation the one key in `signing.key`).

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{records, Change, Store, StoreError, MAX_LOG};
use crate::keys::Keys;
use crate::state::{Command, State};

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("commands");
/// Where builds before the record layout kept the whole state as one JSON value.
const OLD_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

/// The embedded store.
pub struct RedbStore {
    db: Database,
    /// The data directory (the key ring is written there).
    dir: PathBuf,
}

/// The first key, made on first start (also what builds before key rings read).
const KEY_FILE: &str = "signing.key";
/// The key ring once a rotation wrote one; read in preference to [`KEY_FILE`].
const RING_FILE: &str = "signing-ring.json";

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) `dir/controller.redb`; a store written before the record layout is
    /// moved into it once.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(db_err)?;
        let db = Database::create(dir.join("controller.redb")).map_err(db_err)?;
        let st = Self {
            db,
            dir: dir.to_path_buf(),
        };
        st.upgrade()?;
        Ok(st)
    }

    /// Moves a whole-state value of an earlier build into records, in one transaction.
    fn upgrade(&self) -> Result<(), StoreError> {
        let old: Option<State> = {
            let tx = self.db.begin_read().map_err(db_err)?;
            match tx.open_table(OLD_STATE) {
                Ok(t) => match t.get("state").map_err(db_err)? {
                    Some(v) => Some(
                        serde_json::from_slice(v.value())
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    ),
                    None => None,
                },
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(db_err(e)),
            }
        };
        let Some(old) = old else { return Ok(()) };
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(RECORDS).map_err(db_err)?;
            for (k, v) in records::all(&old)? {
                if let Some(v) = v {
                    t.insert(k.as_str(), v.as_slice()).map_err(db_err)?;
                }
            }
        }
        tx.delete_table(OLD_STATE).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::info!("store: moved the state into records (one per node, volume, lease)");
        Ok(())
    }

    /// Records and log entries held (for tests and reports of the store's size).
    pub fn counts(&self) -> Result<(u64, u64), StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        fn n<K: redb::Key + 'static>(
            t: Result<redb::ReadOnlyTable<K, &'static [u8]>, redb::TableError>,
        ) -> Result<u64, StoreError> {
            match t {
                Ok(t) => t.len().map_err(db_err),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
                Err(e) => Err(db_err(e)),
            }
        }
        Ok((n(tx.open_table(RECORDS))?, n(tx.open_table(LOG))?))
    }
}

impl Store for RedbStore {
    fn load(&self, now_ms: u64) -> Result<State, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = match tx.open_table(RECORDS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(State::default()),
            Err(e) => return Err(db_err(e)),
        };
        let mut kv = Vec::new();
        for r in table.iter().map_err(db_err)? {
            let (k, v) = r.map_err(db_err)?;
            kv.push((k.value().to_string(), v.value().to_vec()));
        }
        records::load(kv.iter().map(|(k, v)| (k.as_str(), v.as_slice())), now_ms)
    }

    fn commit(&self, changes: &[Change], cmds: &[Command]) -> Result<(), StoreError> {
        let logged = cmds
            .iter()
            .map(|c| records::faithful(c, "command"))
            .collect::<Result<Vec<_>, _>>()?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(RECORDS).map_err(db_err)?;
            for (k, v) in changes {
                match v {
                    Some(v) => t.insert(k.as_str(), v.as_slice()).map(drop),
                    None => t.remove(k.as_str()).map(drop),
                }
                .map_err(db_err)?;
            }
            let mut log = tx.open_table(LOG).map_err(db_err)?;
            let mut next = log
                .last()
                .map_err(db_err)?
                .map(|(k, _)| k.value() + 1)
                .unwrap_or(1);
            for c in &logged {
                log.insert(next, c.as_slice()).map_err(db_err)?;
                next += 1;
            }
            // Keep the newest MAX_LOG.
            loop {
                let first = log.first().map_err(db_err)?.map(|(k, _)| k.value());
                match first {
                    Some(k) if k + MAX_LOG < next => log.remove(k).map_err(db_err)?,
                    _ => break,
                };
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(())
    }

    /// Writes `signing-ring.json` whole or not at all: a temporary file made durable, renamed
    /// over the old one, and the directory made durable.
    fn save_keys(&self, ring_json: &[u8]) -> Result<(), StoreError> {
        let path = self.dir.join(RING_FILE);
        let tmp = self.dir.join(format!("{RING_FILE}.tmp"));
        let io = |what: &str, p: &Path, e: std::io::Error| {
            StoreError::Db(format!("{what} {}: {e}", p.display()))
        };
        write_secret(&tmp, ring_json, true).map_err(|e| io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("renaming to", &path, e))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing", &self.dir, e))
    }
}

/// Writes a file only its owner may read (it holds key seeds), durably; `replace` truncates an
/// existing one, else an existing file is an error.
fn write_secret(path: &Path, bytes: &[u8], replace: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).mode(0o600);
    if replace {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The token-signing keys of the controller whose data directory is `dir`: the ring a rotation
/// wrote (`signing-ring.json`), else the key in `signing.key`, else a new key written there
/// (with its public half in `public.key`, for nodes given `--trust-key`).
pub fn load_or_make_keys(dir: &Path) -> Result<Keys, StoreError> {
    let read = |p: &Path| {
        let text = std::fs::read_to_string(p)
            .map_err(|e| StoreError::Db(format!("reading {}: {e}", p.display())))?;
        Keys::parse(&text).map_err(|e| StoreError::Corrupt(format!("{}: {e}", p.display())))
    };
    let ring = dir.join(RING_FILE);
    if ring.exists() {
        return read(&ring);
    }
    let path = dir.join(KEY_FILE);
    if path.exists() {
        return read(&path);
    }
    let key = dasmesh_wire::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let text = format!("{}\n", dasmesh_wire::key_to_text(&key.to_bytes()));
    write_secret(&path, text.as_bytes(), false)
        .map_err(|e| StoreError::Db(format!("creating {}: {e}", path.display())))?;
    let public = dir.join("public.key");
    std::fs::write(
        &public,
        format!(
            "{}\n",
            dasmesh_wire::key_to_text(key.verifying_key().as_bytes())
        ),
    )
    .map_err(|e| StoreError::Db(format!("writing {}: {e}", public.display())))?;
    Ok(Keys::single(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{apply, Command};

    fn register() -> Command {
        Command::Register {
            node_id: 0,
            address: "a:1".into(),
            version: "v".into(),
            failure_domain: String::new(),
            name: String::new(),
            data_tls: false,
            now_ms: 1,
        }
    }

    fn commit(st: &RedbStore, old: &State, new: &State, cmd: &Command) -> Result<(), StoreError> {
        st.commit(&records::diff(old, new)?, std::slice::from_ref(cmd))
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = register();
        {
            let st = RedbStore::open(dir.path()).unwrap();
            assert_eq!(st.load(0).unwrap(), State::default());
            let mut s = State::default();
            apply(&mut s, cmd.clone()).unwrap();
            commit(&st, &State::default(), &s, &cmd).unwrap();
        }
        let st = RedbStore::open(dir.path()).unwrap();
        let s = st.load(5).unwrap();
        assert_eq!(s.nodes.len(), 1);
        let n = s.nodes.values().next().unwrap();
        assert_eq!(n.address, "a:1");
        assert_eq!(n.last_heartbeat_ms, 5, "liveness starts at the load");
    }

    /// A NaN price reached the store once and the controller could not start again.
    #[test]
    fn a_state_that_would_not_read_back_is_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let st = RedbStore::open(dir.path()).unwrap();
        let cmd = register();
        let mut good = State::default();
        apply(&mut good, cmd.clone()).unwrap();
        commit(&st, &State::default(), &good, &cmd).unwrap();
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
            let e = commit(&st, &good, &bad, &cmd).unwrap_err();
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
        commit(&st, &good, &priced, &cmd).unwrap();
        drop(st);
        let st = RedbStore::open(dir.path()).unwrap();
        let mut want = priced.clone();
        for n in want.nodes.values_mut() {
            n.last_heartbeat_ms = 3;
        }
        assert_eq!(st.load(3).unwrap(), want);
    }

    /// The first start makes a key (and its public half); later starts read the same one, until
    /// a stored ring takes its place.
    #[test]
    fn keys_are_made_once_then_read_and_a_stored_ring_comes_first() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_make_keys(dir.path()).unwrap();
        let mode = |f: &str| {
            std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(KEY_FILE), 0o600);
        let public = std::fs::read_to_string(dir.path().join("public.key")).unwrap();
        assert_eq!(
            dasmesh_wire::verifying_key_from_text(&public).unwrap(),
            first.accepted(0)[0]
        );
        assert_eq!(load_or_make_keys(dir.path()).unwrap().ring(), first.ring());

        let st = RedbStore::open(dir.path()).unwrap();
        let fresh = dasmesh_wire::SigningKey::from_bytes(&[9; 32]);
        let rotated = first.rotate(&fresh, 1000, 300, 5000);
        st.save_keys(&rotated.ring().to_json()).unwrap();
        assert_eq!(mode(RING_FILE), 0o600);
        assert!(!dir.path().join(format!("{RING_FILE}.tmp")).exists());
        assert_eq!(
            load_or_make_keys(dir.path()).unwrap().ring(),
            rotated.ring()
        );
        // Saved again: replaced whole.
        let again = rotated.rotate(
            &dasmesh_wire::SigningKey::from_bytes(&[8; 32]),
            2000,
            0,
            5000,
        );
        st.save_keys(&again.ring().to_json()).unwrap();
        assert_eq!(load_or_make_keys(dir.path()).unwrap().ring(), again.ring());
        // A ring that cannot be read is said, not replaced.
        std::fs::write(dir.path().join(RING_FILE), "{").unwrap();
        assert!(matches!(
            load_or_make_keys(dir.path()),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn the_command_log_keeps_the_newest_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let st = RedbStore::open(dir.path()).unwrap();
        let cmds = vec![register(); 3000];
        for _ in 0..4 {
            st.commit(&[], &cmds).unwrap();
        }
        assert_eq!(st.counts().unwrap(), (0, MAX_LOG));
    }

    #[test]
    fn a_store_of_an_earlier_build_is_moved_into_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::default();
        apply(&mut s, register()).unwrap();
        {
            let db = Database::create(dir.path().join("controller.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(OLD_STATE)
                .unwrap()
                .insert("state", serde_json::to_vec(&s).unwrap().as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let st = RedbStore::open(dir.path()).unwrap();
        let mut want = s.clone();
        for n in want.nodes.values_mut() {
            n.last_heartbeat_ms = 9;
        }
        assert_eq!(st.load(9).unwrap(), want);
        assert_eq!(st.counts().unwrap().0, 2, "meta and the node");
        drop(st);
        // Opened again: nothing left to move, same state.
        assert_eq!(RedbStore::open(dir.path()).unwrap().load(9).unwrap(), want);
    }
}
