//! Input bounds (issue 16, items 3, 4 and 10): device reports that contradict the node, numbers
//! that overflow or cannot be stored, strings and lists without bound. Each is refused before it
//! reaches the state, with a message that quotes only a short prefix of the bad value.

use super::*;
use proptest::prelude::*;
use validate::*;

const M: u64 = 1 << 20;

fn register(s: &mut State, address: &str) -> Result<Outcome, Error> {
    apply(
        s,
        Command::Register {
            node_id: 0,
            address: address.into(),
            version: "t".into(),
            failure_domain: String::new(),
            name: String::new(),
            data_tls: false,
            now_ms: 0,
        },
    )
}

fn node(s: &mut State) -> u64 {
    match register(s, "127.0.0.1:7700").unwrap() {
        Outcome::Node(n) => n.id,
        o => panic!("{o:?}"),
    }
}

fn report(s: &mut State, node_id: u64, devices: Vec<DeviceRec>) -> Result<Outcome, Error> {
    apply(s, Command::ReportDevices { node_id, devices })
}

/// Refused as invalid, the state unchanged, the message short enough for a gRPC header.
fn refused(s: &mut State, what: &str, cmd: Command) {
    let before = s.clone();
    let e = apply(s, cmd).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{what}: {e}");
    assert!(e.to_string().len() < 400, "{what}: message too long: {e}");
    assert_eq!(*s, before, "{what}: a refused command changed the state");
}

/// 64 MiB, the owner keeps the first MiB (what the node's `--reserve 1M` reports).
fn reserved_dev() -> DeviceRec {
    DeviceRec {
        read_iops: 0,
        write_iops: 0,
        mib_s: 0,
        device_id: 0,
        path: "/dev/x".into(),
        block_size: 4096,
        size: 64 * M,
        lendable_start: M,
        lendable_length: 63 * M,
        reserved_start: 0,
        reserved_length: M,
    }
}

#[test]
fn device_reports_that_contradict_the_node_are_refused() {
    let mut s = State::default();
    let id = node(&mut s);
    let with = |f: &dyn Fn(&mut DeviceRec)| {
        let mut d = reserved_dev();
        f(&mut d);
        vec![d]
    };
    let cases: Vec<(&str, Vec<DeviceRec>)> = vec![
        // The issue's case: lendable_start 0 over the owner's first MiB.
        ("lends the reserve", with(&|d| d.lendable_start = 0)),
        (
            "lends a reserve at the end",
            with(&|d| {
                d.reserved_start = 60 * M;
                d.reserved_length = 4 * M;
            }),
        ),
        ("lends past the size", with(&|d| d.lendable_length = 64 * M)),
        (
            "lendable end wraps",
            with(&|d| {
                d.lendable_start = u64::MAX - 4095;
                d.lendable_length = 8192;
            }),
        ),
        (
            "reserve past the size",
            with(&|d| d.reserved_length = 65 * M),
        ),
        (
            "reserve end wraps",
            with(&|d| {
                d.reserved_start = u64::MAX;
                d.reserved_length = 2;
            }),
        ),
        (
            "start not a multiple of 4096",
            with(&|d| {
                d.block_size = 512;
                d.lendable_start = M + 512;
                d.lendable_length = 62 * M;
            }),
        ),
        (
            "length not a multiple of 4096",
            with(&|d| d.lendable_length -= 512),
        ),
        ("block size 1000", with(&|d| d.block_size = 1000)),
        ("block size 8192", with(&|d| d.block_size = 8192)),
        ("block size 256", with(&|d| d.block_size = 256)),
        ("block size 0", with(&|d| d.block_size = 0)),
        (
            "device too large",
            with(&|d| d.size = MAX_DEVICE_SIZE + 4096),
        ),
        (
            "path too long",
            with(&|d| d.path = "p".repeat(MAX_DEVICE_PATH + 1)),
        ),
        ("duplicate id", vec![reserved_dev(), reserved_dev()]),
        (
            "too many devices",
            (0..=MAX_DEVICES as u32)
                .map(|device_id| DeviceRec {
                    device_id,
                    ..reserved_dev()
                })
                .collect(),
        ),
    ];
    for (what, devices) in cases {
        refused(
            &mut s,
            what,
            Command::ReportDevices {
                node_id: id,
                devices,
            },
        );
    }
    // Without the contradiction it is accepted, and nothing is ever placed on the reserve.
    report(&mut s, id, vec![reserved_dev()]).unwrap();
    let v = create(&mut s, "v", 63 * M, Layout::Single).unwrap();
    assert!(v.extents.iter().all(|e| e.piece.offset >= M), "{v:?}");
    assert!(create(&mut s, "w", 4096, Layout::Single).is_err());
}

#[test]
fn the_pool_total_stays_summable() {
    let mut s = State::default();
    let a = node(&mut s);
    let big = |device_id| DeviceRec {
        read_iops: 0,
        write_iops: 0,
        mib_s: 0,
        device_id,
        path: String::new(),
        block_size: 4096,
        size: MAX_DEVICE_SIZE,
        lendable_start: 0,
        lendable_length: MAX_DEVICE_SIZE,
        reserved_start: 0,
        reserved_length: 0,
    };
    let n = (MAX_POOL_BYTES / MAX_DEVICE_SIZE) as u32;
    report(&mut s, a, (0..n).map(big).collect()).unwrap();
    let b = node(&mut s);
    let mut one = big(0);
    one.size = 4096;
    one.lendable_length = 4096;
    refused(
        &mut s,
        "one byte past the pool bound",
        Command::ReportDevices {
            node_id: b,
            devices: vec![one.clone()],
        },
    );
    // A node replacing its own report is not counted twice.
    report(&mut s, a, (0..n).map(big).collect()).unwrap();
}

#[test]
fn numbers_out_of_bounds_are_refused() {
    let mut s = pool(3);
    let vol = |name: &str, size, layout, price| Command::CreateVolume {
        headroom_pct: 10,
        name: name.into(),
        size,
        layout,
        req: Requirements {
            price_per_gib_hour: price,
            ..Default::default()
        },
        now_ms: 0,
    };
    for price in [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -1.0,
        MAX_PRICE * 2.0,
    ] {
        refused(&mut s, "price", vol("p", G, Layout::Single, price));
    }
    for size in [0, MAX_VOLUME_SIZE + 1, 1 << 63, u64::MAX] {
        refused(&mut s, "size", vol("p", size, Layout::Single, 1.0));
    }
    for layout in [
        Layout::Mirror { copies: 1 },
        Layout::Mirror { copies: 9 },
        Layout::Mirror { copies: u32::MAX },
        Layout::Stripe { width: 1, unit: M },
        Layout::Stripe {
            width: 257,
            unit: M,
        },
        Layout::Stripe { width: 2, unit: 0 },
        Layout::Stripe {
            width: 2,
            unit: 2048,
        },
        Layout::Stripe {
            width: 2,
            unit: (1 << 30) + 4096,
        },
        Layout::Stripe {
            width: 2,
            unit: u64::MAX,
        },
    ] {
        refused(&mut s, &layout.to_string(), vol("p", G, layout, 1.0));
    }
    // At the bounds: accepted (the size is too big for this pool, which is another refusal).
    apply(&mut s, vol("p", G, Layout::Single, MAX_PRICE)).unwrap();
    apply(&mut s, vol("q", G, Layout::Single, 0.0)).unwrap();
    let e = apply(&mut s, vol("r", MAX_VOLUME_SIZE, Layout::Concat, 1.0)).unwrap_err();
    assert!(matches!(e, Error::Insufficient(_)), "{e}");
    for size in [0, MAX_VOLUME_SIZE + 1, u64::MAX] {
        refused(
            &mut s,
            "resize",
            Command::ResizeVolume {
                headroom_pct: 10,
                name: "p".into(),
                size,
            },
        );
    }
    let m = |ttl_ms, now_ms| Command::Mount {
        volume: "p".into(),
        host: "h".into(),
        rw: false,
        ttl_ms,
        now_ms,
        holder: None,
    };
    for ttl in [0, 1, MIN_TTL_MS - 1, MAX_TTL_MS + 1, 1 << 63, u64::MAX] {
        refused(&mut s, "ttl", m(ttl, 0));
    }
    refused(&mut s, "expiry wraps", m(MIN_TTL_MS, u64::MAX - 10));
    let Outcome::Lease(l, _) = apply(&mut s, m(MAX_TTL_MS, 5)).unwrap() else {
        panic!()
    };
    assert_eq!(l.expires_at_ms, 5 + MAX_TTL_MS);
    for ttl in [1, 1 << 63, u64::MAX] {
        refused(
            &mut s,
            "renew ttl",
            Command::Renew {
                joined: vec![],
                lease_id: l.id,
                ttl_ms: ttl,
                now_ms: 10,
            },
        );
    }
}

#[test]
fn long_strings_and_lists_are_refused_with_a_short_echo() {
    let big = "x".repeat(1 << 20);
    let mut s = pool(2);
    create(&mut s, "m", G, Layout::Mirror { copies: 2 }).unwrap();
    let w = mount(&mut s, "m", "w", true).unwrap();
    let node_id = *s.nodes.keys().next().unwrap();
    let cmds = [
        Command::CreateVolume {
            headroom_pct: 10,
            name: big.clone(),
            size: G,
            layout: Layout::Single,
            req: Requirements::default(),
            now_ms: 0,
        },
        Command::ResizeVolume {
            headroom_pct: 10,
            name: big.clone(),
            size: G,
        },
        Command::DeleteVolume { name: big.clone() },
        Command::PurgeVolume { name: big.clone() },
        Command::Mount {
            volume: big.clone(),
            host: "h".into(),
            rw: false,
            ttl_ms: 60_000,
            now_ms: 0,
            holder: None,
        },
        Command::Mount {
            holder: None,
            volume: "m".into(),
            host: big.clone(),
            rw: false,
            ttl_ms: 60_000,
            now_ms: 0,
        },
        Command::Mount {
            holder: None,
            volume: "m".into(),
            host: String::new(),
            rw: false,
            ttl_ms: 60_000,
            now_ms: 0,
        },
        Command::Register {
            node_id: 0,
            address: big.clone(),
            version: String::new(),
            failure_domain: String::new(),
            name: String::new(),
            data_tls: false,
            now_ms: 0,
        },
        Command::Register {
            node_id: 0,
            address: "n:1".into(),
            version: big.clone(),
            failure_domain: String::new(),
            name: String::new(),
            data_tls: false,
            now_ms: 0,
        },
        Command::Register {
            node_id: 0,
            address: "n:1".into(),
            version: String::new(),
            failure_domain: big.clone(),
            name: String::new(),
            data_tls: false,
            now_ms: 0,
        },
        Command::Register {
            node_id: 0,
            address: "n:1".into(),
            version: "v\u{1b}[2J".into(),
            failure_domain: String::new(),
            name: String::new(),
            data_tls: false,
            now_ms: 0,
        },
        Command::ReportDevices {
            node_id,
            devices: vec![DeviceRec {
                path: big.clone(),
                ..dev(0, 100 * G)
            }],
        },
        Command::FailCopies {
            not_sent: false,
            lease_id: w.id,
            copies: vec![1],
            reason: big.clone(),
            now_ms: 1000,
            dirty: Vec::new(),
        },
        Command::FailCopies {
            not_sent: false,
            lease_id: w.id,
            copies: vec![1; MAX_REPORTED_COPIES + 1],
            reason: String::new(),
            now_ms: 1000,
            dirty: Vec::new(),
        },
        Command::RebuiltCopies {
            lease_id: w.id,
            copies: vec![1; 1 << 16],
            now_ms: 1000,
        },
        Command::Heartbeat {
            rebuilds: vec![],
            node_id,
            usage: vec![Counters::default(); MAX_USAGE_ENTRIES + 1],
            now_ms: 1000,
        },
    ];
    for cmd in cmds {
        let what = format!("{cmd:?}").chars().take(60).collect::<String>();
        refused(&mut s, &what, cmd);
    }
}

#[test]
fn node_addresses_must_be_host_and_port() {
    for good in [
        "127.0.0.1:7700",
        "0.0.0.0:1",
        "[::1]:7700",
        "[fe80::1]:65535",
        "localhost:7700",
        "node-1.rack2.example.com:7700",
        "n0:1",
        "example.com.:80",
    ] {
        let mut s = State::default();
        register(&mut s, good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    let mut s = State::default();
    for bad in [
        "not an address",
        "1.2.3.4:99999",
        "1.2.3.4:0",
        "1.2.3.4:",
        "1.2.3.4",
        ":7700",
        "host:+80",
        "host:08080808",
        "::1:7700",
        "[::1:7700",
        "[zz]:1",
        "[1.2.3.4]:1",
        "-bad:1",
        "bad-:1",
        "a..b:1",
        "a_b:1",
        "1.2.3:80",
        "1.2.3.256:80",
        "exa mple:1",
        "é.example:1",
    ] {
        refused(
            &mut s,
            bad,
            Command::Register {
                node_id: 0,
                address: bad.into(),
                version: String::new(),
                failure_domain: String::new(),
                name: String::new(),
                data_tls: false,
                now_ms: 0,
            },
        );
    }
    let e = register(&mut s, &format!("{}:1", "a".repeat(1 << 20))).unwrap_err();
    assert!(e.to_string().len() < 200, "{e}");
}

mod numbers {
    //! Any number from the API either is refused (state unchanged) or leaves a state the store
    //! reads back as written, with no arithmetic that wrapped or panicked on the way.

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Create(u8, u64, f64, Layout),
        Resize(u8, u64),
        Mount(u8, bool, u64, u64),
        Renew(u8, u64, u64),
    }

    fn size() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0),
            Just(1),
            Just(MAX_VOLUME_SIZE),
            Just(MAX_VOLUME_SIZE + 1),
            Just(1 << 63),
            Just(u64::MAX),
            Just(u64::MAX - 4095),
            1u64..4 * G,
            any::<u64>(),
        ]
    }

    fn ttl() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0),
            Just(1),
            Just(MIN_TTL_MS),
            Just(MAX_TTL_MS),
            Just(MAX_TTL_MS + 1),
            Just(1 << 63),
            Just(u64::MAX),
            MIN_TTL_MS..100_000,
            any::<u64>(),
        ]
    }

    fn now() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..1 << 45,
            Just(u64::MAX),
            u64::MAX - 1_000_000..=u64::MAX,
            any::<u64>(),
        ]
    }

    fn price() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            Just(-1e-300),
            Just(f64::MAX),
            0.0..1e9,
            any::<f64>(),
        ]
    }

    fn layout() -> impl Strategy<Value = Layout> {
        prop_oneof![
            Just(Layout::Single),
            Just(Layout::Concat),
            Just(Layout::Mirror { copies: 2 }),
            Just(Layout::Stripe {
                width: 2,
                unit: 64 << 10
            }),
            any::<u32>().prop_map(|copies| Layout::Mirror { copies }),
            (any::<u32>(), any::<u64>()).prop_map(|(width, unit)| Layout::Stripe { width, unit }),
            (0u32..300, 0u64..1 << 31).prop_map(|(width, unit)| Layout::Stripe { width, unit }),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, size(), price(), layout()).prop_map(|(v, s, p, l)| Op::Create(v, s, p, l)),
            (0u8..3, size()).prop_map(|(v, s)| Op::Resize(v, s)),
            (0u8..3, any::<bool>(), ttl(), now()).prop_map(|(v, rw, t, n)| Op::Mount(v, rw, t, n)),
            (0u8..4, ttl(), now()).prop_map(|(i, t, n)| Op::Renew(i, t, n)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn any_number_is_refused_or_stored_faithfully(ops in proptest::collection::vec(op(), 1..25)) {
            let mut s = pool(3);
            let mut leases = Vec::new();
            for op in ops {
                let before = s.clone();
                let r = match op.clone() {
                    Op::Create(v, size, price, layout) => apply(&mut s, Command::CreateVolume {
                        headroom_pct: 10,
                        name: format!("v{v}"),
                        size,
                        layout,
                        req: Requirements { price_per_gib_hour: price, ..Default::default() },
                        now_ms: 0,
                    }),
                    Op::Resize(v, size) => apply(&mut s, Command::ResizeVolume { name: format!("v{v}"), size, headroom_pct: 10 }),
                    Op::Mount(v, rw, ttl_ms, now_ms) => apply(&mut s, Command::Mount {
                        holder: None,
                        volume: format!("v{v}"), host: "h".into(), rw, ttl_ms, now_ms,
                    }),
                    Op::Renew(i, ttl_ms, now_ms) => match leases.get(i as usize) {
                        Some(&lease_id) => apply(&mut s, Command::Renew { lease_id, ttl_ms, now_ms, joined: vec![] }),
                        None => continue,
                    },
                };
                match r {
                    Err(_) => prop_assert_eq!(&s, &before, "{:?} was refused but changed the state", op),
                    Ok(Outcome::Lease(l, _)) => {
                        let (Op::Mount(_, _, ttl, now) | Op::Renew(_, ttl, now)) = op else { unreachable!() };
                        prop_assert!((MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl), "{:?} accepted", op);
                        prop_assert_eq!(u128::from(l.expires_at_ms), u128::from(now) + u128::from(ttl));
                        if !leases.contains(&l.id) {
                            leases.push(l.id);
                        }
                    }
                    Ok(_) => {}
                }
                for v in s.volumes.values() {
                    prop_assert!(v.size > 0 && v.size <= MAX_VOLUME_SIZE, "{} has size {}", v.name, v.size);
                    let p = v.req.price_per_gib_hour;
                    prop_assert!(p.is_finite() && p >= 0.0, "{} has price {}", v.name, p);
                }
                // What the store needs: the state reads back as written.
                let json = serde_json::to_vec(&s).unwrap();
                let back: Result<State, _> = serde_json::from_slice(&json);
                prop_assert!(back.as_ref().is_ok_and(|b| *b == s), "the state does not read back: {:?}", back.err());
            }
        }
    }
}
