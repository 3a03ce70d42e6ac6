//! What is exported: the export's description (name, size, block sizes, flags) and the
//! [`Backend`] trait the transmission phase drives, with an in-memory backend for tests.

use std::future::Future;
use std::sync::Mutex;

use crate::proto::{self, Errno};

/// Largest READ or WRITE a client may send (the maximum block size advertised). 32 MiB is what
/// the spec asks clients to stay under anyway; the volume splits it at the nodes' largest I/O.
pub const MAX_BLOCK: u32 = 32 << 20;

/// The export as clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    /// Its name (clients may also ask for the default export, "").
    pub name: String,
    /// A description for humans (`NBD_OPT_LIST`, `NBD_INFO_DESCRIPTION`).
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Minimum block size: offsets and lengths must be multiples (the volume's block size).
    pub min_block: u32,
    /// Maximum block size: the largest READ or WRITE accepted (at most [`MAX_BLOCK`]; less
    /// under a small memory budget, see [`crate::budget::Budget::max_request`]).
    pub max_block: u32,
    /// Writes, trims and zeroes are refused with EPERM.
    pub read_only: bool,
}

impl Export {
    /// The transmission flags: every one of them is honest.
    pub fn flags(&self) -> u16 {
        // CAN_MULTI_CONN: every NBD connection goes through the same mounted volume, and its
        // flush sends a FLUSH to every node device of the volume; a node's FLUSH covers every
        // write it had acknowledged, on any connection (docs/protocol.md). So a flush (or FUA)
        // answered on one NBD connection covers writes acknowledged on all of them.
        let mut f = proto::FLAG_HAS_FLAGS
            | proto::FLAG_SEND_FLUSH
            | proto::FLAG_SEND_FUA
            | proto::FLAG_CAN_MULTI_CONN;
        if self.read_only {
            f |= proto::FLAG_READ_ONLY;
        } else {
            f |= proto::FLAG_SEND_TRIM | proto::FLAG_SEND_WRITE_ZEROES;
        }
        f
    }

    /// Preferred block size: at least 4 KiB and at least the minimum.
    pub fn preferred_block(&self) -> u32 {
        self.min_block.max(4096)
    }

    /// Whether a client's export name selects this export.
    pub fn matches(&self, name: &str) -> bool {
        name.is_empty() || name == self.name
    }
}

/// A failed backend call: the NBD error to answer and why (for the log).
#[derive(Debug, thiserror::Error)]
#[error("{code}: {why}")]
pub struct Failure {
    /// The error sent to the client.
    pub code: Errno,
    /// What went wrong.
    pub why: String,
}

/// The bytes of a READ reply: owned, or a range of a buffer shared with others (a readahead
/// chunk), sent without a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    /// A buffer of its own.
    Owned(Vec<u8>),
    /// `range` of a shared buffer.
    Shared(std::sync::Arc<Vec<u8>>, std::ops::Range<usize>),
}

impl Data {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Data::Owned(v) => v,
            Data::Shared(b, r) => &b[r.clone()],
        }
    }
}

/// What the transmission phase reads from and writes to. Calls run concurrently.
pub trait Backend: Send + Sync + 'static {
    /// Reads `len` bytes at `offset`.
    fn read(&self, offset: u64, len: usize) -> impl Future<Output = Result<Data, Failure>> + Send;
    /// Writes `data` at `offset`; with `fua`, durable when it returns.
    fn write(
        &self,
        offset: u64,
        data: &[u8],
        fua: bool,
    ) -> impl Future<Output = Result<(), Failure>> + Send;
    /// Makes every write acknowledged so far durable.
    fn flush(&self) -> impl Future<Output = Result<(), Failure>> + Send;
    /// Deallocates a range.
    fn discard(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), Failure>> + Send;
    /// Makes a range read back as zeroes.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// A backend in memory (tests, and measuring the gateway alone).
#[derive(Debug)]
pub struct MemoryBackend {
    data: Mutex<Vec<u8>>,
}

impl MemoryBackend {
    /// `size` zero bytes.
    pub fn new(size: usize) -> Self {
        Self {
            data: Mutex::new(vec![0; size]),
        }
    }

    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn range(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>, Failure> {
        let size = self.lock().len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(Failure {
                code: Errno::Inval,
                why: format!("{offset}+{len} outside {size} bytes"),
            }),
        }
    }
}

impl Backend for MemoryBackend {
    async fn read(&self, offset: u64, len: usize) -> Result<Data, Failure> {
        let r = self.range(offset, len as u64)?;
        Ok(Data::Owned(self.lock()[r].to_vec()))
    }

    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), Failure> {
        let r = self.range(offset, data.len() as u64)?;
        self.lock()[r].copy_from_slice(data);
        Ok(())
    }

    async fn flush(&self) -> Result<(), Failure> {
        Ok(())
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), Failure> {
        self.write_zeroes(offset, len, false).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> Result<(), Failure> {
        let r = self.range(offset, len)?;
        self.lock()[r].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(read_only: bool) -> Export {
        Export {
            name: "db".into(),
            description: String::new(),
            size: 1 << 20,
            min_block: 512,
            max_block: MAX_BLOCK,
            read_only,
        }
    }

    #[test]
    fn flags_are_honest() {
        let rw = export(false).flags();
        assert_eq!(rw, 1 | 4 | 8 | 32 | 64 | 256);
        let ro = export(true).flags();
        assert_eq!(ro & proto::FLAG_READ_ONLY, proto::FLAG_READ_ONLY);
        assert_eq!(
            ro & (proto::FLAG_SEND_TRIM | proto::FLAG_SEND_WRITE_ZEROES),
            0
        );
        assert_eq!(export(false).preferred_block(), 4096);
        assert!(export(false).matches(""));
        assert!(export(false).matches("db"));
        assert!(!export(false).matches("other"));
    }
}
