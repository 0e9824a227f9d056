//! Routes of the admin port and the JSON API's handlers. Every error is a
//! status code with `{"error": "..."}` saying what to fix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::info;

use super::auth::{AuthError, ConsoleRole, Principal, SESSION_COOKIE};
use super::gather::{self, GatherError, Gathered};
use super::{cluster, pages, prometheus, AdminState, Peer};
use crate::broker::message::Message;
use crate::broker::Destination;
use crate::ha::Role;
use crate::security::Right;
use crate::server::admin_send::{AdminSend, SendRefusal};
use crate::server::shard::{AdminAnswer, AdminOp};

type St = State<Arc<AdminState>>;

pub fn router(state: Arc<AdminState>) -> Router {
    // A Send carries one message body, up to the broker's frame limit.
    let send_limit = state.max_message_bytes().saturating_add(64 * 1024);
    Router::new()
        .route("/", get(pages::index))
        .route("/console.js", get(pages::script))
        .route("/console.css", get(pages::style))
        .route("/openapi.json", get(pages::openapi))
        .route("/status", get(status))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/overview", get(overview))
        .route("/api/queues", get(queues))
        .route("/api/topics", get(topics))
        .route(
            "/api/subscribers",
            get(subscribers).delete(delete_subscription),
        )
        .route("/api/connections", get(connections))
        .route("/api/cluster", get(cluster_view))
        .route("/api/queues/{name}", delete(remove::<true>))
        .route("/api/queues/{name}/messages", get(browse))
        .route("/api/queues/{name}/purge", post(remove::<false>))
        .route(
            "/api/send",
            post(send).layer(DefaultBodyLimit::max(send_limit)),
        )
        .fallback(not_found)
        .with_state(state)
}

/// An API failure: a status and a message for the operator.
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(code: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError(code, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        let code = match e {
            AuthError::Disabled => StatusCode::FORBIDDEN,
            AuthError::Missing | AuthError::Wrong => StatusCode::UNAUTHORIZED,
            AuthError::NoRole(_) | AuthError::ReadOnly(_) | AuthError::Csrf => {
                StatusCode::FORBIDDEN
            }
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<GatherError> for ApiError {
    fn from(e: GatherError) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn allow(
    state: &AdminState,
    headers: &HeaderMap,
    method: &Method,
    need: ConsoleRole,
    peer: SocketAddr,
) -> ApiResult<Principal> {
    Ok(state
        .auth
        .check(headers, method, need, &peer.to_string())
        .await?)
}

/// `[[authorization]]` applies to the console as to STOMP clients: browse
/// needs `read`, send `write`, purge and delete `admin` on the destination
/// (and a destination the broker does not know yet needs `admin` to be
/// made, as ActiveMQ's authorizationPlugin has it).
fn authorize(
    state: &AdminState,
    who: &Principal,
    dest: &Destination,
    right: Right,
) -> ApiResult<()> {
    match state.security.decide(Some(&who.user), dest) {
        Some(d) if !d.allows(right) => {
            let why = d.denial(right, dest);
            tracing::warn!(login = %who.login, destination = %dest, right = right.as_str(), "admin: {why}");
            Err(ApiError::new(StatusCode::FORBIDDEN, why))
        }
        _ => Ok(()),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not found; see /openapi.json for the API",
    )
}

// ---- public: status, health, metrics -------------------------------------

#[derive(Serialize)]
struct Status<'a> {
    role: &'a str,
    version: &'a str,
    mode: &'a str,
    uptime_secs: u64,
    shards: usize,
    connections: usize,
    memory_used_bytes: usize,
    store_used_bytes: u64,
    /// In force: `store.limit_bytes`, capped at start to the file system.
    store_limit_bytes: u64,
    /// Persistent producers are paused for the store (limit or full disk).
    store_full: bool,
    /// The journal's file system is full (no segment can be made or is free).
    store_disk_full: bool,
    destinations: Vec<crate::broker::shard::DestinationStats>,
}

async fn status(State(state): St) -> Json<serde_json::Value> {
    let g = gather::gather(&state).await;
    let s = Status {
        role: state.role.get().as_str(),
        version: env!("CARGO_PKG_VERSION"),
        mode: &state.mode,
        uptime_secs: state.started.elapsed().as_secs(),
        shards: g.shards,
        connections: g.connections.len(),
        memory_used_bytes: state.usage.used(),
        store_used_bytes: state.store_usage.used_bytes.load(Ordering::Relaxed),
        store_limit_bytes: state.store_usage.limit_bytes.load(Ordering::Relaxed),
        store_full: state.store_usage.full(),
        store_disk_full: state.store_usage.disk_full(),
        destinations: g.destinations,
    };
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if state.mode == "zk" {
        // zk mode: epoch, log position, commit point, each standby's lag.
        v["replication"] = serde_json::to_value(state.replication.view()).unwrap_or_default();
    }
    Json(v)
}

/// 200 only on the master, so a load balancer can route by it.
async fn healthz(State(state): St) -> Response {
    let role = state.role.get();
    let code = if role == Role::Master {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({ "role": role.as_str() }))).into_response()
}

async fn metrics(State(state): St) -> Response {
    let gathered = gather::gather(&state).await;
    let scrape = prometheus::Scrape {
        gathered,
        is_master: state.role.get() == Role::Master,
        memory_used_bytes: state.usage.used() as u64,
        memory_limit_bytes: state.memory_limit_bytes as u64,
        store_used_bytes: state.store_usage.used_bytes.load(Ordering::Relaxed),
        store_limit_bytes: state.store_usage.limit_bytes.load(Ordering::Relaxed),
        store_full: state.store_usage.full(),
        uptime_secs: state.started.elapsed().as_secs(),
        db: (state.mode == "mysql" || state.mode == "postgres").then(|| {
            let d = &state.store_usage.db;
            prometheus::DbFigures {
                transactions: d.transactions.load(Ordering::Relaxed),
                rows: d.rows.load(Ordering::Relaxed),
                commit_us: d.commit_us.load(Ordering::Relaxed),
                conflicts: d.conflicts.load(Ordering::Relaxed),
                overlapped: d.overlapped.load(Ordering::Relaxed),
                failures: d.failures.load(Ordering::Relaxed),
                unavailable_lanes: state.store_usage.unavailable.load(Ordering::Relaxed) as u64,
            }
        }),
    };
    match prometheus::render(scrape) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics")
            .into_response(),
    }
}

// ---- login ----------------------------------------------------------------

#[derive(Deserialize)]
struct LoginForm {
    login: String,
    passcode: String,
}

async fn login(
    State(state): St,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    Json(form): Json<LoginForm>,
) -> ApiResult<Response> {
    let (token, p) = state
        .auth
        .login(&form.login, &form.passcode, &peer.to_string())
        .await?;
    info!(login = %p.login, role = ?p.role, %peer, "admin: console login");
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        state.console.session_ttl_secs
    );
    Ok(([(header::SET_COOKIE, cookie)], Json(p)).into_response())
}

async fn logout(State(state): St, headers: HeaderMap) -> Response {
    state.auth.logout(&headers);
    let cookie = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Json(json!({ "ok": true }))).into_response()
}

async fn me(
    State(state): St,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Json<Principal>> {
    Ok(Json(
        allow(&state, &headers, &method, ConsoleRole::Read, peer).await?,
    ))
}

// ---- views ----------------------------------------------------------------

#[derive(Serialize)]
struct Overview {
    role: &'static str,
    mode: String,
    version: &'static str,
    identity: String,
    uptime_secs: u64,
    shards: usize,
    silent_shards: usize,
    connections: usize,
    destinations: usize,
    pending: u64,
    enqueued: u64,
    dequeued: u64,
    memory_used_bytes: usize,
    memory_limit_bytes: usize,
    store_used_bytes: u64,
    store_limit_bytes: u64,
    store_full: bool,
    receipts: u64,
    receipt_p50_us: Option<u64>,
    receipt_p99_us: Option<u64>,
    /// Who holds mastership, as the mode knows it.
    ha: serde_json::Value,
    peers: Vec<String>,
}

async fn overview(
    State(state): St,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Json<Overview>> {
    allow(&state, &headers, &method, ConsoleRole::Read, peer).await?;
    let g = gather::gather(&state).await;
    let ha = ha_view(&state).await;
    Ok(Json(overview_of(&state, &g, ha)))
}

fn overview_of(state: &AdminState, g: &Gathered, ha: serde_json::Value) -> Overview {
    let sum = |f: fn(&crate::broker::shard::DestinationStats) -> u64| {
        g.destinations.iter().map(f).sum::<u64>()
    };
    Overview {
        role: state.role.get().as_str(),
        mode: state.mode.clone(),
        version: env!("CARGO_PKG_VERSION"),
        identity: state.identity.clone(),
        uptime_secs: state.started.elapsed().as_secs(),
        shards: g.shards,
        silent_shards: g.silent_shards,
        connections: g.connections.len(),
        destinations: g.destinations.len(),
        pending: sum(|d| d.pending),
        enqueued: sum(|d| d.enqueued),
        dequeued: sum(|d| d.dequeued),
        memory_used_bytes: state.usage.used(),
        memory_limit_bytes: state.memory_limit_bytes,
        store_used_bytes: state.store_usage.used_bytes.load(Ordering::Relaxed),
        store_limit_bytes: state.store_usage.limit_bytes.load(Ordering::Relaxed),
        store_full: state.store_usage.full(),
        receipts: g.receipt_latency.count(),
        receipt_p50_us: g.receipt_latency.quantile_us(0.5),
        receipt_p99_us: g.receipt_latency.quantile_us(0.99),
        ha,
        peers: state.console.peers.clone(),
    }
}

/// Who holds mastership: in file mode the store's epoch record (read by
/// every broker, standbys included); in the database modes the lease row.
async fn ha_view(state: &AdminState) -> serde_json::Value {
    match &state.store_dir {
        Some(dir) if state.mode == "file" => {
            let dir = dir.clone();
            let rec = tokio::task::spawn_blocking(move || crate::ha::epoch::read(&dir))
                .await
                .ok()
                .and_then(|r| r.ok())
                .flatten();
            match rec {
                Some(r) => {
                    json!({ "mechanism": "file lock + epoch", "epoch": r.epoch, "holder": r.owner })
                }
                None => json!({ "mechanism": "file lock + epoch", "epoch": null, "holder": null }),
            }
        }
        _ if state.mode == "mysql" || state.mode == "postgres" => {
            json!({ "mechanism": "lease row in ACTIVEMQ_LOCK", "holder": if state.role.get() == Role::Master { Some(state.identity.clone()) } else { None } })
        }
        _ if state.mode == "zk" => {
            let v = state.replication.view();
            json!({
                "mechanism": "ZooKeeper election + quorum-replicated log",
                "epoch": v.epoch,
                "position": { "epoch": v.position.0, "index": v.position.1 },
                "commit": v.commit,
                "following": v.following,
                "replicas": v.replicas,
            })
        }
        _ => json!({ "mechanism": "none (memory mode)" }),
    }
}

macro_rules! list_view {
    ($name:ident, $pick:expr) => {
        async fn $name(
            State(state): St,
            ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
            method: Method,
            headers: HeaderMap,
        ) -> ApiResult<Json<serde_json::Value>> {
            allow(&state, &headers, &method, ConsoleRole::Read, peer).await?;
            gather::require_master(&state)?;
            let g = gather::gather(&state).await;
            let pick: fn(Gathered) -> serde_json::Value = $pick;
            Ok(Json(pick(g)))
        }
    };
}

list_view!(queues, |g| json!(g
    .destinations
    .into_iter()
    .filter(|d| d.kind == "queue")
    .collect::<Vec<_>>()));
list_view!(topics, |g| json!(g
    .destinations
    .into_iter()
    .filter(|d| d.kind == "topic")
    .collect::<Vec<_>>()));
list_view!(subscribers, |g| json!(g.subscribers));
list_view!(connections, |g| json!(g.connections));

async fn cluster_view(
    State(state): St,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    allow(&state, &headers, &method, ConsoleRole::Read, peer).await?;
    Ok(Json(json!(cluster::view(&state).await)))
}

// ---- actions on queues ----------------------------------------------------

/// A queue named in a path: the bare name (`orders`) or the STOMP form
/// (`/queue/orders`, percent-encoded).
fn queue_of(name: &str) -> ApiResult<Destination> {
    let full = if name.starts_with("/queue/") || name.starts_with("/topic/") {
        name.to_string()
    } else {
        format!("/queue/{name}")
    };
    Destination::parse(&full).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
}

/// `subject`: what the action removed from (a queue, a subscription).
fn answer_error(a: AdminAnswer, subject: &str) -> ApiError {
    match a {
        AdminAnswer::Refused(r) => {
            use crate::broker::shard::AdminRefusal::*;
            let code = match r {
                NotFound(_) => StatusCode::NOT_FOUND,
                InUse(..) => StatusCode::CONFLICT,
                NotAQueue(..) | NotATopic(_) => StatusCode::BAD_REQUEST,
            };
            ApiError::new(code, r.to_string())
        }
        AdminAnswer::NotConfirmed(n) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("{n} message(s) left {subject}, but the store did not confirm it in time; after a failover they may be back"),
        ),
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "unexpected answer"),
    }
}

#[derive(Deserialize)]
struct BrowseQuery {
    max: Option<usize>,
}

async fn browse(
    State(state): St,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    method: Method,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BrowseQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let who = allow(&state, &headers, &method, ConsoleRole::Read, peer).await?;
    let dest = queue_of(&name)?;
    authorize(&state, &who, &dest, Right::Read)?;
    let max = q.max.unwrap_or(50).clamp(1, state.console.browse_max);
    match gather::admin_op(&state, &dest, AdminOp::Browse(dest.clone(), max)).await? {
        AdminAnswer::Browsed(msgs) => {
            let msgs: Vec<serde_json::Value> = msgs
                .into_iter()
                .map(|m| {
                    let mut v = serde_json::to_value(&m).unwrap_or_default();
                    v["message_id"] = json!(format!("ID:brokk-{}", m.id));
                    v["id"] = json!(m.id.to_string());
                    v
                })
                .collect();
            Ok(Json(
                json!({ "destination": dest.to_string(), "messages": msgs }),
            ))
        }
        other => Err(answer_error(other, &dest.to_string())),
    }
}

/// Purge (`DELETE` false) or delete a queue (admin role).
async fn remove<const DELETE: bool>(
    State(state): St,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    method: Method,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let who = allow(&state, &headers, &method, ConsoleRole::Admin, peer).await?;
    let dest = queue_of(&name)?;
    authorize(&state, &who, &dest, Right::Admin)?;
    let op = if DELETE {
        AdminOp::Delete(dest.clone())
    } else {
        AdminOp::Purge(dest.clone())
    };
    match gather::admin_op(&state, &dest, op).await? {
        AdminAnswer::Removed(n) => {
            if DELETE {
                state.security.known.remove(&dest);
            }
            info!(login = %who.login, destination = %dest, removed = n, deleted = DELETE, "admin: removed messages");
            Ok(Json(
                json!({ "destination": dest.to_string(), "removed": n, "deleted": DELETE }),
            ))
        }
        other => Err(answer_error(other, &dest.to_string())),
    }
}

#[derive(Deserialize)]
struct SubscriptionQuery {
    topic: String,
    client_id: String,
    name: String,
}

/// Deletes an offline durable subscription and its messages (admin role;
/// `admin` on the topic under `[[authorization]]`).
async fn delete_subscription(
    State(state): St,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    method: Method,
    headers: HeaderMap,
    Query(q): Query<SubscriptionQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let who = allow(&state, &headers, &method, ConsoleRole::Admin, peer).await?;
    let topic = Destination::parse(&q.topic)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    authorize(&state, &who, &topic, Right::Admin)?;
    let d = crate::broker::ops::DurableName {
        client_id: q.client_id,
        name: q.name,
    };
    match gather::admin_op(
        &state,
        &topic,
        AdminOp::DeleteSubscription(topic.clone(), d.clone()),
    )
    .await?
    {
        AdminAnswer::Removed(n) => {
            info!(login = %who.login, topic = %topic, client_id = %d.client_id, name = %d.name, removed = n, "admin: deleted a durable subscription");
            Ok(Json(
                json!({ "topic": topic.to_string(), "client_id": d.client_id,
                "name": d.name, "removed": n, "deleted": true }),
            ))
        }
        other => Err(answer_error(
            other,
            &format!("the subscription {}:{} on {topic}", d.client_id, d.name),
        )),
    }
}

// ---- send -----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendForm {
    destination: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "one")]
    count: usize,
    #[serde(default = "yes")]
    persistent: bool,
    #[serde(default = "default_priority")]
    priority: u8,
    /// Relative time to live; 0 or absent = never expires.
    #[serde(default)]
    expires_in_ms: u64,
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_priority() -> u8 {
    4
}

/// Headers a Send form sets through its own fields, or that only the
/// broker sets.
const RESERVED_HEADERS: &[&str] = &[
    "brokk-origin",
    "brokk-body",
    "destination",
    "receipt",
    "transaction",
    "content-length",
    "message-id",
    "subscription",
    "ack",
    "persistent",
    "priority",
    "expires",
];

async fn send(
    State(state): St,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let who = allow(&state, &headers, &method, ConsoleRole::Admin, peer).await?;
    let form: SendForm = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad send request: {e}")))?;
    let destination = Destination::parse(&form.destination)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    authorize(&state, &who, &destination, Right::Write)?;
    if form.count == 0 || form.count > state.console.send_max_count {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "count must be 1..={} (admin.send_max_count)",
                state.console.send_max_count
            ),
        ));
    }
    if form.priority > 9 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "priority must be 0..=9",
        ));
    }
    if form.body.len() > state.max_message_bytes() {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "body is {} bytes; the limit is {} (limits.max_frame_size)",
                form.body.len(),
                state.max_message_bytes()
            ),
        ));
    }
    let each = form.body.len()
        + form
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if each.saturating_mul(form.count) > state.console.send_max_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} copies of {each} bytes is more than admin.send_max_bytes ({})",
                form.count, state.console.send_max_bytes
            ),
        ));
    }
    let mut properties = Vec::with_capacity(form.headers.len());
    for (k, v) in &form.headers {
        let bad = |c: char| c == '\n' || c == '\r' || c == '\0';
        if k.is_empty() || k.contains(':') || k.contains(bad) || v.contains(bad) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("header '{k}': names must be non-empty without ':', and neither may hold a line break or NUL"),
            ));
        }
        if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("header '{k}' is set by the form's own fields or by the broker"),
            ));
        }
        properties.push((
            Bytes::copy_from_slice(k.as_bytes()),
            Bytes::copy_from_slice(v.as_bytes()),
        ));
    }
    let body = Bytes::from(form.body);
    let size = Message::footprint(&properties, &body);
    if size > state.max_message_bytes() {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the message is {size} bytes with its headers; the limit is {} (limits.max_frame_size, or what the database takes in one statement)",
                state.max_message_bytes()
            ),
        ));
    }
    let expires_ms = if form.expires_in_ms == 0 {
        0
    } else {
        crate::broker::message::now_ms().saturating_add(form.expires_in_ms)
    };
    let req = AdminSend {
        destination: destination.clone(),
        properties,
        body,
        persistent: form.persistent,
        priority: form.priority,
        expires_ms,
        count: form.count,
    };
    match gather::send(&state, req).await? {
        Ok(n) => {
            state.security.known.insert(destination.clone());
            info!(login = %who.login, destination = %destination, count = n, "admin: sent");
            Ok(Json(
                json!({ "destination": destination.to_string(), "sent": n }),
            ))
        }
        Err(e @ SendRefusal::Full) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
        Err(e) => Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string())),
    }
}
