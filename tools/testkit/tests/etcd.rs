//! The test kit's etcd cluster against the real etcd: keys written through one member are read
//! through another, writes go on with one member of three killed and stop with two, killed
//! members come back with their data, and dropping the cluster leaves no process and no files.
//! Talks to etcd's v3 JSON gateway, as any HTTP client could. Skipped when etcd is not installed.

use std::path::Path;
use std::time::{Duration, Instant};

use dasmesh_testkit::etcd::{http, require_etcd, EtcdCluster};

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as the gateway wants keys and values.
fn b64(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The inverse of [`b64`].
fn unb64(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut n, mut bits) = (0u32, 0);
    for c in s.bytes().take_while(|&c| c != b'=') {
        let v = B64.iter().position(|&x| x == c).expect("base64 digit") as u32;
        n = n << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits) as u8);
        }
    }
    out
}

/// Puts `key` = `value` through the member at `url`; Err says why it did not succeed within
/// `timeout`.
fn put(url: &str, key: &str, value: &str, timeout: Duration) -> Result<(), String> {
    let body = format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        b64(key.as_bytes()),
        b64(value.as_bytes())
    );
    match http(url, "/v3/kv/put", Some(&body), timeout) {
        Ok((200, reply)) if reply.contains(r#""revision""#) => Ok(()),
        Ok((status, reply)) => Err(format!("put {key} at {url}: {status} {reply}")),
        Err(e) => Err(format!("put {key} at {url}: {e}")),
    }
}

/// Puts through `url`, trying again until it succeeds (a new leader may be being elected);
/// panics after `within`.
fn put_within(url: &str, key: &str, value: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match put(url, key, value, Duration::from_secs(2)) {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{e}; trying again");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{e}, for {within:?}"),
        }
    }
}

/// `key`'s value as read (linearizably) through the member at `url`; `None` if it has none.
fn get(url: &str, key: &str) -> Option<String> {
    let body = format!(r#"{{"key":"{}"}}"#, b64(key.as_bytes()));
    let (status, reply) = http(url, "/v3/kv/range", Some(&body), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("range {key} at {url}: {e}"));
    assert_eq!(status, 200, "range {key} at {url}: {reply}");
    let (_, rest) = reply.split_once(r#""value":""#)?;
    let value = rest.split('"').next().expect("value ends");
    Some(String::from_utf8(unb64(value)).expect("utf-8 value"))
}

#[test]
fn base64_helpers_match_the_standard() {
    for (plain, coded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("dasmesh/test", "ZGFzbWVzaC90ZXN0"),
    ] {
        assert_eq!(b64(plain.as_bytes()), coded);
        assert_eq!(unb64(coded), plain.as_bytes());
    }
}

#[test]
fn three_members_serve_with_a_quorum_stop_without_one_and_clean_up() {
    if !require_etcd("three_members_serve_with_a_quorum_stop_without_one_and_clean_up") {
        return;
    }
    let mut c = EtcdCluster::start(3).expect("start etcd");
    let urls = c.client_urls();
    assert_eq!(urls.len(), 3);
    assert!(urls.iter().all(|u| u.starts_with("http://127.0.0.1:")));
    assert_eq!(c.endpoints(), urls.join(","));
    assert!(c.healthy_quorum());

    // Written through member 0, read through member 2.
    put(&urls[0], "dasmesh/test", "one", Duration::from_secs(5)).expect("put");
    assert_eq!(get(&urls[2], "dasmesh/test").as_deref(), Some("one"));
    assert_eq!(get(&urls[2], "dasmesh/absent"), None);

    // Two of three still make a quorum.
    c.kill(1);
    assert!(!c.is_running(1));
    assert!(!c.is_healthy(1));
    put_within(&urls[0], "dasmesh/test", "two", Duration::from_secs(10));
    assert_eq!(get(&urls[2], "dasmesh/test").as_deref(), Some("two"));
    assert!(c.healthy_quorum());

    // One of three does not: a write cannot be committed.
    c.kill(2);
    assert!(c.is_running(0));
    let lost = put(&urls[0], "dasmesh/lost", "x", Duration::from_millis(1500));
    assert!(lost.is_err(), "a write with one member of three succeeded");
    assert!(!c.healthy_quorum());

    // Both come back with their data and catch up.
    c.restart(1).expect("restart member 1");
    c.restart(2).expect("restart member 2");
    for i in 0..3 {
        assert!(c.is_running(i), "member {i} running");
        assert!(c.is_healthy(i), "member {i} healthy");
    }
    assert!(c.healthy_quorum());
    assert_eq!(get(&urls[2], "dasmesh/test").as_deref(), Some("two"));
    put_within(&urls[2], "dasmesh/test", "three", Duration::from_secs(10));
    assert_eq!(get(&urls[1], "dasmesh/test").as_deref(), Some("three"));

    // Dropped: no member left, nothing listening, no files.
    let pids: Vec<u32> = (0..3).map(|i| c.pid(i).expect("pid")).collect();
    let dir = c.dir().to_path_buf();
    assert!(dir.join("m0.etcd").is_dir() && dir.join("m0.log").is_file());
    drop(c);
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains("etcd"),
            "etcd member {pid} still there after drop"
        );
    }
    for url in &urls {
        assert!(
            http(url, "/health", None, Duration::from_secs(1)).is_err(),
            "{url} still answers after drop"
        );
    }
    assert!(!Path::new(&dir).exists(), "{} left behind", dir.display());
}

#[test]
fn a_stopped_member_answers_nothing_until_continued() {
    if !require_etcd("a_stopped_member_answers_nothing_until_continued") {
        return;
    }
    let mut c = EtcdCluster::start(1).expect("start etcd");
    let url = &c.client_urls()[0];
    assert!(c.restart(0).is_err(), "restart of a running member");

    c.stop(0);
    assert!(c.is_running(0), "a stopped member is still alive");
    assert!(!c.is_healthy(0));
    assert!(put(url, "k", "v", Duration::from_millis(500)).is_err());

    c.cont(0);
    put_within(url, "k", "v", Duration::from_secs(10));
    assert!(c.is_healthy(0));
    assert_eq!(get(url, "k").as_deref(), Some("v"));

    c.kill(0);
    assert!(!c.is_running(0) && c.pid(0).is_none());
    c.restart(0).expect("restart");
    assert_eq!(get(url, "k").as_deref(), Some("v"));
}
