//! dasmesh-nbd: serves a dasmesh volume as an NBD export, so qemu, nbd-client and the kernel's
//! nbd driver, fio's nbd engine and libnbd's tools (nbdcopy, nbdinfo) use it with no plugin.
//!
//! - [`proto`]: the NBD wire format (pure codecs).
//! - [`negotiate`]: the fixed-newstyle handshake (a pure decision step and a thin loop).
//! - [`request`]: what a request header asks for, decided by a pure [`request::check`].
//! - [`transmit`]: the transmission phase: requests run concurrently within the memory budget,
//!   replies batched by one writer; a client that goes away has its requests dropped.
//! - [`budget`]: the memory budget for request and reply data, shared by all connections.
//! - [`readahead`]: sequential readahead in front of the volume, coherent with the writes.
//! - [`server`]: TCP or Unix listener, many clients at once, graceful stop.
//! - [`runtime`]: the threads that serve them (one per CPU by default).
//! - [`serve_volume`]: mount a volume, serve it, flush and unmount on stop.
//!
//! Implemented from the NBD protocol document (NetworkBlockDevice/nbd, doc/proto.md). Simple
//! replies only (structured replies are declined), no TLS. See README.md in this crate.
#![forbid(unsafe_code)]

pub mod budget;
pub mod export;
pub mod metrics;
pub mod negotiate;
pub mod poll;
pub mod proto;
pub mod readahead;
pub mod request;
pub mod runtime;
pub mod server;
pub mod transmit;
mod volume;

pub use budget::{Budget, BudgetError, DEFAULT_BUDGET};
pub use export::{Backend, Data, Export, Failure, MemoryBackend, MAX_BLOCK};
pub use poll::PollMode;
pub use readahead::{Readahead, ReadaheadConfig};
pub use runtime::Threads;
pub use server::{serve, ListenAddr, Listener};
pub use volume::{errno, serve_volume, shutdown_signal, GatewayError, GatewayOptions};
