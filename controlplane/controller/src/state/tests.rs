use super::*;

mod alloc_props;
mod bounds;
mod compat;
mod failures;
mod lifecycle;
mod qos;
mod replace;
mod safety;
mod versions;

const G: u64 = 1 << 30;

fn dev(id: u32, size: u64) -> DeviceRec {
    DeviceRec {
        read_iops: 0,
        write_iops: 0,
        mib_s: 0,
        device_id: id,
        path: format!("/dev/x{id}"),
        block_size: 4096,
        size,
        lendable_start: 0,
        lendable_length: size,
        reserved_start: 0,
        reserved_length: 0,
    }
}

/// A pool of `n` nodes with one 100 GiB device each.
fn pool(n: u64) -> State {
    let mut s = State::default();
    for i in 0..n {
        let Outcome::Node(node) = apply(
            &mut s,
            Command::Register {
                node_id: 0,
                address: format!("10.0.0.{i}:7700"),
                version: "t".into(),
                failure_domain: format!("rack{}", i % 2),
                name: String::new(),
                data_tls: false,
                now_ms: 0,
            },
        )
        .unwrap() else {
            panic!()
        };
        apply(
            &mut s,
            Command::ReportDevices {
                node_id: node.id,
                devices: vec![dev(0, 100 * G)],
            },
        )
        .unwrap();
    }
    s
}

fn create(s: &mut State, name: &str, size: u64, layout: Layout) -> Result<VolumeRec, Error> {
    match apply(
        s,
        Command::CreateVolume {
            headroom_pct: 10,
            name: name.into(),
            size,
            layout,
            req: Requirements {
                price_per_gib_hour: 0.5,
                ..Default::default()
            },
            now_ms: 0,
        },
    )? {
        Outcome::Volume(v) => Ok(v),
        o => panic!("{o:?}"),
    }
}

fn mount(s: &mut State, vol: &str, host: &str, rw: bool) -> Result<LeaseRec, Error> {
    match apply(
        s,
        Command::Mount {
            volume: vol.into(),
            host: host.into(),
            rw,
            ttl_ms: 60_000,
            now_ms: 1000,
            holder: None,
        },
    )? {
        Outcome::Lease(l, _) => Ok(l),
        o => panic!("{o:?}"),
    }
}

#[test]
fn registration_keeps_the_id_across_restarts() {
    let mut s = pool(1);
    let id = *s.nodes.keys().next().unwrap();
    let Outcome::Node(n) = apply(
        &mut s,
        Command::Register {
            node_id: id,
            address: "10.0.0.9:1".into(),
            version: "t2".into(),
            failure_domain: String::new(),
            name: String::new(),
            data_tls: false,
            now_ms: 5,
        },
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(n.id, id);
    assert_eq!(n.address, "10.0.0.9:1");
    assert_eq!(n.devices.len(), 1, "devices survive a re-registration");
    assert_eq!(s.nodes.len(), 1);
}

#[test]
fn every_layout_allocates_and_volumes_share_devices_disjointly() {
    let mut s = pool(3);
    let a = create(&mut s, "a", 10 * G, Layout::Single).unwrap();
    let b = create(&mut s, "b", 10 * G, Layout::Single).unwrap();
    let m = create(&mut s, "m", 40 * G, Layout::Mirror { copies: 3 }).unwrap();
    let st = create(
        &mut s,
        "st",
        20 * G,
        Layout::Stripe {
            width: 2,
            unit: 64 << 10,
        },
    )
    .unwrap();
    let c = create(&mut s, "c", 100 * G, Layout::Concat).unwrap();
    assert_eq!(m.extents.len(), 3);
    assert_eq!(st.extents.len(), 2);
    assert!(c.extents.len() >= 2);
    let all: Vec<Piece> = [a, b, m, st, c]
        .iter()
        .flat_map(|v| v.extents.iter().map(|e| e.piece))
        .collect();
    for (i, x) in all.iter().enumerate() {
        for y in &all[i + 1..] {
            assert!(
                x.key != y.key
                    || x.offset + x.length <= y.offset
                    || y.offset + y.length <= x.offset,
                "{x:?} overlaps {y:?}"
            );
        }
    }
    let e = create(&mut s, "big", 90 * G, Layout::Mirror { copies: 3 }).unwrap_err();
    assert!(e.to_string().contains("mirror:3"), "{e}");
    assert_eq!(
        create(&mut s, "a", G, Layout::Single).unwrap_err(),
        Error::VolumeExists("a".into())
    );
}

#[test]
fn owner_reservations_are_never_lent() {
    let mut s = State::default();
    let Outcome::Node(n) = apply(
        &mut s,
        Command::Register {
            node_id: 0,
            address: "n:1".into(),
            version: String::new(),
            failure_domain: String::new(),
            name: String::new(),
            data_tls: false,
            now_ms: 0,
        },
    )
    .unwrap() else {
        panic!()
    };
    let mut d = dev(0, 10 * G);
    d.lendable_start = 4 * G;
    d.lendable_length = 6 * G;
    d.reserved_length = 4 * G;
    apply(
        &mut s,
        Command::ReportDevices {
            node_id: n.id,
            devices: vec![d],
        },
    )
    .unwrap();
    let v = create(&mut s, "v", 6 * G, Layout::Single).unwrap();
    assert_eq!(v.extents[0].piece.offset, 4 * G);
    assert!(
        create(&mut s, "w", 4096, Layout::Single).is_err(),
        "nothing left outside the reservation"
    );
    let mut bad = dev(0, 10 * G);
    bad.lendable_start = 8 * G;
    let e = apply(
        &mut s,
        Command::ReportDevices {
            node_id: n.id,
            devices: vec![bad],
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
}

#[test]
fn one_read_write_lease_many_readers_and_epochs() {
    let mut s = pool(2);
    create(&mut s, "v", G, Layout::Single).unwrap();
    let w = mount(&mut s, "v", "host-a", true).unwrap();
    assert_eq!(w.epoch, 2);
    let e = mount(&mut s, "v", "host-b", true).unwrap_err();
    assert_eq!(
        e,
        Error::ReadWriteHeld {
            volume: "v".into(),
            lease: w.id,
            host: "host-a".into()
        }
    );
    let r1 = mount(&mut s, "v", "host-c", false).unwrap();
    let r2 = mount(&mut s, "v", "host-d", false).unwrap();
    assert_eq!((r1.epoch, r2.epoch), (2, 2));
    // Revoke bumps the epoch; the next writer gets a newer one still.
    let Outcome::Volume(v) = apply(
        &mut s,
        Command::Revoke {
            lease_id: w.id,
            now_ms: 2000,
        },
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(v.epoch, 3);
    let w2 = mount(&mut s, "v", "host-b", true).unwrap();
    assert_eq!(w2.epoch, 4);
    // A renewal picks up the current epoch.
    let Outcome::Lease(r1b, _) = apply(
        &mut s,
        Command::Renew {
            joined: vec![],
            lease_id: r1.id,
            ttl_ms: 1000,
            now_ms: 3000,
        },
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!((r1b.epoch, r1b.expires_at_ms), (4, 4000));
}

#[test]
fn leased_volumes_are_locked() {
    let mut s = pool(2);
    create(&mut s, "v", G, Layout::Single).unwrap();
    let l = mount(&mut s, "v", "host-a", false).unwrap();
    let e = apply(&mut s, Command::DeleteVolume { name: "v".into() }).unwrap_err();
    assert!(
        e.to_string().contains(&format!("lease {}", l.id)) && e.to_string().contains("host-a"),
        "{e}"
    );
    let e = apply(
        &mut s,
        Command::ResizeVolume {
            headroom_pct: 10,
            name: "v".into(),
            size: G / 2,
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Leased { .. }), "{e}");
    // Growing online is allowed while leased.
    let Outcome::Volume(v) = apply(
        &mut s,
        Command::ResizeVolume {
            headroom_pct: 10,
            name: "v".into(),
            size: 3 * G,
        },
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(v.size, 3 * G);
    assert_eq!(v.layout, Layout::Concat);
    assert_eq!(v.extents.iter().map(|e| e.piece.length).sum::<u64>(), 3 * G);
    apply(
        &mut s,
        Command::Unmount {
            lease_id: l.id,
            now_ms: 5,
        },
    )
    .unwrap();
    apply(&mut s, Command::DeleteVolume { name: "v".into() }).unwrap();
    // Deleting: the extents stay allocated (not reusable) until purged after the discard.
    assert!(s.volumes["v"].deleting);
    assert!(matches!(
        mount(&mut s, "v", "host-b", false),
        Err(Error::Invalid(_))
    ));
    let free_before = candidates(&s)[0].free.iter().map(|r| r.1).sum::<u64>();
    apply(&mut s, Command::PurgeVolume { name: "v".into() }).unwrap();
    assert!(s.volumes.is_empty());
    assert!(candidates(&s)[0].free.iter().map(|r| r.1).sum::<u64>() > free_before);
}

#[test]
fn refused_commands_change_nothing() {
    let mut s = pool(1);
    let before = s.clone();
    assert!(create(&mut s, "m", G, Layout::Mirror { copies: 2 }).is_err());
    assert!(create(&mut s, "bad name!", G, Layout::Single).is_err());
    assert!(apply(
        &mut s,
        Command::Unmount {
            lease_id: 99,
            now_ms: 0
        }
    )
    .is_err());
    assert!(apply(
        &mut s,
        Command::Heartbeat {
            rebuilds: vec![],
            node_id: 42,
            usage: vec![],
            now_ms: 0
        }
    )
    .is_err());
    assert_eq!(s, before);
}

#[test]
fn heartbeats_missed_beats_deregistration_and_usage() {
    let mut s = pool(2);
    create(&mut s, "v", G, Layout::Single).unwrap();
    let l = mount(&mut s, "v", "host-a", true).unwrap();
    let ids: Vec<u64> = s.nodes.keys().copied().collect();
    apply(
        &mut s,
        Command::Heartbeat {
            rebuilds: vec![],
            node_id: ids[0],
            usage: vec![Counters {
                lease_id: l.id,
                read_bytes: 4096,
                write_bytes: 8192,
                read_ops: 1,
                write_ops: 2,
            }],
            now_ms: 2500,
        },
    )
    .unwrap();
    apply(
        &mut s,
        Command::Heartbeat {
            node_id: ids[0],
            usage: vec![Counters {
                lease_id: l.id,
                read_bytes: 4096,
                ..Default::default()
            }],
            now_ms: 3500,
            rebuilds: vec![],
        },
    )
    .unwrap();
    apply(
        &mut s,
        Command::Tick {
            now_ms: 4000,
            heartbeat_ms: 1000,
        },
    )
    .unwrap();
    assert_eq!(s.nodes[&ids[0]].state, NodeState::Up);
    assert_eq!(s.nodes[&ids[1]].state, NodeState::Down, "silent since 0");
    let u = &s.usage[&l.id];
    assert_eq!(
        (u.read_bytes, u.write_bytes, u.read_ops, u.write_ops),
        (8192, 8192, 1, 2)
    );
    // The lease expires at 61 000.
    apply(
        &mut s,
        Command::Tick {
            now_ms: 61_000,
            heartbeat_ms: 1000,
        },
    )
    .unwrap();
    assert!(s.leases.is_empty());
    assert_eq!(s.usage[&l.id].ended_ms, Some(61_000));
    // A deregistered node's space leaves the pool; its volume stays.
    apply(&mut s, Command::Deregister { node_id: ids[0] }).unwrap();
    assert!(candidates(&s).iter().all(|c| c.key.node != ids[0]));
    assert!(s.volumes.contains_key("v"));
}

mod sequences {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Create(u8, u64, u8),
        Resize(u8, u64),
        Delete(u8),
        Mount(u8, bool),
        Unmount(u8),
        Down(u8),
        /// From volume v's read-write lease (taken first if it has none and can), else from the
        /// last lease taken (perhaps ended or read-only); copies as a bit mask over 0..3 (a
        /// mirror here has 2).
        Fail(u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (0u8..6, 1u64..40, 0u8..4).prop_map(|(v, s, l)| Op::Create(v, s, l)),
            1 => (0u8..6, 1u64..60).prop_map(|(v, s)| Op::Resize(v, s)),
            1 => (0u8..6).prop_map(Op::Delete),
            1 => (0u8..6, any::<bool>()).prop_map(|(v, rw)| Op::Mount(v, rw)),
            1 => (0u8..8).prop_map(Op::Unmount),
            1 => (0u8..3).prop_map(Op::Down),
            2 => (0u8..6, prop_oneof![0u8..8, 0x80u8..0x88]).prop_map(|(v, m)| Op::Fail(v, m)),
        ]
    }

    const M: u64 = 1 << 20;

    /// Three nodes, each one 64 MiB device with the first 8 MiB reserved for the owner.
    fn reserved_pool() -> State {
        let mut s = State::default();
        for i in 0..3u64 {
            let Outcome::Node(n) = apply(
                &mut s,
                Command::Register {
                    node_id: 0,
                    address: format!("n{i}:1"),
                    version: String::new(),
                    failure_domain: String::new(),
                    name: String::new(),
                    data_tls: false,
                    now_ms: 0,
                },
            )
            .unwrap() else {
                panic!()
            };
            let d = DeviceRec {
                read_iops: 0,
                write_iops: 0,
                mib_s: 0,
                device_id: 0,
                path: "d".into(),
                block_size: 4096,
                size: 64 * M,
                lendable_start: 8 * M,
                lendable_length: 56 * M,
                reserved_start: 0,
                reserved_length: 8 * M,
            };
            apply(
                &mut s,
                Command::ReportDevices {
                    node_id: n.id,
                    devices: vec![d],
                },
            )
            .unwrap();
        }
        s
    }

    fn check(s: &State) -> Result<(), TestCaseError> {
        let pieces: Vec<Piece> = s
            .volumes
            .values()
            .flat_map(|v| v.extents.iter().map(|e| e.piece))
            .collect();
        for (i, a) in pieces.iter().enumerate() {
            prop_assert!(
                a.offset >= 8 * M && a.offset + a.length <= 64 * M,
                "reserved area lent: {a:?}"
            );
            for b in &pieces[i + 1..] {
                prop_assert!(
                    a.key != b.key
                        || a.offset + a.length <= b.offset
                        || b.offset + b.length <= a.offset,
                    "{a:?} overlaps {b:?}"
                );
            }
        }
        // Free space adds up: lendable = free + used + waiting for a discard, per device.
        for c in candidates(s) {
            let free: u64 = c.free.iter().map(|r| r.1).sum();
            let used: u64 = pieces
                .iter()
                .filter(|p| p.key == c.key)
                .map(|p| p.length)
                .sum();
            let waiting: u64 = s
                .freed
                .iter()
                .filter(|f| f.key == c.key)
                .map(|f| f.length)
                .sum();
            prop_assert_eq!(free + used + waiting, 56 * M, "device {:?}", c.key);
        }
        for v in s.volumes.values() {
            let copies = match v.layout {
                Layout::Mirror { copies } => copies,
                _ => 1,
            };
            // Only mirrors have stale extents, and always keep one whole healthy copy.
            let healthy = (0..copies).any(|c| {
                v.extents
                    .iter()
                    .filter(|e| e.piece.copy == c)
                    .all(|e| !e.stale)
            });
            prop_assert!(healthy, "no healthy copy of {}: {:?}", v.name, v.extents);
            if !matches!(v.layout, Layout::Mirror { .. }) {
                prop_assert!(
                    v.extents.iter().all(|e| !e.stale),
                    "stale extent in {}",
                    v.name
                );
            }
            for copy in 0..copies {
                let sum: u64 = v
                    .extents
                    .iter()
                    .filter(|e| e.piece.copy == copy)
                    .map(|e| e.piece.length)
                    .sum();
                prop_assert!(
                    sum >= v.size,
                    "copy {copy} of {} holds {sum} < {}",
                    v.name,
                    v.size
                );
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn random_sequences_keep_the_invariants(ops in proptest::collection::vec(op(), 1..40)) {
            let mut s = reserved_pool();
            let mut leases: Vec<u64> = Vec::new();
            for (t, op) in ops.into_iter().enumerate() {
                // Failures are reported by a volume's writer: take one first if it has none.
                if let Op::Fail(v, _) = op {
                    let name = format!("v{v}");
                    if !s.leases.values().any(|l| l.rw && l.volume == name) {
                        if let Ok(Outcome::Lease(l, _)) = apply(&mut s, Command::Mount { volume: name, host: "w".into(), rw: true, ttl_ms: 1_000_000, now_ms: t as u64, holder: None }) {
                            leases.push(l.id);
                        }
                    }
                }
                let before = s.clone();
                let r = match op {
                    Op::Create(v, size, l) => {
                        let layout = [Layout::Single, Layout::Concat, Layout::Stripe { width: 2, unit: M }, Layout::Mirror { copies: 2 }][l as usize];
                        apply(&mut s, Command::CreateVolume { name: format!("v{v}"), size: size * M, layout, req: Requirements::default(), now_ms: t as u64, headroom_pct: 10 })
                    }
                    Op::Resize(v, size) => apply(&mut s, Command::ResizeVolume { name: format!("v{v}"), size: size * M, headroom_pct: 10 }),
                    Op::Delete(v) => apply(&mut s, Command::DeleteVolume { name: format!("v{v}") })
                        .and_then(|_| apply(&mut s, Command::PurgeVolume { name: format!("v{v}") })),
                    Op::Mount(v, rw) => {
                        let r = apply(&mut s, Command::Mount { volume: format!("v{v}"), host: "h".into(), rw, ttl_ms: 1_000_000, now_ms: t as u64, holder: None });
                        if let Ok(Outcome::Lease(l, _)) = &r { leases.push(l.id); }
                        r
                    }
                    Op::Unmount(i) => match leases.get(i as usize).copied() {
                        Some(id) => apply(&mut s, Command::Unmount { lease_id: id, now_ms: t as u64 }),
                        None => continue,
                    },
                    Op::Down(n) => apply(&mut s, Command::Tick { now_ms: 10_000 + u64::from(n), heartbeat_ms: 1 }),
                    Op::Fail(v, mask) => {
                        let name = format!("v{v}");
                        let writer = s.leases.values().find(|l| l.rw && l.volume == name).map(|l| l.id);
                        match writer.or(leases.last().copied()) {
                            Some(id) => {
                                let copies = (0..3u32).filter(|c| mask & (1 << c) != 0).collect();
                                // High bit: the copies were rebuilt rather than failed.
                                if mask & 0x80 != 0 {
                                    apply(&mut s, Command::RebuiltCopies { lease_id: id, copies, now_ms: t as u64 })
                                } else {
                                    apply(&mut s, Command::FailCopies { lease_id: id, copies, reason: String::new(), now_ms: t as u64 , dirty: Vec::new(), not_sent: false})
                                }
                            }
                            None => continue,
                        }
                    }
                };
                if r.is_err() {
                    prop_assert_eq!(&s, &before, "a refused command changed the state");
                }
                // A leased volume is never deleted.
                for l in s.leases.values() {
                    prop_assert!(s.volumes.contains_key(&l.volume));
                }
                check(&s)?;
            }
        }
    }
}

#[test]
fn epochs_only_grow_across_volumes_so_reused_ranges_are_not_fenced() {
    let mut s = pool(1);
    create(&mut s, "a", G, Layout::Single).unwrap();
    let la = mount(&mut s, "a", "h", true).unwrap();
    apply(
        &mut s,
        Command::Unmount {
            lease_id: la.id,
            now_ms: 2,
        },
    )
    .unwrap();
    apply(&mut s, Command::DeleteVolume { name: "a".into() }).unwrap();
    apply(&mut s, Command::PurgeVolume { name: "a".into() }).unwrap();
    let b = create(&mut s, "b", G, Layout::Single).unwrap();
    assert!(
        b.epoch > la.epoch,
        "new volume epoch {} must exceed {} seen on the same range",
        b.epoch,
        la.epoch
    );
    let lb = mount(&mut s, "b", "h", false).unwrap();
    assert!(lb.epoch > la.epoch);
}

#[test]
fn stripes_grow_by_whole_sets_and_shrink_by_dropping_them() {
    let mut s = pool(3);
    let v = create(
        &mut s,
        "st",
        3 * G,
        Layout::Stripe {
            width: 3,
            unit: 1 << 20,
        },
    )
    .unwrap();
    assert_eq!(v.extents.len(), 3);
    let Outcome::Volume(g) = apply(
        &mut s,
        Command::ResizeVolume {
            headroom_pct: 10,
            name: "st".into(),
            size: 6 * G,
        },
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(g.extents.len(), 6);
    assert_eq!(
        g.extents.iter().map(|e| e.piece.index).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5]
    );
    assert!(g.extents.iter().map(|e| e.piece.length).sum::<u64>() >= 6 * G);
    let Outcome::Volume(sh) = apply(
        &mut s,
        Command::ResizeVolume {
            headroom_pct: 10,
            name: "st".into(),
            size: 2 * G,
        },
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!((sh.size, sh.extents.len()), (2 * G, 3));
    assert_eq!(sh.extents, v.extents, "the first set is kept as it was");
}

#[test]
fn usage_of_leases_ended_before_the_retention_is_forgotten_and_no_other() {
    let mut s = State::default();
    for (id, ended_ms) in [(1, Some(100)), (2, Some(500)), (3, None)] {
        s.usage.insert(
            id,
            UsageRec {
                lease_id: id,
                ended_ms,
                ..Default::default()
            },
        );
    }
    apply(&mut s, Command::ForgetUsage { before_ms: 500 }).unwrap();
    assert_eq!(s.usage.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
    // An active lease's usage stays however old it is.
    apply(
        &mut s,
        Command::ForgetUsage {
            before_ms: u64::MAX,
        },
    )
    .unwrap();
    assert_eq!(s.usage.keys().copied().collect::<Vec<_>>(), vec![3]);
}

#[test]
fn a_tick_ends_a_bounded_number_of_leases_and_the_next_ones_the_rest() {
    let mut s = State::default();
    let n = MAX_EXPIRIES_PER_TICK as u64 + 5;
    for id in 1..=n {
        s.leases.insert(
            id,
            LeaseRec {
                id,
                volume: "v".into(),
                host: "h".into(),
                rw: false,
                epoch: 1,
                started_ms: 0,
                expires_at_ms: 10,
                holder: None,
            },
        );
    }
    let tick = |now_ms| Command::Tick {
        now_ms,
        heartbeat_ms: 1000,
    };
    apply(&mut s, tick(100)).unwrap();
    assert_eq!(s.leases.len(), 5);
    apply(&mut s, tick(200)).unwrap();
    assert!(s.leases.is_empty());
}

/// Mounts are applied in place (no copy of the state): a refusal must change nothing, also
/// when the last id is gone after a new epoch could have been taken.
#[test]
fn a_refused_mount_applied_in_place_changes_nothing() {
    let mut s = pool(2);
    create(&mut s, "v", G, Layout::Single).unwrap();
    s.last_id = u64::MAX;
    let before = s.clone();
    assert_eq!(
        mount(&mut s, "v", "h", true).unwrap_err(),
        Error::Exhausted("id")
    );
    assert_eq!(s, before);
    s.last_id = 100;
    s.last_epoch = u64::MAX;
    let before = s.clone();
    assert_eq!(
        mount(&mut s, "v", "h", true).unwrap_err(),
        Error::Exhausted("epoch")
    );
    assert_eq!(s, before);
    // A read-only mount needs no epoch.
    mount(&mut s, "v", "h", false).unwrap();
}

/// A whole rack going silent must not make one tick too big to commit (etcd caps a
/// transaction): the nodes go down over a few ticks, a bounded number each.
#[test]
fn a_tick_marks_a_bounded_number_of_nodes_down_and_the_next_ones_the_rest() {
    let n = MAX_DOWNS_PER_TICK as u64 * 2 + 3;
    let mut s = pool(n);
    let tick = |now_ms| Command::Tick {
        now_ms,
        heartbeat_ms: 1000,
    };
    let down = |s: &State| {
        s.nodes
            .values()
            .filter(|n| n.state == NodeState::Down)
            .count()
    };
    apply(&mut s, tick(1000)).unwrap();
    assert_eq!(down(&s), 0, "no node has missed its beats yet");
    apply(&mut s, tick(10_000)).unwrap();
    assert_eq!(down(&s), MAX_DOWNS_PER_TICK);
    apply(&mut s, tick(11_000)).unwrap();
    assert_eq!(down(&s), 2 * MAX_DOWNS_PER_TICK);
    apply(&mut s, tick(12_000)).unwrap();
    assert_eq!(down(&s) as u64, n);
}

/// Years of ended leases past the retention are forgotten a bounded number at a time, the
/// oldest first, so each step stays one small transaction.
#[test]
fn old_usage_is_forgotten_a_bounded_number_at_a_time_oldest_first() {
    let mut s = State::default();
    let n = MAX_FORGETS_PER_COMMAND as u64 + 30;
    for id in 1..=n {
        s.usage.insert(
            id,
            UsageRec {
                lease_id: id,
                // The ids run the other way from the end times: the order is by end time.
                ended_ms: Some(1000 - id),
                ..Default::default()
            },
        );
    }
    s.usage.insert(
        n + 1,
        UsageRec {
            lease_id: n + 1,
            ended_ms: None,
            ..Default::default()
        },
    );
    apply(&mut s, Command::ForgetUsage { before_ms: 2000 }).unwrap();
    assert_eq!(s.usage.len(), 31);
    assert!(
        s.usage.keys().all(|&id| id <= 30 || id == n + 1),
        "the oldest went first"
    );
    assert!(s.usage_ended_before(2000));
    apply(&mut s, Command::ForgetUsage { before_ms: 2000 }).unwrap();
    assert_eq!(s.usage.keys().copied().collect::<Vec<_>>(), vec![n + 1]);
    assert!(!s.usage_ended_before(2000));
}

fn register_named(
    s: &mut State,
    node_id: u64,
    address: &str,
    name: &str,
) -> Result<NodeRec, Error> {
    match apply(
        s,
        Command::Register {
            node_id,
            address: address.into(),
            version: "t".into(),
            failure_domain: String::new(),
            name: name.into(),
            data_tls: false,
            now_ms: 0,
        },
    )? {
        Outcome::Node(n) => Ok(n),
        o => panic!("{o:?}"),
    }
}

/// A node id is bound to the name on the certificate it first registered with; another name
/// cannot take it, and a name is one node at a time.
#[test]
fn a_node_is_bound_to_its_certificates_name() {
    let mut s = State::default();
    let a = register_named(&mut s, 0, "10.0.0.1:7700", "n1").unwrap();
    assert_eq!(a.name, "n1");
    // The same name from the same address: the same node (it lost its state directory).
    let again = register_named(&mut s, 0, "10.0.0.1:7700", "n1").unwrap();
    assert_eq!(again.id, a.id);
    assert_eq!(s.nodes.len(), 1);
    // From another address: refused, nothing changed.
    let before = s.clone();
    let e = register_named(&mut s, 0, "10.0.0.9:7700", "n1").unwrap_err();
    assert!(
        matches!(e, Error::NameTaken { id, .. } if id == a.id),
        "{e:?}"
    );
    assert_eq!(s, before);
    // Another name for this id, or this name for another id: refused.
    let b = register_named(&mut s, 0, "10.0.0.2:7700", "n2").unwrap();
    let before = s.clone();
    let e = register_named(&mut s, a.id, "10.0.0.1:7700", "n2").unwrap_err();
    assert!(
        matches!(e, Error::NameTaken { id, .. } if id == b.id),
        "{e:?}"
    );
    let e = register_named(&mut s, a.id, "10.0.0.1:7700", "n3").unwrap_err();
    assert!(matches!(e, Error::NotThisNode { .. }), "{e:?}");
    assert_eq!(s, before);
    // A node registered before identities is bound by its first registration with one.
    let old = register_named(&mut s, 0, "10.0.0.3:7700", "").unwrap();
    assert_eq!(old.name, "");
    assert_eq!(
        register_named(&mut s, old.id, "10.0.0.3:7700", "n3")
            .unwrap()
            .name,
        "n3"
    );
    // A node that left for good frees its name.
    apply(&mut s, Command::Deregister { node_id: a.id }).unwrap();
    let c = register_named(&mut s, 0, "10.0.0.9:7700", "n1").unwrap();
    assert_ne!(c.id, a.id);
}
