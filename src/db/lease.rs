//! Connections on loan: from the pool, or, when the worker's share of the connection
//! budget is a single connection, from the notification listener's own connection.
//!
//! Why the second kind: a deployment may open `db_max_connections` (10) in all. With 8
//! workers that is 8 listeners and 2 to spare, so most workers cannot have a pool at all.
//! Their listener connection then doubles as their query connection: tokio-postgres
//! pipelines queries from many tasks over one connection, and notifications still arrive
//! between transactions. A transaction needs the connection alone, so leases go through
//! a read-write gate: queries share it, a transaction takes it exclusively.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock as AsyncRwLock};
use tokio_postgres::{Client, Statement};

use crate::foundation::error::DbError;

/// A connection shared by the listener and (in shared mode) every query of its worker.
pub(crate) struct SharedConn {
    pub(crate) client: Client,
    statements: Mutex<HashMap<String, Statement>>,
    gate: Arc<AsyncRwLock<()>>,
}

impl SharedConn {
    pub(crate) fn new(client: Client) -> Arc<SharedConn> {
        Arc::new(SharedConn {
            client,
            statements: Mutex::new(HashMap::new()),
            gate: Arc::new(AsyncRwLock::new(())),
        })
    }

    /// One round trip (`SELECT 1`), between transactions (it takes the read gate).
    pub(crate) async fn probe(&self) -> Result<(), tokio_postgres::Error> {
        let _gate = self.gate.read().await;
        self.client.simple_query("SELECT 1").await.map(|_| ())
    }

    async fn prepare_cached(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.lock().expect("statement cache").get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.statements
            .lock()
            .expect("statement cache")
            .insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

/// Where a worker's queries run.
#[derive(Clone)]
pub(crate) enum Source {
    Pool(Pool),
    /// The listener's connection; `None` while it is down.
    Shared(Arc<RwLock<Option<Arc<SharedConn>>>>),
}

impl Source {
    pub(crate) fn shared() -> Source {
        Source::Shared(Arc::new(RwLock::new(None)))
    }

    fn current(&self) -> Result<Arc<SharedConn>, DbError> {
        match self {
            Source::Shared(slot) => slot
                .read()
                .expect("shared slot")
                .clone()
                .ok_or(DbError::Down("the worker's database connection is down")),
            Source::Pool(_) => unreachable!("only for the shared source"),
        }
    }

    /// Installs (or, with `None`, removes) the listener's connection as the query
    /// connection. A no-op for a pooled source.
    pub(crate) fn set_shared(&self, conn: Option<Arc<SharedConn>>) {
        if let Source::Shared(slot) = self {
            *slot.write().expect("shared slot") = conn;
        }
    }

    /// A connection for queries (not transactions), waiting at most `timeout`.
    pub(crate) async fn lease(&self, timeout: Duration) -> Result<Lease, DbError> {
        match self {
            Source::Pool(pool) => Ok(Lease::Pooled(pool.get().await?)),
            Source::Shared(_) => {
                let conn = self.current()?;
                let guard = tokio::time::timeout(timeout, conn.gate.clone().read_owned())
                    .await
                    .map_err(|_| {
                        DbError::Down("no database connection within the acquire timeout")
                    })?;
                Ok(Lease::Shared(conn, guard))
            }
        }
    }

    /// A connection alone, inside `BEGIN`; rolled back if dropped before `commit`.
    pub(crate) async fn begin(&self, timeout: Duration) -> Result<Tx, DbError> {
        let lease = match self {
            Source::Pool(pool) => Exclusive::Pooled(pool.get().await?),
            Source::Shared(_) => {
                let conn = self.current()?;
                let guard = tokio::time::timeout(timeout, conn.gate.clone().write_owned())
                    .await
                    .map_err(|_| {
                        DbError::Down("no database connection within the acquire timeout")
                    })?;
                Exclusive::Shared(conn, guard)
            }
        };
        lease.client().batch_execute("BEGIN").await?;
        Ok(Tx { lease: Some(lease) })
    }
}

/// A connection for queries. Derefs to the client; `prepare_cached` caches per connection.
// Short-lived and on the stack: boxing the pooled object would cost an allocation a query.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Lease {
    Pooled(Object),
    /// The guard is held, not read: it keeps transactions off the connection meanwhile.
    Shared(
        Arc<SharedConn>,
        #[allow(dead_code)] OwnedRwLockReadGuard<()>,
    ),
}

impl Lease {
    /// Drops a connection that failed at the connection level instead of giving it back:
    /// the pool would lend it again before noticing that it is closed.
    pub(crate) fn discard(self) {
        if let Lease::Pooled(o) = self {
            drop(Object::take(o));
        }
    }

    pub(crate) async fn prepare_cached(
        &self,
        sql: &str,
    ) -> Result<Statement, tokio_postgres::Error> {
        match self {
            Lease::Pooled(o) => o.prepare_cached(sql).await,
            Lease::Shared(c, _) => c.prepare_cached(sql).await,
        }
    }
}

impl Deref for Lease {
    type Target = Client;
    fn deref(&self) -> &Client {
        match self {
            Lease::Pooled(o) => o,
            Lease::Shared(c, _) => &c.client,
        }
    }
}

#[allow(clippy::large_enum_variant)]
enum Exclusive {
    Pooled(Object),
    /// The guard is held, not read: it keeps every other lease off the connection.
    Shared(
        Arc<SharedConn>,
        #[allow(dead_code)] OwnedRwLockWriteGuard<()>,
    ),
}

impl Exclusive {
    fn client(&self) -> &Client {
        match self {
            Exclusive::Pooled(o) => o,
            Exclusive::Shared(c, _) => &c.client,
        }
    }
}

/// A transaction on a leased connection.
pub(crate) struct Tx {
    lease: Option<Exclusive>,
}

impl Tx {
    fn exclusive(&self) -> &Exclusive {
        self.lease.as_ref().expect("a live transaction")
    }

    pub(crate) async fn prepare_cached(
        &self,
        sql: &str,
    ) -> Result<Statement, tokio_postgres::Error> {
        match self.exclusive() {
            Exclusive::Pooled(o) => o.prepare_cached(sql).await,
            Exclusive::Shared(c, _) => c.prepare_cached(sql).await,
        }
    }

    pub(crate) async fn commit(mut self) -> Result<(), DbError> {
        let lease = self.lease.take().expect("a live transaction");
        let result = lease.client().batch_execute("COMMIT").await;
        if result.is_err() {
            // The outcome is unknown and the connection suspect: do not reuse it.
            if let Exclusive::Pooled(o) = lease {
                let _ = Object::take(o);
            }
        }
        result.map_err(DbError::from)
    }
}

impl Deref for Tx {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.exclusive().client()
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        // Not committed: roll back before anyone else gets the connection. The lease (and
        // with it the pool slot or the exclusive gate) moves into the task and is released
        // only after ROLLBACK has run.
        if let Some(lease) = self.lease.take() {
            tokio::spawn(async move {
                if lease.client().batch_execute("ROLLBACK").await.is_err() {
                    if let Exclusive::Pooled(o) = lease {
                        let _ = Object::take(o);
                    }
                }
            });
        }
    }
}
