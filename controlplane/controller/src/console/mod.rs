//! The operator's console and `/metrics`, on the controller's `--http` port.
//!
//! The console is a page (`assets/`, served from the binary: no CDN, no build step) over a
//! small JSON API that is a face on the gRPC services: every call is made to the same service
//! methods, as the caller, after the same check of the caller's role ([`crate::authz::allowed`]
//! on the gRPC method's path). So a refusal reads as the CLI's does, a standby answers reads from
//! etcd, and an operator can do nothing here that their certificate could not do over gRPC.
//!
//! Who the caller is: over TLS (a controller with `--cert`), the identity of the client
//! certificate it showed, or of the session its browser opened with a login link
//! ([`session`]); without TLS (`--insecure-no-auth`) no one, and every call is allowed, as
//! over gRPC. `/metrics` needs any identity of the cluster (over TLS) or none (without).
//!
//! Changes carry the version of the volume they change ([`crate::state::version`]); a change
//! made from a stale view is refused with 409 and the volume as it is now. Live updates: the
//! page listens to `/api/events` (server-sent events), which sends the whole view whenever it
//! changes. See docs/console.md.

pub mod listen;
pub mod session;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dasmesh_api::tls::Identity;
use dasmesh_api::v1;
use dasmesh_api::v1::control_plane_server::ControlPlane as _;
use dasmesh_api::v1::leases_server::Leases as _;
use dasmesh_api::v1::pool_server::Pool as _;
use dasmesh_api::v1::usage_server::Usage as _;
use dasmesh_api::v1::volumes_server::Volumes as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tonic::Code;

use crate::ha::Roles;
use crate::service::{now_ms, Svc};
use listen::{Incoming, Peer};

/// Pages listening for live updates at once; more are refused (503) until one closes.
pub const MAX_EVENT_STREAMS: usize = 32;
/// How often a live page's view is looked at, and sent if it changed.
pub const EVENT_PERIOD: Duration = Duration::from_millis(500);
/// How often the usage chart takes a sample, and how many it keeps (an hour).
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(5);
/// Samples kept for the usage chart.
pub const SAMPLES: usize = 720;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// This controller's console URL (`https://ADDR` or `http://ADDR`), once it serves one.
static URL: OnceLock<(String, bool)> = OnceLock::new();

/// The console's URL and whether it is served over TLS; `None` without `--http`.
pub fn url() -> Option<(String, bool)> {
    URL.get().cloned()
}

/// Serves the console and `/metrics` on `incoming` until the process ends.
pub async fn serve(incoming: Incoming, roles: Arc<Roles>) -> std::io::Result<()> {
    let local = axum::serve::Listener::local_addr(&incoming)?;
    let scheme = if incoming.tls() { "https" } else { "http" };
    let _ = URL.set((format!("{scheme}://{}", local.addr), incoming.tls()));
    let svc = Svc(Arc::clone(&roles));
    tokio::spawn(sample(svc.clone()));
    let app = router(svc, roles);
    axum::serve(incoming, app.into_make_service_with_connect_info::<Peer>()).await
}

fn router(svc: Svc, roles: Arc<Roles>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { page("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/app.css",
            get(|| async { page("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/metrics",
            get(
                move |ConnectInfo(peer): ConnectInfo<Peer>, headers: HeaderMap| async move {
                    who(&peer, &headers)?;
                    Ok::<_, ApiError>((
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        crate::metrics::render(&roles),
                    ))
                },
            ),
        )
        .route("/login", get(login))
        .route("/logout", post(logout))
        .route("/api/state", get(state_now))
        .route("/api/events", get(events))
        .route("/api/volumes", post(create))
        .route("/api/volumes/{name}/resize", post(resize))
        .route("/api/volumes/{name}/delete", post(delete))
        .route("/api/volumes/{name}/replace-copy", post(replace_copy))
        .route("/api/leases/{id}/revoke", post(revoke))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such page") })
        .layer(axum::middleware::from_fn(json_changes))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(svc)
}

/// What every answer carries: nothing runs but the console's own files, and no other site
/// frames it.
async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Every change is sent as JSON: a page of another site cannot send that without the browser
/// asking this controller first (CORS), so it cannot make a signed-in browser change anything
/// (a session cookie is `SameSite=Strict` too, but a browser shows its client certificate to
/// any site's request).
async fn json_changes(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if req.method() == axum::http::Method::POST && !json {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a change is sent as JSON (Content-Type: application/json)",
        )
        .into_response();
    }
    next.run(req).await
}

fn page(kind: &'static str, body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, kind)], body)
}

/// A refusal: its HTTP status and the controller's words (`error`), the gRPC code it came
/// from, and what the volume is now where a change was refused for being stale.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({ "error": msg.into() }),
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        let status = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::ResourceExhausted => StatusCode::INSUFFICIENT_STORAGE,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            body: json!({ "error": s.message(), "code": format!("{:?}", s.code()) }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// The session cookie's secret, if the request carries one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == session::COOKIE)
        .map(|(_, v)| v)
}

/// Who makes the request: `Ok(None)` on a controller without identities; over TLS the
/// identity of the client's certificate or of its session, else 401 in words.
fn who(peer: &Peer, headers: &HeaderMap) -> Result<Option<Identity>, ApiError> {
    if !peer.tls {
        return Ok(None);
    }
    if let Some(id) = &peer.identity {
        return Ok(Some(id.clone()));
    }
    match cookie(headers).and_then(session::lookup) {
        Some(id) => Ok(id),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "not signed in: run `dasmesh console` with an operator certificate and open the link \
             it prints (or show a client certificate of this cluster)",
        )),
    }
}

/// The gRPC method `path` called as `id`: refused as the gRPC API refuses it.
fn request<T>(id: &Option<Identity>, path: &str, msg: T) -> Result<tonic::Request<T>, ApiError> {
    if let Some(id) = id {
        if !crate::authz::allowed(path, id.role) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "a {} certificate ({:?}) may not call {}",
                    id.role,
                    id.name,
                    path.trim_start_matches('/')
                ),
            ));
        }
    }
    let mut r = tonic::Request::new(msg);
    if let Some(id) = id {
        r.extensions_mut().insert(id.clone());
    }
    Ok(r)
}

async fn login(Query(q): Query<std::collections::HashMap<String, String>>) -> Response {
    let Some((secret, _)) = q.get("code").and_then(|c| session::redeem(c)) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "This login link is unknown, used already, or older than 5 minutes.\n\
             Run `dasmesh console` with an operator certificate for a new one.\n",
        )
            .into_response();
    };
    let secure = url().is_some_and(|(_, tls)| tls);
    let cookie = format!(
        "{}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        session::COOKIE,
        session::SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, "/".into())],
    )
        .into_response()
}

async fn logout(headers: HeaderMap) -> Response {
    if let Some(c) = cookie(&headers) {
        session::end(c);
    }
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            format!("{}=; Path=/; Max-Age=0", session::COOKIE),
        )],
    )
        .into_response()
}

fn node_json(n: &v1::Node) -> Value {
    let state = match v1::NodeState::try_from(n.state) {
        Ok(v1::NodeState::Up) => "up",
        Ok(v1::NodeState::Down) => "down",
        Ok(v1::NodeState::Gone) => "gone",
        _ => "unknown",
    };
    json!({
        "id": n.node_id, "address": n.address, "version": n.version, "state": state,
        "last_heartbeat_ms": n.last_heartbeat_ms, "failure_domain": n.failure_domain,
        "devices": n.devices.iter().map(|d| json!({
            "id": d.device_id, "path": d.path, "block_size": d.block_size, "size": d.size_bytes,
            "lendable_start": d.lendable_start, "lendable": d.lendable_length,
            "free": d.free_bytes, "read_iops": d.read_iops, "write_iops": d.write_iops,
            "mib_s": d.mib_s, "promised_iops": d.promised_iops,
            "promised_mib_s": d.promised_mib_s,
        })).collect::<Vec<_>>(),
    })
}

fn volume_json(v: &v1::Volume) -> Value {
    let state = match v1::VolumeState::try_from(v.state) {
        Ok(v1::VolumeState::Ok) => "ok",
        Ok(v1::VolumeState::Degraded) => "degraded",
        Ok(v1::VolumeState::Unavailable) => "unavailable",
        Ok(v1::VolumeState::Deleting) => "deleting",
        _ => "unknown",
    };
    let layout = v
        .layout
        .as_ref()
        .and_then(|l| dasmesh_api::Layout::try_from(l).ok())
        .map(|l| l.to_string())
        .unwrap_or_default();
    let q = v.requirements.unwrap_or_default();
    json!({
        "id": v.volume_id, "name": v.name, "size": v.size_bytes, "layout": layout,
        "state": state, "version": v.version, "epoch": v.epoch, "created_ms": v.created_ms,
        "leases": v.active_leases, "note": v.note,
        "terms": {
            "min_iops": q.min_iops, "min_mib_s": q.min_mib_s, "max_iops": q.max_iops,
            "max_mib_s": q.max_mib_s, "weight": q.weight, "price": q.price_per_gib_hour,
        },
        "extents": v.extents.iter().map(|e| json!({
            "node": e.node_id, "device": e.device_id, "offset": e.offset, "length": e.length,
            "copy": e.copy, "index": e.index, "stale": e.stale, "rebuilding": e.rebuilding,
            "rebuilt": e.rebuilt_bytes,
        })).collect::<Vec<_>>(),
    })
}

/// How the caller is named to them.
fn me(id: &Option<Identity>) -> String {
    match id {
        Some(i) => format!("{} {}", i.role, i.name),
        None => "anyone (no identities: --insecure-no-auth)".into(),
    }
}

/// The whole view a page shows, as `id` may see it (the same for everyone who may see it).
async fn view(svc: &Svc, id: &Option<Identity>) -> Result<Value, ApiError> {
    let nodes = svc
        .list_nodes(request(
            id,
            "/dasmesh.v1.Pool/ListNodes",
            v1::ListNodesRequest {},
        )?)
        .await?
        .into_inner()
        .nodes;
    let volumes = v1::volumes_server::Volumes::list(
        svc,
        request(id, "/dasmesh.v1.Volumes/List", v1::ListVolumesRequest {})?,
    )
    .await?
    .into_inner()
    .volumes;
    let leases = v1::leases_server::Leases::list(
        svc,
        request(
            id,
            "/dasmesh.v1.Leases/List",
            v1::ListLeasesRequest::default(),
        )?,
    )
    .await?
    .into_inner()
    .leases;
    let usage = svc
        .report(request(
            id,
            "/dasmesh.v1.Usage/Report",
            v1::UsageRequest::default(),
        )?)
        .await?
        .into_inner();
    let controllers = svc
        .list_controllers(request(
            id,
            "/dasmesh.v1.ControlPlane/ListControllers",
            v1::ListControllersRequest {},
        )?)
        .await?
        .into_inner();
    let mut alerts = Vec::new();
    for n in &nodes {
        if n.state == v1::NodeState::Down as i32 {
            alerts.push(format!("node {} ({}) is down", n.node_id, n.address));
        }
    }
    for v in &volumes {
        let s = v1::VolumeState::try_from(v.state).unwrap_or(v1::VolumeState::Unspecified);
        let rebuilding = v.extents.iter().filter(|e| e.rebuilding).count();
        match s {
            v1::VolumeState::Degraded => alerts.push(format!(
                "volume {:?} is degraded{}{}",
                v.name,
                if rebuilding > 0 {
                    format!(": {rebuilding} extents rebuilding")
                } else {
                    String::new()
                },
                if v.note.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", v.note)
                }
            )),
            v1::VolumeState::Unavailable => alerts.push(format!(
                "volume {:?} is unavailable: a node holding it is down",
                v.name
            )),
            _ => {}
        }
    }
    let (lendable, free) = nodes
        .iter()
        .filter(|n| n.state == v1::NodeState::Up as i32)
        .flat_map(|n| &n.devices)
        .fold((0u64, 0u64), |(l, f), d| {
            (l + d.lendable_length, f + d.free_bytes)
        });
    if lendable > 0 && free * 10 < lendable {
        alerts.push(format!("the pool is {}% used", 100 - free * 100 / lendable));
    }
    Ok(json!({
        "store": controllers.store,
        "controllers": controllers.controllers.iter().map(|c| json!({
            "url": c.url, "role": c.role, "answering": c.answering,
            // The one answering is seen now: left out, so the view changes only when
            // something does.
            "seen_ms": (!c.answering).then_some(c.seen_ms),
        })).collect::<Vec<_>>(),
        "nodes": nodes.iter().map(node_json).collect::<Vec<_>>(),
        "pool": { "lendable": lendable, "free": free },
        "volumes": volumes.iter().map(volume_json).collect::<Vec<_>>(),
        "leases": leases.iter().map(|l| json!({
            "id": l.lease_id, "volume": l.volume_name, "host": l.host_id,
            "rw": l.access == v1::Access::ReadWrite as i32, "epoch": l.epoch,
            "started_ms": l.started_ms, "expires_at_ms": l.expires_at_ms,
        })).collect::<Vec<_>>(),
        "usage": usage.records.iter().map(|u| json!({
            "lease": u.lease_id, "host": u.host_id, "volume": u.volume,
            "started_ms": u.started_ms, "ended_ms": u.ended_ms, "active": u.active,
            "read_bytes": u.read_bytes, "write_bytes": u.write_bytes,
            "read_ops": u.read_ops, "write_ops": u.write_ops,
            "gib_hours": u.gib_hours, "charge": u.charge,
            "iops": u.recent_iops, "mib_s": u.recent_mib_s,
            "promised_iops": u.promised_iops,
        })).collect::<Vec<_>>(),
        "total_charge": usage.total_charge + 0.0,
        "history": lock(&HISTORY).iter().cloned().collect::<Vec<_>>(),
        "alerts": alerts,
    }))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The usage chart's samples: time, IOPS and MiB/s of the active leases lately, charges so far.
static HISTORY: Mutex<VecDeque<Value>> = Mutex::new(VecDeque::new());

async fn sample(svc: Svc) {
    let mut t = tokio::time::interval(SAMPLE_PERIOD);
    loop {
        t.tick().await;
        let Ok(r) = svc
            .report(tonic::Request::new(v1::UsageRequest::default()))
            .await
        else {
            continue;
        };
        let r = r.into_inner();
        let active = r.records.iter().filter(|u| u.active);
        let (iops, mib_s) = active.fold((0.0, 0.0), |(i, m), u| {
            (i + u.recent_iops, m + u.recent_mib_s)
        });
        let mut h = lock(&HISTORY);
        if h.len() >= SAMPLES {
            h.pop_front();
        }
        h.push_back(json!({
            "t": now_ms(), "iops": iops, "mib_s": mib_s, "charge": r.total_charge + 0.0,
        }));
    }
}

async fn state_now(
    State(svc): State<Svc>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> ApiResult {
    let id = who(&peer, &headers)?;
    let mut v = view(&svc, &id).await?;
    v["now_ms"] = json!(now_ms());
    v["me"] = json!(me(&id));
    Ok(Json(v))
}

/// Live pages at present.
static STREAMS: AtomicUsize = AtomicUsize::new(0);

struct StreamSlot;
impl Drop for StreamSlot {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The view every live page is sent: an event's name and data (`state` and the view, or
/// `failure` and the refusal). One task makes it while any page listens, every
/// [`EVENT_PERIOD`], and publishes it when it changed, so a page costs the controller its
/// socket writes and not a view of its own each period.
static HUB: OnceLock<tokio::sync::watch::Sender<Arc<(&'static str, String)>>> = OnceLock::new();

fn hub(svc: &Svc) -> &'static tokio::sync::watch::Sender<Arc<(&'static str, String)>> {
    HUB.get_or_init(|| {
        let (tx, _) = tokio::sync::watch::channel(Arc::new(("state", String::new())));
        let (svc, out) = (svc.clone(), tx.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(EVENT_PERIOD).await;
                if out.receiver_count() == 0 {
                    continue;
                }
                // Made as the controller itself: each page's caller was checked when it opened.
                let ev = match view(&svc, &None).await {
                    Ok(v) => ("state", v.to_string()),
                    Err(e) => ("failure", e.body.to_string()),
                };
                out.send_if_modified(|now| {
                    let changed = **now != ev;
                    if changed {
                        *now = Arc::new(ev);
                    }
                    changed
                });
            }
        });
        tx
    })
}

async fn events(
    State(svc): State<Svc>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let id = who(&peer, &headers)?;
    // As the caller, now: a page that may not look is told at once, in words, and a page that
    // may gets the view at once.
    let first = view(&svc, &id).await?.to_string();
    if STREAMS.fetch_add(1, Ordering::Relaxed) >= MAX_EVENT_STREAMS {
        STREAMS.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_EVENT_STREAMS} pages are following this controller already: close one"),
        ));
    }
    let slot = StreamSlot;
    let session = (peer.identity.is_none() && peer.tls)
        .then(|| cookie(&headers).map(str::to_string))
        .flatten();
    let mut views = hub(&svc).subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, std::convert::Infallible>>(2);
    tokio::spawn(async move {
        let _slot = slot;
        let hello = [
            Event::default()
                .event("me")
                .data(json!(me(&id)).to_string()),
            Event::default().event("state").data(first),
        ];
        for ev in hello {
            if tx.send(Ok(ev)).await.is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let ev = Arc::clone(&views.borrow_and_update());
                    if tx.send(Ok(Event::default().event(ev.0).data(&ev.1))).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
                _ = tokio::time::sleep(EVENT_PERIOD * 10) => {}
            }
            // A session that ended (signed out, expired) stops its page's updates.
            if session
                .as_deref()
                .is_some_and(|s| session::lookup(s).is_none())
            {
                return;
            }
        }
    });
    Ok(Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

/// A size: bytes as a number, or text as the CLI reads it (`10G`, `512M`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn bytes(&self) -> Result<u64, ApiError> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(t) => dasmesh_wire::units::parse_size(t.trim()).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("size {:?}: {e}", crate::state::validate::truncate(t, 40)),
                )
            }),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    size: Size,
    #[serde(default = "single")]
    layout: String,
    #[serde(default)]
    min_iops: u64,
    #[serde(default)]
    min_mib_s: u64,
    #[serde(default)]
    max_iops: u64,
    #[serde(default)]
    max_mib_s: u64,
    #[serde(default)]
    weight: u32,
    #[serde(default)]
    price_per_gib_hour: f64,
    #[serde(default)]
    spread_failure_domains: bool,
}

fn single() -> String {
    "single".into()
}

/// The JSON body, or 400 in words (axum's own rejection is plain text).
fn body<T: serde::de::DeserializeOwned>(
    b: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| ApiError::new(e.status(), format!("the request: {}", e.body_text())))
}

async fn create(
    State(svc): State<Svc>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    b: Result<Json<CreateBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let id = who(&peer, &headers)?;
    let b = body(b)?;
    let layout: dasmesh_api::Layout =
        b.layout
            .trim()
            .parse()
            .map_err(|e: dasmesh_api::LayoutError| {
                ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
            })?;
    let r = v1::CreateVolumeRequest {
        name: b.name,
        size_bytes: b.size.bytes()?,
        layout: Some(layout.into()),
        requirements: Some(v1::Requirements {
            min_iops: b.min_iops,
            min_mib_s: b.min_mib_s,
            price_per_gib_hour: b.price_per_gib_hour,
            spread_failure_domains: b.spread_failure_domains,
            max_iops: b.max_iops,
            max_mib_s: b.max_mib_s,
            weight: b.weight,
        }),
    };
    let v = svc
        .create(request(&id, "/dasmesh.v1.Volumes/Create", r)?)
        .await?;
    Ok(Json(volume_json(v.get_ref())))
}

/// A refused change to volume `name`: if it was refused for being stale, the volume as it
/// is now goes with the refusal.
async fn refused(svc: &Svc, id: &Option<Identity>, name: &str, s: tonic::Status) -> ApiError {
    let stale = s.code() == Code::Aborted;
    let mut e = ApiError::from(s);
    if stale {
        let get = request(
            id,
            "/dasmesh.v1.Volumes/Get",
            v1::GetVolumeRequest { name: name.into() },
        );
        if let Ok(r) = get {
            if let Ok(v) = svc.get(r).await {
                e.body["current"] = volume_json(v.get_ref());
            }
        }
    }
    e
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeBody {
    size: Size,
    version: u64,
}

async fn resize(
    State(svc): State<Svc>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(name): Path<String>,
    b: Result<Json<ResizeBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let id = who(&peer, &headers)?;
    let b = body(b)?;
    let r = v1::ResizeVolumeRequest {
        name: name.clone(),
        size_bytes: b.size.bytes()?,
        expect_version: version(b.version)?,
    };
    match svc
        .resize(request(&id, "/dasmesh.v1.Volumes/Resize", r)?)
        .await
    {
        Ok(v) => Ok(Json(volume_json(v.get_ref()))),
        Err(s) => Err(refused(&svc, &id, &name, s).await),
    }
}

/// Every change from the console names the version it was made from (0 would skip the
/// check).
fn version(v: u64) -> Result<u64, ApiError> {
    match v {
        0 => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a change carries the version of the volume it was made from (\"version\")",
        )),
        v => Ok(v),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    version: u64,
}

async fn delete(
    State(svc): State<Svc>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(name): Path<String>,
    b: Result<Json<DeleteBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let id = who(&peer, &headers)?;
    let b = body(b)?;
    let r = v1::DeleteVolumeRequest {
        name: name.clone(),
        expect_version: version(b.version)?,
    };
    match svc
        .delete(request(&id, "/dasmesh.v1.Volumes/Delete", r)?)
        .await
    {
        Ok(_) => Ok(Json(json!({ "deleted": name }))),
        Err(s) => Err(refused(&svc, &id, &name, s).await),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplaceBody {
    copy: u32,
    #[serde(default)]
    node: u64,
    version: u64,
}

async fn replace_copy(
    State(svc): State<Svc>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(name): Path<String>,
    b: Result<Json<ReplaceBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let id = who(&peer, &headers)?;
    let b = body(b)?;
    let r = v1::ReplaceCopyRequest {
        name: name.clone(),
        copy: b.copy,
        node_id: b.node,
        expect_version: version(b.version)?,
    };
    match svc
        .replace_copy(request(&id, "/dasmesh.v1.Volumes/ReplaceCopy", r)?)
        .await
    {
        Ok(v) => Ok(Json(volume_json(v.get_ref()))),
        Err(s) => Err(refused(&svc, &id, &name, s).await),
    }
}

async fn revoke(
    State(svc): State<Svc>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(lease): Path<u64>,
) -> ApiResult {
    let id = who(&peer, &headers)?;
    // Lease ids are never reused: a revoke names the lease the page showed, or one that has
    // ended since (404, in words).
    let r = svc
        .revoke(request(
            &id,
            "/dasmesh.v1.Leases/Revoke",
            v1::RevokeRequest { lease_id: lease },
        )?)
        .await?;
    Ok(Json(
        json!({ "revoked": lease, "new_epoch": r.get_ref().new_epoch }),
    ))
}
