//! Per-connection state: the receive staging buffer, the session a token opened, and the queue
//! of replies waiting to be sent (with the in-flight `sendmsg` that owns its iovecs).

use memmap2::MmapMut;
use socket2::Socket;

use dasmesh_wire::{
    peek_header, Claim, HelloReply, Op, ReplyHeader, RequestHeader, RequestLimits, Searcher,
    Status, Tag, HELLO_REPLY_LEN, REPLY_HEADER_LEN, REQUEST_HEADER_LEN,
};

use crate::arena::{BufId, NUM_CLASSES};
use crate::barrier::{Barrier, WriteSeq};
use crate::fence::Range;

/// Size of a connection's receive staging buffer (headers, and small writes' leading bytes).
pub const RBUF_LEN: usize = 64 << 10;

/// What follows a reply header on the wire.
pub enum Payload {
    /// Nothing.
    None,
    /// An arena slot (READ data), freed once sent.
    Arena(BufId, usize),
    /// Heap bytes (SEARCH hits).
    Heap(Vec<u8>),
    /// Straight out of the memory backend.
    Memory(*const u8, usize),
}

/// One message to send: a header (request reply or handshake reply) and its payload.
pub struct Reply {
    /// Encoded header bytes.
    pub head: [u8; HELLO_REPLY_LEN],
    /// How many of `head` are used.
    pub head_len: usize,
    /// The payload.
    pub payload: Payload,
    /// Whether this answers a request (and so frees a pipelining slot once sent).
    pub counts: bool,
}

impl Reply {
    /// A reply to a request.
    pub fn request(h: ReplyHeader, payload: Payload) -> Self {
        let mut head = [0u8; HELLO_REPLY_LEN];
        head[..REPLY_HEADER_LEN].copy_from_slice(&h.encode());
        Self {
            head,
            head_len: REPLY_HEADER_LEN,
            payload,
            counts: true,
        }
    }

    /// The answer to a hello.
    pub fn hello(r: &HelloReply) -> Self {
        Self {
            head: r.encode(),
            head_len: HELLO_REPLY_LEN,
            payload: Payload::None,
            counts: false,
        }
    }
}

/// A `sendmsg` in flight: owns the replies its iovecs point into until the kernel is done.
pub struct SendState {
    /// The replies being sent.
    pub items: Vec<Reply>,
    /// Their iovecs (header, payload, header, ...).
    pub iovs: Vec<libc::iovec>,
    /// First iovec not yet fully sent.
    pub pos: usize,
    /// The message header handed to the kernel.
    pub msg: libc::msghdr,
}

/// What a verified token opened.
pub struct Session {
    /// Index of the backend.
    pub device: usize,
    /// The verified claim.
    pub claim: Claim,
    /// The static request limits.
    pub limits: RequestLimits,
    /// The lent range, clipped to the device.
    pub range: Range,
    /// Fence generation last checked.
    pub fence_gen: u64,
    /// Overtaken by a newer epoch: every request fails with StaleEpoch.
    pub fenced: bool,
    /// Whether the control plane revoked its lease (every request then fails with Revoked).
    pub standing: crate::revoke::Standing,
    /// Usage not yet handed to the shared table.
    pub usage: crate::usage::Usage,
    /// The lease range's scheduler entry (`qos.rs`), none with `--no-qos`.
    pub qos: Option<std::sync::Arc<crate::qos::Entry>>,
    /// What this connection started since it last handed counts to the entry.
    pub qos_counts: crate::qos::Counts,
    /// Its requests since it last handed them to the reactor's per-lease `/metrics` counts
    /// (counted only with `--metrics`).
    pub stats: crate::metrics::DeviceStats,
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the hello and token.
    Handshake,
    /// Serving requests.
    Serving,
    /// Shut down; waiting for in-flight operations before the slot is freed.
    Closing,
}

/// A client connection.
pub struct Conn {
    /// The socket (TCP, or the same-host Unix socket).
    pub sock: Socket,
    /// Life phase.
    pub phase: Phase,
    /// Set after a successful handshake.
    pub session: Option<Session>,
    /// Receive staging buffer: its own mapping, so that its pages go back to the system when
    /// the connection closes (from the heap, a thousand closed connections' buffers stayed
    /// resident).
    pub rbuf: MmapMut,
    /// Start of unparsed bytes in `rbuf`.
    pub rstart: usize,
    /// End of received bytes in `rbuf`.
    pub rend: usize,
    /// Bytes the parser needs in `rbuf` before it can go on.
    pub need: usize,
    /// A recv SQE is outstanding.
    pub recv_armed: bool,
    /// The last frame was a large WRITE: receive just the next header, so that a following
    /// large write's payload lands straight in its arena slot rather than in `rbuf`.
    pub recv_exact: bool,
    /// A WRITE whose payload is being received into its slot.
    pub payload_req: Option<usize>,
    /// Requests parsed whose reply is not yet sent.
    pub inflight: u32,
    /// Requests in the reactor's table owned by this connection.
    pub live_reqs: u32,
    /// Replies waiting to be sent.
    pub sendq: Vec<Reply>,
    /// The sendmsg in flight.
    pub sending: Option<Box<SendState>>,
    /// Close once the send queue drains (after a fatal error reply).
    pub close_after_send: bool,
    /// The client shut its sending side down (a receive returned 0): what it sent is still
    /// served and answered, then the connection is closed.
    pub peer_closed: bool,
    /// Waiting for an arena slot.
    pub stalled: bool,
    /// Over its own budget: not read until what it holds comes back (`budget.rs`).
    pub parked: bool,
    /// Arena slots held by its requests and unsent replies, per size class.
    pub slots: [u32; NUM_CLASSES],
    /// Their bytes.
    pub slot_bytes: u64,
    /// Reply payload bytes queued or being sent.
    pub unsent: u64,
    /// When it was accepted (ms since the epoch), for the handshake timeout.
    pub accepted_ms: u64,
    /// Since when it has waited on its client for the rest of a frame, for the payload timeout.
    pub partial_since_ms: Option<u64>,
    /// When its send in flight last moved (started, or the client took some bytes), for the
    /// send timeout.
    pub send_moved_ms: u64,
    /// Queued for `pump`.
    pub dirty: bool,
    /// A session opened but not served yet: its hello reply waits until the writes admitted
    /// before it have completed (`barrier.rs`); nothing is parsed meanwhile.
    pub held: Option<Box<(Barrier, Reply)>>,
}

impl Conn {
    /// A fresh connection awaiting its hello, accepted at `now_ms`.
    pub fn new(sock: Socket, now_ms: u64) -> std::io::Result<Self> {
        Ok(Self {
            sock,
            phase: Phase::Handshake,
            session: None,
            rbuf: MmapMut::map_anon(RBUF_LEN)?,
            rstart: 0,
            rend: 0,
            need: 0,
            recv_armed: false,
            recv_exact: false,
            payload_req: None,
            inflight: 0,
            live_reqs: 0,
            sendq: Vec::new(),
            sending: None,
            close_after_send: false,
            peer_closed: false,
            stalled: false,
            parked: false,
            slots: [0; NUM_CLASSES],
            slot_bytes: 0,
            unsent: 0,
            accepted_ms: now_ms,
            partial_since_ms: None,
            send_moved_ms: now_ms,
            dirty: false,
            held: None,
        })
    }

    /// Unparsed received bytes.
    pub fn avail(&self) -> &[u8] {
        &self.rbuf[self.rstart..self.rend]
    }

    /// The request header at the start of the unparsed bytes, framed by the wire crate's rules
    /// (`BadFrame` when they are not one), left in place: a request that waits for a slot is
    /// parsed again later. While the header is incomplete, `None`, and `need` says so.
    pub fn peek_request(&mut self) -> Result<Option<RequestHeader>, Status> {
        let h = peek_header::<RequestHeader>(self.avail())?;
        if h.is_none() {
            self.need = REQUEST_HEADER_LEN;
        }
        Ok(h)
    }
}

/// The step a multi-step request is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Receiving a WRITE payload.
    Receiving,
    /// Reading or writing the data (READ, WRITE, SEARCH chunks).
    Data,
    /// Deallocating or zeroing a range with fallocate.
    Fallocate,
    /// A blocking device call on the reactor's helper thread (`offload.rs`); its result is final.
    Offloaded,
    /// Writing zeroes from the zero buffer (when fallocate cannot).
    ZeroWrite,
    /// fdatasync (FLUSH, or after a FUA zeroing).
    Sync,
    /// A SEARCH of a memory backend between two chunks: a no-op SQE is in flight, whose
    /// completion scans the next chunk, so that one SEARCH does not hold the reactor.
    MemoryChunk,
}

/// A request being served.
pub struct Req {
    /// Owning connection.
    pub conn: usize,
    /// The header.
    pub hdr: RequestHeader,
    /// The op (checked).
    pub op: Op,
    /// Its arena slot.
    pub buf: Option<BufId>,
    /// Bytes done so far (payload received, data transferred, or range covered).
    pub done: u64,
    /// The step.
    pub stage: Stage,
    /// SEARCH state.
    pub search: Option<Box<Searcher>>,
    /// A modifying op's number in the reactor's write lane, from admission to completion.
    pub write_seq: Option<WriteSeq>,
    /// The rebuild guard a modifying op counts in, from its start on the device to completion
    /// (`guard.rs`).
    pub guard: Option<std::sync::Arc<crate::guard::Guard>>,
    /// Whether the scheduler has given it its start time (`qos.rs`).
    pub paced: bool,
    /// When it was parsed, by the reactor loop's clock (us; `metrics.rs`).
    pub started_us: u64,
}

impl Req {
    /// The request's tag.
    pub fn tag(&self) -> Tag {
        self.hdr.tag
    }
}
