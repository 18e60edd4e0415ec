//! Where pgchat connects: a URL (with its TLS settings, see [`super::tls`]) made into the
//! driver's settings, and connection failures put in PostgreSQL's own words.

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{redact, tls, StartupError};

/// A connection to PostgreSQL, as the driver hands it out: TLS or not, one type.
pub type Connection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// One place pgchat connects to: the driver's settings, the TLS to use, and where the
/// URL came from, for messages.
#[derive(Clone)]
pub struct Endpoint {
    pub pg: tokio_postgres::Config,
    pub tls: tls::Tls,
    /// The URL with its password replaced.
    pub shown: String,
    /// The setting the URL came from (`DATABASE_URL`, `DATABASE_LISTEN_URL`).
    pub setting: &'static str,
}

impl Endpoint {
    /// `url` as it stands (its `sslmode` and `sslrootcert` honoured), without pgchat's
    /// session settings.
    pub fn parse(url: &str, production: bool) -> Result<Endpoint, StartupError> {
        Self::from_setting("DATABASE_URL", url, production)
    }

    /// Whether `url` can be used for `setting`: the problem, in words, if not.
    pub fn check(setting: &'static str, url: &str, production: bool) -> Result<(), String> {
        match Self::from_setting(setting, url, production) {
            Ok(_) => Ok(()),
            Err(StartupError::Setting { problem, .. }) => Err(problem),
            Err(other) => Err(other.to_string()),
        }
    }

    pub(super) fn from_setting(
        setting: &'static str,
        url: &str,
        production: bool,
    ) -> Result<Endpoint, StartupError> {
        let problem = |problem: String| StartupError::Setting { setting, problem };
        let (rest, params) = tls::split(url).map_err(|e| problem(e.to_string()))?;
        let mut pg: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| problem(describe(&e).replace("invalid connection string: ", "")))?;
        let tls =
            tls::configure(&mut pg, &params, production).map_err(|e| problem(e.to_string()))?;
        Ok(Endpoint {
            pg,
            tls,
            shown: redact(url),
            setting,
        })
    }

    /// Opens a connection; the caller drives it.
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, Connection), tokio_postgres::Error> {
        self.pg.connect(self.tls.connector.clone()).await
    }

    /// The start-up error for `e`: the server's or the driver's own words, once, and what
    /// to do about them when that is clear.
    pub fn refused(&self, e: &tokio_postgres::Error) -> StartupError {
        let mut cause = describe(e);
        if let Some(hint) = self.hint(e) {
            cause = format!("{cause}; {hint}");
        }
        StartupError::Connect {
            setting: self.setting,
            url: self.shown.clone(),
            cause,
        }
    }

    fn hint(&self, e: &tokio_postgres::Error) -> Option<String> {
        let setting = self.setting;
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            return Some(match code {
                _ if code.starts_with("28") && db.message().contains("no encryption") => format!(
                    "the server accepts this connection only over TLS: set sslmode=require (or verify-full) in {setting}"
                ),
                _ if code.starts_with("28") => {
                    format!("check the user name and password in {setting}")
                }
                "3D000" => format!("create the database, or correct its name in {setting}"),
                "53300" => "the server has no connection slot left: lower DB_MAX_CONNECTIONS or raise the server's max_connections".into(),
                _ => return None,
            });
        }
        let host = self
            .pg
            .get_hosts()
            .first()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .unwrap_or_default();
        if let Some(hint) = tls::hint(e, &self.tls, &host) {
            return Some(hint);
        }
        let text = e.to_string();
        (text.starts_with("error connecting") || text.starts_with("timeout")).then(|| {
            format!("is the server running, and are the host and port in {setting} right?")
        })
    }
}

/// A driver error in full: PostgreSQL's message with its SQLSTATE, detail and hint, or
/// the driver's words followed by their causes (tokio-postgres prints only "db error" or
/// "error connecting to server" and keeps the rest in its sources).
pub fn describe(e: &tokio_postgres::Error) -> String {
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
