//! A request header (+ SEARCH body) from untrusted bytes, checked against limits also drawn from
//! the input: must never panic, and what passes the checks must be well-formed.
#![no_main]

use dasmesh_wire::{check_request, Op, RequestHeader, RequestLimits, SearchBody};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = RequestHeader::decode(data) else { return };
    let rest = &data[32..];
    let _ = SearchBody::decode(rest);
    let word = |i: usize| rest.get(i..i + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap())).unwrap_or(0);
    let limits = RequestLimits {
        block_size: 512 << (word(0) % 4),
        max_io_size: (word(8) as u32).max(1),
        range_offset: word(16),
        range_length: word(24),
        writable: word(32) % 2 == 0,
    };
    if let Ok(op) = check_request(&h, &limits) {
        assert!(limits.writable || !op.is_write());
        if op != Op::Flush {
            assert!(h.length > 0);
            assert!(h.offset >= limits.range_offset);
            assert!(h.offset + h.length <= limits.range_offset.saturating_add(limits.range_length));
        }
    }
});
