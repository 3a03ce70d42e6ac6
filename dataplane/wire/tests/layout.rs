//! docs/protocol.md against the code: this test reads the page and checks every byte-offset table
//! (by encoding values chosen to be distinct and comparing the bytes at each documented offset),
//! the status, op and capability tables, every hex dump of the worked examples, and the token
//! test vector. A change on either side that the other does not follow fails here.

use std::collections::{BTreeMap, BTreeSet};

use dasmesh_wire::*;

type Table = Vec<Vec<String>>;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
    std::fs::read_to_string(path).expect("docs/protocol.md")
}

/// The page's markdown tables: rows of trimmed cells, the header row first, separators dropped.
fn tables(doc: &str) -> Vec<Table> {
    let mut out: Vec<Table> = Vec::new();
    let mut current: Table = Vec::new();
    for line in doc.lines().chain([""]) {
        let l = line.trim();
        if l.starts_with('|') {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            if !cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
            {
                current.push(cells);
            }
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

/// The one table whose header row starts with `header`.
fn table_headed(doc: &str, header: &[&str]) -> Table {
    let found: Vec<Table> = tables(doc)
        .into_iter()
        .filter(|t| t[0].len() >= header.len() && t[0][..header.len()] == *header)
        .collect();
    assert_eq!(found.len(), 1, "tables headed {header:?}");
    found.into_iter().next().unwrap()
}

/// The one offset/size/field table that lists `field`.
fn layout_table(doc: &str, field: &str) -> Table {
    let found: Vec<Table> = tables(doc)
        .into_iter()
        .filter(|t| t[0].len() >= 3 && t[0][..3] == ["offset", "size", "field"])
        .filter(|t| t.iter().any(|r| r[2] == field))
        .collect();
    assert_eq!(found.len(), 1, "layout tables with field {field}");
    found.into_iter().next().unwrap()
}

/// Checks that the table's numeric rows tile `encoded` exactly, each field holding the bytes
/// `expect` gives for it, and that every field of `fields` is documented.
fn check_layout(
    table: &Table,
    encoded: &[u8],
    fields: &[&str],
    mut expect: impl FnMut(&str) -> Vec<u8>,
) {
    let mut at = 0;
    let mut seen = BTreeSet::new();
    for row in &table[1..] {
        let (Ok(offset), Ok(size)) = (row[0].parse::<usize>(), row[1].parse::<usize>()) else {
            continue; // a variable-size part after the fixed frame (the hello's token)
        };
        let field = row[2].as_str();
        assert_eq!(
            offset, at,
            "{field}: documented offset leaves a gap or overlaps"
        );
        let want = expect(field);
        assert_eq!(want.len(), size, "{field}: documented size");
        assert_eq!(
            &encoded[offset..offset + size],
            &want[..],
            "{field} at {offset}"
        );
        at += size;
        seen.insert(field);
    }
    assert_eq!(
        at,
        encoded.len(),
        "the documented fields cover the whole frame"
    );
    assert_eq!(seen, fields.iter().copied().collect(), "documented fields");
}

fn zeroes(n: usize) -> Vec<u8> {
    vec![0; n]
}

#[test]
fn hello_layout() {
    let h = Hello {
        min_version: 0x0102,
        max_version: 0x0304,
        device_id: DeviceId(0x0506_0708),
        token_len: 0x090a,
        flags: 0,
    };
    let fields = [
        "magic",
        "min_version",
        "max_version",
        "device_id",
        "token_len",
        "flags",
        "reserved",
    ];
    check_layout(
        &layout_table(&doc(), "token_len"),
        &h.encode(),
        &fields,
        |f| match f {
            "magic" => b"DASMESH!".to_vec(),
            "min_version" => h.min_version.to_le_bytes().to_vec(),
            "max_version" => h.max_version.to_le_bytes().to_vec(),
            "device_id" => h.device_id.0.to_le_bytes().to_vec(),
            "token_len" => h.token_len.to_le_bytes().to_vec(),
            "flags" => zeroes(2),
            "reserved" => zeroes(12),
            _ => panic!("undocumented field {f}"),
        },
    );
    assert_eq!(HELLO_LEN, 32);
    assert_eq!(MAX_TOKEN_LEN, 1024);
    assert_eq!(HELLO_MAGIC, *b"DASMESH!");
}

#[test]
fn hello_reply_layout() {
    let r = HelloReply {
        version: 0x0102,
        status: 0x0304,
        device_id: DeviceId(0x0506_0708),
        block_size: 0x1112_1314,
        physical_block_size: 0x2122_2324,
        max_io_size: 0x3132_3334,
        max_inflight: 0x4142_4344,
        device_size: 0x5152_5354_5556_5758,
        lent_offset: 0x6162_6364_6566_6768,
        lent_length: 0x7172_7374_7576_7778,
        capabilities: Capabilities(0x8182_8384),
        max_search_hits: 0x9192_9394,
    };
    let fields = [
        "magic",
        "version",
        "status",
        "device_id",
        "block_size",
        "physical_block_size",
        "max_io_size",
        "max_inflight",
        "device_size",
        "lent_offset",
        "lent_length",
        "capabilities",
        "max_search_hits",
    ];
    let table = layout_table(&doc(), "max_search_hits");
    check_layout(&table, &r.encode(), &fields, |f| match f {
        "magic" => b"DASMESH!".to_vec(),
        "version" => r.version.to_le_bytes().to_vec(),
        "status" => r.status.to_le_bytes().to_vec(),
        "device_id" => r.device_id.0.to_le_bytes().to_vec(),
        "block_size" => r.block_size.to_le_bytes().to_vec(),
        "physical_block_size" => r.physical_block_size.to_le_bytes().to_vec(),
        "max_io_size" => r.max_io_size.to_le_bytes().to_vec(),
        "max_inflight" => r.max_inflight.to_le_bytes().to_vec(),
        "device_size" => r.device_size.to_le_bytes().to_vec(),
        "lent_offset" => r.lent_offset.to_le_bytes().to_vec(),
        "lent_length" => r.lent_length.to_le_bytes().to_vec(),
        "capabilities" => r.capabilities.0.to_le_bytes().to_vec(),
        "max_search_hits" => r.max_search_hits.to_le_bytes().to_vec(),
        _ => panic!("undocumented field {f}"),
    });
    assert_eq!(HELLO_REPLY_LEN, 64);
}

#[test]
fn request_layout() {
    let h = RequestHeader {
        op: 0x01,
        flags: 0x02,
        tag: Tag(0x1112_1314_1516_1718),
        offset: 0x2122_2324_2526_2728,
        length: 0x3132_3334_3536_3738,
    };
    let fields = [
        "magic", "op", "flags", "reserved", "tag", "offset", "length",
    ];
    check_layout(
        &layout_table(&doc(), "offset"),
        &h.encode(),
        &fields,
        |f| match f {
            "magic" => b"DMRQ".to_vec(),
            "op" => vec![h.op],
            "flags" => vec![h.flags],
            "reserved" => zeroes(2),
            "tag" => h.tag.0.to_le_bytes().to_vec(),
            "offset" => h.offset.to_le_bytes().to_vec(),
            "length" => h.length.to_le_bytes().to_vec(),
            _ => panic!("undocumented field {f}"),
        },
    );
    assert_eq!((REQUEST_HEADER_LEN, REQUEST_MAGIC), (32, *b"DMRQ"));
}

#[test]
fn reply_layout() {
    let h = ReplyHeader {
        status: 0x0102,
        flags: 0x0304,
        tag: Tag(0x1112_1314_1516_1718),
        payload_len: 0x2122_2324,
    };
    let fields = ["magic", "status", "flags", "tag", "payload_len", "reserved"];
    check_layout(
        &layout_table(&doc(), "payload_len"),
        &h.encode(),
        &fields,
        |f| match f {
            "magic" => b"DMRP".to_vec(),
            "status" => h.status.to_le_bytes().to_vec(),
            "flags" => h.flags.to_le_bytes().to_vec(),
            "tag" => h.tag.0.to_le_bytes().to_vec(),
            "payload_len" => h.payload_len.to_le_bytes().to_vec(),
            "reserved" => zeroes(4),
            _ => panic!("undocumented field {f}"),
        },
    );
    assert_eq!((REPLY_HEADER_LEN, REPLY_MAGIC), (24, *b"DMRP"));
    assert_eq!(REPLY_FLAG_TRUNCATED, 1);
}

#[test]
fn search_body_layout() {
    let b = SearchBody {
        max_hits: 0x0102_0304,
        pattern: b"needle".to_vec(),
    };
    let fields = ["max_hits", "pattern_len", "reserved", "pattern"];
    check_layout(
        &layout_table(&doc(), "pattern_len"),
        &b.encode().unwrap(),
        &fields,
        |f| match f {
            "max_hits" => b.max_hits.to_le_bytes().to_vec(),
            "pattern_len" => 6u16.to_le_bytes().to_vec(),
            "reserved" => zeroes(2),
            "pattern" => [&b"needle"[..], &[0; 58]].concat(),
            _ => panic!("undocumented field {f}"),
        },
    );
    assert_eq!((SEARCH_BODY_LEN, SEARCH_PATTERN_MAX), (72, 64));
}

#[test]
fn token_layout() {
    let c = Claim {
        terms: Terms {
            min_iops: 0x9192_9394,
            max_iops: 0xa1a2_a3a4,
            min_mib_s: 0x2526,
            max_mib_s: 0x2728,
            weight: 0x0a,
            read_cost: 0x0b,
        },
        node_id: NodeId(0x0102_0304_0506_0708),
        volume_id: VolumeId(0x1112_1314_1516_1718),
        device_id: DeviceId(0x2122_2324),
        range_offset: 0x3132_3334_3536_3738,
        range_length: 0x4142_4344_4546_4748,
        rights: Rights::ReadWrite,
        epoch: Epoch(0x5152_5354_5556_5758),
        issued_at_ms: 0x6162_6364_6566_6768,
        expires_at_ms: 0x7172_7374_7576_7778,
        nonce: 0x8182_8384_8586_8788,
    };
    let key = SigningKey::from_bytes(&[1u8; 32]);
    let t = c.sign(&key);
    let bytes = t.as_bytes();
    let fields = [
        "magic",
        "format",
        "rights",
        "weight",
        "read_cost",
        "node_id",
        "volume_id",
        "device_id",
        "min_mib_s",
        "max_mib_s",
        "range_offset",
        "range_length",
        "epoch",
        "issued_at_ms",
        "expires_at_ms",
        "nonce",
        "min_iops",
        "max_iops",
        "signature",
    ];
    let table = layout_table(&doc(), "expires_at_ms");
    check_layout(&table, bytes, &fields, |f| match f {
        "magic" => b"DMTK".to_vec(),
        "format" => vec![1],
        "rights" => vec![2],
        "weight" => vec![c.terms.weight],
        "read_cost" => vec![c.terms.read_cost],
        "min_mib_s" => c.terms.min_mib_s.to_le_bytes().to_vec(),
        "max_mib_s" => c.terms.max_mib_s.to_le_bytes().to_vec(),
        "min_iops" => c.terms.min_iops.to_le_bytes().to_vec(),
        "max_iops" => c.terms.max_iops.to_le_bytes().to_vec(),
        "node_id" => c.node_id.0.to_le_bytes().to_vec(),
        "volume_id" => c.volume_id.0.to_le_bytes().to_vec(),
        "device_id" => c.device_id.0.to_le_bytes().to_vec(),
        "range_offset" => c.range_offset.to_le_bytes().to_vec(),
        "range_length" => c.range_length.to_le_bytes().to_vec(),
        "epoch" => c.epoch.0.to_le_bytes().to_vec(),
        "issued_at_ms" => c.issued_at_ms.to_le_bytes().to_vec(),
        "expires_at_ms" => c.expires_at_ms.to_le_bytes().to_vec(),
        "nonce" => c.nonce.to_le_bytes().to_vec(),
        "signature" => bytes[CLAIM_LEN..].to_vec(),
        _ => panic!("undocumented field {f}"),
    });
    assert_eq!(
        (CLAIM_LEN, TOKEN_LEN, TOKEN_TEXT_PREFIX),
        (88, 152, "dmt1.")
    );
    // The signature is plain ed25519 over the documented context string and the claim bytes,
    // checked here with ed25519-dalek directly, as another implementation would.
    let mut msg = b"dasmesh-token-v1".to_vec();
    msg.extend_from_slice(&bytes[..CLAIM_LEN]);
    let sig = ed25519_dalek::Signature::from_bytes(bytes[CLAIM_LEN..].try_into().unwrap());
    key.verifying_key().verify_strict(&msg, &sig).unwrap();
    let mut c1 = c.encode();
    c1[5] = 1;
    assert_eq!(Claim::decode(&c1).unwrap().rights, Rights::ReadOnly);
}

#[test]
fn status_table() {
    let table = table_headed(&doc(), &["code", "name", "meaning"]);
    let documented: Vec<(u16, String)> = table[1..]
        .iter()
        .map(|r| (r[0].parse().unwrap(), r[1].clone()))
        .collect();
    let code: Vec<(u16, String)> = Status::ALL
        .iter()
        .map(|s| (s.code(), s.name().to_string()))
        .collect();
    assert_eq!(documented, code);
}

#[test]
fn op_table() {
    let table = table_headed(&doc(), &["op", "code", "payload after the header"]);
    let name = |op: Op| match op {
        Op::Read => "READ",
        Op::Write => "WRITE",
        Op::Flush => "FLUSH",
        Op::Discard => "DISCARD",
        Op::WriteZeroes => "WRITE_ZEROES",
        Op::Search => "SEARCH",
    };
    assert_eq!(table.len() - 1, Op::ALL.len());
    for (row, op) in table[1..].iter().zip(Op::ALL) {
        assert_eq!(
            (row[0].as_str(), row[1].parse::<u8>().unwrap()),
            (name(op), op as u8)
        );
        let payload = RequestHeader::new(op, 0, Tag(0), 0, 4096).payload_len();
        let want_payload = match payload {
            0 => "none",
            72 => "the 72-byte search body",
            _ => "`length` bytes",
        };
        assert_eq!(row[2], want_payload, "{row:?}");
        assert_eq!(row[3] == "FUA", op.allowed_flags() == FLAG_FUA, "{row:?}");
        assert_eq!(row[4] == "yes", op.is_write(), "{row:?}");
    }
}

#[test]
fn capability_table() {
    let table = table_headed(&doc(), &["bit", "value", "name"]);
    let consts = [
        ("FLUSH", Capabilities::FLUSH),
        ("FUA", Capabilities::FUA),
        ("DISCARD", Capabilities::DISCARD),
        ("WRITE_ZEROES", Capabilities::WRITE_ZEROES),
        ("SEARCH", Capabilities::SEARCH),
        ("DISCARD_ZEROES", Capabilities::DISCARD_ZEROES),
        ("HOLDER_PROOF", Capabilities::HOLDER_PROOF),
    ];
    assert_eq!(table.len() - 1, consts.len());
    let mut all = 0;
    for (row, (name, value)) in table[1..].iter().zip(consts) {
        let bit: u32 = row[0].parse().unwrap();
        assert_eq!(
            (row[2].as_str(), row[1].parse::<u32>().unwrap()),
            (name, value)
        );
        assert_eq!(1 << bit, value);
        all |= value;
    }
    assert_eq!(all, Capabilities::ALL);
}

/// The hex bytes of each code block in the section starting at `heading`.
fn hex_blocks(doc: &str, heading: &str) -> Vec<Vec<u8>> {
    let section = doc.split(heading).nth(1).expect("section");
    let section = section.split("\n## ").next().unwrap();
    let mut blocks = Vec::new();
    let mut inside = None::<Vec<u8>>;
    for line in section.lines() {
        if line.trim_start().starts_with("```") {
            match inside.take() {
                Some(b) => blocks.push(b),
                None => inside = Some(Vec::new()),
            }
            continue;
        }
        let Some(b) = inside.as_mut() else { continue };
        let words: Vec<&str> = line.split_whitespace().collect();
        let is_hex = |w: &&str| w.len() == 2 && w.chars().all(|c| c.is_ascii_hexdigit());
        // Lines of words under the bytes annotate them; only all-hex lines are data.
        if !words.is_empty() && words.iter().all(is_hex) {
            b.extend(words.iter().map(|w| u8::from_str_radix(w, 16).unwrap()));
        }
    }
    blocks
}

#[test]
fn worked_examples_are_the_real_bytes() {
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        device_id: DeviceId(1),
        token_len: TOKEN_LEN as u16,
        flags: 0,
    };
    let accept = HelloReply {
        version: 1,
        status: Status::Ok.code(),
        device_id: DeviceId(1),
        block_size: 4096,
        physical_block_size: 4096,
        max_io_size: 1 << 20,
        max_inflight: 64,
        device_size: 4 << 30,
        lent_offset: 1 << 30,
        lent_length: 1 << 30,
        capabilities: Capabilities(Capabilities::ALL),
        max_search_hits: 1024,
    };
    let search_body = SearchBody {
        max_hits: 10,
        pattern: b"abc".to_vec(),
    };
    let search_reply = ReplyHeader {
        status: 0,
        flags: 0,
        tag: Tag(8),
        payload_len: 16,
    };
    let want: Vec<Vec<u8>> = vec![
        hello.encode().to_vec(),
        accept.encode().to_vec(),
        HelloReply::refuse(1, Status::Expired).encode().to_vec(),
        RequestHeader::new(Op::Read, 0, Tag(7), 8192, 4096)
            .encode()
            .to_vec(),
        ReplyHeader {
            status: 0,
            flags: 0,
            tag: Tag(7),
            payload_len: 4096,
        }
        .encode()
        .to_vec(),
        ReplyHeader::status(Tag(9), Status::Misaligned)
            .encode()
            .to_vec(),
        [
            &RequestHeader::new(Op::Search, 0, Tag(8), 0, 1 << 20).encode()[..],
            &search_body.encode().unwrap(),
        ]
        .concat(),
        [
            &search_reply.encode()[..],
            &100u64.to_le_bytes(),
            &5000u64.to_le_bytes(),
        ]
        .concat(),
    ];
    let got = hex_blocks(&doc(), "## Worked examples");
    assert_eq!(got.len(), want.len(), "number of hex dumps");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "hex dump {i}");
    }
    // The misaligned READ described there is refused as the dump says.
    let limits = RequestLimits {
        block_size: accept.block_size,
        max_io_size: accept.max_io_size,
        range_offset: 0,
        range_length: accept.device_size,
        writable: true,
    };
    let h = RequestHeader::new(Op::Read, 0, Tag(9), 100, 4096);
    assert_eq!(check_request(&h, &limits), Err(Status::Misaligned));
}

#[test]
fn token_test_vector() {
    let doc = doc();
    let section = doc.split("## Token test vector").nth(1).expect("section");
    let table = table_headed(section, &["field", "value"]);
    let v: BTreeMap<&str, u64> = table[1..]
        .iter()
        .map(|r| (r[0].as_str(), r[1].parse().unwrap()))
        .collect();
    let claim = Claim {
        terms: Default::default(),
        node_id: NodeId(v["node_id"]),
        volume_id: VolumeId(v["volume_id"]),
        device_id: DeviceId(v["device_id"] as u32),
        range_offset: v["range_offset"],
        range_length: v["range_length"],
        rights: if v["rights"] == 2 {
            Rights::ReadWrite
        } else {
            Rights::ReadOnly
        },
        epoch: Epoch(v["epoch"]),
        issued_at_ms: v["issued_at_ms"],
        expires_at_ms: v["expires_at_ms"],
        nonce: v["nonce"],
    };
    assert_eq!(v.len(), 10);
    let line = |name: &str| -> String {
        section
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} line"))
            .trim()
            .to_string()
    };
    let seed: Vec<u8> = (0..32).collect();
    let sk = signing_key_from_text(&line("signing.key")).unwrap();
    assert_eq!(sk.to_bytes().to_vec(), seed);
    let public = key_to_text(sk.verifying_key().as_bytes());
    let token = claim.sign(&sk);
    assert_eq!(
        (line("public.key"), line("token")),
        (public.clone(), token.to_text()),
        "the test vector"
    );
    let vk = verifying_key_from_text(&public).unwrap();
    let parsed = Token::from_text(&line("token")).unwrap();
    assert_eq!(
        parsed.verify(&vk, claim.issued_at_ms, NodeId(3), DeviceId(1)),
        Ok(claim)
    );
}
