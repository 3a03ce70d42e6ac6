//! The group commit: many callers at once, a store that fails or panics mid-batch, and the
//! controller let go (its store closed) once its last caller has its answer.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::store::records::Change;
use crate::store::RedbStore;

/// The real redb store, with counts of what reached it and a fault to inject on demand.
struct Counting {
    inner: RedbStore,
    /// The number of commands in each commit, in order.
    batches: Mutex<Vec<usize>>,
    max_ops: usize,
    fail_next: AtomicBool,
    panic_next: AtomicBool,
}

impl Counting {
    fn open(dir: &std::path::Path, max_ops: usize) -> Arc<Counting> {
        Arc::new(Counting {
            inner: RedbStore::open(dir).unwrap(),
            batches: Mutex::new(Vec::new()),
            max_ops,
            fail_next: AtomicBool::new(false),
            panic_next: AtomicBool::new(false),
        })
    }
}

/// The controller owns its store; the test keeps a handle on the counts through this.
struct Shared(Arc<Counting>);

impl Store for Shared {
    fn load(&self, now_ms: u64) -> Result<State, StoreError> {
        self.0.inner.load(now_ms)
    }
    fn commit(&self, changes: &[Change], cmds: &[Command]) -> Result<(), StoreError> {
        if self.0.panic_next.swap(false, Ordering::SeqCst) {
            panic!("injected: the store panics mid-commit");
        }
        if self.0.fail_next.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Db("injected: the disk said no".into()));
        }
        assert!(
            changes.len() + cmds.len() <= self.0.max_ops,
            "a commit of {} records and {} commands is over the store's {} operations",
            changes.len(),
            cmds.len(),
            self.0.max_ops
        );
        self.0.inner.commit(changes, cmds)?;
        lock(&self.0.batches).push(cmds.len());
        Ok(())
    }
    fn max_ops(&self) -> usize {
        self.0.max_ops
    }
    fn save_keys(&self, ring_json: &[u8]) -> Result<(), StoreError> {
        self.0.inner.save_keys(ring_json)
    }
}

fn controller(store: &Arc<Counting>) -> Arc<Controller> {
    let ctl = Controller::new(
        Box::new(Shared(Arc::clone(store))),
        SigningKey::from_bytes(&[9; 32]),
        1000,
    )
    .unwrap();
    Arc::new(ctl)
}

fn register(i: u32) -> Command {
    Command::Register {
        node_id: 0,
        address: format!("127.0.0.1:{}", 10_000 + i),
        version: "t".into(),
        failure_domain: String::new(),
        name: String::new(),
        data_tls: false,
        now_ms: now_ms(),
    }
}

/// One 1 TiB device, all of it lent.
fn device() -> crate::state::DeviceRec {
    crate::state::DeviceRec {
        read_iops: 0,
        write_iops: 0,
        mib_s: 0,
        device_id: 0,
        path: "/dev/x".into(),
        block_size: 4096,
        size: 1 << 40,
        lendable_start: 0,
        lendable_length: 1 << 40,
        reserved_start: 0,
        reserved_length: 0,
    }
}

fn nodes(ctl: &Controller) -> usize {
    ctl.read(|s| s.nodes.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_callers_at_once_are_each_answered_in_few_bounded_commits() {
    let dir = tempfile::tempdir().unwrap();
    // Registrations count 8 each: 16 of them fill 129 operations.
    let store = Counting::open(dir.path(), 129);
    let ctl = controller(&store);
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let ctl = Arc::clone(&ctl);
            tokio::spawn(async move { ctl.run(register(i)).await })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Outcome::Node(n) => assert!(ids.insert(n.id), "node id {} handed out twice", n.id),
            o => panic!("a registration answered {o:?}"),
        }
    }
    assert_eq!(nodes(&ctl), 300);
    let batches = lock(&store.batches).clone();
    assert_eq!(
        batches.iter().sum::<usize>(),
        300,
        "every command committed once"
    );
    assert!(
        batches.iter().all(|&n| (1..=16).contains(&n)),
        "a commit over the store's limit: {batches:?}"
    );
    assert!(
        batches.len() < 300,
        "300 callers at once were never grouped: {batches:?}"
    );
    // And all of it is on disk.
    drop((ctl, store));
    let again = RedbStore::open(dir.path()).unwrap().load(0).unwrap();
    assert_eq!(again.nodes.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_fails_its_batch_alone_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Counting::open(dir.path(), usize::MAX);
    let ctl = controller(&store);
    ctl.run(register(0)).await.unwrap();
    store.fail_next.store(true, Ordering::SeqCst);
    let err = ctl.run(register(1)).await.unwrap_err();
    assert!(err.to_string().contains("the disk said no"), "{err}");
    assert_eq!(nodes(&ctl), 1, "a command whose commit failed is not live");
    // The next command goes on from the live state: it is not built on the failed one.
    let Outcome::Node(n) = ctl.run(register(2)).await.unwrap() else {
        panic!()
    };
    assert_eq!(nodes(&ctl), 2);
    drop((ctl, store));
    let again = RedbStore::open(dir.path()).unwrap().load(0).unwrap();
    assert_eq!(again.nodes.len(), 2);
    assert!(again.nodes.contains_key(&n.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committer_that_panics_leaves_a_controller_that_still_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Counting::open(dir.path(), usize::MAX);
    let ctl = controller(&store);
    ctl.run(register(0)).await.unwrap();
    store.panic_next.store(true, Ordering::SeqCst);
    let err = ctl.run(register(1)).await.unwrap_err();
    assert!(err.to_string().contains("committer panicked"), "{err}");
    // The shadow held the lost command: it must not reach the store with the next batch.
    ctl.run(register(2)).await.unwrap();
    assert_eq!(nodes(&ctl), 2);
    // The synchronous path finds a committer too.
    let c = Arc::clone(&ctl);
    tokio::task::spawn_blocking(move || c.execute(register(3)).unwrap())
        .await
        .unwrap();
    assert_eq!(nodes(&ctl), 3);
    drop((ctl, store));
    let again = RedbStore::open(dir.path()).unwrap().load(0).unwrap();
    assert_eq!(again.nodes.len(), 3, "what is stored is what went live");
    assert!(!again.nodes.values().any(|n| n.address.ends_with(":10001")));
}

/// The committer lets go of the controller before it answers: whoever drops the controller
/// after its last answer closes the store, and the directory opens again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_closed_when_the_last_caller_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..50 {
        let store = Counting::open(dir.path(), usize::MAX);
        let ctl = controller(&store);
        ctl.run(register(i)).await.unwrap();
        drop(ctl);
        drop(store);
        RedbStore::open(dir.path()).unwrap_or_else(|e| panic!("round {i}: {e}"));
    }
}

/// The state after `apply`, with the records it changed counted as the store writes them
/// (the meta record aside: once per batch) plus the command's log entry.
fn ops_of(s: &mut State, cmd: Command) -> usize {
    let before = s.clone();
    let bound = ops_bound(&cmd);
    let what = format!("{cmd:?}");
    crate::state::apply(s, cmd).unwrap_or_else(|e| panic!("{what}: {e}"));
    let changes = records::diff(&before, s).unwrap();
    let ops = changes.iter().filter(|(k, _)| k != "meta").count() + 1;
    assert!(
        ops <= bound,
        "{what} wrote {ops} operations, over its bound {bound}"
    );
    ops
}

/// Each command the hosts and nodes send all the time stays within [`ops_bound`], its worst
/// case included (a tick that ends the most leases and marks the most nodes down at once), so
/// a batch filled up to etcd's limit is never refused.
#[test]
fn every_command_writes_no_more_than_its_bound() {
    use crate::alloc::Layout;
    use crate::state::Requirements;
    let mut s = State::default();
    let nodes = 60u64;
    for i in 0..nodes {
        let Outcome::Node(n) = crate::state::apply(&mut s, register(i as u32)).unwrap() else {
            panic!()
        };
        let dev = device();
        let cmd = Command::ReportDevices {
            node_id: n.id,
            devices: vec![dev],
        };
        ops_of(&mut s, cmd);
    }
    let mut leases = Vec::new();
    for v in 0..40 {
        let layout = if v % 2 == 0 {
            Layout::Single
        } else {
            Layout::Mirror { copies: 3 }
        };
        let name = format!("v{v}");
        let create = Command::CreateVolume {
            headroom_pct: 10,
            name: name.clone(),
            size: 1 << 30,
            layout,
            req: Requirements::default(),
            now_ms: 0,
        };
        ops_of(&mut s, create);
        let mount = Command::Mount {
            holder: None,
            volume: name,
            host: "h".into(),
            rw: true,
            ttl_ms: 10_000,
            now_ms: 0,
        };
        assert_eq!(
            ops_of(&mut s, mount),
            4,
            "a mount: volume, lease, usage, log"
        );
        leases.push(s.last_id);
    }
    let renew = Command::Renew {
        joined: vec![],
        lease_id: leases[0],
        ttl_ms: 10_000,
        now_ms: 1,
    };
    ops_of(&mut s, renew);
    let usage = leases[..5]
        .iter()
        .map(|&lease_id| crate::state::Counters {
            lease_id,
            read_ops: 1,
            ..Default::default()
        })
        .collect();
    let beat = Command::Heartbeat {
        rebuilds: vec![],
        node_id: *s.nodes.keys().next().unwrap(),
        usage,
        now_ms: 2,
    };
    ops_of(&mut s, beat);
    let unmount = Command::Unmount {
        lease_id: leases[1],
        now_ms: 3,
    };
    ops_of(&mut s, unmount);
    // Every node silent and every lease expired, all at once.
    let tick = Command::Tick {
        now_ms: 1_000_000,
        heartbeat_ms: 1000,
    };
    assert!(ops_of(&mut s, tick) > 50, "the worst case was reached");
    let forget = Command::ForgetUsage {
        before_ms: u64::MAX,
    };
    ops_of(&mut s, forget);
}

/// A batch holds no more than the store's transaction takes: 100 mounts against a limit of
/// 41 operations go 10 to a commit (4 each, the meta record aside).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_cut_where_the_stores_transaction_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let store = Counting::open(dir.path(), 41);
    let ctl = controller(&store);
    let mut names = Vec::new();
    for i in 0..3 {
        let Outcome::Node(n) = ctl.run(register(i)).await.unwrap() else {
            panic!()
        };
        let dev = device();
        ctl.run(Command::ReportDevices {
            node_id: n.id,
            devices: vec![dev],
        })
        .await
        .unwrap();
    }
    for v in 0..100 {
        let name = format!("v{v}");
        ctl.run(Command::CreateVolume {
            headroom_pct: 10,
            name: name.clone(),
            size: 1 << 20,
            layout: crate::alloc::Layout::Single,
            req: Default::default(),
            now_ms: 0,
        })
        .await
        .unwrap();
        names.push(name);
    }
    lock(&store.batches).clear();
    let tasks: Vec<_> = names
        .into_iter()
        .map(|volume| {
            let ctl = Arc::clone(&ctl);
            tokio::spawn(async move {
                ctl.run(Command::Mount {
                    holder: None,
                    volume,
                    host: "h".into(),
                    rw: true,
                    ttl_ms: 60_000,
                    now_ms: now_ms(),
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let batches = lock(&store.batches).clone();
    assert_eq!(batches.iter().sum::<usize>(), 100);
    assert!(
        batches.iter().all(|&n| n <= 10),
        "a batch over the limit: {batches:?}"
    );
    assert!(
        batches.iter().any(|&n| n > 1),
        "no batch held more than one mount: {batches:?}"
    );
}
