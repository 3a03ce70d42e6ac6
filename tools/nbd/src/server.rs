//! Listening and accepting: TCP or a Unix socket, one task per client connection (handshake,
//! then transmission), and a graceful stop: no new connections, requests in flight finished and
//! answered, then return.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::budget::{Budget, Share};
use crate::export::{Backend, Export};
use crate::negotiate::handshake;
use crate::poll::{Activity, PollMode};
use crate::transmit::transmit;

/// Where to listen: `unix:PATH` or `HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address (`127.0.0.1:0` picks a free port).
    Tcp(String),
    /// A Unix socket path (created; removed again on exit).
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("unix: needs a path".into());
            }
            return Ok(ListenAddr::Unix(p.into()));
        }
        if s.rsplit_once(':')
            .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            return Err(format!("{s:?}: expected unix:PATH or HOST:PORT"));
        }
        Ok(ListenAddr::Tcp(s.to_string()))
    }
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket, and its path (removed on drop).
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `addr`. A stale Unix socket file at the path is replaced.
    pub async fn bind(addr: &ListenAddr) -> std::io::Result<Listener> {
        Ok(match addr {
            ListenAddr::Tcp(a) => Listener::Tcp(TcpListener::bind(a).await?),
            ListenAddr::Unix(p) => {
                if std::fs::symlink_metadata(p)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    std::fs::remove_file(p)?;
                }
                Listener::Unix(UnixListener::bind(p)?, p.clone())
            }
        })
    }

    /// What it listens on: `IP:PORT` or `unix:PATH`.
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| format!("?({e})"), |a| a.to_string()),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Serves `export` from `backend` on `listener` until `shutdown` resolves; then stops accepting,
/// lets every connection finish and answer the requests it has in flight, and returns. Every
/// connection draws its READ and WRITE data from `budget`. `poll` says how to wait while
/// requests are in flight (see [`crate::poll`]).
pub async fn serve<B: Backend>(
    listener: Listener,
    export: Arc<Export>,
    backend: Arc<B>,
    budget: Budget,
    shutdown: impl Future<Output = ()>,
    poll: PollMode,
) {
    let (stop_tx, stop) = watch::channel(false);
    // Counted only where something polls on it: the count is one cache line every request of
    // every connection would otherwise write to.
    let activity = (poll == PollMode::Adaptive).then(|| Arc::new(Activity::default()));
    let awake = activity
        .as_ref()
        .map(|a| tokio::spawn(Arc::clone(a).keep_awake()));
    let mut conns = JoinSet::new();
    let ids = AtomicU64::new(0);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = accept(&listener) => a,
        };
        let conn = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let (export, backend, stop) = (Arc::clone(&export), Arc::clone(&backend), stop.clone());
        let c = Ctx {
            id,
            export,
            backend,
            share: budget.connection(),
            stop,
            activity: activity.clone(),
        };
        conns.spawn(async move {
            crate::metrics::connections(1);
            match conn {
                Conn::Tcp(s, peer) => {
                    tracing::info!(id, %peer, "client connected");
                    let _ = s.set_nodelay(true);
                    connection(s, |s| s.into_split(), c).await;
                }
                Conn::Unix(s) => {
                    tracing::info!(id, "client connected (unix socket)");
                    connection(s, |s| s.into_split(), c).await;
                }
            }
            crate::metrics::connections(-1);
        });
    }
    drop(listener);
    tracing::info!(
        connections = conns.len(),
        "stopping: finishing requests in flight"
    );
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
    if let Some(t) = awake {
        t.abort();
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream, std::net::SocketAddr),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<Conn> {
    match l {
        Listener::Tcp(l) => l.accept().await.map(|(s, a)| Conn::Tcp(s, a)),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
    }
}

/// What one connection is served with.
struct Ctx<B> {
    id: u64,
    export: Arc<Export>,
    backend: Arc<B>,
    share: Share,
    stop: watch::Receiver<bool>,
    activity: Option<Arc<Activity>>,
}

async fn connection<S, R, W, B>(mut s: S, split: impl FnOnce(S) -> (R, W), c: Ctx<B>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
    B: Backend,
{
    let Ctx {
        id,
        export,
        backend,
        share,
        mut stop,
        activity,
    } = c;
    let hs = tokio::select! {
        r = handshake(&mut s, &export) => r,
        _ = stop.wait_for(|s| *s) => {
            tracing::info!(id, "closed during the handshake: stopping");
            return;
        }
    };
    if let Err(e) = hs {
        tracing::info!(id, "no transmission: {e}");
        return;
    }
    tracing::debug!(id, "transmission phase");
    let (r, w) = split(s);
    match transmit(r, w, export, backend, share, stop, activity).await {
        Ok(e) if e.gone => tracing::info!(
            id,
            dropped = e.dropped,
            abandoned = e.abandoned,
            "client gone: its queued requests dropped, its reads in flight abandoned"
        ),
        Ok(_) => tracing::info!(id, "client disconnected"),
        Err(e) => tracing::warn!(id, "connection ended: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "unix:/tmp/x.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix("/tmp/x.sock".into()))
        );
        assert_eq!(
            "127.0.0.1:10809".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("127.0.0.1:10809".into()))
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("localhost".parse::<ListenAddr>().is_err());
        assert!("h:99999".parse::<ListenAddr>().is_err());
    }
}
