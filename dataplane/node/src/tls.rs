//! Data-plane TLS (`--tls`): a terminator in front of the reactors.
//!
//! The node's TCP port then speaks TLS 1.3 (or 1.2) with mutual authentication: the node shows
//! its certificate, and every client must show one of the same CA. Each connection's plaintext is
//! relayed to the node's own same-host socket, where a reactor serves it exactly as it serves
//! any other connection. The reactors, their io_uring data path and the protocol are unchanged;
//! the price is one more copy of every byte through a Unix socket, on the terminator's threads,
//! besides the encryption itself (measured in `docs/security.md`). This kernel has no `tls` ULP,
//! so kernel TLS, which would keep the reactors' zero-copy sends, is not available to do better.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::Shared;

/// Bytes buffered per direction per connection.
const RELAY_BUF: usize = 128 << 10;
/// TLS connections served at once; more are closed as they are accepted.
pub const MAX_TLS_CONNECTIONS: usize = 4096;

/// What the terminator needs.
pub struct TlsRelay {
    /// The public listener (the node's `--listen` address).
    pub listener: std::net::TcpListener,
    /// The TLS server configuration (the node's certificate, its CA for clients).
    pub config: Arc<rustls::ServerConfig>,
    /// The abstract name of the node's same-host socket, where plaintext goes.
    pub local_name: String,
    /// Threads encrypting and relaying.
    pub threads: usize,
}

/// Starts the terminator on threads of its own; it stops accepting once `shared.shutdown` is
/// set, and its connections end as the reactors close theirs.
pub fn start(relay: TlsRelay, shared: Arc<Shared>) -> std::io::Result<std::thread::JoinHandle<()>> {
    relay.listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(relay.threads.max(1))
        .thread_name("tls")
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("tls-accept".into())
        .spawn(move || rt.block_on(serve(relay, shared)))
}

async fn serve(relay: TlsRelay, shared: Arc<Shared>) {
    let listener = match TcpListener::from_std(relay.listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("TLS listener: {e}");
            return;
        }
    };
    let acceptor = TlsAcceptor::from(relay.config);
    let slots = Arc::new(Semaphore::new(MAX_TLS_CONNECTIONS));
    let local = Arc::new(format!("\0{}", relay.local_name));
    let handshake_timeout = Duration::from_millis(shared.bounds.handshake_timeout_ms.max(1));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("TLS accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = tick.tick() => {
                if shared.shutdown.load(Ordering::Acquire) {
                    return;
                }
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, "{MAX_TLS_CONNECTIONS} TLS connections already: closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let local = Arc::clone(&local);
        tokio::spawn(async move {
            let _slot = slot;
            let mut tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%peer, "TLS handshake refused: {e}");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let mut plain = match UnixStream::connect(local.as_str()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, "reaching the reactors over the same-host socket: {e}");
                    return;
                }
            };
            let _ = tokio::io::copy_bidirectional_with_sizes(
                &mut tls, &mut plain, RELAY_BUF, RELAY_BUF,
            )
            .await;
        });
    }
}
