//! The client against a scripted fake node (a tokio listener speaking dasmesh-wire): replies out
//! of order, a reply for an unknown tag, an abrupt close, cancelled requests (waiting, queued and
//! half-written), queue-depth limits, every op's frame, `close`, and a session's flush.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dasmesh_client::{AlignedBuf, ConnectOptions, Connection, Error, NodeSession};
use dasmesh_wire::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn token() -> Token {
    dasmesh_testkit::fake_node_token()
}

/// What the fake node announces.
const DEVICE: u64 = 1 << 30;

/// Accepts `conns` connections, answers each hello with `status` (and `max_inflight`), and hands
/// each socket to its own copy of `script`.
async fn fake_node<F, Fut>(conns: usize, max_inflight: u32, status: Status, script: F) -> String
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let script = std::sync::Arc::new(script);
    tokio::spawn(async move {
        for _ in 0..conns {
            let (mut s, _) = l.accept().await.unwrap();
            let script = std::sync::Arc::clone(&script);
            tokio::spawn(async move {
                let mut hello = [0u8; HELLO_LEN];
                s.read_exact(&mut hello).await.unwrap();
                let h = Hello::decode(&hello).unwrap();
                let mut tok = vec![0u8; h.token_len as usize];
                s.read_exact(&mut tok).await.unwrap();
                let reply = HelloReply {
                    version: 1,
                    status: status.code(),
                    device_id: h.device_id,
                    block_size: 4096,
                    physical_block_size: 4096,
                    max_io_size: 1 << 20,
                    max_inflight,
                    device_size: DEVICE,
                    lent_offset: 0,
                    lent_length: DEVICE,
                    capabilities: Capabilities(Capabilities::ALL),
                    max_search_hits: 100,
                };
                s.write_all(&reply.encode()).await.unwrap();
                script(s).await;
            });
        }
    });
    addr
}

/// One connection, a node with room for 64 requests in flight.
async fn fake<F, Fut>(status: Status, script: F) -> String
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    fake_node(1, 64, status, script).await
}

/// Reads a request header through the wire crate's framer, reading no byte past it, and says
/// how many payload bytes follow; `None` once the client has gone. A header that does not
/// decode fails the test: the client sent a bad frame.
async fn read_header(s: &mut TcpStream) -> Option<(RequestHeader, usize)> {
    let mut f = Framer::<RequestHeader>::new();
    let mut b = [0u8; REQUEST_HEADER_LEN];
    s.read_exact(&mut b).await.ok()?;
    match f.next(&b) {
        Ok((_, Some(Event::Header(h)))) => Some((h, f.payload_remaining() as usize)),
        other => panic!("the client sent {b:?}: {other:?}"),
    }
}

/// Reads a request and its payload; `None` once the client has gone.
async fn try_read_frame(s: &mut TcpStream) -> Option<(RequestHeader, Vec<u8>)> {
    let (h, len) = read_header(s).await?;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    Some((h, payload))
}

/// Reads a request and its payload.
async fn read_frame(s: &mut TcpStream) -> (RequestHeader, Vec<u8>) {
    try_read_frame(s)
        .await
        .expect("the client closed the connection")
}

/// Answers requests in order with `handler`'s (status, reply flags, payload) until the client
/// goes away.
async fn serve<H>(mut s: TcpStream, mut handler: H)
where
    H: FnMut(&RequestHeader, &[u8]) -> (Status, u16, Vec<u8>),
{
    while let Some((h, payload)) = try_read_frame(&mut s).await {
        let (status, flags, data) = handler(&h, &payload);
        let r = ReplyHeader {
            status: status.code(),
            flags,
            tag: h.tag,
            payload_len: data.len() as u32,
        };
        if s.write_all(&r.encode()).await.is_err() || s.write_all(&data).await.is_err() {
            return;
        }
    }
}

/// Whether no byte arrives from the client within `ms` (peeked, so nothing is consumed).
async fn quiet(s: &TcpStream, ms: u64) -> bool {
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(ms), s.peek(&mut b))
        .await
        .is_err()
}

/// The block-sized data the fake returns for a READ at `offset`: every byte names the block.
fn block_data(offset: u64, len: u64) -> Vec<u8> {
    vec![(offset / 4096) as u8; len as usize]
}

async fn read_req(s: &mut TcpStream) -> RequestHeader {
    read_frame(s).await.0
}

async fn reply(s: &mut TcpStream, tag: Tag, status: Status, payload: &[u8]) {
    let h = ReplyHeader {
        status: status.code(),
        flags: 0,
        tag,
        payload_len: payload.len() as u32,
    };
    s.write_all(&h.encode()).await.unwrap();
    s.write_all(payload).await.unwrap();
}

async fn connect(addr: &str) -> Result<Connection, Error> {
    Connection::connect(addr, DeviceId(0), &token(), &ConnectOptions::default()).await
}

#[tokio::test]
async fn out_of_order_replies_reach_their_requests() {
    let addr = fake(Status::Ok, |mut s| async move {
        let a = read_req(&mut s).await;
        let b = read_req(&mut s).await;
        let c = read_req(&mut s).await;
        // Answer in reverse order, with distinct data and a refusal.
        reply(&mut s, c.tag, Status::OutOfRange, &[]).await;
        reply(&mut s, b.tag, Status::Ok, &[2u8; 4096]).await;
        reply(&mut s, a.tag, Status::Ok, &[1u8; 4096]).await;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let c = connect(&addr).await.unwrap();
    let (a, b, x) = tokio::join!(c.read(0, 4096), c.read(4096, 4096), c.read(8192, 4096));
    assert_eq!(a.unwrap(), vec![1u8; 4096]);
    assert_eq!(b.unwrap(), vec![2u8; 4096]);
    assert_eq!(x.unwrap_err().status(), Some(Status::OutOfRange));
}

#[tokio::test]
async fn unknown_tag_and_wrong_length_are_protocol_errors_that_fail_everyone() {
    let addr = fake(Status::Ok, |mut s| async move {
        let _a = read_req(&mut s).await;
        let _b = read_req(&mut s).await;
        reply(&mut s, Tag(999), Status::Ok, &[]).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let c = connect(&addr).await.unwrap();
    let (a, b) = tokio::join!(c.read(0, 4096), c.flush());
    assert!(matches!(a, Err(Error::Protocol(_))), "{a:?}");
    assert!(matches!(b, Err(Error::Protocol(_))), "{b:?}");
    assert!(
        c.read(0, 4096).await.is_err(),
        "a broken connection refuses new requests"
    );

    // The client also closes its side: the node sees end-of-stream, not an idle connection.
    let (eof_tx, eof_rx) = tokio::sync::mpsc::channel::<bool>(1);
    let addr = fake(Status::Ok, move |mut s| {
        let eof_tx = eof_tx.clone();
        async move {
            let a = read_req(&mut s).await;
            reply(&mut s, a.tag, Status::Ok, &[0u8; 100]).await; // READ of 4096 answered with 100 bytes
            let mut rest = Vec::new();
            let eof = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
            let _ = eof_tx.send(matches!(eof, Ok(Ok(0)))).await;
        }
    })
    .await;
    let c = connect(&addr).await.unwrap();
    assert!(matches!(c.read(0, 4096).await, Err(Error::Protocol(_))));
    let mut eof_rx = eof_rx;
    assert_eq!(
        eof_rx.recv().await,
        Some(true),
        "the client closes a connection whose node broke the protocol"
    );
    drop(c);
}

#[tokio::test]
async fn abrupt_close_fails_in_flight_requests_with_closed() {
    let addr = fake(Status::Ok, |mut s| async move {
        let _ = read_req(&mut s).await;
        drop(s);
    })
    .await;
    let c = connect(&addr).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), c.read(0, 4096))
        .await
        .expect("no hang");
    assert!(matches!(r, Err(Error::Closed)), "{r:?}");
}

#[tokio::test]
async fn refused_handshake_reports_the_status() {
    let addr = fake(Status::StaleEpoch, |_s| async move {}).await;
    let e = connect(&addr).await.unwrap_err();
    assert_eq!(e.status(), Some(Status::StaleEpoch));
    assert!(e.to_string().contains("StaleEpoch"), "{e}");
}

#[tokio::test]
async fn a_cancelled_request_does_not_break_the_connection() {
    let addr = fake(Status::Ok, |mut s| async move {
        let slow = read_req(&mut s).await;
        let fast = read_req(&mut s).await;
        reply(&mut s, fast.tag, Status::Ok, &[7u8; 4096]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The first request's caller gave up by now; its reply must be read and dropped.
        reply(&mut s, slow.tag, Status::Ok, &[9u8; 4096]).await;
        let next = read_req(&mut s).await;
        reply(&mut s, next.tag, Status::Ok, &[]).await;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let c = connect(&addr).await.unwrap();
    let c2 = c.clone();
    let slow = tokio::spawn(async move { c2.read(0, 4096).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(c.read(4096, 4096).await.unwrap(), vec![7u8; 4096]);
    slow.abort();
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.flush().await.unwrap();
}

#[tokio::test]
async fn connect_times_out_against_a_silent_peer() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let _keep = tokio::spawn(async move {
        let (_s, _) = l.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let opts = ConnectOptions {
        connect_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let e = Connection::connect(&addr, DeviceId(0), &token(), &opts)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout), "{e:?}");
}

#[test]
fn connections_are_cheap_shareable_handles() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<Connection>();
    fn sendable<T: Send + Sync>() {}
    sendable::<NodeSession>();
    sendable::<AlignedBuf>();
}

#[tokio::test]
async fn every_op_sends_the_right_frame_and_reads_its_reply() {
    let addr = fake(Status::Ok, |s| {
        serve(s, |h, payload| {
            let op = h.known_op();
            // A mismatch answers Internal, which the client reports as a refusal.
            let check = |ok: bool| if ok { Status::Ok } else { Status::Internal };
            match op {
                Some(Op::Read) => (Status::Ok, 0, block_data(h.offset, h.length)),
                Some(Op::Write) => {
                    let want = block_data(h.offset, h.length);
                    (check(h.flags == FLAG_FUA && payload == want), 0, vec![])
                }
                Some(Op::Search) => {
                    let body = SearchBody::decode(payload).unwrap();
                    let ok = body.pattern == b"needle" && body.max_hits == 3;
                    let hits: Vec<u8> = [h.offset + 5, h.offset + 4100, h.offset + 9000]
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect();
                    (
                        check(ok),
                        REPLY_FLAG_TRUNCATED,
                        if ok { hits } else { vec![] },
                    )
                }
                Some(Op::Discard) => (check(h.flags == 0 && h.length == 8192), 0, vec![]),
                Some(Op::WriteZeroes) => (check(h.flags == FLAG_FUA), 0, vec![]),
                Some(Op::Flush) => (check(h.offset == 0 && h.length == 0), 0, vec![]),
                None => (Status::UnknownOp, 0, vec![]),
            }
        })
    })
    .await;
    let c = connect(&addr).await.unwrap();
    assert_eq!(c.info().block_size, 4096);
    assert_eq!(c.info().lent_length, DEVICE);

    let buf = c.read_into(8192, AlignedBuf::new(8192)).await.unwrap();
    assert_eq!(buf.len(), 8192);
    assert_eq!(
        buf.as_ptr() as usize % 4096,
        0,
        "the caller's buffer comes back"
    );
    assert!(buf.iter().all(|b| *b == 2));
    assert_eq!(c.read(4096, 4096).await.unwrap(), block_data(4096, 4096));

    c.write(3 * 4096, &block_data(3 * 4096, 8192), true)
        .await
        .unwrap();
    let e = c
        .write(3 * 4096, &block_data(0, 4096), true)
        .await
        .unwrap_err();
    assert_eq!(
        e.status(),
        Some(Status::Internal),
        "the payload arrived intact"
    );

    let r = c.search(1 << 20, 1 << 20, b"needle", 3).await.unwrap();
    assert_eq!(
        r.hits,
        vec![(1 << 20) + 5, (1 << 20) + 4100, (1 << 20) + 9000]
    );
    assert!(r.truncated);
    assert!(c.search(0, 4096, &[], 3).await.is_err(), "empty pattern");
    assert!(
        c.search(0, 4096, &[b'x'; 65], 3).await.is_err(),
        "pattern too long"
    );

    c.discard(0, 8192).await.unwrap();
    c.write_zeroes(0, 4096, true).await.unwrap();
    c.flush().await.unwrap();
    c.close().await;
    assert!(matches!(c.flush().await, Err(Error::Closed)));
}

#[tokio::test]
async fn many_tasks_share_a_connection_and_each_gets_its_own_reply() {
    const N: u64 = 200;
    const BATCH: usize = 8;
    let addr = fake(Status::Ok, |mut s| async move {
        let mut answered = 0;
        while answered < N {
            let mut batch = Vec::new();
            for _ in 0..BATCH {
                batch.push(read_req(&mut s).await);
            }
            // Answer each batch backwards, so replies never come in request order.
            for h in batch.iter().rev() {
                reply(&mut s, h.tag, Status::Ok, &block_data(h.offset, h.length)).await;
            }
            answered += BATCH as u64;
        }
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let c = connect(&addr).await.unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..N {
        let c = c.clone();
        set.spawn(async move { (i, c.read(i * 4096, 4096).await) });
    }
    let mut seen = 0;
    while let Some(r) = set.join_next().await {
        let (i, data) = r.unwrap();
        assert_eq!(data.unwrap(), block_data(i * 4096, 4096), "request {i}");
        seen += 1;
    }
    assert_eq!(seen, N);
}

#[tokio::test]
async fn requests_in_flight_are_capped_by_the_node_and_the_queue_depth() {
    // The node allows 2 in flight; the client asked for 64: only 2 are sent until one is answered.
    let addr = fake_node(1, 2, Status::Ok, |mut s| async move {
        let a = read_req(&mut s).await;
        let b = read_req(&mut s).await;
        let third_waited = quiet(&s, 300).await;
        reply(&mut s, a.tag, Status::Ok, &[]).await;
        let c = read_req(&mut s).await;
        let status = if third_waited {
            Status::Ok
        } else {
            Status::Internal
        };
        reply(&mut s, b.tag, status, &[]).await;
        reply(&mut s, c.tag, status, &[]).await;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let c = connect(&addr).await.unwrap();
    let (a, b, x) = tokio::join!(c.flush(), c.flush(), c.flush());
    a.unwrap();
    b.unwrap();
    x.unwrap();
}

#[tokio::test]
async fn a_cancelled_request_keeps_its_slot_until_its_reply_is_read() {
    let addr = fake(Status::Ok, |mut s| async move {
        let first = read_req(&mut s).await;
        // The first caller gives up; with a queue depth of 1 the next request must still wait.
        let waited = quiet(&s, 300).await;
        reply(&mut s, first.tag, Status::Ok, &[5u8; 4096]).await;
        let next = read_req(&mut s).await;
        let status = if waited { Status::Ok } else { Status::Internal };
        reply(&mut s, next.tag, status, &[]).await;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let opts = ConnectOptions {
        queue_depth: 1,
        ..Default::default()
    };
    let c = Connection::connect(&addr, DeviceId(0), &token(), &opts)
        .await
        .unwrap();
    let c2 = c.clone();
    let first = tokio::spawn(async move { c2.read(0, 4096).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.abort();
    let _ = first.await;
    tokio::time::timeout(Duration::from_secs(10), c.flush())
        .await
        .expect("no hang")
        .unwrap();
}

#[tokio::test]
async fn a_request_cancelled_while_queued_is_never_sent_and_gives_its_slot_back() {
    const LEN: usize = 32 << 20;
    let addr = fake(Status::Ok, |mut s| async move {
        // A big write stalls the socket; a DISCARD queues behind it and is cancelled there.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (write, _) = read_frame(&mut s).await;
        reply(&mut s, write.tag, Status::Ok, &[]).await;
        // Next come two FLUSHes (answered only once both are here): no DISCARD, and both of
        // the queue's two slots are free again.
        let (x, _) = read_frame(&mut s).await;
        let (y, _) = read_frame(&mut s).await;
        let ok = [x, y].iter().all(|h| h.known_op() == Some(Op::Flush));
        let status = if ok { Status::Ok } else { Status::Internal };
        reply(&mut s, x.tag, status, &[]).await;
        reply(&mut s, y.tag, status, &[]).await;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let opts = ConnectOptions {
        queue_depth: 2,
        ..Default::default()
    };
    let c = Connection::connect(&addr, DeviceId(0), &token(), &opts)
        .await
        .unwrap();
    let data = vec![0u8; LEN];
    let (w, d) = tokio::join!(
        tokio::time::timeout(Duration::from_millis(200), c.write(0, &data, false)),
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tokio::time::timeout(Duration::from_millis(100), c.discard(0, 4096)).await
        }
    );
    assert!(w.is_err() && d.is_err(), "both cancelled: {w:?} {d:?}");
    let (x, y) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(c.flush(), c.flush())
    })
    .await
    .expect("no hang: both queue slots are free");
    x.unwrap();
    y.unwrap();
}

#[tokio::test]
async fn a_request_cancelled_halfway_through_its_payload_is_finished_in_the_background() {
    // Far more than the loopback socket buffers hold, so the write is cut off mid-payload.
    const LEN: usize = 32 << 20;
    let addr = fake(Status::Ok, |mut s| async move {
        let (write, len) = read_header(&mut s).await.unwrap();
        // Hold off so the client's write stalls and is cancelled, then take the whole payload.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        let intact = payload.iter().all(|x| *x == 0xAB);
        reply(&mut s, write.tag, Status::Ok, &[]).await;
        // The next frame must start right after the payload.
        let (flush, _) = read_frame(&mut s).await;
        let status = if intact && flush.known_op() == Some(Op::Flush) {
            Status::Ok
        } else {
            Status::Internal
        };
        reply(&mut s, flush.tag, status, &[]).await;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let c = connect(&addr).await.unwrap();
    let data = vec![0xABu8; LEN];
    let cut = tokio::time::timeout(Duration::from_millis(100), c.write(0, &data, false)).await;
    assert!(cut.is_err(), "the write should still be sending: {cut:?}");
    drop(data);
    tokio::time::timeout(Duration::from_secs(20), c.flush())
        .await
        .expect("no hang")
        .expect("the connection survives, and the payload arrived whole");
}

#[tokio::test]
async fn close_wakes_every_waiter_with_closed() {
    let (got_tx, mut got_rx) = tokio::sync::mpsc::channel::<()>(1);
    let addr = fake(Status::Ok, move |mut s| {
        let got_tx = got_tx.clone();
        async move {
            for _ in 0..3 {
                read_req(&mut s).await;
            }
            let _ = got_tx.send(()).await;
            // Never answers.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        }
    })
    .await;
    let c = connect(&addr).await.unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..3u64 {
        let c = c.clone();
        set.spawn(async move { c.read(i * 4096, 4096).await });
    }
    got_rx.recv().await.unwrap();
    c.close().await;
    while let Some(r) = tokio::time::timeout(Duration::from_secs(10), set.join_next())
        .await
        .expect("no hang")
    {
        let r = r.unwrap();
        assert!(matches!(r, Err(Error::Closed)), "{r:?}");
    }
    assert!(matches!(c.read(0, 4096).await, Err(Error::Closed)));
}

#[tokio::test]
async fn a_session_spreads_requests_and_flushes_every_connection() {
    let writes = Arc::new(AtomicUsize::new(0));
    let flushes = Arc::new(AtomicUsize::new(0));
    let conns_with_writes = Arc::new(AtomicUsize::new(0));
    let (w, f, cw) = (writes.clone(), flushes.clone(), conns_with_writes.clone());
    let addr = fake_node(3, 64, Status::Ok, move |s| {
        let (w, f, cw) = (w.clone(), f.clone(), cw.clone());
        let mut wrote_here = false;
        serve(s, move |h, _| {
            match h.known_op() {
                Some(Op::Write) => {
                    w.fetch_add(1, Ordering::SeqCst);
                    if !wrote_here {
                        wrote_here = true;
                        cw.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Some(Op::Flush) => {
                    f.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
            (Status::Ok, 0, vec![])
        })
    })
    .await;
    let s = NodeSession::connect(&addr, DeviceId(0), &token(), 3, &ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(s.info().max_io_size, 1 << 20);
    // Each thread keeps to one connection; threads are spread over them in the order they first
    // use a session. Twelve threads starting together take twelve consecutive places (unless
    // other tests' threads take places in between), so every connection gets writes.
    let s = Arc::new(s);
    let rt = tokio::runtime::Handle::current();
    let (s2, rt2) = (Arc::clone(&s), rt.clone());
    tokio::task::spawn_blocking(move || {
        std::thread::scope(|sc| {
            for i in 0..12u64 {
                let (s, rt) = (&s2, &rt2);
                sc.spawn(move || rt.block_on(s.write(i * 4096, &[1u8; 4096], false)).unwrap());
            }
        })
    })
    .await
    .unwrap();
    assert_eq!(writes.load(Ordering::SeqCst), 12);
    assert_eq!(
        conns_with_writes.load(Ordering::SeqCst),
        3,
        "threads spread over the connections"
    );
    s.flush().await.unwrap();
    assert_eq!(
        flushes.load(Ordering::SeqCst),
        3,
        "a session flush reaches every connection"
    );
    s.close().await;
    assert!(matches!(s.flush().await, Err(Error::Closed)));
}

#[tokio::test]
async fn a_full_socket_hands_the_queue_to_the_writer_task_and_no_frame_goes_twice() {
    // Writes of 60 KiB (just under the size that is written from the caller's buffer), 256 in
    // flight, to a node that first reads nothing for a while: the socket fills (15 MiB is more
    // than loopback buffers hold), the writer task takes over, and many batches later every
    // frame must have arrived exactly once, whole, with its own payload.
    const N: u64 = 500;
    const LEN: usize = 60 << 10;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Result<u64, String>>(1);
    let addr = fake_node(1, 256, Status::Ok, move |mut s| {
        let done_tx = done_tx.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut seen = std::collections::HashSet::new();
            let mut check = Ok(0);
            for _ in 0..N {
                let (h, payload) = read_frame(&mut s).await;
                let want = (h.offset / LEN as u64 % 251) as u8 + 1;
                if h.known_op() != Some(Op::Write) || payload.iter().any(|b| *b != want) {
                    check = Err(format!("frame at {} is not its write", h.offset));
                }
                if !seen.insert(h.tag) {
                    check = Err(format!("tag {} sent twice", h.tag));
                }
                reply(&mut s, h.tag, Status::Ok, &[]).await;
            }
            if !quiet(&s, 300).await {
                check = Err("bytes after the last frame (a batch sent twice?)".into());
            }
            let _ = done_tx.send(check.map(|_| seen.len() as u64)).await;
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        }
    })
    .await;
    let opts = ConnectOptions {
        queue_depth: 256,
        ..Default::default()
    };
    let c = Connection::connect(&addr, DeviceId(0), &token(), &opts)
        .await
        .unwrap();
    // Two rounds: the second starts after the writer task gave the socket back.
    for round in [0..400, 400..N] {
        let writes = round.map(|i| {
            let c = c.clone();
            async move {
                let data = vec![(i % 251) as u8 + 1; LEN];
                c.write(i * LEN as u64, &data, false).await
            }
        });
        let results = tokio::time::timeout(
            Duration::from_secs(30),
            futures_util::future::join_all(writes),
        )
        .await
        .expect("no hang");
        for r in results {
            r.unwrap();
        }
    }
    let seen = done_rx.recv().await.unwrap().unwrap();
    assert_eq!(seen, N);
}

#[tokio::test]
async fn a_request_with_no_reply_times_out_and_a_late_reply_frees_its_slot() {
    let addr = fake(Status::Ok, |mut s| async move {
        let read = read_req(&mut s).await;
        let search = read_req(&mut s).await;
        assert_eq!(read.known_op(), Some(Op::Read));
        assert_eq!(search.known_op(), Some(Op::Search));
        // Hung: nothing is answered while the client times out the READ and a FLUSH that
        // waits for a slot; then the READ's reply comes late.
        tokio::time::sleep(Duration::from_millis(900)).await;
        reply(&mut s, read.tag, Status::Ok, &[7u8; 4096]).await;
        let flush = read_req(&mut s).await;
        assert_eq!(flush.known_op(), Some(Op::Flush));
        reply(&mut s, flush.tag, Status::Ok, &[]).await;
        reply(&mut s, search.tag, Status::Ok, &[]).await;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let opts = ConnectOptions {
        queue_depth: 2,
        request_timeout: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    let c = Connection::connect(&addr, DeviceId(0), &token(), &opts)
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let c2 = c.clone();
    let read = tokio::spawn(async move { c2.read(0, 4096).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let c2 = c.clone();
    let search = tokio::spawn(async move { c2.search(0, 1 << 20, b"x", 4).await });

    let e = read.await.unwrap().unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, Error::Timeout), "{e:?}");
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(2),
        "timed out after {took:?}"
    );
    // Both slots are still taken (the READ's reply may yet come; the SEARCH is never timed):
    // a new request waits for a slot, and no longer than the timeout.
    let e = c.flush().await.unwrap_err();
    assert!(matches!(e, Error::Timeout), "{e:?}");
    assert!(!search.is_finished(), "a SEARCH is not timed out");

    // The late reply is read and dropped, its slot freed: the connection goes on.
    tokio::time::sleep(Duration::from_millis(900).saturating_sub(start.elapsed())).await;
    tokio::time::timeout(Duration::from_secs(10), c.flush())
        .await
        .expect("no hang")
        .unwrap();
    let r = search.await.unwrap().unwrap();
    assert!(r.hits.is_empty());
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn a_request_polled_once_inside_a_block_on_that_ends_still_goes_out() {
    // On a current-thread runtime, a request is polled once (it queues its frame and yields to
    // let others batch with it) inside a block_on whose own future then completes. A yield
    // whose wake-up tokio deferred to that block_on call was lost with it, and the request,
    // with its frame still queued, never went out.
    use futures_util::stream::{FuturesUnordered, StreamExt as _};
    use std::future::Future;
    use std::pin::Pin;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(fake(Status::Ok, |s| {
        serve(s, |h, _| (Status::Ok, 0, block_data(h.offset, h.length)))
    }));
    let c = rt.block_on(connect(&addr)).unwrap();
    type Read<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, Error>> + 'a>>;
    let mut reads: FuturesUnordered<Read<'_>> = FuturesUnordered::new();
    reads.push(Box::pin(c.read(4096, 4096)));
    rt.block_on(std::future::poll_fn(|cx| {
        assert!(reads.poll_next_unpin(cx).is_pending(), "no reply yet");
        std::task::Poll::Ready(())
    }));
    let got = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), reads.next()).await })
        .expect("the request went out and its reply came back");
    assert_eq!(got.unwrap().unwrap(), block_data(4096, 4096));
}
