//! Hello (what a node reads first) and HelloReply (what a client reads first).
#![no_main]

use dasmesh_wire::{negotiate_version, Hello, HelloReply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Hello::decode(data) {
        let _ = negotiate_version(h.min_version, h.max_version);
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
    }
    if let Ok(r) = HelloReply::decode(data) {
        let _ = r.status_enum();
        assert_eq!(HelloReply::decode(&r.encode()), Ok(r));
    }
});
