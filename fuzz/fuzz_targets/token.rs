//! Tokens in binary and text form: parsing and verification must never panic, and nothing
//! unsigned by the key verifies.
#![no_main]

use dasmesh_wire::{DeviceId, NodeId, SigningKey, Token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[42u8; 32]).verifying_key();
    for t in [Token::from_bytes(data), Token::from_text(&String::from_utf8_lossy(data))]
        .into_iter()
        .flatten()
    {
        let _ = t.claim_unverified();
        assert!(t.verify(&key, 0, NodeId(0), DeviceId(0)).is_err());
    }
});
