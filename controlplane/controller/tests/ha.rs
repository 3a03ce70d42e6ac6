//! Several controllers over a real three-member etcd cluster (started here, removed after):
//! failover with host I/O running, a deposed controller that cannot write, etcd members lost,
//! and bad `--etcd` input. Skipped, with a message, where etcd is not installed.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dasmesh_api::{v1, ControllerOptions, Controllers};
use dasmesh_client::{Access, MountOptions, Volume};
use dasmesh_controller::store::etcd::{Etcd, EtcdStore};
use dasmesh_controller::store::{Store, StoreError};
use dasmesh_testkit::etcd::{require_etcd, EtcdCluster};
use dasmesh_testkit::{bin, free_addr, Process};

mod common;
use common::{active_of, etcd_controller as controller, role};

fn list(addrs: &[&str]) -> String {
    addrs
        .iter()
        .map(|a| format!("http://{a}"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn create(ctl: &Controllers, name: &str, layout: &str) -> Result<v1::Volume, tonic::Status> {
    v1::volumes_client::VolumesClient::new(ctl.clone())
        .create(v1::CreateVolumeRequest {
            name: name.into(),
            size_bytes: 16 << 20,
            layout: Some(dasmesh_testkit::layout(layout)),
            requirements: None,
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_while_hosts_keep_doing_io() {
    if !require_etcd("a_standby_takes_over_while_hosts_keep_doing_io") {
        return;
    }
    let etcd = EtcdCluster::start(3).unwrap();
    let (a1, a2) = (free_addr(), free_addr());
    let mut ctls = vec![controller(&etcd, &a1)];
    active_of(&[&a1], Duration::from_secs(10)).await;
    ctls.push(controller(&etcd, &a2));
    let addrs = [a1.as_str(), a2.as_str()];
    let urls = list(&addrs);
    let dir = tempfile::tempdir().unwrap();
    // Nodes given both controllers (node_at writes `http://` before the list).
    let ctl_arg = urls.trim_start_matches("http://").to_string();
    let _nodes: Vec<Process> = (0..2)
        .map(|i| Process::node_at(dir.path(), &ctl_arg, &format!("n{i}"), &free_addr()))
        .collect();
    let ctl = Controllers::parse(&urls).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while create(&ctl, "m", "mirror:2").await.is_err() {
        assert!(Instant::now() < deadline, "the nodes never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let vol = Volume::mount(
        &urls,
        "m",
        MountOptions {
            host: "h1".into(),
            access: Access::ReadWrite,
            ttl: Duration::from_secs(3),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Host I/O for the whole test: a write then a read back of each block, in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let io = tokio::spawn({
        let (vol, stop, done) = (vol.clone(), Arc::clone(&stop), Arc::clone(&done));
        async move {
            let mut i = 0u64;
            let mut worst = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let off = (i % 256) * 4096;
                let data = vec![(i % 251) as u8; 4096];
                let t = Instant::now();
                vol.write(off, &data, false)
                    .await
                    .expect("a write during failover");
                let back = vol.read(off, 4096).await.expect("a read during failover");
                assert_eq!(back, data, "block {}", off / 4096);
                worst = worst.max(t.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            worst
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = active_of(&addrs, Duration::from_secs(5)).await;
    ctls[first].signal("KILL");
    let killed = Instant::now();
    // The first mount through the new active controller.
    let ctl = Controllers::parse_with(
        &urls,
        ControllerOptions {
            failover_wait: Duration::from_secs(20),
            ..Default::default()
        },
    )
    .unwrap();
    let mounted = v1::leases_client::LeasesClient::new(ctl.clone())
        .mount(v1::MountRequest {
            holder_key: Vec::new(),
            volume: "m".into(),
            host_id: "reader".into(),
            access: v1::Access::ReadOnly as i32,
            ttl_ms: 10_000,
        })
        .await;
    let failover = killed.elapsed();
    mounted.expect("a mount through the new active controller");
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    assert_eq!(active_of(&addrs, Duration::from_secs(1)).await, 1 - first);
    // Past several lease TTLs: the host's lease was renewed by the new controller, not lost.
    let before = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(done.load(Ordering::Relaxed) > before, "host I/O stopped");
    let leases = v1::leases_client::LeasesClient::new(ctl.clone())
        .list(v1::ListLeasesRequest { volume: "m".into() })
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert!(
        leases.iter().any(|l| l.host_id == "h1"),
        "the host's lease expired over the failover: {leases:?}"
    );
    // The killed controller comes back as a standby.
    ctls[first].restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(role(addrs[first]).await, "standby");
    // A standby answers reads, from the state in etcd: asked alone, it lists the volume.
    let alone = tonic::transport::Endpoint::from_shared(format!("http://{}", addrs[first]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let vols = v1::volumes_client::VolumesClient::new(alone.clone())
        .list(v1::ListVolumesRequest {})
        .await
        .expect("a standby answers a list")
        .into_inner()
        .volumes;
    assert!(vols.iter().any(|v| v.name == "m"), "{vols:?}");
    // And refuses a change, naming the active one.
    let refused = v1::volumes_client::VolumesClient::new(alone)
        .delete(v1::DeleteVolumeRequest {
            expect_version: 0,
            name: "m".into(),
        })
        .await
        .unwrap_err();
    assert!(
        refused.metadata().get("dasmesh-role").is_some()
            && refused.message().contains(addrs[1 - first]),
        "{refused:?}"
    );
    // Both are listed with their roles, asked of either.
    let want = vec![
        ("active".to_string(), format!("http://{}", addrs[1 - first])),
        ("standby".to_string(), format!("http://{}", addrs[first])),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = v1::control_plane_client::ControlPlaneClient::new(ctl.clone())
            .list_controllers(v1::ListControllersRequest {})
            .await
            .unwrap()
            .into_inner();
        let got: Vec<(String, String)> = r
            .controllers
            .iter()
            .map(|c| (c.role.clone(), c.url.clone()))
            .collect();
        if got == want {
            assert!(r.store.starts_with("etcd "), "{}", r.store);
            break;
        }
        assert!(Instant::now() < deadline, "controller list: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let worst = io.await.unwrap();
    eprintln!(
        "failover: first mount {failover:?} after SIGKILL; host I/O {} rounds, slowest {worst:?}",
        done.load(Ordering::Relaxed)
    );
    vol.unmount().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_controller_cannot_write_and_turns_standby() {
    if !require_etcd("a_deposed_controller_cannot_write_and_turns_standby") {
        return;
    }
    let etcd = EtcdCluster::start(3).unwrap();
    let (a1, a2) = (free_addr(), free_addr());
    let c1 = controller(&etcd, &a1);
    active_of(&[&a1], Duration::from_secs(10)).await;
    let _c2 = controller(&etcd, &a2);
    // No nodes: a create is refused for space, which proves the controller serves. (Straight
    // to c1, not through a Controllers list, which would follow a standby to the active one.)
    let refused = create_at(&a1, "v").await;
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    // Stopped past its election lease: the other takes over.
    pause(&c1, "STOP");
    assert_eq!(active_of(&[&a2], Duration::from_secs(6)).await, 0);
    pause(&c1, "CONT");
    // What it answers now is a standby's refusal naming the new active controller, and it
    // does not become active again while that one holds the key.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = create_at(&a1, "w").await;
        // Between stepping down and its next look at the key it knows no active one yet.
        if s.metadata().get("dasmesh-role").is_some() && s.message().contains(&a2) {
            break;
        }
        assert!(
            s.code() == tonic::Code::ResourceExhausted
                || s.metadata().get("dasmesh-role").is_some(),
            "{s}"
        );
        assert!(
            Instant::now() < deadline,
            "the deposed controller still serves"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(role(&a1).await, "standby");
    assert_eq!(role(&a2).await, "active");
    // And a write guarded by any election key but the current one is refused by etcd itself,
    // whatever the controller believes: nothing under the prefix changes.
    let store_etcd = Etcd::connect(&etcd.endpoints(), "/dasmesh/").unwrap();
    let (before, _) = store_etcd.load(0).await.unwrap();
    let stale = EtcdStore::new(store_etcd.clone(), 1, 0, Arc::new(AtomicBool::new(false)));
    let change = vec![("volume/x".to_string(), Some(b"{}".to_vec()))];
    let e = tokio::task::spawn_blocking(move || stale.commit(&change, &[]))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, StoreError::NotActive(_)), "{e}");
    assert_eq!(store_etcd.load(0).await.unwrap().0, before);
}

/// A create of a 16 MiB single volume sent to the controller at `addr` alone; its refusal.
async fn create_at(addr: &str, name: &str) -> tonic::Status {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    v1::volumes_client::VolumesClient::new(ch)
        .create(v1::CreateVolumeRequest {
            name: name.into(),
            size_bytes: 16 << 20,
            layout: Some(dasmesh_testkit::layout("single")),
            requirements: None,
        })
        .await
        .expect_err("no node: no volume")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_member_loss_is_carried_and_quorum_loss_refuses_changes() {
    if !require_etcd("etcd_member_loss_is_carried_and_quorum_loss_refuses_changes") {
        return;
    }
    let mut etcd = EtcdCluster::start(3).unwrap();
    let a1 = free_addr();
    let _c1 = controller(&etcd, &a1);
    active_of(&[&a1], Duration::from_secs(10)).await;
    let one = Controllers::parse_with(
        &format!("http://{a1}"),
        ControllerOptions {
            failover_wait: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _node = Process::node_at(dir.path(), &a1, "n0", &free_addr());
    let deadline = Instant::now() + Duration::from_secs(10);
    while create(&one, "a", "single").await.is_err() {
        assert!(Instant::now() < deadline, "no volume with all members up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One member of three gone: still a quorum.
    etcd.kill(2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = create(&one, "b", "single").await {
        assert!(
            Instant::now() < deadline,
            "no volume with two members of three: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A host holds volume a (a lease of 30 s) before the quorum goes.
    let vol = Volume::mount(
        &format!("http://{a1}"),
        "a",
        MountOptions {
            host: "h".into(),
            access: Access::ReadWrite,
            ttl: Duration::from_secs(30),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Two gone: no quorum. A change is refused with a status that says why, within seconds. (A
    // deletion: it needs no node up, so the refusal is the store's even if the node was marked
    // down meanwhile; a creation would then be refused for want of space.)
    etcd.kill(1);
    let t = Instant::now();
    let e = v1::volumes_client::VolumesClient::new(one.clone())
        .delete(v1::DeleteVolumeRequest {
            expect_version: 0,
            name: "b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    assert!(
        e.message().contains("etcd") || e.message().contains("standby"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    // The host's I/O goes on without the control plane (its lease runs for 30 s).
    for i in 0..64u64 {
        let data = vec![i as u8 + 1; 4096];
        vol.write(i * 4096, &data, false)
            .await
            .expect("a write without an etcd quorum");
        assert_eq!(vol.read(i * 4096, 4096).await.unwrap(), data);
    }
    // Quorum back: the controller serves again and nothing acknowledged was lost.
    etcd.restart(1).unwrap();
    etcd.restart(2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let names = loop {
        if let Ok(r) = v1::volumes_client::VolumesClient::new(one.clone())
            .list(v1::ListVolumesRequest {})
            .await
        {
            break r
                .into_inner()
                .volumes
                .into_iter()
                .map(|v| v.name)
                .collect::<Vec<_>>();
        }
        assert!(
            Instant::now() < deadline,
            "no active controller after quorum returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        names.contains(&"a".to_string()) && names.contains(&"b".to_string()),
        "{names:?}"
    );
}

/// Sends `sig` (STOP or CONT) to `p` without waiting for an exit.
fn pause(p: &Process, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), p.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// Runs the controller with `args` and returns its exit status and stderr.
fn run_controller(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("dasmesh-controller"))
        .args(args)
        .arg("--insecure-no-auth")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_etcd_input_is_one_line_and_touches_nothing() {
    if !require_etcd("bad_etcd_input_is_one_line_and_touches_nothing") {
        return;
    }
    let dead = format!("http://{}", free_addr());
    for (args, want) in [
        (vec!["--etcd", dead.as_str()], "cannot reach etcd"),
        (
            vec!["--etcd", "localhost:2379"],
            "expected http://HOST:PORT",
        ),
        (vec!["--etcd", ""], "no endpoint"),
    ] {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend(args.iter());
        let (ok, err) = run_controller(&all);
        assert!(!ok, "{args:?} started");
        let last = err.trim().lines().last().unwrap_or_default().to_string();
        assert!(last.contains(want), "{args:?}: {err}");
    }
    // An etcd holding keys that are not ours under the prefix: refused, and left as it was.
    let etcd = EtcdCluster::start(1).unwrap();
    let url = etcd.client_urls()[0].clone();
    let put = |k: &str| {
        let body = format!(
            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
            b64(k.as_bytes()),
            b64(b"theirs")
        );
        let (code, _) =
            dasmesh_testkit::etcd::http(&url, "/v3/kv/put", Some(&body), Duration::from_secs(5))
                .unwrap();
        assert_eq!(code, 200);
    };
    put("/dasmesh/config");
    let (ok, err) = run_controller(&["--listen", "127.0.0.1:0", "--etcd", &url]);
    assert!(!ok);
    assert!(
        err.contains("/dasmesh/config") && err.contains("not dasmesh's"),
        "{err}"
    );
    let range = format!(
        "{{\"key\":\"{}\",\"range_end\":\"{}\"}}",
        b64(b"/dasmesh/"),
        b64(b"/dasmesh0")
    );
    let (_, body) =
        dasmesh_testkit::etcd::http(&url, "/v3/kv/range", Some(&range), Duration::from_secs(5))
            .unwrap();
    assert!(body.contains("\"count\":\"1\""), "keys were added: {body}");
    // Another prefix of the same etcd is free.
    let a = free_addr();
    let _c = Process::spawn(
        "dasmesh-controller",
        &[
            "--listen",
            &a,
            "--etcd",
            &url,
            "--etcd-prefix",
            "/pool2/",
            "--insecure-no-auth",
        ]
        .map(String::from),
    );
}

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// etcd answers at most 4 MiB at a time: a state larger than that loads in pages (a controller
/// that could not load it once won the election again and again and never served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_larger_than_one_etcd_answer_loads_in_pages() {
    if !require_etcd("a_state_larger_than_one_etcd_answer_loads_in_pages") {
        return;
    }
    let etcd = EtcdCluster::start(1).unwrap();
    let store = Etcd::connect(&etcd.endpoints(), "/dasmesh/").unwrap();
    const N: u64 = 2500;
    // 2,500 usage records of ~2 KiB: about 5 MiB.
    for chunk in (1..=N).collect::<Vec<_>>().chunks(100) {
        let puts: Vec<etcd_client::TxnOp> = chunk
            .iter()
            .map(|&id| {
                let u = dasmesh_controller::state::UsageRec {
                    lease_id: id,
                    host: "h".repeat(2000),
                    volume: "v".into(),
                    ..Default::default()
                };
                etcd_client::TxnOp::put(
                    format!("/dasmesh/state/usage/{id:020}"),
                    serde_json::to_vec(&u).unwrap(),
                    None,
                )
            })
            .collect();
        store
            .call(move |mut c| async move { c.txn(etcd_client::Txn::new().and_then(puts)).await })
            .await
            .unwrap();
    }
    let (s, _) = store.load(0).await.unwrap();
    assert_eq!(s.usage.len() as u64, N);
    assert!(s.usage.values().all(|u| u.host.len() == 2000));
    // And a controller over it serves.
    let a = free_addr();
    let _c = controller(&etcd, &a);
    active_of(&[&a], Duration::from_secs(15)).await;
}

/// One plain HTTP/1.1 request (the console of a controller without identities): status and
/// body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The console on every controller (issue 22): a standby's shows the pool from etcd and both
/// controllers with their roles, and refuses a change in words, naming the active controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_controller_serves_the_console_and_a_standby_says_where_to_change() {
    if !require_etcd("every_controller_serves_the_console_and_a_standby_says_where_to_change") {
        return;
    }
    let etcd = EtcdCluster::start(1).unwrap();
    let (a1, a2, h1, h2) = (free_addr(), free_addr(), free_addr(), free_addr());
    let _c1 = common::etcd_controller_with(&etcd, &a1, &["--http", &h1]);
    active_of(&[&a1], Duration::from_secs(10)).await;
    let _c2 = common::etcd_controller_with(&etcd, &a2, &["--http", &h2]);
    let t0 = Instant::now();
    let view = loop {
        let (status, body) = http(&h2, "GET", "/api/state", "");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let roles: Vec<(String, bool)> = v["controllers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["role"].as_str().unwrap().to_string(),
                    c["answering"] == true,
                )
            })
            .collect();
        if roles.len() == 2 {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{roles:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(view["store"].as_str().unwrap().contains("etcd"), "{view}");
    let standby = view["controllers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["answering"] == true)
        .unwrap();
    assert_eq!(standby["role"], "standby", "{view}");
    assert!(view["controllers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["role"] == "active" && c["url"] == format!("http://{a1}")));
    // A change on the standby: refused with 503 and where to go.
    let (status, body) = http(&h2, "POST", "/api/volumes", r#"{"name":"v","size":"4M"}"#);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!("the active controller is at http://{a1}")),
        "{body}"
    );
    // The same on the active one reaches the allocator (no nodes: no room), in its words.
    let (status, body) = http(&h1, "POST", "/api/volumes", r#"{"name":"v","size":"4M"}"#);
    assert_eq!(status, 507, "{body}");
    assert!(body.contains("cannot allocate"), "{body}");
}
