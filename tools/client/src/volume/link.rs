//! The connections to one extent: connect on first use, forget a failed session, swap in a fresh
//! one when the lease's token is renewed.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use dasmesh_wire::{DeviceId, Token};

use crate::{ConnectOptions, Error, NodeSession};

/// Where an extent is, and how to connect to its node.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) addr: String,
    pub(super) device: DeviceId,
    pub(super) opts: ConnectOptions,
}

/// The connections to one extent.
pub(super) struct Link {
    /// Where it is (changes when the extent is replaced on another node).
    pub(super) target: Mutex<Target>,
    pub(super) token: Mutex<Token>,
    pub(super) current: RwLock<Option<Arc<NodeSession>>>,
    pub(super) connecting: tokio::sync::Mutex<()>,
    pub(super) max_io: AtomicU64,
    pub(super) block_size: AtomicU32,
    pub(super) connections: usize,
}

impl Link {
    pub(super) fn current(&self) -> Option<Arc<NodeSession>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn set(&self, s: Option<Arc<NodeSession>>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    pub(super) async fn connect(&self) -> Result<Arc<NodeSession>, Error> {
        let token = *self.token.lock().unwrap_or_else(|p| p.into_inner());
        let t = self.target();
        let s = NodeSession::connect(&t.addr, t.device, &token, self.connections, &t.opts).await?;
        let info = s.info();
        self.max_io
            .store(u64::from(info.max_io_size.max(4096)), Ordering::Relaxed);
        self.block_size
            .store(info.block_size.max(1), Ordering::Relaxed);
        Ok(Arc::new(s))
    }

    /// The open session, connecting first if there is none.
    pub(super) async fn session(&self) -> Result<Arc<NodeSession>, Error> {
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let _one = self.connecting.lock().await;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let s = self.connect().await?;
        self.set(Some(Arc::clone(&s)));
        Ok(s)
    }

    /// Forgets `s` if it is still the current session (it failed).
    pub(super) fn invalidate(&self, s: &Arc<NodeSession>) {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, s)) {
            *cur = None;
        }
    }

    /// Where the extent is now.
    pub(super) fn target(&self) -> Target {
        self.target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The extent was replaced: it is at `t` now, opened by `token`. The next use connects
    /// there (calls in flight finish on the old session).
    pub(super) fn retarget(&self, t: Target, token: Token) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = t;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = token;
        self.set(None);
    }

    /// Takes a renewed token: a fresh session replaces the current one (calls in flight finish
    /// on the old one, which closes when they are done).
    pub(super) async fn renew(&self, token: Token) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = token;
        let _one = self.connecting.lock().await;
        match self.connect().await {
            Ok(s) => self.set(Some(s)),
            // Reconnects on next use.
            Err(e) => {
                tracing::debug!(addr = %self.target().addr, "reconnect after renewal failed: {e}");
                self.set(None);
            }
        }
    }
}
