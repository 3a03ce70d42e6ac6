//! Capability tokens: a fixed-size [`Claim`] signed with ed25519 by the control plane.
//!
//! Binary form (what the handshake carries): the claim followed by the 64-byte signature. A
//! format-1 claim is 88 bytes (a bearer token, 152 in all); a format-2 claim is those 88 bytes
//! followed by the 32-byte ed25519 public key of the token's holder (184 in all), and a node
//! opens it only with a [`Proof`](crate::Proof) made with the holder's private key.
//! Text form (what people and files carry): `dmt1.` + unpadded URL-safe base64 of the binary.
//! The signature covers `SIGNING_CONTEXT || claim bytes`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytemuck::{Pod, Zeroable};
use ed25519_dalek::{Signature, Signer as _};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use thiserror::Error;

use crate::ids::{DeviceId, Epoch, NodeId, VolumeId};
use crate::status::Status;

/// Size of a format-1 claim (and of the fixed part of a format-2 claim).
pub const CLAIM_LEN: usize = 88;
/// Size of a format-1 binary token (claim + signature).
pub const TOKEN_LEN: usize = CLAIM_LEN + 64;
/// Size of a format-2 claim: the 88 bytes and the holder's public key.
pub const BOUND_CLAIM_LEN: usize = CLAIM_LEN + 32;
/// Size of a format-2 binary token.
pub const BOUND_TOKEN_LEN: usize = BOUND_CLAIM_LEN + 64;
/// Prefix of the text form.
pub const TOKEN_TEXT_PREFIX: &str = "dmt1.";
const CLAIM_MAGIC: [u8; 4] = *b"DMTK";
const CLAIM_FORMAT: u8 = 1;
const BOUND_CLAIM_FORMAT: u8 = 2;
const SIGNING_CONTEXT: &[u8; 16] = b"dasmesh-token-v1";

/// What a token lets its holder do.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rights {
    /// READ and SEARCH (and FLUSH).
    ReadOnly = 1,
    /// Everything.
    ReadWrite = 2,
}

impl Rights {
    /// Whether write-class ops are allowed.
    pub fn writable(self) -> bool {
        self == Rights::ReadWrite
    }
}

/// Why a token was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    /// Text form without the `dmt1.` prefix or with invalid base64.
    #[error("token text is not `{TOKEN_TEXT_PREFIX}` followed by base64url")]
    BadEncoding,
    /// A key file that is not 64 hex digits of a valid ed25519 key.
    #[error("key is not 64 hex digits of a valid ed25519 key")]
    BadKey,
    /// Binary form of the wrong size.
    #[error("token is {0} bytes, expected {TOKEN_LEN} or {BOUND_TOKEN_LEN}")]
    BadLength(usize),
    /// Claim magic, format version, rights or terms invalid.
    #[error("token claim is malformed: {0}")]
    BadClaim(&'static str),
    /// The signature does not verify with the trusted key.
    #[error("token signature does not verify with the trusted key")]
    BadSignature,
    /// The expiry has passed.
    #[error("token expired at {expires_at_ms} ms (now {now_ms} ms since the epoch)")]
    Expired {
        /// The token's expiry.
        expires_at_ms: u64,
        /// The time of the check.
        now_ms: u64,
    },
    /// The token names another node.
    #[error("token is for node {token}, this is node {node}")]
    WrongNode {
        /// The token's node.
        token: NodeId,
        /// The checking node.
        node: NodeId,
    },
    /// The token names another device.
    #[error("token is for device {token}, the request is for device {requested}")]
    WrongDevice {
        /// The token's device.
        token: DeviceId,
        /// The device asked for.
        requested: DeviceId,
    },
    /// The token is bound to a holder and the connection did not prove it holds the key (or this
    /// node takes only bound tokens and the token is a bearer token).
    #[error("not the token's holder: {0}")]
    NotHolder(&'static str),
}

impl TokenError {
    /// The wire status this refusal is reported with.
    pub fn status(&self) -> Status {
        match self {
            TokenError::BadEncoding
            | TokenError::BadKey
            | TokenError::BadLength(_)
            | TokenError::BadClaim(_)
            | TokenError::BadSignature => Status::BadToken,
            TokenError::Expired { .. } => Status::Expired,
            TokenError::WrongNode { .. } => Status::WrongNode,
            TokenError::WrongDevice { .. } => Status::WrongDevice,
            TokenError::NotHolder(_) => Status::NotHolder,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RawClaim {
    magic: [u8; 4],
    format: u8,
    rights: u8,
    weight: u8,
    read_cost: u8,
    node_id: [u8; 8],
    volume_id: [u8; 8],
    device_id: [u8; 4],
    min_mib_s: [u8; 2],
    max_mib_s: [u8; 2],
    range_offset: [u8; 8],
    range_length: [u8; 8],
    epoch: [u8; 8],
    issued_at_ms: [u8; 8],
    expires_at_ms: [u8; 8],
    nonce: [u8; 8],
    min_iops: [u8; 4],
    max_iops: [u8; 4],
}

/// What the control plane lends: a byte range of one device on one node, with rights, a fencing
/// epoch and an expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The node (0: any node).
    pub node_id: NodeId,
    /// The volume the range belongs to (0 when minted by hand).
    pub volume_id: VolumeId,
    /// The device on that node.
    pub device_id: DeviceId,
    /// Start of the lent byte range (block-aligned).
    pub range_offset: u64,
    /// Length of the lent byte range.
    pub range_length: u64,
    /// Read-only or read-write.
    pub rights: Rights,
    /// Fencing epoch.
    pub epoch: Epoch,
    /// When it was issued, ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// When it stops being valid, ms since the Unix epoch.
    pub expires_at_ms: u64,
    /// Random, so two otherwise equal tokens differ (the lease id when the control plane mints
    /// it).
    pub nonce: u64,
    /// The service terms the range is served under (all zero: none).
    pub terms: Terms,
}

/// Service terms (docs/qos.md): what the range is promised (`min_*`), what it is capped at
/// (`max_*`) and its weight in what is left. Zero means none; a weight of 0 is the default
/// weight, [`Terms::DEFAULT_WEIGHT`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Terms {
    /// IOPS promised.
    pub min_iops: u32,
    /// IOPS cap.
    pub max_iops: u32,
    /// MiB/s promised.
    pub min_mib_s: u16,
    /// MiB/s cap.
    pub max_mib_s: u16,
    /// Share of spare capacity relative to other leases (0: the default).
    pub weight: u8,
    /// How many operations (and times its bytes) a read counts for against the caps (0 and 1:
    /// one): a mirror's copies each serve a share of its reads and every write, so a copy
    /// counting each read once per copy holds the volume to its cap however reads are spread.
    pub read_cost: u8,
}

impl Terms {
    /// The weight a lease without one has.
    pub const DEFAULT_WEIGHT: u8 = 100;

    /// Whether these are no terms at all.
    pub fn is_none(&self) -> bool {
        *self == Terms::default()
    }

    /// Whether a promise is made.
    pub fn promises(&self) -> bool {
        self.min_iops > 0 || self.min_mib_s > 0
    }

    /// What a read counts for against the caps (at least 1).
    pub fn read_cost(&self) -> u64 {
        u64::from(self.read_cost.max(1))
    }

    /// The weight, the default for 0.
    pub fn weight(&self) -> u8 {
        if self.weight == 0 {
            Self::DEFAULT_WEIGHT
        } else {
            self.weight
        }
    }

    /// Why these terms cannot be served, if they cannot: a promise above its own cap.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.max_iops > 0 && self.min_iops > self.max_iops {
            return Err("terms promise more IOPS than they cap");
        }
        if self.max_mib_s > 0 && self.min_mib_s > self.max_mib_s {
            return Err("terms promise more MiB/s than they cap");
        }
        Ok(())
    }
}

impl Claim {
    /// Encodes to the 88 bytes of a format-1 claim.
    pub fn encode(&self) -> [u8; CLAIM_LEN] {
        self.encode_as(CLAIM_FORMAT)
    }

    fn encode_as(&self, format: u8) -> [u8; CLAIM_LEN] {
        bytemuck::cast(RawClaim {
            magic: CLAIM_MAGIC,
            format,
            rights: self.rights as u8,
            weight: self.terms.weight,
            read_cost: self.terms.read_cost,
            node_id: self.node_id.0.to_le_bytes(),
            volume_id: self.volume_id.0.to_le_bytes(),
            device_id: self.device_id.0.to_le_bytes(),
            min_mib_s: self.terms.min_mib_s.to_le_bytes(),
            max_mib_s: self.terms.max_mib_s.to_le_bytes(),
            range_offset: self.range_offset.to_le_bytes(),
            range_length: self.range_length.to_le_bytes(),
            epoch: self.epoch.0.to_le_bytes(),
            issued_at_ms: self.issued_at_ms.to_le_bytes(),
            expires_at_ms: self.expires_at_ms.to_le_bytes(),
            nonce: self.nonce.to_le_bytes(),
            min_iops: self.terms.min_iops.to_le_bytes(),
            max_iops: self.terms.max_iops.to_le_bytes(),
        })
    }

    /// Decodes the first 88 bytes of a claim of either format (a format-2 claim's holder key
    /// follows them; see [`Token::holder`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, TokenError> {
        let raw: &RawClaim = bytes
            .get(..CLAIM_LEN)
            .map(bytemuck::from_bytes)
            .ok_or(TokenError::BadLength(bytes.len()))?;
        if raw.magic != CLAIM_MAGIC {
            return Err(TokenError::BadClaim("bad magic"));
        }
        if raw.format != CLAIM_FORMAT && raw.format != BOUND_CLAIM_FORMAT {
            return Err(TokenError::BadClaim("unknown claim format"));
        }
        let rights = match raw.rights {
            1 => Rights::ReadOnly,
            2 => Rights::ReadWrite,
            _ => return Err(TokenError::BadClaim("unknown rights")),
        };
        let terms = Terms {
            min_iops: u32::from_le_bytes(raw.min_iops),
            max_iops: u32::from_le_bytes(raw.max_iops),
            min_mib_s: u16::from_le_bytes(raw.min_mib_s),
            max_mib_s: u16::from_le_bytes(raw.max_mib_s),
            weight: raw.weight,
            read_cost: raw.read_cost,
        };
        terms.check().map_err(TokenError::BadClaim)?;
        Ok(Self {
            node_id: NodeId(u64::from_le_bytes(raw.node_id)),
            volume_id: VolumeId(u64::from_le_bytes(raw.volume_id)),
            device_id: DeviceId(u32::from_le_bytes(raw.device_id)),
            range_offset: u64::from_le_bytes(raw.range_offset),
            range_length: u64::from_le_bytes(raw.range_length),
            rights,
            epoch: Epoch(u64::from_le_bytes(raw.epoch)),
            issued_at_ms: u64::from_le_bytes(raw.issued_at_ms),
            expires_at_ms: u64::from_le_bytes(raw.expires_at_ms),
            nonce: u64::from_le_bytes(raw.nonce),
            terms,
        })
    }

    /// Signs this claim into a format-1 (bearer) token.
    pub fn sign(&self, key: &SigningKey) -> Token {
        Token::signed(&self.encode(), key)
    }

    /// Signs this claim into a format-2 token, bound to the holder of `holder`'s private half:
    /// a node opens it only with a [`Proof`](crate::Proof) that key made.
    pub fn sign_bound(&self, key: &SigningKey, holder: &VerifyingKey) -> Token {
        let mut claim = [0u8; BOUND_CLAIM_LEN];
        claim[..CLAIM_LEN].copy_from_slice(&self.encode_as(BOUND_CLAIM_FORMAT));
        claim[CLAIM_LEN..].copy_from_slice(holder.as_bytes());
        Token::signed(&claim, key)
    }
}

fn signed_message(claim: &[u8]) -> Vec<u8> {
    [SIGNING_CONTEXT.as_slice(), claim].concat()
}

/// A signed claim, as carried in the handshake. Holding one proves nothing until [`Token::verify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// The binary form in the first `len` bytes; the rest are zero.
    bytes: [u8; BOUND_TOKEN_LEN],
    len: u8,
}

impl Token {
    fn signed(claim: &[u8], key: &SigningKey) -> Token {
        let signature = key.sign(&signed_message(claim)).to_bytes();
        let mut bytes = [0u8; BOUND_TOKEN_LEN];
        bytes[..claim.len()].copy_from_slice(claim);
        bytes[claim.len()..claim.len() + 64].copy_from_slice(&signature);
        Token {
            bytes,
            len: (claim.len() + 64) as u8,
        }
    }

    /// The binary form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Takes the binary form; checks only the length (verify checks the rest).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenError> {
        if bytes.len() != TOKEN_LEN && bytes.len() != BOUND_TOKEN_LEN {
            return Err(TokenError::BadLength(bytes.len()));
        }
        let mut b = [0u8; BOUND_TOKEN_LEN];
        b[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            bytes: b,
            len: bytes.len() as u8,
        })
    }

    /// The one-line text form.
    pub fn to_text(&self) -> String {
        format!(
            "{TOKEN_TEXT_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.as_bytes())
        )
    }

    fn claim_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len) - 64]
    }

    /// The signature (the last 64 bytes).
    pub fn signature(&self) -> &[u8] {
        &self.as_bytes()[usize::from(self.len) - 64..]
    }

    /// The public key of the holder a format-2 token is bound to (the bytes as signed; whether
    /// they are a valid key is checked with the proof). `None` for a bearer token.
    pub fn holder(&self) -> Option<[u8; 32]> {
        (usize::from(self.len) == BOUND_TOKEN_LEN)
            .then(|| self.bytes[CLAIM_LEN..BOUND_CLAIM_LEN].try_into().ok())
            .flatten()
    }

    /// Parses the text form (surrounding whitespace is ignored).
    pub fn from_text(text: &str) -> Result<Self, TokenError> {
        let b64 = text
            .trim()
            .strip_prefix(TOKEN_TEXT_PREFIX)
            .ok_or(TokenError::BadEncoding)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| TokenError::BadEncoding)?;
        Self::from_bytes(&bytes)
    }

    /// The claim, unverified (for display; never for access decisions).
    pub fn claim_unverified(&self) -> Result<Claim, TokenError> {
        Claim::decode(self.claim_bytes())
    }

    /// Checks the signature with `key`, then the expiry against `now_ms`, the node (a claim for
    /// node 0 is good on any node) and the device. Returns the claim when all hold.
    pub fn verify(
        &self,
        key: &VerifyingKey,
        now_ms: u64,
        node: NodeId,
        device: DeviceId,
    ) -> Result<Claim, TokenError> {
        let claim_bytes = self.claim_bytes();
        let sig_bytes: [u8; 64] = self
            .signature()
            .try_into()
            .map_err(|_| TokenError::BadLength(self.as_bytes().len()))?;
        key.verify_strict(
            &signed_message(claim_bytes),
            &Signature::from_bytes(&sig_bytes),
        )
        .map_err(|_| TokenError::BadSignature)?;
        let claim = Claim::decode(claim_bytes)?;
        let bound = claim_bytes.len() == BOUND_CLAIM_LEN;
        if bound != (claim_bytes[4] == BOUND_CLAIM_FORMAT) {
            return Err(TokenError::BadClaim(
                "claim format does not match its length",
            ));
        }
        if now_ms >= claim.expires_at_ms {
            return Err(TokenError::Expired {
                expires_at_ms: claim.expires_at_ms,
                now_ms,
            });
        }
        if claim.node_id != NodeId(0) && claim.node_id != node {
            return Err(TokenError::WrongNode {
                token: claim.node_id,
                node,
            });
        }
        if claim.device_id != device {
            return Err(TokenError::WrongDevice {
                token: claim.device_id,
                requested: device,
            });
        }
        Ok(claim)
    }
}

/// The text form of a key file: 64 lowercase hex digits of the 32 key bytes, one line.
pub fn key_to_text(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a key file's text (64 hex digits; surrounding whitespace ignored).
pub fn key_from_text(text: &str) -> Result<[u8; 32], TokenError> {
    let t = text.trim();
    // Checked here because `from_str_radix` alone would also take a sign ("+f").
    if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TokenError::BadKey);
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| TokenError::BadKey)?;
    }
    Ok(out)
}

/// Parses a public-key file's text into a verifying key.
pub fn verifying_key_from_text(text: &str) -> Result<VerifyingKey, TokenError> {
    VerifyingKey::from_bytes(&key_from_text(text)?).map_err(|_| TokenError::BadKey)
}

/// Parses a signing-key file's text (the 32-byte seed).
pub fn signing_key_from_text(text: &str) -> Result<SigningKey, TokenError> {
    Ok(SigningKey::from_bytes(&key_from_text(text)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn claim() -> Claim {
        Claim {
            node_id: NodeId(5),
            volume_id: VolumeId(9),
            device_id: DeviceId(1),
            range_offset: 4096,
            range_length: 1 << 20,
            rights: Rights::ReadWrite,
            epoch: Epoch(3),
            issued_at_ms: 1_000,
            expires_at_ms: 2_000,
            nonce: 42,
            terms: Terms::default(),
        }
    }

    /// Flipping any bit of `t` makes it fail to verify, as a bad token.
    fn every_bit_is_signed(t: &Token, vk: &VerifyingKey) {
        for i in 0..t.as_bytes().len() {
            let mut b = t.as_bytes().to_vec();
            b[i] ^= 0x01;
            let r = Token::from_bytes(&b)
                .unwrap()
                .verify(vk, 1_500, NodeId(5), DeviceId(1));
            assert_eq!(r.unwrap_err().status(), Status::BadToken, "bit flip at {i}");
        }
    }

    #[test]
    fn sign_verify_text_round_trip() {
        let t = claim().sign(&key());
        let t2 = Token::from_text(&t.to_text()).unwrap();
        assert_eq!(t, t2);
        let c = t2
            .verify(&key().verifying_key(), 1_500, NodeId(5), DeviceId(1))
            .unwrap();
        assert_eq!(c, claim());
    }

    #[test]
    fn refusals() {
        let t = claim().sign(&key());
        let vk = key().verifying_key();
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert_eq!(
            t.verify(&other, 1_500, NodeId(5), DeviceId(1)),
            Err(TokenError::BadSignature)
        );
        assert!(matches!(
            t.verify(&vk, 2_000, NodeId(5), DeviceId(1)),
            Err(TokenError::Expired { .. })
        ));
        assert!(matches!(
            t.verify(&vk, 1_500, NodeId(6), DeviceId(1)),
            Err(TokenError::WrongNode { .. })
        ));
        assert!(matches!(
            t.verify(&vk, 1_500, NodeId(5), DeviceId(0)),
            Err(TokenError::WrongDevice { .. })
        ));
        every_bit_is_signed(&t, &vk);
        assert_eq!(Token::from_text("dmt1.@@"), Err(TokenError::BadEncoding));
        assert_eq!(Token::from_text("xyz"), Err(TokenError::BadEncoding));
        assert_eq!(Token::from_bytes(&[0; 3]), Err(TokenError::BadLength(3)));
    }

    #[test]
    fn terms_round_trip_and_refusals() {
        let vk = key().verifying_key();
        let mut c = claim();
        c.terms = Terms {
            min_iops: 5_000,
            max_iops: 20_000,
            min_mib_s: 100,
            max_mib_s: 400,
            weight: 250,
            read_cost: 2,
        };
        let t = c.sign(&key());
        assert_eq!(
            t.as_bytes().len(),
            TOKEN_LEN,
            "terms fit the format-1 claim"
        );
        assert_eq!(t.verify(&vk, 1_500, NodeId(5), DeviceId(1)), Ok(c));
        let b = c.sign_bound(&key(), &vk);
        assert_eq!(b.claim_unverified(), Ok(c));
        // A cap alone, and a weight alone, are terms; none at all is the old token.
        assert!(Terms::default().is_none());
        assert_eq!(Terms::default().weight(), Terms::DEFAULT_WEIGHT);
        let refused = |terms: Terms, rights: Rights| {
            let c = Claim {
                terms,
                rights,
                ..claim()
            };
            c.sign(&key()).verify(&vk, 1_500, NodeId(5), DeviceId(1))
        };
        // A reader's token carries its volume's terms, promise included.
        let terms = Terms {
            min_iops: 10,
            max_iops: 1_000,
            max_mib_s: 10,
            weight: 5,
            ..Terms::default()
        };
        assert!(refused(terms, Rights::ReadOnly).is_ok());
        let over = Terms {
            min_iops: 2_000,
            max_iops: 1_000,
            ..Terms::default()
        };
        assert_eq!(
            refused(over, Rights::ReadWrite),
            Err(TokenError::BadClaim(
                "terms promise more IOPS than they cap"
            ))
        );
        let over = Terms {
            min_mib_s: 20,
            max_mib_s: 10,
            ..Terms::default()
        };
        assert_eq!(
            refused(over, Rights::ReadWrite),
            Err(TokenError::BadClaim(
                "terms promise more MiB/s than they cap"
            ))
        );
    }

    #[test]
    fn key_text_round_trip() {
        let k = key();
        let pk = verifying_key_from_text(&key_to_text(k.verifying_key().as_bytes())).unwrap();
        assert_eq!(pk, k.verifying_key());
        let sk = signing_key_from_text(&format!("{}\n", key_to_text(&k.to_bytes()))).unwrap();
        assert_eq!(sk.to_bytes(), k.to_bytes());
        assert_eq!(key_from_text("zz"), Err(TokenError::BadKey));
        assert_eq!(key_from_text(&"g".repeat(64)), Err(TokenError::BadKey));
    }

    #[test]
    fn bound_tokens() {
        let holder = SigningKey::from_bytes(&[9u8; 32]).verifying_key();
        let t = claim().sign_bound(&key(), &holder);
        assert_eq!(t.as_bytes().len(), BOUND_TOKEN_LEN);
        assert_eq!(t.holder(), Some(*holder.as_bytes()));
        let t2 = Token::from_text(&t.to_text()).unwrap();
        assert_eq!(t, t2);
        let vk = key().verifying_key();
        assert_eq!(t2.verify(&vk, 1_500, NodeId(5), DeviceId(1)), Ok(claim()));
        assert_eq!(claim().sign(&key()).holder(), None);
        // Every byte is signed, the holder key too.
        every_bit_is_signed(&t, &vk);
        // A format-1 claim signed at the format-2 length (or the reverse) is refused even with
        // a good signature.
        let mut long = [0u8; BOUND_CLAIM_LEN];
        long[..CLAIM_LEN].copy_from_slice(&claim().encode());
        let forged = Token::signed(&long, &key());
        assert_eq!(
            forged.verify(&vk, 1_500, NodeId(5), DeviceId(1)),
            Err(TokenError::BadClaim(
                "claim format does not match its length"
            ))
        );
        let short = Token::signed(&claim().encode_as(BOUND_CLAIM_FORMAT), &key());
        assert_eq!(
            short.verify(&vk, 1_500, NodeId(5), DeviceId(1)),
            Err(TokenError::BadClaim(
                "claim format does not match its length"
            ))
        );
        assert_eq!(
            Token::from_bytes(&[0; TOKEN_LEN + 1]),
            Err(TokenError::BadLength(TOKEN_LEN + 1))
        );
    }

    #[test]
    fn any_node_claim() {
        let mut c = claim();
        c.node_id = NodeId(0);
        let t = c.sign(&key());
        assert!(t
            .verify(&key().verifying_key(), 1_500, NodeId(77), DeviceId(1))
            .is_ok());
    }
}
