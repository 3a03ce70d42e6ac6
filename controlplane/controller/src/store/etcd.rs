//! The etcd store: the same records as the embedded store, as keys under a prefix, and every
//! commit one etcd transaction guarded by this controller's election key, so a controller that
//! is no longer the active one cannot change the pool (its transactions fail).
//!
//! Keys under the prefix (default `/dasmesh/`): `state/<record>` (see [`super::records`]),
//! `log/<seq>` (the newest [`MAX_LOG`] commands), `leader` (the election, see
//! [`crate::ha`]), `signing-key` (the token-signing key ring, see [`crate::keys`]), and
//! `controllers/<url>` (each controller's presence).
//!
//! The client runs on a runtime of its own, on a thread of its own ([`Etcd`]), so a commit can
//! wait for etcd from any thread, including every worker of the gRPC server's runtime, without
//! starving the tasks that talk to etcd.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};

use super::{records, Change, Store, StoreError, MAX_LOG};
use crate::state::{Command, State};

/// How long one etcd call may take before the store says so (a lost quorum never answers).
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// The top-level names under the prefix; anything else there is not ours.
/// The operations etcd takes in one transaction unless started with a larger
/// `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

const OURS: [&str; 5] = ["state/", "log/", "leader", "signing-key", "controllers/"];

/// A connection to an etcd cluster, on its own runtime thread.
#[derive(Clone)]
pub struct Etcd {
    rt: tokio::runtime::Handle,
    client: Client,
    /// Key prefix, ending in `/`.
    pub prefix: String,
    /// The endpoints, for messages.
    pub endpoints: String,
}

/// What tonic says when the connection to an etcd member could not be made (nothing was sent).
const NOT_SENT: &str = "tcp connect error";
/// How many more times a transaction is tried after a member refused the connection.
const CONNECT_RETRIES: usize = 3;

fn etcd_err(e: etcd_client::Error) -> StoreError {
    StoreError::Db(format!("etcd: {e}"))
}

fn timed_out() -> StoreError {
    StoreError::Db(format!(
        "etcd: no answer within {OP_TIMEOUT:?} (is a quorum of its members up?)"
    ))
}

impl Etcd {
    /// Connects to `endpoints` (`http://host:port[,http://...]`) and checks that etcd answers
    /// and that nothing foreign lives under `prefix`. Blocks; callable from anywhere.
    pub fn connect(endpoints: &str, prefix: &str) -> Result<Etcd, StoreError> {
        Self::connect_tls(endpoints, prefix, None)
    }

    /// [`Etcd::connect`]; with `tls`, to `https://` endpoints over mutual TLS (etcd run with
    /// `--client-cert-auth` and the cluster's CA as `--trusted-ca-file`).
    pub fn connect_tls(
        endpoints: &str,
        prefix: &str,
        tls: Option<etcd_client::TlsOptions>,
    ) -> Result<Etcd, StoreError> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let urls: Vec<String> = endpoints
            .split(',')
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(StoreError::Db("--etcd: no endpoint given".into()));
        }
        for u in &urls {
            let expected = || {
                let why = match (u.starts_with("https://"), tls.is_some()) {
                    (true, false) => " (https:// needs the controller's --cert)".to_string(),
                    _ => String::new(),
                };
                StoreError::Db(format!("--etcd {u:?}: expected {scheme}://HOST:PORT{why}"))
            };
            let rest = u
                .strip_prefix(&format!("{scheme}://"))
                .ok_or_else(expected)?;
            if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
                return Err(expected());
            }
        }
        let prefix = if prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(StoreError::Db(format!("etcd runtime: {e}"))));
                        return;
                    }
                };
                let _ = tx.send(Ok(rt.handle().clone()));
                // Runs the tasks spawned on it for as long as the process lives.
                rt.block_on(std::future::pending::<()>());
            })
            .map_err(|e| StoreError::Db(format!("etcd thread: {e}")))?;
        let rt = rx
            .recv()
            .map_err(|_| StoreError::Db("etcd runtime did not start".into()))??;
        let mut opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(OP_TIMEOUT)
            .with_timeout(OP_TIMEOUT)
            .with_keep_alive(Duration::from_secs(1), OP_TIMEOUT);
        if let Some(t) = tls {
            opts = opts.with_tls(t);
        }
        let u2 = urls.clone();
        let client = block(&rt, async move {
            let mut c = Client::connect(u2, Some(opts)).await?;
            // Connecting is lazy: ask something, so an unreachable cluster is said at once.
            c.status().await?;
            Ok(c)
        })
        .map_err(|e| StoreError::Db(format!("cannot reach etcd at {endpoints}: {e}")))?;
        let etcd = Etcd {
            rt,
            client,
            prefix,
            endpoints: endpoints.to_string(),
        };
        etcd.check_foreign()?;
        Ok(etcd)
    }

    /// Runs `f` with a client on the etcd runtime and waits for it (at most [`OP_TIMEOUT`]).
    pub fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        block(&self.rt, f(self.client.clone())).map_err(|e| match e {
            Blocked::Etcd(e) => etcd_err(e),
            Blocked::TimedOut => timed_out(),
        })
    }

    /// [`Etcd::run`] for async callers (any runtime): awaits instead of blocking.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let fut = f(self.client.clone());
        match self
            .rt
            .spawn(async move { tokio::time::timeout(OP_TIMEOUT, fut).await })
            .await
        {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(etcd_err(e)),
            Ok(Err(_)) => Err(timed_out()),
            Err(e) => Err(StoreError::Db(format!("etcd task: {e}"))),
        }
    }

    /// The runtime the client lives on (the election runs there).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
    }

    /// `prefix` + `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn check_foreign(&self) -> Result<(), StoreError> {
        let prefix = self.prefix.clone();
        let keys = self.run(move |mut c| async move {
            let r = c
                .get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await?;
            Ok(r.kvs()
                .iter()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                .collect::<Vec<_>>())
        })?;
        for k in keys {
            let rest = &k[self.prefix.len()..];
            if !OURS.iter().any(|o| rest.starts_with(o)) {
                return Err(StoreError::Foreign(k));
            }
        }
        Ok(())
    }

    /// The state under the prefix; nodes count as having beaten at `now_ms`.
    pub async fn load(&self, now_ms: u64) -> Result<(State, u64), StoreError> {
        let state = self.key("state/");
        let log = self.key("log/");
        let (kvs, last_log) = self
            .call(move |mut c| async move {
                // In pages (a response is capped at 4 MiB), all at the first page's revision,
                // so the pages make one consistent state.
                let end = prefix_end(state.as_bytes());
                let mut from = state.into_bytes();
                let mut revision = 0;
                let mut kvs: Vec<(String, Vec<u8>)> = Vec::new();
                loop {
                    let r = c
                        .get(
                            from.clone(),
                            Some(
                                GetOptions::new()
                                    .with_range(end.clone())
                                    .with_limit(LOAD_PAGE)
                                    .with_revision(revision),
                            ),
                        )
                        .await?;
                    if revision == 0 {
                        revision = r.header().map(|h| h.revision()).unwrap_or(0);
                    }
                    kvs.extend(r.kvs().iter().map(|kv| {
                        (
                            String::from_utf8_lossy(kv.key()).into_owned(),
                            kv.value().to_vec(),
                        )
                    }));
                    match r.kvs().last() {
                        Some(last) if r.more() => {
                            from = last.key().to_vec();
                            from.push(0);
                        }
                        _ => break,
                    }
                }
                let l = c
                    .get(
                        log,
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_keys_only()
                                .with_sort(
                                    etcd_client::SortTarget::Key,
                                    etcd_client::SortOrder::Descend,
                                )
                                .with_limit(1),
                        ),
                    )
                    .await?;
                let last = l
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.key()).into_owned());
                Ok((kvs, last))
            })
            .await?;
        let skip = self.key("state/").len();
        let s = records::load(kvs.iter().map(|(k, v)| (&k[skip..], v.as_slice())), now_ms)?;
        let last = last_log
            .and_then(|k| k.rsplit('/').next().and_then(|n| n.parse::<u64>().ok()))
            .unwrap_or(0);
        Ok((s, last))
    }
}

/// Records read in one request when loading (etcd's ranges are sorted by key).
const LOAD_PAGE: i64 = 1000;

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

enum Blocked {
    Etcd(etcd_client::Error),
    TimedOut,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blocked::Etcd(e) => write!(f, "{e}"),
            Blocked::TimedOut => write!(f, "no answer within {OP_TIMEOUT:?}"),
        }
    }
}

/// Runs `fut` on `rt` and blocks this thread until it ends or [`OP_TIMEOUT`] passes.
fn block<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    fut: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T, Blocked> {
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(tokio::time::timeout(OP_TIMEOUT, fut).await);
    });
    match rx.recv() {
        Ok(Ok(r)) => r.map_err(Blocked::Etcd),
        _ => Err(Blocked::TimedOut),
    }
}

/// The store of the active controller: commits only while `leader` still holds the election
/// key it won (the key's create revision); a failed guard marks `lost`.
pub struct EtcdStore {
    etcd: Etcd,
    /// Create revision of the election key this controller won.
    won: i64,
    next_log: AtomicU64,
    lost: Arc<AtomicBool>,
}

impl EtcdStore {
    /// The store of a controller that won the election key at revision `won`; `last_log` is the
    /// newest log entry ([`Etcd::load`]). `lost` turns true when a commit finds the key gone.
    pub fn new(etcd: Etcd, won: i64, last_log: u64, lost: Arc<AtomicBool>) -> EtcdStore {
        EtcdStore {
            etcd,
            won,
            next_log: AtomicU64::new(last_log + 1),
            lost,
        }
    }
}

impl Store for EtcdStore {
    fn load(&self, now_ms: u64) -> Result<State, StoreError> {
        let etcd = self.etcd.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        self.etcd.rt.spawn(async move {
            let _ = tx.send(etcd.load(now_ms).await);
        });
        rx.recv().map_err(|_| timed_out())?.map(|(s, _)| s)
    }

    fn commit(&self, changes: &[Change], cmds: &[Command]) -> Result<(), StoreError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(StoreError::NotActive(
                "this controller lost its election key".into(),
            ));
        }
        let mut ops = Vec::with_capacity(changes.len() + cmds.len() + 1);
        for (k, v) in changes {
            let key = self.etcd.key(&format!("state/{k}"));
            ops.push(match v {
                Some(v) => TxnOp::put(key, v.clone(), None),
                None => TxnOp::delete(key, None),
            });
        }
        let first = self.next_log.load(Ordering::SeqCst);
        for (i, c) in cmds.iter().enumerate() {
            let bytes = records::faithful(c, "command")?;
            ops.push(TxnOp::put(
                self.etcd.key(&format!("log/{:020}", first + i as u64)),
                bytes,
                None,
            ));
        }
        let next = first + cmds.len() as u64;
        if next > MAX_LOG + 1 {
            // Every entry older than the newest MAX_LOG.
            ops.push(TxnOp::delete(
                self.etcd.key(&format!("log/{:020}", 0)),
                Some(
                    DeleteOptions::new()
                        .with_range(self.etcd.key(&format!("log/{:020}", next - MAX_LOG))),
                ),
            ));
        }
        if ops.len() > MAX_TXN_OPS {
            // The batcher keeps under it; a clear refusal, rather than etcd's, if it did not.
            return Err(StoreError::Db(format!(
                "a commit of {} operations is over etcd's {MAX_TXN_OPS} per transaction; nothing was written",
                ops.len()
            )));
        }
        self.guarded(ops)?;
        self.next_log.store(next, Ordering::SeqCst);
        Ok(())
    }

    /// etcd allows [`MAX_TXN_OPS`] operations in a transaction by default (`--max-txn-ops`);
    /// one of them is kept for the deletion of old log entries.
    fn max_ops(&self) -> usize {
        MAX_TXN_OPS - 1
    }

    fn save_keys(&self, ring_json: &[u8]) -> Result<(), StoreError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(StoreError::NotActive(
                "this controller lost its election key".into(),
            ));
        }
        self.guarded(vec![TxnOp::put(
            self.etcd.key("signing-key"),
            ring_json.to_vec(),
            None,
        )])
    }
}

impl EtcdStore {
    /// Runs `ops` in one transaction that holds only while this controller's election key is
    /// the one it won; a failed guard marks `lost`.
    fn guarded(&self, ops: Vec<TxnOp>) -> Result<(), StoreError> {
        let leader = self.etcd.key("leader");
        let won = self.won;
        let attempt = || {
            let (leader, ops) = (leader.clone(), ops.clone());
            self.etcd.run(move |mut c| async move {
                let r = c
                    .txn(
                        Txn::new()
                            .when([Compare::create_revision(leader, CompareOp::Equal, won)])
                            .and_then(ops),
                    )
                    .await?;
                Ok(r.succeeded())
            })
        };
        // A member that is down refuses the connection before anything is sent: the
        // transaction was not applied, and another member may take it.
        let mut r = attempt();
        for _ in 0..CONNECT_RETRIES {
            match &r {
                Err(StoreError::Db(m)) if m.contains(NOT_SENT) => r = attempt(),
                _ => break,
            }
        }
        let ok = r.inspect_err(|_| {
            // No answer (a timeout, a lost connection) leaves the outcome unknown: etcd
            // may have applied it. This controller's state may no longer be etcd's, so it
            // steps down; whoever is active next loads the state from etcd.
            self.lost.store(true, Ordering::SeqCst);
        })?;
        if !ok {
            self.lost.store(true, Ordering::SeqCst);
            return Err(StoreError::NotActive(
                "its election key is gone or another controller's: a standby took over".into(),
            ));
        }
        Ok(())
    }
}
