//! Routing a request: the range and block checks, the pieces a request splits into (cut at each
//! extent's largest request), the one-piece fast path, one request on one extent with its retry,
//! and reads served from one copy at a time, failing over to the next.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use futures_util::future::join_all;

use super::mirror::copy_failed;
use super::{now_ms, Volume};
use crate::layout::Piece;
use crate::{Error, SearchResult};

thread_local! {
    /// Where this thread's next mirror read starts looking for a copy.
    static NEXT_COPY: Cell<usize> = const { Cell::new(0) };
}

/// Errors of the transport (the request may be retried on a fresh connection).
pub(super) fn is_transport(e: &Error) -> bool {
    matches!(
        e,
        Error::Io(_) | Error::Closed | Error::Timeout | Error::Protocol(_)
    )
}

/// One request on one extent.
pub(super) enum Io<'a> {
    Read,
    Write { data: &'a [u8], fua: bool },
    Discard,
    Zeroes { fua: bool },
    Search { pattern: &'a [u8], max_hits: u32 },
}

pub(super) enum Out {
    None,
    Data(Vec<u8>),
    Hits(SearchResult),
}

impl Volume {
    pub(super) fn check(&self, offset: u64, len: u64) -> Result<(), Error> {
        self.map().check_range(offset, len)?;
        let bs = u64::from(self.block_size());
        if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(Error::Invalid(format!(
                "offset {offset} and length {len} must be multiples of the block size {bs}"
            )));
        }
        Ok(())
    }

    /// `pieces` further cut at each extent's largest request size (reads and writes only).
    pub(super) fn chunks(&self, pieces: Vec<Piece>, cut: bool) -> Vec<Piece> {
        if !cut {
            return pieces;
        }
        let mut out = Vec::with_capacity(pieces.len());
        for p in pieces {
            let max = self.inner.links[p.extent].max_io.load(Ordering::Relaxed);
            let mut done = 0;
            while done < p.len {
                let len = (p.len - done).min(max);
                out.push(Piece {
                    extent: p.extent,
                    device_offset: p.device_offset + done,
                    volume_offset: p.volume_offset + done,
                    len,
                });
                done += len;
            }
        }
        out
    }

    /// The one piece of `copy` a request maps to, when it needs no split (the fast path of
    /// every layout: most requests fall inside one extent and one stripe unit).
    pub(super) fn one_piece(&self, copy: usize, offset: u64, len: u64) -> Option<Piece> {
        let p = self.map().one_piece(copy, offset, len)?;
        let max = self.inner.links[p.extent].max_io.load(Ordering::Relaxed);
        (p.len <= max).then_some(p)
    }

    /// The copy this read goes to first: the healthy copies in turn (per thread, so threads do
    /// not share a counter), skipping one that failed a read in the last few seconds. `None`
    /// when no healthy copy is left to choose without failing over.
    pub(super) fn pick_copy(&self) -> Option<usize> {
        let map = self.map();
        let n = map.copies();
        if n == 1 {
            return map.copy_is_healthy(0).then_some(0);
        }
        let start = NEXT_COPY.with(|c| {
            let v = c.get();
            c.set(v.wrapping_add(1));
            v
        });
        let mut now = None;
        (0..n).map(|i| (start + i) % n).find(|&c| {
            if !map.copy_is_healthy(c) {
                return false;
            }
            let until = self.inner.avoid_until[c].load(Ordering::Relaxed);
            until == 0 || until <= *now.get_or_insert_with(now_ms)
        })
    }

    /// One request on one extent; a transport failure is retried once on a fresh connection.
    pub(super) async fn on_extent(&self, p: Piece, base: u64, io: &Io<'_>) -> Result<Out, Error> {
        let link = &self.inner.links[p.extent];
        let mut retried = false;
        loop {
            let s = link.session().await?;
            // Each connection times out its own requests (all but searches).
            let r = async {
                match io {
                    Io::Read => s.read(p.device_offset, p.len as usize).await.map(Out::Data),
                    Io::Write { data, fua } => {
                        let at = (p.volume_offset - base) as usize;
                        s.write(p.device_offset, &data[at..at + p.len as usize], *fua)
                            .await
                            .map(|()| Out::None)
                    }
                    Io::Discard => s.discard(p.device_offset, p.len).await.map(|()| Out::None),
                    Io::Zeroes { fua } => s
                        .write_zeroes(p.device_offset, p.len, *fua)
                        .await
                        .map(|()| Out::None),
                    Io::Search { pattern, max_hits } => s
                        .search(p.device_offset, p.len, pattern, *max_hits)
                        .await
                        .map(Out::Hits),
                }
            }
            .await;
            match r {
                Err(e) if is_transport(&e) && !retried => {
                    link.invalidate(&s);
                    retried = true;
                }
                r => return r,
            }
        }
    }

    /// Copies reads may be served from, preferred first (round robin, recent failures last).
    pub(super) fn read_order(&self) -> Vec<usize> {
        let map = self.map();
        let n = map.copies();
        let start = self.inner.next_copy.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let mut order: Vec<usize> = (0..n)
            .map(|i| (start + i) % n)
            .filter(|&c| map.copy_is_healthy(c))
            .collect();
        order.sort_by_key(|&c| self.inner.avoid_until[c].load(Ordering::Relaxed) > now);
        order
    }

    /// Runs `io` over `[offset, offset+len)` of one readable copy, trying the next copy when
    /// one fails; returns each piece's result in volume order.
    pub(super) async fn on_readable_copy(
        &self,
        offset: u64,
        len: u64,
        io: &Io<'_>,
    ) -> Result<Vec<(Piece, Out)>, Error> {
        let order = self.read_order();
        let mut last = None;
        for copy in order {
            let cut = matches!(io, Io::Read);
            let pieces = self.chunks(self.map().pieces(copy, offset, len), cut);
            let results = join_all(pieces.iter().map(|p| self.on_extent(*p, offset, io))).await;
            match results.into_iter().collect::<Result<Vec<Out>, Error>>() {
                Ok(outs) => return Ok(pieces.into_iter().zip(outs).collect()),
                Err(e) if self.map().copies() > 1 && copy_failed(&e) => {
                    tracing::warn!(volume = %self.inner.name, copy, "read failed, trying another copy: {e}");
                    self.inner.avoid_until[copy].store(now_ms() + 5_000, Ordering::Relaxed);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::Unavailable(format!("volume {:?}: no healthy copy", self.inner.name))
        }))
    }
}
