//! The bounds every command's input must keep before it may change the state, so nothing stored
//! is unbounded, unreadable or able to overflow the arithmetic done on it later. The numbers are
//! documented in `docs/api.md` and in the `.proto` comments; change them together.

use super::{DeviceRec, Error, Requirements, State};
use crate::alloc::{Layout, ALIGN};

/// Largest volume size, bytes (1 PiB): far above any pool we run, far below `u64` overflow.
pub const MAX_VOLUME_SIZE: u64 = 1 << 50;
/// Shortest lease, ms (0 in a request means the default and never reaches the state).
pub const MIN_TTL_MS: u64 = 1_000;
/// Longest lease, ms (7 days).
pub const MAX_TTL_MS: u64 = 7 * 24 * 3600 * 1000;
/// Mirror copies.
pub const MIRROR_COPIES: std::ops::RangeInclusive<u32> = 2..=8;
/// Stripe width.
pub const STRIPE_WIDTH: std::ops::RangeInclusive<u32> = 2..=256;
/// Stripe unit, bytes (a multiple of [`ALIGN`]).
pub const STRIPE_UNIT: std::ops::RangeInclusive<u64> = ALIGN..=1 << 30;
/// Highest price per GiB-hour: a usage report's charge stays finite.
pub const MAX_PRICE: f64 = 1e9;
/// Largest device a node may report, bytes (64 PiB).
pub const MAX_DEVICE_SIZE: u64 = 1 << 56;
/// Lendable bytes of the whole pool: sums over every device never overflow.
pub const MAX_POOL_BYTES: u64 = 1 << 62;
/// Devices in one report.
pub const MAX_DEVICES: usize = 256;
/// Usage entries in one heartbeat.
pub const MAX_USAGE_ENTRIES: usize = 16_384;
/// Copies named in one failure or rebuild report.
pub const MAX_REPORTED_COPIES: usize = *MIRROR_COPIES.end() as usize;
/// Volume name, bytes.
pub const MAX_NAME: usize = 128;
/// Host id, bytes.
pub const MAX_HOST_ID: usize = 256;
/// Node address, bytes (a 253-byte DNS name, brackets, colon and port).
pub const MAX_ADDRESS: usize = 263;
/// Node version, bytes.
pub const MAX_VERSION: usize = 128;
/// Failure domain, bytes.
pub const MAX_FAILURE_DOMAIN: usize = 128;
/// Device path, bytes.
pub const MAX_DEVICE_PATH: usize = 1024;
/// Failure reason, bytes.
pub const MAX_REASON: usize = 1024;
/// How much of a refused value an error message repeats.
const ECHO: usize = 48;

/// A short, quoted prefix of `s` for error messages: a refused value may be megabytes long and
/// a gRPC status travels in headers.
pub fn short(s: &str) -> String {
    if s.len() <= ECHO {
        return format!("{s:?}");
    }
    let mut end = ECHO;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &s[..end], s.len())
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn invalid(msg: String) -> Error {
    Error::Invalid(msg)
}

/// A free-form label: at most `max` bytes, no control characters, maybe empty.
pub fn label(what: &str, s: &str, max: usize, empty_ok: bool) -> Result<(), Error> {
    if s.is_empty() && !empty_ok {
        return Err(invalid(format!("{what} must not be empty")));
    }
    if s.len() > max {
        return Err(invalid(format!(
            "{what} {} is longer than {max} bytes",
            short(s)
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{what} {} holds a control character",
            short(s)
        )));
    }
    Ok(())
}

/// A volume name: 1-128 of `[A-Za-z0-9._-]`.
pub fn volume_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
    {
        return Err(invalid(format!(
            "volume name {}: 1-{MAX_NAME} of [A-Za-z0-9._-]",
            short(name)
        )));
    }
    Ok(())
}

/// A host id: 1-256 bytes, no control characters.
pub fn host_id(host: &str) -> Result<(), Error> {
    label("host id", host, MAX_HOST_ID, false)
}

/// A lease's holder key: the hex text of a valid ed25519 public key.
pub fn holder_key(hex: &str) -> Result<(), Error> {
    dasmesh_wire::verifying_key_from_text(hex)
        .map(|_| ())
        .map_err(|_| invalid("holder key: not a valid ed25519 public key".into()))
}

/// A volume size: 1 byte to [`MAX_VOLUME_SIZE`].
pub fn volume_size(name: &str, size: u64) -> Result<(), Error> {
    if size == 0 || size > MAX_VOLUME_SIZE {
        return Err(invalid(format!(
            "volume {name:?}: size {size} is outside 1..={MAX_VOLUME_SIZE} bytes"
        )));
    }
    Ok(())
}

/// A lease length, [`MIN_TTL_MS`]..=[`MAX_TTL_MS`], and its expiry from `now_ms`.
pub fn expiry(ttl_ms: u64, now_ms: u64) -> Result<u64, Error> {
    if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
        return Err(invalid(format!(
            "lease ttl {ttl_ms} ms is outside {MIN_TTL_MS}..={MAX_TTL_MS} ms (0 asks for the default)"
        )));
    }
    now_ms
        .checked_add(ttl_ms)
        .ok_or_else(|| invalid(format!("lease expiry {now_ms} + {ttl_ms} ms overflows")))
}

/// A layout's parameters.
pub fn layout(l: Layout) -> Result<(), Error> {
    match l {
        Layout::Mirror { copies } if !MIRROR_COPIES.contains(&copies) => Err(invalid(format!(
            "a mirror has {}..={} copies, got {copies}",
            MIRROR_COPIES.start(),
            MIRROR_COPIES.end()
        ))),
        Layout::Stripe { width, .. } if !STRIPE_WIDTH.contains(&width) => Err(invalid(format!(
            "a stripe has a width of {}..={}, got {width}",
            STRIPE_WIDTH.start(),
            STRIPE_WIDTH.end()
        ))),
        Layout::Stripe { unit, .. } if !STRIPE_UNIT.contains(&unit) || unit % ALIGN != 0 => {
            Err(invalid(format!(
                "stripe unit {unit} must be a multiple of {ALIGN} in {}..={}",
                STRIPE_UNIT.start(),
                STRIPE_UNIT.end()
            )))
        }
        _ => Ok(()),
    }
}

/// Lending conditions: a finite price in 0..=[`MAX_PRICE`] (JSON has no NaN or infinity, so
/// the store could not read such a price back).
/// The headroom kept back from promises: 0..=90 percent.
pub fn headroom(pct: u64) -> Result<(), Error> {
    if pct > 90 {
        return Err(invalid(format!(
            "a QoS headroom of {pct}% leaves too little to promise: 0..=90"
        )));
    }
    Ok(())
}

pub fn requirements(r: &Requirements, layout: Layout) -> Result<(), Error> {
    let p = r.price_per_gib_hour;
    if !p.is_finite() || !(0.0..=MAX_PRICE).contains(&p) {
        return Err(invalid(format!(
            "price per GiB-hour {p} is not a number in 0..={MAX_PRICE}"
        )));
    }
    if r.min_iops > MAX_DEVICE_IOPS || r.min_mib_s > MAX_DEVICE_MIB_S {
        return Err(invalid(format!(
            "a promise of {} IOPS and {} MiB/s is past what any device may say it does \
             ({MAX_DEVICE_IOPS} IOPS, {MAX_DEVICE_MIB_S} MiB/s)",
            r.min_iops, r.min_mib_s
        )));
    }
    if r.max_iops > MAX_DEVICE_IOPS || r.max_mib_s > MAX_DEVICE_MIB_S {
        return Err(invalid(format!(
            "a cap of {} IOPS and {} MiB/s is past what any device may say it does \
             ({MAX_DEVICE_IOPS} IOPS, {MAX_DEVICE_MIB_S} MiB/s); 0 means no cap",
            r.max_iops, r.max_mib_s
        )));
    }
    if r.max_iops != 0 && r.max_iops < r.min_iops {
        return Err(invalid(format!(
            "the cap of {} IOPS is below the promise of {} IOPS",
            r.max_iops, r.min_iops
        )));
    }
    if r.max_mib_s != 0 && r.max_mib_s < r.min_mib_s {
        return Err(invalid(format!(
            "the cap of {} MiB/s is below the promise of {} MiB/s",
            r.max_mib_s, r.min_mib_s
        )));
    }
    // A node holds a capped extent's requests until their turn: below these, the queue a host
    // keeps on one node (the host library's default: 2 connections of 64 requests of up to
    // 1 MiB) would wait past its 30 s request timeout, and a mirror would call a copy stale.
    let (iops, mib_s) = super::qos::share(
        layout,
        &Requirements {
            min_iops: r.max_iops,
            min_mib_s: r.max_mib_s,
            ..*r
        },
    );
    if (r.max_iops != 0 && iops < MIN_CAP_IOPS) || (r.max_mib_s != 0 && mib_s < MIN_CAP_MIB_S) {
        return Err(invalid(format!(
            "a cap of {} IOPS and {} MiB/s leaves each extent {iops} IOPS and {mib_s} MiB/s; \
             a cap needs at least {MIN_CAP_IOPS} IOPS and {MIN_CAP_MIB_S} MiB/s per extent, \
             or requests a host has queued wait past its request timeout (docs/qos.md)",
            r.max_iops, r.max_mib_s
        )));
    }
    if r.weight > MAX_WEIGHT {
        return Err(invalid(format!(
            "weight {} is not in 1..={MAX_WEIGHT} (0: the default, {})",
            r.weight,
            dasmesh_wire::Terms::DEFAULT_WEIGHT
        )));
    }
    Ok(())
}

/// A node's data-plane address: `HOST:PORT`, HOST an IPv4 address, a bracketed IPv6 address or a
/// DNS name, PORT 1..=65535.
pub fn address(a: &str) -> Result<(), Error> {
    let bad = |why: &str| invalid(format!("node address {}: {why}", short(a)));
    if a.is_empty() {
        return Err(bad("a node must give its data-plane address as HOST:PORT"));
    }
    if a.len() > MAX_ADDRESS {
        return Err(bad(&format!("longer than {MAX_ADDRESS} bytes")));
    }
    let (host, port) = a.rsplit_once(':').ok_or_else(|| bad("not HOST:PORT"))?;
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|c| c.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
    if !port_ok {
        return Err(bad("the port must be 1..=65535"));
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| bad("not an IPv6 address in brackets"));
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() || dns_name(host) {
        return Ok(());
    }
    Err(bad("the host is neither an IP address nor a DNS name"))
}

/// RFC 1123 host name: dot-separated labels of 1-63 letters, digits and inner hyphens, at most
/// 253 bytes, not all digits (that would be a malformed IPv4 address).
fn dns_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && !h.bytes().all(|c| c.is_ascii_digit() || c == b'.')
}

/// A node's registration labels.
pub fn registration(address_: &str, version: &str, failure_domain: &str) -> Result<(), Error> {
    address(address_)?;
    label("version", version, MAX_VERSION, true)?;
    label("failure domain", failure_domain, MAX_FAILURE_DOMAIN, true)
}

/// A device report: what the node itself enforces (block size, alignment, the owner's reserve
/// never lent), no duplicate ids, and sizes whose sums cannot overflow.
/// The most IOPS a device may say it can do.
pub const MAX_DEVICE_IOPS: u64 = 1_000_000_000;
/// The least IOPS cap one extent may have (0 is no cap).
pub const MIN_CAP_IOPS: u64 = 100;
/// The least MiB/s cap one extent may have.
pub const MIN_CAP_MIB_S: u64 = 16;
/// The largest weight a volume may have.
pub const MAX_WEIGHT: u32 = 255;
/// The most MiB/s a device may say it can do.
pub const MAX_DEVICE_MIB_S: u64 = 10_000_000;

pub fn devices(s: &State, node_id: u64, devices: &[DeviceRec]) -> Result<(), Error> {
    if devices.len() > MAX_DEVICES {
        return Err(invalid(format!(
            "a report names {} devices, at most {MAX_DEVICES} are accepted",
            devices.len()
        )));
    }
    let mut ids = std::collections::BTreeSet::new();
    for d in devices {
        device(d)?;
        if !ids.insert(d.device_id) {
            return Err(invalid(format!("device {} is reported twice", d.device_id)));
        }
    }
    let others: u64 = s
        .nodes
        .values()
        .filter(|n| n.id != node_id)
        .flat_map(|n| &n.devices)
        .fold(0u64, |t, d| t.saturating_add(d.lendable_length));
    let mine = devices
        .iter()
        .fold(0u64, |t, d| t.saturating_add(d.lendable_length));
    if others.saturating_add(mine) > MAX_POOL_BYTES {
        return Err(invalid(format!(
            "the pool would lend {} + {mine} bytes, more than {MAX_POOL_BYTES}",
            others
        )));
    }
    Ok(())
}

fn device(d: &DeviceRec) -> Result<(), Error> {
    let id = d.device_id;
    let bad = |why: String| invalid(format!("device {id}: {why}"));
    label("device path", &d.path, MAX_DEVICE_PATH, true).map_err(|e| match e {
        Error::Invalid(why) => bad(why),
        e => e,
    })?;
    if d.read_iops > MAX_DEVICE_IOPS || d.write_iops > MAX_DEVICE_IOPS || d.mib_s > MAX_DEVICE_MIB_S
    {
        return Err(bad(format!(
            "capability of {} / {} IOPS and {} MiB/s is past {MAX_DEVICE_IOPS} IOPS or {MAX_DEVICE_MIB_S} MiB/s",
            d.read_iops, d.write_iops, d.mib_s
        )));
    }
    let bs = d.block_size;
    if !bs.is_power_of_two() || !(512..=4096).contains(&bs) {
        return Err(bad(format!(
            "block size {bs} is not a power of two in 512..=4096"
        )));
    }
    if d.size > MAX_DEVICE_SIZE {
        return Err(bad(format!(
            "size {} is above {MAX_DEVICE_SIZE} bytes",
            d.size
        )));
    }
    for (what, v) in [
        ("lendable start", d.lendable_start),
        ("lendable length", d.lendable_length),
    ] {
        if v % ALIGN != 0 || v % u64::from(bs) != 0 {
            return Err(bad(format!(
                "{what} {v} is not a multiple of {ALIGN} and of the block size {bs}"
            )));
        }
    }
    let end = |what: &str, start: u64, len: u64| match start.checked_add(len) {
        Some(end) if end <= d.size => Ok(end),
        _ => Err(bad(format!(
            "the {what} area {start} + {len} runs beyond the device's size {}",
            d.size
        ))),
    };
    let lend_end = end("lendable", d.lendable_start, d.lendable_length)?;
    let res_end = end("reserved", d.reserved_start, d.reserved_length)?;
    let overlap = d.lendable_length > 0
        && d.reserved_length > 0
        && d.lendable_start < res_end
        && d.reserved_start < lend_end;
    if overlap {
        return Err(bad(format!(
            "the lendable area {}..{lend_end} overlaps the owner's reserved area {}..{res_end}",
            d.lendable_start, d.reserved_start
        )));
    }
    Ok(())
}

/// A failure reason: free text (an error chain may span lines), at most [`MAX_REASON`] bytes.
pub fn reason(r: &str) -> Result<(), Error> {
    if r.len() > MAX_REASON {
        return Err(invalid(format!(
            "failure reason {} is longer than {MAX_REASON} bytes",
            short(r)
        )));
    }
    Ok(())
}

/// A list of mirror copies in a report.
pub fn copies(copies: &[u32]) -> Result<(), Error> {
    if copies.len() > MAX_REPORTED_COPIES {
        return Err(invalid(format!(
            "a report names {} copies, a mirror has at most {MAX_REPORTED_COPIES}",
            copies.len()
        )));
    }
    Ok(())
}
