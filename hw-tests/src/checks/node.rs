//! Checks of the node serving the device, through the client: alignment and edge refusals,
//! discard and zeroing, flush durability across a crash, a full verify pass, tokens end to end.

use std::time::Instant;

use dasmesh_client::Connection;
use dasmesh_wire::{Capabilities, Rights, Status};
use rand::{Rng, SeedableRng};

use super::{caps, expect_status, fail, still_serving, Checked, Notes, Stop, SIZES};
use crate::{pattern, Error, Rig};

pub(super) fn alignment(rig: &mut Rig, n: &mut Notes) -> Checked {
    let c = rig.connect_all()?;
    let h = *c.info();
    let block = h.block_size as usize;
    let base = 8u64 << 20;
    if rig.kernel.size < base + (4 << 20) {
        return Err(Stop::Skip("device under 12 MiB".into()));
    }
    let mut ok = Vec::new();
    for (i, &len) in SIZES.iter().enumerate() {
        let off = base + ((i as u64) << 20);
        let mut data = vec![0u8; len];
        if len % block != 0 {
            rig.block_on(async {
                expect_status(
                    c.write(off, &data, false).await,
                    Status::Misaligned,
                    &format!("a {len} B write on {block}-byte blocks"),
                )
            })?;
            n.say(format!(
                "{len} B: smaller than a block, refused with Misaligned"
            ));
            continue;
        }
        if len > h.max_io_size as usize {
            n.say(format!("{len} B: above the node's max I/O, not tried"));
            continue;
        }
        pattern::fill(&mut data, off, block, 0xA1);
        rig.block_on(c.write(off, &data, false))
            .map_err(Error::client(format!("write {len} B at {off}")))?;
        let back = rig
            .block_on(c.read(off, len))
            .map_err(Error::client(format!("read {len} B at {off}")))?;
        if let Some(m) = pattern::check(&back, off, block, 0xA1) {
            return Err(fail(format!("{len} B at {off}: {m}")));
        }
        ok.push(dasmesh_wire::units::format_size(len as u64));
        n.say(format!("{len} B at offset {off}: written and read back"));
    }
    // Refused requests: misaligned offsets and lengths for every op that takes a range, all
    // aimed at two patterned blocks that must come through unchanged.
    let mut guard = vec![0u8; 2 * block];
    pattern::fill(&mut guard, base, block, 0xA2);
    rig.block_on(c.write(base, &guard, false))
        .map_err(Error::client(format!("write 2 blocks at {base}")))?;
    let half = (block / 2) as u64;
    let bad_payload = vec![0xEEu8; block + block / 2];
    let cases: Vec<(String, Status)> = vec![
        (
            format!("READ at offset {}", base + half),
            Status::Misaligned,
        ),
        (
            format!("READ of {} B", block + block / 2),
            Status::Misaligned,
        ),
        (
            format!("WRITE at offset {}", base + half),
            Status::Misaligned,
        ),
        (
            format!("WRITE of {} B", block + block / 2),
            Status::Misaligned,
        ),
        (
            format!("DISCARD at offset {}", base + half),
            Status::Misaligned,
        ),
        (
            format!("WRITE_ZEROES of {} B", block + block / 2),
            Status::Misaligned,
        ),
    ];
    for (i, (what, want)) in cases.iter().enumerate() {
        let r = rig.block_on(async {
            match i {
                0 => c.read(base + half, block).await.map(drop),
                1 => c.read(base, block + block / 2).await.map(drop),
                2 => c.write(base + half, &bad_payload[..block], false).await,
                3 => c.write(base, &bad_payload, false).await,
                4 => c.discard(base + half, block as u64).await,
                _ => {
                    c.write_zeroes(base, (block + block / 2) as u64, false)
                        .await
                }
            }
        });
        expect_status(r, *want, what)?;
        still_serving(rig, &c, block, what)?;
        n.say(format!("{what}: {}, connection still serving", want.name()));
    }
    // No refused request may have changed what is stored.
    let back = rig
        .block_on(c.read(base, block * 2))
        .map_err(Error::client("read back after the refusals"))?;
    if let Some(m) = pattern::check(&back, base, block, 0xA2) {
        return Err(fail(format!("a refused request changed stored data: {m}")));
    }
    if !rig.node()?.running() {
        return Err(fail("the node exited"));
    }
    Ok(format!(
        "{} through the node; 6 misaligned requests refused (Misaligned), connection kept serving",
        ok.join(", ")
    ))
}

pub(super) fn edges(rig: &mut Rig, n: &mut Notes) -> Checked {
    let c = rig.connect_all()?;
    let block = c.info().block_size as usize;
    let size = c.info().device_size;
    let last = size - block as u64;
    let mut data = vec![0u8; block];
    pattern::fill(&mut data, last, block, 0xE1);
    rig.block_on(c.write(last, &data, true))
        .map_err(Error::client(format!("write the last block at {last}")))?;
    let back = rig
        .block_on(c.read(last, block))
        .map_err(Error::client(format!("read the last block at {last}")))?;
    if back != data {
        return Err(fail(format!(
            "the last block at {last} reads back different"
        )));
    }
    n.say(format!("last block at {last}: written (FUA) and read back"));
    let two = vec![0xEEu8; 2 * block];
    let cases = [
        (format!("READ one block past the end at {size}"), 0),
        (format!("WRITE one block past the end at {size}"), 1),
        (format!("READ of 2 blocks from the last block at {last}"), 2),
        (
            format!("WRITE of 2 blocks from the last block at {last}"),
            3,
        ),
        (
            format!("WRITE_ZEROES from the last block at {last} for 2 blocks"),
            4,
        ),
    ];
    for (what, i) in &cases {
        let r = rig.block_on(async {
            match i {
                0 => c.read(size, block).await.map(drop),
                1 => c.write(size, &two[..block], false).await,
                2 => c.read(last, 2 * block).await.map(drop),
                3 => c.write(last, &two, false).await,
                _ => c.write_zeroes(last, 2 * block as u64, false).await,
            }
        });
        expect_status(r, Status::OutOfRange, what)?;
        still_serving(rig, &c, block, what)?;
        n.say(format!("{what}: OutOfRange, connection still serving"));
    }
    let back = rig
        .block_on(c.read(last, block))
        .map_err(Error::client("read the last block again"))?;
    if back != data {
        return Err(fail(
            "a refused request past the end changed the last block",
        ));
    }
    Ok(format!(
        "last block (at {last}) works; 5 requests past the end refused (OutOfRange)"
    ))
}

pub(super) fn zeroes(rig: &mut Rig, n: &mut Notes) -> Checked {
    let c = rig.connect_all()?;
    let h = *c.info();
    let block = h.block_size as usize;
    let base = 2u64 << 20;
    let len = 1usize << 20;
    if rig.kernel.size < base + len as u64 {
        return Err(Stop::Skip("device under 3 MiB".into()));
    }
    n.say(format!("capabilities: {}", caps(h.capabilities)));
    let mut summary = Vec::new();
    // Each op gets the middle half of a patterned MiB; the quarters around it must survive.
    let quarter = (len / 4) as u64;
    let ops = [
        (Capabilities::WRITE_ZEROES, "WRITE_ZEROES", true),
        (
            Capabilities::DISCARD,
            "DISCARD",
            h.capabilities.has(Capabilities::DISCARD_ZEROES),
        ),
    ];
    for (bit, name, promised) in ops {
        if !h.capabilities.has(bit) {
            n.say(format!("{name}: not offered by the node, not tried"));
            continue;
        }
        let mut data = vec![0u8; len];
        pattern::fill(&mut data, base, block, 0x20);
        rig.block_on(c.write(base, &data, false))
            .map_err(Error::client("write the pattern"))?;
        let r = rig.block_on(async {
            if name == "DISCARD" {
                c.discard(base + quarter, 2 * quarter).await
            } else {
                c.write_zeroes(base + quarter, 2 * quarter, true).await
            }
        });
        r.map_err(Error::client(format!(
            "{name} of {} B at {}",
            2 * quarter,
            base + quarter
        )))?;
        let back = rig
            .block_on(c.read(base, len))
            .map_err(Error::client("read back"))?;
        let (q, mid) = (quarter as usize, 2 * quarter as usize);
        if let Some(m) = pattern::check(&back[..q], base, block, 0x20)
            .or_else(|| pattern::check(&back[q + mid..], base + 3 * quarter, block, 0x20))
        {
            return Err(fail(format!("{name} changed data outside its range: {m}")));
        }
        let zero = back[q..q + mid].iter().all(|b| *b == 0);
        match (promised, zero) {
            (true, true) => n.say(format!(
                "{name}: the range reads back as zeroes, neighbours intact"
            )),
            (true, false) => {
                return Err(fail(format!(
                    "{name}: the range does not read back as zeroes although {}",
                    if name == "DISCARD" {
                        "the node announces DISCARD_ZEROES"
                    } else {
                        "WRITE_ZEROES promises it"
                    }
                )))
            }
            (false, z) => n.say(format!(
                "{name}: accepted; reads back {} (not promised: DISCARD_ZEROES is not announced)",
                if z { "as zeroes" } else { "old data" }
            )),
        }
        summary.push(if promised {
            format!("{name} reads zeroes")
        } else {
            format!("{name} accepted (zeroes not promised)")
        });
    }
    if summary.is_empty() {
        return Err(Stop::Skip(
            "the node offers neither DISCARD nor WRITE_ZEROES".into(),
        ));
    }
    Ok(summary.join("; "))
}

pub(super) fn flush_crash(rig: &mut Rig, n: &mut Notes) -> Checked {
    let c = rig.connect_all()?;
    let block = c.info().block_size as u64;
    let slot = 128u64 << 10;
    let slots = (rig.kernel.size / slot).min(64);
    if slots < 16 {
        return Err(Stop::Skip("device under 2 MiB".into()));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let seed: u64 = rng.gen();
    // Distinct slots: 3/4 written and flushed (must survive), the rest written after the flush
    // (may or may not survive: not checked, they only make the crash land mid-stream).
    let mut order: Vec<u64> = (0..slots).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let flushed_count = (slots * 3 / 4) as usize;
    let mut flushed = Vec::new();
    for (i, s) in order.iter().enumerate() {
        let blocks = rng.gen_range(1..=(slot / block).min(32));
        let off = s * slot;
        let mut data = vec![0u8; (blocks * block) as usize];
        pattern::fill(&mut data, off, block as usize, seed);
        rig.block_on(c.write(off, &data, false))
            .map_err(Error::client(format!("write at {off}")))?;
        if i < flushed_count {
            flushed.push((off, data.len()));
        }
        if i + 1 == flushed_count {
            rig.block_on(c.flush()).map_err(Error::client("FLUSH"))?;
        }
    }
    let bytes: usize = flushed.iter().map(|(_, l)| l).sum();
    n.say(format!(
        "{} writes ({} B) acknowledged and flushed, {} more written after the flush",
        flushed.len(),
        bytes,
        slots as usize - flushed.len()
    ));
    drop(c);
    let how = rig.crash_and_restart()?;
    n.say(how);
    let c = rig.connect_all()?;
    for (off, len) in &flushed {
        let back = rig
            .block_on(c.read(*off, *len))
            .map_err(Error::client(format!("read back at {off}")))?;
        if let Some(m) = pattern::check(&back, *off, block as usize, seed) {
            return Err(fail(format!("a flushed write was lost in the crash: {m}")));
        }
    }
    n.say(format!(
        "{} of {} flushed writes intact",
        flushed.len(),
        flushed.len()
    ));
    if rig.loop_device().is_none() {
        n.say("a node crash only: the device's own volatile cache is tested by a power cut alone");
    }
    Ok(format!(
        "{} flushed writes survived SIGKILL{}",
        flushed.len(),
        if rig.loop_device().is_some() {
            " and a detach/reattach"
        } else {
            " of the node"
        }
    ))
}

pub(super) fn verify(rig: &mut Rig, n: &mut Notes) -> Checked {
    let size = rig.kernel.size;
    if size > rig.opts.verify_limit {
        return Err(Stop::Skip(format!(
            "device of {} is above --verify-limit {}",
            dasmesh_wire::units::format_size(size),
            dasmesh_wire::units::format_size(rig.opts.verify_limit)
        )));
    }
    let c = rig.connect_all()?;
    let block = c.info().block_size as usize;
    let chunk = (c.info().max_io_size as u64).min(1 << 20);
    let seed: u64 = rand::random();
    let offsets: Vec<u64> = (0..size.div_ceil(chunk)).map(|i| i * chunk).collect();
    let len_at = |off: u64| (size - off).min(chunk) as usize;
    let t = Instant::now();
    rig.block_on(async {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        stream::iter(offsets.iter().copied())
            .map(|off| {
                let c = c.clone();
                async move {
                    let mut data = vec![0u8; len_at(off)];
                    pattern::fill(&mut data, off, block, seed);
                    c.write(off, &data, false)
                        .await
                        .map_err(Error::client(format!("write at {off}")))
                }
            })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await
    })?;
    rig.block_on(c.flush()).map_err(Error::client("FLUSH"))?;
    let wrote = t.elapsed();
    let t = Instant::now();
    let bad = rig.block_on(async {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        stream::iter(offsets.iter().copied())
            .map(|off| {
                let c = c.clone();
                async move {
                    let back = c
                        .read(off, len_at(off))
                        .await
                        .map_err(Error::client(format!("read at {off}")))?;
                    Ok::<_, Error>(pattern::check(&back, off, block, seed))
                }
            })
            .buffer_unordered(8)
            .try_filter_map(|m| async move { Ok(m) })
            .try_collect::<Vec<_>>()
            .await
    })?;
    let read = t.elapsed();
    let mib = size as f64 / (1 << 20) as f64;
    n.say(format!(
        "wrote {} blocks of {block} B in {:.2} s ({:.0} MiB/s), read and checked them in {:.2} s ({:.0} MiB/s)",
        size / block as u64,
        wrote.as_secs_f64(),
        mib / wrote.as_secs_f64(),
        read.as_secs_f64(),
        mib / read.as_secs_f64()
    ));
    if let Some(first) = bad.iter().min_by_key(|m| m.offset) {
        return Err(fail(format!(
            "{} chunks hold wrong data; first: {first}",
            bad.len()
        )));
    }
    Ok(format!(
        "all {} of the device hold their own pattern",
        dasmesh_wire::units::format_size(size)
    ))
}

pub(super) fn end_to_end(rig: &mut Rig, n: &mut Notes) -> Checked {
    let size = rig.kernel.size;
    if size < 4 << 20 {
        return Err(Stop::Skip("device under 4 MiB".into()));
    }
    let c = rig.connect_all()?;
    let block = c.info().block_size as usize;
    // Read-write: a write lands, a SEARCH on the node finds it where it was written.
    let off = 3u64 << 20;
    let mut data = vec![0u8; 64 << 10];
    let marker = b"dasmesh-hwtest-marker";
    let at = 5 * block + 17;
    data[at..at + marker.len()].copy_from_slice(marker);
    rig.block_on(c.write(off, &data, true))
        .map_err(Error::client("write under a read-write token"))?;
    let hits = rig
        .block_on(c.search(off, 1 << 20, marker, 4))
        .map_err(Error::client("SEARCH"))?;
    if hits.hits != vec![off + at as u64] {
        return Err(fail(format!(
            "SEARCH found {:?}, expected [{}]",
            hits.hits,
            off + at as u64
        )));
    }
    n.say("read-write token: FUA write, then SEARCH finds the marker at its offset");
    // Read-only: reads work, writes are refused.
    let ro = rig.connect(0, size, Rights::ReadOnly)?;
    let back = rig
        .block_on(ro.read(off, data.len()))
        .map_err(Error::client("read under a read-only token"))?;
    if back != data {
        return Err(fail("a read-only connection reads other data"));
    }
    rig.block_on(async {
        expect_status(
            ro.write(off, &data[..block], false).await,
            Status::ReadOnly,
            "write under a read-only token",
        )
    })?;
    n.say("read-only token: reads the same data, WRITE refused (ReadOnly)");
    // A lent sub-range: inside works, a block outside is refused.
    let (lo, hi) = (1u64 << 20, 2u64 << 20);
    let sub = rig.connect(lo, hi, Rights::ReadWrite)?;
    let i = *sub.info();
    if (i.lent_offset, i.lent_length) != (lo, hi - lo) {
        return Err(fail(format!(
            "lent range announced as {}+{}, token says {lo}..{hi}",
            i.lent_offset, i.lent_length
        )));
    }
    rig.block_on(sub.write(hi - block as u64, &data[..block], false))
        .map_err(Error::client("write at the end of the lent range"))?;
    rig.block_on(async {
        expect_status(
            sub.read(hi, block).await,
            Status::OutOfRange,
            "read just past the lent range",
        )?;
        expect_status(
            sub.write(lo - block as u64, &data[..block], false).await,
            Status::OutOfRange,
            "write just before the lent range",
        )
    })?;
    n.say(format!(
        "token lending {lo}..{hi}: announced as such; inside works, outside OutOfRange"
    ));
    // A token from a key the node does not trust.
    let node = rig.node()?;
    let foreign = node.foreign_token(0, size);
    let addr = node.addr.clone();
    let r = rig.block_on(Connection::connect(
        &addr,
        dasmesh_wire::DeviceId(0),
        &foreign,
        &dasmesh_client::ConnectOptions::default(),
    ));
    expect_status(r, Status::BadToken, "handshake with a foreign key's token")?;
    n.say("token signed by an untrusted key: handshake refused (BadToken)");
    Ok("client over TCP with tokens: read-write, read-only, sub-range, foreign key".into())
}
