//! Deciding what one request header asks for: [`check`], pure, against the export and the
//! NBD spec's error values. The transmission phase ([`crate::transmit`]) carries out the
//! verdict.

use crate::export::Export;
use crate::proto::{self, Cmd, Errno, Request};

/// What a request asks for, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read `len` bytes at `offset`.
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u32,
    },
    /// Write the payload at `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// With FUA.
        fua: bool,
    },
    /// Flush.
    Flush,
    /// Discard.
    Trim {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// Write zeroes.
    Zeroes {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// With FUA.
        fua: bool,
    },
}

/// The decision on one request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Carry it out.
    Do(Action),
    /// Answer at once with this error (0: success with nothing to do, e.g. a zero length).
    Answer(u32),
    /// `NBD_CMD_DISC`: answer nothing, finish what is in flight, close.
    Disconnect,
    /// The header is not a request (bad magic): hard disconnect, as the spec allows; the
    /// stream cannot be trusted any more.
    Abandon,
}

/// Decides what to do with a request header. The payload of a WRITE follows whatever the verdict
/// (except [`Verdict::Abandon`]); the caller reads it off the socket.
pub fn check(r: &Request, e: &Export) -> Verdict {
    use Verdict::Answer;
    if r.magic != proto::REQUEST_MAGIC {
        return Verdict::Abandon;
    }
    let Some(cmd) = Cmd::from_code(r.kind) else {
        return Answer(Errno::Inval.code());
    };
    let allowed = match cmd {
        Cmd::WriteZeroes => proto::CMD_FLAG_FUA | proto::CMD_FLAG_NO_HOLE,
        // FUA is accepted on every command once SEND_FUA is advertised (the spec says so).
        _ => proto::CMD_FLAG_FUA,
    };
    if r.flags & !allowed != 0 {
        return Answer(Errno::Inval.code());
    }
    let fua = r.flags & proto::CMD_FLAG_FUA != 0;
    let writes = matches!(cmd, Cmd::Write | Cmd::Trim | Cmd::WriteZeroes);
    match cmd {
        Cmd::Disc => return Verdict::Disconnect,
        // Offset and length are reserved for FLUSH; they are ignored.
        Cmd::Flush => return Verdict::Do(Action::Flush),
        _ if writes && e.read_only => return Answer(Errno::Perm.code()),
        _ => {}
    }
    let len = u64::from(r.length);
    let past_end = match r.offset.checked_add(len) {
        Some(end) => end > e.size,
        None => true,
    };
    if past_end {
        // Writes past the end are ENOSPC, reads and trims EINVAL (the spec's error values).
        return Answer(match cmd {
            Cmd::Write | Cmd::WriteZeroes => Errno::NoSpc.code(),
            _ => Errno::Inval.code(),
        });
    }
    let bs = u64::from(e.min_block.max(1));
    if !r.offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
        return Answer(Errno::Inval.code());
    }
    if matches!(cmd, Cmd::Read | Cmd::Write) && r.length > e.max_block {
        return Answer(Errno::Inval.code());
    }
    if len == 0 {
        return Answer(0);
    }
    Verdict::Do(match cmd {
        Cmd::Read => Action::Read {
            offset: r.offset,
            len: r.length,
        },
        Cmd::Write => Action::Write {
            offset: r.offset,
            fua,
        },
        Cmd::Trim => Action::Trim {
            offset: r.offset,
            len,
        },
        Cmd::WriteZeroes => Action::Zeroes {
            offset: r.offset,
            len,
            fua,
        },
        Cmd::Flush | Cmd::Disc => unreachable!("handled above"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::MAX_BLOCK;

    fn export(read_only: bool) -> Export {
        Export {
            name: "v".into(),
            description: String::new(),
            size: 1 << 20,
            min_block: 4096,
            max_block: MAX_BLOCK,
            read_only,
        }
    }

    fn req(kind: Cmd, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            magic: proto::REQUEST_MAGIC,
            flags,
            kind: kind as u16,
            handle: 1,
            offset,
            length,
        }
    }

    const EINVAL: Verdict = Verdict::Answer(22);

    #[test]
    fn valid_requests() {
        let e = export(false);
        assert_eq!(
            check(&req(Cmd::Read, 0, 4096, 8192), &e),
            Verdict::Do(Action::Read {
                offset: 4096,
                len: 8192
            })
        );
        assert_eq!(
            check(&req(Cmd::Write, 1, 0, 4096), &e),
            Verdict::Do(Action::Write {
                offset: 0,
                fua: true
            })
        );
        assert_eq!(
            check(&req(Cmd::WriteZeroes, 3, 0, 1 << 20), &e),
            Verdict::Do(Action::Zeroes {
                offset: 0,
                len: 1 << 20,
                fua: true
            })
        );
        assert_eq!(
            check(&req(Cmd::Flush, 1, 7, 9), &e),
            Verdict::Do(Action::Flush)
        );
        assert_eq!(check(&req(Cmd::Disc, 0, 0, 0), &e), Verdict::Disconnect);
        assert_eq!(check(&req(Cmd::Read, 0, 4096, 0), &e), Verdict::Answer(0));
    }

    #[test]
    fn refusals_follow_the_spec() {
        let e = export(false);
        let mut bad = req(Cmd::Read, 0, 0, 4096);
        bad.magic = 0x1256_0953;
        assert_eq!(check(&bad, &e), Verdict::Abandon);
        let mut unknown = req(Cmd::Read, 0, 0, 4096);
        unknown.kind = 5;
        assert_eq!(check(&unknown, &e), EINVAL);
        // NO_HOLE only with WRITE_ZEROES; DF never (no structured replies); unknown bits.
        assert_eq!(check(&req(Cmd::Write, 2, 0, 4096), &e), EINVAL);
        assert_eq!(check(&req(Cmd::Read, 4, 0, 4096), &e), EINVAL);
        assert_eq!(check(&req(Cmd::Read, 0x100, 0, 4096), &e), EINVAL);
        // Past the end: reads and trims EINVAL, writes and zeroes ENOSPC.
        assert_eq!(check(&req(Cmd::Read, 0, 1 << 20, 4096), &e), EINVAL);
        assert_eq!(check(&req(Cmd::Trim, 0, 1 << 20, 4096), &e), EINVAL);
        assert_eq!(
            check(&req(Cmd::Write, 0, (1 << 20) - 4096, 8192), &e),
            Verdict::Answer(28)
        );
        assert_eq!(
            check(&req(Cmd::WriteZeroes, 0, u64::MAX - 10, 4096), &e),
            Verdict::Answer(28)
        );
        // Misaligned.
        assert_eq!(check(&req(Cmd::Read, 0, 512, 4096), &e), EINVAL);
        assert_eq!(check(&req(Cmd::Write, 0, 0, 512), &e), EINVAL);
        // Larger than the maximum block size.
        let big = Export {
            size: 1 << 40,
            ..export(false)
        };
        assert_eq!(check(&req(Cmd::Read, 0, 0, MAX_BLOCK + 4096), &big), EINVAL);
        assert_eq!(check(&req(Cmd::Write, 0, 0, u32::MAX - 4095), &big), EINVAL);
        assert!(matches!(
            check(&req(Cmd::Trim, 0, 0, u32::MAX - 4095), &big),
            Verdict::Do(_)
        ));
        // A smaller budget advertises (and holds clients to) a smaller maximum.
        let small = Export {
            max_block: 1 << 20,
            ..big
        };
        assert_eq!(check(&req(Cmd::Read, 0, 0, 2 << 20), &small), EINVAL);
        assert_eq!(check(&req(Cmd::Write, 0, 0, 2 << 20), &small), EINVAL);
        assert!(matches!(
            check(&req(Cmd::Read, 0, 0, 1 << 20), &small),
            Verdict::Do(_)
        ));
        assert!(matches!(
            check(&req(Cmd::WriteZeroes, 0, 0, 2 << 20), &small),
            Verdict::Do(_)
        ));
    }

    #[test]
    fn read_only_refuses_writes_with_eperm() {
        let e = export(true);
        for c in [Cmd::Write, Cmd::Trim, Cmd::WriteZeroes] {
            assert_eq!(check(&req(c, 0, 0, 4096), &e), Verdict::Answer(1));
        }
        assert!(matches!(
            check(&req(Cmd::Read, 0, 0, 4096), &e),
            Verdict::Do(_)
        ));
        assert_eq!(
            check(&req(Cmd::Flush, 0, 0, 0), &e),
            Verdict::Do(Action::Flush)
        );
    }
}
