//! dasmesh-controller: the control plane's logic, as a deterministic state machine.
//!
//! [`apply`] takes the state and a [`Command`] and either changes the state and returns an
//! [`Outcome`], or refuses with an [`Error`] that says why and changes nothing. It does no I/O
//! and reads no clock (times come in the commands), so tests drive it directly; the gRPC
//! service and the store (redb, etcd later) are thin layers around it.
#![forbid(unsafe_code)]

pub mod alloc;
pub mod authz;
pub mod console;
pub mod controller;
pub mod ha;
pub mod keys;
pub mod metrics;
pub mod service;
pub mod state;
pub mod store;

pub use state::{apply, Command, Error, Outcome, State};
