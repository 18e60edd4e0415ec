//! Connection failures put in PostgreSQL's own words, with what to do about them.

use super::StartupError;
use crate::foundation::endpoint::{describe, tls, Endpoint, SettingError};

impl From<SettingError> for StartupError {
    fn from(e: SettingError) -> StartupError {
        StartupError::Setting {
            setting: e.setting,
            problem: e.problem,
        }
    }
}

impl Endpoint {
    /// `url` as it stands (its `sslmode` and `sslrootcert` honoured), without pgchat's
    /// session settings.
    pub fn parse(url: &str, production: bool) -> Result<Endpoint, StartupError> {
        Ok(Endpoint::from_setting("DATABASE_URL", url, production)?)
    }

    /// The start-up error for `e`: the server's or the driver's own words, once, and what
    /// to do about them when that is clear.
    pub(crate) fn refused(&self, e: &tokio_postgres::Error) -> StartupError {
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
