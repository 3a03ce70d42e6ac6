//! The token-signing key ring: the key tokens are signed with, and the earlier keys nodes still
//! accept, so a key can be rotated without refusing a token that is already out.
//!
//! A [`KeyRing`] lives with the shared state (etcd's `<prefix>signing-key`, or
//! `--data-dir/signing-ring.json` alone), so every controller that becomes active signs with
//! the same key and hands nodes the same list. Its text is JSON; a plain key's text (what
//! `signing.key` and etcd held before rings) reads as a ring of that one key.
//!
//! A rotation ([`KeyRing::rotate`]) makes a fresh key `current` but does not sign with it at
//! once: nodes learn keys from heartbeat answers, so the controller keeps signing with the key it
//! signed with until `from_ms`, [`switch_delay_ms`] later (three heartbeat intervals: every node
//! that is up has heard of the new key by then). The key it signed with goes to `older`, accepted
//! until `from_ms` plus [`KEEP_MS`] (the longest lease: a token signed just before the switch
//! expires by then). A key made `current` and rotated away before its switch signed nothing and
//! is dropped; so is an older key past its time, and all but the newest [`MAX_OLDER`].
//!
//! Everything here is pure (times come in as arguments), so the tests drive it directly.

use dasmesh_wire::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// How long a key that tokens were signed with stays accepted after the switch: the longest
/// lease a mount may ask for, so every token it signed expires first.
pub const KEEP_MS: u64 = crate::state::validate::MAX_TTL_MS;

/// Older keys kept at most: each rotation adds one, and nodes try every accepted key in turn.
pub const MAX_OLDER: usize = 4;

/// How long after a rotation tokens switch to the new key: three heartbeat intervals, by which
/// time every node that is up has had the new key in a heartbeat answer.
pub fn switch_delay_ms(heartbeat_ms: u64) -> u64 {
    heartbeat_ms.saturating_mul(3)
}

/// The ring as stored (JSON): key seeds as text (64 hex digits), times in ms since the epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRing {
    /// The newest key's seed.
    pub current: String,
    /// Tokens are signed with `current` from this time on; before it, with `older[0]`.
    pub from_ms: u64,
    /// Earlier keys, newest first, each accepted until its `until_ms`.
    #[serde(default)]
    pub older: Vec<Older>,
}

/// An earlier key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Older {
    /// Its seed.
    pub key: String,
    /// Nodes accept it until then (ms since the epoch).
    pub until_ms: u64,
}

/// A ring that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Neither a ring's JSON nor a key's text.
    #[error("signing key ring: not a key (64 hex digits) nor a ring (JSON): {0}")]
    Unreadable(String),
    /// A key in the ring is not 64 hex digits.
    #[error("signing key ring: {which} is not a key (64 hex digits)")]
    BadKey {
        /// Which key: `current` or `older[i]`.
        which: String,
    },
}

impl KeyRing {
    /// A ring of one key, signing from the start.
    pub fn single(key: &SigningKey) -> KeyRing {
        KeyRing {
            current: dasmesh_wire::key_to_text(&key.to_bytes()),
            from_ms: 0,
            older: Vec::new(),
        }
    }

    /// Whether tokens are signed with `current` at `now_ms` (else with `older[0]`).
    pub fn switched(&self, now_ms: u64) -> bool {
        now_ms >= self.from_ms || self.older.is_empty()
    }

    /// The ring after a rotation at `now_ms` to the key `fresh` (a seed's text): `fresh` is
    /// current from `now_ms + switch_delay_ms`; the key signing at `now_ms` is accepted until
    /// `keep_ms` after that; older keys past their time go, and all but the newest
    /// [`MAX_OLDER`] (see the module's notes).
    pub fn rotate(&self, fresh: &str, now_ms: u64, switch_delay_ms: u64, keep_ms: u64) -> KeyRing {
        let from_ms = now_ms.saturating_add(switch_delay_ms);
        let signing = if self.switched(now_ms) {
            &self.current
        } else {
            &self.older[0].key
        };
        let mut older = vec![Older {
            key: signing.clone(),
            until_ms: from_ms.saturating_add(keep_ms),
        }];
        older.extend(
            self.older
                .iter()
                .filter(|o| o.until_ms > now_ms && o.key != *signing)
                .cloned(),
        );
        older.truncate(MAX_OLDER);
        KeyRing {
            current: fresh.to_string(),
            from_ms,
            older,
        }
    }

    /// The stored form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a ring of strings and numbers serializes")
    }
}

/// A ring with its keys parsed: what the controller signs with and hands to nodes.
#[derive(Clone, Debug)]
pub struct Keys {
    ring: KeyRing,
    current: SigningKey,
    /// Parallel to `ring.older`.
    older: Vec<SigningKey>,
}

impl Keys {
    /// Parses every key of `ring`.
    pub fn new(ring: KeyRing) -> Result<Keys, KeyError> {
        let key = |text: &str, which: String| {
            dasmesh_wire::signing_key_from_text(text).map_err(|_| KeyError::BadKey { which })
        };
        let current = key(&ring.current, "current".into())?;
        let older = ring
            .older
            .iter()
            .enumerate()
            .map(|(i, o)| key(&o.key, format!("older[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Keys {
            ring,
            current,
            older,
        })
    }

    /// Reads a stored ring: its JSON, or a plain key's text (a ring of that one key).
    pub fn parse(text: &str) -> Result<Keys, KeyError> {
        let t = text.trim();
        if let Ok(k) = dasmesh_wire::signing_key_from_text(t) {
            return Ok(Keys::single(k));
        }
        let ring: KeyRing =
            serde_json::from_str(t).map_err(|e| KeyError::Unreadable(e.to_string()))?;
        Keys::new(ring)
    }

    /// A ring of one key.
    pub fn single(key: SigningKey) -> Keys {
        Keys {
            ring: KeyRing::single(&key),
            current: key,
            older: Vec::new(),
        }
    }

    /// The ring, as stored.
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// The key tokens are signed with at `now_ms`.
    pub fn signing(&self, now_ms: u64) -> &SigningKey {
        if self.ring.switched(now_ms) {
            &self.current
        } else {
            &self.older[0]
        }
    }

    /// Every key a token may be signed with at `now_ms`, which nodes accept: the current key
    /// first, then the older ones still within their time.
    pub fn accepted(&self, now_ms: u64) -> Vec<VerifyingKey> {
        std::iter::once(self.current.verifying_key())
            .chain(
                self.ring
                    .older
                    .iter()
                    .zip(&self.older)
                    .filter(|(o, _)| o.until_ms > now_ms)
                    .map(|(_, k)| k.verifying_key()),
            )
            .collect()
    }

    /// The ring after a rotation to `fresh` (see [`KeyRing::rotate`]).
    pub fn rotate(
        &self,
        fresh: &SigningKey,
        now_ms: u64,
        switch_delay_ms: u64,
        keep_ms: u64,
    ) -> Keys {
        let fresh_text = dasmesh_wire::key_to_text(&fresh.to_bytes());
        let ring = self
            .ring
            .rotate(&fresh_text, now_ms, switch_delay_ms, keep_ms);
        Keys::new(ring).expect("a rotation keeps only keys that parsed")
    }
}

impl From<SigningKey> for Keys {
    fn from(k: SigningKey) -> Keys {
        Keys::single(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn k(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn pubs(v: &[SigningKey]) -> Vec<VerifyingKey> {
        v.iter().map(|k| k.verifying_key()).collect()
    }

    #[test]
    fn a_plain_key_reads_as_a_ring_of_one() {
        let text = dasmesh_wire::key_to_text(&k(1).to_bytes());
        let keys = Keys::parse(&format!("{text}\n")).unwrap();
        assert_eq!(keys.ring(), &KeyRing::single(&k(1)));
        assert_eq!(keys.signing(0).to_bytes(), k(1).to_bytes());
        assert_eq!(keys.accepted(u64::MAX), pubs(&[k(1)]));
    }

    #[test]
    fn a_ring_reads_back_as_written() {
        let keys = Keys::single(k(1)).rotate(&k(2), 1000, 300, 10_000);
        let text = String::from_utf8(keys.ring().to_json()).unwrap();
        let back = Keys::parse(&text).unwrap();
        assert_eq!(back.ring(), keys.ring());
        assert_eq!(back.accepted(1000), pubs(&[k(2), k(1)]));
    }

    #[test]
    fn unreadable_rings_say_why() {
        assert!(matches!(Keys::parse("hello"), Err(KeyError::Unreadable(_))));
        assert!(matches!(Keys::parse(""), Err(KeyError::Unreadable(_))));
        let bad = r#"{"current":"00","from_ms":0,"older":[]}"#;
        assert_eq!(
            Keys::parse(bad).unwrap_err(),
            KeyError::BadKey {
                which: "current".into()
            }
        );
        let good = dasmesh_wire::key_to_text(&k(1).to_bytes());
        let bad = format!(
            r#"{{"current":"{good}","from_ms":0,"older":[{{"key":"{good}","until_ms":1}},{{"key":"zz","until_ms":1}}]}}"#
        );
        assert_eq!(
            Keys::parse(&bad).unwrap_err(),
            KeyError::BadKey {
                which: "older[1]".into()
            }
        );
    }

    #[test]
    fn a_rotation_switches_after_the_delay_and_keeps_the_old_key() {
        let one = Keys::single(k(1));
        let two = one.rotate(&k(2), 1000, 300, 10_000);
        // Signed with the old key until the switch, with the new one from then on.
        assert_eq!(two.signing(1000).to_bytes(), k(1).to_bytes());
        assert_eq!(two.signing(1299).to_bytes(), k(1).to_bytes());
        assert_eq!(two.signing(1300).to_bytes(), k(2).to_bytes());
        // Both accepted from the rotation on, the new one first; the old one until the last
        // token it signed (at the switch) has expired.
        assert_eq!(two.accepted(1000), pubs(&[k(2), k(1)]));
        assert_eq!(two.accepted(11_299), pubs(&[k(2), k(1)]));
        assert_eq!(two.accepted(11_300), pubs(&[k(2)]));
        assert_eq!(
            two.ring().older,
            vec![Older {
                key: dasmesh_wire::key_to_text(&k(1).to_bytes()),
                until_ms: 11_300
            }]
        );
    }

    #[test]
    fn a_key_rotated_away_before_its_switch_is_dropped() {
        let two = Keys::single(k(1)).rotate(&k(2), 1000, 300, 10_000);
        // Again before the switch: key 2 never signed; key 1 still signs until the new switch.
        let three = two.rotate(&k(3), 1100, 300, 10_000);
        assert_eq!(three.signing(1100).to_bytes(), k(1).to_bytes());
        assert_eq!(three.signing(1400).to_bytes(), k(3).to_bytes());
        assert_eq!(three.accepted(1100), pubs(&[k(3), k(1)]));
        assert_eq!(three.ring().older.len(), 1);
        assert_eq!(three.ring().older[0].until_ms, 11_400);
    }

    #[test]
    fn expired_and_surplus_older_keys_go() {
        let mut keys = Keys::single(k(1));
        // Rotations 1000 ms apart, each switching after 10 ms, each key kept 2500 ms.
        for n in 2..=5u8 {
            keys = keys.rotate(&k(n), u64::from(n) * 1000, 10, 2500);
        }
        // At 5000: keys 4 (until 7510), 3 (until 6510) and 2 (until 5510); 1 (until 4510) went.
        assert_eq!(keys.accepted(5000), pubs(&[k(5), k(4), k(3), k(2)]));
        assert_eq!(keys.ring().older.len(), 3);
        // With a long keep, never more than MAX_OLDER.
        let mut keys = Keys::single(k(1));
        for n in 2..=9u8 {
            keys = keys.rotate(&k(n), u64::from(n) * 1000, 10, u64::MAX / 2);
        }
        assert_eq!(keys.ring().older.len(), MAX_OLDER);
        assert_eq!(keys.accepted(9000), pubs(&[k(9), k(8), k(7), k(6), k(5)]));
    }

    proptest! {
        /// Over any run of rotations: the key signing at any moment is accepted then, and stays
        /// accepted until a token it signed at that moment (lasting at most `keep`) expires,
        /// unless MAX_OLDER rotations or more came in between; the current key comes first;
        /// the ring reads back from its JSON.
        #[test]
        fn the_signing_key_stays_accepted_for_its_tokens(
            steps in proptest::collection::vec((1u64..5_000, 0u64..2_000), 1..12),
            keep in 0u64..20_000,
        ) {
            let mut keys = Keys::single(k(0));
            let mut now = 0u64;
            let mut history: Vec<(u64, Keys)> = vec![(0, keys.clone())];
            for (i, (gap, delay)) in steps.iter().enumerate() {
                now += gap;
                keys = keys.rotate(&k(i as u8 + 1), now, *delay, keep);
                history.push((now, keys.clone()));
                prop_assert!(keys.ring().older.len() <= MAX_OLDER);
                prop_assert_eq!(keys.accepted(now)[0], k(i as u8 + 1).verifying_key());
                let back = Keys::parse(std::str::from_utf8(&keys.ring().to_json()).unwrap());
                prop_assert_eq!(back.unwrap().ring().clone(), keys.ring().clone());
            }
            // A token signed at time t (between rotations j and j+1) is accepted at every later
            // time u < t + keep, by the ring in force at u, if few rotations came in between.
            for (j, (at, ring_then)) in history.iter().enumerate() {
                let end = history.get(j + 1).map(|h| h.0).unwrap_or(now + 1);
                for t in [*at, (at + end) / 2, end.saturating_sub(1).max(*at)] {
                    let signer = ring_then.signing(t).verifying_key();
                    prop_assert!(ring_then.accepted(t).contains(&signer));
                    for (m, (at2, ring2)) in history.iter().enumerate().skip(j + 1) {
                        // The signer may be the key before rotation j's (it signs until
                        // rotation j's switch): MAX_OLDER - 1 rotations on, it is still kept.
                        if m - j >= MAX_OLDER {
                            break;
                        }
                        let u = *at2;
                        if u < t.saturating_add(keep) {
                            prop_assert!(
                                ring2.accepted(u).contains(&signer),
                                "a key signing at {} refused at {} (rotation {})", t, u, m
                            );
                        }
                    }
                }
            }
        }
    }
}
