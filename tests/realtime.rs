//! Ephemeral events: typing and presence reach live sessions and are never stored.

mod common;

use std::time::Duration;

use common::{Client, TestApp};
use serde_json::json;

async fn group(c: &mut Client, members: &[&str]) -> String {
    let r = c
        .ok(json!({"type": "group_create", "name": "g", "members": members}))
        .await;
    r["conversation"]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn typing_reaches_the_other_members_and_is_never_stored() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let id = group(&mut alice, &["bob"]).await;
    let events_before = app.db.count("SELECT count(*) FROM event_queue").await;

    alice
        .ok(json!({"type": "typing", "conversation": id, "state": "start"}))
        .await;
    let t = bob.event_of("typing").await;
    assert_eq!(
        t,
        json!({"type": "typing", "conversation": id, "user": "alice", "state": "start"})
    );
    assert!(t.get("seq").is_none());
    alice
        .ok(json!({"type": "typing", "conversation": id, "state": "stop"}))
        .await;
    assert_eq!(bob.event_of("typing").await["state"], "stop");

    let events_after = app.db.count("SELECT count(*) FROM event_queue").await;
    assert_eq!(events_before, events_after, "typing is not stored");
    // The typist's own sessions are not told.
    alice.ok(json!({"type": "ping"})).await;
    assert!(alice.buffered().iter().all(|e| e["type"] != "typing"));
}

#[tokio::test]
async fn a_typing_start_expires_by_itself() {
    let app = TestApp::spawn_with(|c| c.typing_timeout_ms = 300).await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let id = group(&mut alice, &["bob"]).await;
    alice
        .ok(json!({"type": "typing", "conversation": id, "state": "start"}))
        .await;
    assert_eq!(bob.event_of("typing").await["state"], "start");
    // No refresh: a stop follows on its own.
    let stop = bob.event_of("typing").await;
    assert_eq!(stop["state"], "stop");
    assert_eq!(stop["user"], "alice");
}

#[tokio::test]
async fn a_session_that_closes_while_typing_stops_typing() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let id = group(&mut alice, &["bob"]).await;
    alice
        .ok(json!({"type": "typing", "conversation": id, "state": "start"}))
        .await;
    assert_eq!(bob.event_of("typing").await["state"], "start");
    alice.close().await;
    assert_eq!(bob.event_of("typing").await["state"], "stop");
}

#[tokio::test]
async fn repeated_starts_are_not_repeated_to_others() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let id = group(&mut alice, &["bob"]).await;
    for _ in 0..5 {
        alice
            .ok(json!({"type": "typing", "conversation": id, "state": "start"}))
            .await;
    }
    alice
        .ok(json!({"type": "typing", "conversation": id, "state": "stop"}))
        .await;
    // Bob sees exactly one start, then the stop.
    assert_eq!(bob.event_of("typing").await["state"], "start");
    assert_eq!(bob.event_of("typing").await["state"], "stop");
}

#[tokio::test]
async fn only_members_may_type() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let id = group(&mut alice, &[]).await;
    let mut eve = app.connect("eve").await;
    eve.err(
        json!({"type": "typing", "conversation": id, "state": "start"}),
        "forbidden",
    )
    .await;
    eve.err(
        json!({"type": "typing", "conversation": "g-none", "state": "start"}),
        "not_found",
    )
    .await;
    eve.err(
        json!({"type": "typing", "conversation": id, "state": "dancing"}),
        "bad_request",
    )
    .await;
}

#[tokio::test]
async fn presence_gives_a_snapshot_then_changes_with_a_grace_period() {
    let app = TestApp::spawn_with(|c| c.presence_grace_ms = 300).await;
    let mut watcher = app.connect("watcher").await;
    let snap = watcher
        .ok(json!({"type": "presence_subscribe", "users": ["bob", "watcher"]}))
        .await;
    assert_eq!(
        snap["presence"],
        json!([
            {"user": "bob", "status": "offline", "last_seen": null},
            {"user": "watcher", "status": "online", "last_seen": null},
        ])
    );

    let bob = app.connect("bob").await;
    let online = watcher
        .next_of("presence", common::PATIENCE)
        .await
        .expect("bob comes online");
    assert_eq!(online["user"], "bob");
    assert_eq!(online["status"], "online");

    bob.close().await;
    let offline = watcher
        .next_of("presence", common::PATIENCE)
        .await
        .expect("bob goes offline after the grace period");
    assert_eq!(offline["status"], "offline");
    let last_seen = offline["last_seen"].as_str().unwrap().to_string();

    // last_seen is kept in the database, and the next snapshot has it.
    let mut stored = None;
    for _ in 0..100 {
        let row = app
            .db
            .client()
            .await
            .query_one(
                "SELECT last_seen IS NOT NULL FROM users WHERE id = 'bob'",
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, bool>(0) {
            stored = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stored.is_some(), "last_seen stored");
    let mut other = app.connect("other").await;
    let snap = other
        .ok(json!({"type": "presence_subscribe", "users": ["bob"]}))
        .await;
    assert_eq!(snap["presence"][0]["status"], "offline");
    assert_eq!(snap["presence"][0]["last_seen"], last_seen.as_str());
}

#[tokio::test]
async fn a_quick_reconnect_does_not_flap() {
    let app = TestApp::spawn_with(|c| c.presence_grace_ms = 3_000).await;
    let mut watcher = app.connect("watcher").await;
    let bob = app.connect("bob").await;
    watcher
        .ok(json!({"type": "presence_subscribe", "users": ["bob"]}))
        .await;
    bob.close().await;
    let _bob_again = app.connect("bob").await;
    // Well past the grace period: no offline (and no second online) was sent.
    let got = watcher
        .next_of("presence", Duration::from_millis(4_000))
        .await;
    assert!(got.is_none(), "no presence change: {got:?}");
}

#[tokio::test]
async fn presence_subscriptions_are_bounded() {
    // 10,000 ids do not fit in the default 64 KiB frame (that closes with 1009); allow the
    // frame so that the list itself is what gets refused.
    let app = TestApp::spawn_with(|c| {
        c.max_presence_users = 3;
        c.max_frame_bytes = 1 << 20;
    })
    .await;
    let mut c = app.connect("alice").await;
    let many: Vec<String> = (0..10_000).map(|i| format!("u{i}")).collect();
    let e = c
        .err(
            json!({"type": "presence_subscribe", "users": many}),
            "too_large",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("at most 3"), "{e}");
    c.ok(json!({"type": "presence_subscribe", "users": ["a", "b"]}))
        .await;
    // Cumulative per session.
    c.err(
        json!({"type": "presence_subscribe", "users": ["c", "d"]}),
        "too_large",
    )
    .await;
    // Watching the same users again is not more.
    c.ok(json!({"type": "presence_subscribe", "users": ["a", "b", "c"]}))
        .await;
    c.err(
        json!({"type": "presence_subscribe", "users": ["bad id"]}),
        "bad_request",
    )
    .await;
}

/// Hundreds of users leaving at once (a load balancer's restart, a crowd closing) all get
/// their `last_seen` stored: the flusher writes them in one transaction instead of each
/// user taking a pooled connection of its own, which a small pool could not lend in time.
#[tokio::test]
async fn a_crowd_leaving_at_once_has_every_last_seen_stored() {
    let app = TestApp::spawn_with(|c| {
        c.presence_grace_ms = 200;
        c.db_max_connections = 3;
        c.db_min_connections = 1;
        c.writers = 1;
        c.db_acquire_timeout_ms = 20;
    })
    .await;
    let mut crowd = Vec::new();
    for i in 0..300 {
        crowd.push(app.connect(&format!("crowd{i:03}")).await);
    }
    futures_util::future::join_all(crowd.into_iter().map(Client::close)).await;
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let stored = app
            .db
            .count("SELECT count(*) FROM users WHERE id LIKE 'crowd%' AND last_seen IS NOT NULL")
            .await;
        if stored == 300 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {stored} of 300 last_seen stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
