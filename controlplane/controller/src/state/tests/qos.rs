//! Admission of promised performance (`state::qos`).

use super::*;

/// `n` nodes, one 100 GiB device each that can do `iops` IOPS (read and write) and `mib_s`.
fn rated_pool(n: u64, iops: u64, mib_s: u64) -> State {
    let mut s = pool(n);
    let ids: Vec<u64> = s.nodes.keys().copied().collect();
    for id in ids {
        let d = DeviceRec {
            read_iops: iops,
            write_iops: iops + 5000,
            mib_s,
            ..dev(0, 100 * G)
        };
        apply(
            &mut s,
            Command::ReportDevices {
                node_id: id,
                devices: vec![d],
            },
        )
        .unwrap();
    }
    s
}

fn promise(
    s: &mut State,
    name: &str,
    layout: Layout,
    iops: u64,
    mib_s: u64,
) -> Result<VolumeRec, Error> {
    let req = Requirements {
        min_iops: iops,
        min_mib_s: mib_s,
        ..Default::default()
    };
    create(s, name, layout, req)
}

#[test]
fn promises_are_admitted_within_capability_less_the_headroom() {
    // 20,000 IOPS and 1,000 MiB/s each: 18,000 and 900 may be promised.
    let mut s = rated_pool(2, 20_000, 1_000);
    promise(&mut s, "a", Layout::Single, 12_000, 100).unwrap();
    promise(&mut s, "b", Layout::Single, 12_000, 100).unwrap();
    // Each device has 6,000 left now.
    let e = promise(&mut s, "c", Layout::Single, 7_000, 0).unwrap_err();
    assert!(matches!(e, Error::Insufficient(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("has 6000 IOPS unpromised, 7000 needed"),
        "{text}"
    );
    assert!(!s.volumes.contains_key("c"), "a refusal changes nothing");
    promise(&mut s, "c", Layout::Single, 6_000, 0).unwrap();
    // Bandwidth is short the same way.
    let e = promise(&mut s, "d", Layout::Single, 0, 850).unwrap_err();
    assert!(
        e.to_string().contains("MiB/s unpromised, 850 needed"),
        "{e}"
    );
    // No promise at all: placed as before, wherever there is room.
    promise(&mut s, "e", Layout::Single, 0, 0).unwrap();
    // The pool shows what is promised.
    let key = s.volumes["a"].extents[0].piece.key;
    let ((cap_iops, cap_mib), (p_iops, _)) = crate::state::qos::budget(&s, key, 10).unwrap();
    assert_eq!((cap_iops, cap_mib), (18_000, 900));
    assert!(p_iops >= 12_000);
}

#[test]
fn a_mirror_promises_on_every_copy_a_stripe_splits_its_promise() {
    let mut s = rated_pool(3, 10_000, 1_000);
    let m = promise(&mut s, "m", Layout::Mirror { copies: 2 }, 8_000, 0).unwrap();
    let promised = crate::state::qos::promised(&s);
    for e in &m.extents {
        assert_eq!(promised[&e.piece.key].0, 8_000);
    }
    // 9,000 - 8,000 = 1,000 left on two devices, 9,000 on the third: a stripe of three needs
    // 3,000 on each.
    let e = promise(
        &mut s,
        "s",
        Layout::Stripe {
            width: 3,
            unit: 65536,
        },
        9_000,
        0,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("among the 1 of 3 devices with 3000 IOPS"),
        "{e}"
    );
    let v = promise(
        &mut s,
        "t",
        Layout::Stripe {
            width: 2,
            unit: 65536,
        },
        2_000,
        0,
    )
    .unwrap();
    assert_eq!(v.extents.len(), 2);
    assert_eq!(crate::state::qos::share(v.layout, &v.req), (1_000, 0));
}

#[test]
fn a_device_of_unknown_capability_takes_no_promise_and_absurd_figures_are_refused() {
    let mut s = pool(1);
    let e = promise(&mut s, "a", Layout::Single, 100, 0).unwrap_err();
    assert!(e.to_string().contains("no known capability"), "{e}");
    assert!(e.to_string().contains("--device-iops"), "{e}");
    let id = *s.nodes.keys().next().unwrap();
    let e = apply(
        &mut s,
        Command::ReportDevices {
            node_id: id,
            devices: vec![DeviceRec {
                read_iops: u64::MAX,
                ..dev(0, G)
            }],
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("capability"), "{e}");
    // An absurd promise is refused as such, before any placement.
    let e = promise(&mut s, "b", Layout::Single, u64::MAX, 0).unwrap_err();
    assert!(e.to_string().contains("past what any device"), "{e}");
}

#[test]
fn the_headroom_is_the_controllers_to_say() {
    let mut s = rated_pool(1, 20_000, 1_000);
    let create = |s: &mut State, name: &str, iops: u64, headroom_pct: u64| {
        apply(
            s,
            Command::CreateVolume {
                name: name.into(),
                size: G,
                layout: Layout::Single,
                req: Requirements {
                    min_iops: iops,
                    ..Default::default()
                },
                now_ms: 0,
                headroom_pct,
            },
        )
    };
    // Half kept back: 10,000 of 20,000 may be promised.
    let e = create(&mut s, "a", 11_000, 50).unwrap_err();
    assert!(e.to_string().contains("50% of each is kept back"), "{e}");
    create(&mut s, "a", 10_000, 50).unwrap();
    create(&mut s, "b", 8_000, 0).unwrap();
    let e = create(&mut s, "c", 1, 95).unwrap_err();
    assert!(e.to_string().contains("0..=90"), "{e}");
}

fn create(
    s: &mut State,
    name: &str,
    layout: Layout,
    req: Requirements,
) -> Result<VolumeRec, Error> {
    match apply(
        s,
        Command::CreateVolume {
            headroom_pct: 10,
            name: name.into(),
            size: G,
            layout,
            req,
            now_ms: 0,
        },
    )? {
        Outcome::Volume(v) => Ok(v),
        o => panic!("{o:?}"),
    }
}

#[test]
fn caps_and_weights_are_checked_and_carried_in_tokens_split_by_a_stripe() {
    let mut s = rated_pool(4, 20_000, 1_000);
    let req = Requirements {
        min_iops: 4_000,
        min_mib_s: 100,
        max_iops: 10_000,
        max_mib_s: 401,
        weight: 200,
        ..Default::default()
    };
    let v = create(&mut s, "a", Layout::Single, req).unwrap();
    let t = crate::state::qos::terms(v.layout, &v.req);
    assert_eq!(
        (t.min_iops, t.max_iops, t.min_mib_s, t.max_mib_s, t.weight),
        (4_000, 10_000, 100, 401, 200)
    );
    t.check().unwrap();
    assert_eq!(t.read_cost, 0, "a read counts once on a single extent");
    // A mirror's copies each count a read once per copy against the cap.
    let m = crate::state::qos::terms(Layout::Mirror { copies: 3 }, &req);
    assert_eq!((m.max_iops, m.read_cost), (10_000, 3));
    // A stripe of 2 splits promise and cap, rounding up.
    let stripe = Layout::Stripe {
        width: 2,
        unit: 1 << 20,
    };
    let v = create(&mut s, "b", stripe, req).unwrap();
    let t = crate::state::qos::terms(v.layout, &v.req);
    assert_eq!(
        (t.min_iops, t.max_iops, t.min_mib_s, t.max_mib_s),
        (2_000, 5_000, 50, 201)
    );
    // A cap past what a token can say is no cap there; a promise saturates.
    let big = Requirements {
        max_iops: 900_000_000,
        max_mib_s: 5_000_000,
        ..Default::default()
    };
    let t = crate::state::qos::terms(Layout::Single, &big);
    assert_eq!((t.max_iops, t.max_mib_s), (900_000_000, 0));

    // Refused in words: a cap below the promise, absurd caps, an absurd weight.
    let cases = [
        (
            Requirements {
                min_iops: 5_000,
                max_iops: 4_000,
                ..Default::default()
            },
            "the cap of 4000 IOPS is below the promise of 5000 IOPS",
        ),
        (
            Requirements {
                min_mib_s: 50,
                max_mib_s: 10,
                ..Default::default()
            },
            "the cap of 10 MiB/s is below the promise of 50 MiB/s",
        ),
        (
            Requirements {
                max_iops: u64::MAX,
                ..Default::default()
            },
            "past what any device may say it does",
        ),
        (
            Requirements {
                max_mib_s: 10_000_001,
                ..Default::default()
            },
            "past what any device may say it does",
        ),
        (
            Requirements {
                weight: 256,
                ..Default::default()
            },
            "weight 256 is not in 1..=255",
        ),
    ];
    for (req, why) in cases {
        let e = create(&mut s, "c", Layout::Single, req).unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{e:?}");
        assert!(e.to_string().contains(why), "{e} / {why}");
    }
    // A cap that leaves an extent too little for a host's queue to drain in time.
    let e = create(
        &mut s,
        "c",
        Layout::Stripe {
            width: 4,
            unit: 1 << 20,
        },
        Requirements {
            max_mib_s: 40,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        e.to_string().contains(
            "leaves each extent 0 IOPS and 10 MiB/s; a cap needs at least 100 IOPS and 16 MiB/s"
        ),
        "{e}"
    );
    // A cap alone needs no capability: it is placed anywhere.
    let mut bare = pool(1);
    create(
        &mut bare,
        "d",
        Layout::Single,
        Requirements {
            max_iops: 100,
            ..Default::default()
        },
    )
    .unwrap();
}

#[test]
fn a_lease_rate_lately_comes_from_its_nodes_counts_in_5_second_windows() {
    let mut s = pool(1);
    create(&mut s, "v", Layout::Single, Requirements::default()).unwrap();
    let l = mount(&mut s, "v", "h", true).unwrap();
    let node = *s.nodes.keys().next().unwrap();
    let beat = |s: &mut State, now_ms: u64, ops: u64| {
        apply(
            s,
            Command::Heartbeat {
                node_id: node,
                usage: vec![Counters {
                    lease_id: l.id,
                    read_ops: ops,
                    read_bytes: ops * 4096,
                    ..Default::default()
                }],
                now_ms,
                rebuilds: vec![],
            },
        )
        .unwrap();
    };
    assert_eq!(
        s.usage[&l.id].recent(500),
        (0.0, 0.0),
        "nothing counted yet"
    );
    beat(&mut s, 1_000, 1_000);
    beat(&mut s, 3_000, 2_000);
    // The first window, open 2.5 s: its rate so far.
    assert_eq!(s.usage[&l.id].recent(3_500).0, 1_200.0);
    assert_eq!(
        s.usage[&l.id].recent(1_500),
        (0.0, 0.0),
        "under a second: the window before"
    );
    // A count past 5 s closes it: 3,000 operations from 1.0 s to 6.5 s.
    beat(&mut s, 6_500, 5_000);
    let (ops_s, bytes_s) = s.usage[&l.id].recent(7_000);
    assert!((ops_s - 3_000.0 / 5.5).abs() < 1e-6, "{ops_s}");
    assert!((bytes_s - 4096.0 * 3_000.0 / 5.5).abs() < 1e-3, "{bytes_s}");
    // No count for a whole window (an idle lease): the open window's rate so far.
    let (ops_s, _) = s.usage[&l.id].recent(20_000);
    assert!((ops_s - 5_000.0 / 13.5).abs() < 1e-6, "{ops_s}");
    // An ended lease: what it got until it ended.
    apply(
        &mut s,
        Command::Unmount {
            lease_id: l.id,
            now_ms: 8_500,
        },
    )
    .unwrap();
    let (ops_s, _) = s.usage[&l.id].recent(60_000);
    assert!((ops_s - 5_000.0 / 2.0).abs() < 1e-6, "{ops_s}");
}
