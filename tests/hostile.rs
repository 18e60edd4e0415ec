//! Clients that try to hold a worker's resources: connections that never finish their
//! headers, floods of them.

mod common;

use std::time::Duration;

use common::{TestApp, PATIENCE};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Reads until the server closes the connection; what it sent.
async fn until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(PATIENCE, tcp.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_connection_that_sends_its_headers_a_byte_at_a_time_is_closed() {
    let app = TestApp::spawn_with(|c| c.header_read_timeout_ms = 500).await;
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    let request = b"GET /live HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let writer = async {
        for b in request.iter().chain(std::iter::repeat(&b'a')) {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // The writer goes on for ever; the server must end it.
    tokio::select! {
        _ = writer => {}
        _ = tokio::time::sleep(PATIENCE) => panic!("the slow connection was never closed"),
    }
    // Everyone else is served meanwhile and after.
    let live = reqwest::get(app.http("/live")).await.unwrap();
    assert_eq!(live.status(), 200);
}

#[tokio::test]
async fn handshakes_past_the_cap_wait_for_a_slot_and_are_then_served() {
    let app = TestApp::spawn_with(|c| {
        c.max_handshakes = 2;
        c.header_read_timeout_ms = 60_000;
    })
    .await;
    // Two connections that say nothing hold both slots.
    let idle_a = TcpStream::connect(app.addr).await.unwrap();
    let idle_b = TcpStream::connect(app.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    third
        .write_all(b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "served while both handshake slots were held"
    );
    // A slot frees: the waiting connection is served.
    drop(idle_a);
    let answer = until_closed(&mut third).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(idle_b);
}

/// The review's reproduction: 50 messages of `"\u0001" × 4000` make one `history` page
/// of about 1.2 MB, more than the 1 MiB outbound limit. The page is delivered (flow
/// control), live events keep flowing behind it, and nobody's socket is closed.
#[tokio::test]
async fn a_history_page_larger_than_the_outbound_limit_is_delivered_not_1013() {
    let app = TestApp::spawn_with(|c| c.rate_limit_burst = 200).await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let body = "\u{1}".repeat(4000);
    let mut conversation = serde_json::Value::Null;
    for i in 0..100 {
        let ok = alice.send_dm("bob", &body, &format!("m{i}")).await;
        conversation = ok["conversation"].clone();
    }
    let page = bob
        .ok(serde_json::json!({"type": "history", "conversation": conversation, "limit": 100}))
        .await;
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 100);
    assert!(messages.iter().all(|m| m["body"] == body.as_str()));
    assert!(
        page.to_string().len() > app.app.config.outbound_max_bytes,
        "the page must exceed the limit for this test to mean anything"
    );
    // The socket goes on: a live message after the page arrives, and so does a reply.
    alice.send_dm("bob", "after", "after").await;
    // Bob's 50 live events came first; then the new one.
    let mut live = 0;
    loop {
        let e = bob.event_of("message").await;
        live += 1;
        if e["message"]["body"] == "after" {
            break;
        }
        assert!(live <= 100, "the message sent after the page never came");
    }
    assert_eq!(live, 101);
    bob.ok(serde_json::json!({"type": "ping"})).await;
    // Alice asks for the same page on her socket too: served the same way.
    let again = alice
        .ok(serde_json::json!({"type": "history", "conversation": conversation, "limit": 100}))
        .await;
    assert_eq!(again["messages"].as_array().unwrap().len(), 100);
}

/// One bucket per user: a second socket, and the HTTP API, draw on what the first spent.
#[tokio::test]
async fn a_users_sockets_and_the_http_api_share_one_rate_limit() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit_per_sec = 1;
        c.rate_limit_burst = 4;
    })
    .await;
    let mut first = app.connect("alice").await;
    let mut second = app.connect("alice").await;
    for _ in 0..4 {
        first.ok(json!({"type": "ping"})).await;
    }
    let refused = second.request(json!({"type": "ping"})).await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let http = reqwest::Client::new()
        .get(app.http("/api/conversations"))
        .bearer_auth(app.token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(http.status(), 429);
    // Another user is not affected.
    let mut bob = app.connect("bob").await;
    bob.ok(json!({"type": "ping"})).await;
}

/// A flood of WebSocket pings costs its sender tokens: the server stops reading the
/// socket when they run out, so it answers only as many pings as the rate allows.
#[tokio::test]
async fn a_flood_of_pings_is_held_to_the_rate_limit() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit_per_sec = 2;
        c.rate_limit_burst = 5;
    })
    .await;
    let mut request = format!("ws://{}/ws", app.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", app.token("mallory")).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let started = tokio::time::Instant::now();
    for _ in 0..200 {
        ws.send(Message::Ping(Vec::new().into())).await.unwrap();
    }
    let mut pongs = 0u64;
    let window = Duration::from_secs(2);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(started + window, ws.next()).await {
        if matches!(msg, Message::Pong(_)) {
            pongs += 1;
        }
    }
    // The burst, plus what two tokens a second refill over the time taken, plus one in
    // flight; without the limit all 200 come back at once.
    let allowed = 5 + 2 * (started.elapsed().as_secs() + 1) + 1;
    assert!(pongs <= allowed, "{pongs} pongs, at most {allowed} allowed");
    assert!(pongs >= 5, "the burst is answered: {pongs}");
    // Everyone else is served meanwhile.
    let mut bob = app.connect("bob").await;
    bob.ok(json!({"type": "ping"})).await;
}

/// A user may hold `max_sockets_per_user` sockets on a worker; one more is refused before
/// the upgrade, and a slot frees when one closes.
#[tokio::test]
async fn sockets_past_the_per_user_cap_are_refused_with_429() {
    let app = TestApp::spawn_with(|c| c.max_sockets_per_user = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(app.connect("alice").await);
    }
    let token = app.token("alice");
    let Err((status, body)) = app.try_connect(Some(&token)).await else {
        panic!("a fourth socket was accepted");
    };
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // Another user is not affected.
    app.connect("bob").await;
    // Closing one frees a slot (the session ends asynchronously: wait for it).
    held.pop().unwrap().close().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match app.try_connect(Some(&token)).await {
            Ok(_) => break,
            Err((429, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("no slot came free: {e:?}"),
        }
    }
}

/// A user in large groups gets a small `conversations` reply: each lists at most
/// `conversation_members_listed` members beside the full count, and `members` pages
/// through the rest (for members only).
#[tokio::test]
async fn conversations_list_a_capped_number_of_members_and_members_pages_the_rest() {
    let app = TestApp::spawn_with(|c| c.conversation_members_listed = 100).await;
    let mut alice = app.connect("alice").await;
    let others: Vec<String> = (0..149).map(|i| format!("u{i:03}")).collect();
    let created = alice
        .ok(json!({"type": "group_create", "name": "big", "members": others}))
        .await;
    let id = created["conversation"]["id"].clone();
    let list = alice.ok(json!({"type": "conversations"})).await;
    let entry = &list["conversations"][0];
    assert_eq!(entry["id"], id);
    assert_eq!(entry["member_count"], 150);
    let listed = entry["members"].as_array().unwrap();
    assert_eq!(listed.len(), 100);
    assert_eq!(listed[0], "alice", "the first by id");
    // Page through all 150.
    let mut all = Vec::new();
    let mut after = serde_json::Value::Null;
    loop {
        let mut req = json!({"type": "members", "conversation": id, "limit": 60});
        if !after.is_null() {
            req["after"] = after.clone();
        }
        let page = alice.ok(req).await;
        assert_eq!(page["member_count"], 150);
        let ids = page["members"].as_array().unwrap().clone();
        after = ids.last().cloned().unwrap_or_default();
        all.extend(ids);
        if page["has_more"] == false {
            break;
        }
    }
    let mut expected: Vec<String> = (0..149).map(|i| format!("u{i:03}")).collect();
    expected.push("alice".into());
    expected.sort();
    assert_eq!(all, expected);
    // A direct conversation lists both, uncapped.
    alice.send_dm("bob", "hi", "m1").await;
    let list = alice.ok(json!({"type": "conversations"})).await;
    let direct = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "direct")
        .unwrap()
        .clone();
    assert_eq!(direct["members"], json!(["alice", "bob"]));
    assert_eq!(direct["member_count"], 2);
    // Not a member: forbidden, and nothing listed.
    let mut mallory = app.connect("mallory").await;
    mallory
        .err(json!({"type": "members", "conversation": id}), "forbidden")
        .await;
}
