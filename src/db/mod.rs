//! The database: where it is (or a private cluster started for it), the pool, the schema.
//!
//! The pool follows the seed's settings: at most `db_max_connections` (minus what the
//! deployment reserves elsewhere), `db_min_connections` kept open, idle ones closed after
//! `db_idle_timeout_ms`, a 2 s acquire timeout and a 30 s statement_timeout.

pub mod embedded;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The schema, compiled in so that the binary alone can set up a database.
pub const SCHEMA_SQL: &str = include_str!("../../schema.sql");
/// The version `SCHEMA_SQL` records; pgchat refuses a database with a newer one.
pub const SCHEMA_VERSION: i32 = 1;

/// Start-up failures of the database layer, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot reach PostgreSQL at {url}: {source}; set DATABASE_URL to a running server")]
    Unreachable {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("the database has schema version {found}, newer than this pgchat's {SCHEMA_VERSION}: upgrade pgchat")]
    NewerSchema { found: i32 },
    #[error("applying schema.sql failed: {0}")]
    Schema(tokio_postgres::Error),
    #[error("creating database {name:?} failed: {source}")]
    CreateDatabase {
        name: String,
        source: tokio_postgres::Error,
    },
    #[error("private PostgreSQL cluster: {0}")]
    Embedded(String),
}

/// The database handle every component shares: a pool, and the settings to open the
/// dedicated connections (the notification listener) that a pool cannot provide.
#[derive(Clone)]
pub struct Database {
    pub pool: Pool,
    pub pg_config: tokio_postgres::Config,
    /// Keeps a private cluster alive as long as any handle exists; stopped on drop.
    _cluster: Option<Arc<embedded::Cluster>>,
}

impl Database {
    /// Finds or starts the server, creates the database if missing, applies the schema and
    /// opens a pool of `pool_size` connections.
    pub async fn open(config: &Config, pool_size: usize) -> Result<Database, StartupError> {
        let (url, cluster) = locate(config).await?;
        let mut pg_config: tokio_postgres::Config = url.parse().expect("validated in Config");
        pg_config.options(format!(
            "-c statement_timeout={}",
            config.db_statement_timeout_ms
        ));
        pg_config.connect_timeout(Duration::from_millis(
            config.db_acquire_timeout_ms.max(1000),
        ));
        if pg_config.get_application_name().is_none() {
            pg_config.application_name("pgchat");
        }
        ensure_database(&pg_config, &url).await?;
        apply_schema(&pg_config, &url).await?;
        let pool = build_pool(config, pg_config.clone(), pool_size);
        Ok(Database {
            pool,
            pg_config,
            _cluster: cluster.map(Arc::new),
        })
    }

    /// Opens one connection outside the pool, driven by the caller (for LISTEN).
    pub async fn connect_dedicated(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
        ),
        tokio_postgres::Error,
    > {
        self.pg_config.connect(NoTls).await
    }

    /// True when a pooled connection answers `SELECT 1` within the acquire timeout.
    pub async fn ping(&self) -> bool {
        match self.pool.get().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }

    /// Keeps `min` connections open and closes those idle longer than `idle`, until
    /// `shutdown`. deadpool has neither setting built in.
    pub fn maintain(&self, min: usize, idle: Duration, shutdown: CancellationToken) {
        let pool = self.pool.clone();
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

fn build_pool(config: &Config, pg_config: tokio_postgres::Config, size: usize) -> Pool {
    let manager = Manager::from_config(
        pg_config,
        NoTls,
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
    if !config.embedded_postgres || embedded::server_answers("127.0.0.1", port).await {
        return Ok((url, None));
    }
    let bindir = match embedded::find_bindir() {
        Some(dir) => dir,
        None => return Ok((url, None)), // nothing to start: the connect error will say so
    };
    let dir = config.data_dir.join("postgres");
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

/// Creates the database named in `pg_config` if the server does not have it yet.
async fn ensure_database(
    pg_config: &tokio_postgres::Config,
    url: &str,
) -> Result<(), StartupError> {
    match pg_config.connect(NoTls).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => {
            let name = pg_config.get_dbname().unwrap_or("postgres").to_string();
            let mut admin = pg_config.clone();
            admin.dbname("postgres");
            let (client, conn) =
                admin
                    .connect(NoTls)
                    .await
                    .map_err(|source| StartupError::Unreachable {
                        url: redact(url),
                        source,
                    })?;
            tokio::spawn(conn);
            let sql = format!("CREATE DATABASE {}", quote_ident(&name));
            match client.batch_execute(&sql).await {
                Ok(()) => {
                    tracing::info!(database = %name, "created database");
                    Ok(())
                }
                // Another worker created it first.
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) =>
                {
                    Ok(())
                }
                Err(source) => Err(StartupError::CreateDatabase { name, source }),
            }
        }
        Err(source) => Err(StartupError::Unreachable {
            url: redact(url),
            source,
        }),
    }
}

/// Applies schema.sql under an advisory lock, after checking the recorded version.
pub async fn apply_schema(
    pg_config: &tokio_postgres::Config,
    url: &str,
) -> Result<(), StartupError> {
    let (client, conn) =
        pg_config
            .connect(NoTls)
            .await
            .map_err(|source| StartupError::Unreachable {
                url: redact(url),
                source,
            })?;
    tokio::spawn(conn);
    client
        .batch_execute("SELECT pg_advisory_lock(hashtext('pgchat_schema'))")
        .await
        .map_err(StartupError::Schema)?;
    let exists: bool = client
        .query_one("SELECT to_regclass('pgchat_schema') IS NOT NULL", &[])
        .await
        .map_err(StartupError::Schema)?
        .get(0);
    let found: Option<i32> = if exists {
        client
            .query_one("SELECT max(version) FROM pgchat_schema", &[])
            .await
            .map_err(StartupError::Schema)?
            .get(0)
    } else {
        None
    };
    if let Some(found) = found {
        if found > SCHEMA_VERSION {
            return Err(StartupError::NewerSchema { found });
        }
    }
    client
        .batch_execute(SCHEMA_SQL)
        .await
        .map_err(StartupError::Schema)?;
    client
        .batch_execute("SELECT pg_advisory_unlock(hashtext('pgchat_schema'))")
        .await
        .map_err(StartupError::Schema)?;
    Ok(())
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn redact(url: &str) -> String {
    crate::config::redact_url_password(url)
}
