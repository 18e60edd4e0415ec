//! What pgchat believes, and what it does not: notices on its NOTIFY channel from other
//! database roles, sealed notices that claim more than the tables hold, replays, and rows
//! the tables should not hold (issue 17). Driven from outside: a real second database
//! role that sends NOTIFY and listens on pgchat's channel, and real sockets.

mod common;

use std::time::Duration;

use common::{TestApp, TestDb, PATIENCE};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

/// A login role with no privilege on pgchat's tables (what any other application of the
/// same database server is), connected to the test's database.
async fn intruder(db: &TestDb) -> tokio_postgres::Client {
    let admin = db.client().await;
    admin
        .batch_execute(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgchat_intruder') THEN
                     CREATE ROLE pgchat_intruder LOGIN PASSWORD 'intruder';
                 END IF;
             END $$",
        )
        .await
        .unwrap();
    let mut config: tokio_postgres::Config = db.url.parse().unwrap();
    config.user("pgchat_intruder").password("intruder");
    let (client, conn) = config.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    // It really is an outsider: it cannot read the key that seals notices.
    let read = client.query("SELECT key FROM pgchat.notice_key", &[]).await;
    assert!(
        read.is_err(),
        "another role must not read pgchat.notice_key"
    );
    client
}

/// The intruder's LISTEN on pgchat's channel: every payload pgchat's workers send.
async fn listen_as_intruder(db: &TestDb) -> mpsc::UnboundedReceiver<String> {
    intruder(db).await; // the role exists
    let mut config: tokio_postgres::Config = db.url.parse().unwrap();
    config.user("pgchat_intruder").password("intruder");
    let (client, mut conn) = config.connect(NoTls).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    client.batch_execute("LISTEN pgchat").await.unwrap();
    // Keep the client alive with the connection.
    std::mem::forget(client);
    rx
}

/// Sends `notice` on pgchat's channel with a valid seal: what only a holder of the key
/// could do (the test is the database's superuser).
async fn notify_sealed(db: &TestDb, notice: &Value) {
    db.client()
        .await
        .execute(
            "SELECT pg_notify('pgchat', pgchat.sign_notice($1))",
            &[&notice.to_string()],
        )
        .await
        .unwrap();
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Waits until `count()` reaches `n`.
async fn until(what: &str, n: u64, count: impl Fn() -> u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while count() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} of {n}",
            count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn health(app: &TestApp) -> Value {
    reqwest::get(app.http("/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The worker id a server reports in /health.
async fn worker_id(app: &TestApp) -> String {
    health(app).await["worker"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn notices_from_another_database_role_are_dropped_and_counted() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let dm = alice.send_dm("bob", "hello", "m1").await;
    let conversation = dm["conversation"].as_str().unwrap().to_string();
    let head = bob.event_of("message").await["seq"].as_i64().unwrap();
    let intruder = intruder(&app.db).await;
    // The two reproductions of the review: a forged "typing" and a forged stream
    // advance far past bob's head (which closed his socket with 1013 before).
    let typing = json!({"k": "t", "w": "x", "n": now_micros(), "c": conversation, "u": "alice",
                        "s": "start", "m": ["alice", "bob"]});
    let advance = json!({"k": "e", "w": "x", "u": [["bob", i64::MAX]]});
    for notice in [&typing, &advance] {
        intruder
            .execute("SELECT pg_notify('pgchat', $1)", &[&notice.to_string()])
            .await
            .unwrap();
    }
    let metrics = app.app.metrics.clone();
    until("unsealed notices counted", 2, || {
        metrics.notices_unsealed.get()
    })
    .await;
    // Nothing reached bob, and his session is whole: a real message arrives next, in
    // order.
    assert_eq!(bob.recv_within(Duration::from_millis(300)).await, Err(()));
    alice.send_dm("bob", "still here?", "m2").await;
    let next = bob.event_of("message").await;
    assert_eq!(next["seq"], head + 1);
    assert_eq!(next["message"]["body"], "still here?");
    let typing_seen = bob.buffered().iter().any(|e| e["type"] == "typing");
    assert!(!typing_seen, "a forged typing notice must not be shown");
}

#[tokio::test]
async fn a_sealed_stream_advance_is_only_a_hint_read_against_the_table() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    alice.send_dm("bob", "hello", "m1").await;
    let head = bob.event_of("message").await["seq"].as_i64().unwrap();
    // Sealed, so believed to come from pgchat; but it claims a seq the table does not hold,
    // within and beyond the window the listener fetches itself.
    let metrics = app.app.metrics.clone();
    let before = metrics.notifications.get();
    for seq in [head + 5, i64::MAX] {
        notify_sealed(&app.db, &json!({"k": "e", "w": "x", "u": [["bob", seq]]})).await;
    }
    until("notices received", before + 2, || {
        metrics.notifications.get()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // bob is neither closed nor moved past what the table holds: the next real event is
    // the one after his head.
    bob.ok(json!({"type": "ping"})).await;
    alice.send_dm("bob", "after the hint", "m2").await;
    let next = bob.event_of("message").await;
    assert_eq!(next["seq"], head + 1);
    assert_eq!(next["message"]["body"], "after the hint");
}

#[tokio::test]
async fn presence_from_a_worker_not_in_the_workers_table_is_ignored() {
    let app = TestApp::spawn().await;
    let mut bob = app.connect("bob").await;
    let reply = bob
        .ok(json!({"type": "presence_subscribe", "users": ["carol"]}))
        .await;
    assert_eq!(reply["presence"][0]["status"], "offline");
    // Sealed (only a holder of the key could), from a worker that never heartbeat.
    notify_sealed(
        &app.db,
        &json!({"k": "p", "w": "ghost-1", "n": now_micros(), "on": ["carol"]}),
    )
    .await;
    let metrics = app.app.metrics.clone();
    until("ignored notices counted", 1, || {
        metrics.notices_ignored.get()
    })
    .await;
    assert_eq!(
        bob.next_of("presence", Duration::from_millis(300)).await,
        None
    );
    let again = bob
        .ok(json!({"type": "presence_subscribe", "users": ["carol"]}))
        .await;
    assert_eq!(again["presence"][0]["status"], "offline");
}

/// Two workers in one process on one database, with a short grace period.
async fn two_workers(adjust: impl Fn(&mut pgchat::Config) + Copy) -> (TestApp, TestApp) {
    let db = TestDb::new().await;
    let second = TestDb::on_private_cluster(db.url.clone(), &db.name);
    let a = TestApp::spawn_on(db, |c| {
        c.presence_grace_ms = 100;
        adjust(c)
    })
    .await;
    let b = TestApp::spawn_on(second, |c| {
        c.presence_grace_ms = 100;
        adjust(c)
    })
    .await;
    // Each knows the other from its heartbeat (every 2 s).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if health(&b).await["cluster"]["peers"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "workers never met");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (a, b)
}

#[tokio::test]
async fn a_replayed_presence_notice_changes_nothing() {
    let (a, b) = two_workers(|_| {}).await;
    let mut captured = listen_as_intruder(&a.db).await;
    let mut bob = b.connect("bob").await;
    bob.ok(json!({"type": "presence_subscribe", "users": ["carol"]}))
        .await;
    // carol comes and goes on worker A: A announces "online", then "offline".
    let carol = a.connect("carol").await;
    let online = bob.event_of("presence").await;
    assert_eq!(online["status"], "online");
    carol.close().await;
    assert_eq!(bob.event_of("presence").await["status"], "offline");
    // The intruder kept the payload that took carol offline.
    let mut offline_payload = None;
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(2), captured.recv()).await {
        if p.contains(r#""k":"p""#) && p.contains(r#""off""#) {
            offline_payload = Some(p);
            break;
        }
    }
    let offline_payload = offline_payload.expect("the intruder heard A's presence notice");
    // carol is back; the intruder replays the sealed "offline" word for word.
    let _carol = a.connect("carol").await;
    assert_eq!(bob.event_of("presence").await["status"], "online");
    let ignored = b.app.metrics.notices_ignored.get();
    intruder(&a.db)
        .await
        .execute("SELECT pg_notify('pgchat', $1)", &[&offline_payload])
        .await
        .unwrap();
    ignored_and_carol_stays_online(&b, &mut bob, ignored).await;
}

/// Once `app` has ignored one more notice than `before`: `bob` was told nothing, and
/// carol is still online.
async fn ignored_and_carol_stays_online(app: &TestApp, bob: &mut common::Client, before: u64) {
    let metrics = app.app.metrics.clone();
    until("the notice ignored", before + 1, || {
        metrics.notices_ignored.get()
    })
    .await;
    assert_eq!(
        bob.next_of("presence", Duration::from_millis(300)).await,
        None
    );
    let now = bob
        .ok(json!({"type": "presence_subscribe", "users": ["carol"]}))
        .await;
    assert_eq!(now["presence"][0]["status"], "online");
}

#[tokio::test]
async fn a_departure_notice_naming_a_live_worker_takes_nobody_offline() {
    let (a, b) = two_workers(|_| {}).await;
    let mut bob = b.connect("bob").await;
    bob.ok(json!({"type": "presence_subscribe", "users": ["carol"]}))
        .await;
    let _carol = a.connect("carol").await;
    assert_eq!(bob.event_of("presence").await["status"], "online");
    let worker_a = worker_id(&a).await;
    let ignored = b.app.metrics.notices_ignored.get();
    notify_sealed(
        &a.db,
        &json!({"k": "g", "w": "ghost-2", "n": now_micros(), "dead": [worker_a]}),
    )
    .await;
    ignored_and_carol_stays_online(&b, &mut bob, ignored).await;
}

#[tokio::test]
async fn another_worker_s_presence_is_capped() {
    let (a, b) = two_workers(|c| c.presence_max_users_per_worker = 2).await;
    let worker_a = worker_id(&a).await;
    let mut bob = b.connect("bob").await;
    // Sealed, from a worker in the table, announcing more users than the cap.
    notify_sealed(
        &a.db,
        &json!({"k": "p", "w": worker_a, "n": now_micros(), "on": ["u1", "u2", "u3"]}),
    )
    .await;
    let metrics = b.app.metrics.clone();
    until("the users over the cap counted", 1, || {
        metrics.notices_ignored.get()
    })
    .await;
    let reply = bob
        .ok(json!({"type": "presence_subscribe", "users": ["u1", "u2", "u3"]}))
        .await;
    let online = reply["presence"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == "online")
        .count();
    assert_eq!(online, 2, "{reply}");
}

#[tokio::test]
async fn an_event_whose_message_was_deleted_by_hand_is_skipped_not_fatal() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    alice.send_dm("bob", "first", "m1").await;
    let head = bob.event_of("message").await["seq"].as_i64().unwrap();
    // The backend sends, and in the same transaction someone deletes the message row: the
    // event row points at nothing. Every worker's listener fetches it (the SQL path has no
    // local delivery), and bob's session must read the table for it.
    let db = app.db.client().await;
    db.batch_execute(
        "BEGIN;
         SELECT pgchat.send_direct('alice', 'bob', 'doomed', 'sql-1');
         DELETE FROM pgchat.messages WHERE client_msg_id = 'sql-1';
         COMMIT;",
    )
    .await
    .unwrap();
    let metrics = app.app.metrics.clone();
    until("the bad row counted", 1, || metrics.bad_rows.get()).await;
    // Both the listener and bob's session live on: the next message arrives, after the
    // seq that could not be shown.
    alice.send_dm("bob", "second", "m2").await;
    let next = bob.event_of("message").await;
    assert_eq!(next["message"]["body"], "second");
    assert_eq!(
        next["seq"],
        head + 2,
        "seq {} was the unshowable one",
        head + 1
    );
    // A resume from before it passes over it too, and history leaves it out.
    let mut again = app.connect("bob").await;
    again.ok(json!({"type": "resume", "after": 0})).await;
    let bodies: Vec<Value> = again
        .buffered()
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["message"]["body"].clone())
        .collect();
    assert_eq!(bodies, vec![json!("first"), json!("second")]);
    let conversation = next["message"]["conversation"].clone();
    let page = again
        .ok(json!({"type": "history", "conversation": conversation}))
        .await;
    assert_eq!(common::bodies(&page), vec!["first", "second"]);
    assert!(app.app.listener.is_up());
}

#[tokio::test]
async fn a_listener_that_dies_is_reported_and_started_again() {
    let app = TestApp::spawn().await;
    let mut bob = app.connect("bob").await;
    app.app.listener.abort_task();
    // /ready says so while it is down...
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let ready = reqwest::get(app.http("/ready")).await.unwrap();
        if ready.status() == 503 {
            let body: Value = ready.json().await.unwrap();
            assert_eq!(body["listener"], "down");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "/ready stayed 200");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ...and it comes back: a message from the backend, which only the listener delivers,
    // reaches bob.
    common::wait_ready(&app.http("/ready")).await;
    app.db
        .client()
        .await
        .batch_execute(
            "SELECT pgchat.ensure_user('shop');
             SELECT pgchat.send_direct('shop', 'bob', 'back again', 'o1');",
        )
        .await
        .unwrap();
    let message = bob.event_of("message").await;
    assert_eq!(message["message"]["body"], "back again");
    assert_eq!(health(&app).await["listener"]["last_error"], "crashed");
}
