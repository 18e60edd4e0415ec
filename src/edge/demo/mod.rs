//! The browser demo: a chat application in three static files, compiled into the binary
//! and served at `/`, with the JavaScript client at `/pgchat.js`, and the development
//! sign-in `POST /dev/token` that mints a token for any valid user name.
//!
//! None of it exists unless development sign-in is open (`dev_sign_in`): by default only
//! while the JWT secret is the one pgchat generated itself (no `JWT_SECRET` given, so no
//! backend trusts the tokens it mints), never with `NODE_ENV=production`; elsewhere these
//! paths are 404 like any unknown path. A real deployment's tokens come from its own
//! backend, and its users use its own application; a sign-in that trusts any name must
//! never be reachable there, and a demo that cannot sign in is no use. While it is open
//! the server listens on loopback unless `host` says otherwise, and each client address
//! may sign in `dev_sign_in_per_minute` times a minute.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::foundation::error::ApiError;
use crate::foundation::protocol::{UserId, MAX_NAME_CHARS};
use crate::state::App;

/// How long a development token lives (shorter if `jwt_max_lifetime_secs` says so). The
/// demo asks for a new one before it expires, through the client's `getToken`.
pub(crate) const DEV_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The demo page's Content-Security-Policy: scripts and styles only from this origin (no
/// inline script, no `eval`), sockets to this server, nothing framed or framing it. Every
/// message is rendered as text, and this is the second line of defence if one were not.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// One file served from the binary.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    /// A hash of the body: the file changes only with the binary, so it is the version.
    etag: u64,
    html: bool,
}

/// FNV-1a, at compile time: a stable ETag for each file without hashing per request.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

macro_rules! asset {
    ($name:ident, $path:literal, $type:literal, $html:literal) => {
        static $name: Asset = Asset {
            body: include_str!($path),
            content_type: $type,
            etag: fnv1a(include_str!($path).as_bytes()),
            html: $html,
        };
    };
}

asset!(INDEX, "static/index.html", "text/html; charset=utf-8", true);
asset!(
    APP_JS,
    "static/app.js",
    "text/javascript; charset=utf-8",
    false
);
asset!(APP_CSS, "static/app.css", "text/css; charset=utf-8", false);
asset!(ICON, "static/icon.svg", "image/svg+xml", false);
asset!(
    CLIENT,
    "../../../clients/js/pgchat.js",
    "text/javascript; charset=utf-8",
    false
);

/// The demo's routes, merged into the router outside production only.
pub(crate) fn router() -> Router<App> {
    Router::new()
        .route("/", get(|h: HeaderMap| async move { serve(&INDEX, &h) }))
        .route(
            "/app.js",
            get(|h: HeaderMap| async move { serve(&APP_JS, &h) }),
        )
        .route(
            "/app.css",
            get(|h: HeaderMap| async move { serve(&APP_CSS, &h) }),
        )
        .route(
            "/icon.svg",
            get(|h: HeaderMap| async move { serve(&ICON, &h) }),
        )
        .route(
            "/pgchat.js",
            get(|h: HeaderMap| async move { serve(&CLIENT, &h) }),
        )
        .route("/dev/token", post(dev_token))
}

/// A file, or 304 when the browser already holds this version. `no-cache`: the browser
/// asks again each time (a new binary may serve new files under the same name), and the
/// ETag makes that a few bytes.
fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.etag);
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.html {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

/// `POST /dev/token`'s body. Unknown fields are ignored, as in every request; a field
/// given twice is refused (serde's `duplicate field`), as in every request.
#[derive(Deserialize)]
struct SignIn {
    user: Option<Value>,
    name: Option<Value>,
}

/// `POST /dev/token` `{"user":"alice","name":"Alice"}` → `{"token","user","name",
/// "expires_in"}`: a token signed with this server's secret, for any user name the
/// protocol allows. The name is checked with the protocol's rule for user ids and refused
/// with its words, as a `send` to that name would be.
async fn dev_token(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    body: Result<Json<SignIn>, JsonRejection>,
) -> Result<Response, ApiError> {
    app.sign_ins.take(peer.ip(), &app.metrics)?;
    let body = crate::edge::http::json_body(&app, body)?;
    let user = match body.user {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "user: missing (the user id to sign in as)",
            ))
        }
        Some(Value::String(s)) => {
            UserId::parse(&s).map_err(|e| ApiError::bad_request(format!("user: {e}")))?
        }
        Some(_) => return Err(ApiError::bad_request("user: must be a user id string")),
    };
    // The token's `name` claim's rule, with its message; a blank name is no name.
    let name = match body.name {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if n.chars().count() <= MAX_NAME_CHARS && !n.contains('\0') => {
            Some(n.trim().to_string()).filter(|n| !n.is_empty())
        }
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "name: a string of at most {MAX_NAME_CHARS} characters, without NUL"
            )))
        }
    };
    let ttl = app
        .auth
        .max_ttl()
        .map_or(DEV_TOKEN_TTL, |max| max.min(DEV_TOKEN_TTL));
    let token = app.auth.mint(&user, name.as_deref(), ttl);
    let mut response = Json(json!({
        "token": token,
        "user": user,
        "name": name,
        "expires_in": ttl.as_secs(),
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
