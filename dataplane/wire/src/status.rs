//! Status codes carried in handshake and request replies.

/// Why a request or a handshake failed (or `Ok`). On the wire: a little-endian u16.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Status {
    /// The request succeeded.
    #[error("ok")]
    Ok = 0,
    /// The frame could not be parsed (bad magic, non-zero reserved field); the connection is closed.
    /// (A flag bit the op does not allow is `BadFlags`, not this.)
    #[error("malformed frame")]
    BadFrame = 1,
    /// The op code is not one this protocol version knows.
    #[error("unknown op")]
    UnknownOp = 2,
    /// A flag bit is set that the op does not allow.
    #[error("flag not allowed for this op")]
    BadFlags = 3,
    /// Offset or length is not a multiple of the device's logical block size.
    #[error("offset or length not aligned to the block size")]
    Misaligned = 4,
    /// The range is outside the token's lent range or the device.
    #[error("range outside the lent range or the device")]
    OutOfRange = 5,
    /// The length exceeds the node's max I/O size (or the search hit limit).
    #[error("request larger than the node allows")]
    TooLarge = 6,
    /// A write-class request under a read-only token.
    #[error("token is read-only")]
    ReadOnly = 7,
    /// The token's expiry has passed.
    #[error("token expired")]
    Expired = 8,
    /// The token is unparsable or its signature does not verify with the node's trusted key.
    #[error("token invalid or not signed by the trusted key")]
    BadToken = 9,
    /// The token names another node.
    #[error("token is for another node")]
    WrongNode = 10,
    /// The token names another device, or the device does not exist on this node.
    #[error("token is for another device, or no such device")]
    WrongDevice = 11,
    /// A newer fencing epoch has been seen for this range: this token is fenced off.
    #[error("stale epoch: a newer lease holds this range")]
    StaleEpoch = 12,
    /// Client and node share no protocol version.
    #[error("no common protocol version")]
    VersionMismatch = 13,
    /// The device reported an I/O error.
    #[error("I/O error on the device")]
    IoError = 14,
    /// The device is out of space (a file backend that could not grow).
    #[error("no space on the device")]
    NoSpace = 15,
    /// The node is shutting down and takes no new requests.
    #[error("node is shutting down")]
    ShuttingDown = 16,
    /// SEARCH pattern length outside 1..=64 or max_hits of 0.
    #[error("bad search pattern or hit limit")]
    BadPattern = 17,
    /// A zero length where the op needs data.
    #[error("invalid length")]
    InvalidLength = 18,
    /// The node has no trusted key configured and cannot verify tokens.
    #[error("node has no trusted key")]
    NoTrustKey = 19,
    /// An unexpected failure inside the node.
    #[error("internal node error")]
    Internal = 20,
    /// The control plane revoked the token's lease (its nonce) before the token expired.
    #[error("the token's lease was revoked")]
    Revoked = 21,
    /// The token is bound to a holder and the hello brought no valid proof of holding its key
    /// (or a replayed one), or the node takes only bound tokens and this one is a bearer token.
    #[error("not the token's holder")]
    NotHolder = 22,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 23] = [
        Status::Ok,
        Status::BadFrame,
        Status::UnknownOp,
        Status::BadFlags,
        Status::Misaligned,
        Status::OutOfRange,
        Status::TooLarge,
        Status::ReadOnly,
        Status::Expired,
        Status::BadToken,
        Status::WrongNode,
        Status::WrongDevice,
        Status::StaleEpoch,
        Status::VersionMismatch,
        Status::IoError,
        Status::NoSpace,
        Status::ShuttingDown,
        Status::BadPattern,
        Status::InvalidLength,
        Status::NoTrustKey,
        Status::Internal,
        Status::Revoked,
        Status::NotHolder,
    ];

    /// The wire code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The status for a wire code; unknown codes (from a newer peer) become `None`.
    pub fn from_code(code: u16) -> Option<Status> {
        Status::ALL.get(usize::from(code)).copied()
    }

    /// A short stable name (the enum variant), for logs and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "Ok",
            Status::BadFrame => "BadFrame",
            Status::UnknownOp => "UnknownOp",
            Status::BadFlags => "BadFlags",
            Status::Misaligned => "Misaligned",
            Status::OutOfRange => "OutOfRange",
            Status::TooLarge => "TooLarge",
            Status::ReadOnly => "ReadOnly",
            Status::Expired => "Expired",
            Status::BadToken => "BadToken",
            Status::WrongNode => "WrongNode",
            Status::WrongDevice => "WrongDevice",
            Status::StaleEpoch => "StaleEpoch",
            Status::VersionMismatch => "VersionMismatch",
            Status::IoError => "IoError",
            Status::NoSpace => "NoSpace",
            Status::ShuttingDown => "ShuttingDown",
            Status::BadPattern => "BadPattern",
            Status::InvalidLength => "InvalidLength",
            Status::NoTrustKey => "NoTrustKey",
            Status::Internal => "Internal",
            Status::Revoked => "Revoked",
            Status::NotHolder => "NotHolder",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_dense() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(s.code() as usize, i);
            assert_eq!(Status::from_code(s.code()), Some(*s));
            assert!(!s.to_string().is_empty());
            assert!(!s.name().is_empty());
        }
        assert_eq!(Status::from_code(Status::ALL.len() as u16), None);
        assert_eq!(Status::from_code(u16::MAX), None);
    }
}
