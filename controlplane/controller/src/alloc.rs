//! The allocator: finds extents for a layout in the pool's free space. Pure: it is given each
//! device's free ranges and returns pieces, or the reason it cannot.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

pub use dasmesh_api::{Layout, DEFAULT_STRIPE_UNIT};
use serde::{Deserialize, Serialize};

/// Every extent starts and ends on this alignment (the largest block size we accept).
pub const ALIGN: u64 = 4096;

/// A device of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceKey {
    /// The node.
    pub node: u64,
    /// The device on it.
    pub device: u32,
}

/// A device with room, as the allocator sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Which device.
    pub key: DeviceKey,
    /// Its node's failure domain.
    pub failure_domain: String,
    /// Free ranges `(start, length)`, aligned.
    pub free: Vec<(u64, u64)>,
}

/// One extent to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// Where.
    pub key: DeviceKey,
    /// First byte on the device.
    pub offset: u64,
    /// Length.
    pub length: u64,
    /// Mirror copy index.
    pub copy: u32,
    /// Position within the copy (concat/stripe order).
    pub index: u32,
}

/// Rounds up to [`ALIGN`].
pub fn align_up(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

fn gib(x: u64) -> String {
    dasmesh_wire::units::format_size(x)
}

/// Working copy of the free space, consumed as pieces are taken.
struct Pool {
    cands: Vec<Candidate>,
}

impl Pool {
    /// A working copy of `cands` for a request of `size` bytes, and the size rounded up to
    /// [`ALIGN`]; an empty request is refused.
    fn for_request(cands: &[Candidate], size: u64) -> Result<(u64, Pool), String> {
        if size == 0 {
            return Err("size must be greater than 0".into());
        }
        Ok((
            align_up(size),
            Pool {
                cands: cands.to_vec(),
            },
        ))
    }

    fn device_free(&self, i: usize) -> u64 {
        self.cands[i].free.iter().map(|r| r.1).sum()
    }

    fn node_free(&self, node: u64) -> u64 {
        (0..self.cands.len())
            .filter(|i| self.cands[*i].key.node == node)
            .map(|i| self.device_free(i))
            .sum()
    }

    /// Best fit: the smallest free range that holds `len`, on a device `ok` accepts; ties go to
    /// the node with the most free space (spreading load).
    fn best_fit(&self, len: u64, ok: impl Fn(&Candidate) -> bool) -> Option<(usize, usize)> {
        let mut best: Option<(u64, Reverse<u64>, usize, usize)> = None;
        for (ci, c) in self.cands.iter().enumerate().filter(|(_, c)| ok(c)) {
            for (ri, r) in c.free.iter().enumerate().filter(|(_, r)| r.1 >= len) {
                let key = (r.1, Reverse(self.node_free(c.key.node)), ci, ri);
                if best.is_none_or(|b| (key.0, key.1) < (b.0, b.1)) {
                    best = Some(key);
                }
            }
        }
        best.map(|b| (b.2, b.3))
    }

    /// Takes `len` bytes from the start of free range `ri` of candidate `ci`.
    fn take(&mut self, ci: usize, ri: usize, len: u64) -> (DeviceKey, u64) {
        let c = &mut self.cands[ci];
        let (start, rlen) = c.free[ri];
        if rlen == len {
            c.free.remove(ri);
        } else {
            c.free[ri] = (start + len, rlen - len);
        }
        (c.key, start)
    }

    /// Nodes with a free range of at least `len` on a device `ok` accepts, with their domains.
    fn able(&self, len: u64, ok: impl Fn(&Candidate) -> bool) -> BTreeMap<u64, String> {
        self.cands
            .iter()
            .filter(|c| ok(c) && c.free.iter().any(|r| r.1 >= len))
            .map(|c| (c.key.node, c.failure_domain.clone()))
            .collect()
    }

    fn largest(&self) -> Option<(usize, usize, u64)> {
        self.cands
            .iter()
            .enumerate()
            .flat_map(|(ci, c)| c.free.iter().enumerate().map(move |(ri, r)| (ci, ri, r.1)))
            .max_by_key(|x| x.2)
    }
}

/// Finds extents of `size` bytes (rounded up to [`ALIGN`]) for `layout`, or says what is short.
/// Mirror copies always land on different nodes, and with `spread_domains` on different
/// failure domains; stripes prefer different nodes.
pub fn allocate(
    cands: &[Candidate],
    layout: Layout,
    size: u64,
    spread_domains: bool,
) -> Result<Vec<Piece>, String> {
    let (size, mut pool) = Pool::for_request(cands, size)?;
    let total: u64 = (0..pool.cands.len()).map(|i| pool.device_free(i)).sum();
    let piece = |(key, offset): (DeviceKey, u64), length, copy, index| Piece {
        key,
        offset,
        length,
        copy,
        index,
    };
    match layout {
        Layout::Single => {
            let (ci, ri) = pool.best_fit(size, |_| true).ok_or_else(|| {
                let max = pool.largest().map(|x| x.2).unwrap_or(0);
                format!(
                    "need {} free in one piece for single, the largest free piece is {}",
                    gib(size),
                    gib(max)
                )
            })?;
            Ok(vec![piece(pool.take(ci, ri, size), size, 0, 0)])
        }
        Layout::Concat => {
            if total < size {
                return Err(format!(
                    "need {} for concat, the pool has {} free",
                    gib(size),
                    gib(total)
                ));
            }
            let mut out = Vec::new();
            let mut left = size;
            while left > 0 {
                let (ci, ri, len) = match pool.best_fit(left, |_| true) {
                    Some((ci, ri)) => (ci, ri, left),
                    None => pool.largest().expect("total covers the size"),
                };
                let at = pool.take(ci, ri, len);
                out.push(piece(at, len, 0, out.len() as u32));
                left -= len;
            }
            Ok(out)
        }
        Layout::Stripe { width, unit } => {
            if width < 2 {
                return Err(format!("stripe needs a width of at least 2, got {width}"));
            }
            let unit = if unit == 0 { DEFAULT_STRIPE_UNIT } else { unit };
            if unit % ALIGN != 0 {
                return Err(format!("stripe unit {unit} must be a multiple of {ALIGN}"));
            }
            let per = size.div_ceil(u64::from(width)).div_ceil(unit) * unit;
            let mut out: Vec<Piece> = Vec::new();
            for index in 0..width {
                let used_dev: BTreeSet<DeviceKey> = out.iter().map(|p| p.key).collect();
                let used_node: BTreeSet<u64> = out.iter().map(|p| p.key.node).collect();
                let found = pool
                    .best_fit(per, |c| {
                        !used_dev.contains(&c.key) && !used_node.contains(&c.key.node)
                    })
                    .or_else(|| pool.best_fit(per, |c| !used_dev.contains(&c.key)));
                let Some((ci, ri)) = found else {
                    return Err(format!(
                        "need {width} devices with {} free for stripe:{width}, have {}",
                        gib(per),
                        out.len()
                            + pool
                                .cands
                                .iter()
                                .filter(|c| !used_dev.contains(&c.key)
                                    && c.free.iter().any(|r| r.1 >= per))
                                .count()
                    ));
                };
                out.push(piece(pool.take(ci, ri, per), per, 0, index));
            }
            Ok(out)
        }
        Layout::Mirror { copies } => {
            if copies < 2 {
                return Err(format!("mirror needs at least 2 copies, got {copies}"));
            }
            // Every copy needs a node of its own: no bigger count is worth a placement (or a
            // list of that many copies).
            let nodes = pool
                .cands
                .iter()
                .map(|c| c.key.node)
                .collect::<BTreeSet<_>>();
            let picks = (copies as usize <= nodes.len())
                .then(|| {
                    let placed = vec![CopyPlace::default(); copies as usize];
                    place_copies(&pool, &placed, size, spread_domains)
                })
                .flatten();
            let Some(picks) = picks else {
                // With nothing placed yet, a placement exists exactly when enough nodes (or
                // failure domains) have the size in one piece: say how many do.
                let able = pool.able(size, |_| true);
                let have = if spread_domains {
                    able.values().collect::<BTreeSet<_>>().len()
                } else {
                    able.len()
                };
                let what = if spread_domains {
                    "nodes in different failure domains"
                } else {
                    "nodes"
                };
                return Err(format!(
                    "need {copies} {what} with {} free for mirror:{copies}, have {}",
                    gib(size),
                    have.min(copies as usize - 1)
                ));
            };
            Ok(take_copies(&mut pool, &picks, size))
        }
    }
}

/// Where one copy of a mirror already is. New space for a copy goes on no node (and, when
/// failure domains are spread, in no domain) that another copy of the same volume uses, so that
/// losing one node (or domain) never takes more than one copy of any byte.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyPlace {
    /// Nodes holding extents of this copy.
    pub nodes: BTreeSet<u64>,
    /// Their failure domains.
    pub domains: BTreeSet<String>,
}

/// Finds `size` more bytes (rounded up to [`ALIGN`]) for every copy of a mirror whose copies are
/// now where `placed` says (one entry per copy, in copy order): one piece per copy, each on a
/// node that no other copy uses (old or new), or says which copy is short of what.
pub fn allocate_mirror_growth(
    cands: &[Candidate],
    placed: &[CopyPlace],
    size: u64,
    spread_domains: bool,
) -> Result<Vec<Piece>, String> {
    let (size, mut pool) = Pool::for_request(cands, size)?;
    let n = placed.len();
    match place_copies(&pool, placed, size, spread_domains) {
        Some(picks) => Ok(take_copies(&mut pool, &picks, size)),
        None => {
            let what = if spread_domains {
                "node outside the nodes and failure domains"
            } else {
                "node outside the nodes"
            };
            for (c, _) in placed.iter().enumerate() {
                let (nodes, domains) = others(placed, c);
                if pool
                    .able(size, |x| allowed(x, &nodes, &domains, spread_domains))
                    .is_empty()
                {
                    return Err(format!(
                        "copy {c} of mirror:{n} cannot grow by {}: no {what} of the other copies ({}) has {} free in one piece",
                        gib(size),
                        list(&nodes),
                        gib(size)
                    ));
                }
            }
            let able = pool.able(size, |_| true);
            Err(format!(
                "cannot grow mirror:{n} by {}: no choice among the nodes with {} free in one piece ({}) puts each copy on nodes no other copy uses",
                gib(size),
                gib(size),
                list(&able.keys().copied().collect())
            ))
        }
    }
}

/// Finds new places for the pieces of one mirror copy (`lengths`, in index order), on none of
/// the nodes (and with `spread_domains`, failure domains) of `others`, or says what is short. Used to replace a copy whose node was lost.
pub fn allocate_copy(
    cands: &[Candidate],
    others: &CopyPlace,
    lengths: &[u64],
    spread_domains: bool,
) -> Result<Vec<(DeviceKey, u64)>, String> {
    let mut pool = Pool {
        cands: cands.to_vec(),
    };
    let ok = |c: &Candidate| allowed(c, &others.nodes, &others.domains, spread_domains);
    let mut out = Vec::with_capacity(lengths.len());
    for &len in lengths {
        let Some((ci, ri)) = pool.best_fit(len, ok) else {
            let what = if spread_domains {
                "node outside the nodes and failure domains"
            } else {
                "node outside the nodes"
            };
            let able: BTreeSet<u64> = pool.able(len, |_| true).into_keys().collect();
            return Err(format!(
                "no {what} of the copies ({}) has {} free in one piece (nodes up with that much: {})",
                list(&others.nodes),
                gib(len),
                list(&able)
            ));
        };
        out.push(pool.take(ci, ri, len));
    }
    Ok(out)
}

fn list(nodes: &BTreeSet<u64>) -> String {
    let v: Vec<String> = nodes.iter().map(u64::to_string).collect();
    if v.is_empty() {
        "none".into()
    } else {
        format!("nodes {}", v.join(", "))
    }
}

/// The nodes and domains every copy but `c` uses.
fn others(placed: &[CopyPlace], c: usize) -> (BTreeSet<u64>, BTreeSet<String>) {
    let mut nodes = BTreeSet::new();
    let mut domains = BTreeSet::new();
    for p in placed
        .iter()
        .enumerate()
        .filter(|(o, _)| *o != c)
        .map(|(_, p)| p)
    {
        nodes.extend(p.nodes.iter().copied());
        domains.extend(p.domains.iter().cloned());
    }
    (nodes, domains)
}

fn allowed(c: &Candidate, nodes: &BTreeSet<u64>, domains: &BTreeSet<String>, spread: bool) -> bool {
    !(nodes.contains(&c.key.node) || (spread && domains.contains(&c.failure_domain)))
}

/// Upper bound on the placements tried before giving up (only reached by pools built to defeat
/// the preference order; an honest refusal is better than an unbounded search).
const PLACEMENT_STEPS: usize = 100_000;

/// Chooses a free range for every copy: distinct nodes, none used by another copy, and with
/// `spread` distinct failure domains, none used by another copy. Each copy tries its options in
/// best-fit order and the search backtracks, so the first answer is what greedy best fit gives
/// whenever greedy succeeds. Pieces of different copies are on different nodes, so taking one
/// never changes another's options.
fn place_copies(
    pool: &Pool,
    placed: &[CopyPlace],
    size: u64,
    spread: bool,
) -> Option<Vec<(usize, usize)>> {
    // Every copy needs a node of its own: refuse a count no pool can hold before any work
    // that grows with it.
    let nodes: BTreeSet<u64> = pool.cands.iter().map(|c| c.key.node).collect();
    if placed.len() > nodes.len() {
        return None;
    }
    // Per copy: the best-fit range of each allowed node, best first.
    let options: Vec<Vec<(usize, usize)>> = (0..placed.len())
        .map(|c| {
            let (nodes, domains) = others(placed, c);
            let mut best: BTreeMap<u64, (u64, Reverse<u64>, usize, usize)> = BTreeMap::new();
            for (ci, cand) in pool.cands.iter().enumerate() {
                if !allowed(cand, &nodes, &domains, spread) {
                    continue;
                }
                for (ri, r) in cand.free.iter().enumerate().filter(|(_, r)| r.1 >= size) {
                    let key = (r.1, Reverse(pool.node_free(cand.key.node)), ci, ri);
                    let slot = best.entry(cand.key.node).or_insert(key);
                    if key < *slot {
                        *slot = key;
                    }
                }
            }
            let mut v: Vec<_> = best.into_values().collect();
            v.sort();
            v.into_iter().map(|k| (k.2, k.3)).collect()
        })
        .collect();
    let mut picks = Vec::with_capacity(placed.len());
    let mut steps = 0;
    search(pool, &options, spread, &mut picks, &mut steps).then_some(picks)
}

fn search(
    pool: &Pool,
    options: &[Vec<(usize, usize)>],
    spread: bool,
    picks: &mut Vec<(usize, usize)>,
    steps: &mut usize,
) -> bool {
    let c = picks.len();
    if c == options.len() {
        return true;
    }
    for &(ci, ri) in &options[c] {
        *steps += 1;
        if *steps > PLACEMENT_STEPS {
            return false;
        }
        let cand = &pool.cands[ci];
        // Not on a node, or in a domain, an earlier copy's new piece took (every copy's old
        // nodes and domains are out of the other copies' `options` already).
        let clash = picks.iter().any(|&(oci, _)| {
            let other = &pool.cands[oci];
            other.key.node == cand.key.node
                || (spread && other.failure_domain == cand.failure_domain)
        });
        if clash {
            continue;
        }
        picks.push((ci, ri));
        if search(pool, options, spread, picks, steps) {
            return true;
        }
        picks.pop();
    }
    false
}

/// Takes `size` bytes for each copy from the chosen ranges (one per copy, on distinct nodes).
fn take_copies(pool: &mut Pool, picks: &[(usize, usize)], size: u64) -> Vec<Piece> {
    picks
        .iter()
        .enumerate()
        .map(|(copy, &(ci, ri))| {
            let (key, offset) = pool.take(ci, ri, size);
            Piece {
                key,
                offset,
                length: size,
                copy: copy as u32,
                index: 0,
            }
        })
        .collect()
}

/// Free ranges of `[start, start+len)` once `used` ranges are taken out (all aligned).
pub fn free_ranges(start: u64, len: u64, used: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut used: Vec<(u64, u64)> = used.to_vec();
    used.sort();
    let (mut at, end) = (align_up(start), start + len);
    let mut out = Vec::new();
    for (s, l) in used {
        if s > at {
            let stop = s.min(end);
            if stop > at {
                out.push((at, (stop - at) / ALIGN * ALIGN));
            }
        }
        at = at.max(s + l);
    }
    if end > at && (end - at) >= ALIGN {
        out.push((at, (end - at) / ALIGN * ALIGN));
    }
    out.retain(|r| r.1 > 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn cand(node: u64, device: u32, free: u64, domain: &str) -> Candidate {
        Candidate {
            key: DeviceKey { node, device },
            failure_domain: domain.into(),
            free: vec![(0, free)],
        }
    }

    #[test]
    fn single_is_best_fit() {
        let c = [
            cand(1, 0, 10 * G, "a"),
            cand(2, 0, 3 * G, "b"),
            cand(3, 0, 5 * G, "c"),
        ];
        let p = allocate(&c, Layout::Single, 2 * G, false).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key.node, 2, "the smallest piece that fits");
        let e = allocate(&c, Layout::Single, 11 * G, false).unwrap_err();
        assert!(e.contains("largest free piece is 10G"), "{e}");
    }

    #[test]
    fn concat_spans_devices() {
        let c = [cand(1, 0, 4 * G, "a"), cand(2, 0, 3 * G, "b")];
        let p = allocate(&c, Layout::Concat, 6 * G, false).unwrap();
        assert_eq!(p.iter().map(|x| x.length).sum::<u64>(), 6 * G);
        assert_eq!(p.iter().map(|x| x.index).collect::<Vec<_>>(), vec![0, 1]);
        assert!(allocate(&c, Layout::Concat, 8 * G, false)
            .unwrap_err()
            .contains("has 7G free"));
    }

    #[test]
    fn mirror_uses_different_nodes_and_domains_and_says_what_is_short() {
        let c = [
            cand(1, 0, 50 * G, "r1"),
            cand(1, 1, 50 * G, "r1"),
            cand(2, 0, 50 * G, "r1"),
            cand(3, 0, 10 * G, "r2"),
        ];
        let p = allocate(&c, Layout::Mirror { copies: 2 }, 40 * G, false).unwrap();
        assert_ne!(p[0].key.node, p[1].key.node);
        assert_eq!((p[0].copy, p[1].copy), (0, 1));
        let e = allocate(&c, Layout::Mirror { copies: 3 }, 40 * G, false).unwrap_err();
        assert_eq!(e, "need 3 nodes with 40G free for mirror:3, have 2");
        let e = allocate(&c, Layout::Mirror { copies: u32::MAX }, G, false).unwrap_err();
        assert!(e.starts_with("need 4294967295 nodes"), "{e}");
        let e = allocate(&c, Layout::Mirror { copies: 2 }, 40 * G, true).unwrap_err();
        assert!(e.contains("different failure domains"), "{e}");
        assert!(allocate(&c, Layout::Mirror { copies: 2 }, 10 * G, true).is_ok());
    }

    fn place(nodes: &[u64], domains: &[&str]) -> CopyPlace {
        CopyPlace {
            nodes: nodes.iter().copied().collect(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn mirror_growth_stays_off_other_copies_and_searches_past_greedy() {
        let c = [
            cand(1, 0, 0, "a"),
            cand(2, 0, 0, "b"),
            cand(3, 0, 10 * G, "d"),
            cand(4, 0, 50 * G, "d"),
        ];
        // Copy 0 is on nodes 1 and 4, copy 1 on node 2: node 3 is the best fit for copy 0, but
        // copy 1 can go nowhere else, so copy 0 takes node 4 (its own).
        let placed = [place(&[1, 4], &["a", "d"]), place(&[2], &["b"])];
        let p = allocate_mirror_growth(&c, &placed, 8 * G, false).unwrap();
        let nodes: Vec<(u32, u64)> = p.iter().map(|x| (x.copy, x.key.node)).collect();
        assert_eq!(nodes, vec![(0, 4), (1, 3)]);
        // Spread: the new pieces may not share a domain either.
        let placed = [place(&[1], &["a"]), place(&[2], &["b"])];
        assert!(allocate_mirror_growth(&c, &placed, 8 * G, false).is_ok());
        let e = allocate_mirror_growth(&c, &placed, 8 * G, true).unwrap_err();
        assert_eq!(
            e,
            "cannot grow mirror:2 by 8G: no choice among the nodes with 8G free in one piece \
             (nodes 3, 4) puts each copy on nodes no other copy uses"
        );
        let placed = [place(&[1], &["a"]), place(&[3, 4], &["d"])];
        let e = allocate_mirror_growth(&c, &placed, 8 * G, false).unwrap_err();
        assert_eq!(
            e,
            "copy 0 of mirror:2 cannot grow by 8G: no node outside the nodes of the other \
             copies (nodes 3, 4) has 8G free in one piece"
        );
    }

    #[test]
    fn stripe_prefers_distinct_nodes_and_rounds_to_the_unit() {
        let c = [
            cand(1, 0, 10 * G, "a"),
            cand(1, 1, 10 * G, "a"),
            cand(2, 0, 10 * G, "b"),
        ];
        let p = allocate(&c, Layout::Stripe { width: 2, unit: 0 }, 3 * G + 1, false).unwrap();
        assert_eq!(p.len(), 2);
        assert_ne!(p[0].key.node, p[1].key.node);
        assert!(p
            .iter()
            .all(|x| x.length % DEFAULT_STRIPE_UNIT == 0 && 2 * x.length > 3 * G));
        let p = allocate(
            &c,
            Layout::Stripe {
                width: 3,
                unit: 1 << 20,
            },
            3 * G,
            false,
        )
        .unwrap();
        assert_eq!(p.len(), 3, "falls back to a second device on a node");
        let e = allocate(&c, Layout::Stripe { width: 4, unit: 0 }, 4 * G, false).unwrap_err();
        assert!(e.starts_with("need 4 devices"), "{e}");
    }

    #[test]
    fn free_ranges_subtract_used_extents() {
        let f = free_ranges(4096, 100 * 4096, &[(4096 * 11, 4096 * 10), (4096, 4096)]);
        assert_eq!(f, vec![(8192, 9 * 4096), (21 * 4096, 80 * 4096)]);
        assert_eq!(free_ranges(0, 8192, &[(0, 8192)]), vec![]);
    }

    proptest::proptest! {
        #[test]
        fn pieces_never_overlap_and_cover_the_size(
            frees in proptest::collection::vec(1u64..64, 1..6),
            size in 1u64..200,
            kind in 0u8..4,
        ) {
            let c: Vec<Candidate> = frees.iter().enumerate().map(|(i, f)| cand(i as u64 / 2, i as u32 % 2, f * (1 << 20), "d")).collect();
            let layout = match kind {
                0 => Layout::Single,
                1 => Layout::Concat,
                2 => Layout::Stripe { width: 2, unit: 1 << 20 },
                _ => Layout::Mirror { copies: 2 },
            };
            let size = size * (1 << 20);
            if let Ok(p) = allocate(&c, layout, size, false) {
                for (i, a) in p.iter().enumerate() {
                    for b in &p[i + 1..] {
                        proptest::prop_assert!(a.key != b.key || a.offset + a.length <= b.offset || b.offset + b.length <= a.offset);
                    }
                    let cap = c.iter().find(|x| x.key == a.key).unwrap().free[0].1;
                    proptest::prop_assert!(a.offset + a.length <= cap);
                }
                let per_copy: u64 = p.iter().filter(|x| x.copy == 0).map(|x| x.length).sum();
                proptest::prop_assert!(per_copy >= size);
            }
        }
    }
}
