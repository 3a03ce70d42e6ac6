//! The pure decisions behind a session: whether a token is signed with a trusted key, which
//! byte range it opens on a device, and which ops the device's capabilities let through. The reactor applies them (`reactor.rs`); they are
//! kept free of sockets and rings so they can be tested here, case by case.

use std::sync::Mutex;

use dasmesh_wire::{
    Capabilities, Claim, DeviceId, NodeId, Op, Proof, ProofWindow, Status, Token, TokenError,
    VerifyingKey,
};

use crate::fence::Range;

/// What a device is, as far as lending a range of it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lendable {
    /// The device's size in bytes.
    pub size: u64,
    /// Its logical block size.
    pub block_size: u32,
    /// The owner's reserved area (`--reserve`): first byte and length (length 0: none).
    pub reserved: (u64, u64),
}

/// Checks `token` with each trusted key in turn (the controller's current key first; after a
/// rotation, the earlier ones whose tokens may still be out) and returns its claim from the
/// first key that signed it. Only a wrong signature moves on to the next key: any other refusal
/// (expired, another node or device) is the token's and is returned as it is. No key at all
/// is a wrong signature.
pub fn verify_token(
    token: &Token,
    keys: &[VerifyingKey],
    now_ms: u64,
    node: NodeId,
    device: DeviceId,
) -> Result<Claim, TokenError> {
    for key in keys {
        match token.verify(key, now_ms, node, device) {
            Err(TokenError::BadSignature) => continue,
            r => return r,
        }
    }
    Err(TokenError::BadSignature)
}

/// Whether the connection may use a (verified) token: a bound token needs a proof made with its
/// holder's key, for this token, node and device, with a clock near `now_ms` and a nonce not
/// seen before (`window`); a bearer token is taken unless `require_holder`, and never with a
/// proof (which would prove nothing).
pub fn check_holder(
    token: &Token,
    claim: &Claim,
    proof: Option<&Proof>,
    device: DeviceId,
    now_ms: u64,
    window: &Mutex<ProofWindow>,
    require_holder: bool,
) -> Result<(), TokenError> {
    match (token.holder(), proof) {
        (None, None) if require_holder => Err(TokenError::NotHolder(
            "this node takes only tokens bound to their holder (--require-holder)",
        )),
        (None, None) => Ok(()),
        (None, Some(_)) => Err(TokenError::NotHolder("a proof for a token bound to no one")),
        (Some(_), None) => Err(TokenError::NotHolder(
            "the token is bound to a holder and the hello brought no proof",
        )),
        (Some(_), Some(p)) => {
            p.verify(token, claim.node_id, device, now_ms)?;
            window
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .admit(p, now_ms)
        }
    }
}

/// The range a token's `[offset, offset + length)` opens on the device: clipped to the device
/// (the addition saturating), then refused if it is empty (`OutOfRange`), does not start and
/// end on block boundaries (`Misaligned`), or touches the owner's reserved area (`OutOfRange`).
pub fn lent_range(offset: u64, length: u64, dev: &Lendable) -> Result<Range, Status> {
    let start = offset;
    let end = offset.saturating_add(length).min(dev.size);
    if start >= end {
        return Err(Status::OutOfRange);
    }
    let bs = u64::from(dev.block_size.max(1));
    // A device's size is a multiple of its block size, so a range clipped to it ends aligned.
    if !start.is_multiple_of(bs) || !end.is_multiple_of(bs) {
        return Err(Status::Misaligned);
    }
    let (r_start, r_len) = dev.reserved;
    if r_len > 0 && start < r_start.saturating_add(r_len) && r_start < end {
        return Err(Status::OutOfRange);
    }
    Ok(Range { start, end })
}

/// Whether the device supports `op`: DISCARD, WRITE_ZEROES and SEARCH need their capability bit
/// (`UnknownOp` without it, as for an op this version does not know). READ and WRITE always pass;
/// so does FLUSH, and the FUA flag is accepted, with their bits clear too: they then promise no
/// more than the device keeps (docs/protocol.md, "Capabilities").
pub fn supported(op: Op, caps: Capabilities) -> Result<(), Status> {
    let bit = match op {
        Op::Read | Op::Write | Op::Flush => return Ok(()),
        Op::Discard => Capabilities::DISCARD,
        Op::WriteZeroes => Capabilities::WRITE_ZEROES,
        Op::Search => Capabilities::SEARCH,
    };
    if caps.has(bit) {
        Ok(())
    } else {
        Err(Status::UnknownOp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dasmesh_wire::{Epoch, Rights, SigningKey, VolumeId};

    fn signed(key: u8, node: u64, expires_at_ms: u64) -> Token {
        Claim {
            terms: Default::default(),
            node_id: NodeId(node),
            volume_id: VolumeId(1),
            device_id: DeviceId(0),
            range_offset: 0,
            range_length: 4096,
            rights: Rights::ReadOnly,
            epoch: Epoch(1),
            issued_at_ms: 0,
            expires_at_ms,
            nonce: 9,
        }
        .sign(&SigningKey::from_bytes(&[key; 32]))
    }

    fn public(key: u8) -> VerifyingKey {
        SigningKey::from_bytes(&[key; 32]).verifying_key()
    }

    #[test]
    fn a_token_signed_with_any_trusted_key_passes() {
        let keys = [public(2), public(1)];
        let check = |t: &Token, keys: &[VerifyingKey]| {
            verify_token(t, keys, 10, NodeId(5), DeviceId(0)).map(|c| c.nonce)
        };
        assert_eq!(check(&signed(2, 5, 100), &keys), Ok(9), "the current key");
        assert_eq!(check(&signed(1, 5, 100), &keys), Ok(9), "the previous key");
        assert_eq!(
            check(&signed(3, 5, 100), &keys),
            Err(TokenError::BadSignature),
            "a key not trusted"
        );
        assert_eq!(
            check(&signed(1, 5, 100), &[]),
            Err(TokenError::BadSignature)
        );
        // A refusal other than the signature is the token's, whichever key signed it.
        assert!(matches!(
            check(&signed(1, 5, 10), &keys),
            Err(TokenError::Expired { .. })
        ));
        assert!(matches!(
            check(&signed(1, 6, 100), &keys),
            Err(TokenError::WrongNode { .. })
        ));
    }

    #[test]
    fn a_bound_token_opens_only_with_a_fresh_proof_by_its_holder() {
        let holder = SigningKey::from_bytes(&[20; 32]);
        let thief = SigningKey::from_bytes(&[21; 32]);
        let claim = signed(1, 5, 100_000).claim_unverified().unwrap();
        let bound = claim.sign_bound(&SigningKey::from_bytes(&[1; 32]), &holder.verifying_key());
        let bearer = claim.sign(&SigningKey::from_bytes(&[1; 32]));
        let window = Mutex::new(ProofWindow::new(16));
        let now = 50_000;
        let proof =
            |k: &SigningKey, n: u8| Proof::make(&bound, k, NodeId(5), DeviceId(0), now, [n; 16]);
        let check = |t: &Token, p: Option<&Proof>, require: bool| {
            check_holder(t, &claim, p, DeviceId(0), now, &window, require).map_err(|e| e.status())
        };
        assert_eq!(check(&bound, Some(&proof(&holder, 1)), false), Ok(()));
        assert_eq!(
            check(&bound, Some(&proof(&holder, 1)), false),
            Err(Status::NotHolder),
            "a replayed proof"
        );
        assert_eq!(
            check(&bound, Some(&proof(&thief, 2)), false),
            Err(Status::NotHolder),
            "a stolen token with another key"
        );
        assert_eq!(
            check(&bound, None, false),
            Err(Status::NotHolder),
            "no proof"
        );
        assert_eq!(check(&bearer, None, false), Ok(()), "a bearer token");
        assert_eq!(
            check(&bearer, None, true),
            Err(Status::NotHolder),
            "a bearer token where only bound ones are taken"
        );
        assert_eq!(
            check(&bearer, Some(&proof(&holder, 3)), false),
            Err(Status::NotHolder),
            "a proof with a bearer token"
        );
        // The thief's refusal did not use up the holder's next nonce.
        assert_eq!(check(&bound, Some(&proof(&holder, 2)), true), Ok(()));
    }

    const MIB: u64 = 1 << 20;

    fn dev(reserved: (u64, u64)) -> Lendable {
        Lendable {
            size: 4 * MIB,
            block_size: 4096,
            reserved,
        }
    }

    fn r(start: u64, end: u64) -> Result<Range, Status> {
        Ok(Range { start, end })
    }

    #[test]
    fn a_token_range_is_clipped_then_checked() {
        let d = dev((0, 0));
        assert_eq!(lent_range(0, 4 * MIB, &d), r(0, 4 * MIB));
        assert_eq!(lent_range(MIB, u64::MAX, &d), r(MIB, 4 * MIB), "clipped");
        assert_eq!(lent_range(4 * MIB, 4096, &d), Err(Status::OutOfRange));
        assert_eq!(lent_range(0, 0, &d), Err(Status::OutOfRange));
        assert_eq!(lent_range(u64::MAX, 1, &d), Err(Status::OutOfRange));
        // Misaligned start or end; an end past the device is clipped to an aligned one.
        assert_eq!(lent_range(512, 8192, &d), Err(Status::Misaligned));
        assert_eq!(lent_range(0, 6144, &d), Err(Status::Misaligned));
        assert_eq!(lent_range(4096, 8 * MIB + 1, &d), r(4096, 4 * MIB));
        // An empty clipped range is OutOfRange even when misaligned.
        assert_eq!(lent_range(5 * MIB + 1, 10, &d), Err(Status::OutOfRange));
    }

    #[test]
    fn the_reserved_area_is_never_lent() {
        let head = dev((0, MIB));
        assert_eq!(lent_range(0, 2 * MIB, &head), Err(Status::OutOfRange));
        assert_eq!(lent_range(MIB - 4096, 8192, &head), Err(Status::OutOfRange));
        assert_eq!(lent_range(0, u64::MAX, &head), Err(Status::OutOfRange));
        assert_eq!(
            lent_range(MIB, MIB, &head),
            r(MIB, 2 * MIB),
            "adjacent is fine"
        );
        let tail = dev((3 * MIB, MIB));
        assert_eq!(lent_range(2 * MIB, 2 * MIB, &tail), Err(Status::OutOfRange));
        assert_eq!(lent_range(0, 3 * MIB, &tail), r(0, 3 * MIB));
        // The whole device reserved: nothing is lent.
        let all = dev((0, 4 * MIB));
        assert_eq!(lent_range(MIB, 4096, &all), Err(Status::OutOfRange));
    }

    proptest::proptest! {
        /// What is lent is the token's range clipped to the device, on block boundaries, and no
        /// block of it is reserved; a refusal names a condition that really fails.
        #[test]
        fn lent_ranges_are_clipped_aligned_and_clear_of_the_reserve(
            blocks in 1u64..64,
            block_shift in 9u32..13,
            r_start in 0u64..80,
            r_len in 0u64..80,
            offset_blocks in 0u64..80,
            offset_skew in proptest::prop_oneof![proptest::strategy::Just(0u64), 1u64..512],
            length_blocks in proptest::prop_oneof![0u64..80, proptest::strategy::Just(u64::MAX)],
            length_skew in proptest::prop_oneof![proptest::strategy::Just(0u64), 1u64..512],
        ) {
            let bs = 1u64 << block_shift;
            // Block multiples, some skewed off them (512 is the smallest block size tried).
            let offset = offset_blocks * bs + offset_skew;
            let length = length_blocks.saturating_mul(bs).saturating_add(length_skew);
            let size = blocks * bs;
            let rs = (r_start * bs).min(size);
            let reserved = (rs, (r_len * bs).min(size - rs));
            let d = Lendable { size, block_size: bs as u32, reserved };
            let is_reserved = |byte: u64| reserved.0 <= byte && byte < reserved.0 + reserved.1;
            let clipped_end = offset.saturating_add(length).min(size);
            match lent_range(offset, length, &d) {
                Ok(r) => {
                    proptest::prop_assert_eq!((r.start, r.end), (offset, clipped_end));
                    proptest::prop_assert!(r.start < r.end && r.end <= size);
                    proptest::prop_assert!(r.start.is_multiple_of(bs) && r.end.is_multiple_of(bs));
                    proptest::prop_assert!((r.start..r.end).step_by(bs as usize).all(|b| !is_reserved(b)));
                }
                Err(Status::Misaligned) => {
                    proptest::prop_assert!(offset < clipped_end);
                    proptest::prop_assert!(!offset.is_multiple_of(bs) || !clipped_end.is_multiple_of(bs));
                }
                Err(Status::OutOfRange) => {
                    let empty = offset >= clipped_end;
                    let touches = !empty && (offset..clipped_end).any(is_reserved);
                    proptest::prop_assert!(empty || touches);
                }
                Err(s) => proptest::prop_assert!(false, "unexpected {s:?}"),
            }
        }
    }

    #[test]
    fn ops_without_their_capability_are_unknown() {
        let none = Capabilities(0);
        for op in [Op::Read, Op::Write, Op::Flush] {
            assert_eq!(supported(op, none), Ok(()), "{op:?}");
        }
        for (op, bit) in [
            (Op::Discard, Capabilities::DISCARD),
            (Op::WriteZeroes, Capabilities::WRITE_ZEROES),
            (Op::Search, Capabilities::SEARCH),
        ] {
            assert_eq!(supported(op, none), Err(Status::UnknownOp), "{op:?}");
            assert_eq!(supported(op, Capabilities(bit)), Ok(()), "{op:?}");
            let others = Capabilities(Capabilities::ALL & !bit);
            assert_eq!(supported(op, others), Err(Status::UnknownOp), "{op:?}");
        }
    }
}
