//! What one connection may hold and how long it may keep the node waiting: the per-connection
//! budgets (arena slots, unsent reply bytes) and the handshake and mid-frame timeouts, so that
//! no client, whatever token it holds, can take what the others need (docs/node.md, "Budgets and
//! timeouts").

use std::time::Duration;

use crate::conn::{Conn, Phase};

/// The node's bounds, from its flags.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// A connection still in its handshake this long after it was accepted is closed.
    pub handshake_timeout_ms: u64,
    /// A connection that sent part of a frame and nothing since for this long is closed.
    pub payload_timeout_ms: u64,
    /// A connection whose send has not moved for this long (its client reads no replies) is
    /// closed.
    pub send_timeout_ms: u64,
    /// Arena bytes one connection may hold.
    pub slot_budget: u64,
    /// Reply payload bytes one connection may have queued and unsent.
    pub send_budget: u64,
    /// Test-only fault: FLUSH, DISCARD and WRITE_ZEROES take this much longer.
    pub slow_device_ops: Option<Duration>,
}

/// How often the reactor looks for connections past a timeout.
pub const SWEEP_EVERY_MS: u64 = 100;

/// Why a connection is closed by [`overdue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overdue {
    /// No completed handshake in time.
    Handshake,
    /// A frame started and not continued in time.
    Payload,
    /// Replies waiting and none of them taken by the client in time.
    Send,
}

impl std::fmt::Display for Overdue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Overdue::Handshake => "no handshake within --handshake-timeout",
            Overdue::Payload => "part of a frame and nothing more within --payload-timeout",
            Overdue::Send => "replies waiting and none taken within --send-timeout",
        })
    }
}

/// How long a connection may hold a slot with its WRITE payload stalled, or hold replies its
/// client does not take, while other requests wait for slots (`pressure`), when the payload or
/// send timeout is longer.
pub const PRESSURE_GRACE_MS: u64 = 2000;

/// Whether `c` has overstayed a timeout at `now_ms`; `pressure`: requests are waiting for slots.
pub fn overdue(c: &Conn, b: &Bounds, now_ms: u64, pressure: bool) -> Option<Overdue> {
    if c.phase == Phase::Closing {
        return None;
    }
    // Replies the client does not take hold their slots (a READ's reply is sent from its slot):
    // with enough such clients no slot would be left to anyone else. This holds for a
    // connection that is to close once its replies are out, too.
    if c.sending.is_some() {
        let limit = if pressure {
            b.send_timeout_ms.min(PRESSURE_GRACE_MS)
        } else {
            b.send_timeout_ms
        };
        if now_ms.saturating_sub(c.send_moved_ms) >= limit {
            return Some(Overdue::Send);
        }
    }
    if c.close_after_send {
        return None;
    }
    // A session held for the write barrier waits on the node, not on its client.
    if c.phase == Phase::Handshake && c.held.is_none() {
        if now_ms.saturating_sub(c.accepted_ms) >= b.handshake_timeout_ms {
            return Some(Overdue::Handshake);
        }
        return None;
    }
    // A stalled payload holds a slot others are waiting for: it gets less patience.
    let limit = if pressure && c.payload_req.is_some() {
        b.payload_timeout_ms.min(PRESSURE_GRACE_MS)
    } else {
        b.payload_timeout_ms
    };
    match c.partial_since_ms {
        Some(t) if now_ms.saturating_sub(t) >= limit => Some(Overdue::Payload),
        _ => None,
    }
}

/// Whether `c` is waiting on its client for the rest of a frame: a WRITE payload being
/// received, or unparsed bytes the parser cannot use yet, while nothing on the node's side
/// (a slot, a budget, the pipelining limit, the write barrier) holds it back.
pub fn waits_on_client(c: &Conn, max_inflight: u32) -> bool {
    if c.payload_req.is_some() {
        return true;
    }
    c.phase == Phase::Serving
        && c.rend > c.rstart
        && !c.stalled
        && !c.parked
        && c.held.is_none()
        && c.inflight < max_inflight
}

/// Whether a connection holding `held` slot bytes may take a slot of `size` more: always when
/// it holds none (so one request of any size can proceed), else within the budget.
pub fn slot_fits(held: u64, size: usize, b: &Bounds) -> bool {
    held == 0 || held + size as u64 <= b.slot_budget
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_budget_lets_one_request_through() {
        let b = Bounds {
            handshake_timeout_ms: 1,
            payload_timeout_ms: 1,
            send_timeout_ms: 1,
            slot_budget: 1 << 20,
            send_budget: 1 << 20,
            slow_device_ops: None,
        };
        assert!(slot_fits(0, 4 << 20, &b));
        assert!(slot_fits(512 << 10, 512 << 10, &b));
        assert!(!slot_fits(512 << 10, (512 << 10) + 1, &b));
    }
}
