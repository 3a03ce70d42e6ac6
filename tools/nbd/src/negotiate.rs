//! The handshake (fixed newstyle): a pure [`Negotiation`] that decides what to answer to each
//! option, and [`handshake`], the thin loop that reads options off a stream and writes the answers.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::export::Export;
use crate::proto::{self, info, Opt, OptionHeader, Rep};

/// Option data longer than this is drained and refused (`NBD_REP_ERR_TOO_BIG`): the longest
/// legitimate one (INFO/GO) is a 4096-byte name plus a few information requests.
pub const MAX_OPTION_DATA: u32 = 8 << 10;

/// A whole negotiation must finish within this (a client that connects and says nothing, or
/// keeps sending options, does not hold a task forever).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the connection does after an option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Read the next option.
    Continue,
    /// Enter the transmission phase.
    Transmit,
    /// Close the connection (after writing what was answered).
    Close,
}

/// Why a handshake ended without entering transmission.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed or the client went away.
    #[error("handshake I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The client set a flag this server did not offer.
    #[error("client flags {0:#x} include bits this server does not know")]
    ClientFlags(u32),
    /// An option did not start with `IHAVEOPT`.
    #[error("option magic {0:#018x} is not IHAVEOPT")]
    BadMagic(u64),
    /// The client ended the negotiation (ABORT, or an export that cannot be refused politely).
    #[error("negotiation ended: {0}")]
    Ended(&'static str),
    /// The negotiation took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("handshake timed out")]
    Timeout,
}

/// The handshake state of one connection: decides, never does I/O.
#[derive(Debug)]
pub struct Negotiation<'a> {
    export: &'a Export,
    no_zeroes: bool,
    /// Why the negotiation closed, when it did.
    pub closed_because: Option<&'static str>,
}

impl<'a> Negotiation<'a> {
    /// Starts after the client's flags; refuses flags this server did not offer.
    pub fn new(export: &'a Export, client_flags: u32) -> Result<Self, HandshakeError> {
        let known = proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES;
        if client_flags & !known != 0 {
            return Err(HandshakeError::ClientFlags(client_flags));
        }
        Ok(Self {
            export,
            no_zeroes: client_flags & proto::FLAG_C_NO_ZEROES != 0,
            closed_because: None,
        })
    }

    /// Answers one option. `data` is `None` when the option's data was longer than
    /// [`MAX_OPTION_DATA`] (it has been drained). Appends the answer to `out`.
    pub fn on_option(&mut self, option: u32, data: Option<&[u8]>, out: &mut Vec<u8>) -> Step {
        let err = |out: &mut Vec<u8>, rep: Rep, msg: &str| {
            proto::put_option_reply(out, option, rep, msg.as_bytes());
            Step::Continue
        };
        let Some(opt) = Opt::from_code(option) else {
            return err(
                out,
                Rep::ErrUnsup,
                "option not supported by the dasmesh gateway",
            );
        };
        let Some(data) = data else {
            if opt == Opt::ExportName {
                // It cannot be answered with an error: the spec says close.
                return self.close("NBD_OPT_EXPORT_NAME with an oversized name");
            }
            return err(out, Rep::ErrTooBig, "option data too large");
        };
        match opt {
            Opt::Abort => {
                proto::put_option_reply(out, option, Rep::Ack, &[]);
                self.close("client sent NBD_OPT_ABORT")
            }
            Opt::List => {
                if !data.is_empty() {
                    return err(out, Rep::ErrInvalid, "NBD_OPT_LIST takes no data");
                }
                let d = proto::rep_server(&self.export.name, &self.export.description);
                proto::put_option_reply(out, option, Rep::Server, &d);
                proto::put_option_reply(out, option, Rep::Ack, &[]);
                Step::Continue
            }
            Opt::StartTls => err(out, Rep::ErrUnsup, "TLS is not supported by this gateway"),
            Opt::StructuredReply => err(out, Rep::ErrUnsup, "only simple replies are supported"),
            Opt::ExportName => match proto::decode_name(data) {
                Ok(name) if self.export.matches(&name) => {
                    out.extend_from_slice(&proto::export_name_reply(
                        self.export.size,
                        self.export.flags(),
                        self.no_zeroes,
                    ));
                    Step::Transmit
                }
                _ => self.close("NBD_OPT_EXPORT_NAME for an unknown export"),
            },
            Opt::Info | Opt::Go => {
                let req = match proto::decode_info_request(data) {
                    Ok(r) => r,
                    Err(e) => return err(out, Rep::ErrInvalid, &e.to_string()),
                };
                if !self.export.matches(&req.name) {
                    return err(
                        out,
                        Rep::ErrUnknown,
                        &format!("no export named {:?}", req.name),
                    );
                }
                let e = self.export;
                let inf = proto::info_export(e.size, e.flags());
                proto::put_option_reply(out, option, Rep::Info, &inf);
                // Sent whether asked or not: clients ignore what they do not ask for, and
                // commands that break the constraints are refused cleanly with EINVAL.
                let bs = proto::info_block_size(e.min_block, e.preferred_block(), e.max_block);
                proto::put_option_reply(out, option, Rep::Info, &bs);
                if req.requests.contains(&info::NAME) {
                    let d = proto::info_string(info::NAME, &e.name);
                    proto::put_option_reply(out, option, Rep::Info, &d);
                }
                if req.requests.contains(&info::DESCRIPTION) {
                    let d = proto::info_string(info::DESCRIPTION, &e.description);
                    proto::put_option_reply(out, option, Rep::Info, &d);
                }
                proto::put_option_reply(out, option, Rep::Ack, &[]);
                if opt == Opt::Go {
                    Step::Transmit
                } else {
                    Step::Continue
                }
            }
        }
    }

    fn close(&mut self, why: &'static str) -> Step {
        self.closed_because = Some(why);
        Step::Close
    }
}

/// Runs the handshake on `s`: Ok when the transmission phase starts, Err when it does not.
pub async fn handshake<S>(s: &mut S, export: &Export) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, negotiate(s, export)).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeError::Timeout),
    }
}

async fn negotiate<S>(s: &mut S, export: &Export) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(&proto::greeting()).await?;
    s.flush().await?;
    let client_flags = s.read_u32().await?;
    let mut n = Negotiation::new(export, client_flags)?;
    let mut out = Vec::new();
    let mut data = Vec::new();
    loop {
        let mut h = [0u8; proto::OPTION_HEADER_LEN];
        s.read_exact(&mut h).await?;
        let h = OptionHeader::decode(&h);
        if h.magic != proto::IHAVEOPT {
            return Err(HandshakeError::BadMagic(h.magic));
        }
        let fits = h.length <= MAX_OPTION_DATA;
        if fits {
            data.resize(h.length as usize, 0);
            s.read_exact(&mut data).await?;
        } else {
            drain(s, u64::from(h.length)).await?;
        }
        out.clear();
        let step = n.on_option(h.option, fits.then_some(&data[..]), &mut out);
        s.write_all(&out).await?;
        s.flush().await?;
        match step {
            Step::Continue => {}
            Step::Transmit => return Ok(()),
            Step::Close => {
                return Err(HandshakeError::Ended(
                    n.closed_because.unwrap_or("negotiation closed"),
                ))
            }
        }
    }
}

/// Reads and throws away `n` bytes through a small buffer (memory stays bounded whatever `n`).
pub(crate) async fn drain<R: AsyncRead + Unpin>(r: &mut R, mut n: u64) -> std::io::Result<()> {
    let mut scratch = vec![0u8; (64 << 10).min(n as usize)];
    while n > 0 {
        let k = (n as usize).min(scratch.len());
        r.read_exact(&mut scratch[..k]).await?;
        n -= k as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::MAX_BLOCK;
    use crate::proto::{decode_option_reply, OptionReply};

    fn export() -> Export {
        Export {
            name: "db".into(),
            description: "a volume".into(),
            size: 8 << 20,
            min_block: 4096,
            max_block: MAX_BLOCK,
            read_only: false,
        }
    }

    fn replies(mut b: &[u8]) -> Vec<OptionReply> {
        let mut v = Vec::new();
        while let Some((r, used)) = decode_option_reply(b) {
            v.push(r);
            b = &b[used..];
        }
        assert!(b.is_empty(), "trailing bytes");
        v
    }

    #[test]
    fn unknown_client_flags_refused() {
        let e = export();
        assert!(Negotiation::new(&e, 1 << 2).is_err());
        assert!(Negotiation::new(&e, 3).is_ok());
        assert!(Negotiation::new(&e, 0).is_ok());
    }

    #[test]
    fn unknown_and_refused_options_continue() {
        let e = export();
        let mut n = Negotiation::new(&e, 3).unwrap();
        for (opt, rep) in [
            (99, Rep::ErrUnsup),
            (4, Rep::ErrUnsup),
            (5, Rep::ErrUnsup),
            (8, Rep::ErrUnsup),
            (10, Rep::ErrUnsup),
        ] {
            let mut out = Vec::new();
            assert_eq!(n.on_option(opt, Some(&[]), &mut out), Step::Continue);
            let r = replies(&out);
            assert_eq!(r.len(), 1);
            assert_eq!((r[0].option, r[0].rep), (opt, rep as u32));
        }
        let mut out = Vec::new();
        assert_eq!(n.on_option(7, None, &mut out), Step::Continue);
        assert_eq!(replies(&out)[0].rep, Rep::ErrTooBig as u32);
    }

    #[test]
    fn list_names_the_export() {
        let e = export();
        let mut n = Negotiation::new(&e, 3).unwrap();
        let mut out = Vec::new();
        assert_eq!(n.on_option(3, Some(&[]), &mut out), Step::Continue);
        let r = replies(&out);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].rep, Rep::Server as u32);
        assert_eq!(&r[0].data[..4], &2u32.to_be_bytes());
        assert_eq!(&r[0].data[4..6], b"db");
        assert_eq!(r[1].rep, Rep::Ack as u32);
        let mut out = Vec::new();
        n.on_option(3, Some(&[1]), &mut out);
        assert_eq!(replies(&out)[0].rep, Rep::ErrInvalid as u32);
    }

    #[test]
    fn info_then_go() {
        let e = export();
        let mut n = Negotiation::new(&e, 3).unwrap();
        let req = proto::InfoRequest {
            name: "db".into(),
            requests: vec![info::BLOCK_SIZE, info::NAME, info::DESCRIPTION],
        };
        let d = proto::encode_info_request(&req);
        let mut out = Vec::new();
        assert_eq!(n.on_option(6, Some(&d), &mut out), Step::Continue);
        let r = replies(&out);
        assert_eq!(r.len(), 5);
        assert!(r[..4].iter().all(|x| x.rep == Rep::Info as u32));
        assert_eq!(r[0].data, proto::info_export(8 << 20, e.flags()));
        assert_eq!(r[1].data, proto::info_block_size(4096, 4096, MAX_BLOCK));
        assert_eq!(r[4].rep, Rep::Ack as u32);
        let mut out2 = Vec::new();
        assert_eq!(n.on_option(7, Some(&d), &mut out2), Step::Transmit);
        let go = replies(&out2);
        assert!(go.iter().all(|x| x.option == 7));
        let strip =
            |v: Vec<OptionReply>| v.into_iter().map(|x| (x.rep, x.data)).collect::<Vec<_>>();
        assert_eq!(strip(go), strip(r), "GO answers what INFO answered");
    }

    #[test]
    fn go_unknown_export_and_garbage() {
        let e = export();
        let mut n = Negotiation::new(&e, 3).unwrap();
        let d = proto::encode_info_request(&proto::InfoRequest {
            name: "nope".into(),
            requests: vec![],
        });
        let mut out = Vec::new();
        assert_eq!(n.on_option(7, Some(&d), &mut out), Step::Continue);
        assert_eq!(replies(&out)[0].rep, Rep::ErrUnknown as u32);
        let mut out = Vec::new();
        assert_eq!(n.on_option(7, Some(&[0, 0]), &mut out), Step::Continue);
        assert_eq!(replies(&out)[0].rep, Rep::ErrInvalid as u32);
    }

    #[test]
    fn export_name() {
        let e = export();
        let mut n = Negotiation::new(&e, proto::FLAG_C_FIXED_NEWSTYLE).unwrap();
        let mut out = Vec::new();
        assert_eq!(n.on_option(1, Some(b""), &mut out), Step::Transmit);
        assert_eq!(out.len(), 134);
        assert_eq!(&out[..8], &(8u64 << 20).to_be_bytes());
        let mut n = Negotiation::new(&e, 3).unwrap();
        let mut out = Vec::new();
        assert_eq!(n.on_option(1, Some(b"db"), &mut out), Step::Transmit);
        assert_eq!(out.len(), 10);
        let mut out = Vec::new();
        assert_eq!(n.on_option(1, Some(b"x"), &mut out), Step::Close);
        assert!(out.is_empty());
    }

    #[test]
    fn abort_acks_and_closes() {
        let e = export();
        let mut n = Negotiation::new(&e, 3).unwrap();
        let mut out = Vec::new();
        assert_eq!(n.on_option(2, Some(b"ignored"), &mut out), Step::Close);
        assert_eq!(replies(&out)[0].rep, Rep::Ack as u32);
    }
}
