//! A SEARCH body from untrusted bytes, then the matcher run with it over the rest of the input,
//! cut into chunks of sizes also taken from the input, against a naive scan.
#![no_main]

use dasmesh_wire::{SearchBody, Searcher, Status, SEARCH_BODY_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = match SearchBody::decode(data) {
        Ok(b) => b,
        Err(s) => {
            assert!(matches!(s, Status::BadFrame | Status::BadPattern), "{s:?}");
            return;
        }
    };
    assert_eq!(&body.encode().unwrap()[..], &data[..SEARCH_BODY_LEN]);
    let rest = &data[SEARCH_BODY_LEN..];
    // First byte: how many chunk sizes follow; then the sizes; then the data to scan.
    let (n, rest) = rest
        .split_first()
        .map_or((0, rest), |(n, r)| (usize::from(*n % 8), r));
    let (sizes, hay) = rest.split_at(n.min(rest.len()));
    let max_hits = body.max_hits.min(1000) as usize;
    let m = body.pattern.len();
    let all: Vec<u64> = if hay.len() >= m {
        (0..=hay.len() - m)
            .filter(|i| hay[*i..*i + m] == body.pattern[..])
            .map(|i| 1000 + i as u64)
            .collect()
    } else {
        vec![]
    };
    let mut s = Searcher::new(&body.pattern, max_hits);
    let (mut at, mut k) = (0usize, 0usize);
    while at < hay.len() {
        let size = sizes
            .get(k % sizes.len().max(1))
            .map_or(hay.len(), |c| usize::from(*c).max(1));
        let end = (at + size).min(hay.len());
        s.feed(1000 + at as u64, &hay[at..end]);
        at = end;
        k += 1;
    }
    let (hits, truncated) = s.finish();
    assert_eq!(&hits[..], &all[..all.len().min(max_hits)]);
    assert_eq!(truncated, all.len() > max_hits);
});
