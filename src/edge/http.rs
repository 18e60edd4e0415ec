//! The HTTP surface: the WebSocket upgrade, the REST API beside it, the operational
//! endpoints (`/health`, `/ready`, `/live`, `/metrics`), and outside production the
//! browser demo ([`crate::edge::demo`]).

use std::collections::HashMap;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::cluster::hub::Subscription;
use crate::edge::session;
use crate::foundation::auth::Identity;
use crate::foundation::error::{ApiError, Code, DbError};
use crate::foundation::protocol::ConversationId;
use crate::ops::stats;
use crate::read::store;
use crate::requests::{self, Request};
use crate::state::{App, SocketSlot};

pub(crate) fn router(app: App) -> Router {
    let ops_elsewhere = app.config.ops_listen.is_some();
    // A request body carries what one socket frame would, so it has the same limit.
    let body_limit = DefaultBodyLimit::max(app.config.max_frame_bytes);
    let mut router = Router::new()
        .route("/ws", get(upgrade))
        .route("/api/conversations", get(api_conversations))
        .route(
            "/api/conversations/{id}/messages",
            get(api_history).post(api_send),
        )
        .route(
            "/api/conversations/{id}/messages/{cseq}",
            patch(api_edit).delete(api_delete),
        )
        .route(
            "/api/conversations/{id}/messages/{cseq}/reactions",
            post(api_react),
        )
        .route("/api/conversations/{id}/receipts", get(api_receipts))
        .route("/api/search", get(api_search))
        .route("/ready", get(ready))
        .route("/live", get(live));
    // With ops_listen, the figures that name workers and pids are served there alone.
    if app.config.ops_listen.is_none() {
        router = router
            .route("/health", get(health))
            .route("/metrics", get(metrics));
    }
    // The browser demo and its sign-in, only while development sign-in is open (see
    // demo.rs and `dev_sign_in`).
    if app.config.dev_sign_in_open() {
        router = router.merge(crate::edge::demo::router());
    }
    let routes = router
        .fallback(move || async move {
            ApiError::not_found(if ops_elsewhere {
                "no such endpoint: see PROTOCOL.md for /ws, /api, /ready, /live (/health and \
                 /metrics are on the operator's address, ops_listen)"
            } else {
                "no such endpoint: see PROTOCOL.md for /ws, /api, /health, /ready, /live, /metrics"
            })
        })
        .layer(body_limit)
        .with_state(app);
    // axum adds `Allow` to a 405 after a route's own layers have run, so the error body
    // is put on outside the routes, where the header is there to read.
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::map_response(method_not_allowed))
}

/// `ops_listen`'s routes: `/health` and `/metrics` (which name the worker and its pid, and
/// count everything), with `/ready` and `/live` beside them, for an address the public
/// does not reach.
pub(crate) fn ops_router(app: App) -> Router {
    let routes = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(live))
        .fallback(|| async {
            ApiError::not_found("no such endpoint here: /health, /metrics, /ready, /live")
        })
        .with_state(app);
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::map_response(method_not_allowed))
}

/// The router answers a known path asked with a method it does not serve with an empty
/// 405; give it the error body every other refusal has, keeping its `Allow` header.
async fn method_not_allowed(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let allow = response
        .headers()
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let e = ApiError::bad_request(format!("method not allowed on this path: it takes {allow}"));
    let mut out = (StatusCode::METHOD_NOT_ALLOWED, axum::Json(e.body())).into_response();
    if let Ok(v) = allow.parse() {
        out.headers_mut().insert(header::ALLOW, v);
    }
    out
}

/// An extractor's refusal (a path segment or query that is not valid UTF-8, a repeated
/// query parameter, a request to /ws that is not an upgrade) as a documented error.
fn refused(what: &str, detail: String) -> ApiError {
    ApiError::bad_request(format!("{what}: {detail}"))
}

/// The token from `Authorization: Bearer …`, or from `?token=` for browsers.
fn token<'a>(headers: &'a HeaderMap, query: &'a HashMap<String, String>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .or_else(|| query.get("token").map(String::as_str))
}

fn authenticate(
    app: &App,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Identity, ApiError> {
    let token = token(headers, query).ok_or_else(|| {
        ApiError::new(
            Code::Unauthorized,
            "no token: send Authorization: Bearer <jwt> or ?token=<jwt>",
        )
    })?;
    app.auth.verify(token)
}

async fn upgrade(
    State(app): State<App>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let refuse = |app: &App, e: ApiError| {
        app.metrics.refused_connections.inc();
        e.into_response()
    };
    let (identity, after, ws) = match admit(&app, &headers, query, ws) {
        Ok(admitted) => admitted,
        Err(e) => return refuse(&app, e),
    };
    let slot = match take_slot(&app) {
        Ok(slot) => slot,
        Err(e) => return refuse(&app, e),
    };
    // Subscribe before reading the head, so no event falls between the two.
    let sub = match subscribe(&app, &identity) {
        Ok(sub) => sub,
        Err(e) => return refuse(&app, e),
    };
    let head = match head_at_connect(&app, &identity).await {
        Ok(head) => head,
        Err(e) => return refuse(&app, e),
    };
    // The feed starts at what the session starts from, so that another worker's
    // notification fetches only what is new.
    app.hub.advance(identity.user.as_str(), head);
    let config = &app.config;
    let tracker = app.sessions.clone();
    ws.read_buffer_size(config.ws_read_buffer_bytes)
        .write_buffer_size(0)
        // No cap of its own: the session's writer hands tungstenite one frame at a time and
        // waits for it to be written, so its buffer holds at most the frame in progress,
        // and the outbox bounds the rest. A cap here would break a reply larger than it.
        .max_write_buffer_size(usize::MAX)
        .max_message_size(config.max_frame_bytes)
        .max_frame_size(config.max_frame_bytes)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                session::run(socket, app, identity, sub, head, after).await;
                drop(slot);
            })
        })
}

/// A well-formed upgrade with a valid token, to a worker that is not shutting down; and
/// the `?after=N` the session is to start from, if given.
fn admit(
    app: &App,
    headers: &HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<(Identity, Option<i64>, WebSocketUpgrade), ApiError> {
    let Query(query) = query.map_err(|e| refused("query", e.body_text()))?;
    let identity = authenticate(app, headers, &query)?;
    let after = match query.get("after") {
        None => None,
        Some(a) => match a.parse::<i64>() {
            Ok(n) if n >= 0 => Some(n),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "after: must be a whole number, 0 or more (the last seq the client has \
                     seen), got {a:?}"
                )))
            }
        },
    };
    let ws = ws.map_err(|e| refused("/ws", e.body_text()))?;
    if app.shutdown.is_cancelled() {
        let mut e = ApiError::new(
            Code::NotReady,
            "this worker is shutting down: connect to another",
        );
        e.retry_after_ms = Some(1_000);
        return Err(e);
    }
    Ok((identity, after, ws))
}

/// One of the worker's `max_connections` places.
fn take_slot(app: &App) -> Result<SocketSlot, ApiError> {
    app.try_take_slot().ok_or_else(|| {
        let mut e = ApiError::new(
            Code::AtCapacity,
            format!(
                "this worker holds its limit of {} sockets: retry later or elsewhere",
                app.config.max_connections
            ),
        );
        e.retry_after_ms = Some(5_000);
        e
    })
}

/// The user's feed in the hub, if the user holds fewer than `max_sockets_per_user` here.
fn subscribe(app: &App, identity: &Identity) -> Result<Subscription, ApiError> {
    let max_sockets = app.config.max_sockets_per_user;
    app.hub
        .try_subscribe(&identity.user, app.next_session_id(), max_sockets)
        .ok_or_else(|| {
            let mut e = ApiError::new(
                Code::RateLimited,
                format!(
                    "you hold {max_sockets} sockets on this worker, the most one user may: close one first"
                ),
            );
            e.retry_after_ms = Some(5_000);
            app.metrics.rate_limited.inc();
            e
        })
}

/// Records the user (and display name) and reads the head of the user's stream.
async fn head_at_connect(app: &App, identity: &Identity) -> Result<i64, ApiError> {
    store::touch_user(&app.db, &identity.user, identity.name.as_deref())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "no database answer at connect");
            // A pool that lent no connection in time means a busy worker (a reconnect
            // storm), not a database that is down: say which, so nobody pages for it.
            let message = match e {
                DbError::Pool(deadpool_postgres::PoolError::Timeout(_)) => {
                    "this worker's database connections are all busy: retry shortly"
                }
                _ => "the database is unreachable: retry shortly",
            };
            let mut e = ApiError::new(Code::NotReady, message);
            e.retry_after_ms = Some(1_000);
            e
        })
}

/// The HTTP API's identity: the same token as the socket, in `Authorization`; each user
/// has the same rate limit as a socket.
async fn api_identity(app: &App, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let identity = authenticate(app, headers, &HashMap::new())?;
    app.rate_limits
        .take(identity.user.as_str())
        .map_err(|ms| app.rate_limits.refusal(&app.metrics, ms))?;
    store::touch_user(&app.db, &identity.user, identity.name.as_deref()).await?;
    Ok(identity)
}

#[derive(Deserialize)]
struct ConversationsQuery {
    limit: Option<String>,
    before: Option<String>,
}

async fn api_conversations(
    State(app): State<App>,
    headers: HeaderMap,
    q: Result<Query<ConversationsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = api_identity(&app, &headers).await?;
    let Query(q) = q.map_err(|e| refused("query", e.body_text()))?;
    // The fields a socket would send, through the same parser.
    let mut fields = Map::new();
    if let Some(l) = parse_int("limit", q.limit.as_ref())? {
        fields.insert("limit".into(), l.into());
    }
    if let Some(b) = q.before.filter(|b| !b.is_empty()) {
        fields.insert("before".into(), b.into());
    }
    let request = Request::parse_body("conversations", fields, app.limits())?;
    answer(&app, &id, request).await
}

/// Runs `request` for the HTTP API the way a socket runs it: its reply's worst case is
/// charged to the user's share of the worker's budget first (see
/// `foundation::budget`), and the charge, shrunk to the encoded body, is held by the body
/// until hyper has taken it all (hyper's own buffer aside), so that clients that stop
/// reading cannot pin memory here either.
async fn answer(app: &App, identity: &Identity, request: Request) -> Result<Response, ApiError> {
    let account = app.budget.account(identity.user.as_str());
    // Replies being written to this user's HTTP clients at once, at most as many as one
    // socket's requests in flight: each holds what hyper buffers beyond its charge.
    let slot = account
        .http_slot(app.config.max_inflight_requests)
        .ok_or_else(|| {
            app.metrics.rate_limited.inc();
            let mut e = ApiError::new(
                Code::RateLimited,
                format!(
                    "{} replies of the HTTP API are still on their way to you \
                     (max_inflight_requests): read them, then retry",
                    app.config.max_inflight_requests
                ),
            );
            e.retry_after_ms = Some(1_000);
            e
        })?;
    let wait = std::time::Duration::from_millis(app.config.outbound_stall_ms);
    let mut charge = account
        .charge(request.reply_bytes(&app.sizes), wait)
        .await
        .map_err(|short| session::over_budget(app, short))?;
    let owed = request.is_write();
    let result = requests::handle(app.services(), &identity.user, request).await?;
    let body = serde_json::to_vec(&result).expect("answers serialise");
    if owed {
        charge.settle_anyway(body.len());
    } else {
        charge
            .settle(body.len())
            .map_err(|short| session::over_budget(app, short))?;
    }
    let mut response = axum::body::Body::new(ChargedBody {
        data: body.into(),
        at: 0,
        _held: (charge, slot),
    })
    .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// How much of a reply's body hyper is handed at a time. hyper asks for the next chunk
/// only when its write buffer has room, and drops the body once it has the last one: in
/// chunks, the charge is held until at most a chunk and hyper's buffer remain unwritten.
const BODY_CHUNK: usize = 16 * 1024;

/// A reply's body that holds its charge (and its user's HTTP slot) until hyper has taken
/// its last chunk, or the connection is gone.
struct ChargedBody {
    data: axum::body::Bytes,
    at: usize,
    _held: (
        crate::foundation::budget::Charge,
        crate::foundation::budget::HttpSlot,
    ),
}

impl http_body::Body for ChargedBody {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.at >= self.data.len() {
            return std::task::Poll::Ready(None);
        }
        let end = (self.at + BODY_CHUNK).min(self.data.len());
        let chunk = self.data.slice(self.at..end);
        self.at = end;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.at >= self.data.len()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact((self.data.len() - self.at) as u64)
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    before_cseq: Option<String>,
    limit: Option<String>,
}

fn parse_int(name: &str, v: Option<&String>) -> Result<Option<i64>, ApiError> {
    match v.map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("{name}: must be an integer, got {s:?}"))),
    }
}

async fn api_history(
    State(app): State<App>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let ident = api_identity(&app, &headers).await?;
    let Path(id) = id.map_err(|e| refused("conversation id", e.body_text()))?;
    let Query(q) = q.map_err(|e| refused("query", e.body_text()))?;
    // The fields a socket would send, through the same parser.
    let mut fields = Map::new();
    fields.insert("conversation".into(), id.into());
    if let Some(b) = parse_int("before_cseq", q.before_cseq.as_ref())? {
        fields.insert("before_cseq".into(), b.into());
    }
    if let Some(l) = parse_int("limit", q.limit.as_ref())? {
        fields.insert("limit".into(), l.into());
    }
    let request = Request::parse_body("history", fields, app.limits())?;
    answer(&app, &ident, request).await
}

#[derive(Deserialize)]
struct SendBody {
    body: Value,
    client_msg_id: Value,
    #[serde(default, deserialize_with = "present")]
    reply_to: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    mentions: Option<Value>,
}

/// An optional body field as it came, `null` included: whether `null` is allowed is the
/// socket parser's to say, so that both surfaces answer alike.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A JSON body, or the documented refusal: 413 `too_large` past `max_frame_bytes` (the
/// body limit), else 400 `bad_request` with the extractor's reason.
pub(crate) fn json_body<T>(app: &App, body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                Code::TooLarge,
                format!(
                    "the request body is over max_frame_bytes ({} bytes)",
                    app.config.max_frame_bytes
                ),
            )
        } else {
            ApiError::bad_request(e.body_text())
        }
    })
}

async fn api_send(
    State(app): State<App>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<SendBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let ident = api_identity(&app, &headers).await?;
    let Path(id) = id.map_err(|e| refused("conversation id", e.body_text()))?;
    let body = json_body(&app, body)?;
    let conversation = ConversationId::parse(&id).map_err(ApiError::bad_request)?;
    let mut fields = Map::new();
    fields.insert("conversation".into(), conversation.as_str().into());
    fields.insert("body".into(), body.body);
    fields.insert("client_msg_id".into(), body.client_msg_id);
    if let Some(r) = body.reply_to {
        fields.insert("reply_to".into(), r);
    }
    if let Some(m) = body.mentions {
        fields.insert("mentions".into(), m);
    }
    let request = Request::parse_body("send", fields, app.limits())?;
    answer(&app, &ident, request).await
}

/// The conversation and the message of `/api/conversations/{id}/messages/{cseq}`, as the
/// fields a socket request names them with. A cseq that is not a whole number of 1 or
/// more names no message: 400, as the socket's `cseq` rule says.
fn message_path(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Map<String, Value>, ApiError> {
    let Path((id, cseq)) = path.map_err(|e| refused("path", e.body_text()))?;
    let n = Some(cseq.as_str())
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse::<i64>().ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "cseq: must be a message's number in its conversation, a whole number of 1 or \
                 more, got {cseq:?}"
            ))
        })?;
    let mut fields = Map::new();
    fields.insert("conversation".into(), id.into());
    fields.insert("cseq".into(), n.into());
    Ok(fields)
}

#[derive(Deserialize)]
struct EditBody {
    body: Value,
}

/// `PATCH /api/conversations/{id}/messages/{cseq}` `{"body"}`: the socket's `edit`.
async fn api_edit(
    State(app): State<App>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<EditBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let ident = api_identity(&app, &headers).await?;
    let mut fields = message_path(path)?;
    let body = json_body(&app, body)?;
    fields.insert("body".into(), body.body);
    let request = Request::parse_body("edit", fields, app.limits())?;
    answer(&app, &ident, request).await
}

/// `DELETE /api/conversations/{id}/messages/{cseq}`: the socket's `delete`.
async fn api_delete(
    State(app): State<App>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let ident = api_identity(&app, &headers).await?;
    let fields = message_path(path)?;
    let request = Request::parse_body("delete", fields, app.limits())?;
    answer(&app, &ident, request).await
}

#[derive(Deserialize)]
struct ReactBody {
    emoji: Value,
    on: Value,
}

/// `POST /api/conversations/{id}/messages/{cseq}/reactions` `{"emoji","on"}`: the
/// socket's `react`.
async fn api_react(
    State(app): State<App>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<ReactBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let ident = api_identity(&app, &headers).await?;
    let mut fields = message_path(path)?;
    let body = json_body(&app, body)?;
    fields.insert("emoji".into(), body.emoji);
    fields.insert("on".into(), body.on);
    let request = Request::parse_body("react", fields, app.limits())?;
    answer(&app, &ident, request).await
}

#[derive(Deserialize)]
struct ReceiptsQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// `GET /api/conversations/{id}/receipts?after=&limit=`: the socket's `receipts`.
async fn api_receipts(
    State(app): State<App>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<ReceiptsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let ident = api_identity(&app, &headers).await?;
    let Path(id) = id.map_err(|e| refused("conversation id", e.body_text()))?;
    let Query(q) = q.map_err(|e| refused("query", e.body_text()))?;
    let mut fields = Map::new();
    fields.insert("conversation".into(), id.into());
    if let Some(a) = q.after.filter(|a| !a.is_empty()) {
        fields.insert("after".into(), a.into());
    }
    if let Some(l) = parse_int("limit", q.limit.as_ref())? {
        fields.insert("limit".into(), l.into());
    }
    let request = Request::parse_body("receipts", fields, app.limits())?;
    answer(&app, &ident, request).await
}

#[derive(Deserialize)]
struct SearchQuery {
    q: Option<String>,
    conversation: Option<String>,
    before_id: Option<String>,
    limit: Option<String>,
}

/// `GET /api/search?q=&conversation=&before_id=&limit=`: the socket's `search`, with its
/// `query` as `q`.
async fn api_search(
    State(app): State<App>,
    headers: HeaderMap,
    q: Result<Query<SearchQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let ident = api_identity(&app, &headers).await?;
    let Query(q) = q.map_err(|e| refused("query", e.body_text()))?;
    let words =
        q.q.ok_or_else(|| ApiError::bad_request("q: missing (the words to search for)"))?;
    let mut fields = Map::new();
    fields.insert("query".into(), words.into());
    if let Some(c) = q.conversation.filter(|c| !c.is_empty()) {
        fields.insert("conversation".into(), c.into());
    }
    if let Some(b) = parse_int("before_id", q.before_id.as_ref())? {
        fields.insert("before_id".into(), b.into());
    }
    if let Some(l) = parse_int("limit", q.limit.as_ref())? {
        fields.insert("limit".into(), l.into());
    }
    let request = Request::parse_body("search", fields, app.limits())?;
    answer(&app, &ident, request).await
}

async fn live() -> impl IntoResponse {
    Json(json!({"status": "live"}))
}

async fn ready(State(app): State<App>) -> Response {
    if app.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
            .into_response();
    }
    let db = app.health.database_up(&app.db, &app.metrics).await;
    let listening = app.listener.is_up();
    let ready = db && listening;
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "database": if db { "up" } else { "down" },
            "listener": if listening { "up" } else { "down" },
        })),
    )
        .into_response()
}

async fn health(State(app): State<App>) -> Response {
    let db = app.health.database_up(&app.db, &app.metrics).await;
    // One reading of each, after the probe, for every figure in the report.
    let pool = app.db.pool_status();
    let (rss, virt) = stats::memory();
    let (utilisation, scale_out) = stats::utilisation(&stats::Readings {
        cpu: app.cpu.share(),
        rss,
        memory_limit: stats::memory_limit(&app.config),
        open_sockets: app.open_sockets(),
        max_connections: app.config.max_connections,
        pool,
    });
    Json(json!({
        "status": if db { "ok" } else { "degraded" },
        "worker": app.worker_id,
        "pid": std::process::id(),
        "uptime": app.started.elapsed().as_secs(),
        "connections": app.open_sockets(),
        "max_connections": app.config.max_connections,
        "users_online_here": app.hub.users_online(),
        "cached_conversations": app.cache.len(),
        "memory": {
            "rss_bytes": rss,
            "virtual_bytes": virt,
            // Replies and replays waiting for their clients (see outbound_budget_bytes).
            "outbound_held_bytes": app.budget.used(),
            "outbound_budget_bytes": app.config.outbound_budget_bytes,
        },
        "utilisation": utilisation,
        "scale_out": scale_out,
        "database": {
            "up": db,
            "share": app.db.share,
            "writers": app.writer.batchers(),
            "probes": app.metrics.health_probes.get(),
            "pool": {
                "max_size": pool.max_size,
                "size": pool.size,
                "available": pool.available,
                "waiting": pool.waiting,
            },
        },
        "cluster": {
            "peers": app.presence.peers(),
        },
        "listener": {
            "up": app.listener.is_up(),
            "connects": app.metrics.listener_connects.get(),
            "notifications": app.metrics.notifications.get(),
            "overflows": app.metrics.listener_overflows.get(),
            // A stable code, never the driver's text (it may name hosts and users); the
            // detail is in the log.
            "last_error": app.listener.last_error(),
        },
        "counters": app.metrics.summary(),
    }))
    .into_response()
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    app.metrics.listener_up.set(i64::from(app.listener.is_up()));
    app.metrics.db_share.set(app.db.share as i64);
    app.metrics.outbound_held.set(app.budget.used() as i64);
    // The cached probe samples pg_notification_queue_usage(): a scrape flood costs at
    // most one query per health_cache_ms.
    app.health.database_up(&app.db, &app.metrics).await;
    let format = crate::foundation::metrics::Format::from_accept(
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
    );
    let text = app.metrics.render(&app.db.pool_status(), format);
    ([(header::CONTENT_TYPE, format.content_type())], text).into_response()
}
