//! Failure reports: only the current writer marks mirror copies stale, never the last healthy one.

use super::*;

fn fail(s: &mut State, lease_id: u64, copies: &[u32], now_ms: u64) -> Result<VolumeRec, Error> {
    match apply(
        s,
        Command::FailCopies {
            not_sent: false,
            lease_id,
            copies: copies.to_vec(),
            reason: "write: connection reset".into(),
            now_ms,
            dirty: Vec::new(),
        },
    )? {
        Outcome::Volume(v) => Ok(v),
        o => panic!("{o:?}"),
    }
}

fn stale_copies(v: &VolumeRec) -> Vec<(u32, u32, bool)> {
    let mut x: Vec<_> = v
        .extents
        .iter()
        .map(|e| (e.piece.copy, e.piece.index, e.stale))
        .collect();
    x.sort();
    x
}

/// A mirror:2 of two extents per copy (grown while leased), with its read-write lease.
fn grown_mirror(s: &mut State) -> LeaseRec {
    create(s, "m", G, Layout::Mirror { copies: 2 }).unwrap();
    let w = mount(s, "m", "host-a", true).unwrap();
    apply(
        s,
        Command::ResizeVolume {
            headroom_pct: 10,
            name: "m".into(),
            size: 2 * G,
        },
    )
    .unwrap();
    assert_eq!(s.volumes["m"].extents.len(), 4);
    w
}

#[test]
fn the_writer_marks_every_extent_of_a_copy_stale_and_may_repeat() {
    let mut s = pool(3);
    let w = grown_mirror(&mut s);
    let v = fail(&mut s, w.id, &[1], 2000).unwrap();
    assert_eq!(
        stale_copies(&v),
        vec![(0, 0, false), (0, 1, false), (1, 0, true), (1, 1, true)]
    );
    assert_eq!(s.volumes["m"], v, "the outcome is the volume as recorded");
    // Idempotent: the same report again, or with the index twice, changes nothing.
    let before = s.clone();
    assert_eq!(fail(&mut s, w.id, &[1, 1], 2001).unwrap(), v);
    assert_eq!(s, before);
}

#[test]
fn the_last_healthy_copy_is_never_marked() {
    let mut s = pool(3);
    let w = grown_mirror(&mut s);
    let before = s.clone();
    assert_eq!(
        fail(&mut s, w.id, &[0, 1], 2000).unwrap_err(),
        Error::LastHealthyCopy {
            volume: "m".into(),
            copies: vec![0, 1]
        }
    );
    assert_eq!(s, before, "a refused report marks nothing");
    fail(&mut s, w.id, &[0], 2000).unwrap();
    let before = s.clone();
    let e = fail(&mut s, w.id, &[1], 2001).unwrap_err();
    assert!(matches!(e, Error::LastHealthyCopy { .. }), "{e}");
    assert!(e.to_string().contains("no healthy copy"), "{e}");
    assert_eq!(s, before);
    // Three copies: two may go, the third may not.
    create(&mut s, "m3", G, Layout::Mirror { copies: 3 }).unwrap();
    let w3 = mount(&mut s, "m3", "host-a", true).unwrap();
    fail(&mut s, w3.id, &[2, 0], 2000).unwrap();
    let e = fail(&mut s, w3.id, &[1], 2000).unwrap_err();
    assert!(matches!(e, Error::LastHealthyCopy { .. }), "{e}");
}

#[test]
fn only_the_current_read_write_lease_may_report() {
    let mut s = pool(2);
    create(&mut s, "m", G, Layout::Mirror { copies: 2 }).unwrap();
    let r = mount(&mut s, "m", "reader", false).unwrap();
    let w = mount(&mut s, "m", "host-a", true).unwrap();
    let before = s.clone();
    let not_writer = |lease, why| Error::NotCurrentWriter {
        lease,
        volume: "m".into(),
        why,
    };
    assert_eq!(
        fail(&mut s, r.id, &[1], 2000).unwrap_err(),
        not_writer(r.id, NotWriter::ReadOnly)
    );
    assert_eq!(
        fail(&mut s, 999, &[1], 2000).unwrap_err(),
        Error::UnknownLease(999)
    );
    // Past its expiry, even before a tick reaps it (the mount helper lends 60 s from 1000).
    assert_eq!(
        fail(&mut s, w.id, &[1], 61_000).unwrap_err(),
        not_writer(
            w.id,
            NotWriter::Expired {
                expires_at_ms: 61_000
            }
        )
    );
    // A lease whose epoch fell behind the volume's is fenced.
    let mut fenced = s.clone();
    fenced.volumes.get_mut("m").unwrap().epoch += 1;
    let e = fail(&mut fenced, w.id, &[1], 2000).unwrap_err();
    assert_eq!(
        e,
        not_writer(
            w.id,
            NotWriter::Fenced {
                lease_epoch: w.epoch,
                volume_epoch: w.epoch + 1
            }
        )
    );
    assert!(e.to_string().contains("fenced"), "{e}");
    assert_eq!(s, before, "refused reports mark nothing");
    // Revoked, and a new writer mounted: the old holder is refused, the new one may report.
    apply(
        &mut s,
        Command::Revoke {
            lease_id: w.id,
            now_ms: 2000,
        },
    )
    .unwrap();
    let w2 = mount(&mut s, "m", "host-b", true).unwrap();
    let before = s.clone();
    let e = fail(&mut s, w.id, &[1], 3000).unwrap_err();
    assert_eq!(e, not_writer(w.id, NotWriter::Ended));
    assert!(e.to_string().contains("cannot mark copies stale"), "{e}");
    assert_eq!(s, before);
    fail(&mut s, w2.id, &[1], 3000).unwrap();
    // Unmounted: ended too.
    apply(
        &mut s,
        Command::Unmount {
            lease_id: w2.id,
            now_ms: 4000,
        },
    )
    .unwrap();
    assert_eq!(
        fail(&mut s, w2.id, &[0], 5000).unwrap_err(),
        not_writer(w2.id, NotWriter::Ended)
    );
}

#[test]
fn copies_must_exist_on_a_mirror() {
    let mut s = pool(2);
    create(&mut s, "m", G, Layout::Mirror { copies: 2 }).unwrap();
    create(&mut s, "s", G, Layout::Single).unwrap();
    let w = mount(&mut s, "m", "host-a", true).unwrap();
    let ws = mount(&mut s, "s", "host-a", true).unwrap();
    let before = s.clone();
    for (lease, copies, says) in [
        (w.id, vec![2], "no copy 2"),
        (w.id, vec![0, 7], "no copy 7"),
        (w.id, vec![], "at least one copy"),
        (ws.id, vec![0], "not a mirror"),
    ] {
        let e = fail(&mut s, lease, &copies, 2000).unwrap_err();
        assert!(
            matches!(e, Error::Invalid(_)) && e.to_string().contains(says),
            "{copies:?}: {e}"
        );
    }
    assert_eq!(s, before);
}

mod model {
    use std::collections::BTreeSet;

    use super::*;
    use proptest::prelude::*;

    /// Who sends a failure report.
    #[derive(Clone, Copy, Debug)]
    enum Who {
        /// The current writer.
        Writer,
        /// The writer before it (ended).
        Previous,
        /// A reader.
        Reader,
    }

    #[derive(Clone, Copy, Debug)]
    enum Op {
        /// Copies as a bit mask over 0..4 (the mirror has 3).
        Report(Who, u8),
        /// The writer unmounts (or is revoked) and a new one mounts.
        NewWriter { revoke: bool },
        /// Grows the mirror by this many GiB while leased.
        Grow(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (prop_oneof![Just(Who::Writer), Just(Who::Previous), Just(Who::Reader)], 0u8..16)
                .prop_map(|(w, m)| Op::Report(w, m)),
            1 => any::<bool>().prop_map(|revoke| Op::NewWriter { revoke }),
            1 => (1u64..3).prop_map(Op::Grow),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Against a model (the set of reported copies): a report succeeds exactly when it comes
        /// from the current writer, names existing copies, and leaves a copy unreported; the
        /// mirror always keeps a healthy copy, and a stale extent never turns fresh.
        #[test]
        fn failure_reports_follow_the_model(ops in proptest::collection::vec(op(), 1..30)) {
            let mut s = pool(3);
            create(&mut s, "m", G, Layout::Mirror { copies: 3 }).unwrap();
            let reader = mount(&mut s, "m", "reader", false).unwrap().id;
            let mut writer = mount(&mut s, "m", "w", true).unwrap().id;
            let mut previous = None;
            let mut reported: BTreeSet<u32> = BTreeSet::new();
            for (t, op) in ops.into_iter().enumerate() {
                let now = 2000 + t as u64;
                let before = s.clone();
                match op {
                    Op::Report(who, mask) => {
                        let copies: Vec<u32> = (0..4).filter(|c| mask & (1 << c) != 0).collect();
                        let lease = match who {
                            Who::Writer => writer,
                            Who::Previous => match previous { Some(p) => p, None => continue },
                            Who::Reader => reader,
                        };
                        let r = fail(&mut s, lease, &copies, now);
                        let after: BTreeSet<u32> = reported.iter().chain(&copies).copied().collect();
                        let expect_ok = matches!(who, Who::Writer)
                            && !copies.is_empty()
                            && copies.iter().all(|&c| c < 3)
                            && after.len() < 3;
                        prop_assert_eq!(r.is_ok(), expect_ok, "{:?} {:?}: {:?}", who, copies, r);
                        match r {
                            Ok(v) => {
                                reported = after;
                                for e in &v.extents {
                                    prop_assert_eq!(e.stale, copies.contains(&e.piece.copy) || before.volumes["m"].extents.iter().any(|b| b.piece == e.piece && b.stale));
                                }
                            }
                            Err(e) => {
                                prop_assert_eq!(&s, &before, "refused ({}) but changed", e);
                                match who {
                                    Who::Writer if after.len() == 3 && copies.iter().all(|&c| c < 3) && !copies.is_empty() =>
                                        prop_assert!(matches!(e, Error::LastHealthyCopy { .. }), "{}", e),
                                    Who::Writer => prop_assert!(matches!(e, Error::Invalid(_)), "{}", e),
                                    _ => prop_assert!(matches!(e, Error::NotCurrentWriter { .. }), "{}", e),
                                }
                            }
                        }
                    }
                    Op::NewWriter { revoke } => {
                        let cmd = if revoke {
                            Command::Revoke { lease_id: writer, now_ms: now }
                        } else {
                            Command::Unmount { lease_id: writer, now_ms: now }
                        };
                        apply(&mut s, cmd).unwrap();
                        previous = Some(writer);
                        writer = mount(&mut s, "m", "w", true).unwrap().id;
                    }
                    Op::Grow(g) => {
                        let size = s.volumes["m"].size + g * G;
                        apply(&mut s, Command::ResizeVolume { name: "m".into(), size, headroom_pct: 10 }).unwrap();
                    }
                }
                let v = &s.volumes["m"];
                // Stale flags only come from reports, and a stale extent stays stale.
                for e in &v.extents {
                    prop_assert!(!e.stale || reported.contains(&e.piece.copy));
                    if let Some(b) = before.volumes["m"].extents.iter().find(|b| b.piece == e.piece) {
                        prop_assert!(!b.stale || e.stale, "{:?} turned fresh", e.piece);
                    }
                }
                let healthy = (0..3).filter(|c| v.extents.iter().filter(|e| e.piece.copy == *c).all(|e| !e.stale)).count();
                prop_assert!(healthy >= 1);
                prop_assert_eq!(healthy, 3 - reported.len(), "reported {:?}", reported);
            }
        }
    }
}

fn rebuilt(s: &mut State, lease_id: u64, copies: &[u32], now_ms: u64) -> Result<VolumeRec, Error> {
    match apply(
        s,
        Command::RebuiltCopies {
            lease_id,
            copies: copies.to_vec(),
            now_ms,
        },
    )? {
        Outcome::Volume(v) => Ok(v),
        o => panic!("{o:?}"),
    }
}

#[test]
fn a_rebuilt_copy_is_healthy_again_but_only_the_current_writer_says_so() {
    let mut s = pool(3);
    let w = grown_mirror(&mut s);
    fail(&mut s, w.id, &[1], 2000).unwrap();
    // Revoked: the old writer cannot declare the copy rebuilt.
    apply(
        &mut s,
        Command::Revoke {
            lease_id: w.id,
            now_ms: 2500,
        },
    )
    .unwrap();
    let before = s.clone();
    assert_eq!(
        rebuilt(&mut s, w.id, &[1], 3000).unwrap_err(),
        Error::NotCurrentWriter {
            lease: w.id,
            volume: "m".into(),
            why: NotWriter::Ended
        }
    );
    assert_eq!(s, before);
    let r = mount(&mut s, "m", "host-r", false).unwrap();
    assert!(
        rebuilt(&mut s, r.id, &[1], 3000).is_err(),
        "a reader cannot"
    );
    let w2 = mount(&mut s, "m", "host-b", true).unwrap();
    assert!(rebuilt(&mut s, w2.id, &[2], 3000).is_err(), "no copy 2");
    let v = rebuilt(&mut s, w2.id, &[1], 3000).unwrap();
    assert_eq!(
        stale_copies(&v),
        vec![(0, 0, false), (0, 1, false), (1, 0, false), (1, 1, false)]
    );
    // And it can fail again later.
    fail(&mut s, w2.id, &[0], 4000).unwrap();
}
