//! Proof of holding: what a client sends after a format-2 (bound) token to show that it holds
//! the private half of the key the token names, and the node's memory of proofs it has seen.
//!
//! A [`Proof`] is 88 bytes: the client's clock (ms since the Unix epoch), a random 16-byte nonce,
//! and an ed25519 signature by the holder's key over
//! `"dasmesh-proof-v1" || token signature || node_id || device_id || clock || nonce`.
//! A node takes it when the signature verifies with the token's holder key, the clock is within
//! [`PROOF_CLOCK_WINDOW_MS`] of its own, and the nonce has not been seen ([`ProofWindow`]).

use std::collections::{HashSet, VecDeque};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::ids::{DeviceId, NodeId};
use crate::token::{Token, TokenError};

/// Size of a proof on the wire.
pub const PROOF_LEN: usize = 88;
/// How far a proof's clock may be from the node's, either way.
pub const PROOF_CLOCK_WINDOW_MS: u64 = 30_000;
const PROOF_CONTEXT: &[u8; 16] = b"dasmesh-proof-v1";

/// A holder's proof for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proof {
    /// The client's clock, ms since the Unix epoch.
    pub clock_ms: u64,
    /// Random, never used twice.
    pub nonce: [u8; 16],
    /// The holder key's signature.
    pub signature: [u8; 64],
}

fn message(
    token: &Token,
    node: NodeId,
    device: DeviceId,
    clock_ms: u64,
    nonce: &[u8; 16],
) -> Vec<u8> {
    [
        PROOF_CONTEXT.as_slice(),
        token.signature(),
        &node.0.to_le_bytes(),
        &device.0.to_le_bytes(),
        &clock_ms.to_le_bytes(),
        nonce,
    ]
    .concat()
}

impl Proof {
    /// Makes the proof for a connection to `device` with `token` (whose claim names `node`).
    pub fn make(
        token: &Token,
        holder: &SigningKey,
        node: NodeId,
        device: DeviceId,
        clock_ms: u64,
        nonce: [u8; 16],
    ) -> Proof {
        let signature = holder
            .sign(&message(token, node, device, clock_ms, &nonce))
            .to_bytes();
        Proof {
            clock_ms,
            nonce,
            signature,
        }
    }

    /// The 88 wire bytes.
    pub fn encode(&self) -> [u8; PROOF_LEN] {
        let mut b = [0u8; PROOF_LEN];
        b[..8].copy_from_slice(&self.clock_ms.to_le_bytes());
        b[8..24].copy_from_slice(&self.nonce);
        b[24..].copy_from_slice(&self.signature);
        b
    }

    /// Reads the 88 wire bytes (`None` when short).
    pub fn decode(bytes: &[u8]) -> Option<Proof> {
        let b: &[u8; PROOF_LEN] = bytes.get(..PROOF_LEN)?.try_into().ok()?;
        Some(Proof {
            clock_ms: u64::from_le_bytes(b[..8].try_into().ok()?),
            nonce: b[8..24].try_into().ok()?,
            signature: b[24..].try_into().ok()?,
        })
    }

    /// Checks the signature with `token`'s holder key and the clock against `now_ms`. The nonce
    /// is the caller's to check ([`ProofWindow::admit`]), after this.
    pub fn verify(
        &self,
        token: &Token,
        node: NodeId,
        device: DeviceId,
        now_ms: u64,
    ) -> Result<(), TokenError> {
        let holder = token
            .holder()
            .ok_or(TokenError::NotHolder("a proof for a token bound to no one"))?;
        let key = VerifyingKey::from_bytes(&holder)
            .map_err(|_| TokenError::NotHolder("the token's holder key is not a valid key"))?;
        if self.clock_ms.abs_diff(now_ms) > PROOF_CLOCK_WINDOW_MS {
            return Err(TokenError::NotHolder(
                "the proof's clock is more than 30 s from the node's",
            ));
        }
        key.verify_strict(
            &message(token, node, device, self.clock_ms, &self.nonce),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| TokenError::NotHolder("the proof does not verify with the holder key"))
    }
}

/// The nonces of the proofs a node took in the last [`PROOF_CLOCK_WINDOW_MS`] (by their clock),
/// so none is taken twice. Bounded: when full, the oldest go first, and from then on a proof
/// whose clock is not newer than the newest clock dropped is refused (the window shrinks rather
/// than forgetting a nonce it could still be shown).
pub struct ProofWindow {
    seen: HashSet<[u8; 16]>,
    order: VecDeque<(u64, [u8; 16])>,
    cap: usize,
    floor_ms: u64,
}

impl ProofWindow {
    /// A window that remembers at most `cap` nonces.
    pub fn new(cap: usize) -> Self {
        Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            floor_ms: 0,
        }
    }

    /// How many nonces it holds.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Takes a (verified) proof's nonce at `now_ms`, or refuses it as a replay.
    pub fn admit(&mut self, p: &Proof, now_ms: u64) -> Result<(), TokenError> {
        let horizon = now_ms.saturating_sub(PROOF_CLOCK_WINDOW_MS);
        // Proofs older than the horizon are refused by the clock check; their nonces may go.
        while let Some(&(clock, nonce)) = self.order.front() {
            if clock >= horizon {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&nonce);
        }
        if p.clock_ms <= self.floor_ms {
            return Err(TokenError::NotHolder(
                "the proof is older than the nonces this node still remembers",
            ));
        }
        if !self.seen.insert(p.nonce) {
            return Err(TokenError::NotHolder(
                "the proof was used before (a replay)",
            ));
        }
        self.order.push_back((p.clock_ms, p.nonce));
        while self.order.len() > self.cap {
            if let Some((clock, nonce)) = self.order.pop_front() {
                self.seen.remove(&nonce);
                self.floor_ms = self.floor_ms.max(clock);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Epoch, VolumeId};
    use crate::token::{Claim, Rights, CLAIM_LEN};

    fn token(holder: &SigningKey, nonce: u64) -> Token {
        Claim {
            terms: Default::default(),
            node_id: NodeId(5),
            volume_id: VolumeId(9),
            device_id: DeviceId(1),
            range_offset: 0,
            range_length: 1 << 20,
            rights: Rights::ReadWrite,
            epoch: Epoch(3),
            issued_at_ms: 1_000,
            expires_at_ms: 2_000_000,
            nonce,
        }
        .sign_bound(&SigningKey::from_bytes(&[7; 32]), &holder.verifying_key())
    }

    #[test]
    fn proof_round_trip_and_refusals() {
        let holder = SigningKey::from_bytes(&[9; 32]);
        let t = token(&holder, 42);
        let p = Proof::make(&t, &holder, NodeId(5), DeviceId(1), 100_000, [1; 16]);
        assert_eq!(Proof::decode(&p.encode()), Some(p));
        assert_eq!(Proof::decode(&p.encode()[..87]), None);
        assert_eq!(p.verify(&t, NodeId(5), DeviceId(1), 100_000), Ok(()));
        assert_eq!(p.verify(&t, NodeId(5), DeviceId(1), 130_000), Ok(()));
        let not = |r: Result<(), TokenError>| matches!(r, Err(TokenError::NotHolder(_)));
        // Someone else's key, another node or device, a clock too far either way.
        let thief = SigningKey::from_bytes(&[10; 32]);
        let stolen = Proof::make(&t, &thief, NodeId(5), DeviceId(1), 100_000, [1; 16]);
        assert!(not(stolen.verify(&t, NodeId(5), DeviceId(1), 100_000)));
        assert!(not(p.verify(&t, NodeId(6), DeviceId(1), 100_000)));
        assert!(not(p.verify(&t, NodeId(5), DeviceId(2), 100_000)));
        assert!(not(p.verify(&t, NodeId(5), DeviceId(1), 130_001)));
        assert!(not(p.verify(&t, NodeId(5), DeviceId(1), 69_999)));
        // A proof for another token of the same holder.
        let other = token(&holder, 43);
        assert!(not(p.verify(&other, NodeId(5), DeviceId(1), 100_000)));
        // Every bit of the proof counts.
        for i in 0..PROOF_LEN {
            let mut b = p.encode();
            b[i] ^= 1;
            let q = Proof::decode(&b).unwrap();
            assert!(
                not(q.verify(&t, NodeId(5), DeviceId(1), 100_000)),
                "bit {i}"
            );
        }
        // A bearer token has no holder to prove.
        let bearer = Token::from_bytes(&t.as_bytes()[..CLAIM_LEN + 64]).unwrap();
        assert!(not(p.verify(&bearer, NodeId(5), DeviceId(1), 100_000)));
    }

    #[test]
    fn window_refuses_replays_and_stays_bounded() {
        let holder = SigningKey::from_bytes(&[9; 32]);
        let t = token(&holder, 42);
        let mut w = ProofWindow::new(3);
        let p = |clock, n: u8| Proof::make(&t, &holder, NodeId(5), DeviceId(1), clock, [n; 16]);
        assert_eq!(w.admit(&p(100_000, 1), 100_000), Ok(()));
        assert!(w.admit(&p(100_000, 1), 100_001).is_err(), "replay");
        assert_eq!(w.admit(&p(100_010, 2), 100_010), Ok(()));
        assert_eq!(w.admit(&p(100_020, 3), 100_020), Ok(()));
        // Full: the oldest goes and the floor rises to its clock.
        assert_eq!(w.admit(&p(100_030, 4), 100_030), Ok(()));
        assert_eq!(w.len(), 3);
        assert!(w.admit(&p(100_000, 1), 100_040).is_err(), "below the floor");
        assert!(w.admit(&p(99_000, 9), 100_040).is_err(), "below the floor");
        // Time moves on: nonces older than the window are dropped.
        assert_eq!(w.admit(&p(200_000, 5), 200_000), Ok(()));
        assert_eq!(w.len(), 1);
    }
}
