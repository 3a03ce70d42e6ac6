//! Replacing a mirror copy on another node, and the rebuild's phases as nodes and the writer
//! report them (`state::rebuild`).

use super::*;
use crate::state::rebuild::{Phase, Progress};

fn replace(
    s: &mut State,
    name: &str,
    copy: u32,
    node: Option<u64>,
    auto: bool,
) -> Result<VolumeRec, Error> {
    match apply(
        s,
        Command::ReplaceCopy {
            headroom_pct: 10,
            volume: name.into(),
            copy,
            node,
            auto,
        },
    )? {
        Outcome::Volume(v) => Ok(v),
        o => panic!("{o:?}"),
    }
}

fn beat(s: &mut State, node_id: u64, p: Vec<Progress>, now_ms: u64) {
    apply(
        s,
        Command::Heartbeat {
            node_id,
            usage: vec![],
            now_ms,
            rebuilds: p,
        },
    )
    .unwrap();
}

fn progress(e: &ExtentRec, guarded: bool, done: u64) -> Progress {
    Progress {
        device: e.piece.key.device,
        offset: e.piece.offset,
        length: e.piece.length,
        guarded,
        done,
        attempt: 0,
    }
}

fn copy_extent(v: &VolumeRec, copy: u32) -> ExtentRec {
    *v.extents.iter().find(|e| e.piece.copy == copy).unwrap()
}

#[test]
fn a_replaced_copy_moves_to_a_free_node_and_goes_through_its_phases() {
    let mut s = pool(3);
    let v = create(&mut s, "m", G, Layout::Mirror { copies: 2 }).unwrap();
    let old = copy_extent(&v, 1);
    let used: Vec<u64> = v.extents.iter().map(|e| e.piece.key.node).collect();
    let v = replace(&mut s, "m", 1, None, false).unwrap();
    let new = copy_extent(&v, 1);
    assert!(
        !used.contains(&new.piece.key.node),
        "on the node no copy used"
    );
    assert!(new.stale && new.epoch > old.epoch);
    assert_eq!(new.rebuild.unwrap().phase, Phase::Guard);
    assert_eq!(
        (new.piece.copy, new.piece.index, new.piece.length),
        (1, 0, old.piece.length)
    );
    // The old extent waits for its discard, with an epoch newer than any of its tokens.
    assert!(s
        .freed
        .iter()
        .any(|f| f.key == old.piece.key && f.offset == old.piece.offset && f.epoch == new.epoch));

    // A writer mounts: the node guards, then the writer joins, then the node copies.
    let l = mount(&mut s, "m", "h", true).unwrap();
    let node = new.piece.key.node;
    beat(&mut s, node, vec![progress(&new, true, 0)], 1);
    assert_eq!(
        copy_extent(&s.volumes["m"], 1).rebuild.unwrap().phase,
        Phase::Join
    );
    apply(
        &mut s,
        Command::Renew {
            lease_id: l.id,
            ttl_ms: 60_000,
            now_ms: 2,
            joined: vec![new.epoch + 1000],
        },
    )
    .unwrap();
    assert_eq!(
        copy_extent(&s.volumes["m"], 1).rebuild.unwrap().phase,
        Phase::Join,
        "another extent's epoch joins nothing"
    );
    apply(
        &mut s,
        Command::Renew {
            lease_id: l.id,
            ttl_ms: 60_000,
            now_ms: 2,
            joined: vec![new.epoch],
        },
    )
    .unwrap();
    assert_eq!(
        copy_extent(&s.volumes["m"], 1).rebuild.unwrap().phase,
        Phase::Copy
    );
    beat(&mut s, node, vec![progress(&new, true, G / 2)], 3);
    assert_eq!(copy_extent(&s.volumes["m"], 1).rebuild.unwrap().done, G / 2);
    // Progress never goes back on a node's word, and other nodes' reports are ignored.
    beat(&mut s, node, vec![progress(&new, true, G / 4)], 4);
    beat(&mut s, used[0], vec![progress(&new, true, G)], 4);
    assert_eq!(copy_extent(&s.volumes["m"], 1).rebuild.unwrap().done, G / 2);

    // A write fails on it: back to the guard phase, checkpoint back to what may be missing.
    apply(
        &mut s,
        Command::FailCopies {
            not_sent: false,
            lease_id: l.id,
            copies: vec![1],
            reason: "node died".into(),
            now_ms: 5,
            dirty: vec![(G / 8 + 4096, 4096)],
        },
    )
    .unwrap();
    let rb = copy_extent(&s.volumes["m"], 1).rebuild.unwrap();
    assert_eq!(
        (rb.phase, rb.done, rb.attempt),
        (Phase::Guard, G / 8 + 4096, 1)
    );
    // Writes not sent to it while it is in the guard phase only move the checkpoint back.
    apply(
        &mut s,
        Command::FailCopies {
            not_sent: true,
            lease_id: l.id,
            copies: vec![1],
            reason: "written while stale".into(),
            now_ms: 5,
            dirty: vec![(G / 8, 4096)],
        },
    )
    .unwrap();
    let rb = copy_extent(&s.volumes["m"], 1).rebuild.unwrap();
    assert_eq!((rb.phase, rb.done, rb.attempt), (Phase::Guard, G / 8, 1));
    // A host may not call it rebuilt.
    let e = apply(
        &mut s,
        Command::RebuiltCopies {
            lease_id: l.id,
            copies: vec![1],
            now_ms: 6,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("being rebuilt by node"), "{e}");

    // The writer leaves: guarded, it goes straight to copying; at the end it is healthy.
    apply(
        &mut s,
        Command::Unmount {
            lease_id: l.id,
            now_ms: 7,
        },
    )
    .unwrap();
    // A report from the attempt before counts for nothing: its tracking is outdated.
    beat(&mut s, node, vec![progress(&new, true, G / 8)], 8);
    assert_eq!(
        copy_extent(&s.volumes["m"], 1).rebuild.unwrap().phase,
        Phase::Guard
    );
    let fresh = Progress {
        attempt: 1,
        ..progress(&new, true, G / 8)
    };
    beat(&mut s, node, vec![fresh], 8);
    assert_eq!(
        copy_extent(&s.volumes["m"], 1).rebuild.unwrap().phase,
        Phase::Copy
    );
    // Progress of the attempt before does not count either.
    beat(&mut s, node, vec![progress(&new, true, G)], 8);
    assert!(copy_extent(&s.volumes["m"], 1).rebuild.is_some());
    beat(
        &mut s,
        node,
        vec![Progress {
            attempt: 1,
            ..progress(&new, true, G)
        }],
        9,
    );
    let e = copy_extent(&s.volumes["m"], 1);
    assert!(!e.stale && e.rebuild.is_none());
    assert!(s.volumes["m"].dirty.is_empty());
}

#[test]
fn replacement_refusals_say_why() {
    let mut s = pool(2);
    create(&mut s, "m", G, Layout::Mirror { copies: 2 }).unwrap();
    create(&mut s, "s", G, Layout::Single).unwrap();
    let e = replace(&mut s, "m", 1, None, false).unwrap_err();
    assert!(matches!(e, Error::Insufficient(_)), "{e}");
    assert!(
        e.to_string()
            .contains("no node outside the nodes of the copies (nodes 1, 2)"),
        "{e}"
    );
    // The policy's own attempt records the reason and changes nothing else.
    let before = s.volumes["m"].extents.clone();
    let v = replace(&mut s, "m", 1, None, true).unwrap();
    assert!(
        v.note
            .starts_with("copy 1 waits for a node to be rebuilt on"),
        "{}",
        v.note
    );
    assert_eq!(v.extents, before);
    assert!(replace(&mut s, "m", 2, None, false)
        .unwrap_err()
        .to_string()
        .contains("no copy 2"));
    assert!(replace(&mut s, "s", 0, None, false)
        .unwrap_err()
        .to_string()
        .contains("not a mirror"));
    let other = s.volumes["m"].extents[0].piece.key.node;
    let e = replace(&mut s, "m", 1, Some(other), false).unwrap_err();
    assert!(e.to_string().contains("holds another copy"), "{e}");
    assert!(matches!(
        replace(&mut s, "m", 1, Some(99), false),
        Err(Error::UnknownNode(99))
    ));

    // A node joins: the next attempt places it and clears the note.
    let mut s2 = pool(3);
    s2.volumes.insert("m".into(), s.volumes["m"].clone());
    let v = replace(&mut s2, "m", 1, None, true).unwrap();
    assert!(v.note.is_empty());
    assert!(copy_extent(&v, 1).rebuild.is_some());
}

#[test]
fn a_copy_whose_only_source_is_stale_cannot_be_replaced() {
    let mut s = pool(3);
    create(&mut s, "m", G, Layout::Mirror { copies: 2 }).unwrap();
    let l = mount(&mut s, "m", "h", true).unwrap();
    apply(
        &mut s,
        Command::FailCopies {
            not_sent: false,
            lease_id: l.id,
            copies: vec![0],
            reason: "x".into(),
            now_ms: 1,
            dirty: vec![],
        },
    )
    .unwrap();
    let e = replace(&mut s, "m", 1, None, false).unwrap_err();
    assert!(e.to_string().contains("no other copy is healthy"), "{e}");
    // The policy's attempt says so in the volume's note, once, and changes nothing else.
    let v = replace(&mut s, "m", 1, None, true).unwrap();
    assert!(v.note.contains("nothing to be rebuilt from"), "{}", v.note);
    assert!(v.extents.iter().all(|e| e.rebuild.is_none()));
    // The stale copy itself can be.
    replace(&mut s, "m", 0, None, false).unwrap();
}

#[test]
fn lost_copies_are_those_on_nodes_silent_past_the_policy() {
    let mut s = pool(3);
    let v = create(&mut s, "m", G, Layout::Mirror { copies: 2 }).unwrap();
    let n = v.extents[1].piece.key.node;
    apply(
        &mut s,
        Command::Tick {
            now_ms: 10_000,
            heartbeat_ms: 1000,
        },
    )
    .unwrap();
    for id in [1, 2, 3] {
        if id != n {
            beat(&mut s, id, vec![], 10_000);
        }
    }
    apply(
        &mut s,
        Command::Tick {
            now_ms: 10_001,
            heartbeat_ms: 1000,
        },
    )
    .unwrap();
    assert_eq!(s.nodes[&n].state, NodeState::Down);
    assert!(
        rebuild::lost_copies(&s, 60_000, 20_000).is_empty(),
        "not down for long enough"
    );
    let lost = rebuild::lost_copies(&s, 60_000, 70_001);
    assert_eq!(lost, vec![("m".to_string(), v.extents[1].piece.copy)]);
}
