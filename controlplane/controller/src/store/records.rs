//! The state as records: one per node, volume, lease and usage entry, plus one `meta` record
//! for the counters and the lists of ranges and revocations. A command changes a few records, so
//! a commit writes those and no more ([`diff`]); [`State`] is rebuilt from the records at load.
//!
//! Keys are plain strings, the same in every store: `meta`, `node/<id>`, `volume/<name>`,
//! `lease/<id>`, `usage/<id>`, with ids zero-padded to 20 digits so keys sort as the ids do.
//! Values are JSON, checked to read back as written before anything is committed.
//!
//! Liveness is not state: a node's `last_heartbeat_ms` is kept in memory only (a record holds
//! 0 there), so a heartbeat that changes nothing else writes nothing. A loaded node counts as
//! having beaten at load time ([`load`]'s `now_ms`): a controller that takes over gives every
//! node a grace period before it can be marked down.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::StoreError;
use crate::state::{FreedRange, LeaseRec, NodeRec, State, UsageRec, VolumeRec};

/// One record to write (`Some`) or remove (`None`).
pub type Change = (String, Option<Vec<u8>>);

/// The state's scalars and short lists: one record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Meta {
    last_id: u64,
    last_epoch: u64,
    #[serde(default)]
    freed: Vec<FreedRange>,
    #[serde(default)]
    revoked: BTreeMap<u64, u64>,
}

const META: &str = "meta";
const NODE: &str = "node/";
const VOLUME: &str = "volume/";
const LEASE: &str = "lease/";
const USAGE: &str = "usage/";

fn id_key(prefix: &str, id: u64) -> String {
    format!("{prefix}{id:020}")
}

fn meta_of(s: &State) -> Meta {
    Meta {
        last_id: s.last_id,
        last_epoch: s.last_epoch,
        freed: s.freed.clone(),
        revoked: s.revoked.clone(),
    }
}

/// What a node's record holds: everything but its liveness.
fn persisted(n: &NodeRec) -> NodeRec {
    NodeRec {
        last_heartbeat_ms: 0,
        ..n.clone()
    }
}

/// `v` encoded, after checking that it decodes to itself: JSON has no NaN or infinity (serde
/// writes `null` and cannot read it back), so one bad number committed would make every later
/// load fail.
pub fn faithful<T>(v: &T, what: &str) -> Result<Vec<u8>, StoreError>
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

/// Adds to `out` the changes that turn map `old` into map `new`: a record is written when `same`
/// says it changed, as `stored` makes it.
fn diff_map<K: Ord, V: Serialize + DeserializeOwned + PartialEq + Clone>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    key: impl Fn(&K) -> String,
    same: impl Fn(&V, &V) -> bool,
    stored: impl Fn(&V) -> V,
    out: &mut Vec<Change>,
) -> Result<(), StoreError> {
    // One walk of both maps in key order.
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let order = match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((ko, _)), Some((kn, _))) => ko.cmp(kn),
        };
        match order {
            std::cmp::Ordering::Less => {
                let (k, _) = o.next().expect("peeked");
                out.push((key(k), None));
            }
            std::cmp::Ordering::Greater => {
                let (k, v) = n.next().expect("peeked");
                let key = key(k);
                out.push((key.clone(), Some(faithful(&stored(v), &key)?)));
            }
            std::cmp::Ordering::Equal => {
                let ((_, ov), (k, v)) = (o.next().expect("peeked"), n.next().expect("peeked"));
                if !same(ov, v) {
                    let key = key(k);
                    out.push((key.clone(), Some(faithful(&stored(v), &key)?)));
                }
            }
        }
    }
    Ok(())
}

/// Two node records hold the same, liveness aside.
fn same_node(a: &NodeRec, b: &NodeRec) -> bool {
    a.id == b.id
        && a.state == b.state
        && a.address == b.address
        && a.version == b.version
        && a.failure_domain == b.failure_domain
        && a.devices == b.devices
}

/// The records to write or remove so that a store holding `old` holds `new`.
pub fn diff(old: &State, new: &State) -> Result<Vec<Change>, StoreError> {
    let mut out = Vec::new();
    if old.last_id != new.last_id
        || old.last_epoch != new.last_epoch
        || old.freed != new.freed
        || old.revoked != new.revoked
    {
        out.push((META.to_string(), Some(faithful(&meta_of(new), META)?)));
    }
    diff_map(
        &old.nodes,
        &new.nodes,
        |id| id_key(NODE, *id),
        same_node,
        persisted,
        &mut out,
    )?;
    diff_map(
        &old.volumes,
        &new.volumes,
        |name| format!("{VOLUME}{name}"),
        VolumeRec::eq,
        VolumeRec::clone,
        &mut out,
    )?;
    diff_map(
        &old.leases,
        &new.leases,
        |id| id_key(LEASE, *id),
        LeaseRec::eq,
        LeaseRec::clone,
        &mut out,
    )?;
    diff_map(
        &old.usage,
        &new.usage,
        |id| id_key(USAGE, *id),
        UsageRec::eq,
        UsageRec::clone,
        &mut out,
    )?;
    Ok(out)
}

/// One record, by what it holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rec {
    /// The counters and short lists.
    Meta,
    /// A node.
    Node(u64),
    /// A volume.
    Volume(String),
    /// A lease.
    Lease(u64),
    /// A lease's usage.
    Usage(u64),
}

/// [`diff`] limited to `recs`: the same changes when `recs` names every record that differs
/// (the controller names those a batch can have touched; debug builds check it against the
/// whole diff). Costs in proportion to `recs`, not to the state.
pub fn diff_of(old: &State, new: &State, recs: &[Rec]) -> Result<Vec<Change>, StoreError> {
    fn one<V: Serialize + DeserializeOwned + PartialEq + Clone>(
        key: String,
        old: Option<&V>,
        new: Option<&V>,
        same: impl Fn(&V, &V) -> bool,
        stored: impl Fn(&V) -> V,
    ) -> Result<Option<Change>, StoreError> {
        Ok(match (old, new) {
            (Some(o), Some(n)) if same(o, n) => None,
            (None, None) => None,
            (_, Some(n)) => Some((key.clone(), Some(faithful(&stored(n), &key)?))),
            (Some(_), None) => Some((key, None)),
        })
    }
    let mut recs = recs.to_vec();
    recs.sort();
    recs.dedup();
    let mut out = Vec::new();
    for r in recs {
        let c = match r {
            Rec::Meta => {
                let changed = old.last_id != new.last_id
                    || old.last_epoch != new.last_epoch
                    || old.freed != new.freed
                    || old.revoked != new.revoked;
                changed
                    .then(|| faithful(&meta_of(new), META).map(|v| (META.to_string(), Some(v))))
                    .transpose()?
            }
            Rec::Node(id) => one(
                id_key(NODE, id),
                old.nodes.get(&id),
                new.nodes.get(&id),
                same_node,
                persisted,
            )?,
            Rec::Volume(name) => one(
                format!("{VOLUME}{name}"),
                old.volumes.get(&name),
                new.volumes.get(&name),
                VolumeRec::eq,
                VolumeRec::clone,
            )?,
            Rec::Lease(id) => one(
                id_key(LEASE, id),
                old.leases.get(&id),
                new.leases.get(&id),
                LeaseRec::eq,
                LeaseRec::clone,
            )?,
            Rec::Usage(id) => one(
                id_key(USAGE, id),
                old.usage.get(&id),
                new.usage.get(&id),
                UsageRec::eq,
                UsageRec::clone,
            )?,
        };
        out.extend(c);
    }
    Ok(out)
}

/// Every record of `s` (what a fresh store gets when a state is moved into it).
pub fn all(s: &State) -> Result<Vec<Change>, StoreError> {
    let mut out = diff(&State::default(), s)?;
    if !out.iter().any(|(k, _)| k == META) {
        out.insert(0, (META.to_string(), Some(faithful(&meta_of(s), META)?)));
    }
    Ok(out)
}

fn decode<T: DeserializeOwned>(key: &str, v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(format!("record {key:?}: {e}")))
}

fn id_of(key: &str, rest: &str) -> Result<u64, StoreError> {
    rest.parse()
        .map_err(|_| StoreError::Corrupt(format!("record {key:?}: not an id")))
}

/// The state the records hold; every node counts as having beaten at `now_ms`. A key that is not
/// one of ours is refused: the store holds something else, and nothing is guessed.
pub fn load<'a>(
    records: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    now_ms: u64,
) -> Result<State, StoreError> {
    let mut s = State::default();
    for (key, v) in records {
        if key == META {
            let m: Meta = decode(key, v)?;
            s.last_id = m.last_id;
            s.last_epoch = m.last_epoch;
            s.freed = m.freed;
            s.revoked = m.revoked;
        } else if let Some(rest) = key.strip_prefix(NODE) {
            let mut n: NodeRec = decode(key, v)?;
            n.last_heartbeat_ms = now_ms;
            s.nodes.insert(id_of(key, rest)?, n);
        } else if let Some(name) = key.strip_prefix(VOLUME) {
            s.volumes.insert(name.to_string(), decode(key, v)?);
        } else if let Some(rest) = key.strip_prefix(LEASE) {
            s.leases.insert(id_of(key, rest)?, decode(key, v)?);
        } else if let Some(rest) = key.strip_prefix(USAGE) {
            s.usage.insert(id_of(key, rest)?, decode(key, v)?);
        } else {
            return Err(StoreError::Foreign(key.chars().take(80).collect()));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{apply, Command, NodeState};

    fn node(s: &mut State, now_ms: u64) -> u64 {
        match apply(
            s,
            Command::Register {
                node_id: 0,
                address: "127.0.0.1:1".into(),
                version: "v".into(),
                failure_domain: String::new(),
                name: String::new(),
                data_tls: false,
                now_ms,
            },
        )
        .unwrap()
        {
            crate::state::Outcome::Node(n) => n.id,
            _ => unreachable!(),
        }
    }

    fn reload(changes: &[Change], now_ms: u64) -> State {
        let mut kv = BTreeMap::new();
        for (k, v) in changes {
            match v {
                Some(v) => kv.insert(k.clone(), v.clone()),
                None => kv.remove(k),
            };
        }
        load(kv.iter().map(|(k, v)| (k.as_str(), v.as_slice())), now_ms).unwrap()
    }

    #[test]
    fn a_heartbeat_that_changes_nothing_else_writes_nothing() {
        let mut s = State::default();
        let id = node(&mut s, 1);
        let before = s.clone();
        apply(
            &mut s,
            Command::Heartbeat {
                rebuilds: vec![],
                node_id: id,
                usage: vec![],
                now_ms: 5000,
            },
        )
        .unwrap();
        assert_eq!(s.nodes[&id].last_heartbeat_ms, 5000);
        assert!(diff(&before, &s).unwrap().is_empty());
        // A node coming back up is a change.
        s.nodes.get_mut(&id).unwrap().state = NodeState::Down;
        let down = s.clone();
        apply(
            &mut s,
            Command::Heartbeat {
                rebuilds: vec![],
                node_id: id,
                usage: vec![],
                now_ms: 6000,
            },
        )
        .unwrap();
        let d = diff(&down, &s).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, format!("node/{id:020}"));
    }

    #[test]
    fn records_rebuild_the_state_with_liveness_from_the_load() {
        let mut s = State::default();
        let a = node(&mut s, 1);
        let b = node(&mut s, 2);
        s.revoked.insert(9, 99);
        let all = all(&s).unwrap();
        let back = reload(&all, 777);
        assert_eq!(back.nodes[&a].last_heartbeat_ms, 777);
        assert_eq!(back.nodes[&b].last_heartbeat_ms, 777);
        let mut want = s.clone();
        for n in want.nodes.values_mut() {
            n.last_heartbeat_ms = 777;
        }
        assert_eq!(back, want);
        // A removal is a record removed.
        let mut gone = s.clone();
        gone.nodes.remove(&a);
        let d = diff(&s, &gone).unwrap();
        assert_eq!(d, vec![(format!("node/{a:020}"), None)]);
        let mut kv = all.clone();
        kv.extend(d);
        assert!(!reload(&kv, 0).nodes.contains_key(&a));
    }

    #[test]
    fn a_foreign_key_is_refused_by_name() {
        let e = load([("config/x", &b"{}"[..])], 0).unwrap_err();
        assert!(e.to_string().contains("config/x"), "{e}");
        let e = load([("node/abc", &b"{}"[..])], 0).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
    }
}
