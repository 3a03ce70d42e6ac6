//! `/metrics` on `--metrics`, with the real node: the text parses as the Prometheus text format
//! (testkit's strict parser), and its counts are exactly the requests the test made.

mod common;

use std::time::{Duration, Instant};

use common::{rt, Node};
use dasmesh_client::{ConnectOptions, Connection};
use dasmesh_testkit::{free_addr, prometheus};
use dasmesh_wire::{DeviceId, Rights, Status};

const MIB: u64 = 1 << 20;

#[test]
fn metrics_count_every_request_by_device_class_status_and_latency() {
    let at = free_addr();
    let node = Node::start(&["memory:16M", "memory:16M"], &["--metrics", &at]);
    let m = prometheus::parse(&prometheus::scrape(&at));
    assert_eq!(
        m["dasmesh_node_requests_total{device=\"0\",op=\"read\"}"],
        0.0
    );
    // A token of volume 5, as the controller's name their volume.
    let t = node.token_terms(0, (0, 8 * MIB), Rights::ReadWrite, 5, Default::default());
    let lease = t.claim_unverified().unwrap().nonce;
    rt().block_on(async {
        let c = Connection::connect(&node.addr, DeviceId(0), &t, &ConnectOptions::default())
            .await
            .unwrap();
        for i in 0..100 {
            c.write(i * 4096, &[7u8; 4096], false).await.unwrap();
        }
        for i in 0..50 {
            c.read(i * 8192, 8192).await.unwrap();
        }
        c.flush().await.unwrap();
        let e = c.read(8 * MIB, 4096).await.unwrap_err();
        assert_eq!(e.status(), Some(Status::OutOfRange));
        // The volume extent's own counts, while its lease is connected: the reads and writes
        // that started (not the flush, not the refused read).
        let vol = "dasmesh_node_volume_requests_total{volume=\"5\",device=\"0\",offset=\"0\"}";
        let t0 = Instant::now();
        loop {
            let m = prometheus::parse(&prometheus::scrape(&at));
            if m.get(vol) == Some(&150.0) {
                let bytes =
                    "dasmesh_node_volume_bytes_total{volume=\"5\",device=\"0\",offset=\"0\"}";
                assert_eq!(m[bytes], (100 * 4096 + 50 * 8192) as f64);
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{vol}: {:?}",
                m.get(vol)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    // Reactors publish every 100 ms.
    let want = "dasmesh_node_request_duration_seconds_count{device=\"0\"}";
    let t0 = Instant::now();
    let m = loop {
        let m = prometheus::parse(&prometheus::scrape(&at));
        if m[want] == 152.0 {
            break m;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{want}: {}", m[want]);
        std::thread::sleep(Duration::from_millis(50));
    };
    let get = |k: &str| m.get(k).copied().unwrap_or_else(|| panic!("no {k}"));
    assert_eq!(
        get("dasmesh_node_requests_total{device=\"0\",op=\"read\"}"),
        51.0
    );
    assert_eq!(
        get("dasmesh_node_requests_total{device=\"0\",op=\"write\"}"),
        100.0
    );
    assert_eq!(
        get("dasmesh_node_requests_total{device=\"0\",op=\"other\"}"),
        1.0
    );
    assert_eq!(
        get("dasmesh_node_bytes_total{device=\"0\",direction=\"read\"}"),
        (50 * 8192) as f64
    );
    assert_eq!(
        get("dasmesh_node_bytes_total{device=\"0\",direction=\"write\"}"),
        (100 * 4096) as f64
    );
    assert_eq!(
        get("dasmesh_node_errors_total{device=\"0\",status=\"OutOfRange\"}"),
        1.0
    );
    assert_eq!(
        get("dasmesh_node_requests_total{device=\"1\",op=\"read\"}"),
        0.0
    );
    assert_eq!(get("dasmesh_node_inflight{device=\"0\"}"), 0.0);
    assert_eq!(
        get("dasmesh_node_request_duration_seconds_bucket{device=\"0\",le=\"+Inf\"}"),
        152.0
    );
    assert!(get("dasmesh_node_reactor_busy_seconds_total{reactor=\"0\"}") > 0.0);
    // The same per lease (the token's nonce): its one connection was all of them.
    for (family, label, want) in [
        ("requests_total", "op=\"read\"", 51.0),
        ("requests_total", "op=\"write\"", 100.0),
        ("requests_total", "op=\"other\"", 1.0),
        ("bytes_total", "direction=\"write\"", (100 * 4096) as f64),
        ("errors_total", "status=\"OutOfRange\"", 1.0),
        ("request_duration_seconds_bucket", "le=\"+Inf\"", 152.0),
    ] {
        let k = format!("dasmesh_node_lease_{family}{{lease=\"{lease}\",{label}}}");
        assert_eq!(get(&k), want, "{k}");
    }
    assert_eq!(
        get(&format!("dasmesh_node_lease_inflight{{lease=\"{lease}\"}}")),
        0.0
    );
    // Anything but GET /metrics is a 404, and the node serves on.
    let mut s = std::net::TcpStream::connect(&at).unwrap();
    use std::io::{Read as _, Write as _};
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
    assert!(prometheus::scrape(&at).contains("dasmesh_node_requests_total"));
}
