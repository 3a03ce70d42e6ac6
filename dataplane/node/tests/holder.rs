//! Tokens bound to their holder, against the real node: a bound token opens a connection only
//! with a fresh proof made with the holder's key; a stolen token, a replayed proof and a bearer
//! token on a node that wants bound ones are refused with `NotHolder` before anything changes.

mod common;

use std::io::{Read as _, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{req, Node, Raw};
use dasmesh_wire::{
    DeviceId, Hello, HelloReply, NodeId, Op, Proof, Rights, SigningKey, Status, Token,
    HELLO_REPLY_LEN, PROOF_LEN,
};

const MIB: u64 = 1 << 20;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A hello with `token` and, if given, `proof` (the PROOF flag set).
fn hello(addr: &str, token: &Token, proof: Option<[u8; PROOF_LEN]>) -> (Raw, HelloReply) {
    let mut raw = Raw::connect(addr);
    let h = Hello {
        min_version: 1,
        max_version: 1,
        device_id: DeviceId(0),
        token_len: token.as_bytes().len() as u16,
        flags: if proof.is_some() { Hello::PROOF } else { 0 },
    };
    let mut msg = h.encode().to_vec();
    msg.extend_from_slice(token.as_bytes());
    if let Some(p) = proof {
        msg.extend_from_slice(&p);
    }
    raw.s.write_all(&msg).unwrap();
    let mut b = [0u8; HELLO_REPLY_LEN];
    raw.s.read_exact(&mut b).unwrap();
    (raw, HelloReply::decode(&b).unwrap())
}

fn bound(node: &Node, holder: &SigningKey, epoch: u64) -> Token {
    node.token(0, 0, 4 * MIB, Rights::ReadWrite, epoch)
        .claim_unverified()
        .unwrap()
        .sign_bound(&node.key, &holder.verifying_key())
}

fn proof(t: &Token, key: &SigningKey, clock_ms: u64) -> [u8; PROOF_LEN] {
    Proof::make(t, key, NodeId(0), DeviceId(0), clock_ms, rand::random()).encode()
}

#[test]
fn a_bound_token_opens_only_for_its_holder() {
    let node = Node::start(&["memory:4M"], &[]);
    let holder = SigningKey::from_bytes(&rand::random());
    let thief = SigningKey::from_bytes(&rand::random());
    let t = bound(&node, &holder, 5);

    // The holder, with a fresh proof: served.
    let first = proof(&t, &holder, now_ms());
    let (mut raw, r) = hello(&node.addr, &t, Some(first));
    assert_eq!(r.status_enum(), Status::Ok);
    assert!(r.capabilities.has(dasmesh_wire::Capabilities::HOLDER_PROOF));
    raw.send(&req(Op::Write, 1, 0, 4096), &[7u8; 4096]);
    assert_eq!(raw.recv().0.status_enum(), Status::Ok);

    // The same token copied elsewhere: without a proof, with the thief's own key, or with the
    // holder's proof seen on the wire and sent again.
    let refusals = [
        ("no proof", None),
        ("the thief's key", Some(proof(&t, &thief, now_ms()))),
        ("a replayed proof", Some(first)),
        ("a stale clock", Some(proof(&t, &holder, now_ms() - 40_000))),
    ];
    for (what, p) in refusals {
        let (mut raw, r) = hello(&node.addr, &t, p);
        assert_eq!(
            (r.status_enum(), r.version),
            (Status::NotHolder, 1),
            "{what}"
        );
        assert!(raw.is_closed(), "{what}");
    }
    // A thief's token with a newer epoch did not fence the holder: the holder's connection
    // still writes.
    let newer = bound(&node, &holder, 6);
    let (_, r) = hello(&node.addr, &newer, Some(proof(&newer, &thief, now_ms())));
    assert_eq!(r.status_enum(), Status::NotHolder);
    raw.send(&req(Op::Write, 2, 4096, 4096), &[8u8; 4096]);
    assert_eq!(
        raw.recv().0.status_enum(),
        Status::Ok,
        "not fenced by a refused hello"
    );

    // A second connection of the holder, with a new proof: served.
    let (_, r) = hello(&node.addr, &t, Some(proof(&t, &holder, now_ms())));
    assert_eq!(r.status_enum(), Status::Ok);
    // A proof sent with a bearer token proves nothing and is refused.
    let bearer = node.token(0, 0, 4 * MIB, Rights::ReadWrite, 5);
    let (_, r) = hello(&node.addr, &bearer, Some(proof(&t, &holder, now_ms())));
    assert_eq!(r.status_enum(), Status::NotHolder);
    // Bearer tokens still open a node that was not told to refuse them.
    let (_, r) = hello(&node.addr, &bearer, None);
    assert_eq!(r.status_enum(), Status::Ok);
}

#[test]
fn a_node_that_requires_holders_refuses_bearer_tokens() {
    let node = Node::start(&["memory:4M"], &["--require-holder"]);
    let bearer = node.token(0, 0, 4 * MIB, Rights::ReadWrite, 1);
    let (mut raw, r) = hello(&node.addr, &bearer, None);
    assert_eq!(r.status_enum(), Status::NotHolder);
    assert!(raw.is_closed());
    let holder = SigningKey::from_bytes(&rand::random());
    let t = bound(&node, &holder, 1);
    let (_, r) = hello(&node.addr, &t, Some(proof(&t, &holder, now_ms())));
    assert_eq!(r.status_enum(), Status::Ok);
}
