//! The one error type of the client.

use dasmesh_wire::{Op, Status, TokenError};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    /// The node refused the handshake.
    #[error("node refused the connection: {name} ({status})", name = .0.name(), status = .0)]
    Handshake(Status),
    /// The node refused or failed a request.
    #[error("node refused {op:?}: {} ({status})", .status.name())]
    Request {
        /// The op.
        op: Op,
        /// The node's status.
        status: Status,
    },
    /// The node sent something that breaks the protocol; the connection was closed.
    #[error("protocol violation by the node: {0}")]
    Protocol(String),
    /// The connection is closed; requests in flight on it failed.
    #[error("connection closed")]
    Closed,
    /// A token could not be used.
    #[error("token: {0}")]
    Token(TokenError),
    /// Connecting, or a node's reply, took too long.
    #[error("timed out (connecting, or waiting for the node's reply)")]
    Timeout,
    /// The control plane refused or could not be reached.
    #[error("control plane: {0}")]
    Control(String),
    /// The volume is leased read-write by another host (a mount waits for it to end, or for
    /// the lease to expire when that host is gone).
    #[error("control plane: {0}")]
    Held(String),
    /// No copy of the data can serve the request.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A caller argument the node would refuse anyway (checked before sending).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

// Not `#[from]`: that would also make the inner error the source, and error reports that print
// the chain (anyhow's `{:#}`) would show its message twice.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<TokenError> for Error {
    fn from(e: TokenError) -> Self {
        Error::Token(e)
    }
}

impl Error {
    /// The node's status, for handshake and request refusals.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Handshake(s) | Error::Request { status: s, .. } => Some(*s),
            _ => None,
        }
    }
}
