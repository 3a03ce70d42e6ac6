//! `/metrics` on `--http`, with the real controller and a node on 127.0.0.1: the text parses as
//! the Prometheus text format (a strict parser below), and its values move with what the test
//! does (a node registering, volumes created and refused, a lease).

use std::time::{Duration, Instant};

use dasmesh_api::v1;
use dasmesh_testkit::{free_addr, prometheus, Process};

mod common;

use common::{channel, mount_and_open};

#[test]
fn metrics_parse_and_move_with_what_the_pool_does() {
    let dir = tempfile::tempdir().unwrap();
    let http = free_addr();
    let ctl = Process::controller_with(&dir.path().join("ctl"), "127.0.0.1:0", &["--http", &http]);
    let m = prometheus::parse(&prometheus::scrape(&http));
    assert_eq!(m["dasmesh_controller_active"], 1.0);
    assert_eq!(m["dasmesh_nodes{state=\"up\"}"], 0.0);
    let node_http = free_addr();
    let _node = Process::node_with(
        dir.path(),
        &ctl.addr,
        "n0",
        "127.0.0.1:0",
        &["--metrics", &node_http],
    );
    let t0 = Instant::now();
    while prometheus::parse(&prometheus::scrape(&http))["dasmesh_nodes{state=\"up\"}"] != 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the node never showed up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = prometheus::parse(&prometheus::scrape(&http));
    assert!(before["dasmesh_pool_lendable_bytes"] > 0.0);
    assert_eq!(
        before["dasmesh_pool_free_bytes"],
        before["dasmesh_pool_lendable_bytes"]
    );
    let create = "dasmesh_rpc_requests_total{method=\"/dasmesh.v1.Volumes/Create\",code=\"0\"}";
    let refused = "dasmesh_rpc_requests_total{method=\"/dasmesh.v1.Volumes/Create\",code=\"8\"}";
    assert!(!before.contains_key(create));
    let lease = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let ch = channel(&ctl.addr).await;
            let mut vols = v1::volumes_client::VolumesClient::new(ch.clone());
            for (name, layout) in [("a", "single"), ("b", "single"), ("m", "mirror:2")] {
                let r = vols
                    .create(v1::CreateVolumeRequest {
                        name: name.into(),
                        size_bytes: 16 << 20,
                        layout: Some(dasmesh_testkit::layout(layout)),
                        requirements: None,
                    })
                    .await;
                // One node: the mirror is refused for want of a second.
                assert_eq!(r.is_ok(), layout == "single", "{name}: {r:?}");
            }
            // A lease, and I/O under it: 3 writes of 4 KiB and 2 reads at its node.
            let (lease, opened) = mount_and_open(&ch, "a", "h", v1::Access::ReadWrite).await;
            let (x, c) = &opened[0];
            for i in 0..3u64 {
                c.write(x.offset + i * 4096, &[7; 4096], false)
                    .await
                    .unwrap();
            }
            for _ in 0..2 {
                c.read(x.offset, 4096).await.unwrap();
            }
            // Past the lease's range: refused by the node, counted as the lease's error.
            c.read(x.offset + x.length, 4096).await.unwrap_err();
            lease
        });
    let after = prometheus::parse(&prometheus::scrape(&http));
    assert_eq!(after[create], 2.0);
    assert_eq!(after[refused], 1.0);
    assert_eq!(after["dasmesh_volumes{state=\"ok\"}"], 2.0);
    assert_eq!(after["dasmesh_volume_bytes"], (32u64 << 20) as f64);
    assert_eq!(after["dasmesh_leases{access=\"rw\"}"], 1.0);
    assert_eq!(
        after["dasmesh_pool_free_bytes"],
        before["dasmesh_pool_free_bytes"] - (32u64 << 20) as f64
    );
    let calls = "dasmesh_rpc_duration_seconds_count{method=\"/dasmesh.v1.Volumes/Create\"}";
    assert_eq!(after[calls], 3.0);
    // The node beats every 200 ms: its heartbeats go on being counted.
    let hb = "dasmesh_rpc_duration_seconds_count{method=\"/dasmesh.v1.NodeRegistry/Heartbeat\"}";
    let t0 = Instant::now();
    while prometheus::parse(&prometheus::scrape(&http))[hb] <= before[hb] {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no heartbeat counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The node counts the lease's requests, bytes, errors and latency, as it does a device's.
    let l = |name: &str, label: &str| format!("{name}{{lease=\"{lease}\",{label}}}");
    let t0 = Instant::now();
    let n = loop {
        let n = prometheus::parse(&prometheus::scrape(&node_http));
        if n.get(&l("dasmesh_node_lease_requests_total", "op=\"read\"")) == Some(&3.0) {
            break n;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the lease's reads were never counted: {n:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        n[&l("dasmesh_node_lease_requests_total", "op=\"write\"")],
        3.0
    );
    assert_eq!(
        n[&l("dasmesh_node_lease_bytes_total", "direction=\"write\"")],
        3.0 * 4096.0
    );
    assert_eq!(
        n[&l("dasmesh_node_lease_bytes_total", "direction=\"read\"")],
        2.0 * 4096.0
    );
    let errors: f64 = n
        .iter()
        .filter(|(k, _)| {
            k.starts_with(&format!(
                "dasmesh_node_lease_errors_total{{lease=\"{lease}\","
            ))
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(errors, 1.0, "{n:?}");
    let count = format!("dasmesh_node_lease_request_duration_seconds_count{{lease=\"{lease}\"}}");
    assert_eq!(
        n[&count], 6.0,
        "every request answered, the refused one too"
    );
    assert_eq!(
        n[&format!("dasmesh_node_lease_inflight{{lease=\"{lease}\"}}")],
        0.0
    );

    // Every family the Grafana dashboard in docs/ uses is one the controller or a node serves
    // (the NBD gateway's are checked by its own test).
    let mut declared = prometheus::declared(&prometheus::scrape(&http));
    declared.extend(prometheus::declared(&prometheus::scrape(&node_http)));
    let used: Vec<String> = prometheus::dashboard_families("dasmesh_")
        .into_iter()
        .filter(|f| !f.starts_with("dasmesh_nbd_"))
        .collect();
    for family in &used {
        assert!(
            declared.contains(family),
            "the dashboard uses {family}, served by no one"
        );
    }
    assert!(used.len() >= 16, "{used:?}");
}
