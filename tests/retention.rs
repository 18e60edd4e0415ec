//! Retention: events older than `event_retention` go in bounded batches, one worker at a
//! time, without locking anything a writer needs; a resume from before them is told to
//! resync.

mod common;

use common::TestApp;
use serde_json::json;

#[tokio::test]
async fn retention_deletes_in_bounded_batches_one_pruner_at_a_time_and_never_blocks_a_send() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    for i in 0..30 {
        alice.send_dm("bob", "old news", &format!("old-{i}")).await;
    }
    // Every event so far (31 each for alice and bob) is made two days old.
    let db = app.db.client().await;
    db.execute(
        "UPDATE event_queue SET created_at = now() - interval '2 days'",
        &[],
    )
    .await
    .unwrap();
    let prune = "SELECT prune_events(interval '1 day', 25)";

    // A pruner holds its batch open: another finds the lock taken and leaves.
    let mut first = app.db.client().await;
    let holding = first.transaction().await.unwrap();
    let n: i64 = holding.query_one(prune, &[]).await.unwrap().get(0);
    assert_eq!(n, 25, "a batch is bounded");
    let busy: i64 = db.query_one(prune, &[]).await.unwrap().get(0);
    assert_eq!(busy, -1, "one pruner at a time");

    // Meanwhile writers to the very streams being pruned go on: pruning locks only the
    // old rows it deletes and its own marks.
    let m = alice.send_dm("bob", "new", "new-1").await;
    assert_eq!(m["cseq"], 31);
    holding.commit().await.unwrap();

    // The backlog drains batch by batch.
    let mut batches = vec![25];
    loop {
        let n: i64 = db.query_one(prune, &[]).await.unwrap().get(0);
        if n == 0 {
            break;
        }
        assert!(n <= 25);
        batches.push(n);
    }
    assert_eq!(batches.iter().sum::<i64>(), 62);
    assert_eq!(
        app.db.count("SELECT count(*) FROM event_queue").await,
        2,
        "only the new message's two events are left"
    );
    assert_eq!(
        app.db
            .count("SELECT through FROM stream_pruned WHERE user_id = 'bob'")
            .await,
        31
    );

    // bob resumes: from before the pruned point he must resync; from it, he gets the rest.
    let mut bob = app.connect("bob").await;
    bob.err(json!({"type": "resume", "after": 0}), "resync_required")
        .await;
    let ok = bob.ok(json!({"type": "resume", "after": 31})).await;
    assert_eq!(ok["head"], 32);
    let replay = bob.buffered();
    assert_eq!(replay.len(), 1);
    assert_eq!(replay[0]["message"]["body"], "new");
}

/// bob's stream: the new conversation (seq 1) and `n` messages from alice (seq 2..).
async fn bobs_stream(app: &TestApp, n: usize) -> common::Client {
    let mut alice = app.connect("alice").await;
    for i in 0..n {
        alice
            .send_dm("bob", &format!("m{i}"), &format!("k{i}"))
            .await;
    }
    alice
}

async fn seqs_left(app: &TestApp) -> Vec<i64> {
    app.db
        .client()
        .await
        .query(
            "SELECT seq FROM event_queue WHERE user_id = 'bob' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_stream_is_only_ever_cut_at_a_prefix_in_seq_order() {
    let app = TestApp::spawn().await;
    let _alice = bobs_stream(&app, 4).await;
    // seq is commit order, created_at is when the transaction began: seq 3 can be newer
    // than seq 4. Here 1, 2 and 4 are old and 3 is not.
    app.db
        .client()
        .await
        .batch_execute(
            "UPDATE event_queue SET created_at = now() - interval '2 days'
             WHERE user_id = 'bob' AND seq IN (1, 2, 4)",
        )
        .await
        .unwrap();
    let db = app.db.client().await;
    db.execute("SELECT prune_events(interval '1 day', 100)", &[])
        .await
        .unwrap();
    // 4 waits for 3: pruning it now would leave a hole inside the stream.
    assert_eq!(seqs_left(&app).await, vec![3, 4, 5]);
    let through: i64 = db
        .query_one(
            "SELECT through FROM stream_pruned WHERE user_id = 'bob'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(through, 2);
    let mut bob = app.connect("bob").await;
    bob.ok(json!({"type": "resume", "after": 2})).await;
    let seqs: Vec<i64> = bob
        .buffered()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 4, 5]);
}

#[tokio::test]
async fn a_replay_checks_every_row_so_a_hole_is_never_stepped_over_silently() {
    let app = TestApp::spawn().await;
    let _alice = bobs_stream(&app, 4).await;
    let admin = app.db.client().await;
    // A hole in the middle of bob's stream (seq 3 of 1..=5) that retention does not
    // explain (deleted by hand): a replay from 1 delivers 2, 4 and 5, and counts it. A
    // replay that only checked the first row of a page would pass over it unseen.
    admin
        .batch_execute("DELETE FROM event_queue WHERE user_id = 'bob' AND seq = 3")
        .await
        .unwrap();
    let mut bob = app.connect("bob").await;
    bob.ok(json!({"type": "resume", "after": 1})).await;
    let seqs: Vec<i64> = bob
        .buffered()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 4, 5]);
    assert_eq!(
        app.app.metrics.bad_rows.get(),
        1,
        "the hole is logged and counted"
    );
    // The same hole made by retention (what pruning by time alone once did: 3 gone, 4
    // and 5 kept, the stream marked pruned through 3): the session meets it and is told
    // to resync, never stepping over it.
    admin
        .batch_execute("INSERT INTO stream_pruned (user_id, through) VALUES ('bob', 3)")
        .await
        .unwrap();
    let mut bob = app.connect("bob").await;
    let reply = bob.request(json!({"type": "resume", "after": 1})).await;
    assert_eq!(reply["code"], "resync_required", "{reply}");
    assert!(bob.buffered().is_empty());
}

#[tokio::test]
async fn reaction_changes_go_once_no_event_can_point_at_them() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let m = alice.send_dm("bob", "react", "r1").await;
    let c = m["conversation"].as_str().unwrap().to_string();
    for on in [true, false, true] {
        alice
            .ok(json!({"type": "react", "conversation": c, "cseq": 1, "emoji": "👍", "on": on}))
            .await;
    }
    let db = app.db.client().await;
    // Everything but the last change (and its events) is eight days old.
    db.batch_execute(
        "UPDATE event_queue SET created_at = now() - interval '8 days'
         WHERE NOT (kind = 'reaction'
                    AND change_id = (SELECT max(change_id) FROM reaction_changes));
         UPDATE reaction_changes SET created_at = now() - interval '8 days'
         WHERE change_id < (SELECT max(change_id) FROM reaction_changes);",
    )
    .await
    .unwrap();
    db.execute("SELECT prune_events(interval '7 days', 1000)", &[])
        .await
        .unwrap();
    assert_eq!(
        app.db.count("SELECT count(*) FROM reaction_changes").await,
        1
    );
    // The one left is what the remaining events show; the reaction itself stays.
    let mut late = app.connect("bob").await;
    let after = app
        .db
        .count("SELECT through FROM stream_pruned WHERE user_id = 'bob'")
        .await;
    late.ok(json!({"type": "resume", "after": after})).await;
    let replay = late.buffered();
    assert_eq!(replay.len(), 1, "{replay:?}");
    assert_eq!(replay[0]["type"], "reaction");
    assert_eq!(replay[0]["on"], true);
    let page = late.ok(json!({"type": "history", "conversation": c})).await;
    assert_eq!(page["messages"][0]["reactions"][0]["count"], 1);
}
