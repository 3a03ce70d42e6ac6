//! Prometheus text format for tests: fetch `/metrics` and parse it strictly.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};

/// GET `/metrics` over plain HTTP/1.1.
pub fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to --http");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// Parses the text format strictly: every sample belongs to a family declared by `# TYPE`
/// before it, names and label names are valid, label values quoted, values numbers; a
/// histogram's buckets are cumulative and end with `+Inf` equal to its `_count`. Returns each
/// sample, by name and labels as written.
pub fn parse(text: &str) -> BTreeMap<String, f64> {
    let valid = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(valid(name), "{line}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "declared twice: {line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(valid(name), "{line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("labels in {line}"));
                for pair in inner.split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                    assert!(valid(k), "{line}");
                    assert!(
                        v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "{line}"
                    );
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "sample before its # TYPE: {line}"
        );
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "twice: {line}"
        );
    }
    // Histograms: cumulative buckets ending in +Inf == _count.
    for (name, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let mut by_series: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (k, v) in &samples {
            if let Some(rest) = k.strip_prefix(&format!("{name}_bucket{{")) {
                let labels: String = rest.split(",le=").next().unwrap().to_string();
                by_series.entry(labels.clone()).or_default().push(*v);
                if rest.contains("le=\"+Inf\"") {
                    let count = samples[&format!("{name}_count{{{labels}}}")];
                    assert_eq!(*v, count, "{k}");
                }
            }
        }
        for (labels, _) in by_series {
            let mut last = 0.0;
            for (k, v) in &samples {
                if k.starts_with(&format!("{name}_bucket{{{labels},le=")) && !k.contains("+Inf") {
                    assert!(*v >= last, "{k} falls");
                    last = *v;
                }
            }
        }
    }
    samples
}

/// The families `text` declares (`# TYPE` lines).
pub fn declared(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next().map(String::from))
        .collect()
}

/// The families the Grafana dashboard in docs/grafana uses whose names start with `prefix`
/// (a histogram's `_bucket`, `_sum` and `_count` named as its family), one entry per use.
pub fn dashboard_families(prefix: &str) -> Vec<String> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana/dasmesh.json");
    let dashboard =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    dashboard
        .match_indices(prefix)
        .map(|(i, _)| {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name)
                .to_string()
        })
        .collect()
}
