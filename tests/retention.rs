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
