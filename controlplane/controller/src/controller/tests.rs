//! The group commit: many callers at once, a store that fails or panics mid-batch, and the
//! controller let go (its store closed) once its last caller has its answer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;
use crate::store::records::Change;
use crate::store::RedbStore;

/// The real redb store, with counts of what reached it and a fault to inject on demand.
struct Counting {
    inner: RedbStore,
    /// The number of commands in each commit, in order.
    batches: Mutex<Vec<usize>>,
    max_batch: usize,
    fail_next: AtomicBool,
    panic_next: AtomicBool,
}

impl Counting {
    fn open(dir: &std::path::Path, max_batch: usize) -> Arc<Counting> {
        Arc::new(Counting {
            inner: RedbStore::open(dir).unwrap(),
            batches: Mutex::new(Vec::new()),
            max_batch,
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
        self.0.inner.commit(changes, cmds)?;
        lock(&self.0.batches).push(cmds.len());
        Ok(())
    }
    fn max_batch(&self) -> usize {
        self.0.max_batch
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
        now_ms: now_ms(),
    }
}

fn nodes(ctl: &Controller) -> usize {
    ctl.read(|s| s.nodes.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_callers_at_once_are_each_answered_in_few_bounded_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Counting::open(dir.path(), 16);
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
    let store = Counting::open(dir.path(), 256);
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
    let store = Counting::open(dir.path(), 256);
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
        let store = Counting::open(dir.path(), 256);
        let ctl = controller(&store);
        ctl.run(register(i)).await.unwrap();
        drop(ctl);
        drop(store);
        RedbStore::open(dir.path()).unwrap_or_else(|e| panic!("round {i}: {e}"));
    }
}
