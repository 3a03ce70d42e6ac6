//! dasmesh-wire: the dasmesh block protocol as pure code.
//!
//! Everything a peer needs to speak the protocol lives here: the handshake ([`Hello`],
//! [`HelloReply`]), request and reply headers ([`RequestHeader`], [`ReplyHeader`]), the SEARCH
//! body and matcher, the [`Status`] codes, and the ed25519-signed capability [`Token`].
//! There is no I/O and no `unsafe` here; `docs/protocol.md` is the contract this crate implements.
#![forbid(unsafe_code)]

mod frame;
mod framer;
mod handshake;
mod ids;
mod local;
mod proof;
mod search;
mod status;
mod token;
pub mod units;

pub use frame::{
    check_request, Op, ReplyHeader, RequestHeader, RequestLimits, SearchBody, FLAG_FUA,
    REPLY_FLAG_TRUNCATED, REPLY_HEADER_LEN, REPLY_MAGIC, REQUEST_HEADER_LEN, REQUEST_MAGIC,
    SEARCH_BODY_LEN, SEARCH_PATTERN_MAX,
};
pub use framer::{
    check_reply, expected_reply_payload, peek_header, request_frame_len, Event, ExpectedPayload,
    FrameHeader, Framer,
};
pub use handshake::{
    negotiate_version, Capabilities, Hello, HelloReply, HELLO_LEN, HELLO_MAGIC, HELLO_REPLY_LEN,
    MAX_TOKEN_LEN, PROTOCOL_VERSION,
};
pub use ids::{DeviceId, Epoch, NodeId, Tag, VolumeId};
pub use local::{local_socket_name, LOCAL_SOCKET_PREFIX};
pub use proof::{Proof, ProofWindow, PROOF_CLOCK_WINDOW_MS, PROOF_LEN};
pub use search::Searcher;
pub use status::Status;
pub use token::{
    key_from_text, key_to_text, signing_key_from_text, verifying_key_from_text, Claim, Rights,
    SigningKey, Terms, Token, TokenError, VerifyingKey, BOUND_CLAIM_LEN, BOUND_TOKEN_LEN,
    CLAIM_LEN, TOKEN_LEN, TOKEN_TEXT_PREFIX,
};
