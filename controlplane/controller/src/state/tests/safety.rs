//! Allocation safety: a shrink's freed tail waits for its discard, a grown mirror keeps its copies
//! on separate nodes, and a reused range's new owner is not fenced off by its old one.

use super::*;

fn resize(s: &mut State, name: &str, size: u64) -> Result<VolumeRec, Error> {
    match apply(
        s,
        Command::ResizeVolume {
            headroom_pct: 10,
            name: name.into(),
            size,
        },
    )? {
        Outcome::Volume(v) => Ok(v),
        o => panic!("{o:?}"),
    }
}

fn overlaps(p: &Piece, f: &FreedRange) -> bool {
    p.key == f.key && p.offset < f.end() && f.offset < p.offset + p.length
}

#[test]
fn a_shrunk_volumes_tail_is_not_allocated_again_until_discarded() {
    let mut s = pool(1);
    let a = create(&mut s, "a", 64 * G, Layout::Single).unwrap();
    assert_eq!(a.extents[0].piece.offset, 0);
    resize(&mut s, "a", 32 * G).unwrap();
    assert_eq!(s.freed.len(), 1);
    let f = s.freed[0];
    assert_eq!((f.offset, f.length, f.volume_id), (32 * G, 32 * G, a.id));
    assert!(
        f.epoch > s.volumes["a"].epoch,
        "the discard fences every token the range saw"
    );
    // 68G would fit only by taking the freed tail, which still holds a's data.
    let e = create(&mut s, "b", 68 * G, Layout::Concat).unwrap_err();
    assert!(matches!(e, Error::Insufficient(_)), "{e}");
    // Neither a create nor a grow (of the shrunk volume itself) gets any of it.
    let b = create(&mut s, "b", 20 * G, Layout::Single).unwrap();
    let a = resize(&mut s, "a", 40 * G).unwrap();
    for p in a.extents.iter().chain(&b.extents).map(|e| e.piece) {
        assert!(!overlaps(&p, &f), "{p:?} is on the undiscarded {f:?}");
    }
    // Once discarded it is allocatable again, and only once.
    let done = Command::Discarded {
        key: f.key,
        offset: f.offset,
        length: f.length,
    };
    apply(&mut s, done.clone()).unwrap();
    assert!(s.freed.is_empty());
    let before = s.clone();
    assert!(matches!(apply(&mut s, done), Err(Error::Invalid(_))));
    assert_eq!(s, before);
    let c = create(&mut s, "c", 32 * G, Layout::Single).unwrap();
    assert_eq!(
        c.extents[0].piece.offset,
        32 * G,
        "the discarded range is reused"
    );
}

#[test]
fn every_layout_gives_back_what_a_shrink_cuts_off() {
    let mut s = pool(3);
    for (name, layout) in [
        ("c", Layout::Concat),
        (
            "st",
            Layout::Stripe {
                width: 2,
                unit: 1 << 20,
            },
        ),
        ("m", Layout::Mirror { copies: 2 }),
    ] {
        create(&mut s, name, 4 * G, layout).unwrap();
        resize(&mut s, name, 8 * G).unwrap();
        let before = s.volumes[name].clone();
        let held = |v: &VolumeRec| v.extents.iter().map(|e| e.piece.length).sum::<u64>();
        let waiting = |s: &State| s.freed.iter().map(|f| f.length).sum::<u64>();
        let w0 = waiting(&s);
        let after = resize(&mut s, name, 3 * G).unwrap();
        assert_eq!(
            waiting(&s) - w0,
            held(&before) - held(&after),
            "{name}: every byte cut off waits for its discard"
        );
        assert!(held(&after) < held(&before), "{name}");
    }
}

/// Three nodes: a mirror on nodes 1 and 2, and the pool filled so that the best fit for more
/// space is node 2 for copy 0 (on node 1) and node 1 for copy 1.
fn crossed_mirror() -> State {
    let mut s = pool(3);
    let m = create(&mut s, "m", 10 * G, Layout::Mirror { copies: 2 }).unwrap();
    let nodes: Vec<u64> = m.extents.iter().map(|e| e.piece.key.node).collect();
    assert_eq!(nodes, vec![1, 2]);
    let f = create(&mut s, "f", 80 * G, Layout::Single).unwrap();
    let g = create(&mut s, "g", 85 * G, Layout::Single).unwrap();
    assert_eq!(
        (f.extents[0].piece.key.node, g.extents[0].piece.key.node),
        (1, 2)
    );
    s
}

fn copy_nodes(v: &VolumeRec, copy: u32) -> std::collections::BTreeSet<u64> {
    v.extents
        .iter()
        .filter(|e| e.piece.copy == copy)
        .map(|e| e.piece.key.node)
        .collect()
}

#[test]
fn a_grown_mirror_keeps_each_copy_off_the_other_copies_nodes() {
    let mut s = crossed_mirror();
    let m = resize(&mut s, "m", 14 * G).unwrap();
    assert_eq!(m.extents.len(), 4);
    let (c0, c1) = (copy_nodes(&m, 0), copy_nodes(&m, 1));
    assert!(c0.is_disjoint(&c1), "copy 0 on {c0:?}, copy 1 on {c1:?}");
    // Losing any one node leaves a whole copy.
    for dead in 1..=3u64 {
        assert!(
            !c0.contains(&dead) || !c1.contains(&dead),
            "node {dead} holds both copies"
        );
    }
    // With the other copy's nodes full and no third node, growth is refused, saying why.
    apply(&mut s, Command::Deregister { node_id: 3 }).unwrap();
    let e = resize(&mut s, "m", 30 * G).unwrap_err();
    let Error::Insufficient(msg) = e else {
        panic!("{e}")
    };
    assert!(
        msg.contains("copy 0 of mirror:2 cannot grow by 16G"),
        "{msg}"
    );
}

#[test]
fn mirror_growth_spreads_failure_domains_when_asked() {
    // Nodes 1..4 in racks 0,1,0,1; a spread mirror's copies each keep to their own rack.
    let mut s = pool(4);
    apply(
        &mut s,
        Command::CreateVolume {
            headroom_pct: 10,
            name: "m".into(),
            size: 10 * G,
            layout: Layout::Mirror { copies: 2 },
            req: Requirements {
                spread_failure_domains: true,
                ..Default::default()
            },
            now_ms: 0,
        },
    )
    .unwrap();
    // Fill the copies' own nodes, so growth has to move to nodes 3 and 4.
    create(&mut s, "f1", 90 * G, Layout::Single).unwrap();
    create(&mut s, "f2", 90 * G, Layout::Single).unwrap();
    // Node 4 (rack 1) becomes the best fit for copy 0's growth.
    create(&mut s, "f3", 50 * G, Layout::Single).unwrap();
    create(&mut s, "f4", 60 * G, Layout::Single).unwrap();
    assert_eq!(s.volumes["f4"].extents[0].piece.key.node, 4);
    let m = resize(&mut s, "m", 20 * G).unwrap();
    let domain = |n: &u64| s.nodes[n].failure_domain.clone();
    let d0: std::collections::BTreeSet<String> = copy_nodes(&m, 0).iter().map(domain).collect();
    let d1: std::collections::BTreeSet<String> = copy_nodes(&m, 1).iter().map(domain).collect();
    assert!(d0.is_disjoint(&d1), "copy 0 in {d0:?}, copy 1 in {d1:?}");
}

/// What a node keeps per device range: the newest epoch admitted (as `dataplane/node/src/fence.rs`).
#[derive(Default)]
struct Fences(Vec<(DeviceKey, u64, u64, u64)>);

impl Fences {
    fn newest(&self, key: DeviceKey, start: u64, end: u64) -> u64 {
        self.0
            .iter()
            .filter(|f| f.0 == key && f.1 < end && start < f.2)
            .map(|f| f.3)
            .max()
            .unwrap_or(0)
    }

    /// Admits `epoch` for the range or refuses it as StaleEpoch.
    fn admit(&mut self, key: DeviceKey, start: u64, end: u64, epoch: u64) -> Result<(), u64> {
        let newest = self.newest(key, start, end);
        if newest > epoch {
            return Err(newest);
        }
        self.0.push((key, start, end, epoch));
        Ok(())
    }

    /// Opens every extent of `v` with the tokens a lease of `lease_epoch` gets (as
    /// `service.rs::mount_info` mints them); returns each connection's (extent, epoch).
    fn open(&mut self, v: &VolumeRec, lease_epoch: u64) -> Result<Vec<(Piece, u64)>, String> {
        v.extents
            .iter()
            .map(|e| {
                let p = e.piece;
                let epoch = e.token_epoch(lease_epoch);
                self.admit(p.key, p.offset, p.offset + p.length, epoch)
                    .map(|()| (p, epoch))
                    .map_err(|n| format!("{p:?}: epoch {epoch} is older than {n}"))
            })
            .collect()
    }

    /// Whether a connection is still current (else its next request gets StaleEpoch).
    fn current(&self, c: &(Piece, u64)) -> bool {
        self.newest(c.0.key, c.0.offset, c.0.offset + c.0.length) <= c.1
    }
}

#[test]
fn a_range_a_newer_deleted_volume_fenced_serves_its_new_owner() {
    let mut s = pool(1);
    let mut node = Fences::default();
    create(&mut s, "a", G, Layout::Single).unwrap();
    let b = create(&mut s, "b", G, Layout::Single).unwrap();
    let w = mount(&mut s, "a", "writer", true).unwrap();
    let writer = node.open(&s.volumes["a"], w.epoch).unwrap();
    // "b" is written under a newer read-write lease, deleted and discarded.
    let lb = mount(&mut s, "b", "h", true).unwrap();
    node.open(&s.volumes["b"], lb.epoch).unwrap();
    apply(
        &mut s,
        Command::Unmount {
            lease_id: lb.id,
            now_ms: 2,
        },
    )
    .unwrap();
    apply(&mut s, Command::DeleteVolume { name: "b".into() }).unwrap();
    let e = s.volumes["b"].extents[0];
    let p = e.piece;
    // The reaper's discard token (service.rs) is admitted.
    node.admit(
        p.key,
        p.offset,
        p.offset + p.length,
        e.token_epoch(s.volumes["b"].epoch),
    )
    .unwrap();
    apply(&mut s, Command::PurgeVolume { name: "b".into() }).unwrap();
    // "a" grows onto b's range while "a"'s writer holds its lease.
    let a = resize(&mut s, "a", 2 * G).unwrap();
    assert_eq!(a.extents[1].piece.offset, b.extents[0].piece.offset);
    assert!(a.extents[1].epoch > lb.epoch);
    // A reader mounts: every extent opens, and the writer is not fenced by it.
    let r = mount(&mut s, "a", "reader", false).unwrap();
    assert!(
        r.epoch < lb.epoch,
        "the volume's epoch alone would be refused"
    );
    let reader = node.open(&a, r.epoch).unwrap();
    // The writer renews (new tokens for the new extent) and stays current.
    let Outcome::Lease(w2, _) = apply(
        &mut s,
        Command::Renew {
            joined: vec![],
            lease_id: w.id,
            ttl_ms: 60_000,
            now_ms: 3000,
        },
    )
    .unwrap() else {
        panic!()
    };
    let writer2 = node.open(&a, w2.epoch).unwrap();
    assert!(writer.iter().chain(&writer2).all(|c| node.current(c)));
    // A new read-write lease (after the writer is revoked) fences every older holder.
    apply(
        &mut s,
        Command::Revoke {
            lease_id: w.id,
            now_ms: 4000,
        },
    )
    .unwrap();
    let w3 = mount(&mut s, "a", "writer-2", true).unwrap();
    let new = node.open(&s.volumes["a"], w3.epoch).unwrap();
    assert!(new.iter().all(|c| node.current(c)));
    for old in writer.iter().chain(&writer2).chain(&reader) {
        assert!(!node.current(old), "{old:?} is not fenced");
    }
}

#[test]
fn a_state_stored_before_extent_epochs_and_freed_ranges_loads() {
    let mut s = pool(2);
    create(&mut s, "m", G, Layout::Mirror { copies: 2 }).unwrap();
    let mut json = serde_json::to_value(&s).unwrap();
    json.as_object_mut().unwrap().remove("freed");
    for e in json["volumes"]["m"]["extents"].as_array_mut().unwrap() {
        e.as_object_mut().unwrap().remove("epoch");
    }
    let old: State = serde_json::from_value(json).unwrap();
    assert!(old.freed.is_empty());
    let e = old.volumes["m"].extents[0];
    assert_eq!(e.epoch, 0);
    assert_eq!(
        e.token_epoch(7),
        7,
        "tokens carry the lease's epoch, as before"
    );
}
