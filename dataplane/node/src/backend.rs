//! Backends: what a device id stands for (a raw block device, an O_DIRECT file, or memory),
//! with its sizes and what it supports.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use dasmesh_wire::{Capabilities, DeviceId};

use crate::arena::MemRegion;
use crate::config::BackendSpec;
use crate::sys;

/// Block size of file and memory backends: safe for O_DIRECT on every common filesystem.
pub const FILE_BLOCK_SIZE: u32 = 4096;

/// Why a backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// open/ioctl/stat failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A `device:` path that is not a block device.
    #[error("{0}: not a block device (use file:PATH for a regular file)")]
    NotBlockDevice(PathBuf),
    /// A file that does not exist and no size to create it with.
    #[error("{0}: does not exist; give a size to create it, e.g. file:{0}:1G")]
    MissingSize(PathBuf),
    /// The existing file is larger than the size asked for.
    #[error("{path}: is {actual} bytes, larger than the {wanted} asked for; refusing to truncate")]
    WouldTruncate {
        /// The path.
        path: PathBuf,
        /// Its size now.
        actual: u64,
        /// The size asked for.
        wanted: u64,
    },
    /// Size not a multiple of the block size, or zero.
    #[error("{what}: size {size} is not a non-zero multiple of the block size {block}")]
    BadSize {
        /// The backend.
        what: String,
        /// Its size.
        size: u64,
        /// Its block size.
        block: u32,
    },
}

/// Where the bytes live.
pub enum Store {
    /// A file or block device opened O_DIRECT.
    File {
        /// The open file.
        file: File,
        /// A block device (discard and zero-out by ioctl) rather than a regular file.
        block_device: bool,
    },
    /// Anonymous memory.
    Memory(MemRegion),
}

/// An open backend.
pub struct Backend {
    /// Its device id.
    pub id: DeviceId,
    /// How the operator named it.
    pub name: String,
    /// The bytes.
    pub store: Store,
    /// Logical block size.
    pub block_size: u32,
    /// Physical block size.
    pub physical_block_size: u32,
    /// Size in bytes.
    pub size: u64,
    /// What it supports.
    pub capabilities: Capabilities,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BackendError + '_ {
    move |source| BackendError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn open_direct(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(path)
}

impl Backend {
    /// Opens a backend from its spec.
    pub fn open(id: DeviceId, spec: &BackendSpec) -> Result<Backend, BackendError> {
        let b = match spec {
            BackendSpec::Device(path) => {
                let file = open_direct(path, false).map_err(io_err(path))?;
                let meta = file.metadata().map_err(io_err(path))?;
                if !meta.file_type().is_block_device() {
                    return Err(BackendError::NotBlockDevice(path.clone()));
                }
                Backend {
                    id,
                    name: format!("device:{}", path.display()),
                    block_size: sys::logical_block_size(&file).map_err(io_err(path))?,
                    physical_block_size: sys::physical_block_size(&file).map_err(io_err(path))?,
                    size: sys::device_size(&file).map_err(io_err(path))?,
                    store: Store::File {
                        file,
                        block_device: true,
                    },
                    // Discarded blocks of a device may read back as anything.
                    capabilities: Capabilities(Capabilities::ALL & !Capabilities::DISCARD_ZEROES),
                }
            }
            BackendSpec::File(path, size) => {
                let exists = path.exists();
                if !exists && size.is_none() {
                    return Err(BackendError::MissingSize(path.clone()));
                }
                let file = open_direct(path, true).map_err(io_err(path))?;
                let actual = file.metadata().map_err(io_err(path))?.len();
                let size = match *size {
                    Some(wanted) if actual > wanted => {
                        return Err(BackendError::WouldTruncate {
                            path: path.clone(),
                            actual,
                            wanted,
                        })
                    }
                    Some(wanted) => {
                        if wanted > actual {
                            file.set_len(wanted).map_err(io_err(path))?;
                        }
                        wanted
                    }
                    None => actual,
                };
                Backend {
                    id,
                    name: format!("file:{}", path.display()),
                    store: Store::File {
                        file,
                        block_device: false,
                    },
                    block_size: FILE_BLOCK_SIZE,
                    physical_block_size: FILE_BLOCK_SIZE,
                    size,
                    capabilities: Capabilities(Capabilities::ALL),
                }
            }
            BackendSpec::Memory(size) => Backend {
                id,
                name: format!("memory:{size}"),
                store: Store::Memory(MemRegion::new(*size).map_err(io_err(Path::new("memory")))?),
                block_size: FILE_BLOCK_SIZE,
                physical_block_size: FILE_BLOCK_SIZE,
                size: *size,
                // Nothing in memory survives the node: no FLUSH or FUA can make it durable, so
                // none is announced (both are still answered, docs/protocol.md).
                capabilities: Capabilities(
                    Capabilities::ALL & !(Capabilities::FLUSH | Capabilities::FUA),
                ),
            },
        };
        if b.size == 0 || b.block_size == 0 || b.size % u64::from(b.block_size) != 0 {
            return Err(BackendError::BadSize {
                what: b.name,
                size: b.size,
                block: b.block_size,
            });
        }
        Ok(b)
    }

    /// Makes every completed write durable (a no-op for memory).
    pub fn sync(&self) -> io::Result<()> {
        match &self.store {
            Store::File { file, .. } => file.sync_data(),
            Store::Memory(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_backend_creates_grows_and_refuses_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        let missing = Backend::open(DeviceId(0), &BackendSpec::File(p.clone(), None));
        assert!(matches!(missing, Err(BackendError::MissingSize(_))));
        let b = Backend::open(DeviceId(0), &BackendSpec::File(p.clone(), Some(1 << 20))).unwrap();
        assert_eq!(b.size, 1 << 20);
        drop(b);
        let b = Backend::open(DeviceId(0), &BackendSpec::File(p.clone(), None)).unwrap();
        assert_eq!(b.size, 1 << 20);
        drop(b);
        let grown =
            Backend::open(DeviceId(0), &BackendSpec::File(p.clone(), Some(2 << 20))).unwrap();
        assert_eq!(grown.size, 2 << 20);
        drop(grown);
        let shrink = Backend::open(DeviceId(0), &BackendSpec::File(p.clone(), Some(1 << 20)));
        assert!(matches!(shrink, Err(BackendError::WouldTruncate { .. })));
        let odd = Backend::open(
            DeviceId(0),
            &BackendSpec::File(dir.path().join("o"), Some(5000)),
        );
        assert!(matches!(odd, Err(BackendError::BadSize { .. })));
        let notdev = Backend::open(DeviceId(0), &BackendSpec::Device(p));
        assert!(matches!(notdev, Err(BackendError::NotBlockDevice(_))));
    }
}
