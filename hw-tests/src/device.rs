//! What the kernel says about a block device (sector sizes and size through `blockdev`, which
//! issues BLKSSZGET, BLKPBSZGET and BLKGETSIZE64; queue limits from sysfs), whether it is safe to
//! overwrite, and O_DIRECT access to it with aligned buffers.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::{env, Error, Result};

/// Sector sizes and size as the kernel reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Geometry {
    /// BLKSSZGET: the logical sector size, the unit of O_DIRECT alignment.
    pub logical: u32,
    /// BLKPBSZGET: the physical sector size.
    pub physical: u32,
    /// BLKGETSIZE64: the size in bytes.
    pub size: u64,
}

fn run(cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(Error::io(line.clone()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(Error::Command {
            command: line,
            stderr: if stderr.is_empty() {
                out.status.to_string()
            } else {
                stderr
            },
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tool(name: &str) -> PathBuf {
    env::tool(name).unwrap_or_else(|| name.into())
}

/// The kernel's geometry of `dev`.
pub fn geometry(dev: &Path) -> Result<Geometry> {
    let out = run(Command::new(tool("blockdev"))
        .args(["--getss", "--getpbsz", "--getsize64"])
        .arg(dev))?;
    let nums: Vec<u64> = out
        .split_whitespace()
        .map(|w| w.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| Error::Unexpected(format!("blockdev printed {out:?}")))?;
    match nums[..] {
        [l, p, s] => Ok(Geometry {
            logical: l as u32,
            physical: p as u32,
            size: s,
        }),
        _ => Err(Error::Unexpected(format!("blockdev printed {out:?}"))),
    }
}

/// The kernel name of a device (`loop3` for `/dev/loop3`, following symlinks).
pub fn kernel_name(dev: &Path) -> Option<String> {
    let real = std::fs::canonicalize(dev).ok()?;
    Some(real.file_name()?.to_str()?.to_string())
}

/// A number from `/sys/class/block/NAME/queue/FILE`.
pub fn queue_limit(dev: &Path, file: &str) -> Option<u64> {
    let name = kernel_name(dev)?;
    std::fs::read_to_string(format!("/sys/class/block/{name}/queue/{file}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Why a device must not be overwritten, as the kernel and blkid see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Mount points of the device or one of its partitions.
    pub mounts: Vec<String>,
    /// Devices stacked on it (device mapper, md) or its partitions' holders.
    pub holders: Vec<String>,
    /// It (or a partition) is an active swap area.
    pub swap: bool,
    /// What `blkid -p` found on it: `TYPE=ext4`, `PTTYPE=gpt`, ...
    pub signature: Option<String>,
}

impl Usage {
    /// Why the device may not be used at all (mounted, held, swapping), if it may not.
    pub fn in_use(&self) -> Option<String> {
        if !self.mounts.is_empty() {
            return Some(format!("it is mounted on {}", self.mounts.join(", ")));
        }
        if !self.holders.is_empty() {
            return Some(format!("it is in use by {}", self.holders.join(", ")));
        }
        if self.swap {
            return Some("it is an active swap area".into());
        }
        None
    }
}

/// `major:minor` of a block device and its partitions, with their kernel names.
fn devnums(name: &str) -> Vec<(String, String)> {
    let base = format!("/sys/class/block/{name}");
    let mut v = Vec::new();
    if let Ok(d) = std::fs::read_to_string(format!("{base}/dev")) {
        v.push((name.to_string(), d.trim().to_string()));
    }
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                if let (Some(n), Ok(d)) = (
                    p.file_name().and_then(|n| n.to_str()),
                    std::fs::read_to_string(p.join("dev")),
                ) {
                    v.push((n.to_string(), d.trim().to_string()));
                }
            }
        }
    }
    v
}

/// Mount points in mountinfo text whose device is one of `devs` (`major:minor`).
pub fn mounts_of(mountinfo: &str, devs: &[String]) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let dev = f.nth(2)?;
            let point = f.nth(1)?;
            devs.iter().any(|d| d == dev).then(|| point.to_string())
        })
        .collect()
}

/// What stands in the way of overwriting `dev`.
pub fn usage(dev: &Path) -> Result<Usage> {
    let meta = std::fs::metadata(dev).map_err(Error::io(dev.display().to_string()))?;
    if !meta.file_type().is_block_device() {
        return Err(Error::Unexpected(format!(
            "{} is not a block device",
            dev.display()
        )));
    }
    let name = kernel_name(dev).unwrap_or_default();
    let nums = devnums(&name);
    let mut u = Usage::default();
    let ids: Vec<String> = nums.iter().map(|(_, d)| d.clone()).collect();
    if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
        u.mounts = mounts_of(&mi, &ids);
    }
    for (n, _) in &nums {
        if let Ok(rd) = std::fs::read_dir(format!("/sys/class/block/{n}/holders")) {
            u.holders
                .extend(rd.flatten().map(|e| e.file_name().to_string_lossy().into()));
        }
    }
    if let Ok(s) = std::fs::read_to_string("/proc/swaps") {
        let names: Vec<String> = nums.iter().map(|(n, _)| format!("/dev/{n}")).collect();
        u.swap = s
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .any(|p| names.iter().any(|n| n == p));
    }
    // blkid -p probes the device itself (not its cache): exit 0 found something, 2 nothing.
    let out = Command::new(tool("blkid"))
        .args(["-p", "-o", "export"])
        .arg(dev)
        .output()
        .map_err(Error::io("blkid"))?;
    match out.status.code() {
        Some(0) => u.signature = Some(signature_of(&String::from_utf8_lossy(&out.stdout))),
        Some(2) => {}
        _ => {
            return Err(Error::Command {
                command: format!("blkid -p {}", dev.display()),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
    Ok(u)
}

/// The interesting keys of `blkid -o export` output (`TYPE=swap`, `PTTYPE=gpt`, a label).
pub fn signature_of(export: &str) -> String {
    let keys = ["TYPE", "PTTYPE", "LABEL", "USAGE"];
    let parts: Vec<&str> = export
        .lines()
        .filter(|l| keys.iter().any(|k| l.starts_with(&format!("{k}="))))
        .collect();
    if parts.is_empty() {
        "an unnamed signature".into()
    } else {
        parts.join(" ")
    }
}

/// A byte buffer whose data starts at an `align`-aligned address, as O_DIRECT needs (safe code:
/// an over-allocated vector and an offset into it).
#[derive(Debug)]
pub struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    /// `len` zero bytes aligned to `align` (a power of two).
    pub fn new(len: usize, align: usize) -> Aligned {
        let raw = vec![0u8; len + align];
        let start = (align - raw.as_ptr() as usize % align) % align;
        Aligned { raw, start, len }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }

    /// `len` bytes starting `shift` bytes past the aligned start (to make a misaligned buffer).
    pub fn shifted(&self, shift: usize, len: usize) -> &[u8] {
        &self.raw[self.start + shift..self.start + shift + len]
    }
}

/// Opens `dev` for O_DIRECT reading and writing.
pub fn open_direct(dev: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(dev)
        .map_err(Error::io(format!("open {} O_DIRECT", dev.display())))
}

/// Opens `dev` with O_EXCL, which the kernel refuses (EBUSY) while anything holds the device
/// exclusively: a mounted filesystem, device mapper, md, swap.
pub fn exclusive_open(dev: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(dev)
}

/// Writes all of `buf` at `off` (one pwrite; O_DIRECT does not split it).
pub fn pwrite(f: &File, buf: &[u8], off: u64) -> std::io::Result<()> {
    f.write_all_at(buf, off)
}

/// Reads exactly `buf.len()` bytes at `off`.
pub fn pread(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    f.read_exact_at(buf, off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_match_on_major_minor() {
        let mi = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                  40 22 7:3 / /mnt/x rw shared:9 - xfs /dev/loop3 rw\n\
                  41 22 7:30 / /mnt/y rw shared:9 - xfs /dev/loop30 rw\n";
        assert_eq!(mounts_of(mi, &["7:3".into()]), vec!["/mnt/x".to_string()]);
        assert!(mounts_of(mi, &["7:4".into()]).is_empty());
    }

    #[test]
    fn signature_keeps_the_telling_keys() {
        let e = "DEVNAME=/dev/loop0\nUUID=32\nVERSION=1\nTYPE=swap\nUSAGE=other\n";
        assert_eq!(signature_of(e), "TYPE=swap USAGE=other");
        assert_eq!(signature_of("PTUUID=1\nPTTYPE=gpt\n"), "PTTYPE=gpt");
    }

    #[test]
    fn in_use_names_the_reason() {
        let mut u = Usage::default();
        assert_eq!(u.in_use(), None);
        u.signature = Some("TYPE=ext4".into());
        assert_eq!(u.in_use(), None, "a signature alone is not use");
        u.mounts = vec!["/srv".into()];
        assert!(u.in_use().unwrap().contains("/srv"));
    }

    #[test]
    fn aligned_buffers_are_aligned() {
        for align in [512, 4096] {
            let mut a = Aligned::new(8192, align);
            assert_eq!(a.as_slice().as_ptr() as usize % align, 0);
            assert_eq!(a.as_mut_slice().len(), 8192);
            assert_eq!(a.shifted(1, 512).as_ptr() as usize % align, 1);
        }
    }
}
