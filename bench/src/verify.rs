//! Verify mode: every written block carries a header (magic, its own offset, a seed, a checksum
//! of the rest) and a payload derived from the seed, so a read can tell good data, misplaced data,
//! torn or corrupted data, and a block never written.

/// Bytes at the start of a block: magic, offset, seed, checksum.
pub const HEADER: usize = 32;
const MAGIC: u64 = u64::from_le_bytes(*b"DMBENCH1");

/// What a read of one block showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Header and checksum good, offset right.
    Good,
    /// No header: the block was never written by a verify run.
    Unwritten,
    /// A header for another offset (a misdirected write or read).
    WrongOffset(u64),
    /// Header right, payload does not match its checksum.
    BadChecksum,
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

fn checksum(payload: &[u8]) -> u64 {
    payload
        .chunks(8)
        .enumerate()
        .fold(0x9e37_79b9_7f4a_7c15, |acc, (i, c)| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            mix(acc ^ u64::from_le_bytes(w) ^ i as u64)
        })
}

/// Fills `block` (at least 64 bytes) for `offset` with a pattern from `seed`.
pub fn fill(block: &mut [u8], offset: u64, seed: u64) {
    let mut x = mix(seed ^ offset);
    for c in block[HEADER..].chunks_mut(8) {
        x = mix(x);
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let sum = checksum(&block[HEADER..]);
    block[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    block[8..16].copy_from_slice(&offset.to_le_bytes());
    block[16..24].copy_from_slice(&seed.to_le_bytes());
    block[24..32].copy_from_slice(&sum.to_le_bytes());
}

/// Checks a block read at `offset`.
pub fn check(block: &[u8], offset: u64) -> Check {
    let word = |i: usize| u64::from_le_bytes(block[i..i + 8].try_into().expect("8 bytes"));
    if word(0) != MAGIC {
        return Check::Unwritten;
    }
    if word(8) != offset {
        return Check::WrongOffset(word(8));
    }
    if word(24) != checksum(&block[HEADER..]) {
        return Check::BadChecksum;
    }
    Check::Good
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_every_kind_of_damage() {
        let mut b = vec![0u8; 4096];
        assert_eq!(check(&b, 0), Check::Unwritten);
        fill(&mut b, 8192, 7);
        assert_eq!(check(&b, 8192), Check::Good);
        assert_eq!(check(&b, 4096), Check::WrongOffset(8192));
        for at in [HEADER, 100, 4095] {
            let mut c = b.clone();
            c[at] ^= 1;
            assert_eq!(check(&c, 8192), Check::BadChecksum, "flip at {at}");
        }
    }
}
