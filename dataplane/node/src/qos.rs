//! Service terms on the node: each volume's requests on a device are paced to what its terms
//! and its device's load allow (docs/qos.md, "The scheduler"). "Lease" below means what an
//! entry schedules: a volume extent, whichever leases use it.
//!
//! Two parts:
//! - **Pacing, on the I/O path.** Each volume extent on a device has an [`Entry`] that every
//!   connection of every lease of the volume shares, whichever reactor serves it. It holds up to
//!   four rates (the caps, and a share of a busy device, each in operations and bytes a second),
//!   each with a virtual clock (GCRA: the time the next unit of work may start). A request takes
//!   its place on each clock with one compare-and-swap and starts at the latest; a reactor holds
//!   it until then. Nothing but the volume's own entry is touched, so reactors serving
//!   different volumes share no cache line, and a request nothing paces costs one relaxed load.
//! - **Allocation, every [`PERIOD`]** (`--qos-period`), by whichever reactor comes by first
//!   ([`Qos::tick`]): it looks at what each entry did lately (the reactors hand over their
//!   counts every 2 ms) and sets the shares. A device is busy while an active lease has a
//!   promise, or while two or more leases use 90% of what it does (its capability figure, or
//!   more if the leases showed it does more), until they use less than 70%. While it is busy,
//!   each lease gets a share: its promise first, then what is left split by weight (the figure
//!   less a tenth while a promise is kept; else what the device showed it does and a twentieth
//!   more, so that the leases can show it does more still), each lease getting no more than it
//!   showed it wants (what it did lately plus a quarter, or as much as it can get if it was held
//!   back in the last three periods). A lease alone without a promise is never paced by a share.
//!   The caps pace always, apart from the shares.
//!
//! The unit of a share is a fraction of the device: a lease doing `ops` operations and `bytes`
//! bytes a second uses `max(ops / capability IOPS, bytes / capability bytes a second)`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dasmesh_wire::Terms;

/// How often the rates are set by default (`--qos-period`).
pub const PERIOD: Duration = Duration::from_millis(10);
/// How far behind the present a lease's clock may fall: after an idle spell it may start this
/// much work at once, no more (a cap holds within `BURST` over any window).
pub const BURST_NS: u64 = 2_000_000;
/// The share of its capability above which a device counts as busy...
pub const BUSY: f64 = 0.9;
/// ...and below which a busy one stops counting as busy (its leases paced, they use less).
pub const NOT_BUSY: f64 = 0.7;
/// Headroom a satisfied lease gets above what it used, so it can grow.
const GROWTH: f64 = 1.25;
/// How far above what a busy device showed it does its leases' shares reach, without a promise.
pub const PROBE: f64 = 0.05;
/// The share of a busy device not handed out while a promise is kept.
pub const KEEP_BACK: f64 = 0.1;
/// The least share an active lease is allocated while the device is busy.
const FLOOR: f64 = 0.01;

/// What identifies an entry: a volume's extent on a device, whichever leases use it (so that a
/// promise admitted once is kept once, and a cap holds however many leases a volume has); or,
/// for a token minted by hand (volume 0), the token's own range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The volume, or the token's nonce when it names no volume.
    pub owner: Owner,
    /// The device index.
    pub device: usize,
    /// The first byte of the lent range.
    pub offset: u64,
}

/// Whose requests an entry schedules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// Every lease of this volume.
    Volume(u64),
    /// This token alone (a volume id of 0: minted by hand).
    Token(u64),
}

impl Owner {
    /// The owner of a claim's requests.
    pub fn of(claim: &dasmesh_wire::Claim) -> Self {
        match claim.volume_id.0 {
            0 => Owner::Token(claim.nonce),
            v => Owner::Volume(v),
        }
    }
}

/// One volume extent on one device (or one hand-minted token's range), shared by the
/// connections of every lease that uses it.
#[derive(Debug)]
pub struct Entry {
    key: Key,
    terms: Mutex<Terms>,
    /// Whether any of the four paces below has a rate (the one load of a request that none
    /// holds back).
    paced: AtomicBool,
    /// The caps, from the terms: operations and bytes a second, a read counting `read_cost`
    /// times.
    cap_ops: Pace,
    cap_bytes: Pace,
    read_cost: AtomicU64,
    /// The lease's share of a busy device, from the allocator: operations and bytes a second
    /// as the device does them.
    share_ops: Pace,
    share_bytes: Pace,
    /// Counts the reactors hand over (wrapping; the allocator takes differences).
    ops: AtomicU64,
    bytes: AtomicU64,
    held: AtomicU64,
    /// The allocator's view of the last period.
    last: Mutex<Seen>,
}

/// A rate (0: none) and its GCRA clock (ns since the scheduler's start: when the next unit of
/// work may start).
#[derive(Debug, Default)]
struct Pace {
    rate: AtomicU64,
    tat: AtomicU64,
}

impl Pace {
    fn on(&self) -> bool {
        self.rate.load(Relaxed) != 0
    }

    /// When `units` of work arriving at `now` may start at this pace (`now` without a rate).
    fn take(&self, now: u64, units: u64) -> u64 {
        match self.rate.load(Relaxed) {
            0 => now,
            r => take(&self.tat, now, cost(units, r)),
        }
    }

    fn set(&self, rate: u64) {
        // Stored only when it changes: every reactor serving the lease reads this line.
        if self.rate.load(Relaxed) != rate {
            self.rate.store(rate, Relaxed);
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    ops: u64,
    bytes: u64,
    held: u64,
    /// Operations and bytes a second lately: a rise is taken at once, a fall a third at a
    /// time, so that one quiet period (a 10 ms window is noisy) does not give a lease's share
    /// away.
    ops_s: f64,
    bytes_s: f64,
    /// Periods for which the lease still counts as held back.
    held_for: u8,
}

/// Periods a lease counts as held back after a request of its waited.
const HELD_PERIODS: u8 = 3;

/// A rate seen lately, from the one before and this period's.
fn smooth(before: f64, now: f64) -> f64 {
    if now >= before {
        now
    } else {
        before + (now - before) / 3.0
    }
}

/// What a reactor counted for one entry since it last handed counts over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests started.
    pub ops: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Requests that had to wait for their start time.
    pub held: u64,
}

impl Counts {
    /// Whether nothing was counted.
    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// A device's capability, as the scheduler divides it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Capacity {
    /// 4 KiB random IOPS (the lesser of read and write); 0 when unknown.
    pub iops: u64,
    /// Sequential bytes a second; 0 when unknown.
    pub bytes_s: u64,
}

impl Capacity {
    fn known(&self) -> bool {
        self.iops > 0 && self.bytes_s > 0
    }

    /// The fraction of the device `ops_s` operations and `bytes_s` bytes a second use.
    fn fraction(&self, ops_s: f64, bytes_s: f64) -> f64 {
        (ops_s / self.iops as f64).max(bytes_s / self.bytes_s as f64)
    }
}

impl Entry {
    fn new(key: Key, terms: Terms) -> Self {
        let e = Entry {
            key,
            terms: Mutex::new(terms),
            paced: AtomicBool::new(false),
            cap_ops: Pace::default(),
            cap_bytes: Pace::default(),
            read_cost: AtomicU64::new(1),
            share_ops: Pace::default(),
            share_bytes: Pace::default(),
            ops: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            held: AtomicU64::new(0),
            last: Mutex::new(Seen::default()),
        };
        e.set_terms(terms);
        e
    }

    /// The terms it is served under.
    pub fn terms(&self) -> Terms {
        *lock(&self.terms)
    }

    /// Serves it under `terms` from now on: capped from the next request, not from the next
    /// period.
    fn set_terms(&self, terms: Terms) {
        *lock(&self.terms) = terms;
        let (ops, bytes) = caps(&terms);
        self.read_cost.store(terms.read_cost(), Relaxed);
        self.cap_ops.set(ops);
        self.cap_bytes.set(bytes);
        self.update_paced();
    }

    fn update_paced(&self) {
        let on = self.cap_ops.on()
            || self.cap_bytes.on()
            || self.share_ops.on()
            || self.share_bytes.on();
        if self.paced.load(Relaxed) != on {
            self.paced.store(on, Relaxed);
        }
    }

    /// Whether a request must ask [`Entry::start`] for its start time (false: it starts now).
    #[inline]
    pub fn paced(&self) -> bool {
        self.paced.load(Relaxed)
    }

    /// When a request of `len` bytes arriving at `now` (ns) may start: `now` or later. A read
    /// counts `read_cost` times against the caps.
    pub fn start(&self, now: u64, len: u64, read: bool) -> u64 {
        let k = if read {
            self.read_cost.load(Relaxed)
        } else {
            1
        };
        now.max(self.cap_ops.take(now, k))
            .max(self.cap_bytes.take(now, len.saturating_mul(k)))
            .max(self.share_ops.take(now, 1))
            .max(self.share_bytes.take(now, len))
    }

    /// Adds a reactor's counts.
    pub fn add(&self, c: &Counts) {
        self.ops.fetch_add(c.ops, Relaxed);
        self.bytes.fetch_add(c.bytes, Relaxed);
        self.held.fetch_add(c.held, Relaxed);
    }

    /// The lease's share of its device now: operations and bytes a second, 0 for no limit.
    pub fn share(&self) -> (u64, u64) {
        (
            self.share_ops.rate.load(Relaxed),
            self.share_bytes.rate.load(Relaxed),
        )
    }

    fn set_share(&self, (ops, bytes): (u64, u64)) {
        self.share_ops.set(ops);
        self.share_bytes.set(bytes);
        self.update_paced();
    }
}

/// The nanoseconds `n` units take at `rate` units a second (at least 1).
fn cost(n: u64, rate: u64) -> u64 {
    let ns = u128::from(n) * 1_000_000_000 / u128::from(rate.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX).max(1)
}

/// Takes `cost` ns on a GCRA clock at `now`; returns when the taker may start.
fn take(tat: &AtomicU64, now: u64, cost: u64) -> u64 {
    let mut cur = tat.load(Relaxed);
    loop {
        let base = cur.max(now.saturating_sub(BURST_NS));
        match tat.compare_exchange_weak(cur, base.saturating_add(cost), Relaxed, Relaxed) {
            Ok(_) => return base.max(now),
            Err(v) => cur = v,
        }
    }
}

/// The caps of `t` as rates (0: none).
fn caps(t: &Terms) -> (u64, u64) {
    (u64::from(t.max_iops), u64::from(t.max_mib_s) << 20)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The node's scheduler: the entries, by lease range, and each device's capability.
#[derive(Debug)]
pub struct Qos {
    enabled: bool,
    /// Allocation period, ms.
    period_ms: u64,
    /// When the next allocation is due (reactor clock, ms).
    next_ms: AtomicU64,
    /// When the last allocation ran.
    last: Mutex<Instant>,
    epoch: Instant,
    entries: Mutex<HashMap<Key, Arc<Entry>>>,
    capacity: Mutex<Vec<Capacity>>,
    /// Whether any entry exists (nothing to allocate while none does).
    any: AtomicBool,
    /// Whether each device was busy at the last allocation.
    devices: Mutex<HashMap<usize, Device>>,
}

impl Qos {
    /// A scheduler that allocates every `period`; a disabled one hands out no entries
    /// (`--no-qos`).
    pub fn new(enabled: bool, period: Duration) -> Self {
        Qos {
            enabled,
            period_ms: period.as_millis().max(1) as u64,
            next_ms: AtomicU64::new(0),
            last: Mutex::new(Instant::now()),
            epoch: Instant::now(),
            entries: Mutex::new(HashMap::new()),
            capacity: Mutex::new(Vec::new()),
            any: AtomicBool::new(false),
            devices: Mutex::new(HashMap::new()),
        }
    }

    /// Whether it schedules at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Nanoseconds since it started: the clock of [`Entry::start`].
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Sets what each device (by index) can do.
    pub fn set_capacity(&self, c: Vec<Capacity>) {
        *lock(&self.capacity) = c;
    }

    /// The entry of a session opened with `terms` (at the handshake, never per request). A
    /// newer token of the same lease may bring new terms; they apply from the next period.
    pub fn entry(&self, key: Key, terms: Terms) -> Option<Arc<Entry>> {
        if !self.enabled {
            return None;
        }
        let mut m = lock(&self.entries);
        let e = m
            .entry(key)
            .or_insert_with(|| Arc::new(Entry::new(key, terms)));
        if e.terms() != terms {
            e.set_terms(terms);
        }
        self.any.store(true, Relaxed);
        Some(Arc::clone(e))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One allocation: sets every entry's rates from what it did in the last `dt`, and forgets
    /// entries no session holds.
    pub fn allocate(&self, dt: Duration) {
        let caps = lock(&self.capacity).clone();
        let mut m = lock(&self.entries);
        m.retain(|_, e| Arc::strong_count(e) > 1);
        self.any.store(!m.is_empty(), Relaxed);
        let mut by_device: HashMap<usize, Vec<&Arc<Entry>>> = HashMap::new();
        for e in m.values() {
            by_device.entry(e.key.device).or_default().push(e);
        }
        let secs = dt.as_secs_f64().max(1e-6);
        let mut devices = lock(&self.devices);
        for (dev, entries) in by_device {
            let cap = caps.get(dev).copied().unwrap_or_default();
            let views: Vec<View> = entries
                .iter()
                .map(|e| {
                    let mut last = lock(&e.last);
                    let (ops, bytes, held) = (
                        e.ops.load(Relaxed),
                        e.bytes.load(Relaxed),
                        e.held.load(Relaxed),
                    );
                    let held_for = if held != last.held {
                        HELD_PERIODS
                    } else {
                        last.held_for.saturating_sub(1)
                    };
                    *last = Seen {
                        ops,
                        bytes,
                        held,
                        ops_s: smooth(last.ops_s, ops.wrapping_sub(last.ops) as f64 / secs),
                        bytes_s: smooth(last.bytes_s, bytes.wrapping_sub(last.bytes) as f64 / secs),
                        held_for,
                    };
                    View {
                        terms: e.terms(),
                        ops_s: last.ops_s,
                        bytes_s: last.bytes_s,
                        held: held_for > 0,
                    }
                })
                .collect();
            let rates = divide(cap, &views, devices.entry(dev).or_default());
            for (e, r) in entries.iter().zip(&rates) {
                e.set_share(*r);
            }
            if tracing::enabled!(tracing::Level::TRACE) {
                for ((e, v), r) in entries.iter().zip(&views).zip(&rates) {
                    tracing::trace!(
                        owner = ?e.key.owner,
                        device = dev,
                        ops_s = v.ops_s as u64,
                        held = v.held,
                        share_ops = r.0,
                        "allocated"
                    );
                }
            }
        }
    }

    /// Every entry's counts so far (operations and bytes started; handed over by the reactors
    /// every 2 ms) and what it got lately (operations and bytes a second).
    pub fn totals(&self) -> Vec<(Key, u64, u64, f64, f64)> {
        lock(&self.entries)
            .values()
            .map(|e| {
                let s = *lock(&e.last);
                (
                    e.key,
                    e.ops.load(Relaxed),
                    e.bytes.load(Relaxed),
                    s.ops_s,
                    s.bytes_s,
                )
            })
            .collect()
    }

    /// What the lease got in the last period: operations and bytes a second, by lease range.
    pub fn delivered(&self) -> Vec<(Key, f64, f64)> {
        lock(&self.entries)
            .values()
            .map(|e| {
                let s = *lock(&e.last);
                (e.key, s.ops_s, s.bytes_s)
            })
            .collect()
    }

    /// Called by every reactor now and then (with its loop's clock, ms): the first to call once
    /// a period has passed runs [`Qos::allocate`]. No thread of its own: a thread waking 100
    /// times a second preempts a reactor or a client (measured: 3 to 5% of 4k reads on the
    /// 2-core VM), while a reactor's loop comes by anyway; and a node whose reactors all sleep
    /// has nothing to divide.
    pub fn tick(&self, now_ms: u64) {
        let due = self.next_ms.load(Relaxed);
        if now_ms < due || !self.enabled || !self.any.load(Relaxed) {
            return;
        }
        if self
            .next_ms
            .compare_exchange(due, now_ms + self.period_ms, Relaxed, Relaxed)
            .is_err()
        {
            return;
        }
        // Another reactor still allocating (a period shorter than an allocation): skip a turn.
        let Ok(mut last) = self.last.try_lock() else {
            return;
        };
        let now = Instant::now();
        let dt = now - *last;
        *last = now;
        drop(last);
        self.allocate(dt);
    }
}

/// What the allocator saw of one entry in a period.
#[derive(Clone, Copy, Debug, Default)]
pub struct View {
    /// Its terms.
    pub terms: Terms,
    /// Operations a second it started.
    pub ops_s: f64,
    /// Bytes a second it started.
    pub bytes_s: f64,
    /// Whether any of its requests waited for their start time.
    pub held: bool,
}

impl View {
    fn active(&self) -> bool {
        self.ops_s > 0.0 || self.held
    }
}

/// What the allocator keeps of a device from one period to the next.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Device {
    /// Whether it was busy.
    pub busy: bool,
    /// What it showed it does, in capabilities (at least 1): the capability figure may be low
    /// (a 150 ms probe at queue depth 32), and leases sharing a busy device must not be held
    /// to it if the device does more.
    pub scale: f64,
}

impl Default for Device {
    fn default() -> Self {
        Device {
            busy: false,
            scale: 1.0,
        }
    }
}

/// The shares, as rates (operations, bytes a second; 0 for none), of the entries on a device
/// of capability `cap` that did what `views` say lately; `dev` carries what was seen of the
/// device before.
pub fn divide(cap: Capacity, views: &[View], dev: &mut Device) -> Vec<(u64, u64)> {
    let free = vec![(0, 0); views.len()];
    if !cap.known() {
        dev.busy = false;
        return free;
    }
    let used: Vec<f64> = views
        .iter()
        .map(|v| cap.fraction(v.ops_s, v.bytes_s))
        .collect();
    let promise: Vec<f64> = views
        .iter()
        .map(|v| {
            if v.active() {
                cap.fraction(
                    f64::from(v.terms.min_iops),
                    f64::from(v.terms.min_mib_s) * 1_048_576.0,
                )
                .min(1.0)
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = used.iter().sum();
    // Up with what the leases got, by at most a twentieth a period (one noisy window does not
    // make a device faster); down a hundredth a period; never below the figure.
    dev.scale = total
        .clamp(dev.scale * 0.99, dev.scale * (1.0 + PROBE))
        .max(1.0);
    let promised = promise.iter().any(|p| *p > 0.0);
    // A lease alone, without a promise, has nobody to share with: it is never paced by a share.
    let sharing = views.iter().filter(|v| v.active()).count() >= 2;
    let busy = promised
        || (sharing && (total >= BUSY * dev.scale || (dev.busy && total >= NOT_BUSY * dev.scale)));
    dev.busy = busy;
    if !busy {
        return free;
    }
    // The most each lease can use: its cap, and what it showed it wants.
    let ceiling: Vec<f64> = views
        .iter()
        .zip(&used)
        .map(|(v, u)| {
            let cap_frac = {
                let (o, b) = caps(&v.terms);
                let o = if o == 0 { f64::INFINITY } else { o as f64 };
                let b = if b == 0 { f64::INFINITY } else { b as f64 };
                cap.fraction(o, b)
            };
            let wants = if v.held || !v.active() {
                f64::INFINITY
            } else {
                (u * GROWTH).max(FLOOR)
            };
            cap_frac.min(wants)
        })
        .collect();
    // Promises first (admission keeps their sum within the capability), then water-filling of
    // what is left by weight, up to each ceiling.
    // A promise is held for an active lease even beyond what it showed it wants, so that it is
    // there the moment the lease asks for it.
    let mut share = promise;
    // While a promise is kept, a tenth of the capability is not handed out: the figure is an
    // estimate (a 150 ms probe, or a flag), and a promise must hold if the device does less.
    // Without a promise, what the device showed it does and a twentieth more, so that the leases
    // can show it does more still.
    let whole = if promised {
        1.0 - KEEP_BACK
    } else {
        dev.scale * (1.0 + PROBE)
    };
    let mut left = (whole - share.iter().sum::<f64>()).max(0.0);
    let mut open: Vec<usize> = (0..views.len())
        .filter(|&i| share[i] < ceiling[i])
        .collect();
    while left > 1e-9 && !open.is_empty() {
        let total_w: f64 = open
            .iter()
            .map(|&i| f64::from(views[i].terms.weight()))
            .sum();
        let mut given = 0.0;
        let mut still = Vec::new();
        for &i in &open {
            let offer = left * f64::from(views[i].terms.weight()) / total_w;
            let take = offer.min(ceiling[i] - share[i]);
            share[i] += take;
            given += take;
            if share[i] < ceiling[i] - 1e-12 {
                still.push(i);
            }
        }
        left -= given;
        if still.len() == open.len() {
            break;
        }
        open = still;
    }
    // As rates: the caps pace apart from these (`Entry::start`).
    let rates = views
        .iter()
        .zip(&share)
        .map(|(v, s)| {
            if !v.active() && v.terms.is_none() {
                // An idle lease without terms: free until it shows up in a period.
                return (0, 0);
            }
            let s = s.max(FLOOR);
            (
                ((s * cap.iops as f64) as u64).max(1),
                ((s * cap.bytes_s as f64) as u64).max(1),
            )
        })
        .collect();
    rates
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Capacity = Capacity {
        iops: 100_000,
        bytes_s: 1000 << 20,
    };

    fn view(terms: Terms, ops_s: f64, held: bool) -> View {
        View {
            terms,
            ops_s,
            bytes_s: ops_s * 4096.0,
            held,
        }
    }

    /// An entry of lease 1 under `terms`.
    fn entry(terms: Terms) -> Entry {
        Entry::new(
            Key {
                owner: Owner::Volume(1),
                device: 0,
                offset: 0,
            },
            terms,
        )
    }

    fn promise(iops: u32) -> Terms {
        Terms {
            min_iops: iops,
            ..Terms::default()
        }
    }

    #[test]
    fn tags_space_requests_by_the_rate_and_allow_only_a_burst() {
        let e = entry(Terms {
            max_iops: 1_000,
            ..Terms::default()
        });
        assert!(e.paced());
        let t0 = 1_000_000_000;
        // After an idle spell: BURST_NS worth (2 requests at 1 ms each) start at once...
        let starts: Vec<u64> = (0..6).map(|_| e.start(t0, 4096, false)).collect();
        assert_eq!(starts[..3], [t0, t0, t0]);
        // ...then one per millisecond.
        assert_eq!(
            starts[3..],
            [t0 + 1_000_000, t0 + 2_000_000, t0 + 3_000_000]
        );
        // Over a second of arrivals as fast as they come, 1000 start within it (+ the burst).
        let mut n = 0;
        let t1 = t0 + 10_000_000_000;
        while e.start(t1, 4096, false) < t1 + 1_000_000_000 {
            n += 1;
        }
        assert!((1000..=1003).contains(&n), "{n}");
    }

    #[test]
    fn a_bytes_cap_spaces_by_length_and_the_later_clock_wins() {
        let e = entry(Terms {
            max_iops: 1_000_000,
            max_mib_s: 100,
            ..Terms::default()
        });
        let t0 = 5_000_000_000;
        let mut at = 0;
        for _ in 0..110 {
            at = e.start(t0, 1 << 20, false);
        }
        // 110 MiB at 100 MiB/s: the last starts ~1.07 s later (the burst is 2 ms).
        let secs = (at - t0) as f64 / 1e9;
        assert!((1.05..1.1).contains(&secs), "{secs}");
    }

    #[test]
    fn a_read_counts_read_cost_times_against_the_caps_only() {
        // A copy of a 2-way mirror capped at 1000 IOPS: a read counts twice.
        let e = entry(Terms {
            max_iops: 1_000,
            read_cost: 2,
            ..Terms::default()
        });
        let t0 = 1_000_000_000;
        let mut last = 0;
        for _ in 0..102 {
            last = e.start(t0, 4096, true);
        }
        // 102 reads = 204 operations: the last starts ~202 ms on (2 ms burst).
        assert_eq!(last, t0 + 200_000_000);
        let mut w = 0;
        for _ in 0..10 {
            w = e.start(t0, 4096, false);
        }
        assert_eq!(w, t0 + 211_000_000, "writes count once");
        // The share of a busy device counts what the device does: a read once.
        e.set_terms(Terms::default());
        e.set_share((1_000, 0));
        assert!(e.paced());
        let t1 = 10 * t0;
        let mut r = 0;
        for _ in 0..12 {
            r = e.start(t1, 4096, true);
        }
        assert_eq!(r, t1 + 9_000_000);
        e.set_share((0, 0));
        assert!(!e.paced(), "nothing left to pace");
    }

    #[test]
    fn without_terms_or_load_nothing_is_paced() {
        let q = Qos::new(true, PERIOD);
        q.set_capacity(vec![CAP]);
        let k = Key {
            owner: Owner::Volume(7),
            device: 0,
            offset: 0,
        };
        let e = q.entry(k, Terms::default()).unwrap();
        assert!(!e.paced());
        e.add(&Counts {
            ops: 10_000,
            bytes: 40_960_000,
            held: 0,
        });
        q.allocate(Duration::from_secs(1));
        assert!(!e.paced(), "10% of the device is not busy");
        assert!(Qos::new(false, PERIOD).entry(k, Terms::default()).is_none());
    }

    #[test]
    fn promises_come_first_and_the_rest_goes_by_weight() {
        // A promised lease and two without promises, all held back: busy.
        let views = [
            view(promise(30_000), 25_000.0, true),
            view(Terms::default(), 40_000.0, true),
            view(
                Terms {
                    weight: 200,
                    ..Terms::default()
                },
                40_000.0,
                true,
            ),
        ];
        let r = divide(CAP, &views, &mut Device::default());
        // 30% promised; of the 70% left, 60% goes by weight, 1:1:2, the promised lease
        // included; 10% is kept back while a promise is kept.
        assert_eq!(r[0].0, 30_000 + 15_000, "{r:?}");
        assert_eq!(r[1].0, 15_000, "{r:?}");
        assert_eq!(r[2].0, 30_000, "{r:?}");
    }

    #[test]
    fn a_lease_gets_no_more_than_it_shows_it_wants_and_the_rest_goes_on() {
        // The promised lease uses 10% and is not held: it is given what it used and room to
        // grow (at least its promise); the other takes the rest.
        let views = [
            view(promise(20_000), 10_000.0, false),
            view(Terms::default(), 85_000.0, true),
        ];
        let r = divide(CAP, &views, &mut Device::default());
        assert_eq!(r[0].0, 20_000, "{r:?}");
        assert_eq!(r[1].0, 70_000, "{r:?}");
    }

    /// `divide` on a device seen as `dev`; returns the rates and whether it is busy now.
    fn share(cap: Capacity, views: &[View], dev: Device) -> (Vec<(u64, u64)>, Device) {
        let mut dev = dev;
        (divide(cap, views, &mut dev), dev)
    }

    const BUSY_BEFORE: Device = Device {
        busy: true,
        scale: 1.0,
    };

    #[test]
    fn shares_are_for_a_busy_device_only_and_idle_leases_are_free() {
        let capped = Terms {
            max_iops: 5_000,
            max_mib_s: 10,
            ..Terms::default()
        };
        // Not busy: no shares (the caps pace on their own, `Entry::start`).
        let (r, dev) = share(
            CAP,
            &[
                view(capped, 5_000.0, true),
                view(Terms::default(), 0.0, false),
            ],
            Device::default(),
        );
        assert!(!dev.busy);
        assert_eq!(r, vec![(0, 0), (0, 0)]);
        // Unknown capability: no shares, whatever the load.
        let (r, _) = share(
            Capacity::default(),
            &[view(capped, 5_000.0, true), view(promise(1), 1e6, true)],
            BUSY_BEFORE,
        );
        assert_eq!(r, vec![(0, 0), (0, 0)]);
        // Busy: the capped lease is given no more than its cap (5% of the device), the other
        // the rest of the device and a twentieth more (so that it can show the device does
        // more than its figure).
        let (r, dev) = share(
            CAP,
            &[
                view(capped, 5_000.0, true),
                view(Terms::default(), 90_000.0, true),
            ],
            Device::default(),
        );
        assert!(dev.busy);
        assert_eq!(r[0], (5_000, 50 << 20));
        assert_eq!(r[1].0, 100_000);
        // An idle promised lease holds nothing back from the others.
        let (r, dev) = share(
            CAP,
            &[
                view(promise(50_000), 0.0, false),
                view(Terms::default(), 50_000.0, false),
            ],
            Device::default(),
        );
        assert_eq!(r, vec![(0, 0), (0, 0)]);
        assert!(!dev.busy);
    }

    #[test]
    fn a_lease_alone_is_never_paced_by_a_share() {
        // Flat out on a device whose figure is low: nobody to share with, no pacing...
        let (r, dev) = share(CAP, &[view(Terms::default(), 150_000.0, true)], BUSY_BEFORE);
        assert_eq!(r, vec![(0, 0)]);
        assert!(!dev.busy);
        // ...and what it showed the device does raises the scale, a twentieth a period.
        assert_eq!(dev.scale, 1.05);
        // Unless it was promised something: then it is given its promise and the rest.
        let (r, dev) = share(CAP, &[view(promise(10_000), 50_000.0, true)], dev);
        assert!(dev.busy);
        assert_eq!(r[0].0, 90_000);
    }

    #[test]
    fn leases_sharing_a_device_that_does_more_than_its_figure_get_more() {
        // Two equal leases held back, together doing 1.3 times the figure: each period the
        // scale rises a twentieth, and their shares with it.
        let views = [
            view(Terms::default(), 65_000.0, true),
            view(Terms::default(), 65_000.0, true),
        ];
        let mut dev = Device::default();
        let mut last = 0;
        for i in 0..10 {
            let r = divide(CAP, &views, &mut dev);
            assert_eq!(r[0], r[1]);
            // 1.05^5 < 1.3 < 1.05^6: five periods of growth, then it stays.
            assert!(r[0].0 > last || i > 5, "period {i}: {r:?}");
            last = r[0].0;
        }
        // Half of 1.3 times the figure and a twentieth, each.
        assert_eq!(last, 68_250);
        assert!((dev.scale - 1.3).abs() < 1e-9, "{}", dev.scale);
        // Once they use less, the scale falls back a hundredth a period, never below 1.
        let idle = [
            view(Terms::default(), 10_000.0, false),
            view(Terms::default(), 10_000.0, false),
        ];
        divide(CAP, &idle, &mut dev);
        assert!((dev.scale - 1.3 * 0.99).abs() < 1e-9);
        for _ in 0..100 {
            divide(CAP, &idle, &mut dev);
        }
        assert_eq!(dev.scale, 1.0);
    }

    #[test]
    fn a_busy_device_stays_busy_until_its_leases_use_much_less() {
        let weight = |w| Terms {
            weight: w,
            ..Terms::default()
        };
        let two = |used: f64| {
            [
                view(weight(50), used / 2.0, true),
                view(weight(150), used / 2.0, true),
            ]
        };
        assert!(
            !share(CAP, &two(80_000.0), Device::default()).1.busy,
            "80% of an idle device is not busy"
        );
        assert!(
            share(CAP, &two(80_000.0), BUSY_BEFORE).1.busy,
            "but a busy one stays busy"
        );
        assert!(!share(CAP, &two(60_000.0), BUSY_BEFORE).1.busy);
        // Busy: what nobody was promised goes 1:3 (the device and a twentieth).
        let (r, dev) = share(CAP, &two(92_000.0), Device::default());
        assert!(dev.busy);
        assert_eq!((r[0].0, r[1].0), (26_250, 78_750));
        // Rates seen lately rise at once and fall a third of the way per period.
        assert_eq!(smooth(10.0, 20.0), 20.0);
        assert_eq!(smooth(30.0, 0.0), 20.0);
    }

    #[test]
    fn counters_that_wrap_still_give_the_right_rate() {
        let q = Qos::new(true, PERIOD);
        q.set_capacity(vec![CAP]);
        let k = Key {
            owner: Owner::Volume(1),
            device: 0,
            offset: 0,
        };
        let e = q.entry(k, Terms::default()).unwrap();
        // Counters near the top after a long life (the allocator saw them there).
        for (c, seen) in [(&e.ops, u64::MAX - 99), (&e.bytes, u64::MAX - 4095)] {
            c.store(seen, Relaxed);
        }
        {
            let mut l = lock(&e.last);
            (l.ops, l.bytes) = (u64::MAX - 99, u64::MAX - 4095);
        }
        e.add(&Counts {
            ops: 95_100,
            bytes: 4096 * 2,
            held: 1,
        });
        q.allocate(Duration::from_secs(1));
        let d = q.delivered();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].1, d[0].2), (95_100.0, 8192.0));
        // Alone (95% of the device, held back): nobody to share with, so no share.
        assert_eq!(e.share(), (0, 0));
        // A clock near the end of time saturates rather than wrapping to the past.
        e.set_share((CAP.iops, 0));
        e.share_ops.tat.store(u64::MAX - 5, Relaxed);
        assert_eq!(e.start(10, 4096, true), u64::MAX - 5);
        assert_eq!(cost(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn the_first_reactor_past_a_period_allocates_once() {
        let q = Qos::new(true, PERIOD);
        q.set_capacity(vec![CAP]);
        q.tick(0); // no entry: nothing to do, nothing claimed
        let e = q
            .entry(
                Key {
                    owner: Owner::Volume(1),
                    device: 0,
                    offset: 0,
                },
                Terms::default(),
            )
            .unwrap();
        let seen = |q: &Qos| q.delivered()[0].1;
        e.add(&Counts {
            ops: 100,
            bytes: 409_600,
            held: 0,
        });
        q.tick(1_000);
        assert!(seen(&q) > 0.0, "allocated");
        let first = seen(&q);
        e.add(&Counts {
            ops: 1_000_000,
            bytes: 0,
            held: 0,
        });
        q.tick(1_005); // within the period: another reactor, nothing done
        assert_eq!(seen(&q), first);
        q.tick(1_010);
        assert!(seen(&q) > first);
    }

    #[test]
    fn entries_no_session_holds_are_forgotten() {
        let q = Qos::new(true, PERIOD);
        let k = Key {
            owner: Owner::Volume(3),
            device: 0,
            offset: 4096,
        };
        let e = q.entry(k, promise(10)).unwrap();
        let again = q.entry(k, promise(20)).unwrap();
        assert!(Arc::ptr_eq(&e, &again), "one entry per lease range");
        assert_eq!(e.terms(), promise(20), "a newer token's terms apply");
        q.allocate(PERIOD);
        assert_eq!(q.len(), 1);
        drop((e, again));
        q.allocate(PERIOD);
        assert!(q.is_empty());
    }
}
