//! A lost mirror copy replaced on another node and rebuilt there node to node, under a write
//! load checked against a model: with no spare node at first, and through kills of the
//! rebuilding node, the controller and the source node in the middle of a rebuild
//! (docs/volumes.md, "Replacing a lost copy").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dasmesh_api::v1;
use dasmesh_client::{MountOptions, Volume};
use dasmesh_testkit::Cluster;
use rand::{Rng, SeedableRng};

const M: u64 = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn mount(c: &Cluster, name: &str) -> Volume {
    let opts = MountOptions {
        host: "writer".into(),
        ttl: Duration::from_secs(3),
        request_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    Volume::mount(&c.url(), name, opts)
        .await
        .unwrap_or_else(|e| panic!("mount {name}: {e}"))
}

/// Fills the volume with a pattern; the model of its content.
async fn fill(v: &Volume, size: u64) -> Arc<Mutex<Vec<u8>>> {
    let data: Vec<u8> = (0..size)
        .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
        .collect();
    for at in (0..size).step_by(M as usize) {
        v.write(at, &data[at as usize..(at + M) as usize], false)
            .await
            .unwrap();
    }
    // Flushed: a copy that fails later can have lost only what was written since.
    v.flush().await.unwrap();
    Arc::new(Mutex::new(data))
}

/// A writer of random blocks in `[lo, hi)`, one at a time, each recorded in the model once
/// acknowledged; stops when told. Returns how many it wrote, or its first error.
fn writer(
    v: Volume,
    model: Arc<Mutex<Vec<u8>>>,
    (lo, hi): (u64, u64),
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<u64, String>> {
    let seed: u64 = std::env::var("DASMESH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("writer seed {seed} (DASMESH_SEED replays it)");
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut n = 0u64;
        while !stop.load(Ordering::Acquire) {
            let len = 4096 * rng.gen_range(1..=16u64);
            let at = rng.gen_range(lo / 4096..(hi - len) / 4096) * 4096;
            let byte: u8 = rng.gen();
            let data = vec![byte; len as usize];
            v.write(at, &data, false)
                .await
                .map_err(|e| format!("write {n} at {at}: {e}"))?;
            model.lock().unwrap()[at as usize..(at + len) as usize].copy_from_slice(&data);
            n += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(n)
    })
}

/// Every byte of the volume matches the model.
async fn verify(v: &Volume, model: &Mutex<Vec<u8>>, what: &str) {
    let want = model.lock().unwrap().clone();
    for at in (0..want.len()).step_by(M as usize) {
        let got = match v.read(at as u64, M as usize).await {
            Ok(g) => g,
            Err(e) => panic!(
                "{what}: read at {at}: {e}; the host sees {:#?}",
                v.extents()
            ),
        };
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[at + i]) {
            let end = (i..got.len())
                .find(|&j| got[j] == want[at + j])
                .unwrap_or(got.len());
            let seen: Vec<(u32, bool)> = v.extents().iter().map(|e| (e.copy, e.stale)).collect();
            panic!(
                "{what}: bytes {}..{} differ from what was written (got {}, want {}); copy, stale: {seen:?}",
                at + i,
                at + end,
                got[i],
                want[at + i]
            );
        }
    }
}

/// Polls the volume until `ok` holds, for at most `secs`.
async fn wait_for(
    c: &Cluster,
    name: &str,
    secs: u64,
    what: &str,
    ok: impl Fn(&v1::Volume) -> bool,
) -> v1::Volume {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = c.get(name).await;
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: still {v:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn copy_extent(v: &v1::Volume, copy: u32) -> v1::Extent {
    v.extents.iter().find(|e| e.copy == copy).unwrap().clone()
}

fn ok(v: &v1::Volume) -> bool {
    v.state == v1::VolumeState::Ok as i32
}

/// A copy's node dies for good with no spare node in the pool: the volume stays DEGRADED and
/// says why; a node joins and the copy is rebuilt there, node to node, while the host writes;
/// when the old node comes back its old extent is discarded and freed; the new copy alone
/// holds every byte.
#[test]
fn a_lost_copy_waits_for_a_node_then_is_rebuilt_there_and_the_old_extent_freed() {
    let mut c = Cluster::start_with(2, &["--replace-after", "1s"], &[]);
    let size = 32 * M;
    runtime().block_on(async {
        let vol = c.create("a", "mirror:2", size).await;
        let v = mount(&c, "a").await;
        let model = fill(&v, size).await;
        let stop = Arc::new(AtomicBool::new(false));
        let w = writer(v.clone(), Arc::clone(&model), (0, size), Arc::clone(&stop));

        let lost = copy_extent(&vol, 1);
        let lost_i = c.node_index(&lost.node_address);
        c.nodes[lost_i].send("KILL");
        let why = wait_for(&c, "a", 20, "the reason it waits", |v| {
            v.note.contains("waits for a node")
        })
        .await;
        assert_eq!(why.state, v1::VolumeState::Degraded as i32);
        eprintln!("note: {}", why.note);

        let spare = c.add_node(&[]);
        let spare_addr = c.nodes[spare].addr.clone();
        let done = wait_for(&c, "a", 90, "the copy rebuilt on the new node", |v| {
            ok(v) && copy_extent(v, 1).node_address == spare_addr
        })
        .await;
        assert!(done.note.is_empty(), "{}", done.note);
        stop.store(true, Ordering::Release);
        let wrote = w.await.unwrap().unwrap();
        assert!(wrote > 0, "the writer wrote through the rebuild");
        verify(&v, &model, "after the rebuild").await;

        // The old node returns: its old extent is discarded and its device lends all again.
        c.nodes[lost_i].restart();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let p = v1::pool_client::PoolClient::new(c.channel().await)
                .list_devices(v1::ListDevicesRequest {})
                .await
                .unwrap()
                .into_inner();
            let d = p.devices.iter().find(|d| d.node_id == lost.node_id);
            if d.is_some_and(|d| d.free_bytes == d.lendable_length) {
                break;
            }
            assert!(Instant::now() < deadline, "old extent never freed: {d:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Hosts learn that the copy is whole at their next renewal (a third of the TTL).
        v.renew().await.unwrap();
        assert!(v.extents().iter().all(|e| !e.stale), "{:?}", v.extents());
        // Only the new copy is left to read from: every byte is there.
        let other = c.node_index(&copy_extent(&done, 0).node_address);
        c.nodes[other].send("KILL");
        verify(&v, &model, "the new copy alone").await;
    });
}

/// A copy moved by an operator is rebuilt (throttled, so there is time) while the host writes
/// to the volume's upper half; in the middle of it the rebuilding node, the controller and the
/// source node are each SIGKILLed. The rebuild goes on from its checkpoint after the first two
/// and from another copy after the third, and the new copy alone holds every byte.
#[test]
fn a_rebuild_survives_kills_of_its_node_the_controller_and_its_source() {
    let http = dasmesh_testkit::free_addr();
    let mut c = Cluster::start_with(
        3,
        &["--replace-after", "0s", "--http", &http],
        &["--rebuild-mib-s", "8"],
    );
    let size = 64 * M;
    runtime().block_on(async {
        let vol = c.create("b", "mirror:3", size).await;
        // The fourth node, the only one without a copy, comes after the volume: the copy moves
        // there, and its /metrics shows the rebuild.
        let node_http = dasmesh_testkit::free_addr();
        c.add_node(&["--rebuild-mib-s", "8", "--metrics", &node_http]);
        let t0 = Instant::now();
        while v1::pool_client::PoolClient::new(c.channel().await)
            .list_nodes(v1::ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes
            .iter()
            .filter(|n| n.state == v1::NodeState::Up as i32)
            .count()
            < 4
        {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the fourth node never came up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let v = mount(&c, "b").await;
        let model = fill(&v, size).await;
        let stop = Arc::new(AtomicBool::new(false));
        let w = writer(
            v.clone(),
            Arc::clone(&model),
            (size / 2, size),
            Arc::clone(&stop),
        );

        let moved = v1::volumes_client::VolumesClient::new(c.channel().await)
            .replace_copy(v1::ReplaceCopyRequest {
                expect_version: 0,
                name: "b".into(),
                copy: 2,
                node_id: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let new = copy_extent(&moved, 2);
        assert!(new.rebuilding && new.stale, "{new:?}");
        assert!(vol
            .extents
            .iter()
            .all(|e| e.node_address != new.node_address));
        let target = c.node_index(&new.node_address);
        let done_of = |v: &v1::Volume| copy_extent(v, 2).rebuilt_bytes;

        // The rebuilding node dies at a quarter and comes back: on from its checkpoint (the
        // host writes only above the checkpoint, so nothing it missed lies below).
        let at =
            done_of(&wait_for(&c, "b", 60, "a quarter copied", |v| done_of(v) >= 16 * M).await);
        // The controller's /metrics shows the same progress.
        let m = dasmesh_testkit::prometheus::parse(&dasmesh_testkit::prometheus::scrape(&http));
        let rebuild = |of: &str| {
            m.iter()
                .find(|(k, _)| {
                    k.starts_with("dasmesh_rebuild_bytes{volume=\"b\",copy=\"2\",")
                        && k.ends_with(&format!("of=\"{of}\"}}"))
                })
                .map(|(_, v)| *v)
        };
        assert_eq!(rebuild("all"), Some(size as f64));
        assert!(rebuild("copied").is_some_and(|d| d >= at as f64), "{m:?}");
        // So does the node's, for the extent it fills.
        assert_eq!(target, 3, "the copy went to the node without one");
        let n =
            dasmesh_testkit::prometheus::parse(&dasmesh_testkit::prometheus::scrape(&node_http));
        let on_node = |of: &str| {
            n.iter()
                .find(|(k, _)| {
                    k.starts_with(&format!(
                        "dasmesh_node_rebuild_bytes{{volume=\"{}\",device=\"{}\",offset=\"{}\",",
                        vol.volume_id, new.device_id, new.offset
                    )) && k.ends_with(&format!("of=\"{of}\"}}"))
                })
                .map(|(_, v)| *v)
        };
        assert_eq!(on_node("all"), Some(new.length as f64), "{n:?}");
        assert!(on_node("copied").is_some_and(|d| d >= at as f64), "{n:?}");
        c.nodes[target].send("KILL");
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.nodes[target].restart();
        let mut least = u64::MAX;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let d = done_of(&c.get("b").await);
            least = least.min(d);
            if d >= 32 * M {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no progress after the node's restart ({d})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(least >= at, "went back from {at} to {least}");

        // The controller dies at a half and comes back: the node went on meanwhile.
        c.ctl.send("KILL");
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.ctl.restart();
        let after = done_of(
            &wait_for(&c, "b", 60, "progress under the new controller", |v| {
                done_of(v) >= 40 * M
            })
            .await,
        );
        assert!(after >= 40 * M);

        // The source (copy 0's node) dies: the rest comes from copy 1.
        let source = c.node_index(&copy_extent(&vol, 0).node_address);
        c.nodes[source].send("KILL");
        let done = wait_for(&c, "b", 90, "copy 2 rebuilt", |v| {
            let e = copy_extent(v, 2);
            !e.rebuilding && !e.stale
        })
        .await;
        assert_eq!(
            done.state,
            v1::VolumeState::Degraded as i32,
            "copy 0 is down"
        );
        stop.store(true, Ordering::Release);
        let wrote = w.await.unwrap().unwrap();
        assert!(wrote > 0);
        verify(&v, &model, "after the rebuild").await;

        // Copy 1's node too: copy 2 alone has every byte.
        v.renew().await.unwrap();
        let one = c.node_index(&copy_extent(&vol, 1).node_address);
        c.nodes[one].send("KILL");
        verify(&v, &model, "copy 2 alone").await;
    });
}
