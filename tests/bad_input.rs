//! Every malformed frame gets the documented error and harms nothing else: the session
//! answers the next request, and nothing half-stored is left behind.

mod common;

use common::TestApp;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Sends `text` raw and returns the single reply.
async fn reply_to_raw(c: &mut common::Client, text: &str) -> Value {
    c.send_text(text).await;
    c.next_reply().await
}

#[tokio::test]
async fn malformed_frames_get_bad_request_or_unknown_type_and_the_session_goes_on() {
    let app = TestApp::spawn().await;
    let mut c = app.connect("alice").await;
    let long_id = "x".repeat(65);
    let cases: Vec<(String, &str, &str)> = vec![
        ("not json".into(), "bad_request", "JSON"),
        ("[1,2]".into(), "bad_request", "object"),
        ("{}".into(), "bad_request", "type"),
        (r#"{"type":5}"#.into(), "bad_request", "type"),
        (
            r#"{"type":"launch_rockets"}"#.into(),
            "unknown_type",
            "launch_rockets",
        ),
        (
            r#"{"type":"ping","ref":{"a":1}}"#.into(),
            "bad_request",
            "ref",
        ),
        (r#"{"type":"resume"}"#.into(), "bad_request", "after"),
        (
            r#"{"type":"resume","after":-1}"#.into(),
            "bad_request",
            "after",
        ),
        (
            r#"{"type":"resume","after":"1"}"#.into(),
            "bad_request",
            "after",
        ),
        (
            r#"{"type":"send","body":"x","client_msg_id":"1"}"#.into(),
            "bad_request",
            "conversation or to",
        ),
        (
            r#"{"type":"send","to":"bob","conversation":"c1","body":"x","client_msg_id":"1"}"#
                .into(),
            "bad_request",
            "exactly one",
        ),
        (
            r#"{"type":"send","to":"bad id!","body":"x","client_msg_id":"1"}"#.into(),
            "bad_request",
            "user id",
        ),
        (
            format!(r#"{{"type":"send","to":"{long_id}","body":"x","client_msg_id":"1"}}"#),
            "bad_request",
            "user id",
        ),
        (
            r#"{"type":"send","to":"bob","body":"","client_msg_id":"1"}"#.into(),
            "bad_request",
            "body",
        ),
        (
            r#"{"type":"send","to":"bob","body":"a\u0000b","client_msg_id":"1"}"#.into(),
            "bad_request",
            "NUL",
        ),
        (
            r#"{"type":"send","to":"bob","body":7,"client_msg_id":"1"}"#.into(),
            "bad_request",
            "body",
        ),
        (
            r#"{"type":"send","to":"bob","body":"x"}"#.into(),
            "bad_request",
            "client_msg_id",
        ),
        (
            r#"{"type":"send","to":"bob","body":"x","client_msg_id":""}"#.into(),
            "bad_request",
            "client_msg_id",
        ),
        (
            format!(r#"{{"type":"send","to":"bob","body":"x","client_msg_id":"{long_id}"}}"#),
            "bad_request",
            "client_msg_id",
        ),
        (
            r#"{"type":"history"}"#.into(),
            "bad_request",
            "conversation",
        ),
        (
            r#"{"type":"history","conversation":"c1","limit":0}"#.into(),
            "bad_request",
            "limit",
        ),
        (
            r#"{"type":"history","conversation":"c1","limit":101}"#.into(),
            "bad_request",
            "limit",
        ),
        (
            r#"{"type":"history","conversation":"c1","before_cseq":0}"#.into(),
            "bad_request",
            "before_cseq",
        ),
        (
            r#"{"type":"history","conversation":"c1","limit":1.5}"#.into(),
            "bad_request",
            "limit",
        ),
    ];
    for (text, code, mentions) in &cases {
        let reply = reply_to_raw(&mut c, text).await;
        assert_eq!(reply["type"], "error", "{text} -> {reply}");
        assert_eq!(reply["code"], *code, "{text} -> {reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(
            message.contains(mentions),
            "the message for {text} should mention {mentions:?}: {message}"
        );
    }
    // The ref is echoed even when the rest is wrong.
    let reply = reply_to_raw(&mut c, r#"{"type":"nope","ref":"keep-me"}"#).await;
    assert_eq!(reply["ref"], "keep-me");

    // Nothing was stored, and the session still works.
    let n = app.db.count("SELECT count(*) FROM messages").await;
    assert_eq!(n, 0);
    c.ok(json!({"type": "ping"})).await;
    c.send_dm("bob", "still fine", "ok-1").await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_too_large() {
    let app = TestApp::spawn_with(|c| c.max_message_chars = 10).await;
    let mut c = app.connect("alice").await;
    let reply = c
        .err(
            json!({"type": "send", "to": "bob", "body": "é".repeat(11), "client_msg_id": "1"}),
            "too_large",
        )
        .await;
    assert!(reply["message"].as_str().unwrap().contains("10"));
    // Exactly at the limit, counted in characters not bytes, is fine.
    c.send_dm("bob", &"é".repeat(10), "2").await;
}

#[tokio::test]
async fn a_binary_frame_is_a_bad_request() {
    let app = TestApp::spawn().await;
    let mut c = app.connect("alice").await;
    c.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    let reply = c.recv().await.unwrap();
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["code"], "bad_request");
    c.ok(json!({"type": "ping"})).await;
}

#[tokio::test]
async fn a_frame_over_max_frame_bytes_closes_with_1009() {
    let app = TestApp::spawn_with(|c| c.max_frame_bytes = 2048).await;
    let mut c = app.connect("alice").await;
    let big = json!({"type": "ping", "pad": "x".repeat(4096)}).to_string();
    c.send_text(big).await;
    assert_eq!(c.close_code().await, Some(1009));
    // The server is unharmed.
    let mut other = app.connect("bob").await;
    other.ok(json!({"type": "ping"})).await;
}
