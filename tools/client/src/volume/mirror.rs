//! Modifying a mirror: a write (discard, write-zeroes, flush) goes to every healthy copy; a copy
//! whose node failed it is reported to the control plane, which marks it stale, before the
//! operation is acknowledged from the others.

use dasmesh_api::v1;
use dasmesh_wire::{Op, Status};
use futures_util::future::join_all;

use super::lease::{merge_stale, to_extent};
use super::route::{is_transport, timed, Io};
use super::{control, Access, Volume};
use crate::layout::Piece;
use crate::Error;

/// Errors that mean the copy, not the host, failed: the copy missed the write.
pub(super) fn copy_failed(e: &Error) -> bool {
    is_transport(e)
        || matches!(
            e.status(),
            Some(Status::IoError | Status::ShuttingDown | Status::Internal | Status::NoSpace)
        )
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
        let plan: Vec<(usize, Vec<Piece>)> = {
            let map = self.map();
            (0..map.copies())
                .filter(|&c| map.copy_is_healthy(c))
                .map(|c| {
                    let ps = map.pieces(c, offset, len);
                    (c, ps)
                })
                .collect()
        };
        if plan.is_empty() {
            return Err(Error::Unavailable(format!(
                "volume {:?}: no healthy copy",
                self.inner.name
            )));
        }
        let cut = matches!(io, Io::Write { .. });
        let results = join_all(plan.into_iter().map(|(copy, pieces)| async move {
            let pieces = self.chunks(pieces, cut);
            let rs = join_all(pieces.into_iter().map(|p| self.on_extent(p, offset, io))).await;
            (copy, rs.into_iter().find_map(Result::err))
        }))
        .await;
        let total = results.len();
        let mut failed = Vec::new();
        let mut first = None;
        for (copy, err) in results {
            match err {
                None => {}
                Some(e) if total > 1 && copy_failed(&e) => {
                    failed.push(copy);
                    first.get_or_insert(e);
                }
                // The host's own refusal (or a single copy): the write failed.
                Some(e) => return Err(e),
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let why = first.expect("a failure");
        if failed.len() == total {
            return Err(why);
        }
        self.report_failed(&failed, &why).await?;
        Ok(())
    }

    /// Makes every write acknowledged so far durable, on every node holding the volume.
    pub async fn flush(&self) -> Result<(), Error> {
        let map = self.map().clone();
        // A FLUSH covers every acknowledged write on its node device: one per device will do.
        let mut seen = std::collections::HashSet::new();
        let targets: Vec<usize> = (0..self.inner.links.len())
            .filter(|&i| {
                let e = &map.extents()[i];
                map.copy_is_healthy(e.copy as usize) && seen.insert((e.address.clone(), e.device))
            })
            .collect();
        let map = &map;
        let results = join_all(targets.iter().map(|&i| async move {
            let link = &self.inner.links[i];
            let limit = Some(self.inner.opts.request_timeout);
            let r = match link.session().await {
                Ok(s) => timed(limit, s.flush_one()).await,
                Err(e) => Err(e),
            };
            (map.extents()[i].copy as usize, r)
        }))
        .await;
        let copies = map.copies();
        let mut failed = Vec::new();
        let mut first = None;
        for (copy, r) in results {
            if let Err(e) = r {
                if copies > 1 && copy_failed(&e) {
                    if !failed.contains(&copy) {
                        failed.push(copy);
                    }
                    first.get_or_insert(e);
                } else {
                    return Err(e);
                }
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let why = first.expect("a failure");
        let healthy = (0..copies).filter(|&c| map.copy_is_healthy(c)).count();
        if failed.len() >= healthy || self.inner.opts.access == Access::ReadOnly {
            return Err(why);
        }
        self.report_failed(&failed, &why).await
    }

    /// Has the control plane mark `copies` stale (before the write is acknowledged).
    pub(super) async fn report_failed(&self, copies: &[usize], why: &Error) -> Result<(), Error> {
        let _one = self.inner.reporting.lock().await;
        let fresh: Vec<u32> = {
            let map = self.map();
            copies
                .iter()
                .filter(|&&c| map.copy_is_healthy(c))
                .map(|&c| c as u32)
                .collect()
        };
        if fresh.is_empty() {
            return Ok(());
        }
        tracing::warn!(volume = %self.inner.name, copies = ?fresh, "mirror copies failed a write: {why}");
        let r = v1::leases_client::LeasesClient::new(self.inner.ctl.clone())
            .report_failure(v1::ReportFailureRequest {
                lease_id: self.lease_id(),
                copies: fresh.clone(),
                reason: why.to_string(),
            })
            .await
            .map_err(|s| control("report a failed mirror copy", s))?
            .into_inner();
        let mut map = self.inner.map.write().unwrap_or_else(|p| p.into_inner());
        for c in fresh {
            map.mark_stale(c as usize);
        }
        merge_stale(&mut map, r.extents.iter().map(to_extent));
        Ok(())
    }
}
