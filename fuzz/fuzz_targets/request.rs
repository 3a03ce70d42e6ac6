//! A request header from untrusted bytes (what a node reads from a client), then the static checks
//! against limits also drawn from the input: never a panic, what decodes re-encodes to the same
//! bytes, and what passes the checks is safe to execute.
#![no_main]

use dasmesh_wire::{check_request, Op, RequestHeader, RequestLimits, REQUEST_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = RequestHeader::decode(data) else {
        return;
    };
    assert_eq!(&h.encode()[..], &data[..REQUEST_HEADER_LEN]);
    assert_eq!(
        h.known_op().map(|op| op as u8),
        Some(h.op).filter(|c| (1..=6).contains(c))
    );
    let rest = &data[REQUEST_HEADER_LEN..];
    let word = |i: usize| {
        rest.get(i..i + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .unwrap_or(0)
    };
    let limits = RequestLimits {
        block_size: word(0) as u32,
        max_io_size: word(8) as u32,
        range_offset: word(16),
        range_length: word(24),
        writable: word(32) % 2 == 0,
    };
    if let Ok(op) = check_request(&h, &limits) {
        assert_eq!(op as u8, h.op);
        assert_eq!(h.flags & !op.allowed_flags(), 0);
        assert!(limits.writable || !op.is_write());
        if op == Op::Flush {
            assert_eq!((h.offset, h.length), (0, 0));
        } else {
            let bs = u64::from(limits.block_size.max(1));
            assert!(h.length > 0 && h.offset % bs == 0 && h.length % bs == 0);
            let end = h.offset.checked_add(h.length).expect("no overflow");
            assert!(h.offset >= limits.range_offset);
            assert!(end <= limits.range_offset.saturating_add(limits.range_length));
            if matches!(op, Op::Read | Op::Write) {
                assert!(h.length <= u64::from(limits.max_io_size));
            }
        }
    }
});
