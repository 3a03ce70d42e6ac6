//! The real node driven by the real client: data round trips on every backend, pipelining,
//! several connections, FLUSH/FUA, DISCARD, WRITE_ZEROES and SEARCH.

mod common;

use std::sync::Arc;

use common::{pattern, rt, Node};
use dasmesh_client::{AlignedBuf, ConnectOptions, Connection, NodeSession};
use dasmesh_wire::{DeviceId, Rights, Status};
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;

fn backends() -> [&'static str; 2] {
    ["file:{dir}/d0.img:64M", "memory:64M"]
}

async fn connect(node: &Node, device: u32, rights: Rights) -> Connection {
    let t = node.token(device, 0, SIZE, rights, 1);
    Connection::connect(&node.addr, DeviceId(device), &t, &ConnectOptions::default())
        .await
        .unwrap()
}

/// A model of the device: what every byte should read back as.
struct Model(Vec<u8>);

impl Model {
    fn apply(&mut self, off: u64, data: &[u8]) {
        self.0[off as usize..off as usize + data.len()].copy_from_slice(data);
    }
    fn slice(&self, off: u64, len: usize) -> &[u8] {
        &self.0[off as usize..off as usize + len]
    }
}

#[test]
fn random_writes_and_reads_match_a_model_on_every_backend() {
    let node = Node::start(&backends(), &[]);
    rt().block_on(async {
        for device in [0u32, 1] {
            let c = connect(&node, device, Rights::ReadWrite).await;
            assert_eq!(c.info().block_size, 4096);
            let mut model = Model(vec![0u8; SIZE as usize]);
            let mut rng = rand::rngs::StdRng::seed_from_u64(device as u64);
            for _ in 0..60 {
                let blocks = rng.gen_range(1..=256u64); // 4 KiB .. 1 MiB
                let len = blocks * 4096;
                let off = rng.gen_range(0..(SIZE - len) / 4096) * 4096;
                let mut data = vec![0u8; len as usize];
                rng.fill(&mut data[..]);
                c.write(off, &data, false).await.unwrap();
                model.apply(off, &data);
                let roff = rng.gen_range(0..(SIZE - len) / 4096) * 4096;
                let got = c.read(roff, len as usize).await.unwrap();
                assert!(
                    got == model.slice(roff, len as usize),
                    "device {device} read at {roff}+{len}"
                );
            }
            // read_into lands in a caller-provided aligned buffer.
            let buf = c.read_into(0, AlignedBuf::new(64 << 10)).await.unwrap();
            assert_eq!(buf.as_ptr() as usize % 4096, 0);
            assert!(&buf[..] == model.slice(0, 64 << 10));
        }
    });
}

#[test]
fn pipelined_qd64_over_several_connections() {
    let node = Node::start(&backends(), &[]);
    rt().block_on(async {
        for device in [0u32, 1] {
            let t = node.token(device, 0, SIZE, Rights::ReadWrite, 1);
            let opts = ConnectOptions {
                queue_depth: 64,
                ..Default::default()
            };
            let s = Arc::new(
                NodeSession::connect(&node.addr, DeviceId(device), &t, 4, &opts)
                    .await
                    .unwrap(),
            );
            // 512 writes of distinct 16 KiB blocks, all in flight together (64 per connection).
            let mut tasks = Vec::new();
            for i in 0..512u64 {
                let s = Arc::clone(&s);
                tasks.push(tokio::spawn(async move {
                    let data = vec![(i % 251) as u8 + 1; 16 << 10];
                    s.write(i * (16 << 10), &data, false).await
                }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            s.flush().await.unwrap();
            let mut tasks = Vec::new();
            for i in (0..512u64).rev() {
                let s = Arc::clone(&s);
                tasks.push(tokio::spawn(async move {
                    let got = s.read(i * (16 << 10), 16 << 10).await.unwrap();
                    assert!(got.iter().all(|b| *b == (i % 251) as u8 + 1), "block {i}");
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
    });
}

#[test]
fn discard_write_zeroes_fua_and_flush() {
    let node = Node::start(&backends(), &[]);
    rt().block_on(async {
        for device in [0u32, 1] {
            let c = connect(&node, device, Rights::ReadWrite).await;
            let data = vec![0xA5u8; (MIB) as usize];
            c.write(4 * MIB, &data, true).await.unwrap();
            c.write(6 * MIB, &data, false).await.unwrap();
            c.flush().await.unwrap();
            assert_eq!(c.read(4 * MIB, 4096).await.unwrap(), vec![0xA5; 4096]);
            // Both backends promise zeroes after DISCARD.
            assert!(c
                .info()
                .capabilities
                .has(dasmesh_wire::Capabilities::DISCARD_ZEROES));
            c.discard(4 * MIB, 64 << 10).await.unwrap();
            let after = c.read(4 * MIB - 4096, 72 << 10).await.unwrap();
            assert!(
                after[4096..4096 + (64 << 10)].iter().all(|b| *b == 0),
                "discarded range not zero"
            );
            assert!(
                after[4096 + (64 << 10)..].iter().all(|b| *b == 0xA5),
                "discard spilled over"
            );
            c.write_zeroes(6 * MIB + 4096, 8192, true).await.unwrap();
            let z = c.read(6 * MIB, 16384).await.unwrap();
            assert!(z[..4096].iter().all(|b| *b == 0xA5));
            assert!(z[4096..12288].iter().all(|b| *b == 0));
            assert!(z[12288..].iter().all(|b| *b == 0xA5));
        }
    });
}

#[test]
fn search_inside_across_blocks_none_and_limit() {
    let node = Node::start(&backends(), &[]);
    rt().block_on(async {
        for device in [0u32, 1] {
            let c = connect(&node, device, Rights::ReadWrite).await;
            let mut data = vec![b'.'; 3 * MIB as usize];
            let needle = b"dasmesh-needle";
            // Inside a block, across a 4 KiB block boundary, across the 1 MiB search chunk boundary.
            let spots = [
                100usize,
                4096 - 5,
                MIB as usize - 7,
                2 * MIB as usize + 4000,
            ];
            for s in spots {
                data[s..s + needle.len()].copy_from_slice(needle);
            }
            let base = 8 * MIB;
            for (i, chunk) in data.chunks(MIB as usize).enumerate() {
                c.write(base + i as u64 * MIB, chunk, false).await.unwrap();
            }
            let r = c.search(base, 3 * MIB, needle, 100).await.unwrap();
            let want: Vec<u64> = spots.iter().map(|s| base + *s as u64).collect();
            assert_eq!(r.hits, want);
            assert!(!r.truncated);
            let r = c.search(base, 3 * MIB, b"not-there", 100).await.unwrap();
            assert!(r.hits.is_empty() && !r.truncated);
            let r = c.search(base, 3 * MIB, needle, 2).await.unwrap();
            assert_eq!(r.hits, want[..2].to_vec());
            assert!(r.truncated);
            // A match must lie wholly inside the range: cut the range inside the first needle.
            let r = c.search(base, 4096, needle, 100).await.unwrap();
            assert_eq!(r.hits, vec![base + 100]);
        }
    });
}

#[test]
fn client_reports_refusals_with_their_status() {
    let node = Node::start(&backends(), &[]);
    rt().block_on(async {
        let c = connect(&node, 1, Rights::ReadOnly).await;
        let e = c.write(0, &[0u8; 4096], false).await.unwrap_err();
        assert_eq!(e.status(), Some(Status::ReadOnly));
        let e = c.read(SIZE, 4096).await.unwrap_err();
        assert_eq!(e.status(), Some(Status::OutOfRange));
        let e = c.read(100, 4096).await.unwrap_err();
        assert_eq!(e.status(), Some(Status::Misaligned));
        // The connection is still usable.
        assert_eq!(c.read(0, 4096).await.unwrap().len(), 4096);
        let t = node.token(1, 0, SIZE, Rights::ReadOnly, 1);
        let e = Connection::connect(&node.addr, DeviceId(0), &t, &ConnectOptions::default())
            .await
            .expect_err("token for device 1 used on device 0");
        assert_eq!(e.status(), Some(Status::WrongDevice));
    });
}

#[test]
fn a_client_on_the_nodes_machine_uses_its_local_socket_and_falls_back_to_tcp() {
    let node = Node::start(&backends(), &[]);
    let plain = Node::start(&backends(), &["--no-local-socket"]);
    rt().block_on(async {
        let t = node.token(0, 0, SIZE, Rights::ReadWrite, 1);
        let local = Connection::connect(&node.addr, DeviceId(0), &t, &ConnectOptions::default())
            .await
            .unwrap();
        assert!(local.is_local(), "same machine: the local socket");
        let tcp_opts = ConnectOptions {
            local_socket: false,
            ..Default::default()
        };
        let tcp = Connection::connect(&node.addr, DeviceId(0), &t, &tcp_opts)
            .await
            .unwrap();
        assert!(!tcp.is_local(), "asked for TCP");
        // One device behind both: what one writes, the other reads.
        let a = pattern(256 << 10, 1);
        local.write(MIB, &a, true).await.unwrap();
        assert!(tcp.read(MIB, a.len()).await.unwrap() == a);
        let b = pattern(4096, 2);
        tcp.write(3 * MIB, &b, true).await.unwrap();
        assert!(local.read(3 * MIB, b.len()).await.unwrap() == b);

        // A node without the socket: the client finds nothing under its name and uses TCP.
        let t = plain.token(1, 0, SIZE, Rights::ReadWrite, 1);
        let c = Connection::connect(&plain.addr, DeviceId(1), &t, &ConnectOptions::default())
            .await
            .unwrap();
        assert!(!c.is_local());
        c.write(0, &b, false).await.unwrap();
        assert!(c.read(0, b.len()).await.unwrap() == b);
    });
}

#[test]
fn a_second_node_advertising_the_same_address_says_why_it_cannot_start() {
    let node = Node::start(&["memory:16M"], &[]);
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--no-pin",
        "--backend",
        "memory:16M",
    ];
    let out = std::process::Command::new(dasmesh_testkit::bin("dasmesh-node"))
        .args(args)
        .args(["--advertise", &node.addr])
        .output()
        .unwrap();
    assert!(!out.status.success(), "it started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("@dasmesh-node/{}", node.addr)) && err.contains("--no-local-socket"),
        "{err}"
    );
    // With the flag it starts (and the first node is untouched).
    let mut other = std::process::Command::new(dasmesh_testkit::bin("dasmesh-node"))
        .args(args)
        .args(["--advertise", &node.addr, "--no-local-socket"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(other.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = other.kill();
    let _ = other.wait();
    assert!(line.starts_with("listening "), "{line:?}");
}
