//! Errors at the edges: the protocol's error codes, and how they become HTTP responses.
//!
//! Internal faults are logged with their detail and reach the client only as `internal`
//! or `unavailable`, never with driver text that could leak schema or data.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The codes of PROTOCOL.md, plus the three that only appear before an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    UnknownType,
    NotFound,
    Forbidden,
    TooLarge,
    RateLimited,
    Unavailable,
    ResyncRequired,
    Internal,
    Unauthorized,
    AtCapacity,
    NotReady,
}

impl Code {
    const ALL: [Code; 12] = [
        Code::BadRequest,
        Code::UnknownType,
        Code::NotFound,
        Code::Forbidden,
        Code::TooLarge,
        Code::RateLimited,
        Code::Unavailable,
        Code::ResyncRequired,
        Code::Internal,
        Code::Unauthorized,
        Code::AtCapacity,
        Code::NotReady,
    ];

    /// The code named `s` on the wire (as the write function reports refusals).
    pub(crate) fn parse(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::UnknownType => "unknown_type",
            Code::NotFound => "not_found",
            Code::Forbidden => "forbidden",
            Code::TooLarge => "too_large",
            Code::RateLimited => "rate_limited",
            Code::Unavailable => "unavailable",
            Code::ResyncRequired => "resync_required",
            Code::Internal => "internal",
            Code::Unauthorized => "unauthorized",
            Code::AtCapacity => "at_capacity",
            Code::NotReady => "not_ready",
        }
    }

    pub(crate) fn status(self) -> StatusCode {
        match self {
            Code::BadRequest | Code::UnknownType => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::ResyncRequired => StatusCode::CONFLICT,
            Code::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable | Code::AtCapacity | Code::NotReady => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error a client sees: a code from the protocol and a message saying what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub(crate) retry_after_ms: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }

    pub(crate) fn unavailable() -> Self {
        Self::new(
            Code::Unavailable,
            "the database is unreachable; nothing was changed: retry (a send with the same client_msg_id)",
        )
    }

    pub(crate) fn internal() -> Self {
        Self::new(
            Code::Internal,
            "internal error; it was logged on the server: retry, and report it if it persists",
        )
    }

    /// The `{"error":{…}}` body used by HTTP responses.
    pub(crate) fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: self.detail(),
        }
    }

    /// What the HTTP body and the socket's `error` frame both say.
    pub(crate) fn detail(&self) -> ErrorDetail<'_> {
        ErrorDetail {
            code: self.code.as_str(),
            message: &self.message,
            retry_after_ms: self.retry_after_ms,
        }
    }
}

/// The body of every HTTP refusal: `{"error":{"code","message","retry_after_ms"?}}`, the
/// fields of the socket's `error` frame (docs/openapi.yaml's `Error`).
#[derive(Serialize)]
pub(crate) struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
pub(crate) struct ErrorDetail<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.code.status(), axum::Json(self.body())).into_response();
        if let Some(ms) = self.retry_after_ms {
            let secs = ms.div_ceil(1000).max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
        }
        response
    }
}

/// A database failure, classified into what the client is told.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error("no database connection within the acquire timeout: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Down(&'static str),
}

/// What the server said (SQLSTATE, message, where), which tokio-postgres's own `Display`
/// leaves out; for the log, never for a client.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}", db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                s.push_str(&format!(" ({detail})"));
            }
            if let Some(at) = db.where_() {
                s.push_str(&format!(" [{}]", at.replace('\n', "; ")));
            }
            s
        }
        None => e.to_string(),
    }
}

impl DbError {
    /// True when the database could not be reached or the connection broke, so that the
    /// outcome is "nothing stored, retry" rather than a bug.
    pub(crate) fn is_unavailable(&self) -> bool {
        match self {
            DbError::Pool(_) | DbError::Down(_) => true,
            DbError::Postgres(e) => {
                if e.is_closed() {
                    return true;
                }
                match e.code() {
                    // connection exceptions, operator intervention (shutdown, terminated backend),
                    // insufficient resources, and statement timeouts: all transient.
                    Some(code) => {
                        let c = code.code();
                        c.starts_with("08") || c.starts_with("57") || c.starts_with("53")
                    }
                    // no SQLSTATE: an I/O error on the socket
                    None => true,
                }
            }
        }
    }
}

impl DbError {
    /// A deadlock or serialization failure, or a unique key another transaction took
    /// meanwhile (two sends of one client_msg_id racing into different conversations):
    /// the transaction may simply be run again, and will see what the other committed.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            DbError::Postgres(e) => matches!(
                e.code().map(|c| c.code()),
                Some("40001") | Some("40P01") | Some("23505")
            ),
            DbError::Pool(_) | DbError::Down(_) => false,
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            ApiError::unavailable()
        } else {
            tracing::error!(error = %e, "database error");
            ApiError::internal()
        }
    }
}
