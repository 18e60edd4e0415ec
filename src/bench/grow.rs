//! The database side of `growth`: grows the tables between rounds in bulk SQL (a million
//! events takes seconds this way, against minutes through the server), counts the event
//! rows each round starts with, and reads PostgreSQL's own counters of sequential scans of
//! the growing tables during each round.
//!
//! The rows it adds are what a busy deployment leaves behind: pairs of users with a
//! direct conversation each, 100 messages per conversation, an event per message in both
//! members' streams. They belong to users of their own (`<prefix>-<n>a`/`b`), so the
//! measured load never meets them except in the indexes and tables it shares with them.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::BenchError;

/// The tables that grow with use.
pub(crate) const GROWING: [&str; 5] = [
    "conversations",
    "event_queue",
    "members",
    "messages",
    "users",
];
/// Messages per grown conversation.
const MESSAGES_PER_PAIR: i64 = 100;
/// Events per statement: big enough to be quick, small enough to show progress.
const CHUNK_EVENTS: u64 = 1_000_000;

const GROW: &str = "
WITH p AS (
    SELECT g, $1 || '-' || g || 'a' AS a, $1 || '-' || g || 'b' AS b, $1 || '-c' || g AS c
    FROM generate_series($2::int8, $3::int8) g
), u AS (
    INSERT INTO pgchat.users (id, head) SELECT x, $4 FROM p, LATERAL (VALUES (a), (b)) v(x)
), c AS (
    INSERT INTO pgchat.conversations (id, kind, direct_key, last_cseq, version)
    SELECT c, 'direct', a || E'\\n' || b, $4, $4 + 1 FROM p
), mb AS (
    INSERT INTO pgchat.members (conversation_id, user_id, read_cseq)
    SELECT c, x, $4 FROM p, LATERAL (VALUES (a), (b)) v(x)
), m AS (
    INSERT INTO pgchat.messages (id, conversation_id, cseq, sender_id, body, client_msg_id)
    SELECT nextval('pgchat.messages_id_seq'), p.c, k, CASE k % 2 WHEN 1 THEN a ELSE b END,
           'a message from a busy past', p.g || '-' || k
    FROM p, generate_series(1, $4) k
    RETURNING id, cseq, client_msg_id
)
INSERT INTO pgchat.event_queue (user_id, seq, kind, message_id)
SELECT $1 || '-' || split_part(m.client_msg_id, '-', 1) || s, m.cseq, 'message', m.id
FROM m, LATERAL (VALUES ('a'), ('b')) v(s)";

/// A connection to the database the server uses.
pub(crate) struct Db {
    client: Client,
    /// Where the database is, its sslmode and sslrootcert honoured as the server does.
    target: crate::db::Endpoint,
    /// Pairs grown so far in this run, so that every chunk adds new users.
    grown_pairs: i64,
    prefix: String,
}

impl Db {
    pub(crate) async fn connect(url: &str, prefix: &str) -> Result<Db, BenchError> {
        let setup = |e: String| BenchError::Setup(format!("--database-url: {e}"));
        // The production default (TLS to a remote host) would be a surprise in a load test:
        // the URL says what it wants.
        let target = crate::db::Endpoint::parse(url, false).map_err(|e| setup(e.to_string()))?;
        let (client, connection) = target
            .connect()
            .await
            .map_err(|e| setup(crate::db::describe(&e)))?;
        tokio::spawn(connection);
        Ok(Db {
            client,
            target,
            grown_pairs: 0,
            prefix: format!("{prefix}grown"),
        })
    }

    /// Rows in the event stream now (one count, between rounds). Counted on a connection
    /// of its own, closed before the round begins: a backend reports its scans when it
    /// exits at the latest, and this count (a scan) must not be taken for the round's.
    pub(crate) async fn event_rows(&self) -> Result<i64, BenchError> {
        let err = |e: tokio_postgres::Error| BenchError::Setup(format!("counting events: {e}"));
        let (client, connection) = self.target.connect().await.map_err(err)?;
        let driver = tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT count(*), pg_backend_pid() FROM pgchat.event_queue",
                &[],
            )
            .await
            .map_err(err)?;
        let (rows, pid): (i64, i32) = (row.get(0), row.get(1));
        drop(client);
        let _ = driver.await;
        // Its backend reports its statistics as it exits: wait for that.
        for _ in 0..50 {
            let gone = self
                .client
                .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .await
                .map_err(err)?
                .is_none();
            if gone {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(rows)
    }

    /// Sequential scans of each growing table so far (PostgreSQL's cumulative counters).
    pub(crate) async fn seq_scans(&self) -> Result<BTreeMap<String, i64>, BenchError> {
        let rows = self
            .client
            .query(
                "SELECT relname::text, seq_scan FROM pg_stat_user_tables
                 WHERE schemaname = 'pgchat' AND relname::text = ANY($1)",
                &[&GROWING.to_vec()],
            )
            .await
            .map_err(|e| BenchError::Setup(format!("reading pg_stat_user_tables: {e}")))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Adds about `events` event rows (and half as many messages), in chunks; `progress`
    /// hears the events added so far.
    pub(crate) async fn grow(
        &mut self,
        events: u64,
        progress: impl Fn(u64),
    ) -> Result<(), BenchError> {
        let mut added = 0;
        while added < events {
            let chunk = (events - added).min(CHUNK_EVENTS);
            let pairs = (chunk as i64 / (2 * MESSAGES_PER_PAIR)).max(1);
            let (from, to) = (self.grown_pairs + 1, self.grown_pairs + pairs);
            self.client
                .execute(GROW, &[&self.prefix, &from, &to, &MESSAGES_PER_PAIR])
                .await
                .map_err(|e| BenchError::Setup(format!("growing the database: {e}")))?;
            self.grown_pairs = to;
            added += (pairs * 2 * MESSAGES_PER_PAIR) as u64;
            progress(added);
        }
        Ok(())
    }
}

/// `after - before`, per table.
pub(crate) fn delta(
    before: &BTreeMap<String, i64>,
    after: &BTreeMap<String, i64>,
) -> BTreeMap<String, i64> {
    after
        .iter()
        .map(|(t, n)| (t.clone(), n - before.get(t).copied().unwrap_or(0)))
        .collect()
}
