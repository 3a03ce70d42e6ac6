//! The verify pattern: every block carries its own byte offset and a run seed, then bytes
//! derived from both. A block read back from the wrong place (a misdirected or lost write) shows
//! the offset it was written for; a torn or corrupted one fails the comparison.

/// Fills `buf` (whole blocks of `block` bytes, starting at device offset `offset`).
pub fn fill(buf: &mut [u8], offset: u64, block: usize, seed: u64) {
    for (i, b) in buf.chunks_mut(block).enumerate() {
        fill_block(b, offset + (i * block) as u64, seed);
    }
}

fn fill_block(b: &mut [u8], offset: u64, seed: u64) {
    b[..8].copy_from_slice(&offset.to_le_bytes());
    b[8..16].copy_from_slice(&seed.to_le_bytes());
    let mut x = offset ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for w in b[16..].chunks_mut(8) {
        // xorshift64: cheap, and different for every block and run.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = w.len();
        w.copy_from_slice(&x.to_le_bytes()[..n]);
    }
}

/// What was wrong with a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Where the block is.
    pub offset: u64,
    /// The offset its header names (another block's: a misdirected write).
    pub found_offset: u64,
    /// The seed its header names (another run's: a lost write).
    pub found_seed: u64,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "block at {} holds header offset {} seed {:#x}",
            self.offset, self.found_offset, self.found_seed
        )
    }
}

/// The first block of `buf` (read from device offset `offset`) that differs from the pattern.
pub fn check(buf: &[u8], offset: u64, block: usize, seed: u64) -> Option<Mismatch> {
    let mut want = vec![0u8; block];
    for (i, b) in buf.chunks(block).enumerate() {
        let at = offset + (i * block) as u64;
        fill_block(&mut want[..b.len()], at, seed);
        if b != &want[..b.len()] {
            return Some(Mismatch {
                offset: at,
                found_offset: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
                found_seed: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_buffer_checks_and_a_moved_block_is_named() {
        let mut b = vec![0u8; 4 * 512];
        fill(&mut b, 8192, 512, 7);
        assert_eq!(check(&b, 8192, 512, 7), None);
        assert!(check(&b, 8192, 512, 8).is_some(), "another run's seed");
        let (first, rest) = b.split_at_mut(512);
        rest[512..1024].copy_from_slice(first);
        let m = check(&b, 8192, 512, 7).unwrap();
        assert_eq!((m.offset, m.found_offset), (8192 + 1024, 8192));
    }

    #[test]
    fn blocks_differ_past_their_headers() {
        let mut b = vec![0u8; 2 * 4096];
        fill(&mut b, 0, 4096, 1);
        assert_ne!(b[16..4096], b[4096 + 16..]);
        b[5000] ^= 1;
        assert_eq!(check(&b, 0, 4096, 1).unwrap().offset, 4096);
    }
}
