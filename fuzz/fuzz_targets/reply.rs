//! A reply header from untrusted bytes (what a client reads from a node).
#![no_main]

use dasmesh_wire::ReplyHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ReplyHeader::decode(data) {
        let _ = h.status_enum();
        assert_eq!(ReplyHeader::decode(&h.encode()), Ok(h));
    }
});
