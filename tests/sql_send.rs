//! Sending from SQL: the application's backend calls pgchat.send / pgchat.send_direct in
//! its own transaction; the message is delivered live when that transaction commits and
//! never exists if it rolls back.

mod common;

use common::cluster::Cluster;
use common::TestApp;
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;

/// The message as pgchat.send returned it.
fn message(row: tokio_postgres::Row) -> Value {
    row.get(0)
}

#[tokio::test]
async fn a_send_from_sql_in_a_committed_transaction_arrives_live() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;

    let mut backend = app.db.client().await;
    let tx = backend.transaction().await.unwrap();
    tx.execute("CREATE TEMP TABLE orders (id int)", &[])
        .await
        .unwrap();
    let sent = message(
        tx.query_one(
            "SELECT pgchat.send_direct('alice', 'bob', 'your order shipped', 'order-1')",
            &[],
        )
        .await
        .unwrap(),
    );
    tx.commit().await.unwrap();

    // A new direct conversation: announced first, then the message, to both sides.
    for c in [&mut bob, &mut alice] {
        let conv = c.event().await;
        assert_eq!(conv["type"], "conversation", "{conv}");
        assert_eq!(conv["conversation"]["members"], json!(["alice", "bob"]));
        let e = c.event().await;
        assert_eq!(e["type"], "message", "{e}");
        assert_eq!(e["seq"], 2);
        assert_eq!(e["message"], sent, "the live frame is what SQL returned");
    }
    assert_eq!(sent["body"], "your order shipped");
    assert_eq!(sent["sender"]["id"], "alice");
    assert_eq!(sent["cseq"], 1);

    // pgchat.send to the conversation by id.
    let conv = sent["conversation"].as_str().unwrap();
    let next = message(
        backend
            .query_one(
                "SELECT pgchat.send('bob', $1, 'thanks', 'order-1-thanks')",
                &[&conv],
            )
            .await
            .unwrap(),
    );
    assert_eq!(next["cseq"], 2);
    assert_eq!(alice.event_of("message").await["message"], next);
}

#[tokio::test]
async fn a_send_from_sql_that_rolls_back_never_appears() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let dm = alice.send_dm("bob", "first", "1").await;
    let conv = dm["conversation"].as_str().unwrap().to_string();
    let mut bob = app.connect("bob").await;
    assert_eq!(bob.head(), 2);

    let mut backend = app.db.client().await;
    let tx = backend.transaction().await.unwrap();
    tx.query_one(
        "SELECT pgchat.send('alice', $1, 'never', 'rolled-back')",
        &[&conv],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    backend
        .query_one(
            "SELECT pgchat.send('alice', $1, 'kept', 'committed')",
            &[&conv],
        )
        .await
        .unwrap();

    // bob's very next event is the committed one, with the next seq and cseq: the rolled
    // back send took neither.
    let e = bob.event().await;
    assert_eq!(e["message"]["body"], "kept");
    assert_eq!(e["seq"], 3);
    assert_eq!(e["message"]["cseq"], 2);
    let db = &app.db;
    assert_eq!(
        db.count("SELECT count(*) FROM messages WHERE client_msg_id = 'rolled-back'")
            .await,
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM event_queue WHERE user_id = 'bob'")
            .await,
        3
    );
}

#[tokio::test]
async fn a_retried_sql_send_returns_the_first_message_and_stores_nothing() {
    let app = TestApp::spawn().await;
    app.connect("alice").await;
    app.connect("bob").await;
    let backend = app.db.client().await;
    let send = "SELECT pgchat.send_direct('alice', 'bob', $1, 'same-key')";
    let first = message(backend.query_one(send, &[&"once"]).await.unwrap());
    let again = message(backend.query_one(send, &[&"twice?"]).await.unwrap());
    assert_eq!(first, again);
    assert_eq!(app.db.count("SELECT count(*) FROM messages").await, 1);
}

#[tokio::test]
async fn sql_sends_are_validated_like_the_socket_and_a_refusal_stores_nothing() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let dm = alice.send_dm("bob", "hi", "1").await;
    let conv = dm["conversation"].as_str().unwrap().to_string();
    app.connect("carol").await;
    let backend = app.db.client().await;
    let messages_before = app.db.count("SELECT count(*) FROM messages").await;
    let events_before = app.db.count("SELECT count(*) FROM event_queue").await;

    let long = "x".repeat(4001);
    let key = "k".repeat(65);
    let cases: Vec<(
        &str,
        Vec<&(dyn postgres_types::ToSql + Sync)>,
        SqlState,
        &str,
    )> = vec![
        (
            "SELECT pgchat.send('alice', 'nope', 'x', 'k')",
            vec![],
            SqlState::NO_DATA_FOUND,
            "conversation \"nope\" does not exist",
        ),
        (
            "SELECT pgchat.send('zed', $1, 'x', 'k')",
            vec![&conv],
            SqlState::NO_DATA_FOUND,
            "no user \"zed\"",
        ),
        (
            "SELECT pgchat.send_direct('alice', 'nobody', 'x', 'k')",
            vec![],
            SqlState::NO_DATA_FOUND,
            "no user \"nobody\"",
        ),
        (
            "SELECT pgchat.send('carol', $1, 'x', 'k')",
            vec![&conv],
            SqlState::INSUFFICIENT_PRIVILEGE,
            "\"carol\" is not a member",
        ),
        (
            "SELECT pgchat.send('bad id!', $1, 'x', 'k')",
            vec![&conv],
            SqlState::INVALID_PARAMETER_VALUE,
            "is not a user id",
        ),
        (
            "SELECT pgchat.send('alice', $1, $2, 'k')",
            vec![&conv, &long],
            SqlState::STRING_DATA_RIGHT_TRUNCATION,
            "at most 4000 characters, got 4001",
        ),
        (
            "SELECT pgchat.send('alice', $1, '', 'k')",
            vec![&conv],
            SqlState::INVALID_PARAMETER_VALUE,
            "body must not be empty",
        ),
        (
            "SELECT pgchat.send('alice', $1, 'x', $2)",
            vec![&conv, &key],
            SqlState::INVALID_PARAMETER_VALUE,
            "client_msg_id has 1..64 characters",
        ),
        (
            "SELECT pgchat.send('alice', $1, 'x', NULL)",
            vec![&conv],
            SqlState::INVALID_PARAMETER_VALUE,
            "client_msg_id",
        ),
    ];
    for (sql, params, state, says) in cases {
        let e = backend
            .query_one(sql, &params)
            .await
            .expect_err(sql)
            .as_db_error()
            .cloned()
            .unwrap_or_else(|| panic!("{sql}: a database error"));
        assert_eq!(e.code(), &state, "{sql}: {}", e.message());
        assert!(e.message().contains(says), "{sql}: {}", e.message());
        assert!(e.message().starts_with("pgchat.send"), "{}", e.message());
    }
    assert_eq!(
        app.db.count("SELECT count(*) FROM messages").await,
        messages_before
    );
    assert_eq!(
        app.db.count("SELECT count(*) FROM event_queue").await,
        events_before
    );

    // The body limit is the server's: a server started with a smaller one records it.
    drop(app);
    let app = TestApp::spawn_with(|c| c.max_message_chars = 10).await;
    app.connect("alice").await;
    app.connect("bob").await;
    let e = app
        .db
        .client()
        .await
        .query_one(
            "SELECT pgchat.send_direct('alice', 'bob', 'eleven char', 'k')",
            &[],
        )
        .await
        .unwrap_err();
    let e = e.as_db_error().unwrap().message().to_string();
    assert!(e.contains("at most 10 characters"), "{e}");
}

#[tokio::test]
async fn pgchat_ensure_user_lets_the_backend_write_to_someone_not_yet_connected() {
    let app = TestApp::spawn().await;
    let backend = app.db.client().await;
    backend
        .execute("SELECT pgchat.ensure_user('shop', 'The Shop')", &[])
        .await
        .unwrap();
    backend
        .execute("SELECT pgchat.ensure_user('dana')", &[])
        .await
        .unwrap();
    let m = message(
        backend
            .query_one(
                "SELECT pgchat.send_direct('shop', 'dana', 'welcome', 'w1')",
                &[],
            )
            .await
            .unwrap(),
    );
    assert_eq!(m["sender"]["name"], "The Shop");
    let e = backend
        .execute("SELECT pgchat.ensure_user('no spaces')", &[])
        .await
        .unwrap_err();
    assert_eq!(
        e.as_db_error().unwrap().code(),
        &SqlState::INVALID_PARAMETER_VALUE
    );

    // dana connects later and finds it waiting.
    let mut dana = app.connect("dana").await;
    assert_eq!(dana.head(), 2);
    dana.ok(json!({"type": "resume", "after": 0})).await;
    let replay = dana.buffered();
    assert_eq!(replay[1]["message"], m);
}

#[tokio::test]
async fn a_send_from_sql_reaches_sockets_on_every_worker() {
    let cluster = Cluster::start(2, &[]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
    let group = alice
        .ok(json!({"type": "group_create", "name": "team", "members": ["bob"]}))
        .await;
    let id = group["conversation"]["id"].as_str().unwrap().to_string();
    bob.event_of("conversation").await;

    let backend = cluster.db.client().await;
    let m = message(
        backend
            .query_one(
                "SELECT pgchat.send('alice', $1, 'from the backend', 'b1')",
                &[&id],
            )
            .await
            .unwrap(),
    );
    assert_eq!(alice.event_of("message").await["message"], m);
    assert_eq!(bob.event_of("message").await["message"], m);
}

#[tokio::test]
async fn a_send_racing_one_with_its_key_into_another_conversation_gets_the_first() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let to_bob = alice.send_dm("bob", "hi bob", "1").await;
    let to_carol = alice.send_dm("carol", "hi carol", "2").await;

    // The backend sends with key "same" to bob and holds its transaction open.
    let mut backend = app.db.client().await;
    let tx = backend.transaction().await.unwrap();
    let first = message(
        tx.query_one(
            "SELECT pgchat.send('alice', $1, 'from the backend', 'same')",
            &[&to_bob["conversation"].as_str().unwrap()],
        )
        .await
        .unwrap(),
    );
    // The socket sends with the same key to carol: its batch waits on the key's index
    // entry, then finds it taken when the backend commits, and is run again.
    let request = json!({"type": "send", "conversation": to_carol["conversation"],
                         "body": "from the socket", "client_msg_id": "same", "ref": "r"});
    alice.send_text(request.to_string()).await;
    // Commit only once the socket's batch waits on the key.
    let admin = app.db.client().await;
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'pgchat'
                   AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tx.commit().await.unwrap();
    let reply = alice.reply_to("r").await;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(reply["message"], first, "the first message with the key");
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM messages WHERE client_msg_id = 'same'")
            .await,
        1
    );
}

/// A login role of `db`'s server with no right on pgchat's tables, connected to `db`;
/// granted `pgchat_sender` when `sender`.
async fn backend_role(db: &common::TestDb, name: &str, sender: bool) -> tokio_postgres::Client {
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN
                     CREATE ROLE {name} LOGIN PASSWORD '{name}';
                 END IF;
             END $$;
             {}",
            if sender {
                format!("GRANT pgchat_sender TO {name};")
            } else {
                format!("REVOKE pgchat_sender FROM {name};")
            }
        ))
        .await
        .unwrap();
    let mut config: tokio_postgres::Config = db.url.parse().unwrap();
    config.user(name).password(name);
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn a_backend_granted_pgchat_sender_sends_without_any_right_on_the_tables() {
    let app = TestApp::spawn().await;
    let mut bob = app.connect("bob").await;
    let backend = backend_role(&app.db, "pgchat_test_backend", true).await;
    backend
        .execute("SELECT pgchat.ensure_user('shop', 'The Shop')", &[])
        .await
        .unwrap();
    let sent = message(
        backend
            .query_one(
                "SELECT pgchat.send_direct('shop', 'bob', 'your order shipped', 'o-1')",
                &[],
            )
            .await
            .unwrap(),
    );
    assert_eq!(sent["sender"]["name"], "The Shop");
    let event = bob.event_of("message").await;
    assert_eq!(event["message"]["body"], "your order shipped");
    // The functions run with their owner's rights; the role itself has none.
    for sql in [
        "SELECT count(*) FROM pgchat.messages",
        "SELECT key FROM pgchat.notice_key",
        "INSERT INTO pgchat.users (id) VALUES ('mallory')",
    ] {
        let e = backend.execute(sql, &[]).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {e}"
        );
    }
    // Its own search_path, temporary objects included, cannot stand in for what the
    // functions call.
    backend
        .batch_execute(
            "CREATE TEMP TABLE settings (max_message_chars int, max_group_members int);
             SET search_path = pg_temp, public;",
        )
        .await
        .unwrap();
    let sent = message(
        backend
            .query_one(
                "SELECT pgchat.send_direct('shop', 'bob', 'again', 'o-2')",
                &[],
            )
            .await
            .unwrap(),
    );
    assert_eq!(sent["body"], "again");
}

#[tokio::test]
async fn a_role_without_pgchat_sender_cannot_call_the_sql_api() {
    let app = TestApp::spawn().await;
    let other = backend_role(&app.db, "pgchat_test_other", false).await;
    for sql in [
        "SELECT pgchat.ensure_user('eve')",
        "SELECT pgchat.send_direct('alice', 'bob', 'hi', 'k')",
        "SELECT pgchat.send('alice', 'd1', 'hi', 'k')",
    ] {
        let e = other.execute(sql, &[]).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {e}"
        );
    }
}

#[tokio::test]
async fn every_function_has_a_fixed_search_path_and_only_the_api_runs_as_its_owner() {
    let app = TestApp::spawn().await;
    let rows = app
        .db
        .client()
        .await
        .query(
            "SELECT p.proname, p.prosecdef, coalesce(p.proconfig, '{}'),
                    has_function_privilege('public', p.oid, 'EXECUTE')
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'pgchat'
               -- btree_gin's own (C) functions, installed in the schema with it.
               AND NOT EXISTS (SELECT 1 FROM pg_depend d
                               WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                                 AND d.deptype = 'e')
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    assert!(rows.len() >= 10, "{} functions", rows.len());
    for row in rows {
        let (name, definer, config, public): (String, bool, Vec<String>, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert!(
            config.contains(&"search_path=pg_catalog, pgchat, pg_temp".to_string()),
            "{name}: {config:?}"
        );
        let api = ["send", "send_direct", "ensure_user", "edit", "delete"].contains(&name.as_str());
        assert_eq!(
            definer, api,
            "{name}: SECURITY DEFINER only for the SQL API"
        );
        if api {
            assert!(!public, "{name}: EXECUTE is not for everyone");
        }
    }
}
