//! The qualification checks. Each runs against a [`Rig`], writes what it saw into its details
//! (kept even when it fails), and ends as a pass, a failure with the reason, or a skip with the
//! reason (the machine does not allow it, or the operator turned it off).

use std::time::Instant;

use dasmesh_client::Connection;
use dasmesh_wire::{Capabilities, HelloReply, Rights, Status};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::device::{self, Aligned};
use crate::{pattern, perf, uring, Error, Rig};

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

fn io_uring(rig: &mut Rig, n: &mut Notes) -> Checked {
    let f = uring::probe(Some(rig.device()));
    n.data = serde_json::to_value(&f).ok();
    if !f.ring {
        return Err(Stop::Skip(f.summary()));
    }
    let list = |v: &[(String, bool)]| {
        v.iter()
            .map(|(k, ok)| format!("{k} {}", if *ok { "yes" } else { "NO" }))
            .collect::<Vec<_>>()
            .join(", ")
    };
    n.say(format!("opcodes: {}", list(&f.opcodes)));
    n.say(format!("kernel features: {}", list(&f.kernel_features)));
    if !f.defer_taskrun {
        n.say(if f.coop_taskrun {
            "no DEFER_TASKRUN: the node falls back to COOP_TASKRUN"
        } else {
            "neither DEFER_TASKRUN nor COOP_TASKRUN: the node runs a plain ring"
        });
    }
    if f.node_ready() {
        Ok(f.summary())
    } else {
        Err(fail(format!(
            "the node's data path needs more: {}",
            f.summary()
        )))
    }
}

fn geometry(rig: &mut Rig, n: &mut Notes) -> Checked {
    let k = rig.kernel;
    n.say(format!(
        "kernel: logical {} B (BLKSSZGET), physical {} B (BLKPBSZGET), size {} B (BLKGETSIZE64)",
        k.logical, k.physical, k.size
    ));
    let dev = rig.device().to_path_buf();
    let limit = |f| device::queue_limit(&dev, f).map_or("?".into(), |v: u64| v.to_string());
    n.say(format!(
        "queue: discard_max_bytes {}, write_zeroes_max_bytes {}, rotational {}",
        limit("discard_max_bytes"),
        limit("write_zeroes_max_bytes"),
        limit("rotational")
    ));
    if let Some(l) = rig.loop_device() {
        n.say(format!(
            "loop device: {}-byte sectors asked for, direct I/O {}",
            l.sector_size(),
            match l.direct_io() {
                Some(true) => "on",
                Some(false) => "OFF (the backing filesystem refused it)",
                None => "unknown",
            }
        ));
        if k.logical != l.sector_size() || k.size != l.size() {
            return Err(fail(format!(
                "the loop device was made with {}-byte sectors and {} bytes, the kernel reports {} and {}",
                l.sector_size(),
                l.size(),
                k.logical,
                k.size
            )));
        }
    }
    if !k.logical.is_power_of_two()
        || k.physical < k.logical
        || !k.size.is_multiple_of(u64::from(k.logical))
    {
        return Err(fail(format!(
            "the kernel's geometry is inconsistent: {k:?}"
        )));
    }
    let c = rig.connect_all()?;
    let h: HelloReply = *c.info();
    n.data = Some(serde_json::json!({
        "kernel": k,
        "node": {
            "block_size": h.block_size,
            "physical_block_size": h.physical_block_size,
            "device_size": h.device_size,
            "max_io_size": h.max_io_size,
            "max_inflight": h.max_inflight,
            "capabilities": caps(h.capabilities),
        }
    }));
    n.say(format!(
        "node:   block {} B, physical {} B, size {} B, max I/O {}, capabilities {}",
        h.block_size,
        h.physical_block_size,
        h.device_size,
        dasmesh_wire::units::format_size(u64::from(h.max_io_size)),
        caps(h.capabilities)
    ));
    let mut bad = Vec::new();
    if h.block_size != k.logical {
        bad.push(format!("block size {} != {}", h.block_size, k.logical));
    }
    if h.physical_block_size != k.physical {
        bad.push(format!(
            "physical block size {} != {}",
            h.physical_block_size, k.physical
        ));
    }
    if h.device_size != k.size {
        bad.push(format!("size {} != {}", h.device_size, k.size));
    }
    if !bad.is_empty() {
        return Err(fail(format!("node and kernel differ: {}", bad.join(", "))));
    }
    Ok(format!(
        "kernel and node agree: {}/{} B sectors, {}",
        k.logical,
        k.physical,
        dasmesh_wire::units::format_size(k.size)
    ))
}

/// The three transfer sizes the issue names.
const SIZES: [usize; 3] = [512, 4096, 1 << 20];

fn direct_io(rig: &mut Rig, n: &mut Notes) -> Checked {
    let k = rig.kernel;
    let block = k.logical as usize;
    if k.size < 4 << 20 {
        return Err(Stop::Skip(format!("device of {} B is under 4 MiB", k.size)));
    }
    let f = device::open_direct(rig.device())?;
    let mut done = Vec::new();
    for (i, &len) in SIZES.iter().enumerate() {
        if len % block != 0 {
            n.say(format!(
                "{len} B: below the {block}-byte sector, O_DIRECT cannot do it (not a defect)"
            ));
            continue;
        }
        // Offsets 1 MiB apart, each aligned to the size itself (the strictest case).
        let off = ((i as u64 + 1) << 20).next_multiple_of(len as u64);
        let mut w = Aligned::new(len, 4096);
        pattern::fill(w.as_mut_slice(), off, block, 0xD1);
        device::pwrite(&f, w.as_slice(), off)
            .map_err(Error::io(format!("O_DIRECT write of {len} B at {off}")))?;
        let mut r = Aligned::new(len, 4096);
        device::pread(&f, r.as_mut_slice(), off)
            .map_err(Error::io(format!("O_DIRECT read of {len} B at {off}")))?;
        if let Some(m) = pattern::check(r.as_slice(), off, block, 0xD1) {
            return Err(fail(format!("{len} B at {off}: read back differs: {m}")));
        }
        done.push(dasmesh_wire::units::format_size(len as u64));
        n.say(format!("{len} B at offset {off}: written and read back"));
    }
    // What the node has to catch before the kernel does: a misaligned O_DIRECT offset.
    let mut r = Aligned::new(block, 4096);
    match device::pread(&f, r.as_mut_slice(), (block / 2) as u64) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            n.say(format!(
                "read at offset {}: EINVAL from the kernel, as expected",
                block / 2
            ));
        }
        Err(e) => {
            return Err(fail(format!(
                "misaligned O_DIRECT read: expected EINVAL, got {e}"
            )))
        }
        Ok(()) => {
            return Err(fail(
                "a misaligned O_DIRECT read succeeded: the device does not enforce its sector size",
            ))
        }
    }
    Ok(format!(
        "O_DIRECT {} round-trip; misaligned offset is EINVAL",
        done.join(", ")
    ))
}

fn alignment(rig: &mut Rig, n: &mut Notes) -> Checked {
    let c = rig.connect_all()?;
    let h = *c.info();
    let block = h.block_size as usize;
    let base = 8u64 << 20;
    if rig.kernel.size < base + (4 << 20) {
        return Err(Stop::Skip("device under 12 MiB".into()));
    }
    let mut ok = Vec::new();
    for (i, &len) in SIZES.iter().enumerate() {
        let off = base + ((i as u64) << 20);
        let mut data = vec![0u8; len];
        if len % block != 0 {
            rig.block_on(async {
                expect_status(
                    c.write(off, &data, false).await,
                    Status::Misaligned,
                    &format!("a {len} B write on {block}-byte blocks"),
                )
            })?;
            n.say(format!(
                "{len} B: smaller than a block, refused with Misaligned"
            ));
            continue;
        }
        if len > h.max_io_size as usize {
            n.say(format!("{len} B: above the node's max I/O, not tried"));
            continue;
        }
        pattern::fill(&mut data, off, block, 0xA1);
        rig.block_on(c.write(off, &data, false))
            .map_err(Error::client(format!("write {len} B at {off}")))?;
        let back = rig
            .block_on(c.read(off, len))
            .map_err(Error::client(format!("read {len} B at {off}")))?;
        if let Some(m) = pattern::check(&back, off, block, 0xA1) {
            return Err(fail(format!("{len} B at {off}: {m}")));
        }
        ok.push(dasmesh_wire::units::format_size(len as u64));
        n.say(format!("{len} B at offset {off}: written and read back"));
    }
    // Refused requests: misaligned offsets and lengths for every op that takes a range, all
    // aimed at two patterned blocks that must come through unchanged.
    let mut guard = vec![0u8; 2 * block];
    pattern::fill(&mut guard, base, block, 0xA2);
    rig.block_on(c.write(base, &guard, false))
        .map_err(Error::client(format!("write 2 blocks at {base}")))?;
    let half = (block / 2) as u64;
    let bad_payload = vec![0xEEu8; block + block / 2];
    let cases: Vec<(String, Status)> = vec![
        (
            format!("READ at offset {}", base + half),
            Status::Misaligned,
        ),
        (
            format!("READ of {} B", block + block / 2),
            Status::Misaligned,
        ),
        (
            format!("WRITE at offset {}", base + half),
            Status::Misaligned,
        ),
        (
            format!("WRITE of {} B", block + block / 2),
            Status::Misaligned,
        ),
        (
            format!("DISCARD at offset {}", base + half),
            Status::Misaligned,
        ),
        (
            format!("WRITE_ZEROES of {} B", block + block / 2),
            Status::Misaligned,
        ),
    ];
    for (i, (what, want)) in cases.iter().enumerate() {
        let r = rig.block_on(async {
            match i {
                0 => c.read(base + half, block).await.map(drop),
                1 => c.read(base, block + block / 2).await.map(drop),
                2 => c.write(base + half, &bad_payload[..block], false).await,
                3 => c.write(base, &bad_payload, false).await,
                4 => c.discard(base + half, block as u64).await,
                _ => {
                    c.write_zeroes(base, (block + block / 2) as u64, false)
                        .await
                }
            }
        });
        expect_status(r, *want, what)?;
        still_serving(rig, &c, block, what)?;
        n.say(format!("{what}: {}, connection still serving", want.name()));
    }
    // No refused request may have changed what is stored.
    let back = rig
        .block_on(c.read(base, block * 2))
        .map_err(Error::client("read back after the refusals"))?;
    if let Some(m) = pattern::check(&back, base, block, 0xA2) {
        return Err(fail(format!("a refused request changed stored data: {m}")));
    }
    if !rig.node()?.running() {
        return Err(fail("the node exited"));
    }
    Ok(format!(
        "{} through the node; 6 misaligned requests refused (Misaligned), connection kept serving",
        ok.join(", ")
    ))
}

fn edges(rig: &mut Rig, n: &mut Notes) -> Checked {
    let c = rig.connect_all()?;
    let block = c.info().block_size as usize;
    let size = c.info().device_size;
    let last = size - block as u64;
    let mut data = vec![0u8; block];
    pattern::fill(&mut data, last, block, 0xE1);
    rig.block_on(c.write(last, &data, true))
        .map_err(Error::client(format!("write the last block at {last}")))?;
    let back = rig
        .block_on(c.read(last, block))
        .map_err(Error::client(format!("read the last block at {last}")))?;
    if back != data {
        return Err(fail(format!(
            "the last block at {last} reads back different"
        )));
    }
    n.say(format!("last block at {last}: written (FUA) and read back"));
    let two = vec![0xEEu8; 2 * block];
    let cases = [
        (format!("READ one block past the end at {size}"), 0),
        (format!("WRITE one block past the end at {size}"), 1),
        (format!("READ of 2 blocks from the last block at {last}"), 2),
        (
            format!("WRITE of 2 blocks from the last block at {last}"),
            3,
        ),
        (
            format!("WRITE_ZEROES from the last block at {last} for 2 blocks"),
            4,
        ),
    ];
    for (what, i) in &cases {
        let r = rig.block_on(async {
            match i {
                0 => c.read(size, block).await.map(drop),
                1 => c.write(size, &two[..block], false).await,
                2 => c.read(last, 2 * block).await.map(drop),
                3 => c.write(last, &two, false).await,
                _ => c.write_zeroes(last, 2 * block as u64, false).await,
            }
        });
        expect_status(r, Status::OutOfRange, what)?;
        still_serving(rig, &c, block, what)?;
        n.say(format!("{what}: OutOfRange, connection still serving"));
    }
    let back = rig
        .block_on(c.read(last, block))
        .map_err(Error::client("read the last block again"))?;
    if back != data {
        return Err(fail(
            "a refused request past the end changed the last block",
        ));
    }
    Ok(format!(
        "last block (at {last}) works; 5 requests past the end refused (OutOfRange)"
    ))
}

fn zeroes(rig: &mut Rig, n: &mut Notes) -> Checked {
    let c = rig.connect_all()?;
    let h = *c.info();
    let block = h.block_size as usize;
    let base = 2u64 << 20;
    let len = 1usize << 20;
    if rig.kernel.size < base + len as u64 {
        return Err(Stop::Skip("device under 3 MiB".into()));
    }
    n.say(format!("capabilities: {}", caps(h.capabilities)));
    let mut summary = Vec::new();
    // Each op gets the middle half of a patterned MiB; the quarters around it must survive.
    let quarter = (len / 4) as u64;
    let ops = [
        (Capabilities::WRITE_ZEROES, "WRITE_ZEROES", true),
        (
            Capabilities::DISCARD,
            "DISCARD",
            h.capabilities.has(Capabilities::DISCARD_ZEROES),
        ),
    ];
    for (bit, name, promised) in ops {
        if !h.capabilities.has(bit) {
            n.say(format!("{name}: not offered by the node, not tried"));
            continue;
        }
        let mut data = vec![0u8; len];
        pattern::fill(&mut data, base, block, 0x20);
        rig.block_on(c.write(base, &data, false))
            .map_err(Error::client("write the pattern"))?;
        let r = rig.block_on(async {
            if name == "DISCARD" {
                c.discard(base + quarter, 2 * quarter).await
            } else {
                c.write_zeroes(base + quarter, 2 * quarter, true).await
            }
        });
        r.map_err(Error::client(format!(
            "{name} of {} B at {}",
            2 * quarter,
            base + quarter
        )))?;
        let back = rig
            .block_on(c.read(base, len))
            .map_err(Error::client("read back"))?;
        let (q, mid) = (quarter as usize, 2 * quarter as usize);
        if let Some(m) = pattern::check(&back[..q], base, block, 0x20)
            .or_else(|| pattern::check(&back[q + mid..], base + 3 * quarter, block, 0x20))
        {
            return Err(fail(format!("{name} changed data outside its range: {m}")));
        }
        let zero = back[q..q + mid].iter().all(|b| *b == 0);
        match (promised, zero) {
            (true, true) => n.say(format!(
                "{name}: the range reads back as zeroes, neighbours intact"
            )),
            (true, false) => {
                return Err(fail(format!(
                    "{name}: the range does not read back as zeroes although {}",
                    if name == "DISCARD" {
                        "the node announces DISCARD_ZEROES"
                    } else {
                        "WRITE_ZEROES promises it"
                    }
                )))
            }
            (false, z) => n.say(format!(
                "{name}: accepted; reads back {} (not promised: DISCARD_ZEROES is not announced)",
                if z { "as zeroes" } else { "old data" }
            )),
        }
        summary.push(if promised {
            format!("{name} reads zeroes")
        } else {
            format!("{name} accepted (zeroes not promised)")
        });
    }
    if summary.is_empty() {
        return Err(Stop::Skip(
            "the node offers neither DISCARD nor WRITE_ZEROES".into(),
        ));
    }
    Ok(summary.join("; "))
}

fn flush_crash(rig: &mut Rig, n: &mut Notes) -> Checked {
    let c = rig.connect_all()?;
    let block = c.info().block_size as u64;
    let slot = 128u64 << 10;
    let slots = (rig.kernel.size / slot).min(64);
    if slots < 16 {
        return Err(Stop::Skip("device under 2 MiB".into()));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let seed: u64 = rng.gen();
    // Distinct slots: 3/4 written and flushed (must survive), the rest written after the flush
    // (may or may not survive: not checked, they only make the crash land mid-stream).
    let mut order: Vec<u64> = (0..slots).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let flushed_count = (slots * 3 / 4) as usize;
    let mut flushed = Vec::new();
    for (i, s) in order.iter().enumerate() {
        let blocks = rng.gen_range(1..=(slot / block).min(32));
        let off = s * slot;
        let mut data = vec![0u8; (blocks * block) as usize];
        pattern::fill(&mut data, off, block as usize, seed);
        rig.block_on(c.write(off, &data, false))
            .map_err(Error::client(format!("write at {off}")))?;
        if i < flushed_count {
            flushed.push((off, data.len()));
        }
        if i + 1 == flushed_count {
            rig.block_on(c.flush()).map_err(Error::client("FLUSH"))?;
        }
    }
    let bytes: usize = flushed.iter().map(|(_, l)| l).sum();
    n.say(format!(
        "{} writes ({} B) acknowledged and flushed, {} more written after the flush",
        flushed.len(),
        bytes,
        slots as usize - flushed.len()
    ));
    drop(c);
    let how = rig.crash_and_restart()?;
    n.say(how);
    let c = rig.connect_all()?;
    for (off, len) in &flushed {
        let back = rig
            .block_on(c.read(*off, *len))
            .map_err(Error::client(format!("read back at {off}")))?;
        if let Some(m) = pattern::check(&back, *off, block as usize, seed) {
            return Err(fail(format!("a flushed write was lost in the crash: {m}")));
        }
    }
    n.say(format!(
        "{} of {} flushed writes intact",
        flushed.len(),
        flushed.len()
    ));
    if rig.loop_device().is_none() {
        n.say("a node crash only: the device's own volatile cache is tested by a power cut alone");
    }
    Ok(format!(
        "{} flushed writes survived SIGKILL{}",
        flushed.len(),
        if rig.loop_device().is_some() {
            " and a detach/reattach"
        } else {
            " of the node"
        }
    ))
}

fn verify(rig: &mut Rig, n: &mut Notes) -> Checked {
    let size = rig.kernel.size;
    if size > rig.opts.verify_limit {
        return Err(Stop::Skip(format!(
            "device of {} is above --verify-limit {}",
            dasmesh_wire::units::format_size(size),
            dasmesh_wire::units::format_size(rig.opts.verify_limit)
        )));
    }
    let c = rig.connect_all()?;
    let block = c.info().block_size as usize;
    let chunk = (c.info().max_io_size as u64).min(1 << 20);
    let seed: u64 = rand::random();
    let offsets: Vec<u64> = (0..size.div_ceil(chunk)).map(|i| i * chunk).collect();
    let len_at = |off: u64| (size - off).min(chunk) as usize;
    let t = Instant::now();
    rig.block_on(async {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        stream::iter(offsets.iter().copied())
            .map(|off| {
                let c = c.clone();
                async move {
                    let mut data = vec![0u8; len_at(off)];
                    pattern::fill(&mut data, off, block, seed);
                    c.write(off, &data, false)
                        .await
                        .map_err(Error::client(format!("write at {off}")))
                }
            })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await
    })?;
    rig.block_on(c.flush()).map_err(Error::client("FLUSH"))?;
    let wrote = t.elapsed();
    let t = Instant::now();
    let bad = rig.block_on(async {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        stream::iter(offsets.iter().copied())
            .map(|off| {
                let c = c.clone();
                async move {
                    let back = c
                        .read(off, len_at(off))
                        .await
                        .map_err(Error::client(format!("read at {off}")))?;
                    Ok::<_, Error>(pattern::check(&back, off, block, seed))
                }
            })
            .buffer_unordered(8)
            .try_filter_map(|m| async move { Ok(m) })
            .try_collect::<Vec<_>>()
            .await
    })?;
    let read = t.elapsed();
    let mib = size as f64 / (1 << 20) as f64;
    n.say(format!(
        "wrote {} blocks of {block} B in {:.2} s ({:.0} MiB/s), read and checked them in {:.2} s ({:.0} MiB/s)",
        size / block as u64,
        wrote.as_secs_f64(),
        mib / wrote.as_secs_f64(),
        read.as_secs_f64(),
        mib / read.as_secs_f64()
    ));
    if let Some(first) = bad.iter().min_by_key(|m| m.offset) {
        return Err(fail(format!(
            "{} chunks hold wrong data; first: {first}",
            bad.len()
        )));
    }
    Ok(format!(
        "all {} of the device hold their own pattern",
        dasmesh_wire::units::format_size(size)
    ))
}

fn end_to_end(rig: &mut Rig, n: &mut Notes) -> Checked {
    let size = rig.kernel.size;
    if size < 4 << 20 {
        return Err(Stop::Skip("device under 4 MiB".into()));
    }
    let c = rig.connect_all()?;
    let block = c.info().block_size as usize;
    // Read-write: a write lands, a SEARCH on the node finds it where it was written.
    let off = 3u64 << 20;
    let mut data = vec![0u8; 64 << 10];
    let marker = b"dasmesh-hwtest-marker";
    let at = 5 * block + 17;
    data[at..at + marker.len()].copy_from_slice(marker);
    rig.block_on(c.write(off, &data, true))
        .map_err(Error::client("write under a read-write token"))?;
    let hits = rig
        .block_on(c.search(off, 1 << 20, marker, 4))
        .map_err(Error::client("SEARCH"))?;
    if hits.hits != vec![off + at as u64] {
        return Err(fail(format!(
            "SEARCH found {:?}, expected [{}]",
            hits.hits,
            off + at as u64
        )));
    }
    n.say("read-write token: FUA write, then SEARCH finds the marker at its offset");
    // Read-only: reads work, writes are refused.
    let ro = rig.connect(0, size, Rights::ReadOnly)?;
    let back = rig
        .block_on(ro.read(off, data.len()))
        .map_err(Error::client("read under a read-only token"))?;
    if back != data {
        return Err(fail("a read-only connection reads other data"));
    }
    rig.block_on(async {
        expect_status(
            ro.write(off, &data[..block], false).await,
            Status::ReadOnly,
            "write under a read-only token",
        )
    })?;
    n.say("read-only token: reads the same data, WRITE refused (ReadOnly)");
    // A lent sub-range: inside works, a block outside is refused.
    let (lo, hi) = (1u64 << 20, 2u64 << 20);
    let sub = rig.connect(lo, hi, Rights::ReadWrite)?;
    let i = *sub.info();
    if (i.lent_offset, i.lent_length) != (lo, hi - lo) {
        return Err(fail(format!(
            "lent range announced as {}+{}, token says {lo}..{hi}",
            i.lent_offset, i.lent_length
        )));
    }
    rig.block_on(sub.write(hi - block as u64, &data[..block], false))
        .map_err(Error::client("write at the end of the lent range"))?;
    rig.block_on(async {
        expect_status(
            sub.read(hi, block).await,
            Status::OutOfRange,
            "read just past the lent range",
        )?;
        expect_status(
            sub.write(lo - block as u64, &data[..block], false).await,
            Status::OutOfRange,
            "write just before the lent range",
        )
    })?;
    n.say(format!(
        "token lending {lo}..{hi}: announced as such; inside works, outside OutOfRange"
    ));
    // A token from a key the node does not trust.
    let node = rig.node()?;
    let foreign = node.foreign_token(0, size);
    let addr = node.addr.clone();
    let r = rig.block_on(Connection::connect(
        &addr,
        dasmesh_wire::DeviceId(0),
        &foreign,
        &dasmesh_client::ConnectOptions::default(),
    ));
    expect_status(r, Status::BadToken, "handshake with a foreign key's token")?;
    n.say("token signed by an untrusted key: handshake refused (BadToken)");
    Ok("client over TCP with tokens: read-write, read-only, sub-range, foreign key".into())
}

fn perf_profile(rig: &mut Rig, n: &mut Notes) -> Checked {
    let Some(runtime) = rig.opts.perf_runtime else {
        return Err(Stop::Skip("turned off (--no-perf)".into()));
    };
    let size = rig.kernel.size;
    let block = rig.kernel.logical;
    let node = rig.node()?;
    let token = node.token(0, size, Rights::ReadWrite).to_text();
    let addr = node.addr.clone();
    let dev = rig.device().to_path_buf();
    let mut rows = Vec::new();
    for w in perf::workloads(block) {
        rows.extend(perf::run(&dev, &addr, &token, w, runtime)?);
    }
    for l in perf::table(&rows) {
        n.say(l);
    }
    n.data = serde_json::to_value(&rows).ok();
    if let Some(r) = rows.iter().find(|r| r.errors > 0) {
        return Err(fail(format!(
            "{} errors in {} {} on {}",
            r.errors, r.rw, r.bs, r.target
        )));
    }
    let pick = |rw: &str, local: bool| {
        rows.iter()
            .find(|r| r.rw == rw && r.target.starts_with("local:") == local)
            .map_or(0.0, |r| r.iops)
    };
    Ok(format!(
        "{} s per target: randread node {:.0} IOPS vs device {:.0} IOPS",
        runtime.as_secs_f64(),
        pick("randread", false),
        pick("randread", true)
    ))
}
