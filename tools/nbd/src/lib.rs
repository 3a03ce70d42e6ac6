//! dasmesh-nbd: serves a dasmesh volume as an NBD export, so qemu, nbd-client and the kernel's
//! nbd driver, fio's nbd engine and libnbd's tools (nbdcopy, nbdinfo) use it with no plugin.
//!
//! - [`proto`]: the NBD wire format (pure codecs).
//! - [`negotiate`]: the fixed-newstyle handshake (a pure decision step and a thin loop).
//! - [`transmit`]: the transmission phase: requests checked by a pure [`transmit::check`],
//!   run concurrently, replies batched by one writer.
//! - [`readahead`]: sequential readahead in front of the volume, coherent with the writes.
//! - [`server`]: TCP or Unix listener, many clients at once, graceful stop.
//! - [`serve_volume`]: mount a volume, serve it, flush and unmount on stop.
//!
//! Implemented from the NBD protocol document (NetworkBlockDevice/nbd, doc/proto.md). Simple
//! replies only (structured replies are declined), no TLS. See README.md in this crate.
#![forbid(unsafe_code)]

pub mod export;
pub mod negotiate;
pub mod poll;
pub mod proto;
pub mod readahead;
pub mod server;
pub mod transmit;
mod volume;

pub use export::{Backend, Data, Export, Failure, MemoryBackend, MAX_BLOCK};
pub use poll::PollMode;
pub use readahead::{Readahead, ReadaheadConfig};
pub use server::{serve, ListenAddr, Listener};
pub use volume::{errno, serve_volume, shutdown_signal, GatewayError, GatewayOptions};
