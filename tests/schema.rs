//! The schema: schema.sql and the migrations build the same database, and a database built
//! by pgchat 0.1 upgrades in place at start with its data intact.

mod common;

use common::{TestApp, TestDb};
use serde_json::json;

/// The schema pgchat 0.1 applied (its schema.sql, now migration 1).
const SCHEMA_V1: &str = include_str!("../migrations/V1__initial.sql");

/// Rows as pgchat 0.1 wrote them: alice and bob exchanged two messages in d1; carol's
/// stream was pruned through seq 5.
const DATA_V1: &str = r#"
INSERT INTO users (id, name, head, pruned_through) VALUES
    ('alice', 'Alice', 3, 0), ('bob', 'Bob', 3, 0), ('carol', NULL, 7, 5);
INSERT INTO conversations (id, kind, direct_key, last_cseq, version)
    VALUES ('d1', 'direct', E'alice\nbob', 2, 3);
SELECT setval('conversation_ids', 1);
INSERT INTO members (conversation_id, user_id, read_cseq)
    VALUES ('d1', 'alice', 0), ('d1', 'bob', 0);
INSERT INTO messages (id, conversation_id, cseq, sender_id, body, client_msg_id) VALUES
    (1, 'd1', 1, 'alice', 'hello bob', 'm1'), (2, 'd1', 2, 'bob', 'hi alice', 'm2');
SELECT setval('messages_id_seq', 2);
INSERT INTO event_queue (user_id, seq, kind, message_id, conversation_id, payload) VALUES
    ('alice', 1, 'conversation', NULL, 'd1', NULL),
    ('alice', 2, 'message', 1, NULL, NULL),
    ('alice', 3, 'message', 2, NULL, NULL),
    ('bob', 1, 'conversation', NULL, 'd1', NULL),
    ('bob', 2, 'message', 1, NULL, NULL),
    ('bob', 3, 'message', 2, NULL, NULL),
    ('carol', 6, 'removed', NULL, 'g9', '{"conversation": "g9"}'),
    ('carol', 7, 'removed', NULL, 'g8', '{"conversation": "g8"}');
"#;

/// Everything the catalog says about pgchat's objects, one line each, sorted.
const CATALOG: &str = "
SELECT 'relation ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('pgchat', 'public') AND c.relname NOT LIKE 'refinery_schema_history%'
UNION ALL
SELECT 'column ' || n.nspname || '.' || c.relname || '.' || a.attname || ' '
       || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname IN ('pgchat', 'public') AND a.attnum > 0 AND NOT a.attisdropped
  AND c.relkind = 'r' AND c.relname <> 'refinery_schema_history'
UNION ALL
SELECT 'constraint ' || n.nspname || '.' || c.relname || '.' || k.conname || ' '
       || pg_get_constraintdef(k.oid)
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('pgchat', 'public') AND c.relname <> 'refinery_schema_history'
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes
WHERE schemaname IN ('pgchat', 'public') AND tablename <> 'refinery_schema_history'
UNION ALL
SELECT 'function ' || pg_get_functiondef(p.oid)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname IN ('pgchat', 'public')
UNION ALL
SELECT 'grant ' || p.oid::regprocedure::text || ' ' || coalesce(p.proacl::text, 'default')
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname IN ('pgchat', 'public')
UNION ALL
SELECT 'grant ' || n.nspname || '.' || c.relname || ' ' || coalesce(c.relacl::text, 'default')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('pgchat', 'public') AND c.relname NOT LIKE 'refinery_schema_history%'
UNION ALL
SELECT 'grant schema ' || n.nspname || ' ' || coalesce(n.nspacl::text, 'default')
FROM pg_namespace n WHERE n.nspname = 'pgchat'
ORDER BY 1";

async fn catalog(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query(CATALOG, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn migrate(db: &TestDb) -> Result<(), pgchat::db::StartupError> {
    let target = pgchat::db::Endpoint::parse(&db.url, false).unwrap();
    pgchat::db::migrate(&target, None).await
}

async fn built_by_pgchat_0_1(data: &str) -> TestDb {
    let db = TestDb::empty().await;
    let client = db.client().await;
    client.batch_execute(SCHEMA_V1).await.unwrap();
    client.batch_execute(data).await.unwrap();
    db
}

async fn versions(db: &TestDb) -> (Vec<i32>, i32) {
    let client = db.client().await;
    let history = client
        .query(
            "SELECT version FROM pgchat.refinery_schema_history ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let recorded = client
        .query_one("SELECT max(version) FROM public.pgchat_schema", &[])
        .await
        .unwrap()
        .get(0);
    (history, recorded)
}

#[tokio::test]
async fn schema_sql_and_the_migrations_build_the_same_database() {
    let fresh = TestDb::empty().await;
    migrate(&fresh).await.unwrap();
    let upgraded = built_by_pgchat_0_1("").await;
    migrate(&upgraded).await.unwrap();

    let (a, b) = (catalog(&fresh).await, catalog(&upgraded).await);
    assert!(a.len() > 50, "the catalog query sees the schema: {a:?}");
    let only_fresh: Vec<&String> = a.iter().filter(|l| !b.contains(l)).collect();
    let only_upgraded: Vec<&String> = b.iter().filter(|l| !a.contains(l)).collect();
    assert!(
        only_fresh.is_empty() && only_upgraded.is_empty(),
        "schema.sql and the migrations differ:\nonly from schema.sql: {only_fresh:#?}\nonly from the migrations: {only_upgraded:#?}"
    );
    let expected = (
        (1..=pgchat::db::SCHEMA_VERSION).collect::<Vec<i32>>(),
        pgchat::db::SCHEMA_VERSION,
    );
    assert_eq!(versions(&fresh).await, expected);
    assert_eq!(versions(&upgraded).await, expected);
}

#[tokio::test]
async fn workers_starting_together_on_an_old_database_migrate_it_once() {
    let db = built_by_pgchat_0_1(DATA_V1).await;
    let results = futures_util::future::join_all((0..4).map(|_| migrate(&db))).await;
    for r in results {
        r.expect("every starting worker succeeds");
    }
    assert_eq!(
        versions(&db).await,
        (
            (1..=pgchat::db::SCHEMA_VERSION).collect::<Vec<i32>>(),
            pgchat::db::SCHEMA_VERSION
        )
    );
    assert_eq!(db.count("SELECT count(*) FROM pgchat.messages").await, 2);
}

#[tokio::test]
async fn a_database_built_by_pgchat_0_1_upgrades_in_place_with_its_data_intact() {
    let db = built_by_pgchat_0_1(DATA_V1).await;
    let app = TestApp::spawn_on(db, |_| {}).await;

    // The streams replay as they were, rendered from the moved tables.
    let mut alice = app.connect("alice").await;
    assert_eq!(alice.head(), 3);
    alice.ok(json!({"type": "resume", "after": 0})).await;
    let replay = alice.buffered();
    assert_eq!(replay.len(), 3, "{replay:?}");
    assert_eq!(replay[0]["type"], "conversation");
    assert_eq!(
        replay[0]["conversation"]["members"],
        json!(["alice", "bob"])
    );
    assert_eq!(replay[1]["message"]["body"], "hello bob");
    assert_eq!(replay[1]["message"]["sender"]["id"], "alice");
    assert_eq!(replay[2]["message"]["body"], "hi alice");
    assert_eq!(replay[2]["seq"], 3);

    // History and the conversation list read the old rows; the read markers caught up with
    // what each member sent, so alice has one unread (bob's) and bob none.
    let page = alice
        .ok(json!({"type": "history", "conversation": "d1"}))
        .await;
    assert_eq!(page["total"], 2);
    assert_eq!(page["messages"][0]["body"], "hello bob");
    let list = alice.ok(json!({"type": "conversations"})).await;
    assert_eq!(list["conversations"][0]["unread"], 1);
    let mut bob = app.connect("bob").await;
    let list = bob.ok(json!({"type": "conversations"})).await;
    assert_eq!(list["conversations"][0]["unread"], 0);

    // New messages continue the old counters.
    let m = alice.send_dm("bob", "after the upgrade", "m3").await;
    assert_eq!(m["conversation"], "d1");
    assert_eq!(m["cseq"], 3);
    assert_eq!(m["id"], 3);
    let e = bob.event_of("message").await;
    assert_eq!(e["seq"], 4);
    assert_eq!(e["message"], m);
    // A retry of a message stored before the upgrade returns it.
    let again = alice.send_dm("bob", "hello bob", "m1").await;
    assert_eq!(again["id"], 1);

    // What retention pruned stays pruned.
    let mut carol = app.connect("carol").await;
    carol
        .err(json!({"type": "resume", "after": 3}), "resync_required")
        .await;
    let ok = carol.ok(json!({"type": "resume", "after": 5})).await;
    assert_eq!(ok["head"], 7);
    assert_eq!(
        versions(&app.db).await,
        (
            (1..=pgchat::db::SCHEMA_VERSION).collect::<Vec<i32>>(),
            pgchat::db::SCHEMA_VERSION
        )
    );
}

#[tokio::test]
async fn deployments_starting_together_on_a_missing_database_create_it_once() {
    let db = TestDb::new().await; // for the server's address; the new databases are beside it
    let admin = db.client().await;
    // A few rounds: the race is between one CREATE DATABASE's check and its commit.
    for round in 0..3 {
        let name = format!("{}_new{round}", db.name);
        let config = pgchat::Config {
            database_url: Some(db.url.replace(&db.name, &name)),
            embedded_postgres: false,
            ..pgchat::Config::default()
        };
        let results =
            futures_util::future::join_all((0..4).map(|_| pgchat::db::setup(&config))).await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap();
        for r in results {
            r.expect("every starting deployment succeeds");
        }
    }
}

/// A database at schema version 3 (pgchat before issue 17), as its migrations built it.
async fn at_version_3() -> TestDb {
    let db = TestDb::empty().await;
    let client = db.client().await;
    for sql in [
        SCHEMA_V1,
        include_str!("../migrations/V2__write_path_in_sql.sql"),
        include_str!("../migrations/V3__authz_and_privacy.sql"),
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    db
}

#[tokio::test]
async fn a_migration_waits_for_locks_without_the_request_timeout_and_never_queues_behind_them() {
    let db = at_version_3().await;
    // A session of an older worker (or an operator) holds what migration 4 must change.
    let mut blocker = db.client().await;
    let held = blocker.transaction().await.unwrap();
    held.batch_execute("ALTER FUNCTION pgchat.send(text, text, text, text) SET work_mem = '1MB'")
        .await
        .unwrap();
    // The requests' statement timeout (here 300 ms) must not apply to migrations; each
    // statement waits at most 200 ms for a lock, then the migration is tried again.
    let url = format!("{}?options=-c%20statement_timeout%3D300", db.url);
    let target = pgchat::db::Endpoint::parse(&url, false).unwrap();
    let locks = pgchat::db::MigrationLocks {
        lock_timeout: std::time::Duration::from_millis(200),
        attempts: 20,
    };
    let started = std::time::Instant::now();
    let migrating =
        tokio::spawn(async move { pgchat::db::migrate_with(&target, None, locks).await });
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        !migrating.is_finished(),
        "it waits for the lock, trying again"
    );
    // Meanwhile nothing queues behind the migration: the function it needs can still be
    // called by others, and other sessions wait for no lock it holds.
    let other = db.client().await;
    let waiting: i64 = other
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND state = 'active' AND query NOT LIKE 'ALTER FUNCTION pgchat.send%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(waiting <= 1, "{waiting} sessions wait for locks");
    held.commit().await.unwrap();
    migrating
        .await
        .unwrap()
        .expect("the migration succeeds once the lock is free");
    assert!(started.elapsed() >= std::time::Duration::from_millis(1500));
    assert_eq!(versions(&db).await.1, pgchat::db::SCHEMA_VERSION);
}

#[tokio::test]
async fn a_migration_that_never_gets_its_lock_gives_up_saying_why() {
    let db = at_version_3().await;
    let mut blocker = db.client().await;
    let held = blocker.transaction().await.unwrap();
    held.batch_execute("ALTER FUNCTION pgchat.send(text, text, text, text) SET work_mem = '1MB'")
        .await
        .unwrap();
    let target = pgchat::db::Endpoint::parse(&db.url, false).unwrap();
    let locks = pgchat::db::MigrationLocks {
        lock_timeout: std::time::Duration::from_millis(100),
        attempts: 2,
    };
    let e = pgchat::db::migrate_with(&target, None, locks)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gave up after 2 attempts") && e.contains("lock"),
        "{e}"
    );
    drop(held);
    // Nothing of it stayed: version 3 still, and a later start migrates.
    assert_eq!(versions_recorded(&db).await, 3);
    migrate(&db).await.unwrap();
    assert_eq!(versions_recorded(&db).await, pgchat::db::SCHEMA_VERSION);
}

async fn versions_recorded(db: &TestDb) -> i32 {
    db.client()
        .await
        .query_one("SELECT max(version) FROM public.pgchat_schema", &[])
        .await
        .unwrap()
        .get(0)
}

/// A database at schema version 4 (pgchat before issue 18), as its migrations built it,
/// with messages written through version 4's own write path (its SQL API).
async fn at_version_4_with_messages() -> TestDb {
    let db = at_version_3().await;
    let client = db.client().await;
    client
        .batch_execute(include_str!("../migrations/V4__trust.sql"))
        .await
        .unwrap();
    client
        .batch_execute(
            "SELECT pgchat.ensure_user('alice', 'Alice'), pgchat.ensure_user('bob', 'Bob');
             SELECT pgchat.send_direct('alice', 'bob', 'old pancakes ' || i, 'k' || i)
             FROM generate_series(1, 30) i;",
        )
        .await
        .unwrap();
    db
}

#[tokio::test]
async fn a_version_4_database_upgrades_with_its_messages_searchable_and_changeable() {
    let db = at_version_4_with_messages().await;
    let app = TestApp::spawn_on(db, |_| {}).await;
    assert_eq!(
        versions(&app.db).await.1,
        pgchat::db::SCHEMA_VERSION,
        "migrated at start"
    );
    // The search index was built (concurrently, after the migration) and is valid, and
    // the widened event kind check validated.
    assert_eq!(
        app.db
            .count(
                "SELECT count(*) FROM pg_index WHERE indexrelid = 'pgchat.messages_search'::regclass
                 AND indisvalid"
            )
            .await,
        1
    );
    assert_eq!(
        app.db
            .count(
                "SELECT count(*) FROM pg_constraint WHERE conname = 'event_queue_kind_check'
                 AND convalidated"
            )
            .await,
        1
    );
    let mut bob = app.connect("bob").await;
    let list = bob.ok(json!({"type": "conversations"})).await;
    let entry = &list["conversations"][0];
    assert_eq!(entry["mentions_unread"], 0);
    assert_eq!(entry["last_message"]["body"], "old pancakes 30");
    assert_eq!(entry["last_message"]["deleted"], false);
    let conv = entry["id"].as_str().unwrap().to_string();
    let page = bob
        .ok(json!({"type": "history", "conversation": conv, "limit": 100}))
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 30);
    assert_eq!(page["messages"][0]["body"], "old pancakes 1");
    assert_eq!(page["messages"][0]["reactions"], json!([]));
    // Old messages are found, and can be reacted to, edited and deleted.
    let found = bob
        .ok(json!({"type": "search", "query": "pancakes", "limit": 50}))
        .await;
    assert_eq!(found["messages"].as_array().unwrap().len(), 30);
    assert_eq!(found["messages"][0]["cseq"], 30);
    bob.ok(json!({"type": "react", "conversation": conv, "cseq": 1, "emoji": "👍", "on": true}))
        .await;
    let mut alice = app.connect("alice").await;
    alice
        .ok(json!({"type": "edit", "conversation": conv, "cseq": 2, "body": "new waffles"}))
        .await;
    alice
        .ok(json!({"type": "delete", "conversation": conv, "cseq": 3}))
        .await;
    let found = bob
        .ok(json!({"type": "search", "query": "pancakes", "limit": 50}))
        .await;
    assert_eq!(found["messages"].as_array().unwrap().len(), 28);
    // The old stream replays in order, gap-free, with the new events after it.
    bob.ok(json!({"type": "resume", "after": 0})).await;
    let seqs: Vec<i64> = bob
        .buffered()
        .iter()
        .filter_map(|e| e["seq"].as_i64())
        .collect();
    // (The live events of the three changes came first; the replay follows from seq 1.)
    let replay = &seqs[seqs.iter().position(|s| *s == 1).unwrap()..];
    assert_eq!(
        replay,
        (1..=34).collect::<Vec<i64>>(),
        "31 old events, 3 new"
    );
}

#[tokio::test]
async fn an_interrupted_search_index_build_is_redone_at_the_next_start() {
    let db = at_version_4_with_messages().await;
    let target = pgchat::db::Endpoint::parse(&db.url, false).unwrap();
    pgchat::db::migrate(&target, None).await.unwrap();
    // As a build killed midway leaves it: the index exists but is not valid.
    let client = db.client().await;
    client
        .batch_execute(
            "UPDATE pg_index SET indisvalid = false
             WHERE indexrelid = 'pgchat.messages_search'::regclass",
        )
        .await
        .unwrap();
    pgchat::db::migrate(&target, None).await.unwrap();
    assert_eq!(
        db.count(
            "SELECT count(*) FROM pg_index WHERE indexrelid = 'pgchat.messages_search'::regclass
             AND indisvalid"
        )
        .await,
        1
    );
}
