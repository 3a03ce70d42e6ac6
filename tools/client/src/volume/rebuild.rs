//! Rebuilding a mirror: copy a healthy copy's data onto the stale ones, then have the control
//! plane mark them healthy again.

use std::sync::atomic::Ordering;

use dasmesh_api::v1;
use futures_util::future::join_all;

use super::lease::{merge_stale, to_extent};
use super::route::Io;
use super::{control, Access, Volume};
use crate::layout::Piece;
use crate::Error;

impl Volume {
    /// What of the volume the `stale` copies may lack, as `[start, end)` byte ranges: what the
    /// control plane recorded as written since each turned stale, or everything for a copy
    /// without a record.
    async fn to_resync(&self, stale: &[usize], size: u64) -> Result<Vec<(u64, u64)>, Error> {
        let v = v1::volumes_client::VolumesClient::new(self.inner.ctl.clone())
            .get(v1::GetVolumeRequest {
                name: self.inner.name.clone(),
            })
            .await
            .map_err(|s| control("read what changed on the stale copies", s))?
            .into_inner();
        let mut all = Vec::new();
        for &c in stale {
            let Some(d) = v.dirty.iter().find(|d| d.copy as usize == c) else {
                return Ok(vec![(0, size)]);
            };
            all.extend(d.ranges.iter().map(|r| {
                (
                    r.offset.min(size),
                    r.offset.saturating_add(r.length).min(size),
                )
            }));
        }
        all.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (s, e) in all.into_iter().filter(|(s, e)| s < e) {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        Ok(out)
    }

    /// Copies a healthy copy's data onto every stale copy of a mirror, flushes them, and has the
    /// control plane mark them healthy again; returns the copies rebuilt. Needs a read-write
    /// mount (the lease is exclusive); writes through this handle wait until it is done.
    /// `progress(done, total)` is called as bytes are copied.
    pub async fn rebuild(&self, mut progress: impl FnMut(u64, u64)) -> Result<Vec<u32>, Error> {
        if self.inner.opts.access != Access::ReadWrite {
            return Err(Error::Invalid("a rebuild needs a read-write mount".into()));
        }
        let _alone = self.inner.gate.write().await;
        let (stale, size, max_io) = {
            let map = self.map();
            // Copies their nodes are rebuilding (replacements) are theirs to finish.
            let stale: Vec<usize> = (0..map.copies())
                .filter(|&c| !map.copy_is_healthy(c) && !map.copy_rebuilding(c))
                .collect();
            let max_io = (0..map.extents().len())
                .map(|i| self.inner.links[i].max_io.load(Ordering::Relaxed))
                .min()
                .unwrap_or(1 << 20);
            (stale, map.size(), max_io)
        };
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        if !(0..self.map().copies()).any(|c| self.map().copy_is_healthy(c)) {
            return Err(Error::Unavailable(format!(
                "volume {:?}: no healthy copy to rebuild from",
                self.inner.name
            )));
        }
        let chunk = (max_io.min(1 << 20) / u64::from(self.block_size())).max(1)
            * u64::from(self.block_size());
        let todo = self.to_resync(&stale, size).await?;
        let total: u64 = todo.iter().map(|r| r.1 - r.0).sum();
        let mut done = 0;
        for (mut at, end) in todo {
            while at < end {
                let n = chunk.min(end - at);
                let data = self.read(at, n as usize).await?;
                let io = Io::Write {
                    data: &data,
                    fua: false,
                };
                let writes: Vec<Piece> = {
                    let map = self.map();
                    stale.iter().flat_map(|&c| map.pieces(c, at, n)).collect()
                };
                let results = join_all(writes.iter().map(|p| self.on_extent(*p, at, &io))).await;
                for (p, r) in writes.iter().zip(results) {
                    if let Err(e) = r {
                        let x = self.map().extents()[p.extent].clone();
                        return Err(Error::Unavailable(format!(
                            "copy {} (node {} at {}) cannot be written: {e}",
                            x.copy, x.node_id, x.address
                        )));
                    }
                }
                at += n;
                done += n;
                progress(done, total);
            }
        }
        let targets: Vec<usize> = {
            let map = self.map();
            (0..map.extents().len())
                .filter(|&i| stale.contains(&(map.extents()[i].copy as usize)))
                .collect()
        };
        for i in targets {
            let s = self.inner.links[i].session().await?;
            s.flush_one().await?;
        }
        let copies: Vec<u32> = stale.iter().map(|&c| c as u32).collect();
        let r = v1::leases_client::LeasesClient::new(self.inner.ctl.clone())
            .report_rebuilt(v1::ReportRebuiltRequest {
                lease_id: self.lease_id(),
                copies: copies.clone(),
            })
            .await
            .map_err(|s| control("report the rebuilt copies", s))?
            .into_inner();
        self.inner.dirty.healthy_again(&stale);
        let mut map = self.inner.map.write().unwrap_or_else(|p| p.into_inner());
        for &c in &stale {
            map.set_stale(c, false);
        }
        merge_stale(&mut map, r.extents.iter().map(to_extent));
        Ok(copies)
    }
}
