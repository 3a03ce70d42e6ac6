//! The SEARCH matcher: finds every (overlapping) occurrence of a pattern in data fed chunk by
//! chunk, including matches that span chunk (block) boundaries.

use memchr::memmem;

/// Streaming pattern search over contiguous chunks of a range.
#[derive(Debug)]
pub struct Searcher {
    finder: memmem::Finder<'static>,
    pattern_len: usize,
    max_hits: usize,
    hits: Vec<u64>,
    /// The last `pattern_len - 1` bytes seen, which may begin a match finishing in the next chunk.
    tail: Vec<u8>,
    /// The offset of `tail[0]`.
    tail_offset: u64,
    next_offset: Option<u64>,
    truncated: bool,
}

impl Searcher {
    /// A searcher for `pattern` (non-empty) returning at most `max_hits` offsets.
    pub fn new(pattern: &[u8], max_hits: usize) -> Self {
        assert!(!pattern.is_empty(), "empty search pattern");
        Self {
            finder: memmem::Finder::new(pattern).into_owned(),
            pattern_len: pattern.len(),
            max_hits,
            hits: Vec::new(),
            tail: Vec::with_capacity(pattern.len()),
            tail_offset: 0,
            next_offset: None,
            truncated: false,
        }
    }

    /// Whether the hit limit has been reached (no more input is needed).
    pub fn is_done(&self) -> bool {
        self.truncated
    }

    /// Feeds the next chunk, which starts at byte `offset` (the previous chunk's end, if any).
    pub fn feed(&mut self, offset: u64, chunk: &[u8]) {
        if self.truncated || chunk.is_empty() {
            return;
        }
        if self.next_offset != Some(offset) {
            self.tail.clear();
            self.tail_offset = offset;
        }
        self.next_offset = Some(offset + chunk.len() as u64);
        let m = self.pattern_len;
        let mut joint = std::mem::take(&mut self.tail);
        let tail_len = joint.len();
        if tail_len > 0 {
            // Matches that start in the carried tail and finish in this chunk.
            joint.extend_from_slice(&chunk[..chunk.len().min(m - 1)]);
            let starts = overlapping(&self.finder, &joint).take_while(|s| *s < tail_len);
            let base = self.tail_offset;
            if record(
                &mut self.hits,
                &mut self.truncated,
                self.max_hits,
                starts.map(|s| base + s as u64),
            ) {
                return;
            }
            joint.truncate(tail_len);
        }
        if record(
            &mut self.hits,
            &mut self.truncated,
            self.max_hits,
            overlapping(&self.finder, chunk).map(|s| offset + s as u64),
        ) {
            return;
        }
        // The new tail: the last m-1 bytes of (old tail ++ chunk).
        let end = offset + chunk.len() as u64;
        joint.extend_from_slice(&chunk[chunk.len().saturating_sub(m - 1)..]);
        let drop = joint.len().saturating_sub(m - 1);
        joint.drain(..drop);
        self.tail_offset = end - joint.len() as u64;
        self.tail = joint;
    }

    /// The offsets found, in increasing order, and whether the limit cut the search short.
    pub fn finish(self) -> (Vec<u64>, bool) {
        (self.hits, self.truncated)
    }
}

/// Every start position of `finder`'s needle in `hay`, overlapping ones included.
fn overlapping<'a>(
    finder: &'a memmem::Finder<'static>,
    hay: &'a [u8],
) -> impl Iterator<Item = usize> + 'a {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let at = pos + finder.find(hay.get(pos..)?)?;
        pos = at + 1;
        Some(at)
    })
}

/// Appends hits up to the limit; true (and `truncated` set) once a hit beyond the limit is seen.
fn record(
    hits: &mut Vec<u64>,
    truncated: &mut bool,
    max_hits: usize,
    found: impl Iterator<Item = u64>,
) -> bool {
    for at in found {
        if hits.len() == max_hits {
            *truncated = true;
            return true;
        }
        hits.push(at);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(data: &[u8], pat: &[u8]) -> Vec<u64> {
        if data.len() < pat.len() {
            return vec![];
        }
        (0..=data.len() - pat.len())
            .filter(|i| &data[*i..*i + pat.len()] == pat)
            .map(|i| i as u64)
            .collect()
    }

    #[test]
    fn across_chunks_matches_naive() {
        let data: Vec<u8> = (0..5000u32)
            .map(|i| b"abcab"[(i % 7 % 5) as usize])
            .collect();
        for pat in [&b"ab"[..], b"cab", b"abcabab", b"a"] {
            for chunk in [1usize, 2, 3, 7, 512, 4096, 10_000] {
                let mut s = Searcher::new(pat, usize::MAX);
                for (i, c) in data.chunks(chunk).enumerate() {
                    s.feed(1000 + (i * chunk) as u64, c);
                }
                let (hits, trunc) = s.finish();
                let want: Vec<u64> = naive(&data, pat).iter().map(|h| h + 1000).collect();
                assert_eq!(hits, want, "pat {pat:?} chunk {chunk}");
                assert!(!trunc);
            }
        }
    }

    #[test]
    fn limit_truncates() {
        let data = vec![b'x'; 100];
        let mut s = Searcher::new(b"xx", 10);
        s.feed(0, &data);
        let (hits, trunc) = s.finish();
        assert_eq!(hits, (0..10).collect::<Vec<u64>>());
        assert!(trunc);
        // Exactly max_hits matches: not truncated.
        let mut s = Searcher::new(b"xx", 99);
        s.feed(0, &data);
        assert_eq!(s.finish(), ((0..99).collect(), false));
    }
}
