//! Checks of the device as the kernel shows it: io_uring, geometry (against the node's
//! handshake), O_DIRECT straight on the device; and the performance profile.

use dasmesh_wire::{HelloReply, Rights};

use super::{caps, fail, Checked, Notes, Stop, SIZES};
use crate::device::{self, Aligned};
use crate::{pattern, perf, uring, Error, Rig};

pub(super) fn io_uring(rig: &mut Rig, n: &mut Notes) -> Checked {
    let f = uring::probe(Some(rig.device()));
    n.data = serde_json::to_value(&f).ok();
    if !f.ring {
        return Err(Stop::Skip(f.summary()));
    }
    let list = |v: &[(String, bool)]| {
        v.iter()
            .map(|(k, ok)| format!("{k} {}", if *ok { "yes" } else { "NO" }))
            .collect::<Vec<_>>()
            .join(", ")
    };
    n.say(format!("opcodes: {}", list(&f.opcodes)));
    n.say(format!("kernel features: {}", list(&f.kernel_features)));
    if !f.defer_taskrun {
        n.say(if f.coop_taskrun {
            "no DEFER_TASKRUN: the node falls back to COOP_TASKRUN"
        } else {
            "neither DEFER_TASKRUN nor COOP_TASKRUN: the node runs a plain ring"
        });
    }
    if f.node_ready() {
        Ok(f.summary())
    } else {
        Err(fail(format!(
            "the node's data path needs more: {}",
            f.summary()
        )))
    }
}

pub(super) fn geometry(rig: &mut Rig, n: &mut Notes) -> Checked {
    let k = rig.kernel;
    n.say(format!(
        "kernel: logical {} B (BLKSSZGET), physical {} B (BLKPBSZGET), size {} B (BLKGETSIZE64)",
        k.logical, k.physical, k.size
    ));
    let dev = rig.device().to_path_buf();
    let limit = |f| device::queue_limit(&dev, f).map_or("?".into(), |v: u64| v.to_string());
    n.say(format!(
        "queue: discard_max_bytes {}, write_zeroes_max_bytes {}, rotational {}",
        limit("discard_max_bytes"),
        limit("write_zeroes_max_bytes"),
        limit("rotational")
    ));
    if let Some(l) = rig.loop_device() {
        n.say(format!(
            "loop device: {}-byte sectors asked for, direct I/O {}",
            l.sector_size(),
            match l.direct_io() {
                Some(true) => "on",
                Some(false) => "OFF (the backing filesystem refused it)",
                None => "unknown",
            }
        ));
        if k.logical != l.sector_size() || k.size != l.size() {
            return Err(fail(format!(
                "the loop device was made with {}-byte sectors and {} bytes, the kernel reports {} and {}",
                l.sector_size(),
                l.size(),
                k.logical,
                k.size
            )));
        }
    }
    if !k.logical.is_power_of_two()
        || k.physical < k.logical
        || !k.size.is_multiple_of(u64::from(k.logical))
    {
        return Err(fail(format!(
            "the kernel's geometry is inconsistent: {k:?}"
        )));
    }
    let c = rig.connect_all()?;
    let h: HelloReply = *c.info();
    n.data = Some(serde_json::json!({
        "kernel": k,
        "node": {
            "block_size": h.block_size,
            "physical_block_size": h.physical_block_size,
            "device_size": h.device_size,
            "max_io_size": h.max_io_size,
            "max_inflight": h.max_inflight,
            "capabilities": caps(h.capabilities),
        }
    }));
    n.say(format!(
        "node:   block {} B, physical {} B, size {} B, max I/O {}, capabilities {}",
        h.block_size,
        h.physical_block_size,
        h.device_size,
        dasmesh_wire::units::format_size(u64::from(h.max_io_size)),
        caps(h.capabilities)
    ));
    let mut bad = Vec::new();
    if h.block_size != k.logical {
        bad.push(format!("block size {} != {}", h.block_size, k.logical));
    }
    if h.physical_block_size != k.physical {
        bad.push(format!(
            "physical block size {} != {}",
            h.physical_block_size, k.physical
        ));
    }
    if h.device_size != k.size {
        bad.push(format!("size {} != {}", h.device_size, k.size));
    }
    if !bad.is_empty() {
        return Err(fail(format!("node and kernel differ: {}", bad.join(", "))));
    }
    Ok(format!(
        "kernel and node agree: {}/{} B sectors, {}",
        k.logical,
        k.physical,
        dasmesh_wire::units::format_size(k.size)
    ))
}

pub(super) fn direct_io(rig: &mut Rig, n: &mut Notes) -> Checked {
    let k = rig.kernel;
    let block = k.logical as usize;
    if k.size < 4 << 20 {
        return Err(Stop::Skip(format!("device of {} B is under 4 MiB", k.size)));
    }
    let f = device::open_direct(rig.device())?;
    let mut done = Vec::new();
    for (i, &len) in SIZES.iter().enumerate() {
        if len % block != 0 {
            n.say(format!(
                "{len} B: below the {block}-byte sector, O_DIRECT cannot do it (not a defect)"
            ));
            continue;
        }
        // Offsets 1 MiB apart, each aligned to the size itself (the strictest case).
        let off = ((i as u64 + 1) << 20).next_multiple_of(len as u64);
        let mut w = Aligned::new(len, 4096);
        pattern::fill(w.as_mut_slice(), off, block, 0xD1);
        device::pwrite(&f, w.as_slice(), off)
            .map_err(Error::io(format!("O_DIRECT write of {len} B at {off}")))?;
        let mut r = Aligned::new(len, 4096);
        device::pread(&f, r.as_mut_slice(), off)
            .map_err(Error::io(format!("O_DIRECT read of {len} B at {off}")))?;
        if let Some(m) = pattern::check(r.as_slice(), off, block, 0xD1) {
            return Err(fail(format!("{len} B at {off}: read back differs: {m}")));
        }
        done.push(dasmesh_wire::units::format_size(len as u64));
        n.say(format!("{len} B at offset {off}: written and read back"));
    }
    // What the node has to catch before the kernel does: a misaligned O_DIRECT offset.
    let mut r = Aligned::new(block, 4096);
    match device::pread(&f, r.as_mut_slice(), (block / 2) as u64) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            n.say(format!(
                "read at offset {}: EINVAL from the kernel, as expected",
                block / 2
            ));
        }
        Err(e) => {
            return Err(fail(format!(
                "misaligned O_DIRECT read: expected EINVAL, got {e}"
            )))
        }
        Ok(()) => {
            return Err(fail(
                "a misaligned O_DIRECT read succeeded: the device does not enforce its sector size",
            ))
        }
    }
    Ok(format!(
        "O_DIRECT {} round-trip; misaligned offset is EINVAL",
        done.join(", ")
    ))
}

pub(super) fn perf_profile(rig: &mut Rig, n: &mut Notes) -> Checked {
    let Some(runtime) = rig.opts.perf_runtime else {
        return Err(Stop::Skip("turned off (--no-perf)".into()));
    };
    let size = rig.kernel.size;
    let block = rig.kernel.logical;
    let node = rig.node()?;
    let token = node.token(0, size, Rights::ReadWrite).to_text();
    let addr = node.addr.clone();
    let dev = rig.device().to_path_buf();
    let mut rows = Vec::new();
    for w in perf::workloads(block) {
        rows.extend(perf::run(&dev, &addr, &token, w, runtime)?);
    }
    for l in perf::table(&rows) {
        n.say(l);
    }
    n.data = serde_json::to_value(&rows).ok();
    if let Some(r) = rows.iter().find(|r| r.errors > 0) {
        return Err(fail(format!(
            "{} errors in {} {} on {}",
            r.errors, r.rw, r.bs, r.target
        )));
    }
    let pick = |rw: &str, local: bool| {
        rows.iter()
            .find(|r| r.rw == rw && r.target.starts_with("local:") == local)
            .map_or(0.0, |r| r.iops)
    };
    Ok(format!(
        "{} s per target: randread node {:.0} IOPS vs device {:.0} IOPS",
        runtime.as_secs_f64(),
        pick("randread", false),
        pick("randread", true)
    ))
}
