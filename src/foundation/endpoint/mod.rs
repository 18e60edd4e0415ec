//! Where pgchat connects: a PostgreSQL URL (with its TLS settings, see [`tls`]) made into
//! the driver's settings. Parsed here, below the configuration, so that the configuration
//! can check its URLs at load; connecting and explaining failures is [`crate::db`]'s.

pub(crate) mod tls;

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A URL pgchat cannot use, and why.
#[derive(Debug)]
pub(crate) struct SettingError {
    /// The setting the URL came from.
    pub(crate) setting: &'static str,
    pub(crate) problem: String,
}

/// A connection to PostgreSQL, as the driver hands it out: TLS or not, one type.
pub(crate) type Connection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// One place pgchat connects to: the driver's settings, the TLS to use, and where the
/// URL came from, for messages.
#[derive(Clone)]
pub struct Endpoint {
    pub pg: tokio_postgres::Config,
    pub(crate) tls: tls::Tls,
    /// The URL with its password replaced.
    pub(crate) shown: String,
    /// The setting the URL came from (`DATABASE_URL`, `DATABASE_LISTEN_URL`).
    pub(crate) setting: &'static str,
}

impl Endpoint {
    /// Whether `url` can be used for `setting`: the problem, in words, if not.
    pub(crate) fn check(setting: &'static str, url: &str, production: bool) -> Result<(), String> {
        Self::from_setting(setting, url, production)
            .map(drop)
            .map_err(|e| e.problem)
    }

    /// `url` made into the driver's settings, or what is wrong with it.
    pub(crate) fn from_setting(
        setting: &'static str,
        url: &str,
        production: bool,
    ) -> Result<Endpoint, SettingError> {
        let problem = |problem: String| SettingError { setting, problem };
        let (rest, params) = tls::split(url).map_err(|e| problem(e.to_string()))?;
        let mut pg: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| problem(describe(&e).replace("invalid connection string: ", "")))?;
        let tls =
            tls::configure(&mut pg, &params, production).map_err(|e| problem(e.to_string()))?;
        Ok(Endpoint {
            pg,
            tls,
            shown: redact_url_password(url),
            setting,
        })
    }

    /// Opens a connection; the caller drives it.
    pub(crate) async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, Connection), tokio_postgres::Error> {
        self.pg.connect(self.tls.connector.clone()).await
    }
}

/// The URL or connection string with its password replaced, for logs and messages.
pub(crate) fn redact_url_password(url: &str) -> String {
    // postgres://user:password@host/db -> postgres://user:<redacted>@host/db
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.rsplit_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:<redacted>@{host}");
            }
        }
    }
    if url.contains("password=") {
        return url
            .split_whitespace()
            .map(|kv| {
                if kv.starts_with("password=") {
                    "password=<redacted>"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    url.to_string()
}

/// A driver error in full: PostgreSQL's message with its SQLSTATE, detail and hint, or
/// the driver's words followed by their causes (tokio-postgres prints only "db error" or
/// "error connecting to server" and keeps the rest in its sources).
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    if let Some(db) = e.as_db_error() {
        let mut text = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; DETAIL: {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; HINT: {hint}"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}
