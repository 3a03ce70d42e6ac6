//! Probes of what this machine allows (root, loop devices, io_uring, the util-linux tools), so
//! that a check which cannot run says why instead of failing or passing silently.

use std::path::{Path, PathBuf};

/// Why something cannot run here: one line, shown to the operator as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip(pub String);

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether this process runs with effective uid 0 (from /proc/self/status, no unsafe call).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_uid(&s))
        == Some(0)
}

/// The effective uid from the text of /proc/self/status (`Uid: real effective saved fs`).
pub fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Finds a tool on PATH or in the sbin directories (not on a normal user's PATH).
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Fails with the reason when the tools a device check needs are missing.
pub fn tools_present() -> Result<(), Skip> {
    for t in ["blockdev", "blkid"] {
        if tool(t).is_none() {
            return Err(Skip(format!(
                "`{t}` not found (install util-linux: scripts/setup.sh)"
            )));
        }
    }
    Ok(())
}

/// Fails with the reason when this process cannot make loop devices.
pub fn loop_devices() -> Result<(), Skip> {
    if !is_root() {
        return Err(Skip("not root: loop devices need root".into()));
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err(Skip(
            "no /dev/loop-control: the loop driver is not available here".into(),
        ));
    }
    if tool("losetup").is_none() {
        return Err(Skip(
            "`losetup` not found (install mount/util-linux)".into(),
        ));
    }
    tools_present()
}

/// Fails with the reason when io_uring cannot be used (disabled by sysctl, or the kernel or a
/// seccomp filter refuses io_uring_setup): the node needs it.
pub fn io_uring() -> Result<(), Skip> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        match v.trim() {
            "2" => {
                return Err(Skip(
                    "io_uring disabled (kernel.io_uring_disabled=2)".into(),
                ))
            }
            "1" if !is_root() => {
                return Err(Skip(
                    "io_uring limited to root and io_uring_group (kernel.io_uring_disabled=1)"
                        .into(),
                ))
            }
            _ => {}
        }
    }
    io_uring::IoUring::new(2)
        .map(drop)
        .map_err(|e| Skip(format!("io_uring_setup refused: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_the_second_number() {
        let s = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(s), Some(0));
        assert_eq!(effective_uid("Uid:\t0\t1000\t0\t0\n"), Some(1000));
        assert_eq!(effective_uid("Name: x\n"), None);
    }
}
