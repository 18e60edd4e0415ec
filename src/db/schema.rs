//! The schema. A new database is built from `schema.sql`, the whole current schema in one
//! readable file; an existing one is brought up to date by the versioned migrations
//! (`migrations/V<n>__<name>.sql`, compiled in with refinery), each applied exactly once.
//! Either happens at start, under an advisory lock, in whichever process gets there first.
//! A test checks that both ways build the same database.
//!
//! Every migration also records its version in `public.pgchat_schema`, the table pgchat
//! 0.1 reads: so an older pgchat refuses a newer database, and a database pgchat 0.1 built
//! (version 1, no refinery history yet) is recognised and taken up from there.

use refinery::Target;

use super::{connect_once, describe, Endpoint, StartupError};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The version the last migration records; pgchat refuses a database with a newer one.
pub const SCHEMA_VERSION: i32 = 5;

/// The whole current schema, compiled in: what a new database is built from.
pub(crate) const SCHEMA_SQL: &str = include_str!("../../schema.sql");

/// Where refinery keeps its history, beside pgchat's tables.
const HISTORY_TABLE: &str = "pgchat.refinery_schema_history";

/// schema.sql and every migration: what the test harness fingerprints its template with.
pub fn fingerprint() -> String {
    let migrations = embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.sql().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    format!("{SCHEMA_SQL}\n{migrations}")
}

/// The limits pgchat enforces that `pgchat.send` must apply too (see `pgchat.settings`).
#[derive(Debug, Clone, Copy)]
pub struct SqlLimits {
    pub(crate) max_message_chars: usize,
    pub(crate) max_group_members: usize,
    /// `conversation_members_listed`: what a conversation's state lists.
    pub(crate) members_listed: usize,
    /// `read_receipts_fanout_max`.
    pub(crate) read_fanout_max: usize,
    /// `new_users_per_hour`.
    pub(crate) new_users_per_hour: usize,
}

/// How migrations wait for the locks their statements need.
#[derive(Debug, Clone, Copy)]
pub struct MigrationLocks {
    /// `lock_timeout` for the migration's statements: a statement that would wait longer
    /// (behind a running query of an older worker, say) gives up instead of queueing, since
    /// a waiting ALTER TABLE makes every later query of that table wait behind it.
    pub lock_timeout: std::time::Duration,
    /// Attempts in all; between them the waits double from half a second to ten.
    pub attempts: u32,
}

impl Default for MigrationLocks {
    fn default() -> Self {
        MigrationLocks {
            lock_timeout: std::time::Duration::from_secs(5),
            attempts: 20,
        }
    }
}

/// Brings the database to [`SCHEMA_VERSION`] (see [`migrate_with`]), waiting for locks as
/// [`MigrationLocks::default`] says.
pub async fn migrate(target: &Endpoint, limits: Option<SqlLimits>) -> Result<(), StartupError> {
    migrate_with(target, limits, MigrationLocks::default()).await
}

/// Brings the database to [`SCHEMA_VERSION`]: nothing to do when it is there already (so
/// pgchat may then run as a role that uses the tables but does not own them), the missing
/// migrations otherwise, and [`StartupError::NewerSchema`] for a newer database. With
/// `limits`, records them for `pgchat.send`.
///
/// Migrations run without the `statement_timeout` meant for requests (a migration of a
/// grown table may take longer) but with `lock_timeout`: a statement that cannot get its
/// lock in time (older workers keep serving meanwhile) rolls its migration back, and the
/// whole run is tried again a little later, `locks.attempts` times in all.
pub async fn migrate_with(
    target: &Endpoint,
    limits: Option<SqlLimits>,
    locks: MigrationLocks,
) -> Result<(), StartupError> {
    let mut delay = std::time::Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match migrate_once(target, limits, locks.lock_timeout).await {
            Err(Failed::LockTimeout(why)) if attempt < locks.attempts => {
                tracing::warn!(
                    attempt,
                    retry_in = ?delay,
                    "a schema migration waited longer than migration_lock_timeout_ms for a lock \
                     that running queries hold; rolled back, trying again: {why}"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(10));
                attempt += 1;
            }
            Err(Failed::LockTimeout(why)) => {
                return Err(StartupError::Schema(format!(
                    "gave up after {attempt} attempts, each waiting up to {:?} for a lock that \
                     running queries kept holding (migration_lock_timeout_ms, \
                     migration_attempts): {why}",
                    locks.lock_timeout
                )))
            }
            Err(Failed::Other(e)) => return Err(e),
            Ok(()) => return Ok(()),
        }
    }
}

/// How one attempt at migrating failed.
enum Failed {
    /// A statement gave up waiting for a lock (SQLSTATE 55P03): worth another attempt.
    LockTimeout(String),
    Other(StartupError),
}

impl From<StartupError> for Failed {
    fn from(e: StartupError) -> Failed {
        Failed::Other(e)
    }
}

/// Whether `e`, or what caused it, is PostgreSQL's lock timeout.
fn lock_timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(e);
    while let Some(e) = at {
        if let Some(pg) = e.downcast_ref::<tokio_postgres::Error>() {
            if pg.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
                return true;
            }
        }
        at = e.source();
    }
    false
}

async fn migrate_once(
    target: &Endpoint,
    limits: Option<SqlLimits>,
    lock_timeout: std::time::Duration,
) -> Result<(), Failed> {
    let (mut client, driver) = connect_once(target).await?;
    let schema = |e: tokio_postgres::Error| {
        if lock_timed_out(&e) {
            Failed::LockTimeout(describe(&e))
        } else {
            Failed::Other(StartupError::Schema(describe(&e)))
        }
    };
    // No statement timeout (the endpoint's is for requests); the advisory lock is waited
    // for as long as another process migrates; then every lock the migrations take is
    // waited for at most lock_timeout.
    client
        .batch_execute(&format!(
            "SET statement_timeout = 0;
             SELECT pg_advisory_lock(hashtext('pgchat_schema'));
             SET lock_timeout = {};",
            lock_timeout.as_millis().max(1)
        ))
        .await
        .map_err(schema)?;
    let found = recorded_version(&client).await.map_err(schema)?;
    if let Some(found) = found.filter(|v| *v > SCHEMA_VERSION) {
        return Err(StartupError::NewerSchema { found }.into());
    }
    let refinery = |e: refinery::Error| {
        if lock_timed_out(&e) {
            Failed::LockTimeout(e.to_string())
        } else {
            Failed::Other(StartupError::Schema(e.to_string()))
        }
    };
    match found {
        Some(v) if v == SCHEMA_VERSION => {}
        None => {
            // A new database: built from schema.sql, every migration recorded as applied.
            client.batch_execute(SCHEMA_SQL).await.map_err(schema)?;
            runner()
                .set_target(Target::Fake)
                .run_async(&mut client)
                .await
                .map_err(refinery)?;
            tracing::info!(version = SCHEMA_VERSION, "created the schema");
        }
        Some(v) => {
            client
                .batch_execute("CREATE SCHEMA IF NOT EXISTS pgchat")
                .await
                .map_err(schema)?;
            let history: bool = client
                .query_one(
                    &format!("SELECT to_regclass('{HISTORY_TABLE}') IS NOT NULL"),
                    &[],
                )
                .await
                .map_err(schema)?
                .get(0);
            if !history {
                // Built before migrations were recorded (pgchat 0.1 applied schema.sql
                // itself): it is at migration v.
                runner()
                    .set_target(Target::FakeVersion(v))
                    .run_async(&mut client)
                    .await
                    .map_err(refinery)?;
            }
            let report = runner().run_async(&mut client).await.map_err(refinery)?;
            for m in report.applied_migrations() {
                tracing::info!(migration = %m, "applied a schema migration");
            }
        }
    }
    if let Some(l) = limits {
        let n = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
        let values = [
            n(l.max_message_chars),
            n(l.max_group_members),
            n(l.members_listed),
            n(l.read_fanout_max),
            n(l.new_users_per_hour),
        ];
        client
            .execute(
                "UPDATE pgchat.settings SET max_message_chars = $1, max_group_members = $2,
                        members_listed = $3, read_fanout_max = $4, new_users_per_hour = $5
                 WHERE (max_message_chars, max_group_members, members_listed, read_fanout_max,
                        new_users_per_hour) IS DISTINCT FROM ($1, $2, $3, $4, $5)",
                &[&values[0], &values[1], &values[2], &values[3], &values[4]],
            )
            .await
            .map_err(schema)?;
    }
    client
        .batch_execute("SELECT pg_advisory_unlock(hashtext('pgchat_schema'))")
        .await
        .map_err(schema)?;
    finish_upgrade(&client).await.map_err(schema)?;
    // Closed before returning, so that set-up never overlaps the workers' connections.
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// What a migration leaves to do outside its transaction, because on a grown database each
/// is a long scan that must not hold the migration's locks (V5): the search index, built
/// with `CREATE INDEX CONCURRENTLY` (writes go on meanwhile), and the validation of
/// `event_queue`'s widened kind check (which blocks no reads or writes either). A database
/// built from schema.sql has both already: then this is one query. One process does the
/// work (an advisory lock, tried, never waited on: a session waiting on a lock holds a
/// snapshot that `CREATE INDEX CONCURRENTLY` would wait for in turn); the others poll until
/// it is done. An index a killed build left invalid is dropped and built again.
async fn finish_upgrade(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    const STATE: &str = "SELECT coalesce((SELECT i.indisvalid FROM pg_catalog.pg_index i
                                   WHERE i.indexrelid = to_regclass('pgchat.messages_search')), false),
                                  coalesce((SELECT k.convalidated FROM pg_catalog.pg_constraint k
                                   WHERE k.conrelid = 'pgchat.event_queue'::regclass
                                     AND k.conname = 'event_queue_kind_check'), true),
                                  to_regclass('pgchat.messages_search') IS NOT NULL";
    let mut said = false;
    loop {
        let row = client.query_one(STATE, &[]).await?;
        let (index_ok, check_ok): (bool, bool) = (row.get(0), row.get(1));
        if index_ok && check_ok {
            return Ok(());
        }
        let mine: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtext('pgchat_finish_upgrade'))",
                &[],
            )
            .await?
            .get(0);
        if !mine {
            if !said {
                tracing::info!("another process is building the search index; waiting for it");
                said = true;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        // Again, under the lock: the process that had it may just have finished.
        let row = client.query_one(STATE, &[]).await?;
        let (index_ok, check_ok, index_exists): (bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2));
        // Waits for running transactions (that is how a concurrent build works), without
        // the migration's lock timeout.
        client.batch_execute("SET lock_timeout = 0").await?;
        if !index_ok {
            if index_exists {
                tracing::warn!("dropping the search index an interrupted build left invalid");
                client
                    .batch_execute("DROP INDEX CONCURRENTLY IF EXISTS pgchat.messages_search")
                    .await?;
            }
            tracing::info!(
                "building the search index over every message (once, after the upgrade to \
                 schema 5; writes go on meanwhile; on a large database run `pgchat migrate` \
                 before starting the servers)"
            );
            let started = std::time::Instant::now();
            client
                .batch_execute(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_search ON pgchat.messages
                     USING gin (conversation_id, to_tsvector('simple'::regconfig, body))",
                )
                .await?;
            tracing::info!(took = ?started.elapsed(), "built the search index");
        }
        if !check_ok {
            client
                .batch_execute(
                    "ALTER TABLE pgchat.event_queue VALIDATE CONSTRAINT event_queue_kind_check",
                )
                .await?;
        }
        client
            .batch_execute("SELECT pg_advisory_unlock(hashtext('pgchat_finish_upgrade'))")
            .await?;
        return Ok(());
    }
}

fn runner() -> refinery::Runner {
    let mut runner = embedded::migrations::runner();
    runner.set_migration_table_name(HISTORY_TABLE);
    runner
}

/// The newest version `public.pgchat_schema` records, if the table exists.
async fn recorded_version(
    client: &tokio_postgres::Client,
) -> Result<Option<i32>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('public.pgchat_schema') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    client
        .query_one("SELECT max(version) FROM public.pgchat_schema", &[])
        .await
        .map(|r| r.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_version_is_the_last_migration() {
        let last = embedded::migrations::runner()
            .get_migrations()
            .iter()
            .map(|m| m.version())
            .max();
        assert_eq!(last, Some(SCHEMA_VERSION));
    }
}
