//! The socket under a [`Connection`](crate::Connection): TCP, the same-host Unix socket, or TLS
//! through a relay.
//!
//! A node also listens on an abstract Unix socket named after its address
//! ([`dasmesh_wire::local_socket_name`]). A client tries that name first: when the node runs on
//! this machine, in this network namespace, the connection skips the loopback TCP stack on both
//! sides; when it does not, nothing listens under the name and the client connects over TCP.
//! The protocol is the same on both.
//!
//! After the handshake, reads and writes are plain system calls made by whichever caller is
//! driving the connection at that moment, and the runtime is asked only to wait when the socket
//! would block (see `connection.rs`).

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A connected stream of either kind (during the handshake).
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A TLS connection, through a relay task: the connection reads and writes plaintext on
    /// this end of a socket pair, and the task carries it over TLS (see [`connect_tls`]).
    Tls(UnixStream),
}

/// Bytes the TLS relay buffers per direction.
const TLS_RELAY_BUF: usize = 128 << 10;

impl Stream {
    /// Connects to the node at `addr`: over its same-host socket if `local` and one is there,
    /// else over TCP, with TLS when `tls` is given.
    pub(crate) async fn connect(
        addr: &str,
        local: bool,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> io::Result<Stream> {
        if local {
            if let Some(s) = connect_local(addr).await {
                return Ok(Stream::Unix(s));
            }
        }
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        match tls {
            Some(cfg) => connect_tls(addr, s, cfg).await,
            None => Ok(Stream::Tcp(s)),
        }
    }

    /// Whether this is the same-host socket.
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    /// Whether this goes over TLS.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The socket for the data path (see [`Sock`]).
    pub(crate) fn into_sock(self) -> io::Result<Sock> {
        Ok(match self {
            Stream::Tcp(io) => {
                let raw = io.as_fd().try_clone_to_owned()?.into();
                Sock::Tcp { io, raw }
            }
            Stream::Unix(io) | Stream::Tls(io) => {
                let raw = io.as_fd().try_clone_to_owned()?.into();
                Sock::Unix { io, raw }
            }
        })
    }
}

/// Mutual TLS with the node at `addr` over `tcp`, checked against the CA of `cfg` and the
/// address's host (which the node's certificate must name); then a relay task on this runtime
/// carries the plaintext between the TLS stream and one end of a socket pair, and the
/// connection gets the other end. The connection's code stays the same; the relay costs a copy.
async fn connect_tls(
    addr: &str,
    tcp: TcpStream,
    cfg: &Arc<rustls::ClientConfig>,
) -> io::Result<Stream> {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::clone(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "TLS with {addr}: {e} (a node serves TLS only with --tls, and its certificate \
                     must be of this CA and name {host})"
                ),
            )
        })?;
    let (mine, relay) = UnixStream::pair()?;
    tokio::spawn(async move {
        let mut relay = relay;
        let _ = tokio::io::copy_bidirectional_with_sizes(
            &mut tls,
            &mut relay,
            TLS_RELAY_BUF,
            TLS_RELAY_BUF,
        )
        .await;
    });
    Ok(Stream::Tls(mine))
}

/// The node's same-host socket, if one listens under `addr`'s name and belongs to root or to this
/// process's user (anyone else could have taken a free name to collect tokens).
async fn connect_local(addr: &str) -> Option<UnixStream> {
    let name = dasmesh_wire::local_socket_name(addr)?;
    let s = UnixStream::connect(format!("\0{name}")).await.ok()?;
    let peer = s.peer_cred().ok()?.uid();
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if peer == 0 || Some(peer) == me {
        Some(s)
    } else {
        tracing::warn!("@{name} belongs to uid {peer}, not to a node of ours: using TCP");
        None
    }
}

/// A connected socket: tokio's handle tells when it is ready; reads and writes are single
/// system calls on a duplicate of its descriptor (the same socket), made whenever a caller wants,
/// without asking the runtime first.
pub(crate) enum Sock {
    Tcp {
        io: TcpStream,
        raw: std::net::TcpStream,
    },
    Unix {
        io: UnixStream,
        raw: std::os::unix::net::UnixStream,
    },
}

fn would_block<T>() -> io::Result<T> {
    Err(io::ErrorKind::WouldBlock.into())
}

impl Sock {
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp { raw, .. } => (&*raw).read(buf),
            Sock::Unix { raw, .. } => (&*raw).read(buf),
        }
    }

    /// Reads only if the runtime has seen the socket readable since a read last found it empty
    /// (no system call otherwise: `WouldBlock` at once); a read that would block forgets the
    /// readiness, guarded by tokio against an event that came in since before the read.
    ///
    /// A short read is not taken as "drained": clearing the readiness there too (as tokio's
    /// own `poll_read` does) was tried while two-job `dasmesh-bench` runs hung, before the
    /// cause of those hangs was found elsewhere (see `yield_once`); it has not been tried
    /// again, so the read after a drained socket still costs one `EAGAIN`.
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp { io, raw } => io.try_io(Interest::READABLE, || (&*raw).read(buf)),
            Sock::Unix { io, raw } => io.try_io(Interest::READABLE, || (&*raw).read(buf)),
        }
    }

    pub(crate) fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Sock::Tcp { raw, .. } => (&*raw).write_vectored(bufs),
            Sock::Unix { raw, .. } => (&*raw).write_vectored(bufs),
        }
    }

    /// Registers the task for readability (only one task at a time may wait here: the
    /// connection's reader). Ready can be stale: see [`Sock::clear_read`].
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Sock::Tcp { io, .. } => io.poll_read_ready(cx),
            Sock::Unix { io, .. } => io.poll_read_ready(cx),
        }
    }

    /// Forgets a readiness that a read found stale. A read must follow (an event that came
    /// in between is cleared too).
    pub(crate) fn clear_read(&self) {
        let _ = match self {
            Sock::Tcp { io, .. } => io.try_io(Interest::READABLE, would_block::<()>),
            Sock::Unix { io, .. } => io.try_io(Interest::READABLE, would_block::<()>),
        };
    }

    /// Waits until the socket may have room; a write must follow.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        match self {
            Sock::Tcp { io, .. } => {
                io.writable().await?;
                let _ = io.try_io(Interest::WRITABLE, would_block::<()>);
            }
            Sock::Unix { io, .. } => {
                io.writable().await?;
                let _ = io.try_io(Interest::WRITABLE, would_block::<()>);
            }
        }
        Ok(())
    }

    pub(crate) fn shutdown(&self) {
        let _ = match self {
            Sock::Tcp { raw, .. } => raw.shutdown(std::net::Shutdown::Both),
            Sock::Unix { raw, .. } => raw.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) | Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) | Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) | Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) | Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
