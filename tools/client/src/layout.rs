//! Where a volume's bytes live: the pure mapping from a volume range to device ranges, for every
//! layout. No I/O here, so every boundary case is tested directly.

use crate::Error;

pub use dasmesh_api::Layout;

/// One extent of a volume, as the mount information gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    /// The node holding it.
    pub node_id: u64,
    /// The node's data-plane address.
    pub address: String,
    /// The device on that node.
    pub device: u32,
    /// First byte on the device.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Mirror copy (0 otherwise).
    pub copy: u32,
    /// Position within its copy (concat order; stripe: set * width + stripe).
    pub index: u32,
    /// A mirror copy that missed writes.
    pub stale: bool,
    /// A replacement its node fills from a healthy copy (stale until it is done).
    pub rebuilding: bool,
    /// Written to (though stale, not read from): a rebuilding extent its node guards.
    pub takes_writes: bool,
    /// The epoch it was allocated under.
    pub epoch: u64,
}

/// A contiguous run of a request on one extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Index into [`Map::extents`].
    pub extent: usize,
    /// Absolute device offset.
    pub device_offset: u64,
    /// Offset in the volume.
    pub volume_offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A stripe set: `width` extents of equal length, covering `width * length` volume bytes.
#[derive(Clone, Debug)]
struct Set {
    start: u64,
    extents: Vec<usize>,
    stripe_len: u64,
}

/// The part of the address space one copy maps.
#[derive(Clone, Debug)]
enum CopyMap {
    /// Extents end to end: `(volume start, extent)` in order.
    Linear(Vec<(u64, usize)>),
    /// Stripe sets in order.
    Striped {
        width: u64,
        unit: u64,
        sets: Vec<Set>,
    },
}

/// A volume's layout with its extents, ready to split requests.
#[derive(Clone, Debug)]
pub struct Map {
    size: u64,
    layout: Layout,
    extents: Vec<Extent>,
    copies: Vec<CopyMap>,
}

impl Map {
    /// Builds the map and checks that the extents cover `size` bytes in every copy.
    pub fn new(size: u64, layout: Layout, extents: Vec<Extent>) -> Result<Map, Error> {
        let bad = |m: String| Err(Error::Invalid(format!("mount information: {m}")));
        if extents.is_empty() {
            return bad("a volume without extents".into());
        }
        let ncopies = match layout {
            Layout::Mirror { copies } if copies >= 1 => copies,
            Layout::Mirror { .. } => return bad("a mirror with no copies".into()),
            _ => 1,
        };
        let mut copies = Vec::new();
        for copy in 0..ncopies {
            let mut mine: Vec<usize> = (0..extents.len())
                .filter(|&i| extents[i].copy == copy)
                .collect();
            mine.sort_by_key(|&i| extents[i].index);
            if mine.is_empty() {
                return bad(format!("copy {copy} has no extents"));
            }
            let (map, covered) = match layout {
                Layout::Stripe { width, unit } => {
                    if width == 0 || unit == 0 || !mine.len().is_multiple_of(width as usize) {
                        return bad(format!("stripe:{width}:{unit} with {} extents", mine.len()));
                    }
                    let mut sets = Vec::new();
                    let mut start = 0u64;
                    for set in mine.chunks(width as usize) {
                        let stripe_len = extents[set[0]].length;
                        if stripe_len == 0
                            || !stripe_len.is_multiple_of(unit)
                            || set.iter().any(|&i| extents[i].length != stripe_len)
                        {
                            return bad(format!(
                                "stripe set at {start}: extents must be equal multiples of the unit {unit}"
                            ));
                        }
                        sets.push(Set {
                            start,
                            extents: set.to_vec(),
                            stripe_len,
                        });
                        start += stripe_len * u64::from(width);
                    }
                    let map = CopyMap::Striped {
                        width: u64::from(width),
                        unit,
                        sets,
                    };
                    (map, start)
                }
                _ => {
                    let mut runs = Vec::new();
                    let mut start = 0u64;
                    for &i in &mine {
                        runs.push((start, i));
                        start += extents[i].length;
                    }
                    (CopyMap::Linear(runs), start)
                }
            };
            if covered < size {
                return bad(format!(
                    "copy {copy} covers {covered} bytes of a {size}-byte volume"
                ));
            }
            copies.push(map);
        }
        if ncopies > 1 && extents.iter().any(|e| e.copy >= ncopies) {
            return bad("an extent of a copy beyond the layout's".into());
        }
        Ok(Map {
            size,
            layout,
            extents,
            copies,
        })
    }

    /// The volume's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Every extent, in mount-information order.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Number of copies (1 unless mirrored).
    pub fn copies(&self) -> usize {
        self.copies.len()
    }

    /// Checks that `[offset, offset + len)` lies inside the volume.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<(), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::Invalid(format!(
                "range {offset}+{len} is outside the {}-byte volume",
                self.size
            ))),
        }
    }

    /// Splits `[offset, offset + len)` of copy `copy` into device pieces, in volume order.
    /// The range must have passed [`Map::check_range`].
    pub fn pieces(&self, copy: usize, offset: u64, len: u64) -> Vec<Piece> {
        let mut out = Vec::new();
        self.each_piece(copy, offset, len, |p| {
            out.push(p);
            true
        });
        out
    }

    /// The piece `[offset, offset + len)` of copy `copy` is, when it is one piece (the common
    /// case, found without allocating).
    pub fn one_piece(&self, copy: usize, offset: u64, len: u64) -> Option<Piece> {
        let mut first = None;
        self.each_piece(copy, offset, len, |p| {
            first = Some(p);
            false
        });
        first.filter(|p| p.len == len)
    }

    /// Calls `f` with each piece in volume order until it returns false.
    fn each_piece(&self, copy: usize, offset: u64, len: u64, mut f: impl FnMut(Piece) -> bool) {
        let end = offset + len;
        match &self.copies[copy] {
            CopyMap::Linear(runs) => {
                let first = runs
                    .partition_point(|&(s, _)| s <= offset)
                    .saturating_sub(1);
                for &(start, i) in &runs[first..] {
                    if start >= end {
                        break;
                    }
                    let e = &self.extents[i];
                    let from = offset.max(start);
                    let to = end.min(start + e.length);
                    if from < to
                        && !f(Piece {
                            extent: i,
                            device_offset: e.offset + (from - start),
                            volume_offset: from,
                            len: to - from,
                        })
                    {
                        return;
                    }
                }
            }
            CopyMap::Striped { width, unit, sets } => {
                let mut at = offset;
                let mut si = sets
                    .partition_point(|s| s.start <= offset)
                    .saturating_sub(1);
                while at < end {
                    let set = &sets[si];
                    let set_end = set.start + set.stripe_len * width;
                    let o = at - set.start;
                    let u = o / unit;
                    let within = o % unit;
                    let stripe = (u % width) as usize;
                    let row = u / width;
                    let take = (unit - within).min(end - at).min(set_end - at);
                    let i = set.extents[stripe];
                    if !f(Piece {
                        extent: i,
                        device_offset: self.extents[i].offset + row * unit + within,
                        volume_offset: at,
                        len: take,
                    }) {
                        return;
                    }
                    at += take;
                    if at >= set_end {
                        si += 1;
                    }
                }
            }
        }
    }

    /// Whether every extent of `copy` is fresh (it may serve reads).
    pub fn copy_is_healthy(&self, copy: usize) -> bool {
        self.extents
            .iter()
            .filter(|e| e.copy as usize == copy)
            .all(|e| !e.stale)
    }

    /// Whether every extent of `copy` takes writes: fresh, or being rebuilt by its node and
    /// guarded (such a copy is written and not read).
    pub fn copy_takes_writes(&self, copy: usize) -> bool {
        self.extents
            .iter()
            .filter(|e| e.copy as usize == copy)
            .all(|e| !e.stale || e.takes_writes)
    }

    /// Whether an extent of `copy` is being rebuilt by its node.
    pub fn copy_rebuilding(&self, copy: usize) -> bool {
        self.extents
            .iter()
            .any(|e| e.copy as usize == copy && e.rebuilding)
    }

    /// Puts extent `i` where `x` says (a replacement: same copy, index and length) with its
    /// flags.
    pub fn set_extent(&mut self, i: usize, x: Extent) {
        debug_assert_eq!(
            (
                self.extents[i].copy,
                self.extents[i].index,
                self.extents[i].length
            ),
            (x.copy, x.index, x.length)
        );
        self.extents[i] = x;
    }

    /// Marks every extent of `copy` stale.
    pub fn mark_stale(&mut self, copy: usize) {
        self.set_stale(copy, true);
    }

    /// Marks every extent of `copy` stale or fresh.
    pub fn set_stale(&mut self, copy: usize, stale: bool) {
        for e in self.extents.iter_mut().filter(|e| e.copy as usize == copy) {
            e.stale = stale;
            if stale {
                e.takes_writes = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ext(offset: u64, length: u64, copy: u32, index: u32) -> Extent {
        Extent {
            node_id: u64::from(copy) * 10 + u64::from(index),
            address: String::new(),
            device: 0,
            offset,
            length,
            copy,
            index,
            stale: false,
            rebuilding: false,
            takes_writes: false,
            epoch: 0,
        }
    }

    /// The device byte a volume byte maps to, found by walking the layout one byte at a time
    /// the slow, obvious way.
    fn slow(map: &Map, copy: usize, v: u64) -> (usize, u64) {
        match map.layout() {
            Layout::Stripe { width, unit } => {
                let width = u64::from(width);
                let mut mine: Vec<usize> = (0..map.extents.len()).collect();
                mine.sort_by_key(|&i| map.extents[i].index);
                let mut start = 0;
                for set in mine.chunks(width as usize) {
                    let len = map.extents[set[0]].length * width;
                    if v < start + len {
                        let o = v - start;
                        let chunk = o / unit;
                        let e = set[(chunk % width) as usize];
                        return (e, map.extents[e].offset + (chunk / width) * unit + o % unit);
                    }
                    start += len;
                }
                unreachable!()
            }
            _ => {
                let mut mine: Vec<usize> = (0..map.extents.len())
                    .filter(|&i| map.extents[i].copy as usize == copy)
                    .collect();
                mine.sort_by_key(|&i| map.extents[i].index);
                let mut start = 0;
                for i in mine {
                    let e = &map.extents[i];
                    if v < start + e.length {
                        return (i, e.offset + v - start);
                    }
                    start += e.length;
                }
                unreachable!()
            }
        }
    }

    fn check(map: &Map, offset: u64, len: u64) {
        for copy in 0..map.copies() {
            let ps = map.pieces(copy, offset, len);
            let mut at = offset;
            for p in &ps {
                assert_eq!(p.volume_offset, at, "pieces are in order and contiguous");
                assert!(p.len > 0);
                let e = &map.extents[p.extent];
                assert!(p.device_offset >= e.offset);
                assert!(
                    p.device_offset + p.len <= e.offset + e.length,
                    "{p:?} {e:?}"
                );
                // Spot-check the first and last byte of every piece against the slow walk.
                for v in [p.volume_offset, p.volume_offset + p.len - 1] {
                    assert_eq!(
                        slow(map, copy, v),
                        (p.extent, p.device_offset + v - p.volume_offset)
                    );
                }
                at += p.len;
            }
            assert_eq!(at, offset + len, "pieces cover the range");
        }
    }

    #[test]
    fn concat_splits_at_extent_boundaries() {
        let m = Map::new(
            12288,
            Layout::Concat,
            vec![ext(1 << 20, 4096, 0, 1), ext(0, 8192, 0, 0)],
        )
        .unwrap();
        let ps = m.pieces(0, 4096, 8192);
        assert_eq!(
            ps,
            vec![
                Piece {
                    extent: 1,
                    device_offset: 4096,
                    volume_offset: 4096,
                    len: 4096
                },
                Piece {
                    extent: 0,
                    device_offset: 1 << 20,
                    volume_offset: 8192,
                    len: 4096
                },
            ]
        );
        assert!(m.check_range(8192, 4097).is_err());
        assert!(m.check_range(u64::MAX, 2).is_err());
    }

    #[test]
    fn stripe_interleaves_by_unit_and_sets_follow() {
        // Two sets of width 2, unit 4 KiB: set 0 has 8 KiB stripes, set 1 4 KiB stripes.
        let m = Map::new(
            24576,
            Layout::Stripe {
                width: 2,
                unit: 4096,
            },
            vec![
                ext(0, 8192, 0, 0),
                ext(100 << 12, 8192, 0, 1),
                ext(200 << 12, 4096, 0, 2),
                ext(300 << 12, 4096, 0, 3),
            ],
        )
        .unwrap();
        let offs: Vec<(usize, u64)> = m
            .pieces(0, 0, 24576)
            .iter()
            .map(|p| (p.extent, p.device_offset))
            .collect();
        assert_eq!(
            offs,
            vec![
                (0, 0),
                (1, 100 << 12),
                (0, 4096),
                (1, (100 << 12) + 4096),
                (2, 200 << 12),
                (3, 300 << 12)
            ]
        );
    }

    #[test]
    fn bad_mount_information_is_refused() {
        let short = Map::new(8192, Layout::Single, vec![ext(0, 4096, 0, 0)]);
        assert!(matches!(short, Err(Error::Invalid(_))), "{short:?}");
        let uneven = Map::new(
            8192,
            Layout::Stripe {
                width: 2,
                unit: 4096,
            },
            vec![ext(0, 4096, 0, 0), ext(0, 8192, 0, 1)],
        );
        assert!(uneven.is_err());
        let missing_copy = Map::new(4096, Layout::Mirror { copies: 2 }, vec![ext(0, 4096, 0, 0)]);
        assert!(missing_copy.is_err());
        assert!(Map::new(4096, Layout::Single, vec![]).is_err());
    }

    #[test]
    fn stale_copies() {
        let mut m = Map::new(
            4096,
            Layout::Mirror { copies: 2 },
            vec![ext(0, 4096, 0, 0), ext(0, 4096, 1, 0)],
        )
        .unwrap();
        assert!(m.copy_is_healthy(1));
        m.mark_stale(1);
        assert!(!m.copy_is_healthy(1) && m.copy_is_healthy(0));
    }

    fn arb_map() -> impl Strategy<Value = (Map, u64)> {
        let block = 4096u64;
        prop_oneof![
            // concat of 1..5 extents
            proptest::collection::vec(1u64..5, 1..5).prop_map(move |lens| {
                let exts: Vec<Extent> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, l)| ext(i as u64 * (1 << 30), l * block, 0, i as u32))
                    .collect();
                let size: u64 = lens.iter().sum::<u64>() * block;
                let kind = if exts.len() == 1 {
                    Layout::Single
                } else {
                    Layout::Concat
                };
                (Map::new(size, kind, exts).unwrap(), size)
            }),
            // stripe: width 2..4, unit 1..3 blocks, 1..3 sets of 1..3 rows
            (2u32..5, 1u64..4, proptest::collection::vec(1u64..4, 1..4)).prop_map(
                move |(width, unit_blocks, rows)| {
                    let unit = unit_blocks * block;
                    let mut exts = Vec::new();
                    for (s, r) in rows.iter().enumerate() {
                        for w in 0..width {
                            let index = s as u32 * width + w;
                            exts.push(ext(u64::from(index) << 30, r * unit, 0, index));
                        }
                    }
                    let size = rows.iter().sum::<u64>() * unit * u64::from(width);
                    let m = Map::new(size, Layout::Stripe { width, unit }, exts).unwrap();
                    (m, size)
                }
            ),
            // mirror of 2..3 copies, each 1..3 extents of its own sizes (ending past the size)
            (2u32..4, 1u64..8).prop_map(move |(copies, blocks)| {
                let size = blocks * block;
                let mut exts = Vec::new();
                for c in 0..copies {
                    let first = (u64::from(c) % blocks) + 1;
                    exts.push(ext(u64::from(c) << 30, first.min(blocks) * block, c, 0));
                    if first < blocks {
                        exts.push(ext(
                            (u64::from(c) << 30) + (1 << 29),
                            (blocks - first) * block,
                            c,
                            1,
                        ));
                    }
                }
                (
                    Map::new(size, Layout::Mirror { copies }, exts).unwrap(),
                    size,
                )
            }),
        ]
    }

    proptest! {
        #[test]
        fn pieces_cover_any_range_exactly((map, size) in arb_map(), a in 0u64..1 << 20, b in 0u64..1 << 20) {
            let (lo, hi) = (a.min(b) % (size + 1), a.max(b) % (size + 1));
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            prop_assert!(map.check_range(lo, hi - lo).is_ok());
            check(&map, lo, hi - lo);
        }

        #[test]
        fn one_piece_is_the_only_piece_or_none((map, size) in arb_map(), a in 0u64..1 << 20, n in 1u64..1 << 16) {
            let lo = a % size;
            let len = n.min(size - lo);
            for copy in 0..map.copies() {
                let all = map.pieces(copy, lo, len);
                let one = map.one_piece(copy, lo, len);
                prop_assert_eq!(one, (all.len() == 1).then(|| all[0]));
            }
        }
    }
}
