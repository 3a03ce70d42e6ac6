//! Ids, revocation and node health (issue 16, items 5, 6, 8 and 9): ids are assigned by the
//! controller only and never reused, revoking a lease fences its holder only, a heartbeat
//! re-admits a deregistered node, and usage counters saturate.

use super::*;
use proptest::prelude::*;

fn register(s: &mut State, node_id: u64, address: &str) -> Result<NodeRec, Error> {
    match apply(
        s,
        Command::Register {
            node_id,
            address: address.into(),
            version: "t".into(),
            failure_domain: String::new(),
            name: String::new(),
            data_tls: false,
            now_ms: 0,
        },
    )? {
        Outcome::Node(n) => Ok(n),
        o => panic!("{o:?}"),
    }
}

fn beat(s: &mut State, node_id: u64, usage: Vec<Counters>, now_ms: u64) -> Result<Outcome, Error> {
    apply(
        s,
        Command::Heartbeat {
            rebuilds: vec![],
            node_id,
            usage,
            now_ms,
        },
    )
}

fn revoke(s: &mut State, lease_id: u64, now_ms: u64) -> Result<VolumeRec, Error> {
    match apply(s, Command::Revoke { lease_id, now_ms })? {
        Outcome::Volume(v) => Ok(v),
        o => panic!("{o:?}"),
    }
}

fn tick(s: &mut State, now_ms: u64) {
    apply(
        s,
        Command::Tick {
            now_ms,
            heartbeat_ms: 1000,
        },
    )
    .unwrap();
}

#[test]
fn a_node_id_the_controller_did_not_assign_is_refused() {
    let mut s = pool(2);
    let before = s.clone();
    // The case: node_id 2^64-1 made the next ids 0, 1, 2 (and reused them).
    for claimed in [u64::MAX, s.last_id + 1, 1 << 40] {
        let e = register(&mut s, claimed, "10.0.0.9:7700").unwrap_err();
        assert_eq!(e, Error::UnknownNode(claimed));
        assert!(e.to_string().contains("id 0"), "{e}");
        assert_eq!(s, before);
    }
    let n = register(&mut s, 0, "10.0.0.9:7700").unwrap();
    assert_eq!(n.id, before.last_id + 1);
    // A known id keeps its node (a restart), and only that node's record changes.
    let again = register(&mut s, n.id, "10.0.0.10:7700").unwrap();
    assert_eq!(again.id, n.id);
    for (id, old) in &before.nodes {
        assert_eq!(s.nodes[id].address, old.address);
    }
}

#[test]
fn counters_never_wrap() {
    // A state left by the old code, whose counters reached the top.
    let mut s = pool(2);
    create(&mut s, "v", G, Layout::Single).unwrap();
    s.last_id = u64::MAX;
    let before = s.clone();
    assert_eq!(
        register(&mut s, 0, "10.0.0.9:7700").unwrap_err(),
        Error::Exhausted("id")
    );
    assert_eq!(
        create(&mut s, "w", G, Layout::Single).unwrap_err(),
        Error::Exhausted("id")
    );
    assert_eq!(
        mount(&mut s, "v", "h", false).unwrap_err(),
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
}

#[test]
fn revoking_a_reader_leaves_the_writer_current() {
    let mut s = pool(2);
    create(&mut s, "m", G, Layout::Mirror { copies: 2 }).unwrap();
    let w = mount(&mut s, "m", "writer", true).unwrap();
    let r = mount(&mut s, "m", "reader", false).unwrap();
    let v = revoke(&mut s, r.id, 2000).unwrap();
    assert_eq!(
        v.epoch, w.epoch,
        "a reader's revocation must not fence the writer"
    );
    assert_eq!(s.revoked, BTreeMap::from([(r.id, r.expires_at_ms)]));
    assert!(!s.leases.contains_key(&r.id));
    assert_eq!(s.usage[&r.id].ended_ms, Some(2000));
    // The writer's failure reports are still accepted.
    let Outcome::Volume(v) = apply(
        &mut s,
        Command::FailCopies {
            not_sent: false,
            lease_id: w.id,
            copies: vec![1],
            reason: "write failed".into(),
            now_ms: 2500,
            dirty: Vec::new(),
        },
    )
    .unwrap() else {
        panic!()
    };
    assert!(v.extents.iter().any(|e| e.stale));
    // A writer's revocation still raises the epoch, fencing its in-flight writes.
    let v = revoke(&mut s, w.id, 3000).unwrap();
    assert!(v.epoch > w.epoch);
    assert_eq!(
        s.revoked,
        BTreeMap::from([(r.id, r.expires_at_ms), (w.id, w.expires_at_ms)])
    );
    // Kept while the tokens live; forgotten once they have expired on their own.
    tick(&mut s, r.expires_at_ms - 1);
    assert_eq!(s.revoked.len(), 2);
    tick(&mut s, r.expires_at_ms);
    assert!(s.revoked.is_empty(), "{:?}", s.revoked);
    assert_eq!(
        revoke(&mut s, r.id, 3000).unwrap_err(),
        Error::UnknownLease(r.id)
    );
}

#[test]
fn a_heartbeat_readmits_a_deregistered_node() {
    let mut s = pool(1);
    let id = *s.nodes.keys().next().unwrap();
    apply(&mut s, Command::Deregister { node_id: id }).unwrap();
    assert_eq!(s.nodes[&id].state, NodeState::Gone);
    assert!(candidates(&s).is_empty());
    beat(&mut s, id, vec![], 10).unwrap();
    assert_eq!(s.nodes[&id].state, NodeState::Up);
    assert_eq!(candidates(&s).len(), 1, "its space is back in the pool");
}

#[test]
fn usage_counters_saturate() {
    let mut s = pool(1);
    create(&mut s, "v", G, Layout::Single).unwrap();
    let l = mount(&mut s, "v", "h", true).unwrap();
    let id = *s.nodes.keys().next().unwrap();
    // The case: 1e15 bytes, then nearly 2^64, totalled 5 bytes.
    for n in [1_000_000_000_000_000, u64::MAX - 999_999_999_999_994] {
        let c = Counters {
            lease_id: l.id,
            read_bytes: n,
            write_bytes: n,
            read_ops: n,
            write_ops: n,
        };
        beat(&mut s, id, vec![c], 1).unwrap();
    }
    let u = &s.usage[&l.id];
    assert_eq!(
        (u.read_bytes, u.write_bytes, u.read_ops, u.write_ops),
        (u64::MAX, u64::MAX, u64::MAX, u64::MAX)
    );
}

mod ids {
    //! Whatever ids nodes claim, every id handed out is new, and no node's record is taken over.

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// 0: a new node; else a claim: a known node's id (by index) or any number.
        Register(u8, u64),
        Create(u8),
        Mount(u8, bool),
        Unmount(u8),
        Deregister(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (0u8..4, prop_oneof![Just(0), Just(u64::MAX), Just(u64::MAX - 1), 1u64..20, any::<u64>()])
                .prop_map(|(k, id)| Op::Register(k, id)),
            1 => (0u8..4).prop_map(Op::Create),
            2 => (0u8..4, any::<bool>()).prop_map(|(v, rw)| Op::Mount(v, rw)),
            1 => (0u8..8).prop_map(Op::Unmount),
            1 => (0u8..4).prop_map(Op::Deregister),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn ids_are_assigned_once_and_never_taken_over(ops in proptest::collection::vec(op(), 1..40)) {
            let mut s = pool(2);
            let mut issued: std::collections::BTreeSet<u64> = s.nodes.keys().copied().collect();
            let mut leases: Vec<u64> = Vec::new();
            for (t, op) in ops.into_iter().enumerate() {
                let before = s.clone();
                let nodes: Vec<u64> = s.nodes.keys().copied().collect();
                let r = match op {
                    Op::Register(k, claim) => {
                        let id = if claim == 0 && k % 2 == 1 { nodes[k as usize % nodes.len()] } else { claim };
                        let r = apply(&mut s, Command::Register {
                            node_id: id, address: format!("10.1.0.{t}:7700"), version: String::new(),
                            failure_domain: String::new(), name: String::new(), data_tls: false, now_ms: t as u64,
                        });
                        if id != 0 && !before.nodes.contains_key(&id) {
                            prop_assert_eq!(r.clone().unwrap_err(), Error::UnknownNode(id));
                        }
                        if let Ok(Outcome::Node(n)) = &r {
                            if id == 0 {
                                prop_assert!(issued.insert(n.id), "node id {} handed out twice", n.id);
                            } else {
                                prop_assert_eq!(n.id, id);
                            }
                            for (other, rec) in &before.nodes {
                                if *other != n.id {
                                    prop_assert_eq!(&s.nodes[other], rec, "registering {} changed node {}", n.id, other);
                                }
                            }
                        }
                        r
                    }
                    Op::Create(v) => {
                        let r = create(&mut s, &format!("v{v}"), 1 << 20, Layout::Single);
                        if let Ok(v) = &r {
                            prop_assert!(issued.insert(v.id), "volume id {} handed out twice", v.id);
                        }
                        r.map(Outcome::Volume)
                    }
                    Op::Mount(v, rw) => {
                        let r = mount(&mut s, &format!("v{v}"), &format!("host{t}"), rw);
                        if let Ok(l) = &r {
                            prop_assert!(issued.insert(l.id), "lease id {} handed out twice", l.id);
                            leases.push(l.id);
                        }
                        r.map(|l| Outcome::Lease(l, before.volumes[&format!("v{v}")].clone()))
                    }
                    Op::Unmount(i) => match leases.get(i as usize) {
                        Some(&lease_id) => apply(&mut s, Command::Unmount { lease_id, now_ms: t as u64 }),
                        None => continue,
                    },
                    Op::Deregister(k) => apply(&mut s, Command::Deregister { node_id: nodes[k as usize % nodes.len()] }),
                };
                if r.is_err() {
                    prop_assert_eq!(&s, &before);
                }
                prop_assert!(s.last_id >= before.last_id, "the id counter went back");
                // A lease's usage record is its own: a renewal never finds another host's lease.
                for l in s.leases.values() {
                    let u = &s.usage[&l.id];
                    prop_assert_eq!((&u.host, &u.volume), (&l.host, &l.volume));
                }
            }
        }
    }
}

mod revocation {
    //! Revocations against a model: the list holds exactly the revoked leases whose tokens have
    //! not expired, and the volume's writer stays current unless it is the one revoked.

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Mount(bool, u64),
        Revoke(u8),
        Unmount(u8),
        Advance(u64),
        Fail,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (any::<bool>(), 1_000u64..20_000).prop_map(|(rw, ttl)| Op::Mount(rw, ttl)),
            2 => (0u8..10).prop_map(Op::Revoke),
            1 => (0u8..10).prop_map(Op::Unmount),
            2 => (0u64..10_000).prop_map(Op::Advance),
            1 => Just(Op::Fail),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn only_the_revoked_holder_is_fenced(ops in proptest::collection::vec(op(), 1..40)) {
            let mut s = pool(2);
            create(&mut s, "m", G, Layout::Mirror { copies: 2 }).unwrap();
            let mut now = 1000u64;
            let mut leases: Vec<u64> = Vec::new();
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            for op in ops {
                let before = s.clone();
                match op {
                    Op::Mount(rw, ttl_ms) => {
                        if let Ok(Outcome::Lease(l, _)) = apply(&mut s, Command::Mount {
                            holder: None,
                            volume: "m".into(), host: "h".into(), rw, ttl_ms, now_ms: now,
                        }) {
                            leases.push(l.id);
                        }
                    }
                    Op::Revoke(i) => if let Some(&id) = leases.get(i as usize) {
                        let held = before.leases.get(&id).cloned();
                        let r = revoke(&mut s, id, now);
                        match held {
                            Some(l) => {
                                let v = r.unwrap();
                                model.insert(id, l.expires_at_ms);
                                let old = before.volumes["m"].epoch;
                                if l.rw {
                                    prop_assert!(v.epoch > old, "a writer's revocation raises the epoch");
                                } else {
                                    prop_assert_eq!(v.epoch, old, "a reader's revocation left the epoch");
                                }
                            }
                            None => prop_assert_eq!(r.unwrap_err(), Error::UnknownLease(id)),
                        }
                    },
                    Op::Unmount(i) => if let Some(&id) = leases.get(i as usize) {
                        let _ = apply(&mut s, Command::Unmount { lease_id: id, now_ms: now });
                    },
                    Op::Advance(dt) => {
                        now += dt;
                        tick(&mut s, now);
                        model.retain(|_, e| *e > now);
                    }
                    Op::Fail => {
                        let writer = s.leases.values().find(|l| l.rw).map(|l| l.id);
                        if let Some(id) = writer {
                            // Rebuilt first so a failure of copy 1 is always allowed.
                            apply(&mut s, Command::RebuiltCopies { lease_id: id, copies: vec![0, 1], now_ms: now }).unwrap();
                            apply(&mut s, Command::FailCopies { lease_id: id, copies: vec![1], reason: String::new(), now_ms: now , dirty: Vec::new(), not_sent: false}).unwrap();
                        }
                    }
                }
                prop_assert_eq!(&s.revoked, &model);
                let v = &s.volumes["m"];
                for l in s.leases.values().filter(|l| l.rw) {
                    prop_assert_eq!(l.epoch, v.epoch, "the writer {} was fenced", l.id);
                }
            }
        }
    }
}

mod nodes {
    //! Node health and metering against a model: a beat means up (whatever came before), three
    //! missed beats mean down, deregistration means gone; counters add up and stop at the top.

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Beat(u8, [u64; 4]),
        Deregister(u8),
        Advance(u64),
    }

    fn count() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..1 << 20,
            Just(u64::MAX),
            (u64::MAX >> 2)..=u64::MAX,
            any::<u64>()
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..3, [count(), count(), count(), count()]).prop_map(|(n, c)| Op::Beat(n, c)),
            1 => (0u8..3).prop_map(Op::Deregister),
            2 => (0u64..5_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn health_and_usage_follow_the_model(ops in proptest::collection::vec(op(), 1..40)) {
            let mut s = pool(3);
            create(&mut s, "v", G, Layout::Single).unwrap();
            let l = mount(&mut s, "v", "h", true).unwrap();
            // The pool's nodes registered at 0; the lease was taken at 1000.
            let ids: Vec<u64> = s.nodes.keys().copied().collect();
            let mut health: BTreeMap<u64, (NodeState, u64)> = ids.iter().map(|&id| (id, (NodeState::Up, 0))).collect();
            let mut used = [0u128; 4];
            let mut now = 1000u64;
            for op in ops {
                match op {
                    Op::Beat(n, c) => {
                        let id = ids[n as usize];
                        beat(&mut s, id, vec![Counters { lease_id: l.id, read_bytes: c[0], write_bytes: c[1], read_ops: c[2], write_ops: c[3] }], now).unwrap();
                        health.insert(id, (NodeState::Up, now));
                        for (u, c) in used.iter_mut().zip(c) {
                            *u += u128::from(c);
                        }
                    }
                    Op::Deregister(n) => {
                        let id = ids[n as usize];
                        apply(&mut s, Command::Deregister { node_id: id }).unwrap();
                        health.get_mut(&id).unwrap().0 = NodeState::Gone;
                    }
                    Op::Advance(dt) => {
                        now += dt;
                        // An ended lease keeps its usage record, so late counters still add up.
                        apply(&mut s, Command::Tick { now_ms: now, heartbeat_ms: 1000 }).unwrap();
                        for (state, last) in health.values_mut() {
                            if *state == NodeState::Up && now - *last > 3000 {
                                *state = NodeState::Down;
                            }
                        }
                    }
                }
                for (id, (state, _)) in &health {
                    prop_assert_eq!(s.nodes[id].state, *state, "node {}", id);
                    let lends = candidates(&s).iter().any(|c| c.key.node == *id);
                    prop_assert_eq!(lends, *state == NodeState::Up, "node {} lends", id);
                }
                let u = &s.usage[&l.id];
                let want = used.map(|x| u64::try_from(x).unwrap_or(u64::MAX));
                prop_assert_eq!([u.read_bytes, u.write_bytes, u.read_ops, u.write_ops], want);
            }
        }
    }
}
