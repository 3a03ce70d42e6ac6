//! What each device can do: 4 KiB random read and write IOPS at a queue depth of 32, and 1 MiB
//! sequential read MiB/s, measured in a short probe at the node's first start (before it serves
//! anyone) and kept in `--state-dir/capability`; `--device-iops`/`--device-mib-s` stand in for
//! the probe, `--reprobe` measures again. The controller admits promised IOPS and bandwidth
//! against these figures (docs/qos.md).
//!
//! The probe leaves every byte as it was: it writes back blocks it read first, to the same
//! places, and it runs before the reactors start. It works in the first 64 MiB of the lendable
//! area, which it first reads and writes back whole (a file's holes read without any I/O). It reads and writes only the lendable
//! part of a device (never the owner's reserved area). Memory backends are not probed: their
//! figures are what the flags say, or unknown (0), and an unknown device takes no promise.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::backend::{Backend, Store};

/// What a device can do (0: not known).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capability {
    /// 4 KiB random reads per second at QD32.
    pub read_iops: u64,
    /// 4 KiB random writes per second at QD32.
    pub write_iops: u64,
    /// 1 MiB sequential reads, MiB/s.
    pub mib_s: u64,
}

/// The queue depth of the random phases (one thread per request in flight).
const DEPTH: usize = 32;
/// How long each phase runs.
const PHASE: Duration = Duration::from_millis(150);
/// 4 KiB.
const BLOCK: u64 = 4096;

/// The part of a device the probe works in (its lendable area's first bytes).
const WINDOW: u64 = 64 << 20;

/// Measures `b` in the first [`WINDOW`] bytes of `[start, start + len)` of it, or `None` for a
/// memory backend. The window is first read and written back in 1 MiB pieces: the bytes stay
/// as they were, and a file's holes (which read without touching the disk) are allocated, so
/// the reads measured are real ones.
pub fn measure(b: &Backend, start: u64, len: u64) -> Option<Capability> {
    let Store::File { file, .. } = &b.store else {
        return None;
    };
    let bs = u64::from(b.block_size).max(BLOCK);
    let len = len.min(WINDOW) / bs * bs;
    if let Ok(mut buf) = memmap2::MmapMut::map_anon(1 << 20) {
        let mut at = start;
        while at < start + len {
            let n = (1u64 << 20).min(start + len - at) as usize;
            if file.read_exact_at(&mut buf[..n], at).is_err()
                || file.write_all_at(&buf[..n], at).is_err()
            {
                return Some(Capability::default());
            }
            at += n as u64;
        }
    }
    let blocks = len / bs;
    if blocks < 2 * DEPTH as u64 {
        return Some(Capability::default());
    }
    let pick = |seed: &mut u64| {
        // xorshift: a spread of offsets, no need for a real generator.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        start + (*seed % blocks) * bs
    };
    let random = |write: bool| -> u64 {
        let ops = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        std::thread::scope(|sc| {
            for t in 0..DEPTH {
                let (ops, stop) = (&ops, &stop);
                sc.spawn(move || {
                    let Ok(mut buf) = memmap2::MmapMut::map_anon(bs as usize) else {
                        return;
                    };
                    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                    // The write phase writes one block it read first back to where it was.
                    let home = pick(&mut seed);
                    if write && file.read_exact_at(&mut buf, home).is_err() {
                        return;
                    }
                    while !stop.load(Ordering::Relaxed) {
                        let ok = if write {
                            file.write_all_at(&buf, home).is_ok()
                        } else {
                            file.read_exact_at(&mut buf, pick(&mut seed)).is_ok()
                        };
                        if !ok {
                            return;
                        }
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            std::thread::sleep(PHASE);
            stop.store(true, Ordering::Relaxed);
        });
        (ops.load(Ordering::Relaxed) as f64 / PHASE.as_secs_f64()) as u64
    };
    let read_iops = random(false);
    let write_iops = random(true);
    // Sequential: four readers of 1 MiB, each on its own quarter.
    let bytes = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let chunk = (1u64 << 20).min(len / 4 / bs * bs).max(bs);
    std::thread::scope(|sc| {
        for q in 0..4u64 {
            let (bytes, stop) = (&bytes, &stop);
            sc.spawn(move || {
                let Ok(mut buf) = memmap2::MmapMut::map_anon(chunk as usize) else {
                    return;
                };
                let (lo, hi) = (
                    start + q * (len / 4) / bs * bs,
                    start + (q + 1) * (len / 4) / bs * bs,
                );
                let mut at = lo;
                while !stop.load(Ordering::Relaxed) {
                    if at + chunk > hi {
                        at = lo;
                    }
                    if file.read_exact_at(&mut buf, at).is_err() {
                        return;
                    }
                    bytes.fetch_add(chunk, Ordering::Relaxed);
                    at += chunk;
                }
            });
        }
        std::thread::sleep(PHASE);
        stop.store(true, Ordering::Relaxed);
    });
    let mib_s =
        (bytes.load(Ordering::Relaxed) as f64 / f64::from(1 << 20) / PHASE.as_secs_f64()) as u64;
    Some(Capability {
        read_iops,
        write_iops,
        mib_s,
    })
}

/// The figures kept in `path` (one line per device: `ID READ_IOPS WRITE_IOPS MIB_S`).
pub fn load(path: &Path) -> Vec<(u32, Capability)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            match f[..] {
                [id, r, w, m] => Some((
                    u32::try_from(id).ok()?,
                    Capability {
                        read_iops: r,
                        write_iops: w,
                        mib_s: m,
                    },
                )),
                _ => None,
            }
        })
        .collect()
}

/// Keeps the figures in `path`.
pub fn save(path: &Path, caps: &[(u32, Capability)]) -> std::io::Result<()> {
    let text: String = caps
        .iter()
        .map(|(id, c)| format!("{id} {} {} {}\n", c.read_iops, c.write_iops, c.mib_s))
        .collect();
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendSpec;
    use dasmesh_wire::DeviceId;

    #[test]
    fn a_probe_measures_a_file_and_leaves_its_bytes_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        let data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let b = Backend::open(DeviceId(0), &BackendSpec::File(p.clone(), None)).unwrap();
        let c = measure(&b, 1 << 20, 7 << 20).unwrap();
        assert!(c.read_iops > 0 && c.write_iops > 0 && c.mib_s > 0, "{c:?}");
        drop(b);
        assert!(
            std::fs::read(&p).unwrap() == data,
            "the probe changed the file"
        );

        let mem = Backend::open(DeviceId(1), &BackendSpec::Memory(1 << 20)).unwrap();
        assert_eq!(measure(&mem, 0, 1 << 20), None);

        let kept = dir.path().join("capability");
        save(&kept, &[(0, c), (3, Capability::default())]).unwrap();
        assert_eq!(load(&kept), vec![(0, c), (3, Capability::default())]);
        assert!(load(&dir.path().join("none")).is_empty());
    }
}
