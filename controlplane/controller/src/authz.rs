//! Who may call what: the one table of calls by role, and the layer in front of every service
//! that checks it.
//!
//! Over mutual TLS every call carries its client's certificate, checked against the cluster's
//! CA by the TLS layer already; [`Authorize`] reads the identity it names (a role and a name),
//! refuses a call its role may not make with PERMISSION_DENIED, and hands the identity to the
//! handler in the request's extensions ([`caller`]). The handlers then check what depends on
//! the state: a node acts only as itself, a host only on its own leases (see
//! `service::registry` and `service::leases`). A controller started with `--insecure-no-auth`
//! has no TLS: its calls carry no identity and every call is allowed, as before there were
//! identities.

use std::collections::HashMap;
use std::sync::Mutex;
use std::task::{Context, Poll};

use dasmesh_api::tls::{identity_of, Identity, Role, TlsError};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

/// Calls every authenticated client may make: health checks and the API's description.
const ANYONE: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The calls of a node: it registers itself, reports its devices, beats, leaves.
const NODE: &[&str] = &[
    "/dasmesh.v1.NodeRegistry/Register",
    "/dasmesh.v1.NodeRegistry/ReportDevices",
    "/dasmesh.v1.NodeRegistry/Heartbeat",
    "/dasmesh.v1.NodeRegistry/Deregister",
];

/// The calls of a host: its own leases, and the volumes it holds.
const HOST: &[&str] = &[
    "/dasmesh.v1.Leases/Mount",
    "/dasmesh.v1.Leases/Renew",
    "/dasmesh.v1.Leases/Unmount",
    "/dasmesh.v1.Leases/ReportFailure",
    "/dasmesh.v1.Leases/ReportRebuilt",
    "/dasmesh.v1.Leases/List",
    "/dasmesh.v1.Volumes/Get",
];

/// Whether `role` may call the gRPC method `path` (`/package.Service/Method`) at all. What it
/// may do with it (only as itself, only its own leases) the handler decides.
pub fn allowed(path: &str, role: Role) -> bool {
    if ANYONE.iter().any(|p| path.starts_with(p)) {
        return true;
    }
    match role {
        Role::Operator => true,
        Role::Node => NODE.contains(&path),
        Role::Host => HOST.contains(&path),
        // A controller serves; it calls no other controller.
        Role::Controller => false,
    }
}

/// The identity of a call's client, put there by [`Authorize`]; `None` without TLS (a
/// controller run with `--insecure-no-auth`).
pub fn caller<T>(r: &tonic::Request<T>) -> Option<&Identity> {
    r.extensions().get::<Identity>()
}

/// Refuses unless the caller is `role` named `name`, or an operator, or there are no
/// identities at all.
pub fn require_self(
    r: Option<&Identity>,
    role: Role,
    name: &str,
    what: &str,
) -> Result<(), Status> {
    match r {
        None => Ok(()),
        Some(id) if id.role == Role::Operator => Ok(()),
        Some(id) if id.role == role && id.name == name => Ok(()),
        Some(id) => Err(Status::permission_denied(format!(
            "{what} belongs to {role} {name:?}; this certificate is {id}"
        ))),
    }
}

/// The most certificates whose identities are remembered (then all are forgotten at once).
const CACHED: usize = 4096;

/// [`identity_of`] the certificate `der`, parsed once per certificate rather than once per
/// call (parsing was 5% of the controller's CPU under 100 hosts mounting in a loop). Keyed by
/// the certificate's bytes, so a new certificate is always parsed.
fn identity_cached(der: &[u8]) -> Result<Identity, TlsError> {
    static SEEN: Mutex<Option<HashMap<Vec<u8>, Identity>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let map = seen.get_or_insert_with(HashMap::new);
    if let Some(id) = map.get(der) {
        return Ok(id.clone());
    }
    let id = identity_of(der)?;
    if map.len() >= CACHED {
        map.clear();
    }
    map.insert(der.to_vec(), id.clone());
    Ok(id)
}

/// The tower layer that checks every call against [`allowed`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Authorize;

impl<S> tower::Layer<S> for Authorize {
    type Service = Authorized<S>;
    fn layer(&self, inner: S) -> Authorized<S> {
        Authorized { inner }
    }
}

/// A service behind [`Authorize`].
#[derive(Clone, Debug)]
pub struct Authorized<S> {
    inner: S,
}

/// The identity of the TLS peer of `req`, checked against the table; `Ok(None)` on a
/// plaintext connection.
fn check<B>(req: &http::Request<B>) -> Result<Option<Identity>, Status> {
    let certs = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs());
    let Some(leaf) = certs.as_deref().and_then(|c| c.first()) else {
        return Ok(None);
    };
    let id = identity_cached(leaf).map_err(|e| {
        Status::permission_denied(format!(
            "the client's certificate names no dasmesh identity: {e}"
        ))
    })?;
    let path = req.uri().path();
    if !allowed(path, id.role) {
        let method = path.trim_start_matches('/');
        tracing::warn!(caller = %id, method, "refused: not allowed for the role");
        return Err(Status::permission_denied(format!(
            "a {} certificate ({:?}) may not call {method}",
            id.role, id.name
        )));
    }
    Ok(Some(id))
}

impl<S, B> tower::Service<http::Request<B>> for Authorized<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let t0 = std::time::Instant::now();
        let done = move |r: &http::Response<tonic::body::Body>| {
            // A call that failed says so in its headers (trailers-only); one that ends OK says
            // so in its trailers, after this: no status header counts as OK.
            let code = r
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            crate::metrics::observe(&path, code, t0.elapsed());
        };
        match check(&req) {
            Ok(id) => {
                if let Some(id) = id {
                    req.extensions_mut().insert(id);
                }
                // The clone is the one that was not polled ready: swap so the ready one serves.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                let call = ready.call(req);
                Box::pin(async move {
                    let r = call.await;
                    if let Ok(r) = &r {
                        done(r);
                    }
                    r
                })
            }
            Err(status) => Box::pin(async move {
                let r = status.into_http();
                done(&r);
                Ok(r)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use dasmesh_api::METHODS as EVERY;

    #[test]
    fn the_table_names_only_methods_that_exist() {
        for p in NODE.iter().chain(HOST) {
            assert!(EVERY.contains(p), "{p} is not a method of the API");
        }
    }

    #[test]
    fn operators_may_do_everything_and_controllers_nothing() {
        for p in EVERY {
            assert!(allowed(p, Role::Operator), "{p}");
            assert!(!allowed(p, Role::Controller), "{p}");
        }
        assert!(allowed("/grpc.health.v1.Health/Check", Role::Controller));
    }

    #[test]
    fn nodes_and_hosts_have_their_calls_and_no_others() {
        let count = |role| EVERY.iter().filter(|p| allowed(p, role)).count();
        assert_eq!(count(Role::Node), 4);
        assert_eq!(count(Role::Host), 7);
        assert!(!allowed("/dasmesh.v1.Leases/Revoke", Role::Host));
        assert!(!allowed("/dasmesh.v1.Volumes/Create", Role::Host));
        assert!(!allowed("/dasmesh.v1.Leases/Mount", Role::Node));
        assert!(!allowed("/dasmesh.v1.Pool/ListNodes", Role::Node));
        // No prefix tricks: a path is a whole method.
        assert!(!allowed("/dasmesh.v1.Leases/MountX", Role::Host));
        assert!(!allowed("/dasmesh.v1.NodeRegistry/Register/x", Role::Node));
    }

    #[test]
    fn acting_for_another_is_refused_unless_operator_or_no_identities() {
        let host = |n: &str| Identity {
            role: Role::Host,
            name: n.into(),
        };
        assert!(require_self(None, Role::Host, "a", "lease 1").is_ok());
        assert!(require_self(Some(&host("a")), Role::Host, "a", "lease 1").is_ok());
        let e = require_self(Some(&host("b")), Role::Host, "a", "lease 1").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().contains("lease 1 belongs to host \"a\""),
            "{}",
            e.message()
        );
        let op = Identity {
            role: Role::Operator,
            name: "ops".into(),
        };
        assert!(require_self(Some(&op), Role::Host, "a", "lease 1").is_ok());
        let node = Identity {
            role: Role::Node,
            name: "a".into(),
        };
        assert!(require_self(Some(&node), Role::Host, "a", "lease 1").is_err());
    }
}
