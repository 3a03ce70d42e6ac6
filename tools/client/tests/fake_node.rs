//! The client against a scripted fake node (a tokio listener speaking dasmesh-wire): replies out
//! of order, a reply for an unknown tag, an abrupt close, a cancelled request.

use std::time::Duration;

use dasmesh_client::{ConnectOptions, Connection, Error};
use dasmesh_wire::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn token() -> Token {
    Claim {
        node_id: NodeId(0),
        volume_id: VolumeId(0),
        device_id: DeviceId(0),
        range_offset: 0,
        range_length: 1 << 20,
        rights: Rights::ReadWrite,
        epoch: Epoch(1),
        issued_at_ms: 0,
        expires_at_ms: u64::MAX,
        nonce: 0,
    }
    .sign(&SigningKey::from_bytes(&[1; 32]))
}

/// Accepts one connection, answers the hello with `status`, and hands the socket to `script`.
async fn fake<F, Fut>(status: Status, script: F) -> String
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
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
            max_inflight: 64,
            device_size: 1 << 20,
            lent_offset: 0,
            lent_length: 1 << 20,
            capabilities: Capabilities(Capabilities::ALL),
            max_search_hits: 100,
        };
        s.write_all(&reply.encode()).await.unwrap();
        script(s).await;
    });
    addr
}

async fn read_req(s: &mut TcpStream) -> RequestHeader {
    let mut b = [0u8; REQUEST_HEADER_LEN];
    s.read_exact(&mut b).await.unwrap();
    let h = RequestHeader::decode(&b).unwrap();
    let mut payload = vec![0u8; h.payload_len() as usize];
    s.read_exact(&mut payload).await.unwrap();
    h
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

    let addr = fake(Status::Ok, |mut s| async move {
        let a = read_req(&mut s).await;
        reply(&mut s, a.tag, Status::Ok, &[0u8; 100]).await; // READ of 4096 answered with 100 bytes
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let c = connect(&addr).await.unwrap();
    assert!(matches!(c.read(0, 4096).await, Err(Error::Protocol(_))));
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
