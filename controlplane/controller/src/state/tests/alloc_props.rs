//! The allocator's invariants under random creates (every layout), grows, shrinks, deletes,
//! purges, discards and node failures, checked against a model of what each range held.

use std::collections::BTreeSet;

use super::*;
use proptest::prelude::*;

const M: u64 = 1 << 20;
/// Each device lends 56 MiB after an 8 MiB reservation for its owner.
const RESERVED: u64 = 8 * M;
const LENDABLE: u64 = 56 * M;
const NODES: u64 = 4;

#[derive(Clone, Debug)]
enum Op {
    Create(u8, u64, u8),
    Resize(u8, u64),
    Delete(u8),
    /// Purge the n-th DELETING volume (its extents were discarded), counting round.
    Purge(u8),
    /// The n-th freed range was discarded (counting round).
    Discarded(u8),
    Down(u8),
    Gone(u8),
    Up(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 1u64..48, 0u8..7).prop_map(|(v, s, l)| Op::Create(v, s, l)),
        4 => (0u8..6, 1u64..80).prop_map(|(v, s)| Op::Resize(v, s)),
        1 => (0u8..6).prop_map(Op::Delete),
        2 => (0u8..4).prop_map(Op::Purge),
        2 => (0u8..8).prop_map(Op::Discarded),
        1 => (1u8..=NODES as u8).prop_map(Op::Down),
        1 => (1u8..=NODES as u8).prop_map(Op::Gone),
        1 => (1u8..=NODES as u8).prop_map(Op::Up),
    ]
}

fn layout(i: u8) -> (Layout, bool) {
    match i {
        0 => (Layout::Single, false),
        1 => (Layout::Concat, false),
        2 => (Layout::Stripe { width: 2, unit: M }, false),
        3 => (Layout::Stripe { width: 3, unit: M }, false),
        4 => (Layout::Mirror { copies: 2 }, false),
        5 => (Layout::Mirror { copies: 3 }, false),
        _ => (Layout::Mirror { copies: 2 }, true),
    }
}

fn register(s: &mut State, id: u64, now_ms: u64) {
    // Ids are the controller's to assign: a node new to the state registers with 0 and, as the
    // pool is built first, gets the next id, which is `id`.
    let claim = if s.nodes.contains_key(&id) { id } else { 0 };
    let out = apply(
        s,
        Command::Register {
            node_id: claim,
            address: format!("n{id}:1"),
            version: String::new(),
            failure_domain: format!("rack{}", id % 2),
            name: String::new(),
            data_tls: false,
            now_ms,
        },
    )
    .unwrap();
    assert!(matches!(out, Outcome::Node(n) if n.id == id));
}

/// Four nodes in two racks; nodes 1 and 2 have two devices, 3 and 4 one.
fn pool() -> State {
    let mut s = State::default();
    for id in 1..=NODES {
        register(&mut s, id, 0);
        let devices = (0..if id <= 2 { 2 } else { 1 })
            .map(|d| DeviceRec {
                read_iops: 0,
                write_iops: 0,
                mib_s: 0,
                device_id: d,
                path: format!("d{d}"),
                block_size: 4096,
                size: RESERVED + LENDABLE,
                lendable_start: RESERVED,
                lendable_length: LENDABLE,
                reserved_start: 0,
                reserved_length: RESERVED,
            })
            .collect();
        apply(
            &mut s,
            Command::ReportDevices {
                node_id: id,
                devices,
            },
        )
        .unwrap();
    }
    s
}

type Range = (DeviceKey, u64, u64);

fn pieces(s: &State) -> Vec<Range> {
    s.volumes
        .values()
        .flat_map(|v| v.extents.iter())
        .map(|e| (e.piece.key, e.piece.offset, e.piece.offset + e.piece.length))
        .collect()
}

fn overlap(a: &Range, b: &Range) -> bool {
    a.0 == b.0 && a.1 < b.2 && b.1 < a.2
}

/// `r` less every range of `minus`.
fn subtract(r: Range, minus: &[Range]) -> Vec<Range> {
    let mut out = vec![r];
    for m in minus.iter().filter(|m| m.0 == r.0) {
        out = out
            .into_iter()
            .flat_map(|x| {
                if !overlap(&x, m) {
                    return vec![x];
                }
                let mut v = Vec::new();
                if x.1 < m.1 {
                    v.push((x.0, x.1, m.1));
                }
                if m.2 < x.2 {
                    v.push((x.0, m.2, x.2));
                }
                v
            })
            .collect();
    }
    out
}

fn len(r: &Range) -> u64 {
    r.2 - r.1
}

/// What the test knows beyond the state: bytes a volume gave up that were not discarded since,
/// and per range every epoch a token (or a discard) for it may have carried.
#[derive(Default)]
struct Model {
    dirty: Vec<Range>,
    seen: Vec<(Range, u64)>,
}

impl Model {
    fn observe(&mut self, s: &State) {
        for v in s.volumes.values() {
            for e in &v.extents {
                let p = e.piece;
                let r = (p.key, p.offset, p.offset + p.length);
                self.seen.push((r, e.token_epoch(v.epoch)));
            }
        }
        for f in &s.freed {
            self.seen.push(((f.key, f.offset, f.end()), f.epoch));
        }
    }
}

fn check(s: &State, before: &State, model: &Model) -> Result<(), TestCaseError> {
    let all = pieces(s);
    let freed: Vec<Range> = s.freed.iter().map(|f| (f.key, f.offset, f.end())).collect();
    // Inside what a device lends; no overlap with another extent or a waiting range.
    for (i, a) in all.iter().chain(&freed).enumerate() {
        prop_assert!(
            a.1 >= RESERVED && a.2 <= RESERVED + LENDABLE && a.1 < a.2,
            "outside the lendable area: {a:?}"
        );
        for b in all.iter().chain(&freed).skip(i + 1) {
            prop_assert!(!overlap(a, b), "{a:?} overlaps {b:?}");
        }
    }
    // Nothing is allocated on bytes that wait for their discard; the state waits for exactly
    // as many bytes as the model says were given up.
    for a in &all {
        for d in &model.dirty {
            prop_assert!(!overlap(a, d), "{a:?} allocated on undiscarded {d:?}");
        }
    }
    prop_assert_eq!(
        freed.iter().map(len).sum::<u64>(),
        model.dirty.iter().map(len).sum::<u64>()
    );
    // used + free + waiting = lendable, on every device of every node that is up.
    let cands = candidates(s);
    for n in s.nodes.values().filter(|n| n.state == NodeState::Up) {
        for d in &n.devices {
            let key = DeviceKey {
                node: n.id,
                device: d.device_id,
            };
            let free: u64 = cands
                .iter()
                .filter(|c| c.key == key)
                .flat_map(|c| c.free.iter().map(|r| r.1))
                .sum();
            let used: u64 = all.iter().filter(|r| r.0 == key).map(len).sum();
            let waiting: u64 = freed.iter().filter(|r| r.0 == key).map(len).sum();
            prop_assert_eq!(free + used + waiting, LENDABLE, "device {:?}", key);
        }
    }
    // Mirror copies on disjoint nodes (and failure domains when spread).
    for v in s.volumes.values() {
        let Layout::Mirror { copies } = v.layout else {
            continue;
        };
        let nodes = |c: u32| -> BTreeSet<u64> {
            v.extents
                .iter()
                .filter(|e| e.piece.copy == c)
                .map(|e| e.piece.key.node)
                .collect()
        };
        for a in 0..copies {
            for b in a + 1..copies {
                let (na, nb) = (nodes(a), nodes(b));
                prop_assert!(
                    na.is_disjoint(&nb),
                    "{}: copy {a} on {na:?}, copy {b} on {nb:?}",
                    v.name
                );
                if v.req.spread_failure_domains {
                    let dom = |ns: &BTreeSet<u64>| -> BTreeSet<String> {
                        ns.iter()
                            .map(|n| s.nodes[n].failure_domain.clone())
                            .collect()
                    };
                    prop_assert!(dom(&na).is_disjoint(&dom(&nb)), "{}: domains", v.name);
                }
            }
        }
    }
    // A new extent's epoch is newer than any epoch its range saw before.
    let old: BTreeSet<Range> = pieces(before).into_iter().collect();
    for v in s.volumes.values() {
        for e in &v.extents {
            let p = e.piece;
            let r = (p.key, p.offset, p.offset + p.length);
            if old.iter().any(|o| o.0 == r.0 && o.1 == r.1) {
                continue;
            }
            for (sr, epoch) in model.seen.iter().filter(|(sr, _)| overlap(sr, &r)) {
                prop_assert!(
                    e.epoch > *epoch,
                    "{r:?} at epoch {} but {sr:?} saw {epoch}",
                    e.epoch
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn allocation_keeps_its_invariants(ops in proptest::collection::vec(op(), 1..60)) {
        let mut s = pool();
        let mut model = Model::default();
        model.observe(&s);
        for (t, op) in ops.into_iter().enumerate() {
            let now = 1000 + 10 * t as u64;
            let before = s.clone();
            let mut purged = false;
            let r = match op {
                Op::Create(v, size, l) => {
                    let (layout, spread) = layout(l);
                    apply(&mut s, Command::CreateVolume {
                        headroom_pct: 10,
                        name: format!("v{v}"),
                        size: size * M,
                        layout,
                        req: Requirements { spread_failure_domains: spread, ..Default::default() },
                        now_ms: now,
                    })
                }
                Op::Resize(v, size) => apply(&mut s, Command::ResizeVolume { name: format!("v{v}"), size: size * M, headroom_pct: 10 }),
                Op::Delete(v) => apply(&mut s, Command::DeleteVolume { name: format!("v{v}") }),
                Op::Purge(i) => {
                    let deleting: Vec<String> = s.volumes.values().filter(|v| v.deleting).map(|v| v.name.clone()).collect();
                    let Some(name) = deleting.get(usize::from(i) % deleting.len().max(1)).cloned() else { continue };
                    purged = true;
                    apply(&mut s, Command::PurgeVolume { name })
                }
                Op::Discarded(i) => {
                    let Some(f) = s.freed.get(usize::from(i) % s.freed.len().max(1)).copied() else { continue };
                    let r = apply(&mut s, Command::Discarded { key: f.key, offset: f.offset, length: f.length });
                    if r.is_ok() {
                        let done = (f.key, f.offset, f.end());
                        model.dirty = model.dirty.iter().flat_map(|d| subtract(*d, &[done])).collect();
                    }
                    r
                }
                Op::Down(n) => {
                    // Everyone else beats; node n falls silent long enough to be marked down.
                    for id in 1..=NODES {
                        if id != u64::from(n) && s.nodes[&id].state == NodeState::Up {
                            apply(&mut s, Command::Heartbeat { node_id: id, usage: vec![], now_ms: now, rebuilds: vec![] }).unwrap();
                        }
                    }
                    let r = apply(&mut s, Command::Tick { now_ms: now, heartbeat_ms: 1 });
                    if s.nodes[&u64::from(n)].last_heartbeat_ms + 3 < now {
                        prop_assert_ne!(s.nodes[&u64::from(n)].state, NodeState::Up);
                    }
                    r
                }
                Op::Gone(n) => apply(&mut s, Command::Deregister { node_id: n.into() }),
                Op::Up(n) => {
                    register(&mut s, n.into(), now);
                    Ok(Outcome::Done)
                }
            };
            if r.is_err() {
                prop_assert_eq!(&s, &before, "a refused command changed the state");
            }
            // Bytes a volume gave up (other than by a purge after their discard) are dirty.
            if !purged {
                let now_held = pieces(&s);
                for p in pieces(&before) {
                    model.dirty.extend(subtract(p, &now_held));
                }
            }
            check(&s, &before, &model)?;
            model.observe(&s);
        }
    }
}
