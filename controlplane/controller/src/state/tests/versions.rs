//! Versioned changes (issue 22, item 3): a resize, delete or copy replacement guarded by the
//! version its caller saw is refused, with nothing changed, once the volume has changed.

use super::*;

fn resize(name: &str, size: u64) -> Command {
    Command::ResizeVolume {
        name: name.into(),
        size,
        headroom_pct: 10,
    }
}

fn guarded(name: &str, version: u64, then: Command) -> Command {
    Command::IfVersion {
        volume: name.into(),
        version,
        then: Box::new(then),
    }
}

#[test]
fn a_change_from_a_stale_view_is_refused_and_changes_nothing() {
    let mut s = pool(2);
    let v = create(&mut s, "v", G, Layout::Single).unwrap();
    let seen = version(&v);
    assert!(seen > 0 && seen < 1 << 53, "{seen}");
    // The same record, the same version: it is a function of the record alone.
    assert_eq!(version(&s.volumes["v"]), seen);
    // One operator grows it from the view they had: applied.
    let grown = match apply(&mut s, guarded("v", seen, resize("v", 2 * G))).unwrap() {
        Outcome::Volume(v) => v,
        o => panic!("{o:?}"),
    };
    assert_eq!(grown.size, 2 * G);
    let now = version(&grown);
    assert_ne!(now, seen);
    // A second one, from the same (now stale) view: refused, whatever the change.
    let before = s.clone();
    for then in [
        resize("v", 3 * G),
        Command::DeleteVolume { name: "v".into() },
    ] {
        let e = apply(&mut s, guarded("v", seen, then)).unwrap_err();
        assert_eq!(
            e,
            Error::Stale {
                volume: "v".into(),
                seen,
                now
            }
        );
        assert!(
            e.to_string().contains("has changed since it was read"),
            "{e}"
        );
        assert_eq!(s, before);
    }
    // A lease raises the epoch: that is a change too.
    mount(&mut s, "v", "h", true).unwrap();
    assert_ne!(version(&s.volumes["v"]), now);
    // Unguarded commands are not checked (the API's expect_version 0).
    apply(&mut s, resize("v", 3 * G)).unwrap();
    assert_eq!(s.volumes["v"].size, 3 * G);
}

#[test]
fn the_guard_names_the_volume_it_changes() {
    let mut s = pool(2);
    let a = create(&mut s, "a", G, Layout::Single).unwrap();
    create(&mut s, "b", G, Layout::Single).unwrap();
    let before = s.clone();
    let e = apply(&mut s, guarded("a", version(&a), resize("b", 2 * G))).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    // Only changes to one volume are guarded.
    let e = apply(
        &mut s,
        guarded("a", version(&a), Command::PurgeVolume { name: "a".into() }),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    assert!(e.to_string().len() < 300, "{e}");
    // An unknown volume is unknown, whatever version is given.
    let e = apply(&mut s, guarded("c", 1, resize("c", G))).unwrap_err();
    assert_eq!(e, Error::UnknownVolume("c".into()));
    assert_eq!(s, before);
    // A current version lets a delete through.
    let b = version(&s.volumes["b"]);
    let delete = Command::DeleteVolume { name: "b".into() };
    apply(&mut s, guarded("b", b, delete)).unwrap();
    assert!(s.volumes["b"].deleting);
}
