//! The SEARCH matcher against a naive scan: any data, cut into chunks at any boundaries, gives
//! every overlapping match in increasing order, up to the hit limit, with the truncated flag set
//! exactly when more matches exist.

use dasmesh_wire::*;
use proptest::collection::vec;
use proptest::prelude::*;

/// Every start of `pat` in `data`, overlapping ones included, as offsets from `base`.
fn naive(data: &[u8], pat: &[u8], base: u64) -> Vec<u64> {
    if data.len() < pat.len() {
        return vec![];
    }
    (0..=data.len() - pat.len())
        .filter(|i| &data[*i..*i + pat.len()] == pat)
        .map(|i| base + i as u64)
        .collect()
}

/// Feeds `data` (starting at `base`) in chunks of the given sizes, cycling through them.
fn feed_chunked(s: &mut Searcher, base: u64, data: &[u8], cuts: &[usize]) {
    let (mut at, mut k) = (0usize, 0usize);
    while at < data.len() {
        let n = cuts[k % cuts.len()].min(data.len() - at);
        s.feed(base + at as u64, &data[at..at + n]);
        at += n;
        k += 1;
    }
}

/// A pattern and data built from pieces of it, so that matches (overlapping ones, and ones
/// cut by chunk boundaries) are common even for long patterns.
fn pattern_and_data() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    prop_oneof![
        // Short patterns over a tiny alphabet: periodic, self-overlapping.
        (vec(0u8..3, 1..6), vec(0u8..3, 0..700)),
        // Any length up to 64, data made of whole copies, prefixes and suffixes of it.
        vec(0u8..4, 1..=SEARCH_PATTERN_MAX).prop_flat_map(|pat| {
            let n = pat.len();
            let piece = prop_oneof![
                3 => Just(pat.clone()),
                1 => (0..n).prop_map({ let p = pat.clone(); move |k| p[..k].to_vec() }),
                1 => (0..n).prop_map({ let p = pat.clone(); move |k| p[k..].to_vec() }),
                1 => vec(0u8..4, 0..8),
            ];
            (Just(pat), vec(piece, 0..30).prop_map(|ps| ps.concat()))
        }),
        // A run of one byte: every position matches a run pattern.
        (1usize..10, 0usize..300).prop_map(|(m, n)| (vec![7; m], vec![7; n])),
    ]
}

proptest! {
    #[test]
    fn matches_naive_with_any_chunking((pattern, data) in pattern_and_data(),
            cuts in vec(1usize..80, 1..20), max_hits in 0usize..40, base in 0u64..1 << 62) {
        let all = naive(&data, &pattern, base);
        let mut s = Searcher::new(&pattern, max_hits);
        feed_chunked(&mut s, base, &data, &cuts);
        let done = s.is_done();
        let (hits, truncated) = s.finish();
        prop_assert_eq!(&hits[..], &all[..all.len().min(max_hits)]);
        prop_assert_eq!(truncated, all.len() > max_hits);
        prop_assert_eq!(done, truncated);
    }

    #[test]
    fn empty_chunks_change_nothing((pattern, data) in pattern_and_data(), cuts in vec(1usize..40, 1..20),
            empty_at in vec(any::<u64>(), 1..20)) {
        // An empty chunk, whatever offset it claims, neither matches nor breaks a partial match.
        let all = naive(&data, &pattern, 0);
        let mut s = Searcher::new(&pattern, usize::MAX);
        let (mut at, mut k) = (0usize, 0usize);
        while at < data.len() {
            let n = cuts[k % cuts.len()].min(data.len() - at);
            s.feed(at as u64, &data[at..at + n]);
            s.feed(empty_at[k % empty_at.len()], &[]);
            at += n;
            k += 1;
        }
        prop_assert_eq!(s.finish(), (all, false));
    }

    #[test]
    fn a_gap_between_chunks_ends_any_partial_match((pattern, data) in pattern_and_data(),
            split in any::<prop::sample::Index>(), gap in 1u64..1000, cuts in vec(1usize..50, 1..8)) {
        // Chunks that are not contiguous are separate ranges: no match may join them.
        let split = split.index(data.len() + 1);
        let (a, b) = data.split_at(split);
        let b_base = a.len() as u64 + gap;
        let mut want = naive(a, &pattern, 0);
        want.extend(naive(b, &pattern, b_base));
        let mut s = Searcher::new(&pattern, usize::MAX);
        feed_chunked(&mut s, 0, a, &cuts);
        feed_chunked(&mut s, b_base, b, &cuts);
        prop_assert_eq!(s.finish(), (want, false));
    }

    #[test]
    fn nothing_is_taken_after_the_limit(data in vec(0u8..2, 1..400), max_hits in 0usize..10, more in vec(0u8..2, 1..100)) {
        let pattern = [1u8];
        let all = naive(&data, &pattern, 0);
        prop_assume!(all.len() > max_hits);
        let mut s = Searcher::new(&pattern, max_hits);
        s.feed(0, &data);
        prop_assert!(s.is_done());
        s.feed(data.len() as u64, &more);
        let (hits, truncated) = s.finish();
        prop_assert_eq!(&hits[..], &all[..max_hits]);
        prop_assert!(truncated);
    }
}

#[test]
fn matches_across_block_boundaries() {
    const BLOCK: usize = 4096;
    let pattern: Vec<u8> = (1..=SEARCH_PATTERN_MAX as u8).collect();
    let base = 1u64 << 40;
    // The 64-byte pattern straddling the boundary of two blocks, cut at every possible point.
    for shift in 1..SEARCH_PATTERN_MAX {
        let mut data = vec![0u8; 3 * BLOCK];
        let at = BLOCK - shift;
        data[at..at + pattern.len()].copy_from_slice(&pattern);
        let mut s = Searcher::new(&pattern, 10);
        for (i, block) in data.chunks(BLOCK).enumerate() {
            s.feed(base + (i * BLOCK) as u64, block);
        }
        assert_eq!(s.finish(), (vec![base + at as u64], false), "shift {shift}");
    }
    // A match spanning three chunks (the middle one shorter than the pattern).
    let mut s = Searcher::new(b"abcdef", 10);
    s.feed(0, b"xxab");
    s.feed(4, b"cd");
    s.feed(6, b"efxx");
    assert_eq!(s.finish(), (vec![2], false));
    // A match must lie wholly inside what was fed: a prefix at the end is not a match.
    let mut s = Searcher::new(b"abc", 10);
    s.feed(0, b"xxab");
    assert_eq!(s.finish(), (vec![], false));
}

#[test]
fn overlapping_matches_are_all_reported() {
    let mut s = Searcher::new(b"aa", 10);
    s.feed(0, b"aaa");
    assert_eq!(s.finish(), (vec![0, 1], false));
    let mut s = Searcher::new(b"aba", 10);
    s.feed(100, b"ab");
    s.feed(102, b"aba");
    assert_eq!(s.finish(), (vec![100, 102], false));
}

#[test]
fn the_limit_and_the_truncated_flag() {
    let data = vec![b'x'; 100];
    // Exactly max_hits matches: complete, not truncated.
    let mut s = Searcher::new(b"xx", 99);
    s.feed(0, &data);
    assert!(!s.is_done());
    assert_eq!(s.finish(), ((0..99).collect(), false));
    // One more than the limit: truncated.
    let mut s = Searcher::new(b"xx", 98);
    s.feed(0, &data);
    assert!(s.is_done());
    assert_eq!(s.finish(), ((0..98).collect(), true));
    // A limit of zero reports only whether there is a match.
    let mut s = Searcher::new(b"xx", 0);
    s.feed(0, &data);
    assert_eq!(s.finish(), (vec![], true));
    let mut s = Searcher::new(b"y", 0);
    s.feed(0, &data);
    assert_eq!(s.finish(), (vec![], false));
}
