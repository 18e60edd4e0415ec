//! Token refresh in place (PROTOCOL.md v1.1): `auth` replaces a session's token with a newer
//! one for the same user, and `token_expiring` warns before the 1008 close.

mod common;

use std::time::Duration;

use common::{Client, TestApp};
use serde_json::json;

/// A server that warns `notice_ms` before expiry.
async fn spawn_with_notice(notice_ms: u64) -> TestApp {
    TestApp::spawn_with(|c| c.token_expiring_notice_ms = notice_ms).await
}

#[tokio::test]
async fn a_token_expiring_notice_comes_before_the_1008_close() {
    // Less than the notice is left at hello: the notice comes at once.
    let app = spawn_with_notice(60_000).await;
    let token = app.token_for("alice", None, Duration::from_secs(3));
    let mut c = Client::connect(&app, &token).await;
    let notice = c.event().await;
    assert_eq!(notice["type"], "token_expiring", "{notice}");
    let left = notice["expires_in_ms"]
        .as_u64()
        .expect("expires_in_ms: an integer");
    assert!(left <= 3_000, "{notice}");
    assert_eq!(
        notice.as_object().unwrap().len(),
        2,
        "no seq, no other field: {notice}"
    );
    assert_eq!(c.close_code().await, Some(1008));
}

#[tokio::test]
async fn the_notice_waits_until_shortly_before_expiry() {
    let app = spawn_with_notice(1_000).await;
    let token = app.token_for("alice", None, Duration::from_secs(4));
    let mut c = Client::connect(&app, &token).await;
    // Three seconds before the notice is due, nothing comes.
    assert!(c
        .next_of("token_expiring", Duration::from_millis(1_500))
        .await
        .is_none());
    let notice = c.event_of("token_expiring").await;
    assert!(
        notice["expires_in_ms"].as_u64().unwrap() <= 1_000,
        "{notice}"
    );
    assert_eq!(c.close_code().await, Some(1008));
}

#[tokio::test]
async fn auth_with_a_fresh_token_keeps_the_socket_open_past_the_old_expiry() {
    let app = spawn_with_notice(1_500).await;
    let mut bob = app.connect("bob").await;
    let token = app.token_for("alice", Some("Alice"), Duration::from_secs(2));
    let mut alice = Client::connect(&app, &token).await;
    alice.event_of("token_expiring").await;
    let fresh = app.token_for("alice", Some("Alice"), Duration::from_secs(3600));
    let reply = alice.ok(json!({"type": "auth", "token": fresh})).await;
    assert_eq!(
        reply.as_object().unwrap().len(),
        2,
        "{{type, ref}} only: {reply}"
    );

    // Past the old token's expiry the socket still serves requests and events.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    alice.ok(json!({"type": "ping"})).await;
    bob.send_dm("alice", "still there?", "m1").await;
    let e = alice.event_of("message").await;
    assert_eq!(e["message"]["body"], "still there?");
    // The fresh token is an hour away from its notice: none was sent for it.
    assert!(alice
        .buffered()
        .iter()
        .all(|f| f["type"] != "token_expiring"));

    let m = app.app.metrics.summary();
    assert_eq!(m["token_refreshes"], 1, "{m}");
}

#[tokio::test]
async fn each_token_gets_its_own_notice_and_the_new_expiry_is_kept() {
    let app = spawn_with_notice(60_000).await;
    let first = app.token_for("alice", None, Duration::from_secs(3600));
    let mut c = Client::connect(&app, &first).await;
    // A replacement that expires sooner than the notice: its own notice comes at once,
    // and the socket closes at its expiry, not the first token's.
    let short = app.token_for("alice", None, Duration::from_secs(2));
    c.ok(json!({"type": "auth", "token": short})).await;
    let notice = c.event_of("token_expiring").await;
    assert!(
        notice["expires_in_ms"].as_u64().unwrap() <= 2_000,
        "{notice}"
    );
    assert_eq!(c.close_code().await, Some(1008));
}

#[tokio::test]
async fn the_same_token_again_is_accepted_without_a_second_notice() {
    let app = spawn_with_notice(60_000).await;
    let token = app.token_for("alice", None, Duration::from_secs(3));
    let mut c = Client::connect(&app, &token).await;
    c.event_of("token_expiring").await;
    c.ok(json!({"type": "auth", "token": token})).await;
    // Only the 1008 close follows: no notice loop for a client that has nothing newer.
    assert!(c
        .next_of("token_expiring", Duration::from_secs(10))
        .await
        .is_none());
}

#[tokio::test]
async fn a_token_for_another_user_is_forbidden_and_changes_nothing() {
    let app = spawn_with_notice(60_000).await;
    let mut bob = app.connect("bob").await;
    let token = app.token_for("alice", Some("Alice"), Duration::from_secs(3));
    let mut alice = Client::connect(&app, &token).await;
    let carol = app.token_for("carol", None, Duration::from_secs(3600));
    let e = alice
        .err(json!({"type": "auth", "token": carol}), "forbidden")
        .await;
    assert!(e["message"].as_str().unwrap().contains("carol"), "{e}");
    // Still alice: her send is hers.
    let m = alice.send_dm("bob", "from alice", "a1").await;
    assert_eq!(m["sender"]["id"], "alice");
    assert_eq!(
        bob.event_of("message").await["message"]["sender"]["id"],
        "alice"
    );
    // And still her old expiry.
    assert_eq!(alice.close_code().await, Some(1008));
}

#[tokio::test]
async fn a_bad_token_is_unauthorized_and_the_session_stays_as_it_was() {
    let app = spawn_with_notice(60_000).await;
    let mut c = app.connect("alice").await;
    let forged = pgchat::foundation::auth::Authenticator::new("another secret").mint(
        &pgchat::foundation::protocol::UserId::parse("alice").unwrap(),
        None,
        Duration::from_secs(3600),
    );
    let expired = app.token_for("alice", None, Duration::from_secs(0));
    for (token, what) in [
        (json!(forged), "forged"),
        (json!(expired), "expired"),
        (json!("not.a.jwt"), "garbage"),
    ] {
        let e = c
            .err(json!({"type": "auth", "token": token}), "unauthorized")
            .await;
        assert!(!e["message"].as_str().unwrap().is_empty(), "{what}: {e}");
    }
    for bad in [
        json!({"type": "auth"}),
        json!({"type": "auth", "token": 7}),
        json!({"type": "auth", "token": ""}),
    ] {
        c.err(bad, "bad_request").await;
    }
    c.ok(json!({"type": "ping"})).await;
    // Nothing was counted as a refresh.
    assert_eq!(app.app.metrics.summary()["token_refreshes"], 0);
}

#[tokio::test]
async fn a_refreshed_token_carries_the_new_display_name() {
    let app = spawn_with_notice(60_000).await;
    let mut bob = app.connect("bob").await;
    let token = app.token_for("alice", Some("Alice"), Duration::from_secs(3600));
    let mut alice = Client::connect(&app, &token).await;
    let renamed = app.token_for("alice", Some("Alice B."), Duration::from_secs(3600));
    alice.ok(json!({"type": "auth", "token": renamed})).await;
    let m = alice.send_dm("bob", "hi", "n1").await;
    assert_eq!(m["sender"]["name"], "Alice B.", "{m}");
    let e = bob.event_of("message").await;
    assert_eq!(e["message"]["sender"]["name"], "Alice B.", "{e}");
}
