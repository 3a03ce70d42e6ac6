//! `check_request` against a reference model written from docs/protocol.md ("Order of checks"):
//! op, flags, rights, length, alignment, range, each failure with its own status. The model does
//! its range arithmetic in u128, so it shares no overflow handling with the code under test.

use dasmesh_wire::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

/// The documented rules, spelled out independently of the implementation.
fn model(h: &RequestHeader, l: &RequestLimits) -> Result<Op, Status> {
    let op = match h.op {
        1 => Op::Read,
        2 => Op::Write,
        3 => Op::Flush,
        4 => Op::Discard,
        5 => Op::WriteZeroes,
        6 => Op::Search,
        _ => return Err(Status::UnknownOp),
    };
    let allowed = if matches!(op, Op::Write | Op::WriteZeroes) {
        FLAG_FUA
    } else {
        0
    };
    if h.flags & !allowed != 0 {
        return Err(Status::BadFlags);
    }
    if matches!(op, Op::Write | Op::Discard | Op::WriteZeroes) && !l.writable {
        return Err(Status::ReadOnly);
    }
    if op == Op::Flush {
        return if h.offset == 0 && h.length == 0 {
            Ok(op)
        } else {
            Err(Status::InvalidLength)
        };
    }
    if h.length == 0 {
        return Err(Status::InvalidLength);
    }
    if matches!(op, Op::Read | Op::Write) && h.length > u64::from(l.max_io_size) {
        return Err(Status::TooLarge);
    }
    let bs = u64::from(l.block_size).max(1);
    if !h.offset.is_multiple_of(bs) || !h.length.is_multiple_of(bs) {
        return Err(Status::Misaligned);
    }
    // Byte addresses end at 2^64 - 1: a lent range reaching past that is cut there.
    let end = u128::from(h.offset) + u128::from(h.length);
    let lent_end =
        (u128::from(l.range_offset) + u128::from(l.range_length)).min(u128::from(u64::MAX));
    if h.offset < l.range_offset || end > lent_end {
        return Err(Status::OutOfRange);
    }
    Ok(op)
}

fn header(op: u8, flags: u8, offset: u64, length: u64) -> RequestHeader {
    RequestHeader {
        op,
        flags,
        tag: Tag(0),
        offset,
        length,
    }
}

/// A number that is mostly a small multiple of `bs`, sometimes misaligned, sometimes near the top
/// of the address space, sometimes anything.
fn num(bs: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0u64..64).prop_map(move |k| k.saturating_mul(bs)),
        1 => (0u64..64).prop_map(move |k| k.saturating_mul(bs).saturating_add(1)),
        1 => (0u64..4).prop_map(move |k| (u64::MAX / bs).saturating_sub(k) * bs),
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
}

/// Headers and limits that pass most checks, so each check is reached and each status seen.
fn case() -> impl Strategy<Value = (RequestHeader, RequestLimits)> {
    prop_oneof![
        Just(512u32),
        Just(4096u32),
        (0u32..=16).prop_map(|s| 1 << s),
        any::<u32>(),
        Just(0u32)
    ]
    .prop_flat_map(|bs| {
        let b = u64::from(bs.max(1));
        (
            (
                prop_oneof![4 => 1u8..=6, 1 => any::<u8>()],
                prop_oneof![3 => Just(0u8), 1 => Just(FLAG_FUA), 1 => any::<u8>()],
            ),
            (num(b), num(b), num(b), num(b)),
            (
                prop_oneof![Just(1u32 << 20), Just(bs), any::<u32>()],
                any::<bool>(),
                any::<bool>(),
            ),
        )
            .prop_map(
                move |((op, flags), (ro, rl, rel, length), (max_io_size, writable, inside))| {
                    // Mostly an offset relative to the lent range, so that in-range requests occur.
                    let offset = if inside { ro.saturating_add(rel) } else { rel };
                    let limits = RequestLimits {
                        block_size: bs,
                        max_io_size,
                        range_offset: ro,
                        range_length: rl,
                        writable,
                    };
                    (header(op, flags, offset, length), limits)
                },
            )
    })
}

proptest! {
    #[test]
    fn check_request_matches_the_model((h, l) in case()) {
        prop_assert_eq!(check_request(&h, &l), model(&h, &l), "{:?} {:?}", h, l);
    }

    #[test]
    fn check_request_never_panics_on_anything(op in any::<u8>(), flags in any::<u8>(), tag in any::<u64>(),
            offset in any::<u64>(), length in any::<u64>(), block_size in any::<u32>(), max_io_size in any::<u32>(),
            range_offset in any::<u64>(), range_length in any::<u64>(), writable in any::<bool>()) {
        let h = RequestHeader { op, flags, tag: Tag(tag), offset, length };
        let l = RequestLimits { block_size, max_io_size, range_offset, range_length, writable };
        let got = check_request(&h, &l);
        prop_assert_eq!(got, model(&h, &l));
        if let Ok(op) = got {
            // Whatever passes is safe to execute: inside the lent range, without overflow.
            prop_assert_eq!(op as u8, h.op);
            prop_assert!(writable || !op.is_write());
            if op != Op::Flush {
                let end = h.offset.checked_add(h.length);
                prop_assert!(end.is_some());
                prop_assert!(h.offset >= range_offset && end.unwrap() <= range_offset.saturating_add(range_length));
            }
        }
    }
}

/// Many seeded cases, counting outcomes: proves the model test reaches every status
/// `check_request` can return (a strategy that never reached one would test nothing there).
#[test]
fn every_check_is_reached() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut seen = std::collections::HashMap::<Result<Op, Status>, u32>::new();
    for _ in 0..200_000 {
        let bs: u64 = 1 << rng.gen_range(9..=13);
        let pick = |rng: &mut rand::rngs::StdRng| -> u64 {
            match rng.gen_range(0..8) {
                0 => rng.gen(),
                1 => rng.gen_range(0..64) * bs + 1,
                2 => (u64::MAX / bs - rng.gen_range(0..4)) * bs,
                _ => rng.gen_range(0..64) * bs,
            }
        };
        let ro = pick(&mut rng);
        let offset = if rng.gen() {
            ro.saturating_add(pick(&mut rng))
        } else {
            pick(&mut rng)
        };
        let op = rng.gen_range(0..=7);
        let mut h = header(
            op,
            if rng.gen_range(0..4) == 0 {
                rng.gen()
            } else {
                0
            },
            offset,
            pick(&mut rng),
        );
        if op == Op::Flush as u8 && rng.gen() {
            (h.offset, h.length) = (0, 0);
        }
        let l = RequestLimits {
            block_size: bs as u32,
            max_io_size: 1 << rng.gen_range(10..=22),
            range_offset: ro,
            range_length: pick(&mut rng),
            writable: rng.gen(),
        };
        let got = check_request(&h, &l);
        assert_eq!(got, model(&h, &l), "{h:?} {l:?}");
        *seen.entry(got).or_default() += 1;
    }
    for want in Op::ALL.map(Ok).into_iter().chain(
        [
            Status::UnknownOp,
            Status::BadFlags,
            Status::ReadOnly,
            Status::InvalidLength,
            Status::TooLarge,
            Status::Misaligned,
            Status::OutOfRange,
        ]
        .map(Err),
    ) {
        assert!(
            seen.get(&want).copied().unwrap_or(0) > 0,
            "never saw {want:?}: {seen:?}"
        );
    }
    assert_eq!(seen.len(), 6 + 7, "{seen:?}");
}

fn limits() -> RequestLimits {
    RequestLimits {
        block_size: 4096,
        max_io_size: 1 << 20,
        range_offset: 1 << 20,
        range_length: 1 << 20,
        writable: true,
    }
}

fn check(op: u8, flags: u8, offset: u64, length: u64, l: &RequestLimits) -> Result<Op, Status> {
    check_request(&header(op, flags, offset, length), l)
}

const M: u64 = 1 << 20;

#[test]
fn every_op_and_flag_combination() {
    let l = limits();
    for op in 0..=u8::MAX {
        for flags in 0..=u8::MAX {
            let (offset, length) = if op == 3 { (0, 0) } else { (M, 4096) };
            let got = check(op, flags, offset, length, &l);
            let want = match op {
                1..=6 => {
                    let allowed = if op == 2 || op == 5 { FLAG_FUA } else { 0 };
                    if flags & !allowed != 0 {
                        Err(Status::BadFlags)
                    } else {
                        Ok(Op::from_code(op).unwrap())
                    }
                }
                _ => Err(Status::UnknownOp),
            };
            assert_eq!(got, want, "op {op} flags {flags:#x}");
        }
    }
}

#[test]
fn each_bad_request_gets_its_status() {
    let l = limits();
    assert_eq!(check(1, 0, M, 4096, &l), Ok(Op::Read));
    assert_eq!(check(0, 0, M, 4096, &l), Err(Status::UnknownOp));
    assert_eq!(check(7, 0, M, 4096, &l), Err(Status::UnknownOp));
    assert_eq!(check(1, FLAG_FUA, M, 4096, &l), Err(Status::BadFlags));
    assert_eq!(check(2, 2, M, 4096, &l), Err(Status::BadFlags));
    assert_eq!(check(2, FLAG_FUA, M, 4096, &l), Ok(Op::Write));
    assert_eq!(check(5, FLAG_FUA, M, 4096, &l), Ok(Op::WriteZeroes));
    assert_eq!(check(4, FLAG_FUA, M, 4096, &l), Err(Status::BadFlags));
    assert_eq!(check(3, FLAG_FUA, 0, 0, &l), Err(Status::BadFlags));
    assert_eq!(check(6, FLAG_FUA, M, 4096, &l), Err(Status::BadFlags));
    // Zero length.
    for op in [1u8, 2, 4, 5, 6] {
        assert_eq!(
            check(op, 0, M, 0, &l),
            Err(Status::InvalidLength),
            "op {op}"
        );
    }
    // FLUSH carries no range.
    assert_eq!(check(3, 0, 0, 0, &l), Ok(Op::Flush));
    assert_eq!(check(3, 0, 0, 4096, &l), Err(Status::InvalidLength));
    assert_eq!(check(3, 0, M, 0, &l), Err(Status::InvalidLength));
    // Too large: READ and WRITE are bounded by max_io_size, exactly.
    assert_eq!(check(1, 0, M, M, &l), Ok(Op::Read));
    assert_eq!(check(2, 0, M, M, &l), Ok(Op::Write));
    assert_eq!(check(1, 0, M, M + 4096, &l), Err(Status::TooLarge));
    assert_eq!(check(2, 0, M, u64::MAX, &l), Err(Status::TooLarge));
    // DISCARD, WRITE_ZEROES and SEARCH are bounded only by the range.
    let wide = RequestLimits {
        range_length: 8 * M,
        ..l
    };
    for op in [4u8, 5, 6] {
        assert!(check(op, 0, M, 4 * M, &wide).is_ok(), "op {op}");
        assert!(check(op, 0, M, 8 * M, &wide).is_ok(), "op {op}");
        assert_eq!(
            check(op, 0, M, 8 * M + 4096, &wide),
            Err(Status::OutOfRange),
            "op {op}"
        );
    }
    // Misaligned offset or length.
    assert_eq!(check(1, 0, M + 512, 4096, &l), Err(Status::Misaligned));
    assert_eq!(check(1, 0, M, 4000, &l), Err(Status::Misaligned));
    assert_eq!(check(1, 0, M + 1, 1, &l), Err(Status::Misaligned));
    // Out of range: before, after, straddling either end.
    assert_eq!(check(1, 0, 0, 4096, &l), Err(Status::OutOfRange));
    assert_eq!(check(1, 0, M - 4096, 8192, &l), Err(Status::OutOfRange));
    assert_eq!(check(1, 0, 2 * M - 4096, 8192, &l), Err(Status::OutOfRange));
    assert_eq!(check(1, 0, 2 * M, 4096, &l), Err(Status::OutOfRange));
    assert_eq!(check(1, 0, 2 * M - 4096, 4096, &l), Ok(Op::Read));
    // The first and the last block of the range, and the whole range.
    assert_eq!(check(1, 0, M, 4096, &l), Ok(Op::Read));
    assert_eq!(check(6, 0, M, M, &l), Ok(Op::Search));
    // An empty lent range admits nothing but FLUSH.
    let empty = RequestLimits {
        range_length: 0,
        ..l
    };
    assert_eq!(check(1, 0, M, 4096, &empty), Err(Status::OutOfRange));
    assert_eq!(check(3, 0, 0, 0, &empty), Ok(Op::Flush));
}

#[test]
fn read_only_tokens_refuse_every_write_class_op() {
    let ro = RequestLimits {
        writable: false,
        ..limits()
    };
    for op in [2u8, 4, 5] {
        assert_eq!(check(op, 0, M, 4096, &ro), Err(Status::ReadOnly), "op {op}");
        assert_eq!(
            check(op, 0, M, 0, &ro),
            Err(Status::ReadOnly),
            "op {op}, zero length"
        );
    }
    assert_eq!(check(2, FLAG_FUA, M, 4096, &ro), Err(Status::ReadOnly));
    assert_eq!(check(1, 0, M, 4096, &ro), Ok(Op::Read));
    assert_eq!(check(6, 0, M, 4096, &ro), Ok(Op::Search));
    assert_eq!(check(3, 0, 0, 0, &ro), Ok(Op::Flush));
}

#[test]
fn overflow_near_the_top_of_the_address_space() {
    const TOP: u64 = u64::MAX - 4095; // the last 4 KiB-aligned offset
                                      // A lent range running to the end of the address space (its end saturates).
    let l = RequestLimits {
        range_offset: TOP - 4096,
        range_length: u64::MAX,
        max_io_size: u32::MAX,
        ..limits()
    };
    assert_eq!(check(1, 0, TOP - 4096, 4096, &l), Ok(Op::Read));
    // offset + length == 2^64: one past the last address, wraps to 0 in u64.
    assert_eq!(check(1, 0, TOP, 4096, &l), Err(Status::OutOfRange));
    assert_eq!(check(1, 0, TOP, 8192, &l), Err(Status::OutOfRange));
    assert_eq!(check(4, 0, TOP, TOP, &l), Err(Status::OutOfRange));
    assert_eq!(check(4, 0, TOP - 4096, TOP, &l), Err(Status::OutOfRange));
    // A wrapped end that would look small and in range.
    let low = RequestLimits {
        range_offset: 0,
        range_length: u64::MAX,
        ..l
    };
    assert_eq!(check(4, 0, 8192, TOP, &low), Err(Status::OutOfRange));
    assert_eq!(check(4, 0, 0, TOP, &low), Ok(Op::Discard));
    // The lent range's own end overflowing does not open up addresses below its start.
    assert_eq!(check(1, 0, 0, 4096, &l), Err(Status::OutOfRange));
}

#[test]
fn checks_come_in_the_documented_order() {
    let ro = RequestLimits {
        writable: false,
        ..limits()
    };
    // Unknown op beats bad flags, bad flags beat rights, rights beat length ...
    assert_eq!(check(9, 0xff, 1, 0, &ro), Err(Status::UnknownOp));
    assert_eq!(check(2, 0x80, 1, 0, &ro), Err(Status::BadFlags));
    assert_eq!(check(2, 0, 1, 0, &ro), Err(Status::ReadOnly));
    // ... zero length beats alignment and range, size beats alignment, alignment beats range.
    assert_eq!(check(1, 0, 1, 0, &ro), Err(Status::InvalidLength));
    assert_eq!(check(1, 0, 1, 2 * M + 1, &ro), Err(Status::TooLarge));
    assert_eq!(check(1, 0, 1, 4096, &ro), Err(Status::Misaligned));
    assert_eq!(check(1, 0, 0, 4096, &ro), Err(Status::OutOfRange));
    // A block size of 0 (never announced) does not divide by zero.
    let zero = RequestLimits {
        block_size: 0,
        ..limits()
    };
    assert_eq!(check(1, 0, M + 1, 3, &zero), Ok(Op::Read));
}
