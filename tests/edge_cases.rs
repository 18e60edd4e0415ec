//! Protocol edge cases: a session that falls behind retention, a commit whose outcome is
//! unknown, retried group creation, and whose clock stamps messages.

mod common;

use std::time::Duration;

use common::TestApp;
use serde_json::json;

/// Waits until a backend of this test's database waits for a lock in a statement that
/// contains `fragment`; returns its pid.
async fn blocked_backend(db: &tokio_postgres::Client, fragment: &str) -> i32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = db
            .query_opt(
                "SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid() LIMIT 1",
                &[&fragment],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no statement with {fragment} waited for a lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_session_whose_next_events_were_pruned_is_told_to_resync_never_skips_them() {
    let app = TestApp::spawn().await;
    let mut bob = app.connect("bob").await;
    let head = bob.head();
    // The backend sends bob a message, and retention prunes it before bob's session has
    // sent it (here: in the same transaction, so that it is gone by the time it is read).
    let mut db = app.db.client().await;
    let tx = db.transaction().await.unwrap();
    tx.execute("SELECT pgchat.ensure_user('shop')", &[])
        .await
        .unwrap();
    tx.execute(
        "SELECT pgchat.send_direct('shop', 'bob', 'your order', 'o1')",
        &[],
    )
    .await
    .unwrap();
    tx.execute(
        "UPDATE event_queue SET created_at = now() - interval '2 days' WHERE user_id = 'bob'",
        &[],
    )
    .await
    .unwrap();
    tx.execute("SELECT prune_events(interval '1 day', 100)", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // The live session cannot deliver seq head+1: it closes instead of skipping it...
    assert_eq!(bob.close_code().await, Some(1013));
    // ...and resuming from where the client was answers resync_required.
    let mut bob = app.connect("bob").await;
    let e = bob
        .err(json!({"type": "resume", "after": head}), "resync_required")
        .await;
    assert!(e["message"].as_str().unwrap().contains("pruned"), "{e}");
    let ok = bob.ok(json!({"type": "resume", "after": bob.head()})).await;
    assert_eq!(ok["head"], bob.head());
}

#[tokio::test]
async fn a_commit_whose_outcome_is_unknown_is_unavailable_and_says_what_is_safe_to_retry() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let first = alice.send_dm("bob", "one", "m1").await;
    let conversation = first["conversation"].as_str().unwrap().to_string();

    // A send waits for the conversation's lock; its connection breaks while it waits.
    let mut db = app.db.client().await;
    let holder = db.transaction().await.unwrap();
    holder
        .execute(
            "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE",
            &[&conversation],
        )
        .await
        .unwrap();
    alice
        .send_text(
            json!({"type": "send", "to": "bob", "body": "two", "client_msg_id": "m2", "ref": "s"})
                .to_string(),
        )
        .await;
    let killer = app.db.client().await;
    let pid = blocked_backend(&killer, "apply_batch").await;
    killer
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let reply = alice.reply_to("s").await;
    holder.rollback().await.unwrap();
    assert_eq!(reply["code"], "unavailable", "{reply}");
    let message = reply["message"].as_str().unwrap();
    assert!(
        message.contains("may or may not") && message.contains("same client_msg_id is safe"),
        "{message}"
    );
    // The retry is safe: stored once.
    let again = alice.send_dm("bob", "two", "m2").await;
    assert_eq!(again["cseq"], 2);
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM messages WHERE client_msg_id = 'm2'")
            .await,
        1
    );

    // A group_create without client_op_id is not safe to retry blindly: the reply says so.
    let holder = db.transaction().await.unwrap();
    holder
        .execute("SELECT 1 FROM users WHERE id = 'bob' FOR UPDATE", &[])
        .await
        .unwrap();
    alice
        .send_text(
            json!({"type": "group_create", "name": "g", "members": ["bob"], "ref": "g"})
                .to_string(),
        )
        .await;
    let pid = blocked_backend(&killer, "apply_batch").await;
    killer
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let reply = alice.reply_to("g").await;
    holder.rollback().await.unwrap();
    assert_eq!(reply["code"], "unavailable", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("client_op_id"),
        "{reply}"
    );
}

#[tokio::test]
async fn group_create_with_a_client_op_id_is_idempotent() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let create = |name: &str, key: &str| json!({"type": "group_create", "name": name, "members": ["bob"], "client_op_id": key});
    let first = alice.ok(create("team", "op-1")).await;
    // The retry returns the same group as the first reply showed it, even after a change.
    alice
        .ok(json!({"type": "group_add", "conversation": first["conversation"]["id"], "users": ["carol"]}))
        .await;
    let again = alice.ok(create("other name", "op-1")).await;
    assert_eq!(again["conversation"], first["conversation"]);
    // Another key, or another creator with the same key, is another group.
    let other = alice.ok(create("team", "op-2")).await;
    assert_ne!(other["conversation"]["id"], first["conversation"]["id"]);
    let bobs = bob.ok(create("team", "op-1")).await;
    assert_ne!(bobs["conversation"]["id"], first["conversation"]["id"]);
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM conversations WHERE kind = 'group'")
            .await,
        3
    );
    // The key is checked like every id.
    alice
        .err(create("team", &"k".repeat(65)), "bad_request")
        .await;
}

#[tokio::test]
async fn messages_are_stamped_by_the_database_when_stored_so_time_follows_cseq() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let first = alice.send_dm("bob", "one", "m1").await;
    let conversation = first["conversation"].as_str().unwrap().to_string();
    // The backend's transaction begins, then alice's second message commits, then the
    // backend sends: its message comes after alice's, and so must its time.
    let mut db = app.db.client().await;
    let tx = db.transaction().await.unwrap();
    tx.execute("SELECT now()", &[]).await.unwrap();
    let second = alice.send_dm("bob", "two", "m2").await;
    let third: serde_json::Value = tx
        .query_one(
            "SELECT pgchat.send('bob', $1, 'three', 'b1')",
            &[&conversation],
        )
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    assert_eq!(third["cseq"], 3);
    let (t2, t3) = (
        second["created_at"].as_str().unwrap(),
        third["created_at"].as_str().unwrap(),
    );
    assert!(t3 >= t2, "cseq 3 at {t3} is older than cseq 2 at {t2}");
    // The stored row says the same as the reply.
    let stored = app
        .db
        .count("SELECT count(*) FROM messages WHERE cseq = 3 AND created_at >= (SELECT created_at FROM messages WHERE cseq = 2)")
        .await;
    assert_eq!(stored, 1);
}
