//! A newer epoch raised while the old holder's writes are in flight: each old write is either
//! completed before the new holder's first I/O or refused with StaleEpoch, never applied after
//! the new holder's write to the same blocks (docs/node.md, "Fencing").

mod common;

use std::io::Write as _;
use std::sync::mpsc;

use common::{pattern, req, Node, Raw};
use dasmesh_wire::{Hello, Op, RequestHeader, Rights, Status, Tag, FLAG_FUA, PROTOCOL_VERSION};

const MIB: u64 = 1 << 20;
/// Size of every write, and of the block old and new holder fight over.
const BLOCK: usize = 64 << 10;
/// Old-epoch modifying requests pipelined per round, all to the same block.
const OLD_WRITES: u64 = 64;
/// Old requests sent per socket write.
const CHUNK: u64 = 8;
/// Races per node.
const ROUNDS: u64 = 20;

/// Reads `offset..offset+BLOCK` on `c`.
fn read_block(c: &mut Raw, tag: u64, offset: u64) -> Vec<u8> {
    c.send(&req(Op::Read, tag, offset, BLOCK as u64), &[]);
    let (h, p) = c.recv();
    assert_eq!((h.status_enum(), h.tag), (Status::Ok, Tag(tag)));
    p
}

/// Per round: an old-epoch connection pipelines OLD_WRITES writes of one pattern (and some
/// WRITE_ZEROES) to block 0; meanwhile a newer epoch is admitted, and once its handshake is
/// answered the new holder writes its own pattern there. The new pattern must read back right
/// away and after every old request was answered. Odd rounds raise the epoch from a second connection whose answer nobody
/// waits for, so the new holder may be admitted while that raise's barrier is still pending.
/// Returns how many old writes were refused in all.
fn race(cores: usize) -> u64 {
    let node = Node::start(&["file:{dir}/d0.img:4M"], &["--cores", &cores.to_string()]);
    let mut refused = 0;
    for round in 0..ROUNDS {
        let (old_epoch, new_epoch) = (2 * round + 1, 2 * round + 2);
        let old = node.token(0, 0, MIB, Rights::ReadWrite, old_epoch);
        let mut a = Raw::open(&node.addr, 0, &old);
        let mut a_rx = Raw {
            s: a.s.try_clone().unwrap(),
        };
        let reader = std::thread::spawn(move || {
            (0..OLD_WRITES)
                .map(|_| {
                    let (h, _) = a_rx.recv();
                    (h.tag, h.status_enum())
                })
                .collect::<Vec<_>>()
        });
        let old_data = pattern(BLOCK, 1000 + round);
        let (sent, chunks_sent) = mpsc::channel();
        let writer = std::thread::spawn(move || {
            for chunk in 0..OLD_WRITES / CHUNK {
                let mut frames = Vec::new();
                for i in chunk * CHUNK..(chunk + 1) * CHUNK {
                    // Mostly writes, half of them FUA (slower, so more often overtaken on the
                    // device); every eighth a WRITE_ZEROES, which modifies data too.
                    let flags = if i % 2 == 1 { FLAG_FUA } else { 0 };
                    let op = if i % 8 == 7 {
                        Op::WriteZeroes
                    } else {
                        Op::Write
                    };
                    let h = RequestHeader::new(op, flags, Tag(i), 0, BLOCK as u64);
                    frames.extend_from_slice(&h.encode());
                    if op == Op::Write {
                        frames.extend_from_slice(&old_data);
                    }
                }
                a.s.write_all(&frames).unwrap();
                let _ = sent.send(());
            }
            a
        });
        // Raise after a varying part of the old stream was sent, so that the raise lands before,
        // amid and after the old writes.
        for _ in 0..round % (OLD_WRITES / CHUNK + 1) {
            chunks_sent.recv().unwrap();
        }
        let new = node.token(0, 0, MIB, Rights::ReadWrite, new_epoch);
        let _raiser = (round % 2 == 1).then(|| {
            let mut r = Raw::connect(&node.addr);
            let h = Hello {
                min_version: 1,
                max_version: PROTOCOL_VERSION,
                device_id: dasmesh_wire::DeviceId(0),
                token_len: new.as_bytes().len() as u16,
                flags: 0,
            };
            r.s.write_all(&h.encode()).unwrap();
            r.s.write_all(new.as_bytes()).unwrap();
            r
        });
        let mut b = Raw::open(&node.addr, 0, &new);
        let new_data = pattern(BLOCK, round);
        b.send(&req(Op::Write, 1, 0, BLOCK as u64), &new_data);
        assert_eq!(b.recv().0.status_enum(), Status::Ok);
        assert!(
            read_block(&mut b, 2, 0) == new_data,
            "round {round}, {cores} cores: the new holder's write was overwritten at once"
        );
        let replies = reader.join().unwrap();
        drop(writer.join().unwrap());
        for (tag, status) in &replies {
            assert!(
                matches!(status, Status::Ok | Status::StaleEpoch),
                "round {round}, {cores} cores: old write {tag:?} answered {status:?}"
            );
        }
        refused += replies
            .iter()
            .filter(|(_, s)| *s == Status::StaleEpoch)
            .count() as u64;
        assert!(
            read_block(&mut b, 3, 0) == new_data,
            "round {round}, {cores} cores: an old-epoch write landed after the new holder's write"
        );
    }
    refused
}

#[test]
fn old_epoch_writes_never_land_after_the_new_holders_first_write() {
    let mut cores = vec![1];
    if std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2) {
        cores.push(2);
    } else {
        eprintln!("one CPU only: racing with --cores 1 alone");
    }
    for n in cores {
        let refused = race(n);
        // Otherwise every raise came after the old stream ended and nothing raced.
        assert!(refused > 0, "{n} cores: no old write was ever refused");
    }
}
