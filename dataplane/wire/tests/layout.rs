//! The byte offsets documented in docs/protocol.md, checked against the encoders.

use dasmesh_wire::*;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn hello_layout() {
    let b = Hello {
        min_version: 0x0102,
        max_version: 0x0304,
        device_id: DeviceId(0x0506_0708),
        token_len: 152,
    }
    .encode();
    assert_eq!(b.len(), 32);
    assert_eq!(&b[0..8], b"DASMESH!");
    assert_eq!(
        (
            le16(&b, 8),
            le16(&b, 10),
            le32(&b, 12),
            le16(&b, 16),
            le16(&b, 18)
        ),
        (0x0102, 0x0304, 0x0506_0708, 152, 0)
    );
    assert!(b[20..32].iter().all(|x| *x == 0));
}

#[test]
fn hello_reply_layout() {
    let r = HelloReply {
        version: 1,
        status: 12,
        device_id: DeviceId(3),
        block_size: 4096,
        physical_block_size: 8192,
        max_io_size: 1 << 20,
        max_inflight: 256,
        device_size: 1 << 40,
        lent_offset: 1 << 30,
        lent_length: 1 << 31,
        capabilities: Capabilities(0x3f),
        max_search_hits: 999,
    };
    let b = r.encode();
    assert_eq!(b.len(), 64);
    assert_eq!(&b[0..8], b"DASMESH!");
    assert_eq!((le16(&b, 8), le16(&b, 10), le32(&b, 12)), (1, 12, 3));
    assert_eq!(
        (le32(&b, 16), le32(&b, 20), le32(&b, 24), le32(&b, 28)),
        (4096, 8192, 1 << 20, 256)
    );
    assert_eq!(
        (le64(&b, 32), le64(&b, 40), le64(&b, 48)),
        (1 << 40, 1 << 30, 1 << 31)
    );
    assert_eq!((le32(&b, 56), le32(&b, 60)), (0x3f, 999));
    assert_eq!(Capabilities::ALL, 1 | 2 | 4 | 8 | 16 | 32);
}

#[test]
fn request_reply_and_search_layout_match_the_worked_example() {
    let b = RequestHeader::new(Op::Read, 0, Tag(7), 8192, 4096).encode();
    let doc = "44 4d 52 51 01 00 00 00 07 00 00 00 00 00 00 00 00 20 00 00 00 00 00 00 00 10 00 00 00 00 00 00";
    assert_eq!(hex(&b), doc);
    let b = ReplyHeader {
        status: 0,
        flags: 0,
        tag: Tag(7),
        payload_len: 4096,
    }
    .encode();
    assert_eq!(
        hex(&b),
        "44 4d 52 50 00 00 00 00 07 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00"
    );
    let b = RequestHeader::new(Op::Search, 0, Tag(8), 0, 1 << 20).encode();
    assert_eq!(hex(&b), "44 4d 52 51 06 00 00 00 08 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 10 00 00 00 00 00");
    let body = SearchBody {
        max_hits: 10,
        pattern: b"abc".to_vec(),
    }
    .encode()
    .unwrap();
    assert_eq!(body.len(), 72);
    assert_eq!(hex(&body[..11]), "0a 00 00 00 03 00 00 00 61 62 63");
    assert!(body[11..].iter().all(|x| *x == 0));
    let w = RequestHeader::new(Op::WriteZeroes, FLAG_FUA, Tag(1), 0, 0).encode();
    assert_eq!((w[4], w[5]), (5, 1));
    let ops: Vec<u8> = Op::ALL.iter().map(|o| *o as u8).collect();
    assert_eq!(ops, vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn claim_and_token_layout() {
    let c = Claim {
        node_id: NodeId(0x11),
        volume_id: VolumeId(0x22),
        device_id: DeviceId(0x33),
        range_offset: 0x44,
        range_length: 0x55,
        rights: Rights::ReadWrite,
        epoch: Epoch(0x66),
        issued_at_ms: 0x77,
        expires_at_ms: 0x88,
        nonce: 0x99,
    };
    let b = c.encode();
    assert_eq!(b.len(), 88);
    assert_eq!(&b[0..4], b"DMTK");
    assert_eq!((b[4], b[5], le16(&b, 6)), (1, 2, 0));
    assert_eq!(
        (le64(&b, 8), le64(&b, 16), le32(&b, 24), le32(&b, 28)),
        (0x11, 0x22, 0x33, 0)
    );
    assert_eq!(
        (le64(&b, 32), le64(&b, 40), le64(&b, 48)),
        (0x44, 0x55, 0x66)
    );
    assert_eq!(
        (le64(&b, 56), le64(&b, 64), le64(&b, 72), le64(&b, 80)),
        (0x77, 0x88, 0x99, 0)
    );
    // The signature covers the documented context string and the claim bytes.
    let key = SigningKey::from_bytes(&[1u8; 32]);
    let t = c.sign(&key);
    assert_eq!(t.as_bytes().len(), 152);
    assert_eq!(&t.as_bytes()[..88], &b[..]);
    let mut msg = b"dasmesh-token-v1".to_vec();
    msg.extend_from_slice(&b);
    let sig = ed25519_dalek::Signature::from_bytes(t.as_bytes()[88..].try_into().unwrap());
    key.verifying_key().verify_strict(&msg, &sig).unwrap();
    assert!(t.to_text().starts_with("dmt1."));
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
