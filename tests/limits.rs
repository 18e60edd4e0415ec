//! Limits that protect one worker: the rate limit, the outbound queue of a slow consumer,
//! dead sockets, and the bounded conversation cache.

mod common;

use std::time::Duration;

use common::TestApp;
use serde_json::{json, Value};

async fn health(app: &TestApp) -> Value {
    reqwest::get(app.http("/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn requests_over_the_rate_limit_get_rate_limited_with_retry_after() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit_per_sec = 2;
        c.rate_limit_burst = 5;
    })
    .await;
    let mut c = app.connect("alice").await;
    for i in 0..12 {
        c.send_text(json!({"type": "ping", "ref": i}).to_string())
            .await;
    }
    let mut ok = 0;
    let mut limited = Vec::new();
    for i in 0..12 {
        let r = c.reply_to_int(i).await;
        match r["type"].as_str().unwrap() {
            "ok" => ok += 1,
            _ => {
                assert_eq!(r["code"], "rate_limited", "{r}");
                limited.push(r["retry_after_ms"].as_u64().unwrap());
            }
        }
    }
    // The burst passes (and whatever refilled meanwhile); the rest are refused.
    assert!(ok >= 5, "the burst of 5 passes: {ok}");
    assert!(!limited.is_empty(), "12 requests at once exceed 5 + 2/s");
    assert!(
        limited.iter().all(|ms| *ms > 0 && *ms <= 500),
        "{limited:?}"
    );
    assert_eq!(
        health(&app).await["counters"]["rate_limited"],
        limited.len()
    );
    // After waiting as told, requests pass again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.ok(json!({"type": "ping"})).await;
}

#[tokio::test]
async fn the_http_api_is_rate_limited_per_user_with_429_and_retry_after() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit_per_sec = 1;
        c.rate_limit_burst = 3;
    })
    .await;
    let http = reqwest::Client::new();
    let get = |user: &str| {
        http.get(app.http("/api/conversations"))
            .header("authorization", format!("Bearer {}", app.token(user)))
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get("alice").await.unwrap().status().as_u16());
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    let limited = get("alice").await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().get("retry-after").is_some());
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(body["error"]["retry_after_ms"].as_u64().unwrap() > 0);
    // Another user has a bucket of their own.
    assert_eq!(get("bob").await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_1013_and_loses_nothing() {
    slow_consumer(|c| c.outbound_max_frames = 16).await;
}

#[tokio::test]
async fn the_outbound_byte_limit_closes_a_slow_consumer_too() {
    // Frames are plentiful here; 3 messages of 3900 characters exceed 8 KiB.
    slow_consumer(|c| {
        c.outbound_max_frames = 1024;
        c.outbound_max_bytes = 8192;
    })
    .await;
}

/// Floods a reader that reads nothing until the server closes it with 1013, then checks
/// that a new session resumes every message in order.
async fn slow_consumer(limit: impl FnOnce(&mut pgchat::Config)) {
    let app = TestApp::spawn_with(|c| {
        limit(c);
        c.rate_limit_per_sec = 100_000;
        c.rate_limit_burst = 100_000;
    })
    .await;
    let mut slow = app.connect("slow").await;
    // The flood comes over HTTP, so that only the slow reader holds a socket.
    let mut sender = app.connect("sender").await;
    let first = sender.send_dm("slow", "first", "0").await;
    sender.close().await;
    let conv = first["conversation"].as_str().unwrap().to_string();
    let url = app.http(&format!("/api/conversations/{conv}/messages"));
    let auth = format!("Bearer {}", app.token("sender"));
    let http = reqwest::Client::new();
    let body = "x".repeat(3_900);
    let mut sent = 1;
    // The reader reads nothing; the server gives up on it once the kernel's buffers and
    // its 16-frame queue are full (a few MB here).
    for round in 0..200 {
        let posts = (0..8).map(|i| {
            let id = format!("{round}-{i}");
            http.post(&url)
                .header("authorization", &auth)
                .json(&json!({"body": body, "client_msg_id": id}))
                .send()
        });
        for r in futures_util::future::join_all(posts).await {
            assert_eq!(r.unwrap().status(), 200);
            sent += 1;
        }
        if health(&app).await["counters"]["outbound_overflows"] == 1 {
            break;
        }
    }
    assert_eq!(
        health(&app).await["counters"]["outbound_overflows"],
        1,
        "the slow consumer overflowed"
    );
    // Reading now, it gets what was in flight and then the close code 1013.
    assert_eq!(slow.close_code().await, Some(1013));
    // Reconnect and resume: every message is there, in order.
    let mut again = app.connect("slow").await;
    let r = again.ok(json!({"type": "resume", "after": 0})).await;
    assert_eq!(
        r["head"],
        sent + 1,
        "one conversation event and every message"
    );
    let seqs: Vec<i64> = again
        .buffered()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=sent + 1).collect::<Vec<i64>>());
}

#[tokio::test]
async fn a_socket_that_misses_two_pings_is_dropped() {
    let app = TestApp::spawn_with(|c| c.ping_interval_ms = 100).await;
    let _silent = app.connect("alice").await; // never reads, so never answers pings
    let mut dropped = false;
    for _ in 0..100 {
        if health(&app).await["connections"] == 0 {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dropped, "the silent socket was dropped");
}

#[tokio::test]
async fn a_socket_that_answers_pings_stays() {
    let app = TestApp::spawn_with(|c| c.ping_interval_ms = 100).await;
    let mut c = app.connect("alice").await;
    // Reading answers the server's pings (tungstenite replies to each ping it reads).
    let _ = c.recv_within(Duration::from_millis(800)).await;
    assert_eq!(health(&app).await["connections"], 1);
    c.ok(json!({"type": "ping"})).await;
}

#[tokio::test]
async fn the_first_page_of_history_comes_from_memory_and_the_cache_is_bounded() {
    let app = TestApp::spawn_with(|c| {
        c.conversation_cache = 2;
        c.cached_messages = 3;
    })
    .await;
    let mut alice = app.connect("alice").await;
    let m = alice.send_dm("bob", "1", "1").await;
    let conv = m["conversation"].as_str().unwrap().to_string();
    for i in 2..=5 {
        alice.send_dm("bob", &i.to_string(), &i.to_string()).await;
    }
    let hits = |h: &Value| h["counters"]["history_from_cache"].as_u64().unwrap();
    let before = hits(&health(&app).await);
    let page = alice
        .ok(json!({"type": "history", "conversation": conv, "limit": 3}))
        .await;
    assert_eq!(hits(&health(&app).await), before + 1, "served from memory");
    let bodies = common::bodies(&page);
    assert_eq!(bodies, vec!["3", "4", "5"]);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["total"], 5);

    // More than the cache holds: the database answers, with the same shape.
    let page = alice
        .ok(json!({"type": "history", "conversation": conv, "limit": 4}))
        .await;
    assert_eq!(hits(&health(&app).await), before + 1);
    assert_eq!(page["messages"].as_array().unwrap().len(), 4);

    // The cache of a non-member answers forbidden just as the database does.
    let mut eve = app.connect("eve").await;
    eve.err(
        json!({"type": "history", "conversation": conv}),
        "forbidden",
    )
    .await;

    // Three conversations pass through a cache of two.
    alice.send_dm("carol", "x", "c1").await;
    alice.send_dm("dave", "x", "d1").await;
    assert_eq!(health(&app).await["cached_conversations"], 2);
}
