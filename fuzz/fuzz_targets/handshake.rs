//! The handshake from untrusted bytes: a Hello and the token after it (what a node reads first),
//! and a HelloReply (what a client reads first).
#![no_main]

use dasmesh_wire::{
    negotiate_version, DeviceId, Hello, HelloReply, NodeId, Proof, SigningKey, Status, Token,
    HELLO_LEN, HELLO_REPLY_LEN, MAX_TOKEN_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match HelloReply::decode(data) {
        Ok(r) => {
            assert_eq!(&r.encode()[..], &data[..HELLO_REPLY_LEN]);
            let _ = r.status_enum();
        }
        Err(s) => assert_eq!(s, Status::BadFrame),
    }
    let h = match Hello::decode(data) {
        Ok(h) => h,
        Err(s) => {
            assert!(matches!(s, Status::BadFrame | Status::BadToken), "{s:?}");
            return;
        }
    };
    assert_eq!(&h.encode()[..], &data[..HELLO_LEN]);
    assert!((1..=MAX_TOKEN_LEN).contains(&usize::from(h.token_len)));
    if let Some(v) = negotiate_version(h.min_version, h.max_version) {
        assert!(h.min_version <= v && v <= h.max_version);
    }
    let end = (HELLO_LEN + usize::from(h.token_len)).min(data.len());
    if let Ok(t) = Token::from_bytes(&data[HELLO_LEN..end]) {
        let _ = t.claim_unverified();
        let key = SigningKey::from_bytes(&[42u8; 32]).verifying_key();
        assert!(t.verify(&key, 0, NodeId(1), h.device_id).is_err());
        assert!(t.verify(&key, 0, NodeId(0), DeviceId(0)).is_err());
        // A proof from the same bytes never proves anything for a token nobody signed.
        let rest = &data[end..(HELLO_LEN + h.trailer_len()).min(data.len())];
        if let Some(p) = Proof::decode(rest) {
            assert!(p.verify(&t, NodeId(0), h.device_id, p.clock_ms).is_err());
        }
    }
});
