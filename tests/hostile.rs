//! Clients that try to hold a worker's resources: connections that never finish their
//! headers, floods of them.

mod common;

use std::time::Duration;

use common::{TestApp, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    for i in 0..50 {
        let ok = alice.send_dm("bob", &body, &format!("m{i}")).await;
        conversation = ok["conversation"].clone();
    }
    let page = bob
        .ok(serde_json::json!({"type": "history", "conversation": conversation, "limit": 50}))
        .await;
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 50);
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
        assert!(live <= 50, "the message sent after the page never came");
    }
    assert_eq!(live, 51);
    bob.ok(serde_json::json!({"type": "ping"})).await;
    // Alice asks for the same page on her socket too: served the same way.
    let again = alice
        .ok(serde_json::json!({"type": "history", "conversation": conversation, "limit": 50}))
        .await;
    assert_eq!(again["messages"].as_array().unwrap().len(), 50);
}
