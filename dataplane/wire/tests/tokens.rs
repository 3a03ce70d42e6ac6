//! Capability tokens and key files: round trips of the binary and text forms, and every refusal
//! (tampering, truncation, wrong key, expiry, node, device, malformed claims) with its error.
//! ed25519 verification is slow in a debug build (~10 ms), so the properties that verify run
//! fewer cases than the default.

use dasmesh_wire::*;
use ed25519_dalek::Signer as _;
use proptest::prelude::*;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[5u8; 32])
}

fn claim() -> Claim {
    Claim {
        node_id: NodeId(2),
        volume_id: VolumeId(1),
        device_id: DeviceId(0),
        range_offset: 0,
        range_length: 4096,
        rights: Rights::ReadOnly,
        epoch: Epoch(1),
        issued_at_ms: 0,
        expires_at_ms: 10_000,
        nonce: 1,
        terms: Terms::default(),
    }
}

fn any_claim() -> impl Strategy<Value = Claim> {
    (
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
        ),
        (
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |((node, vol, dev, off, len), (rw, epoch, iat, exp, nonce))| Claim {
                node_id: NodeId(node),
                volume_id: VolumeId(vol),
                device_id: DeviceId(dev),
                range_offset: off,
                range_length: len,
                rights: if rw {
                    Rights::ReadWrite
                } else {
                    Rights::ReadOnly
                },
                epoch: Epoch(epoch),
                issued_at_ms: iat,
                expires_at_ms: exp,
                nonce,
                terms: Terms::default(),
            },
        )
}

/// Signs arbitrary claim bytes the way the control plane does: context string, then the claim.
fn sign_raw(claim: &[u8; CLAIM_LEN], key: &SigningKey) -> Token {
    let mut msg = b"dasmesh-token-v1".to_vec();
    msg.extend_from_slice(claim);
    let sig = key.sign(&msg).to_bytes();
    Token::from_bytes(&[claim.as_slice(), &sig].concat()).unwrap()
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn token_round_trips(c in any_claim(), seed in any::<[u8; 32]>()) {
        prop_assert_eq!(Claim::decode(&c.encode()), Ok(c));
        let key = SigningKey::from_bytes(&seed);
        let t = c.sign(&key);
        prop_assert_eq!(&t.as_bytes()[..CLAIM_LEN], &c.encode()[..]);
        prop_assert_eq!(Token::from_bytes(t.as_bytes()), Ok(t));
        let text = t.to_text();
        // 152 bytes in unpadded base64: 203 characters after the prefix.
        prop_assert_eq!(text.len(), TOKEN_TEXT_PREFIX.len() + 203);
        prop_assert!(text.starts_with("dmt1."));
        prop_assert!(text[5..].bytes().all(|b| B64URL.contains(&b)));
        prop_assert_eq!(Token::from_text(&text), Ok(t));
        prop_assert_eq!(t.claim_unverified(), Ok(c));
        let vk = key.verifying_key();
        if c.expires_at_ms > 0 {
            // The last valid millisecond.
            prop_assert_eq!(t.verify(&vk, c.expires_at_ms - 1, c.node_id, c.device_id), Ok(c));
        }
        // now == expiry is already expired.
        prop_assert_eq!(
            t.verify(&vk, c.expires_at_ms, c.node_id, c.device_id),
            Err(TokenError::Expired { expires_at_ms: c.expires_at_ms, now_ms: c.expires_at_ms })
        );
    }

    #[test]
    fn any_bit_flip_is_refused(c in any_claim(), bit in 0..TOKEN_LEN * 8) {
        let c = Claim { expires_at_ms: u64::MAX, ..c };
        let t = c.sign(&key());
        let mut b = t.as_bytes().to_vec();
        b[bit / 8] ^= 1 << (bit % 8);
        let flipped = Token::from_bytes(&b).unwrap();
        // The signature is checked first, so tampering anywhere is a bad signature.
        prop_assert_eq!(
            flipped.verify(&key().verifying_key(), 0, c.node_id, c.device_id),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn another_key_is_refused(seed in any::<[u8; 32]>()) {
        prop_assume!(seed != [5u8; 32]);
        let t = claim().sign(&key());
        let other = SigningKey::from_bytes(&seed).verifying_key();
        prop_assert_eq!(t.verify(&other, 5, NodeId(2), DeviceId(0)), Err(TokenError::BadSignature));
    }

    #[test]
    fn node_and_device_must_match(token_node in 0u64..4, node in 0u64..4, token_dev in 0u32..3, dev in 0u32..3) {
        let c = Claim { node_id: NodeId(token_node), device_id: DeviceId(token_dev), ..claim() };
        let t = c.sign(&key());
        let got = t.verify(&key().verifying_key(), 5, NodeId(node), DeviceId(dev));
        // Node 0 in a token means any node; the node is checked before the device.
        let want = if token_node != 0 && token_node != node {
            Err(TokenError::WrongNode { token: NodeId(token_node), node: NodeId(node) })
        } else if token_dev != dev {
            Err(TokenError::WrongDevice { token: DeviceId(token_dev), requested: DeviceId(dev) })
        } else {
            Ok(c)
        };
        prop_assert_eq!(got, want);
    }
}

proptest! {
    #[test]
    fn text_decoding_is_canonical(body in proptest::collection::vec(proptest::sample::select(&B64URL[..]), 200..206)) {
        // Whatever text parses is exactly the text form of what it parses to, so no two texts
        // name one token (unused trailing bits, padding and other alphabets are refused).
        let text = format!("dmt1.{}", String::from_utf8(body).unwrap());
        match Token::from_text(&text) {
            Ok(t) => prop_assert_eq!(t.to_text(), text),
            Err(e) => prop_assert_eq!(e.status(), Status::BadToken),
        }
    }

    #[test]
    fn key_text_round_trips(bytes in any::<[u8; 32]>()) {
        let text = key_to_text(&bytes);
        prop_assert_eq!(text.len(), 64);
        prop_assert!(text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        prop_assert_eq!(key_from_text(&text), Ok(bytes));
        prop_assert_eq!(key_from_text(&format!(" {}\n", text.to_uppercase())), Ok(bytes));
        prop_assert_eq!(signing_key_from_text(&text).map(|k| k.to_bytes()), Ok(bytes));
        let vk = verifying_key_from_text(&text);
        prop_assert_eq!(vk, VerifyingKey::from_bytes(&bytes).map_err(|_| TokenError::BadKey));
    }
}

#[test]
fn every_truncation_is_refused() {
    let t = claim().sign(&key());
    for n in 0..TOKEN_LEN {
        assert_eq!(
            Token::from_bytes(&t.as_bytes()[..n]),
            Err(TokenError::BadLength(n))
        );
    }
    assert_eq!(
        Token::from_bytes(&[t.as_bytes(), &[0]].concat()),
        Err(TokenError::BadLength(TOKEN_LEN + 1))
    );
    let text = t.to_text();
    for n in 0..text.len() {
        let e = Token::from_text(&text[..n]).unwrap_err();
        assert!(
            matches!(e, TokenError::BadEncoding | TokenError::BadLength(_)),
            "{n}: {e:?}"
        );
        assert_eq!(e.status(), Status::BadToken);
    }
    for n in 0..CLAIM_LEN {
        assert_eq!(
            Claim::decode(&claim().encode()[..n]),
            Err(TokenError::BadLength(n))
        );
    }
}

#[test]
fn text_form_variants() {
    let t = claim().sign(&key());
    let text = t.to_text();
    assert_eq!(Token::from_text(&format!("  {text}\n")), Ok(t));
    let b64 = &text[5..];
    for bad in [
        format!("dmt2.{b64}"),
        format!("DMT1.{b64}"),
        format!("dmt1{b64}"),
        b64.to_string(),
        format!("dmt1.{b64}="),
        format!("dmt1.{b64}A"),
        format!("dmt1.{} {}", &b64[..100], &b64[100..]),
        // The standard alphabet's `+` and `/` are not URL-safe base64.
        format!("dmt1.+{}", &b64[1..]),
        format!("dmt1./{}", &b64[1..]),
        "dmt1.@@".to_string(),
        String::new(),
    ] {
        let e = Token::from_text(&bad).unwrap_err();
        assert_eq!(e.status(), Status::BadToken, "{bad:?}");
    }
    // The last character carries 4 data bits and 2 unused ones, which must be zero.
    let last = b64.as_bytes()[b64.len() - 1];
    let v = B64URL.iter().position(|c| *c == last).unwrap();
    assert_eq!(v & 3, 0);
    let loose = format!("dmt1.{}{}", &b64[..b64.len() - 1], B64URL[v | 1] as char);
    assert_eq!(Token::from_text(&loose), Err(TokenError::BadEncoding));
}

#[test]
fn expiry_boundary() {
    let vk = key().verifying_key();
    let t = claim().sign(&key());
    assert_eq!(t.verify(&vk, 0, NodeId(2), DeviceId(0)), Ok(claim()));
    assert_eq!(t.verify(&vk, 9_999, NodeId(2), DeviceId(0)), Ok(claim()));
    for now in [10_000, 10_001, u64::MAX] {
        assert_eq!(
            t.verify(&vk, now, NodeId(2), DeviceId(0)),
            Err(TokenError::Expired {
                expires_at_ms: 10_000,
                now_ms: now
            })
        );
    }
    // Expiry 0 is never valid.
    let dead = Claim {
        expires_at_ms: 0,
        ..claim()
    }
    .sign(&key());
    assert!(matches!(
        dead.verify(&vk, 0, NodeId(2), DeviceId(0)),
        Err(TokenError::Expired { .. })
    ));
    let e = t.verify(&vk, 12_345, NodeId(2), DeviceId(0)).unwrap_err();
    assert_eq!(e.status(), Status::Expired);
    let msg = e.to_string();
    assert!(msg.contains("10000") && msg.contains("12345"), "{msg}");
}

#[test]
fn refusals_come_in_the_documented_order() {
    let vk = key().verifying_key();
    let other = SigningKey::from_bytes(&[6u8; 32]);
    // Wrong key, expired, wrong node and wrong device at once: the signature is first.
    let t = claim().sign(&other);
    assert_eq!(
        t.verify(&vk, u64::MAX, NodeId(9), DeviceId(9)),
        Err(TokenError::BadSignature)
    );
    // A malformed claim under a good signature comes next, before expiry.
    let mut c = claim().encode();
    c[5] = 9;
    assert!(matches!(
        sign_raw(&c, &key()).verify(&vk, u64::MAX, NodeId(9), DeviceId(9)),
        Err(TokenError::BadClaim(_))
    ));
    let t = claim().sign(&key());
    assert!(matches!(
        t.verify(&vk, u64::MAX, NodeId(9), DeviceId(9)),
        Err(TokenError::Expired { .. })
    ));
    assert_eq!(
        t.verify(&vk, 5, NodeId(9), DeviceId(9)),
        Err(TokenError::WrongNode {
            token: NodeId(2),
            node: NodeId(9)
        })
    );
    assert_eq!(
        t.verify(&vk, 5, NodeId(2), DeviceId(9)),
        Err(TokenError::WrongDevice {
            token: DeviceId(0),
            requested: DeviceId(9)
        })
    );
    // A node whose own id is 0 is not a wildcard: only a token's node 0 is.
    assert!(matches!(
        t.verify(&vk, 5, NodeId(0), DeviceId(0)),
        Err(TokenError::WrongNode { .. })
    ));
    let any = Claim {
        node_id: NodeId(0),
        ..claim()
    };
    for node in [0, 1, 2, u64::MAX] {
        assert_eq!(
            any.sign(&key()).verify(&vk, 5, NodeId(node), DeviceId(0)),
            Ok(any)
        );
    }
}

#[test]
fn every_byte_of_a_token_is_covered_by_the_signature() {
    let vk = key().verifying_key();
    let t = claim().sign(&key());
    for i in 0..TOKEN_LEN {
        let mut b = t.as_bytes().to_vec();
        b[i] ^= 1 << ((i * 3) % 8);
        let r = Token::from_bytes(&b)
            .unwrap()
            .verify(&vk, 5, NodeId(2), DeviceId(0));
        assert_eq!(r, Err(TokenError::BadSignature), "byte {i}");
    }
}

#[test]
fn malleated_signatures_are_refused() {
    // s + L (the group order) is the same signature to a lax verifier; verify_strict refuses it.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let vk = key().verifying_key();
    let t = claim().sign(&key());
    let mut b = t.as_bytes().to_vec();
    let s = &mut b[CLAIM_LEN + 32..];
    let mut carry = 0u16;
    for (x, l) in s.iter_mut().zip(L) {
        let sum = u16::from(*x) + u16::from(l) + carry;
        *x = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    let m = Token::from_bytes(&b).unwrap();
    assert_eq!(
        m.verify(&vk, 5, NodeId(2), DeviceId(0)),
        Err(TokenError::BadSignature)
    );
    // An all-zero signature, and a token of zeroes.
    let mut z = t.as_bytes().to_vec();
    z[CLAIM_LEN..].fill(0);
    for bytes in [z, vec![0; TOKEN_LEN]] {
        let r = Token::from_bytes(&bytes)
            .unwrap()
            .verify(&vk, 5, NodeId(2), DeviceId(0));
        assert_eq!(r, Err(TokenError::BadSignature));
    }
}

#[test]
fn a_small_order_trusted_key_admits_no_forgery() {
    // With the identity point as public key, R = identity and s = 0 satisfy the plain ed25519
    // equation for every message; strict verification refuses small-order keys and points.
    let identity = format!("01{}", "00".repeat(31));
    let weak = verifying_key_from_text(&identity).unwrap();
    let mut sig = [0u8; 64];
    sig[0] = 1;
    let forged = Token::from_bytes(&[claim().encode().as_slice(), &sig].concat()).unwrap();
    assert_eq!(
        forged.verify(&weak, 5, NodeId(2), DeviceId(0)),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn signed_but_malformed_claims_are_refused() {
    let vk = key().verifying_key();
    let mut cases: Vec<(usize, u8)> = vec![(4, 0), (4, 3), (5, 0), (5, 3), (5, 0xff)];
    cases.extend((0..4).map(|at| (at, b'x')));
    for (at, v) in cases {
        let mut c = claim().encode();
        c[at] = v;
        let e = sign_raw(&c, &key())
            .verify(&vk, 5, NodeId(2), DeviceId(0))
            .unwrap_err();
        assert!(matches!(e, TokenError::BadClaim(_)), "byte {at}: {e:?}");
        assert_eq!(e.status(), Status::BadToken);
        assert!(matches!(Claim::decode(&c), Err(TokenError::BadClaim(_))));
    }
    // A promise above its cap (MiB/s at 28 and 30, IOPS at 80 and 84) is refused.
    for (promise, cap) in [(28, 30), (80, 84)] {
        let mut c = claim().encode();
        (c[promise], c[cap]) = (5, 1);
        let e = sign_raw(&c, &key())
            .verify(&vk, 5, NodeId(2), DeviceId(0))
            .unwrap_err();
        assert!(matches!(e, TokenError::BadClaim(_)), "{e:?}");
    }
    // Any one term alone is fine, on a read-only claim too.
    for at in (6..8).chain(28..32).chain(80..88) {
        let mut c = claim().encode();
        c[at] = 1;
        assert!(sign_raw(&c, &key())
            .verify(&vk, 5, NodeId(2), DeviceId(0))
            .is_ok_and(|c| !c.terms.is_none()));
    }
    // Both rights values are accepted, and mean what they say.
    for (v, rights) in [(1u8, Rights::ReadOnly), (2, Rights::ReadWrite)] {
        let mut c = claim().encode();
        c[5] = v;
        let got = sign_raw(&c, &key()).verify(&vk, 5, NodeId(2), DeviceId(0));
        assert_eq!(got.map(|c| c.rights), Ok(rights));
    }
    assert!(!Rights::ReadOnly.writable());
    assert!(Rights::ReadWrite.writable());
}

#[test]
fn claim_unverified_does_not_check_the_signature() {
    let t = claim().sign(&SigningKey::from_bytes(&[9u8; 32]));
    assert_eq!(t.claim_unverified(), Ok(claim()));
    assert!(t
        .verify(&key().verifying_key(), 5, NodeId(2), DeviceId(0))
        .is_err());
}

#[test]
fn every_token_error_has_its_status() {
    let cases = [
        (TokenError::BadEncoding, Status::BadToken),
        (TokenError::BadKey, Status::BadToken),
        (TokenError::BadLength(3), Status::BadToken),
        (TokenError::BadClaim("x"), Status::BadToken),
        (TokenError::BadSignature, Status::BadToken),
        (
            TokenError::Expired {
                expires_at_ms: 1,
                now_ms: 2,
            },
            Status::Expired,
        ),
        (
            TokenError::WrongNode {
                token: NodeId(1),
                node: NodeId(2),
            },
            Status::WrongNode,
        ),
        (
            TokenError::WrongDevice {
                token: DeviceId(1),
                requested: DeviceId(2),
            },
            Status::WrongDevice,
        ),
    ];
    for (e, s) in cases {
        assert_eq!(e.status(), s, "{e:?}");
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn malformed_key_files() {
    let good = "00".repeat(32);
    assert_eq!(key_from_text(&good), Ok([0; 32]));
    for bad in [
        String::new(),
        "0".repeat(63),
        "0".repeat(65),
        "0".repeat(128),
        "g".repeat(64),
        "zz".to_string(),
        // Each pair must be two hex digits: no sign, no spaces, no prefix.
        "+f".repeat(32),
        "-0".repeat(32),
        " f".repeat(32),
        "0x".repeat(32),
        format!("{}é", "0".repeat(62)),
        "é".repeat(32),
    ] {
        assert_eq!(key_from_text(&bad), Err(TokenError::BadKey), "{bad:?}");
        assert!(matches!(
            verifying_key_from_text(&bad),
            Err(TokenError::BadKey)
        ));
        assert!(matches!(
            signing_key_from_text(&bad),
            Err(TokenError::BadKey)
        ));
    }
    // Not every 32 bytes are a point on the curve: such a public key is refused.
    let mut refused = 0;
    for i in 0..=u8::MAX {
        let text = key_to_text(&[i; 32]);
        match verifying_key_from_text(&text) {
            Ok(k) => assert_eq!(k.as_bytes(), &[i; 32]),
            Err(e) => {
                assert_eq!(e, TokenError::BadKey);
                refused += 1;
            }
        }
        assert!(signing_key_from_text(&text).is_ok());
    }
    assert!(refused > 0);
}
