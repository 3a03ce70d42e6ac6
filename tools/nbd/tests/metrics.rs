//! `dasmesh nbd serve --metrics`: the text parses as the Prometheus text format (testkit's
//! strict parser), and its counts are exactly the requests an NBD client made.

mod common;

use std::time::{Duration, Instant};

use common::client::Client;
use common::{Cluster, GatewayCluster};
use dasmesh_testkit::{free_addr, prometheus};

#[test]
fn metrics_count_every_command_its_bytes_errors_and_latency() {
    let c = Cluster::start(1);
    c.create_now("v", "single", 16 << 20);
    let at = free_addr();
    let gw = c.gateway("v", &["--metrics", &at]);
    let m = prometheus::parse(&prometheus::scrape(&at));
    assert_eq!(m["dasmesh_nbd_connections"], 0.0);

    let mut nbd = Client::connect(&gw.addr);
    nbd.go();
    for i in 0..10u64 {
        assert_eq!(nbd.write(i << 16, &[i as u8; 64 << 10]), 0);
    }
    for i in 0..5u64 {
        assert_eq!(
            nbd.read(i << 16, 64 << 10).unwrap(),
            vec![i as u8; 64 << 10]
        );
    }
    // Past the end of the export: refused (EINVAL), counted as an error of a read.
    assert!(nbd.read(16 << 20, 4096).is_err());

    let want = "dasmesh_nbd_requests_total{command=\"read\"}";
    let t0 = Instant::now();
    let m = loop {
        let m = prometheus::parse(&prometheus::scrape(&at));
        if m.get(want) == Some(&6.0) {
            break m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{want}: {:?}",
            m.get(want)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(m["dasmesh_nbd_connections"], 1.0);
    assert_eq!(m["dasmesh_nbd_requests_total{command=\"write\"}"], 10.0);
    assert_eq!(
        m["dasmesh_nbd_bytes_total{command=\"write\"}"],
        (10 << 16) as f64
    );
    assert_eq!(
        m["dasmesh_nbd_bytes_total{command=\"read\"}"],
        (5 << 16) as f64
    );
    let errors: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("dasmesh_nbd_errors_total{command=\"read\","))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(errors, 1.0);
    assert_eq!(
        m["dasmesh_nbd_request_duration_seconds_count{command=\"write\"}"],
        10.0
    );
    assert!(m["dasmesh_nbd_request_duration_seconds_sum{command=\"write\"}"] > 0.0);
    // Every gateway family the Grafana dashboard in docs/ uses is served here.
    let declared = prometheus::declared(&prometheus::scrape(&at));
    let used = prometheus::dashboard_families("dasmesh_nbd_");
    assert!(used.len() >= 5, "{used:?}");
    for family in &used {
        assert!(
            declared.contains(family),
            "the dashboard uses {family}, which the gateway does not serve"
        );
    }
}
