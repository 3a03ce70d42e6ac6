//! A list of controllers that every generated client can call as if it were one: each call goes
//! to the controller last found active, and a standby's refusal, a controller that cannot be
//! reached, or (for calls that are safe to repeat) a connection lost mid-call send it on to the
//! next, for up to [`ControllerOptions::failover_wait`].
//!
//! A standby refuses every call with UNAVAILABLE and the [`ROLE_HEADER`] (`standby`), naming the
//! active controller in the [`ACTIVE_HEADER`] when it knows it; the controller's side of this is
//! in `dasmesh-controller`.

use std::collections::HashMap;
use std::error::Error as StdErrorTrait;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Bytes, Context, Poll, Service};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Status;

use crate::headers::{ACTIVE_HEADER, ROLE_HEADER, STANDBY};

/// The first words of the status a call ends with when no controller could be reached.
pub const UNREACHABLE: &str = "cannot reach the controller at";
/// The first words of the status a call ends with when its connection failed after it was sent
/// and it is not safe to repeat ([`safe_to_repeat`]).
pub const LOST: &str = "lost the connection to the controller at";

/// The first pause between two rounds of the list; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between two rounds of the list.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Full method paths of the calls that stream (sent to the current controller as they are,
/// without buffering or failover). None today; the unit tests fail when a `.proto` adds one.
const STREAMING: &[&str] = &[];

/// How to reach the controllers.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Give up connecting to one controller after this long.
    pub connect_timeout: Duration,
    /// Give up on one call to one controller after this long (none: wait as long as it takes).
    pub timeout: Option<Duration>,
    /// The longest a call keeps going round the list while no controller serves it.
    pub failover_wait: Duration,
    /// Mutual TLS with this certificate (see [`crate::tls`]); the URLs are then `https://`.
    pub tls: Option<ClientTlsConfig>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: None,
            failover_wait: Duration::from_secs(15),
            tls: None,
        }
    }
}

/// Why a controller list could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControllersError {
    /// Nothing but commas and blanks.
    #[error("no controller given: expected a comma-separated list of http://HOST:PORT")]
    Empty,
    /// One entry is not an `http://HOST:PORT` URL.
    #[error("bad controller URL {url:?}: {why}")]
    BadUrl {
        /// The entry as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
}

/// One or more controllers, used as one: a tower service that every generated client runs on
/// (`v1::pool_client::PoolClient::new(controllers.clone())`). Cheap to clone; clones share the
/// connections and what was learnt about which controller is active.
#[derive(Clone)]
pub struct Controllers {
    inner: Arc<Shared>,
}

struct Shared {
    /// The list as given, without duplicates.
    urls: Vec<String>,
    opts: ControllerOptions,
    state: Mutex<State>,
}

struct State {
    /// Where the next call goes first.
    active: String,
    /// Controllers named active by a standby that are not in `urls`.
    learnt: Vec<String>,
    /// One lazily connected channel per controller.
    channels: HashMap<String, Channel>,
}

impl std::fmt::Debug for Controllers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controllers")
            .field("urls", &self.inner.urls)
            .field("active", &self.active())
            .finish()
    }
}

/// What one attempt at one controller came to.
enum Outcome {
    /// An answer from a controller that serves (whatever its status).
    Served(http::Response<Body>),
    /// A standby's refusal, and the active controller it named.
    Standby(http::Response<Body>, Option<String>),
    /// The call never reached the controller.
    Unreachable(String),
    /// The call was sent and the connection failed before the answer: it may have been applied.
    Broken(Box<dyn StdErrorTrait + Send + Sync>),
}

/// `url` checked, and written as `SCHEME://AUTHORITY` (no blanks, no trailing slash).
fn check_url(url: &str) -> Result<String, ControllersError> {
    let url = url.trim();
    let bad = |why: &str| ControllersError::BadUrl {
        url: url.to_string(),
        why: why.to_string(),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&format!("{e}: expected http://HOST:PORT")))?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s,
        Some(s) => return Err(bad(&format!("scheme {s:?}: expected http://HOST:PORT"))),
        None => return Err(bad("no scheme: expected http://HOST:PORT")),
    };
    let authority = match uri.authority() {
        Some(a) if !a.host().is_empty() => a.as_str(),
        _ => return Err(bad("no host: expected http://HOST:PORT")),
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(
            "a controller URL has no path: expected http://HOST:PORT",
        ));
    }
    Ok(format!("{scheme}://{authority}"))
}

/// Whether a call that was sent and then lost its connection may be sent again (to the same or
/// another controller): reads, and the calls whose second application changes nothing that the
/// first did not (a heartbeat, a lease renewal from now). Everything else is returned to the
/// caller to decide.
pub fn safe_to_repeat(path: &str) -> bool {
    let Some((service, method)) = path
        .strip_prefix("/dasmesh.v1.")
        .and_then(|p| p.split_once('/'))
    else {
        return false;
    };
    match (service, method) {
        ("Pool", _) => true,
        ("Usage", "Report") => true,
        ("NodeRegistry", "Heartbeat") => true,
        ("Leases", "Renew") => true,
        (_, m) => m.starts_with("Get") || m.starts_with("List"),
    }
}

/// Whether `s` says that no controller could be reached (rather than one refusing the call).
pub fn is_unreachable(s: &Status) -> bool {
    s.code() == tonic::Code::Unavailable && s.message().starts_with(UNREACHABLE)
}

/// Whether `s` says that the connection failed after the call was sent, which may or may not
/// have been applied (rather than a controller refusing it).
pub fn is_lost(s: &Status) -> bool {
    s.message().starts_with(LOST)
}

/// The innermost reason in an error's chain ("Connection refused (os error 111)"), which is the
/// one that says something; the outer ones are "transport error" and the like.
fn reason(e: &(dyn StdErrorTrait + 'static)) -> String {
    let mut last = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !t.is_empty() {
            last = t;
        }
        cur = s.source();
    }
    last
}

/// Whether the error says the connection was never made (so the call was not sent).
fn never_connected(e: &(dyn StdErrorTrait + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if x.is::<tonic::ConnectError>() {
            return true;
        }
        cur = x.source();
    }
    false
}

/// Whether a call to `url` broke off in a way that shows the server never read it: a
/// plaintext call answered with what is not HTTP/2 (a TLS controller's alert read as a frame
/// header), or a TLS handshake that failed (with TLS 1.3 the client sends its call before the
/// server's refusal of its certificate arrives).
fn never_read(url: &str, why: &str) -> bool {
    let w = why.to_ascii_lowercase();
    if url.starts_with("https://") {
        w.contains("received fatal alert") || w.contains("invalid peer certificate")
    } else {
        w.contains("frame with invalid size")
    }
}

/// What the transport said, with the likely cause when it is a TLS mismatch (the transport's
/// words alone, "frame with invalid size" or "BadSignature", do not say it).
fn with_hint(url: &str, why: &str) -> String {
    let w = why.to_ascii_lowercase();
    let tls = url.starts_with("https://");
    let hint = if !tls
        && ["frame with invalid size", "broken pipe", "connection reset"]
            .iter()
            .any(|p| w.contains(p))
    {
        "the controller may serve TLS only: use https://HOST:PORT with --cert DIR"
    } else if tls && w.contains("invalid peer certificate") {
        "the controller's certificate is not from the CA in the certificate directory, \
         or does not name this address"
    } else if tls && (w.contains("received fatal alert") || w.contains("certificate required")) {
        "the controller refused this certificate: from another CA, expired, or not valid yet"
    } else if tls
        && ["broken pipe", "connection reset", "connection closed"]
            .iter()
            .any(|p| w.contains(p))
    {
        // TLS 1.3: the server checks the client's certificate after the client thinks the
        // handshake done, so its refusal often arrives as a closed connection.
        "the controller closed the connection: it may have refused this certificate (from \
         another CA, expired, or not valid yet)"
    } else if tls && (w.contains("corrupt message") || w.contains("invalidcontenttype")) {
        "the controller serves plaintext (--insecure-no-auth): use http:// without --cert"
    } else {
        return why.to_string();
    };
    format!("{why} ({hint})")
}

/// The status for "no controller could be reached": every URL tried in the last round and why.
fn unreachable(failed: &[(String, String)]) -> Status {
    let failed: Vec<(String, String)> = failed
        .iter()
        .map(|(u, w)| (u.clone(), with_hint(u, w)))
        .collect();
    let msg = match failed.as_slice() {
        [(url, why)] => format!("{UNREACHABLE} {url}: {why}"),
        _ => {
            let urls: Vec<&str> = failed.iter().map(|(u, _)| u.as_str()).collect();
            let (last, first) = urls.split_last().unwrap_or((&"", &[]));
            let why: Vec<String> = failed.iter().map(|(u, w)| format!("{u}: {w}")).collect();
            format!(
                "{UNREACHABLE} {} or {last} ({})",
                first.join(", "),
                why.join("; ")
            )
        }
    };
    Status::unavailable(msg)
}

impl Controllers {
    /// Reads a comma-separated list of controller URLs (`http://a:7600,http://b:7600`), with
    /// the default options.
    pub fn parse(list: &str) -> Result<Controllers, ControllersError> {
        Self::parse_with(list, ControllerOptions::default())
    }

    /// [`parse`](Self::parse) with `opts`.
    pub fn parse_with(
        list: &str,
        opts: ControllerOptions,
    ) -> Result<Controllers, ControllersError> {
        let mut urls: Vec<String> = Vec::new();
        for entry in list.split(',').filter(|e| !e.trim().is_empty()) {
            let url = check_url(entry)?;
            match (url.starts_with("https://"), opts.tls.is_some()) {
                (true, false) => {
                    return Err(ControllersError::BadUrl {
                        url,
                        why: "https:// needs a certificate: give --cert DIR or set DASMESH_CERT"
                            .into(),
                    })
                }
                (false, true) => {
                    return Err(ControllersError::BadUrl {
                        url,
                        why: "with a certificate the controllers are reached over TLS: use https://HOST:PORT"
                            .into(),
                    })
                }
                _ => {}
            }
            Endpoint::from_shared(url.clone()).map_err(|e| ControllersError::BadUrl {
                url: url.clone(),
                why: reason(&e),
            })?;
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
        let first = urls.first().cloned().ok_or(ControllersError::Empty)?;
        Ok(Controllers {
            inner: Arc::new(Shared {
                urls,
                opts,
                state: Mutex::new(State {
                    active: first,
                    learnt: Vec::new(),
                    channels: HashMap::new(),
                }),
            }),
        })
    }

    /// The controllers: the list as given, then any that a standby named active.
    pub fn urls(&self) -> Vec<String> {
        let st = self.state();
        let mut all = self.inner.urls.clone();
        all.extend(st.learnt.iter().cloned());
        all
    }

    /// The controller last found active (the first of the list until a call has been made).
    pub fn active(&self) -> String {
        self.state().active.clone()
    }

    /// The options these controllers are reached with.
    pub fn options(&self) -> &ControllerOptions {
        &self.inner.opts
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The order of one round: the active first, then the list from the one after it, then the
    /// controllers learnt from standbys.
    fn round(&self) -> Vec<String> {
        let st = self.state();
        let urls = &self.inner.urls;
        let from = urls
            .iter()
            .position(|u| *u == st.active)
            .map_or(0, |i| i + 1);
        let mut order = vec![st.active.clone()];
        for u in urls[from..].iter().chain(&urls[..from]).chain(&st.learnt) {
            if !order.contains(u) {
                order.push(u.clone());
            }
        }
        order
    }

    /// Notes that `url` is (or was named) the active controller.
    fn set_active(&self, url: &str) {
        let mut st = self.state();
        if st.active != url {
            tracing::info!(controller = url, previous = %st.active, "active controller");
            st.active = url.to_string();
        }
        if !self.inner.urls.iter().any(|u| u == url) && !st.learnt.iter().any(|u| u == url) {
            st.learnt.push(url.to_string());
        }
    }

    /// The cached channel to `url`, or a new one (`fresh`: a new one in any case).
    fn channel(&self, url: &str, fresh: bool) -> Result<Channel, String> {
        let mut st = self.state();
        if !fresh {
            if let Some(c) = st.channels.get(url) {
                return Ok(c.clone());
            }
        }
        let o = &self.inner.opts;
        let mut e = Endpoint::from_shared(url.to_string())
            .map_err(|e| reason(&e))?
            .connect_timeout(o.connect_timeout);
        if let Some(t) = o.timeout {
            e = e.timeout(t);
        }
        if let Some(tls) = &o.tls {
            e = e.tls_config(tls.clone()).map_err(|e| reason(&e))?;
        }
        let c = e.connect_lazy();
        st.channels.insert(url.to_string(), c.clone());
        Ok(c)
    }

    /// A channel to `url` ready to take a call. A channel whose worker is gone (its runtime
    /// ended) is replaced once.
    async fn ready(&self, url: &str) -> Result<Channel, String> {
        let mut c = self.channel(url, false)?;
        if poll_fn(|cx| c.poll_ready(cx)).await.is_ok() {
            return Ok(c);
        }
        let mut c = self.channel(url, true)?;
        match poll_fn(|cx| c.poll_ready(cx)).await {
            Ok(()) => Ok(c),
            Err(e) => Err(reason(&e)),
        }
    }

    /// Sends the call once to `url`.
    async fn attempt(&self, url: &str, parts: &http::request::Parts, body: &Bytes) -> Outcome {
        let mut c = match self.ready(url).await {
            Ok(c) => c,
            Err(why) => return Outcome::Unreachable(why),
        };
        let req = http::Request::from_parts(parts.clone(), Body::new(Full::new(body.clone())));
        match c.call(req).await {
            Ok(r) if r.headers().get(ROLE_HEADER).is_some_and(|v| v == STANDBY) => {
                let named = r
                    .headers()
                    .get(ACTIVE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| match check_url(v) {
                        Ok(u) => Some(u),
                        Err(e) => {
                            tracing::debug!(controller = url, "standby names no usable URL: {e}");
                            None
                        }
                    });
                Outcome::Standby(r, named)
            }
            Ok(r) => Outcome::Served(r),
            Err(e) if never_connected(&e) => Outcome::Unreachable(reason(&e)),
            Err(e) => Outcome::Broken(e.into()),
        }
    }

    /// Runs one call: buffered, and sent round the list until a controller serves it.
    async fn route(self, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
        let path = req.uri().path().to_string();
        if STREAMING.contains(&path.as_str()) {
            return self.pass(req).await;
        }
        let (parts, body) = req.into_parts();
        let body = body.collect().await?.to_bytes();
        let safe = safe_to_repeat(&path);
        let wait = self.inner.opts.failover_wait;
        let deadline = Instant::now() + wait;
        let mut backoff = MIN_BACKOFF;
        loop {
            let order = self.round();
            let mut tried: Vec<String> = Vec::new();
            let mut failed: Vec<(String, String)> = Vec::new();
            let mut standby = None;
            let mut named: Option<String> = None;
            loop {
                let next = named
                    .take()
                    .filter(|u| !tried.contains(u))
                    .or_else(|| order.iter().find(|u| !tried.contains(u)).cloned());
                let Some(url) = next else { break };
                tried.push(url.clone());
                match self.attempt(&url, &parts, &body).await {
                    Outcome::Served(r) => {
                        self.set_active(&url);
                        return Ok(r);
                    }
                    Outcome::Standby(r, active) => {
                        tracing::debug!(controller = %url, active = ?active, path, "standby");
                        if let Some(a) = &active {
                            self.set_active(a);
                        }
                        named = active;
                        standby = Some(r);
                    }
                    Outcome::Unreachable(why) => {
                        tracing::debug!(controller = %url, path, "unreachable: {why}");
                        failed.push((url, why));
                    }
                    // A call the controller never read (see `never_read`) was not applied,
                    // whatever the call.
                    Outcome::Broken(e) if safe || never_read(&url, &reason(&*e)) => {
                        let why = reason(&*e);
                        tracing::debug!(controller = %url, path, "call broke off, repeating: {why}");
                        failed.push((url, why));
                    }
                    Outcome::Broken(e) => {
                        // The code tonic gives this error (UNKNOWN for a lost connection,
                        // CANCELLED for a timeout), with a message that says what happened.
                        let why = with_hint(&url, &reason(&*e));
                        let code = Status::from_error(e).code();
                        return Err(Status::new(
                            code,
                            format!(
                                "{LOST} {url} during {path}, which may have been applied: {why}"
                            ),
                        ));
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return match standby {
                    Some(r) => Ok(r),
                    None => Err(unreachable(&failed)),
                };
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// A streaming call: to the active controller as it is.
    async fn pass(self, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
        let url = self.active();
        let mut c = self
            .ready(&url)
            .await
            .map_err(|why| unreachable(&[(url.clone(), why)]))?;
        c.call(req).await.map_err(|e| {
            if never_connected(&e) {
                unreachable(&[(url.clone(), reason(&e))])
            } else {
                Status::from_error(e.into())
            }
        })
    }
}

impl Service<http::Request<Body>> for Controllers {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call takes a channel of its own when it runs.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(self.clone().route(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_or_say_why() {
        let c = Controllers::parse(" http://a:1, http://b:2/ ,,http://a:1").unwrap();
        assert_eq!(c.urls(), ["http://a:1", "http://b:2"]);
        assert_eq!(c.active(), "http://a:1");
        let one = Controllers::parse("http://127.0.0.1:7600").unwrap();
        assert_eq!(one.urls(), ["http://127.0.0.1:7600"]);
        assert_eq!(one.options().failover_wait, Duration::from_secs(15));
        assert_eq!(one.options().connect_timeout, Duration::from_secs(5));

        for empty in ["", " ", ",", " , ,"] {
            assert_eq!(
                Controllers::parse(empty).unwrap_err(),
                ControllersError::Empty
            );
        }
        for (bad, says) in [
            ("127.0.0.1:7600", "no scheme"),
            ("http://a:1,b:2", "no scheme"),
            ("ftp://a:1", "scheme \"ftp\""),
            ("http://a:1/x", "no path"),
            ("http://a b:1", "expected http://HOST:PORT"),
            ("http://", "empty string: expected"),
        ] {
            let e = Controllers::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("bad controller URL"), "{bad}: {e}");
            assert!(e.contains(says), "{bad}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn a_round_starts_at_the_active_and_ends_with_the_learnt() {
        let c = Controllers::parse("http://a:1,http://b:2,http://c:3").unwrap();
        assert_eq!(c.round(), ["http://a:1", "http://b:2", "http://c:3"]);
        c.set_active("http://b:2");
        assert_eq!(c.round(), ["http://b:2", "http://c:3", "http://a:1"]);
        c.set_active("http://10.0.0.3:3");
        assert_eq!(c.active(), "http://10.0.0.3:3");
        assert_eq!(
            c.round(),
            [
                "http://10.0.0.3:3",
                "http://a:1",
                "http://b:2",
                "http://c:3"
            ]
        );
        assert_eq!(c.urls().len(), 4);
        // A clone shares what was learnt.
        assert_eq!(c.clone().active(), "http://10.0.0.3:3");
    }

    /// The calls that may be repeated after a lost connection.
    const SAFE: &[&str] = &[
        "/dasmesh.v1.ControlPlane/ListControllers",
        "/dasmesh.v1.NodeRegistry/Heartbeat",
        "/dasmesh.v1.Pool/ListNodes",
        "/dasmesh.v1.Pool/ListDevices",
        "/dasmesh.v1.Pool/GetNode",
        "/dasmesh.v1.Volumes/Get",
        "/dasmesh.v1.Volumes/List",
        "/dasmesh.v1.Leases/Renew",
        "/dasmesh.v1.Leases/List",
        "/dasmesh.v1.Usage/Report",
    ];

    #[test]
    fn what_may_be_repeated() {
        for path in crate::METHODS {
            assert_eq!(safe_to_repeat(path), SAFE.contains(path), "{path}");
        }
        for other in [
            "",
            "/",
            "/grpc.health.v1.Health/Check",
            "/dasmesh.v2.Pool/ListNodes",
        ] {
            assert!(!safe_to_repeat(other), "{other}");
        }
    }

    /// [`crate::METHODS`] names every rpc of the protos, and none streams: a new rpc must be
    /// placed in it (and in [`STREAMING`] if it streams).
    #[test]
    fn the_table_covers_every_rpc() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/dasmesh/v1");
        let mut found = Vec::new();
        for f in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
            let mut service = "";
            for line in text.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("service ") {
                    service = rest.split_whitespace().next().unwrap();
                } else if let Some(rest) = line.strip_prefix("rpc ") {
                    let method = rest.split('(').next().unwrap().trim();
                    let path = format!("/dasmesh.v1.{service}/{method}");
                    assert_eq!(
                        rest.contains("stream "),
                        STREAMING.contains(&path.as_str()),
                        "{path}: streaming calls are listed in STREAMING"
                    );
                    found.push(path);
                }
            }
        }
        found.sort();
        let mut listed: Vec<String> = crate::METHODS.iter().map(|p| p.to_string()).collect();
        listed.sort();
        assert_eq!(found, listed);
    }

    #[test]
    fn a_tls_mismatch_says_what_to_change() {
        let plain = with_hint(
            "http://a:1",
            "connection error detected: frame with invalid size",
        );
        assert!(
            plain.contains("use https://HOST:PORT with --cert DIR"),
            "{plain}"
        );
        let foreign = with_hint("https://a:1", "invalid peer certificate: BadSignature");
        assert!(foreign.contains("not from the CA"), "{foreign}");
        let refused = with_hint("https://a:1", "received fatal alert: CertificateExpired");
        assert!(refused.contains("refused this certificate"), "{refused}");
        let to_plain = with_hint(
            "https://a:1",
            "received corrupt message of type InvalidContentType",
        );
        assert!(to_plain.contains("serves plaintext"), "{to_plain}");
        assert_eq!(
            with_hint("http://a:1", "Connection refused"),
            "Connection refused"
        );
        assert!(never_read(
            "http://a:1",
            "connection error detected: frame with invalid size"
        ));
        assert!(never_read(
            "https://a:1",
            "received fatal alert: CertificateExpired"
        ));
        assert!(!never_read(
            "https://a:1",
            "stream closed because of a broken pipe"
        ));
        assert!(!never_read("http://a:1", "connection reset by peer"));
    }

    #[test]
    fn unreachable_names_every_url() {
        let one = unreachable(&[("http://a:1".into(), "Connection refused".into())]);
        assert_eq!(
            one.message(),
            "cannot reach the controller at http://a:1: Connection refused"
        );
        assert!(is_unreachable(&one));
        let three = unreachable(&[
            ("http://a:1".into(), "refused".into()),
            ("http://b:2".into(), "timed out".into()),
            ("http://c:3".into(), "refused".into()),
        ]);
        assert_eq!(
            three.message(),
            "cannot reach the controller at http://a:1, http://b:2 or http://c:3 \
             (http://a:1: refused; http://b:2: timed out; http://c:3: refused)"
        );
        assert!(!is_unreachable(&Status::unavailable("standby controller")));
    }
}
