//! Qualification of raw block devices for dasmesh, and of the node serving them: sector sizes,
//! O_DIRECT, io_uring, flush durability across a crash, discard and zeroing, the device's edges,
//! a full verify pass, the client end to end, and a short performance profile.
//!
//! The same checks run in two places: this crate's tests (on loop devices they make and remove
//! themselves, skipped with a reason where the machine does not allow it) and the binary
//! `dasmesh-hwtest`, which runs them against a device an operator names and prints a report.
#![forbid(unsafe_code)]

pub mod checks;
pub mod device;
pub mod env;
pub mod loopdev;
pub mod node;
pub mod pattern;
pub mod perf;
pub mod report;
pub mod rig;
pub mod uring;

pub use checks::{Check, CheckResult, Outcome};
pub use rig::Rig;

use std::path::PathBuf;

/// Why a step of a check failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The node refused or failed a request.
    #[error("{what}: {source}")]
    Client {
        /// What was being done.
        what: String,
        /// The client's error.
        source: dasmesh_client::Error,
    },
    /// An external command (losetup, blockdev, blkid, dasmesh-bench) failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr (or exit status).
        stderr: String,
    },
    /// A workspace binary is not where it should be.
    #[error("{0} missing: run `cargo build --workspace --bins` first")]
    MissingBinary(PathBuf),
    /// The node did not start.
    #[error("dasmesh-node did not start: {0}")]
    NodeStart(String),
    /// The device answered something other than what the check expected.
    #[error("{0}")]
    Unexpected(String),
}

impl Error {
    /// An [`Error::Io`] with context.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    /// An [`Error::Client`] with context.
    pub fn client(what: impl Into<String>) -> impl FnOnce(dasmesh_client::Error) -> Error {
        let what = what.into();
        move |source| Error::Client { what, source }
    }
}

/// Result of a check step.
pub type Result<T, E = Error> = std::result::Result<T, E>;
