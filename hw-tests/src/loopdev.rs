//! Loop devices over sparse files in a temp dir, detached (and the file removed) on drop, also
//! when a check fails or panics.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::env::{self, Skip};

/// A loop device this process attached; `losetup -d` on drop, then its temp dir goes.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    backing: PathBuf,
    sector_size: u32,
    size: u64,
    attached: bool,
    // Dropped after the device is detached (fields drop after `Drop::drop`).
    _dir: tempfile::TempDir,
}

/// Where backing files go: /var/tmp is on disk on most systems, and loop direct I/O needs a
/// filesystem with O_DIRECT (tmpfs has none).
fn backing_dir() -> std::io::Result<tempfile::TempDir> {
    let b = tempfile::Builder::new()
        .prefix("dasmesh-hwtest-")
        .to_owned();
    b.tempdir_in("/var/tmp").or_else(|_| b.tempdir())
}

impl LoopDevice {
    /// A loop device of `size` bytes with `sector_size`-byte logical sectors, direct I/O on,
    /// over a new sparse file. Fails with the reason when this machine cannot make one.
    pub fn create(size: u64, sector_size: u32) -> Result<LoopDevice, Skip> {
        env::loop_devices()?;
        let dir = backing_dir().map_err(|e| Skip(format!("temp dir for a backing file: {e}")))?;
        let backing = dir.path().join(format!("loop-{sector_size}.img"));
        std::fs::File::create(&backing)
            .and_then(|f| f.set_len(size))
            .map_err(|e| Skip(format!("sparse file {}: {e}", backing.display())))?;
        let mut l = LoopDevice {
            path: PathBuf::new(),
            backing,
            sector_size,
            size,
            attached: false,
            _dir: dir,
        };
        l.attach().map_err(Skip)?;
        Ok(l)
    }

    fn attach(&mut self) -> Result<(), String> {
        // Two attaches racing for the same free device: the loser gets EBUSY; try again.
        let mut last = String::new();
        for _ in 0..5 {
            match self.attach_once() {
                Ok(()) => return Ok(()),
                Err(e) if e.contains("busy") => {
                    last = e;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn attach_once(&mut self) -> Result<(), String> {
        let out = Command::new(env::tool("losetup").unwrap_or_else(|| "losetup".into()))
            .args(["--find", "--show", "--direct-io=on", "--sector-size"])
            .arg(self.sector_size.to_string())
            .arg(&self.backing)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup --find could not attach a loop device: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        self.path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        self.attached = true;
        Ok(())
    }

    fn detach(&mut self) -> Result<(), String> {
        if !self.attached {
            return Ok(());
        }
        self.attached = false;
        let out = Command::new(env::tool("losetup").unwrap_or_else(|| "losetup".into()))
            .arg("-d")
            .arg(&self.path)
            .output()
            .map_err(|e| format!("losetup -d: {e}"))?;
        if out.status.success() {
            self.wait_detached();
            Ok(())
        } else {
            Err(format!(
                "losetup -d {}: {}",
                self.path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The kernel detaches lazily while anyone (udev's probe, say) still has the device open:
    /// wait up to 2 s for our backing file to leave it, so that nothing is left behind on return.
    fn wait_detached(&self) {
        let Some(name) = self.path.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        let sys = format!("/sys/block/{name}/loop/backing_file");
        let ours = self.backing.display().to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            match std::fs::read_to_string(&sys) {
                Ok(b) if b.trim().trim_end_matches(" (deleted)") == ours => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => return,
            }
        }
    }

    /// Detaches the device and attaches its backing file again, as after a reboot: whatever the
    /// loop driver held in memory is gone. The device path may change.
    pub fn reattach(&mut self) -> crate::Result<()> {
        self.detach().map_err(crate::Error::Unexpected)?;
        self.attach().map_err(crate::Error::Unexpected)
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sparse file behind it.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Its logical sector size.
    pub fn sector_size(&self) -> u32 {
        self.sector_size
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the loop driver really does direct I/O on the backing file (sysfs `loop/dio`).
    pub fn direct_io(&self) -> Option<bool> {
        let name = self.path.file_name()?.to_str()?;
        let v = std::fs::read_to_string(format!("/sys/block/{name}/loop/dio")).ok()?;
        Some(v.trim() == "1")
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            eprintln!("warning: {e}");
        }
    }
}
