//! Signing in to the console with a browser, which shows no client certificate: an operator
//! asks for a login link (`dasmesh console`, the gRPC call `ControlPlane/ConsoleLogin`, made
//! with their certificate); the link's code, used once within [`CODE_TTL`], becomes a session
//! cookie that stands for the same identity for [`SESSION_TTL`]. Every call made with it is
//! checked against that identity's role, as the gRPC API checks a certificate's.
//!
//! Sessions live in the controller that made the code (memory only): after a restart, or on
//! another controller, the operator asks for a new link.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dasmesh_api::tls::Identity;

/// How long a login code can be used.
pub const CODE_TTL: Duration = Duration::from_secs(300);
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The most codes and sessions kept; past it the oldest is dropped.
pub const MAX_KEPT: usize = 1024;
/// The session cookie's name.
pub const COOKIE: &str = "dasmesh_session";

#[derive(Default)]
struct Kept {
    codes: HashMap<String, (Option<Identity>, Instant)>,
    sessions: HashMap<String, (Option<Identity>, Instant)>,
}

static KEPT: Mutex<Option<Kept>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut Kept) -> T) -> T {
    let mut g = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(Kept::default))
}

fn secret() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Keeps `key` until `until` in `map`, dropping what expired and, if still full, the entry
/// that expires first.
fn keep(
    map: &mut HashMap<String, (Option<Identity>, Instant)>,
    key: String,
    id: Option<Identity>,
    until: Instant,
) {
    let now = Instant::now();
    map.retain(|_, (_, t)| *t > now);
    if map.len() >= MAX_KEPT {
        if let Some(k) = map
            .iter()
            .min_by_key(|(_, (_, t))| *t)
            .map(|(k, _)| k.clone())
        {
            map.remove(&k);
        }
    }
    map.insert(key, (id, until));
}

/// A new login code standing for `id` (`None`: a controller without identities).
pub fn code_for(id: Option<Identity>) -> String {
    let code = secret();
    with(|k| keep(&mut k.codes, code.clone(), id, Instant::now() + CODE_TTL));
    code
}

/// Uses `code` (once): a new session's secret and who it stands for; `None` if the code is
/// unknown, used or expired.
pub fn redeem(code: &str) -> Option<(String, Option<Identity>)> {
    with(|k| {
        let (id, until) = k.codes.remove(code)?;
        if until <= Instant::now() {
            return None;
        }
        let session = secret();
        keep(
            &mut k.sessions,
            session.clone(),
            id.clone(),
            Instant::now() + SESSION_TTL,
        );
        Some((session, id))
    })
}

/// Who the session `secret` stands for: `Some(identity)` while it lasts.
pub fn lookup(secret: &str) -> Option<Option<Identity>> {
    with(|k| match k.sessions.get(secret) {
        Some((id, until)) if *until > Instant::now() => Some(id.clone()),
        _ => None,
    })
}

/// Ends the session `secret`.
pub fn end(secret: &str) {
    with(|k| {
        k.sessions.remove(secret);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use dasmesh_api::tls::Role;

    #[test]
    fn a_code_is_used_once_and_its_session_names_the_operator() {
        let op = Identity {
            role: Role::Operator,
            name: "alice".into(),
        };
        let code = code_for(Some(op.clone()));
        assert_eq!(code.len(), 64);
        let (s, id) = redeem(&code).expect("a fresh code");
        assert_eq!(id.as_ref(), Some(&op));
        assert!(redeem(&code).is_none(), "a code is used once");
        assert_eq!(lookup(&s), Some(Some(op)));
        assert!(lookup("0").is_none());
        assert!(redeem("not-a-code").is_none());
        end(&s);
        assert!(lookup(&s).is_none());
    }

    #[test]
    fn no_more_than_max_kept_codes_are_kept() {
        for _ in 0..MAX_KEPT + 10 {
            code_for(None);
        }
        with(|k| assert!(k.codes.len() <= MAX_KEPT));
    }
}
