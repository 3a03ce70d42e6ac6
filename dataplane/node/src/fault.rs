//! Fault injection for tests (cargo feature `fault-injection`, never in a release build of the
//! product): device I/O on chosen ranges of file and block-device backends fails with EIO, is
//! cut short, or never completes, so the failure paths of hosts and mirrors run without killing
//! processes.
//!
//! The faults are read from `--fault-file PATH`, one per line, `DEVICE KIND START..END` (sizes
//! with units; `#` starts a comment), and read again whenever the file changes (checked every
//! 50 ms), so a test can turn faults on and off while the node runs:
//!
//! ```text
//! 0 eio-write 0..1M      # writes touching the first MiB of device 0 fail (IoError)
//! 0 eio-read  4M..8M     # reads touching it fail
//! 0 eio       0..64k     # both
//! 0 short-write 0..16M   # the first transfer of each write there moves half its bytes
//! 1 hang 0..4k           # reads and writes there never complete
//! ```
//!
//! Memory backends are not affected.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dasmesh_wire::units::parse_range;

/// What happens to an I/O that touches a fault's range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Reads fail with an I/O error.
    EioRead,
    /// Writes (and zero-writes) fail with an I/O error.
    EioWrite,
    /// Both.
    Eio,
    /// A write's first transfer moves only half its bytes (rounded down to 512, at least 512);
    /// the node then writes the rest, as after any short write.
    ShortWrite,
    /// Never completes.
    Hang,
}

/// One fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The device id.
    pub device: usize,
    /// What happens.
    pub kind: Kind,
    /// First byte.
    pub start: u64,
    /// End (exclusive).
    pub end: u64,
}

/// What a transfer is to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Fail with an I/O error.
    Fail,
    /// Move at most this many bytes.
    Short(u32),
    /// Never complete.
    Hang,
}

/// Parses the file's text; a bad line is an error naming it.
pub fn parse(text: &str) -> Result<Vec<Fault>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("fault file line {}: {why}: {raw:?}", i + 1);
        let f: Vec<&str> = line.split_whitespace().collect();
        let [dev, kind, range] = f[..] else {
            return Err(bad("expected DEVICE KIND START..END"));
        };
        let device = dev.parse().map_err(|_| bad("bad device id"))?;
        let kind = match kind {
            "eio-read" => Kind::EioRead,
            "eio-write" => Kind::EioWrite,
            "eio" => Kind::Eio,
            "short-write" => Kind::ShortWrite,
            "hang" => Kind::Hang,
            _ => return Err(bad("kind is eio-read, eio-write, eio, short-write or hang")),
        };
        let (start, end) = parse_range(range).map_err(|e| bad(&e.to_string()))?;
        out.push(Fault {
            device,
            kind,
            start,
            end,
        });
    }
    Ok(out)
}

/// The faults in force, shared by the reactors and replaced by the watcher.
#[derive(Default)]
pub struct Faults(RwLock<Arc<Vec<Fault>>>);

impl Faults {
    /// What a transfer of `len` bytes at `off` on `device` (a write if `write`; `first` if no
    /// byte of the request has moved yet) is to do; `None`: go ahead.
    pub fn verdict(
        &self,
        device: usize,
        write: bool,
        first: bool,
        off: u64,
        len: u64,
    ) -> Option<Verdict> {
        let all = Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()));
        let end = off.saturating_add(len);
        all.iter()
            .filter(|f| f.device == device && f.start < end && off < f.end)
            .find_map(|f| match f.kind {
                Kind::Eio => Some(Verdict::Fail),
                Kind::EioRead if !write => Some(Verdict::Fail),
                Kind::EioWrite if write => Some(Verdict::Fail),
                Kind::Hang => Some(Verdict::Hang),
                Kind::ShortWrite if write && first && len > 512 => {
                    Some(Verdict::Short((((len / 2) & !511).max(512)) as u32))
                }
                _ => None,
            })
    }

    /// Replaces the faults.
    pub fn set(&self, faults: Vec<Fault>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(faults);
    }
}

fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Loads `path` (a missing file: no faults) and starts a thread that loads it again whenever it
/// changes. A file that does not parse is refused at start, and later logged and ignored.
pub fn watch(path: PathBuf, faults: Arc<Faults>) -> anyhow::Result<()> {
    let load = |p: &Path| -> Result<Vec<Fault>, String> {
        match std::fs::read_to_string(p) {
            Ok(t) => parse(&t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    };
    faults.set(load(&path).map_err(anyhow::Error::msg)?);
    tracing::warn!(file = %path.display(), "fault injection is on: this node fails I/O on purpose");
    let mut seen = stamp(&path);
    std::thread::Builder::new()
        .name("faults".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = stamp(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match load(&path) {
                Ok(f) => {
                    tracing::warn!(faults = ?f, "fault file changed");
                    faults.set(f);
                }
                Err(e) => tracing::warn!("{e}: faults left as they were"),
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let f = parse("# faults\n0 eio-write 0..1M\n\n1 short-write 0..1G # halves\n2 hang 4k..8k")
            .unwrap();
        assert_eq!(f.len(), 3);
        let faults = Faults::default();
        faults.set(f);
        assert_eq!(
            faults.verdict(0, true, true, 4096, 4096),
            Some(Verdict::Fail)
        );
        assert_eq!(faults.verdict(0, false, true, 4096, 4096), None, "reads");
        assert_eq!(
            faults.verdict(0, true, true, 1 << 20, 4096),
            None,
            "past it"
        );
        assert_eq!(
            faults.verdict(1, true, true, 0, 8192),
            Some(Verdict::Short(4096))
        );
        assert_eq!(faults.verdict(1, true, false, 4096, 4096), None, "the rest");
        assert_eq!(
            faults.verdict(1, true, true, 0, 512),
            None,
            "too small to cut"
        );
        assert_eq!(faults.verdict(2, false, true, 0, 8192), Some(Verdict::Hang));
        assert_eq!(faults.verdict(2, false, true, 0, 4096), None);
        for bad in [
            "0 eio",
            "x eio 0..1",
            "0 boom 0..1",
            "0 eio 5..1",
            "0 eio 0..1 extra",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        faults.set(Vec::new());
        assert_eq!(faults.verdict(0, true, true, 0, 4096), None);
    }
}
