//! dasmesh-client: what a host links to reach dasmesh storage.
//!
//! - [`Volume`]: a mounted volume of any layout (lease from the control plane, renewed in the
//!   background; I/O split by [`layout`] and sent straight to the nodes; mirror failover).
//! - [`Connection`]: one pipelined connection to one device of a node (tags, out-of-order
//!   replies), and [`NodeSession`]: several connections to the same device.
#![forbid(unsafe_code)]

mod buf;
mod connection;
mod error;
pub mod layout;
mod session;
mod stream;
mod volume;

pub use buf::AlignedBuf;
pub use connection::{ConnectOptions, Connection, SearchResult};
pub use error::Error;
pub use session::NodeSession;
pub use volume::{default_host, Access, MountOptions, Volume};
