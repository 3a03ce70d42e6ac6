//! Modifying a mirror: a write (discard, write-zeroes, flush) goes to every healthy copy; a copy
//! whose node failed it is reported to the control plane, which marks it stale, before the
//! operation is acknowledged from the others.

use dasmesh_api::v1;
use dasmesh_wire::{Op, Status};
use futures_util::future::join_all;

use super::lease::{merge_stale, to_extent};
use super::route::{is_transport, Io};
use super::{control, Access, Volume};
use crate::layout::Piece;
use crate::Error;

fn byte_ranges(r: &[(u64, u64)]) -> Vec<v1::ByteRange> {
    r.iter()
        .map(|&(offset, length)| v1::ByteRange { offset, length })
        .collect()
}

/// Errors that mean the copy, not the host, failed: the copy missed the write.
pub(super) fn copy_failed(e: &Error) -> bool {
    is_transport(e)
        || matches!(
            e.status(),
            Some(Status::IoError | Status::ShuttingDown | Status::Internal | Status::NoSpace)
        )
}

/// What a modifying operation on every healthy copy came to.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Every copy took it.
    Ok,
    /// Some copies missed it and others took it: these copies (in the order they first failed)
    /// must be reported stale before the operation is acknowledged; `why` is the first failure.
    ReportStale {
        /// The copies that failed, each once.
        copies: Vec<usize>,
        /// The first copy failure, for the report and the log.
        why: Error,
    },
    /// The operation failed: this error goes back to the caller, and no copy is marked.
    Fail(Error),
}

/// Decides what per-copy results of a modifying operation (write, discard, write-zeroes,
/// flush) mean. `healthy` lists the readable copies it went to (it may also have gone to
/// copies being rebuilt, which cannot acknowledge it); `failures` holds every failed request
/// with its copy, in any number per copy.
///
/// - A refusal that is the host's own (stale epoch, expired token, read-only, a bad argument)
///   fails the operation and never marks a copy: another copy would refuse it too.
/// - With no failure it succeeded.
/// - Where there is nothing left to acknowledge from (every healthy copy failed), or on a
///   read-only mount (which may not report), the first failure is returned.
/// - Otherwise the failed copies are to be reported stale, and the others acknowledge it.
pub(super) fn verdict(healthy: &[usize], failures: Vec<(usize, Error)>, access: Access) -> Verdict {
    let mut copies = Vec::new();
    let mut first = None;
    for (copy, e) in failures {
        if !copy_failed(&e) {
            return Verdict::Fail(e);
        }
        if !copies.contains(&copy) {
            copies.push(copy);
        }
        first.get_or_insert(e);
    }
    let Some(why) = first else {
        return Verdict::Ok;
    };
    let lost = copies.iter().filter(|c| healthy.contains(c)).count();
    if lost >= healthy.len() || access == Access::ReadOnly {
        return Verdict::Fail(why);
    }
    Verdict::ReportStale { copies, why }
}

impl Volume {
    /// Runs a modifying `io` on every healthy copy; a copy that fails it is reported stale.
    pub(super) async fn on_every_copy(
        &self,
        offset: u64,
        len: u64,
        io: &Io<'_>,
    ) -> Result<(), Error> {
        if self.inner.opts.access == Access::ReadOnly {
            let op = match io {
                Io::Discard => Op::Discard,
                Io::Zeroes { .. } => Op::WriteZeroes,
                _ => Op::Write,
            };
            return Err(Error::Request {
                op,
                status: Status::ReadOnly,
            });
        }
        let _gate = self.inner.gate.read().await;
        // Every piece of every healthy copy, sent at once; one completion for all of them.
        let cut = matches!(io, Io::Write { .. });
        let (healthy, plan, stale, mirror) = {
            let map = self.map();
            // Copies that miss it: their records gain it. Copies being rebuilt and guarded by
            // their nodes take it, though they are not read.
            let stale: Vec<usize> = (0..map.copies())
                .filter(|&c| !map.copy_takes_writes(c))
                .collect();
            let healthy: Vec<usize> = (0..map.copies())
                .filter(|&c| map.copy_is_healthy(c))
                .collect();
            let mut plan: Vec<(usize, Piece)> = Vec::with_capacity(map.copies());
            for c in (0..map.copies()).filter(|&c| map.copy_takes_writes(c)) {
                let ps = map.pieces(c, offset, len);
                plan.extend(self.chunks(ps, cut).into_iter().map(|p| (c, p)));
            }
            (healthy, plan, stale, map.copies() > 1)
        };
        if healthy.is_empty() {
            return Err(Error::Unavailable(format!(
                "volume {:?}: no healthy copy",
                self.inner.name
            )));
        }
        // The stale copies' records gain this write's regions while it runs, and before it is
        // acknowledged.
        let (results, recorded) = futures_util::join!(
            join_all(plan.iter().map(|&(copy, p)| async move {
                self.on_extent(p, offset, io).await.err().map(|e| (copy, e))
            })),
            self.record_dirty(&stale, offset, len)
        );
        let failures = results.into_iter().flatten().collect();
        // Noted once the copies answered: a flush that started before then may not cover it.
        // Only a mirror has copies that may miss writes (and it costs a lock per write).
        if mirror {
            self.inner.dirty.wrote(offset, len);
        }
        let lacks = self.inner.dirty.failed(Some((offset, len)));
        self.settle(verdict(&healthy, failures, self.inner.opts.access), lacks)
            .await?;
        recorded
    }

    /// Tells the control plane that `[offset, offset + len)` changed while the `stale` copies
    /// could not take it, for each of them whose record lacks a region of it.
    async fn record_dirty(&self, stale: &[usize], offset: u64, len: u64) -> Result<(), Error> {
        let ranges = super::dirty::Tracker::op_ranges(offset, len);
        if stale.is_empty() || self.inner.dirty.unrecorded(stale, &ranges).is_empty() {
            return Ok(());
        }
        let _one = self.inner.reporting.lock().await;
        self.record_locked(stale, Some(&ranges), "written while stale")
            .await
    }

    /// With the reporting lock held: reports `ranges` (`None`: anything) for those of the
    /// stale `copies` whose record lacks some of them.
    async fn record_locked(
        &self,
        copies: &[usize],
        ranges: Option<&[(u64, u64)]>,
        why: &str,
    ) -> Result<(), Error> {
        let copies = match ranges {
            Some(r) => self.inner.dirty.unrecorded(copies, r),
            None => copies.to_vec(),
        };
        if copies.is_empty() {
            return Ok(());
        }
        self.send_report(&copies, why, ranges, true).await
    }

    /// One failure report: `copies` turn (or stay) stale and may lack `ranges`.
    async fn send_report(
        &self,
        copies: &[usize],
        why: &str,
        ranges: Option<&[(u64, u64)]>,
        not_sent: bool,
    ) -> Result<(), Error> {
        let r = v1::leases_client::LeasesClient::new(self.inner.ctl.clone())
            .report_failure(v1::ReportFailureRequest {
                lease_id: self.lease_id(),
                copies: copies.iter().map(|&c| c as u32).collect(),
                reason: why.to_string(),
                dirty: byte_ranges(ranges.unwrap_or_default()),
                not_sent,
            })
            .await
            .map_err(|s| control("report a failed mirror copy", s))?
            .into_inner();
        self.inner.dirty.recorded(copies, ranges, &r.tracked);
        let mut map = self.inner.map.write().unwrap_or_else(|p| p.into_inner());
        for &c in copies {
            map.mark_stale(c);
        }
        merge_stale(&mut map, r.extents.iter().map(to_extent));
        drop(map);
        self.inner
            .reports
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Makes every write acknowledged so far durable, on every node holding the volume.
    pub async fn flush(&self) -> Result<(), Error> {
        self.fenced_retry(|| self.flush_once()).await
    }

    async fn flush_once(&self) -> Result<(), Error> {
        let map = self.map().clone();
        // A FLUSH covers every acknowledged write on its node device: one per device will do.
        let mut seen = std::collections::HashSet::new();
        let targets: Vec<usize> = (0..self.inner.links.len())
            .filter(|&i| {
                let e = &map.extents()[i];
                map.copy_takes_writes(e.copy as usize) && seen.insert((e.address.clone(), e.device))
            })
            .collect();
        let map = &map;
        let at = self.inner.dirty.flush_started();
        let results = join_all(targets.iter().map(|&i| async move {
            let link = &self.inner.links[i];
            let r = match link.session().await {
                Ok(s) => s.flush_one().await,
                Err(e) => Err(e),
            };
            (map.extents()[i].copy as usize, r)
        }))
        .await;
        let healthy: Vec<usize> = (0..map.copies())
            .filter(|&c| map.copy_is_healthy(c))
            .collect();
        let failures = results
            .into_iter()
            .filter_map(|(copy, r)| r.err().map(|e| (copy, e)))
            .collect();
        // A copy failing a flush may lack anything written since the last one.
        let lacks = self.inner.dirty.failed(None);
        self.settle(verdict(&healthy, failures, self.inner.opts.access), lacks)
            .await?;
        self.inner.dirty.flushed(at);
        Ok(())
    }

    /// Carries out a verdict: reports the failed copies (which may lack `lacks`: see
    /// [`super::dirty::Tracker::failed`]) before the operation is acknowledged.
    async fn settle(&self, v: Verdict, lacks: Option<Vec<(u64, u64)>>) -> Result<(), Error> {
        match v {
            Verdict::Ok => Ok(()),
            Verdict::ReportStale { copies, why } => {
                self.report_failed(&copies, &why, lacks.as_deref()).await
            }
            Verdict::Fail(e) => Err(e),
        }
    }

    /// Has the control plane mark `copies` stale (before the write is acknowledged); they may
    /// lack `lacks` (`None`: anything, they are copied in full).
    pub(super) async fn report_failed(
        &self,
        copies: &[usize],
        why: &Error,
        lacks: Option<&[(u64, u64)]>,
    ) -> Result<(), Error> {
        let _one = self.inner.reporting.lock().await;
        let (fresh, already): (Vec<usize>, Vec<usize>) = {
            let map = self.map();
            copies.iter().partition(|&&c| map.copy_takes_writes(c))
        };
        if !fresh.is_empty() {
            tracing::warn!(volume = %self.inner.name, copies = ?fresh, "mirror copies failed a write: {why}");
            self.send_report(&fresh, &why.to_string(), lacks, false)
                .await?;
        }
        // Marked stale meanwhile by another operation's report, which may not have named what
        // this one wrote.
        self.record_locked(&already, lacks, "written while stale")
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dasmesh_wire::Op;

    fn all(n: usize) -> Vec<usize> {
        (0..n).collect()
    }

    fn node(status: Status) -> Error {
        Error::Request {
            op: Op::Write,
            status,
        }
    }

    /// Every error that means the copy (its node, its device, the path to it) failed.
    fn copy_failures() -> Vec<Error> {
        vec![
            Error::Io(std::io::Error::other("reset")),
            Error::Closed,
            Error::Timeout,
            Error::Protocol("bad reply".into()),
            node(Status::IoError),
            node(Status::ShuttingDown),
            node(Status::Internal),
            node(Status::NoSpace),
        ]
    }

    /// Refusals that are the host's own: another copy would give the same answer.
    fn host_refusals() -> Vec<Error> {
        vec![
            node(Status::StaleEpoch),
            node(Status::Expired),
            node(Status::BadToken),
            node(Status::ReadOnly),
            node(Status::OutOfRange),
            Error::Invalid("range".into()),
            Error::Control("lease gone".into()),
        ]
    }

    #[test]
    fn no_failure_is_ok() {
        for healthy in 1..4 {
            for access in [Access::ReadWrite, Access::ReadOnly] {
                assert!(matches!(
                    verdict(&all(healthy), vec![], access),
                    Verdict::Ok
                ));
            }
        }
    }

    #[test]
    fn a_failed_copy_of_two_is_reported_and_the_other_acknowledges() {
        for e in copy_failures() {
            let shown = e.to_string();
            match verdict(&all(2), vec![(1, e)], Access::ReadWrite) {
                Verdict::ReportStale { copies, why } => {
                    assert_eq!(copies, vec![1]);
                    assert_eq!(why.to_string(), shown);
                }
                v => panic!("{shown}: {v:?}"),
            }
        }
    }

    #[test]
    fn host_refusals_fail_and_never_mark_a_copy() {
        for e in host_refusals() {
            let shown = e.to_string();
            // Alone, after a copy failure of another copy, and after one of the same copy.
            for before in [None, Some(0), Some(1)] {
                let mut failures: Vec<(usize, Error)> =
                    before.map(|c| (c, Error::Closed)).into_iter().collect();
                failures.push((1, again(&e)));
                match verdict(&all(3), failures, Access::ReadWrite) {
                    Verdict::Fail(got) => assert_eq!(got.to_string(), shown),
                    v => panic!("{shown} after {before:?}: {v:?}"),
                }
            }
        }
    }

    /// A fresh error equal to `e` (errors are not `Clone`).
    fn again(e: &Error) -> Error {
        match e {
            Error::Request { op, status } => Error::Request {
                op: *op,
                status: *status,
            },
            Error::Invalid(m) => Error::Invalid(m.clone()),
            Error::Control(m) => Error::Control(m.clone()),
            other => panic!("not a host refusal here: {other}"),
        }
    }

    #[test]
    fn every_healthy_copy_failing_returns_the_first_failure() {
        let failures = vec![(1, node(Status::IoError)), (0, Error::Timeout)];
        match verdict(&all(2), failures, Access::ReadWrite) {
            Verdict::Fail(e) => assert!(matches!(e.status(), Some(Status::IoError)), "{e}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_single_healthy_copy_that_fails_fails_the_operation() {
        for e in copy_failures() {
            assert!(matches!(
                verdict(&all(1), vec![(0, e)], Access::ReadWrite),
                Verdict::Fail(_)
            ));
        }
    }

    #[test]
    fn a_read_only_mount_never_reports() {
        match verdict(&all(2), vec![(0, Error::Closed)], Access::ReadOnly) {
            Verdict::Fail(Error::Closed) => {}
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_copy_failing_on_several_devices_counts_once() {
        // A flush reaches each device of a copy: two failures of copy 0 are one failed copy,
        // not "every copy failed".
        let failures = vec![(0, Error::Closed), (0, node(Status::IoError))];
        match verdict(&all(2), failures, Access::ReadWrite) {
            Verdict::ReportStale { copies, why } => {
                assert_eq!(copies, vec![0]);
                assert!(matches!(why, Error::Closed));
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn several_failed_copies_are_reported_in_the_order_they_failed() {
        let failures = vec![(2, Error::Timeout), (0, Error::Closed), (2, Error::Closed)];
        match verdict(&all(3), failures, Access::ReadWrite) {
            Verdict::ReportStale { copies, why } => {
                assert_eq!(copies, vec![2, 0]);
                assert!(matches!(why, Error::Timeout));
            }
            v => panic!("{v:?}"),
        }
    }

    /// A copy being rebuilt takes writes but cannot acknowledge them: its failure beside a
    /// healthy copy's success is reported, and the healthy copy's failure fails the write.
    #[test]
    fn a_rebuilding_copy_neither_acknowledges_nor_fails_a_write() {
        match verdict(&[0], vec![(1, Error::Closed)], Access::ReadWrite) {
            Verdict::ReportStale { copies, .. } => assert_eq!(copies, vec![1]),
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            verdict(&[0], vec![(0, Error::Closed)], Access::ReadWrite),
            Verdict::Fail(_)
        ));
    }
}
