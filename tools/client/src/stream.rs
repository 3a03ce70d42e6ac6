//! The byte stream under a [`Connection`](crate::Connection): TCP, or the same-host Unix socket.
//!
//! A node also listens on an abstract Unix socket named after its address
//! ([`dasmesh_wire::local_socket_name`]). A client tries that name first: when the node runs on
//! this machine, in this network namespace, the connection skips the loopback TCP stack on both
//! sides; when it does not, nothing listens under the name and the client connects over TCP.
//! The protocol is the same on both.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

/// A connected stream of either kind.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Connects to the node at `addr`: over its same-host socket if `local` and one is there,
    /// else over TCP.
    pub(crate) async fn connect(addr: &str, local: bool) -> io::Result<Stream> {
        if local {
            if let Some(s) = connect_local(addr).await {
                return Ok(Stream::Unix(s));
            }
        }
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Stream::Tcp(s))
    }

    /// Whether this is the same-host socket.
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    /// Splits into halves that can be used from different tasks.
    pub(crate) fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
        }
    }
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

/// The read half of a [`Stream`].
pub(crate) enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
}

/// The write half of a [`Stream`].
pub(crate) enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
}

/// Forwards `AsyncRead` to the variant inside.
macro_rules! forward_read {
    ($ty:ident) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Tcp(s) => Pin::new(s).poll_read(cx, buf),
                    $ty::Unix(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

forward_read!(Stream);
forward_read!(ReadHalf);

/// Forwards every `AsyncWrite` method to the variant inside.
macro_rules! forward_write {
    ($ty:ident) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $ty::Tcp(s) => Pin::new(s).poll_write(cx, buf),
                    $ty::Unix(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $ty::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    $ty::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $ty::Tcp(s) => s.is_write_vectored(),
                    $ty::Unix(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Tcp(s) => Pin::new(s).poll_flush(cx),
                    $ty::Unix(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Tcp(s) => Pin::new(s).poll_shutdown(cx),
                    $ty::Unix(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

forward_write!(Stream);
forward_write!(WriteHalf);
