//! The database: where it is (or a private cluster started for it), the pool, the schema.
//!
//! The pool follows the seed's settings: at most `db_max_connections` (minus what the
//! deployment reserves elsewhere), `db_min_connections` kept open, idle ones closed after
//! `db_idle_timeout_ms`, a 2 s acquire timeout and a 30 s statement_timeout.

pub mod embedded;
mod endpoint;
mod health;
pub(crate) mod lease;
pub mod queries;
pub mod schema;

use std::sync::Arc;
use std::time::Duration;

pub use crate::foundation::endpoint::Endpoint;
pub(crate) use crate::foundation::endpoint::{describe, Connection};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
pub(crate) use health::HealthProbe;
pub(crate) use lease::{Lease, SharedConn, Source, Tx};
pub use schema::{migrate, migrate_with, MigrationLocks, SqlLimits, SCHEMA_VERSION};
use tokio_util::sync::CancellationToken;

use crate::foundation::config::Config;

/// Start-up failures of the database layer, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// PostgreSQL's own message (or the driver's, for a network or TLS failure), and what
    /// to do about it when that is clear.
    #[error("cannot connect to PostgreSQL at {url} ({setting}): {cause}")]
    Connect {
        setting: &'static str,
        url: String,
        cause: String,
    },
    /// A connection setting pgchat cannot use (an unknown sslmode, an unreadable
    /// sslrootcert, …).
    #[error("{setting}: {problem}")]
    Setting {
        setting: &'static str,
        problem: String,
    },
    #[error("the database has schema version {found}, newer than this pgchat's {SCHEMA_VERSION}: upgrade pgchat")]
    NewerSchema { found: i32 },
    #[error("migrating the database schema failed: {0}")]
    Schema(String),
    #[error("reading pgchat.notice_key (the key that seals the workers' notices) failed: {0}; pgchat's role must be able to read it: the owner of the schema can, and a role that runs pgchat without owning its tables needs SELECT on it (see docs/SQL.md)")]
    NoticeKey(String),
    #[error("creating database {name:?} failed: {cause}")]
    CreateDatabase { name: String, cause: String },
    #[error("private PostgreSQL cluster: {0}")]
    Embedded(String),
    #[error("{0}")]
    Bind(String),
    #[error("JWT secret: {0}")]
    Secret(String),
    #[error("DATABASE_URL is unset and nothing answers at {url}: with NODE_ENV=production pgchat never starts its private PostgreSQL cluster; set DATABASE_URL to your database")]
    EmbeddedInProduction { url: String },
}

impl StartupError {
    /// The process's exit code: 2 for what the configuration must fix, else 1.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            // A port in use or not allowed does not free itself: retrying will not help.
            StartupError::EmbeddedInProduction { .. }
            | StartupError::Setting { .. }
            | StartupError::Bind(_) => 2,
            _ => 1,
        }
    }
}

/// The database handle every component shares: where queries run (a pool, or the
/// listener's connection when the worker's share of the budget is one connection), and
/// the settings to open the dedicated listener connection.
#[derive(Clone)]
pub(crate) struct Database {
    pub(crate) source: Source,
    /// Where queries go: `DATABASE_URL`.
    pub(crate) endpoint: Endpoint,
    /// Where the listener connects (and set-up runs): `DATABASE_LISTEN_URL`, else
    /// `DATABASE_URL`.
    pub(crate) listen: Endpoint,
    /// The connections this worker may hold, its listener included.
    pub(crate) share: usize,
    acquire_timeout: Duration,
    /// Round-trip histograms, registered in the worker's metrics.
    pub(crate) round_trips: crate::foundation::metrics::RoundTrips,
    /// Keeps a private cluster alive as long as any handle exists; stopped on drop.
    _cluster: Option<Arc<embedded::Cluster>>,
}

/// How a worker opens its database.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Connections this worker may hold in all, its listener included (at least 1).
    pub share: usize,
    /// Create the database and apply the schema (false when a supervisor already did).
    pub setup: bool,
}

impl Database {
    /// Finds or starts the server, creates the database and applies the schema (unless a
    /// supervisor did), and prepares the pool: `share - 1` connections beside the
    /// listener, or none, the listener's connection serving queries too.
    pub(crate) async fn open(config: &Config, plan: Plan) -> Result<Database, StartupError> {
        let (url, cluster) = locate(config).await?;
        let endpoint = connection_config(config, &url)?;
        let listen = listen_endpoint(config, &endpoint)?;
        if plan.setup {
            ensure_database(&listen).await?;
            schema::migrate_with(&listen, Some(sql_limits(config)), migration_locks(config))
                .await?;
        }
        let source = if plan.share >= 2 {
            Source::Pool(build_pool(config, &endpoint, plan.share - 1))
        } else {
            Source::shared()
        };
        Ok(Database {
            source,
            endpoint,
            listen,
            share: plan.share,
            acquire_timeout: Duration::from_millis(config.db_acquire_timeout_ms),
            round_trips: crate::foundation::metrics::RoundTrips::default(),
            _cluster: cluster.map(Arc::new),
        })
    }

    /// A connection for queries, within the acquire timeout.
    pub(crate) async fn client(&self) -> Result<Lease, crate::foundation::error::DbError> {
        self.source.lease(self.acquire_timeout).await
    }

    /// A transaction on a connection of its own, within the acquire timeout.
    pub(crate) async fn begin(&self) -> Result<Tx, crate::foundation::error::DbError> {
        self.source.begin(self.acquire_timeout).await
    }

    /// The pool's figures (all zero when queries share the listener's connection).
    pub(crate) fn pool_status(&self) -> deadpool_postgres::Status {
        match &self.source {
            Source::Pool(p) => p.status(),
            Source::Shared(_) => deadpool_postgres::Status {
                max_size: 0,
                size: 0,
                available: 0,
                waiting: 0,
            },
        }
    }

    /// Closes the pool (the listener closes with its task).
    pub(crate) fn close(&self) {
        if let Source::Pool(p) = &self.source {
            p.close();
        }
    }

    /// Opens one connection outside the pool, driven by the caller (for LISTEN), to
    /// `DATABASE_LISTEN_URL` if set. Its `application_name` ends in ` listener`, so that
    /// pg_stat_activity tells it apart.
    pub(crate) async fn connect_dedicated(
        &self,
    ) -> Result<(tokio_postgres::Client, Connection), tokio_postgres::Error> {
        let mut listen = self.listen.clone();
        let name = format!(
            "{} listener",
            listen.pg.get_application_name().unwrap_or("pgchat")
        );
        listen.pg.application_name(name);
        listen.connect().await
    }

    /// `pg_notification_queue_usage()` (0..1), or `None` when the database does not
    /// answer within the acquire timeout: the health probe, which also samples the fill
    /// of the NOTIFY queue (when it fills, every notifying commit fails).
    pub(crate) async fn notification_queue_usage(&self) -> Option<f64> {
        let client = self.client().await.ok()?;
        let rows = client
            .simple_query("SELECT pg_notification_queue_usage()")
            .await
            .ok()?;
        rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
            _ => None,
        })
    }

    /// Runs one read query and records its round trip.
    pub(crate) async fn timed_read<T>(&self, query: impl std::future::Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let out = query.await;
        self.round_trips
            .read
            .observe(started.elapsed().as_secs_f64());
        out
    }

    /// Keeps `min` pooled connections open and closes those idle longer than `idle`,
    /// until `shutdown`. deadpool has neither setting built in.
    pub(crate) fn maintain(&self, min: usize, idle: Duration, shutdown: CancellationToken) {
        let Source::Pool(pool) = &self.source else {
            return; // the shared connection is the listener's: always open
        };
        let pool = pool.clone();
        // Never more than the pool holds: topping up beyond it would wait on itself.
        let min = min.min(pool.status().max_size);
        tokio::spawn(async move {
            let tick = (idle / 3).clamp(Duration::from_millis(100), Duration::from_secs(10));
            loop {
                let size = pool.status().size;
                let mut keep = size;
                pool.retain(|_, metrics| {
                    if keep > min && metrics.last_used() > idle {
                        keep -= 1;
                        false
                    } else {
                        true
                    }
                });
                // Top up to min: take the connections and give them straight back.
                let status = pool.status();
                if status.size < min {
                    let mut held = Vec::new();
                    for _ in status.size..min {
                        match pool.get().await {
                            Ok(c) => held.push(c),
                            Err(_) => break,
                        }
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(tick) => {}
                }
            }
        });
    }
}

/// Where queries go: `url` (`DATABASE_URL`, or a private cluster's) with pgchat's
/// session settings.
pub fn connection_config(config: &Config, url: &str) -> Result<Endpoint, StartupError> {
    endpoint_for(config, "DATABASE_URL", url)
}

/// Where the listener connects and set-up runs: `DATABASE_LISTEN_URL`, else `queries`.
fn listen_endpoint(config: &Config, queries: &Endpoint) -> Result<Endpoint, StartupError> {
    match &config.database_listen_url {
        Some(url) => endpoint_for(config, "DATABASE_LISTEN_URL", url),
        None => Ok(queries.clone()),
    }
}

fn endpoint_for(
    config: &Config,
    setting: &'static str,
    url: &str,
) -> Result<Endpoint, StartupError> {
    let mut endpoint = Endpoint::from_setting(setting, url, config.is_production())?;
    let pg_config = &mut endpoint.pg;
    // Appended to the URL's own `options` (a search_path, a role's settings), never in
    // their place; a later -c wins, so pgchat's statement timeout holds.
    let timeout = format!("-c statement_timeout={}", config.db_statement_timeout_ms);
    let options = match pg_config.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {timeout}"),
        _ => timeout,
    };
    pg_config.options(options);
    pg_config.connect_timeout(Duration::from_millis(
        config.db_acquire_timeout_ms.max(1000),
    ));
    if pg_config.get_application_name().is_none() {
        pg_config.application_name("pgchat");
    }
    // A server that vanished without closing (a failover, a cut network) would otherwise
    // leave a connection waiting forever: keepalives notice an idle one, the user timeout
    // one with data unacknowledged.
    pg_config
        .keepalives(true)
        .keepalives_idle(Duration::from_millis(config.db_keepalive_idle_ms))
        .keepalives_interval(Duration::from_millis(config.db_keepalive_interval_ms))
        .keepalives_retries(config.db_keepalive_retries);
    if config.db_tcp_user_timeout_ms > 0 {
        pg_config.tcp_user_timeout(Duration::from_millis(config.db_tcp_user_timeout_ms));
    }
    Ok(endpoint)
}

/// Creates the database if missing and migrates it, once, before workers start;
/// returns the URL the workers should use (a private cluster's, if one was started).
pub async fn setup(config: &Config) -> Result<(String, Option<embedded::Cluster>), StartupError> {
    let (url, cluster) = locate(config).await?;
    let listen = listen_endpoint(config, &connection_config(config, &url)?)?;
    ensure_database(&listen).await?;
    schema::migrate_with(&listen, Some(sql_limits(config)), migration_locks(config)).await?;
    Ok((url, cluster))
}

fn migration_locks(config: &Config) -> schema::MigrationLocks {
    schema::MigrationLocks {
        lock_timeout: Duration::from_millis(config.migration_lock_timeout_ms),
        attempts: config.migration_attempts,
    }
}

fn sql_limits(config: &Config) -> SqlLimits {
    SqlLimits {
        max_message_chars: config.max_message_chars,
        max_group_members: config.max_group_members,
        members_listed: config.conversation_members_listed,
        read_fanout_max: config.read_receipts_fanout_max,
        new_users_per_hour: config.new_users_per_hour,
    }
}

fn build_pool(config: &Config, endpoint: &Endpoint, size: usize) -> Pool {
    let manager = Manager::from_config(
        endpoint.pg.clone(),
        endpoint.tls.connector.clone(),
        ManagerConfig {
            // Fast: a connection that broke is noticed by the query that hits it (and
            // reported as `unavailable`), instead of a round trip before every checkout.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let timeout = Some(Duration::from_millis(config.db_acquire_timeout_ms));
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(timeout)
        .create_timeout(timeout)
        .recycle_timeout(timeout)
        .runtime(Runtime::Tokio1)
        .build()
        .expect("pool settings are valid")
}

/// Resolves the server to use: `DATABASE_URL`, else the local default, else a private
/// cluster under `data_dir` when PostgreSQL's binaries are installed.
async fn locate(config: &Config) -> Result<(String, Option<embedded::Cluster>), StartupError> {
    if let Some(url) = &config.database_url {
        return Ok((url.clone(), None));
    }
    let url = config.database_url();
    let port = config.embedded_port;
    let dir = config.data_dir.join("postgres");
    if !config.embedded_postgres {
        return Ok((url, None));
    }
    if embedded::server_answers("127.0.0.1", port).await {
        // Our own private cluster, still running? Left by a pgchat that was killed, it is
        // adopted (and stopped on exit); run by a pgchat still running, it is shared.
        let ours = embedded::running_postmaster(&dir, port);
        let bindir = embedded::find_bindir();
        if let (Some(pid), Some(bindir), false) = (ours, bindir, config.is_production()) {
            return match embedded::Cluster::adopt(&bindir, &dir, port)
                .map_err(StartupError::Embedded)?
            {
                embedded::Found::Adopted(cluster) => {
                    tracing::warn!(
                        dir = %dir.display(),
                        port,
                        postmaster = pid,
                        "the private PostgreSQL cluster was left running by a pgchat that \
                         did not stop cleanly: adopting it (it is stopped on exit)"
                    );
                    Ok((cluster.url("pgchat"), Some(cluster)))
                }
                embedded::Found::InUse(url) => {
                    tracing::info!(
                        dir = %dir.display(),
                        port,
                        "using the private PostgreSQL cluster of the pgchat that is running \
                         it (it stops it)"
                    );
                    Ok((url, None))
                }
            };
        }
        return Ok((url, None));
    }
    if config.is_production() {
        return Err(StartupError::EmbeddedInProduction { url: redact(&url) });
    }
    let bindir = match embedded::find_bindir() {
        Some(dir) => dir,
        None => return Ok((url, None)), // nothing to start: the connect error will say so
    };
    tracing::warn!(
        dir = %dir.display(),
        port,
        "no PostgreSQL answers on 127.0.0.1 and DATABASE_URL is unset: starting a private cluster"
    );
    let cluster = embedded::Cluster::start(&bindir, &dir, port)
        .await
        .map_err(StartupError::Embedded)?;
    Ok((cluster.url("pgchat"), Some(cluster)))
}

/// Creates the database named in `target` if the server does not have it yet.
async fn ensure_database(target: &Endpoint) -> Result<(), StartupError> {
    match target.connect().await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => {
            let name = target.pg.get_dbname().unwrap_or("postgres").to_string();
            let mut admin = target.clone();
            admin.pg.dbname("postgres");
            let (client, driver) = connect_once(&admin).await?;
            let sql = format!("CREATE DATABASE {}", quote_ident(&name));
            match client.batch_execute(&sql).await {
                Ok(()) => tracing::info!(database = %name, "created database"),
                // Another process created it first: before this CREATE began (42P04), or
                // while it ran (the catalog's unique index, 23505).
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
                        || e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                }
                Err(e) => {
                    return Err(StartupError::CreateDatabase {
                        name,
                        cause: describe(&e),
                    })
                }
            }
            drop(client);
            let _ = driver.await;
            Ok(())
        }
        Err(e) => Err(target.refused(&e)),
    }
}

/// A short-lived connection for set-up; await the handle after dropping the client to
/// know the connection is closed.
pub(crate) async fn connect_once(
    target: &Endpoint,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StartupError> {
    let (client, conn) = target.connect().await.map_err(|e| target.refused(&e))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((client, driver))
}

/// The key that seals the cluster's notices (`pgchat.notice_key`, see
/// `cluster::notify`), read once at start over a connection of its own that closes before
/// the listener opens (a worker whose share is one has no pool to ask).
pub(crate) async fn notice_key(db: &Database) -> Result<Vec<u8>, StartupError> {
    let (client, driver) = connect_once(&db.listen).await?;
    let key = client
        .query_one(queries::NOTICE_KEY, &[])
        .await
        .map_err(|e| StartupError::NoticeKey(describe(&e)));
    drop(client);
    let _ = driver.await;
    key.map(|row| row.get(0))
}

pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn redact(url: &str) -> String {
    crate::foundation::endpoint::redact_url_password(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_in_the_url_are_kept_and_the_statement_timeout_added() {
        let config = Config::default();
        let url = "postgres://u@localhost/db?options=-c%20search_path%3Dapp%2Cpgchat%20-c%20work_mem%3D8MB";
        let endpoint = connection_config(&config, url).unwrap();
        assert_eq!(
            endpoint.pg.get_options(),
            Some("-c search_path=app,pgchat -c work_mem=8MB -c statement_timeout=30000")
        );
        let plain = connection_config(&config, "postgres://u@localhost/db").unwrap();
        assert_eq!(plain.pg.get_options(), Some("-c statement_timeout=30000"));
    }
}
