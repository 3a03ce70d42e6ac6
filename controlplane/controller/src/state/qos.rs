//! Admission of promised performance (docs/qos.md): a volume that promises IOPS or MiB/s is
//! placed only on devices whose unpromised capability covers its extents' shares.
//!
//! - A device's capability is what its node reported (`DeviceRec::read_iops` and so on, from
//!   the node's probe or flags); its IOPS are the lower of its read and write figures, since a
//!   promise does not say which. Of it, a headroom (`dasmesh-controller --qos-headroom`, 10% by
//!   default, [`HEADROOM_PCT`]) is kept back and never promised.
//! - An extent's share of its volume's promise: a stripe's extents share it evenly (rounded up);
//!   every other extent carries all of it (each mirror copy takes every write, and a concat's
//!   I/O may all land on one extent).
//! - What a device has promised is the sum of the shares of the extents on it.

use std::collections::BTreeMap;

use super::{Error, Layout, Requirements, State, VolumeRec};
use crate::alloc::{Candidate, DeviceKey};

/// The part of every device's capability kept back from promises, percent, by default.
pub const HEADROOM_PCT: u64 = 10;

/// [`HEADROOM_PCT`] (for commands written before the headroom was theirs to say).
pub fn default_headroom() -> u64 {
    HEADROOM_PCT
}

/// The headroom this controller's commands carry (`--qos-headroom`).
pub static HEADROOM: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(HEADROOM_PCT);

/// [`HEADROOM`] now.
pub fn headroom() -> u64 {
    HEADROOM.load(std::sync::atomic::Ordering::Relaxed)
}

/// The share of `req` each extent of a `layout` volume carries: (IOPS, MiB/s).
pub fn share(layout: Layout, req: &Requirements) -> (u64, u64) {
    match layout {
        Layout::Stripe { width, .. } if width > 0 => (
            req.min_iops.div_ceil(u64::from(width)),
            req.min_mib_s.div_ceil(u64::from(width)),
        ),
        _ => (req.min_iops, req.min_mib_s),
    }
}

/// What every device has promised: (IOPS, MiB/s) by device.
pub fn promised(s: &State) -> BTreeMap<DeviceKey, (u64, u64)> {
    let mut out: BTreeMap<DeviceKey, (u64, u64)> = BTreeMap::new();
    for v in s.volumes.values() {
        add(&mut out, v);
    }
    out
}

fn add(out: &mut BTreeMap<DeviceKey, (u64, u64)>, v: &VolumeRec) {
    let (iops, mib) = share(v.layout, &v.req);
    if iops == 0 && mib == 0 {
        return;
    }
    for e in &v.extents {
        let p = out.entry(e.piece.key).or_default();
        p.0 = p.0.saturating_add(iops);
        p.1 = p.1.saturating_add(mib);
    }
}

/// A device's capability that may be promised, and what is promised of it: ((IOPS, MiB/s),
/// (IOPS, MiB/s)); `None` when its node or device is not known.
pub fn budget(s: &State, key: DeviceKey, headroom_pct: u64) -> Option<((u64, u64), (u64, u64))> {
    let d = s
        .nodes
        .get(&key.node)?
        .devices
        .iter()
        .find(|d| d.device_id == key.device)?;
    let h = headroom_pct.min(100);
    let keep = |x: u64| x - x / 100 * h - x % 100 * h / 100;
    let cap = (keep(d.read_iops.min(d.write_iops)), keep(d.mib_s));
    Some((cap, promised(s).get(&key).copied().unwrap_or_default()))
}

/// `cands` cut to the devices that can take an extent's share of `req` for a `layout` volume,
/// or, when none can, why not (the device with the most unpromised capability, and what is
/// short there).
pub fn admissible(
    s: &State,
    cands: Vec<Candidate>,
    layout: Layout,
    req: &Requirements,
    headroom_pct: u64,
) -> Result<Vec<Candidate>, Error> {
    let need = share(layout, req);
    if need == (0, 0) {
        return Ok(cands);
    }
    let promised = promised(s);
    let left = |key: DeviceKey| -> Option<(u64, u64)> {
        let ((ci, cm), _) = budget(s, key, headroom_pct)?;
        let (pi, pm) = promised.get(&key).copied().unwrap_or_default();
        Some((ci.saturating_sub(pi), cm.saturating_sub(pm)))
    };
    let fits = |l: (u64, u64)| l.0 >= need.0 && l.1 >= need.1;
    let (ok, short): (Vec<Candidate>, Vec<Candidate>) = cands
        .into_iter()
        .partition(|c| left(c.key).is_some_and(fits));
    if !ok.is_empty() {
        return Ok(ok);
    }
    let best = short
        .iter()
        .filter_map(|c| left(c.key).map(|l| (l, c.key)))
        .max_by_key(|(l, _)| {
            (l.0.saturating_mul(1 << 20) / need.0.max(1))
                .min(l.1.saturating_mul(1 << 20) / need.1.max(1))
        });
    Err(Error::Insufficient(match best {
        None => "no device can take a promise of performance: there is none up".into(),
        Some(((0, 0), k))
            if budget(s, k, headroom_pct).is_some_and(|((ci, cm), _)| ci == 0 && cm == 0) =>
        {
            format!(
            "device {} on node {} has no known capability (a memory backend, or a node started \
             without its probe): give the node --device-iops and --device-mib-s",
            k.device, k.node
        )
        }
        Some((l, k)) => {
            let mut what = Vec::new();
            if l.0 < need.0 {
                what.push(format!("{} IOPS unpromised, {} needed", l.0, need.0));
            }
            if l.1 < need.1 {
                what.push(format!("{} MiB/s unpromised, {} needed", l.1, need.1));
            }
            format!(
                "device {} on node {} has {} (the most of any device; {headroom_pct}% of each is kept back)",
                k.device,
                k.node,
                what.join(" and ")
            )
        }
    }))
}

/// An allocator's refusal `why`, saying when it looked at only `fit` of the `up` devices because
/// the others cannot take the promise.
pub fn among(why: String, fit: usize, up: usize, layout: Layout, req: &Requirements) -> String {
    if fit == up {
        return why;
    }
    let (iops, mib) = share(layout, req);
    format!(
        "{why} (among the {fit} of {up} devices with {iops} IOPS and {mib} MiB/s unpromised for \
         each extent; the others are promised to other volumes)"
    )
}

/// The service terms a token for one extent of a `layout` volume with `req` carries: the
/// extent's share of the promise and the cap ([`share`]: a stripe splits them, other layouts
/// carry them whole), and the weight. Every lease's tokens carry the same terms, a reader's
/// too: nodes schedule a volume's extent as one, whichever leases use it, so that a promise
/// admitted once is kept once, and a cap holds however many leases there are. Figures past what
/// a token can say saturate (a promise: admission never lets one reach it) or, for a cap, mean
/// no cap.
pub fn terms(layout: Layout, req: &Requirements) -> dasmesh_wire::Terms {
    let (min_iops, min_mib_s) = share(layout, req);
    let (max_iops, max_mib_s) = share(
        layout,
        &Requirements {
            min_iops: req.max_iops,
            min_mib_s: req.max_mib_s,
            ..*req
        },
    );
    dasmesh_wire::Terms {
        min_iops: u32::try_from(min_iops).unwrap_or(u32::MAX),
        max_iops: u32::try_from(max_iops).unwrap_or(0),
        min_mib_s: u16::try_from(min_mib_s).unwrap_or(u16::MAX),
        max_mib_s: u16::try_from(max_mib_s).unwrap_or(0),
        weight: u8::try_from(req.weight).unwrap_or(u8::MAX),
        // Each copy serves a share of the reads and every write: a read counting once per copy
        // holds the volume to its cap however the host spreads its reads.
        read_cost: match layout {
            Layout::Mirror { copies } => copies.min(255) as u8,
            _ => 0,
        },
    }
}
