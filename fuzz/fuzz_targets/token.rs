//! Tokens and key files from untrusted bytes and text: parsing and verification never panic,
//! nothing not signed by the trusted key verifies, and the text forms parse canonically.
#![no_main]

use dasmesh_wire::{
    key_from_text, key_to_text, signing_key_from_text, verifying_key_from_text, DeviceId, NodeId,
    SigningKey, Token, TokenError, BOUND_TOKEN_LEN, TOKEN_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[42u8; 32]).verifying_key();
    match Token::from_bytes(data) {
        Ok(t) => {
            assert_eq!(&t.as_bytes()[..], data);
            let _ = t.claim_unverified();
            assert!(t.verify(&key, 0, NodeId(0), DeviceId(0)).is_err());
        }
        Err(e) => assert_eq!(e, TokenError::BadLength(data.len())),
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(t) = Token::from_text(&text) {
        // One token, one text: anything else that parsed would be a second name for it.
        assert_eq!(t.to_text(), text.trim());
        assert!(matches!(t.as_bytes().len(), TOKEN_LEN | BOUND_TOKEN_LEN));
        assert!(t.verify(&key, 0, NodeId(0), DeviceId(0)).is_err());
    }
    if let Ok(k) = key_from_text(&text) {
        assert_eq!(key_to_text(&k), text.trim().to_ascii_lowercase());
        assert!(signing_key_from_text(&text).is_ok());
    } else {
        assert!(verifying_key_from_text(&text).is_err());
        assert!(signing_key_from_text(&text).is_err());
    }
});
