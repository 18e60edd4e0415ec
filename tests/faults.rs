//! The database going away and coming back, on a private cluster of the test's own (the
//! machine's server is never stopped): sends get `unavailable` and store nothing, /ready
//! says 503, and a retry with the same client_msg_id succeeds exactly once.

mod common;

use std::time::Duration;

use common::{Client, TestApp};
use pgchat::db::embedded::{find_bindir, Cluster};
use serde_json::json;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn sends_during_an_outage_are_unavailable_and_succeed_once_on_retry() {
    common::init_logging();
    let bindir = find_bindir().expect("PostgreSQL server binaries (.ci/run installs them)");
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("faults-{:08x}", rand::random::<u32>()));
    let port = free_port();
    let cluster = Cluster::start(&bindir, &dir, port).await.unwrap();
    let url = cluster.url("pgchat");

    let app = TestApp::spawn_with(|c| {
        c.database_url = Some(url.clone());
        c.db_acquire_timeout_ms = 500;
    })
    .await;
    let mut alice = app.connect("alice").await;
    let first = alice.send_dm("bob", "before", "m1").await;
    assert_eq!(first["cseq"], 1);

    // The database stops (fast shutdown: connections are terminated).
    tokio::task::spawn_blocking(move || {
        cluster.stop().unwrap();
        std::mem::forget(cluster); // already stopped: skip the stop in Drop
    })
    .await
    .unwrap();

    let e = alice
        .err(
            json!({"type": "send", "to": "bob", "body": "during", "client_msg_id": "m2"}),
            "unavailable",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("retry"), "{e}");
    let ready = reqwest::get(app.http("/ready")).await.unwrap();
    assert_eq!(ready.status(), 503, "/ready tells the truth");
    // The session survived the outage: it still answers.
    alice.ok(json!({"type": "ping"})).await;
    // A new connection is refused before the upgrade, saying why.
    let (status, body) = app
        .try_connect(Some(&app.token("carol")))
        .await
        .err()
        .expect("refused while the database is down");
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "not_ready");

    // The database comes back; the client retries with the same client_msg_id.
    let cluster = Cluster::start(&bindir, &dir, port).await.unwrap();
    let mut stored = None;
    for _ in 0..50 {
        let r = alice
            .request(json!({"type": "send", "to": "bob", "body": "during", "client_msg_id": "m2"}))
            .await;
        if r["type"] == "ok" {
            stored = Some(r["message"].clone());
            break;
        }
        assert_eq!(r["code"], "unavailable", "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = stored.expect("the send succeeds once the database is back");
    assert_eq!(
        stored["cseq"], 2,
        "nothing from the failed attempt took a number"
    );
    // A second retry returns the same message.
    assert_eq!(alice.send_dm("bob", "during", "m2").await, stored);

    // And bob's stream has exactly: conversation, message 1, message 2.
    let mut bob: Client = app.connect("bob").await;
    bob.ok(json!({"type": "resume", "after": 0})).await;
    let seqs: Vec<i64> = bob
        .buffered()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    // The listener reconnects with backoff and catches up before /ready says 200 again.
    let mut ready = false;
    for _ in 0..150 {
        if reqwest::get(app.http("/ready")).await.unwrap().status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "/ready is 200 again once the database is back");
    drop(alice);
    drop(bob);
    drop(app);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unexpected_database_error_is_internal_and_harms_nothing_else() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let first = alice.send_dm("bob", "before", "m1").await;
    // Break the schema behind pgchat's back: inserting messages now fails with an error
    // that is not about reaching the database.
    let db = app.db.client().await;
    db.batch_execute("ALTER TABLE messages RENAME TO messages_elsewhere")
        .await
        .unwrap();
    let e = alice
        .err(
            json!({"type": "send", "to": "bob", "body": "lost?", "client_msg_id": "m2"}),
            "internal",
        )
        .await;
    assert!(
        !e["message"]
            .as_str()
            .unwrap()
            .contains("messages_elsewhere"),
        "no internals leak: {e}"
    );
    // Requests that do not touch the broken table still work on the same socket.
    alice
        .ok(json!({"type": "group_create", "name": "g", "members": []}))
        .await;
    db.batch_execute("ALTER TABLE messages_elsewhere RENAME TO messages")
        .await
        .unwrap();
    // Nothing of the failed send was stored: the retry takes the next numbers.
    let retry = alice.send_dm("bob", "lost?", "m2").await;
    assert_eq!(retry["cseq"], first["cseq"].as_i64().unwrap() + 1);
    let head = app
        .db
        .count("SELECT head FROM users WHERE id = 'bob'")
        .await;
    assert_eq!(head, 3, "conversation, m1, m2: no gap left by the failure");
    assert_eq!(
        app.db
            .count("SELECT head FROM users WHERE id = 'alice'")
            .await,
        4
    );
}

#[tokio::test]
async fn a_session_that_cannot_read_its_stream_is_closed_with_1011() {
    // The server runs as a role that may write events but not read them back; a feed that
    // keeps one frame forces a session to read the table when two events commit at once.
    let db = common::TestDb::new().await;
    let limited = db.url_for_role("pgchat_no_replay").await;
    let app = TestApp::spawn_with(|c| {
        c.database_url = Some(limited.clone());
        c.recent_events_per_user = 1;
    })
    .await;
    db.client()
        .await
        .batch_execute("REVOKE SELECT ON event_queue FROM pgchat_no_replay")
        .await
        .unwrap();
    let mut bob = app.connect("bob").await;
    let mut alice = app.connect("alice").await;
    // The first DM commits two events for each of them (the conversation, the message).
    alice
        .send_text(
            json!({"type": "send", "to": "bob", "body": "hi", "client_msg_id": "1"}).to_string(),
        )
        .await;
    assert_eq!(bob.close_code().await, Some(1011));
    assert_eq!(alice.close_code().await, Some(1011));
    // The server goes on; the message is stored, for a resume once the fault is mended.
    let mut carol = app.connect("carol").await;
    carol.ok(json!({"type": "ping"})).await;
    assert_eq!(db.count("SELECT count(*) FROM messages").await, 1);
    db.client()
        .await
        .batch_execute("GRANT SELECT ON event_queue TO pgchat_no_replay")
        .await
        .unwrap();
    let mut bob = app.connect("bob").await;
    bob.ok(json!({"type": "resume", "after": 0})).await;
    let seqs: Vec<i64> = bob
        .buffered()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2]);
}

#[tokio::test]
async fn a_session_whose_events_cannot_be_read_waits_for_the_database_instead_of_closing() {
    // A feed that keeps one frame: a DM's two events must be read from the table.
    let db = common::TestDb::new().await;
    let role = db.url_for_role("pgchat_outage").await;
    // (Roles are the server's: undo what a failed earlier run may have left.)
    db.client()
        .await
        .batch_execute("ALTER ROLE pgchat_outage CONNECTION LIMIT -1")
        .await
        .unwrap();
    let app = TestApp::spawn_on(db, |c| {
        c.database_url = Some(role.clone());
        c.recent_events_per_user = 1;
        c.db_acquire_timeout_ms = 300;
    })
    .await;
    let admin = app.db.client().await;
    let mut bob = app.connect("bob").await;
    // The database refuses the server every new connection (SQLSTATE 53300, transient),
    // and its pooled ones are gone; only the listener's connection stays.
    admin
        .batch_execute(
            "ALTER ROLE pgchat_outage CONNECTION LIMIT 1;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE usename = 'pgchat_outage' AND application_name NOT LIKE '% listener';",
        )
        .await
        .unwrap();
    // The application's backend sends bob a message from SQL meanwhile.
    admin
        .batch_execute(
            "SELECT pgchat.ensure_user('carol', 'Carol');
             SELECT pgchat.send_direct('carol', 'bob', 'while down', 'k1');",
        )
        .await
        .unwrap();
    // Bob's session cannot read the two events; it waits rather than closing (1011).
    match bob.recv_within(Duration::from_secs(2)).await {
        Err(()) => {} // nothing arrived, and the socket stayed open
        Ok(None) => panic!("the session was closed while the database was unreachable"),
        Ok(Some(f)) => panic!("nothing can arrive yet: {f}"),
    }
    admin
        .batch_execute("ALTER ROLE pgchat_outage CONNECTION LIMIT -1")
        .await
        .unwrap();
    let conversation = bob.event().await;
    assert_eq!(
        (conversation["type"].as_str(), conversation["seq"].as_i64()),
        (Some("conversation"), Some(1))
    );
    let message = bob.event().await;
    assert_eq!(message["seq"], 2);
    assert_eq!(message["message"]["body"], "while down");
}
