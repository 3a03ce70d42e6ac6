//! dasmesh-client: what a host links to reach dasmesh storage.
//!
//! For now the data-path initiator: [`Connection`] (one pipelined connection to one device of a
//! node, with tags and out-of-order replies) and [`NodeSession`] (several connections to the same
//! device). The control-plane client and volume layouts come with their issues.
#![forbid(unsafe_code)]

mod buf;
mod connection;
mod error;
mod session;

pub use buf::AlignedBuf;
pub use connection::{ConnectOptions, Connection, SearchResult};
pub use error::Error;
pub use session::NodeSession;
