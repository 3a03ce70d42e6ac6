//! A reply header from untrusted bytes (what a client reads from a node).
#![no_main]

use dasmesh_wire::{ReplyHeader, Status, REPLY_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match ReplyHeader::decode(data) {
        Ok(h) => {
            assert_eq!(&h.encode()[..], &data[..REPLY_HEADER_LEN]);
            let s = h.status_enum();
            assert_eq!(Status::from_code(h.status).unwrap_or(Status::Internal), s);
        }
        Err(s) => assert_eq!(s, Status::BadFrame),
    }
});
