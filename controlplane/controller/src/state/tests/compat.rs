//! States written by earlier builds still load: the store keeps the state as JSON, so a type
//! moved or renamed must keep its serde form.

use super::*;

/// A pool of two nodes with a volume of every layout, as the controller wrote it before the
/// layout type moved to `dasmesh-api`.
const STATE_V0: &str = include_str!("state_v0.json");

#[test]
fn a_state_written_before_the_shared_layout_still_loads() {
    let old: State = serde_json::from_str(STATE_V0).expect("the old state loads");
    let mut now = pool(2);
    create(&mut now, "s", G, Layout::Single).unwrap();
    create(&mut now, "c", G, Layout::Concat).unwrap();
    let stripe = Layout::Stripe {
        width: 2,
        unit: 64 << 10,
    };
    create(&mut now, "st", G, stripe).unwrap();
    create(&mut now, "m", G, Layout::Mirror { copies: 2 }).unwrap();
    assert_eq!(old, now);
    assert_eq!(old.volumes["st"].layout, stripe);
    // And it is still written the same way.
    let again: serde_json::Value = serde_json::to_value(&now).unwrap();
    let v0: serde_json::Value = serde_json::from_str(STATE_V0).unwrap();
    assert_eq!(again, v0);
}
