//! The `--http` port's connections: plain TCP (a controller run with `--insecure-no-auth`) or
//! TLS with the controller's certificate, where a client certificate of the cluster's CA, if
//! shown, names the caller ([`Peer`]). At most [`MAX_CONNECTIONS`] are served at once; a TLS
//! handshake runs in a task of its own and must end within [`HANDSHAKE`], so a client that
//! stalls its handshake holds up no other.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use dasmesh_api::tls::{identity_of, Identity};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a TLS handshake may take.
pub const HANDSHAKE: Duration = Duration::from_secs(5);

/// Who is at the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// Over TLS (identities are checked); `false`: a controller without identities.
    pub tls: bool,
    /// The identity its client certificate names, if it showed one.
    pub identity: Option<Identity>,
}

impl Connected<IncomingStream<'_, Incoming>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Incoming>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A connection: its stream and the permit it holds while it is open.
pub struct Conn {
    io: Pin<Box<dyn Stream>>,
    _permit: OwnedSemaphorePermit,
}

trait Stream: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Stream for T {}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io.as_mut().poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_shutdown(cx)
    }
}

/// The accepted connections, ready to serve (handshakes done).
pub struct Incoming {
    local: SocketAddr,
    tls: bool,
    ready: mpsc::Receiver<(Conn, Peer)>,
}

impl Incoming {
    /// Accepts on `listener`, over TLS with `tls` if given.
    pub fn new(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(16);
        let is_tls = tls.is_some();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let (tcp, addr) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: wait rather than spin.
                        tracing::warn!("--http accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let tx = tx.clone();
                match &acceptor {
                    None => {
                        let peer = Peer {
                            addr,
                            tls: false,
                            identity: None,
                        };
                        let conn = Conn {
                            io: Box::pin(tcp),
                            _permit: permit,
                        };
                        if tx.send((conn, peer)).await.is_err() {
                            return;
                        }
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            if let Some(c) = handshake(acceptor, tcp, addr, permit).await {
                                let _ = tx.send(c).await;
                            }
                        });
                    }
                }
            }
        });
        Ok(Incoming {
            local,
            tls: is_tls,
            ready,
        })
    }

    /// Whether it serves TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }
}

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
    permit: OwnedSemaphorePermit,
) -> Option<(Conn, Peer)> {
    let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!(%addr, "--http TLS handshake: {e}");
            return None;
        }
        Err(_) => {
            tracing::debug!(%addr, "--http TLS handshake took over {HANDSHAKE:?}");
            return None;
        }
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| match identity_of(leaf) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::debug!(%addr, "--http client certificate names no identity: {e}");
                None
            }
        });
    let peer = Peer {
        addr,
        tls: true,
        identity,
    };
    let conn = Conn {
        io: Box::pin(tls),
        _permit: permit,
    };
    Some((conn, peer))
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Conn, Peer) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task ended (the runtime is shutting down): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            addr: self.local,
            tls: self.tls,
            identity: None,
        })
    }
}
