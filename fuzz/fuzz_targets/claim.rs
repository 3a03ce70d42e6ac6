//! Claim bytes from untrusted input, correctly signed: reaches the checks behind the signature
//! (format, rights, reserved bytes, expiry, node, device), which random tokens never pass.
//! The claim is signed at the format-1 length, so a format-2 byte must be refused.
#![no_main]

use dasmesh_wire::{Claim, DeviceId, NodeId, SigningKey, Token, TokenError, CLAIM_LEN};
use ed25519_dalek::Signer as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((claim, rest)) = data.split_first_chunk::<CLAIM_LEN>() else {
        return;
    };
    let word = |i: usize| {
        rest.get(i..i + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .unwrap_or(0)
    };
    let (now, node, device) = (
        word(0),
        NodeId(word(8) % 4),
        DeviceId((word(16) % 4) as u32),
    );
    let key = SigningKey::from_bytes(&[42u8; 32]);
    let mut msg = b"dasmesh-token-v1".to_vec();
    msg.extend_from_slice(claim);
    let token = Token::from_bytes(&[&claim[..], &key.sign(&msg).to_bytes()].concat()).unwrap();
    let got = token.verify(&key.verifying_key(), now, node, device);
    let want = Claim::decode(claim).and_then(|c| {
        if claim[4] != 1 {
            Err(TokenError::BadClaim("claim format does not match its length"))
        } else if now >= c.expires_at_ms {
            Err(TokenError::Expired {
                expires_at_ms: c.expires_at_ms,
                now_ms: now,
            })
        } else if c.node_id != NodeId(0) && c.node_id != node {
            Err(TokenError::WrongNode {
                token: c.node_id,
                node,
            })
        } else if c.device_id != device {
            Err(TokenError::WrongDevice {
                token: c.device_id,
                requested: device,
            })
        } else {
            Ok(c)
        }
    });
    assert_eq!(got, want);
    if let Ok(c) = got {
        assert_eq!(&c.encode()[..], &claim[..]);
    }
});
