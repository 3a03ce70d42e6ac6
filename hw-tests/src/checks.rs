//! The qualification checks. Each runs against a [`Rig`], writes what it saw into its details
//! (kept even when it fails), and ends as a pass, a failure with the reason, or a skip with the
//! reason (the machine does not allow it, or the operator turned it off).

use std::time::Instant;

use dasmesh_client::Connection;
use dasmesh_wire::{Capabilities, Status};
use serde::Serialize;

use crate::{Error, Rig};

mod device;
mod node;

use device::{direct_io, geometry, io_uring, perf_profile};
use node::{alignment, edges, end_to_end, flush_crash, verify, zeroes};

/// Every check, in the order a run makes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// io_uring features the node uses.
    IoUring,
    /// Kernel and node agree on sector sizes and size.
    Geometry,
    /// O_DIRECT straight on the device: aligned I/O works, misaligned is EINVAL.
    DirectIo,
    /// Through the node: aligned I/O works, misaligned is refused with `Misaligned`.
    Alignment,
    /// The last block works, one block past it is `OutOfRange`.
    Edges,
    /// DISCARD and WRITE_ZEROES read back as promised.
    Zeroes,
    /// Flushed writes survive a node crash (and a loop device's detach and reattach).
    FlushCrash,
    /// Every block of the device stores its own data.
    Verify,
    /// The client with tokens: rights, lent ranges, search, foreign keys.
    EndToEnd,
    /// A short performance profile, device and node side by side.
    Perf,
}

impl Check {
    /// All checks in run order.
    pub const ALL: [Check; 10] = [
        Check::IoUring,
        Check::Geometry,
        Check::DirectIo,
        Check::Alignment,
        Check::Edges,
        Check::Zeroes,
        Check::FlushCrash,
        Check::Verify,
        Check::EndToEnd,
        Check::Perf,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Check::IoUring => "io-uring",
            Check::Geometry => "geometry",
            Check::DirectIo => "direct-io",
            Check::Alignment => "alignment",
            Check::Edges => "edges",
            Check::Zeroes => "zeroes",
            Check::FlushCrash => "flush-crash",
            Check::Verify => "verify",
            Check::EndToEnd => "end-to-end",
            Check::Perf => "perf",
        }
    }

    /// The check called `name`.
    pub fn from_name(name: &str) -> Option<Check> {
        Check::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Runs the check.
    pub fn run(self, rig: &mut Rig) -> CheckResult {
        let start = Instant::now();
        let mut n = Notes::default();
        let r = match self {
            Check::IoUring => io_uring(rig, &mut n),
            Check::Geometry => geometry(rig, &mut n),
            Check::DirectIo => direct_io(rig, &mut n),
            Check::Alignment => alignment(rig, &mut n),
            Check::Edges => edges(rig, &mut n),
            Check::Zeroes => zeroes(rig, &mut n),
            Check::FlushCrash => flush_crash(rig, &mut n),
            Check::Verify => verify(rig, &mut n),
            Check::EndToEnd => end_to_end(rig, &mut n),
            Check::Perf => perf_profile(rig, &mut n),
        };
        let (outcome, summary) = match r {
            Ok(s) => (Outcome::Pass, s),
            Err(Stop::Skip(s)) => (Outcome::Skip, s),
            Err(Stop::Fail(e)) => (Outcome::Fail, e.to_string()),
        };
        CheckResult {
            check: self.name(),
            outcome,
            summary,
            details: n.lines,
            seconds: start.elapsed().as_secs_f64(),
            data: n.data,
        }
    }
}

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It ran and the device (and node) behaved.
    Pass,
    /// It ran and something was wrong; the summary says what.
    Fail,
    /// It could not run here; the summary says why.
    Skip,
}

impl Outcome {
    /// As shown in the report.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
        }
    }
}

/// What a check found.
#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    /// The check's name.
    pub check: &'static str,
    /// Pass, fail or skip.
    pub outcome: Outcome,
    /// One line: what passed, what failed, or why it was skipped.
    pub summary: String,
    /// What it saw, line by line.
    pub details: Vec<String>,
    /// How long it took.
    pub seconds: f64,
    /// Figures for machines (geometry, io_uring features, the performance rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// Why a check stopped before passing.
#[derive(Debug)]
pub enum Stop {
    /// It cannot run here.
    Skip(String),
    /// It found a problem.
    Fail(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Fail(e)
    }
}

/// A check's end: the pass summary, or why it stopped.
type Checked = Result<String, Stop>;

/// A check's notebook.
#[derive(Default)]
struct Notes {
    lines: Vec<String>,
    data: Option<serde_json::Value>,
}

impl Notes {
    fn say(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }
}

fn fail(msg: impl Into<String>) -> Stop {
    Stop::Fail(Error::Unexpected(msg.into()))
}

fn caps(c: Capabilities) -> String {
    let names = [
        (Capabilities::FLUSH, "FLUSH"),
        (Capabilities::FUA, "FUA"),
        (Capabilities::DISCARD, "DISCARD"),
        (Capabilities::WRITE_ZEROES, "WRITE_ZEROES"),
        (Capabilities::SEARCH, "SEARCH"),
        (Capabilities::DISCARD_ZEROES, "DISCARD_ZEROES"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| c.has(*b))
        .map(|(_, n)| *n)
        .collect();
    v.join(" ")
}

/// The refusal status of a client error, or a failure naming what was expected.
fn expect_status(
    r: Result<impl Sized, dasmesh_client::Error>,
    want: Status,
    what: &str,
) -> Result<(), Stop> {
    match r {
        Err(e) if e.status() == Some(want) => Ok(()),
        Err(e) => Err(fail(format!("{what}: expected {}, got: {e}", want.name()))),
        Ok(_) => Err(fail(format!(
            "{what}: expected {}, but it succeeded",
            want.name()
        ))),
    }
}

/// A READ of the first block still works (the connection kept serving after a refusal).
fn still_serving(rig: &Rig, c: &Connection, block: usize, after: &str) -> Result<(), Stop> {
    rig.block_on(c.read(0, block))
        .map(drop)
        .map_err(|e| fail(format!("the connection stopped serving after {after}: {e}")))
}

/// The three transfer sizes the issue names.
const SIZES: [usize; 3] = [512, 4096, 1 << 20];
