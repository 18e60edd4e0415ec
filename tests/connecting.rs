//! Connecting: authentication, capacity, the hello, token expiry, and the HTTP endpoints.

mod common;

use std::time::Duration;

use common::TestApp;
use serde_json::{json, Value};

#[tokio::test]
async fn the_hello_names_the_user_session_worker_and_head() {
    let app = TestApp::spawn().await;
    let c = app.connect("alice").await;
    let h = &c.hello;
    assert_eq!(h["user"], "alice");
    assert_eq!(h["head"], 0);
    assert!(h["session"].as_str().unwrap().len() >= 16);
    assert!(!h["worker"].as_str().unwrap().is_empty());
    let t = h["server_time"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(t).is_ok(), "{t}");
    assert!(t.ends_with('Z'));
}

#[tokio::test]
async fn connections_without_a_valid_token_are_refused_with_401() {
    let app = TestApp::spawn().await;
    let forged = pgchat::foundation::auth::Authenticator::new("another secret").mint(
        &pgchat::foundation::protocol::UserId::parse("alice").unwrap(),
        None,
        Duration::from_secs(60),
    );
    let expired = {
        // exp in the past: minted by hand with the right secret.
        use jsonwebtoken::{encode, EncodingKey, Header};
        let now = chrono::Utc::now().timestamp();
        encode(
            &Header::default(),
            &json!({"sub": "alice", "exp": now - 10}),
            &EncodingKey::from_secret(common::SECRET.as_bytes()),
        )
        .unwrap()
    };
    let bad_sub = {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let now = chrono::Utc::now().timestamp();
        encode(
            &Header::default(),
            &json!({"sub": "not ok!", "exp": now + 60}),
            &EncodingKey::from_secret(common::SECRET.as_bytes()),
        )
        .unwrap()
    };
    for (token, why) in [
        (None, "no token"),
        (Some("garbage"), "malformed"),
        (Some(forged.as_str()), "signature"),
        (Some(expired.as_str()), "expired"),
        (Some(bad_sub.as_str()), "sub"),
    ] {
        let (status, body) = app
            .try_connect(token)
            .await
            .err()
            .unwrap_or_else(|| panic!("{why}: must be refused"));
        assert_eq!(status, 401, "{why}");
        assert_eq!(body["error"]["code"], "unauthorized", "{why}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(why)
                || why == "no token"
                    && body["error"]["message"].as_str().unwrap().contains("token"),
            "{why}: {body}"
        );
    }
}

#[tokio::test]
async fn browsers_may_pass_the_token_in_the_query() {
    let app = TestApp::spawn().await;
    let url = format!("ws://{}/ws?token={}", app.addr, app.token("alice"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    use futures_util::StreamExt;
    let hello = ws.next().await.unwrap().unwrap();
    let hello: Value = serde_json::from_str(hello.to_text().unwrap()).unwrap();
    assert_eq!(hello["user"], "alice");
}

#[tokio::test]
async fn a_worker_at_max_connections_refuses_with_503_at_capacity() {
    let app = TestApp::spawn_with(|c| c.max_connections = 2).await;
    let a = app.connect("a").await;
    let _b = app.connect("b").await;
    let (status, body) = app
        .try_connect(Some(&app.token("c")))
        .await
        .err()
        .expect("the third socket is refused");
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "at_capacity");
    // A slot frees when a socket closes.
    a.close().await;
    let mut freed = false;
    for _ in 0..100 {
        if app.try_connect(Some(&app.token("c"))).await.is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "a closed socket gives its slot back");
}

#[tokio::test]
async fn at_capacity_carries_retry_after() {
    let app = TestApp::spawn_with(|c| c.max_connections = 1).await;
    let _a = app.connect("a").await;
    let resp = reqwest::Client::new()
        .get(app.http("/ws"))
        .header("authorization", format!("Bearer {}", app.token("b")))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());
}

#[tokio::test]
async fn an_expiring_token_closes_the_socket_with_1008() {
    let app = TestApp::spawn().await;
    let token = app.token_for("alice", None, Duration::from_secs(2));
    let mut c = common::Client::connect(&app, &token).await;
    assert_eq!(c.close_code().await, Some(1008));
}

#[tokio::test]
async fn health_ready_live_and_metrics_answer() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    let live = http.get(app.http("/live")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready = http.get(app.http("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let mut alice = app.connect("alice").await;
    alice.send_dm("bob", "count me", "1").await;

    let health: Value = http
        .get(app.http("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["connections"], 1);
    assert_eq!(health["pid"], std::process::id());
    assert!(health["uptime"].as_u64().is_some());
    assert_eq!(health["listener"]["up"], true);
    assert!(health["memory"]["rss_bytes"].as_u64().unwrap() > 0);
    // The worker's share is the whole budget: the listener plus a pool of the rest.
    assert_eq!(health["database"]["share"], 6);
    assert_eq!(health["database"]["pool"]["max_size"], 5);
    assert_eq!(health["counters"]["messages_sent"], 1);

    // As Prometheus asks (without it: the classic format, see tests/operations.rs).
    let metrics = http
        .get(app.http("/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let ctype = metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let text = metrics.text().await.unwrap();
    let samples = parse_exposition(&text);
    assert_eq!(samples["pgchat_connections"], 1.0);
    assert_eq!(samples["pgchat_messages_sent_total"], 1.0);
    assert_eq!(samples["pgchat_send_commit_seconds_count"], 1.0);
    assert!(samples.contains_key("pgchat_db_pool_size"));
    assert_eq!(samples["pgchat_listener_up"], 1.0);
    assert_eq!(samples["pgchat_db_connections_share"], 6.0);
    assert!(samples["pgchat_listener_connects_total"] >= 1.0);
}

/// A strict reading of the text exposition format: every line is a comment (`# HELP`,
/// `# TYPE`, `# UNIT`, `# EOF`) or `name{labels} value`; returns name{labels} -> value.
fn parse_exposition(text: &str) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    for line in text.lines() {
        if line.starts_with('#') {
            let kind = line.split_whitespace().nth(1).unwrap_or("");
            assert!(
                ["HELP", "TYPE", "UNIT", "EOF"].contains(&kind),
                "bad comment line: {line}"
            );
            continue;
        }
        let (name, value) = line.rsplit_once(' ').expect("sample: name value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let bare = name.split('{').next().unwrap();
        assert!(
            bare.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        out.insert(name.to_string(), value);
    }
    out
}

#[tokio::test]
async fn the_http_api_serves_clients_without_a_socket() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    let auth = |u: &str| format!("Bearer {}", app.token(u));

    let unauth = http
        .get(app.http("/api/conversations"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);

    let mut alice = app.connect("alice").await;
    let first = alice.send_dm("bob", "over the socket", "1").await;
    let conv = first["conversation"].as_str().unwrap().to_string();

    let list: Value = http
        .get(app.http("/api/conversations"))
        .header("authorization", auth("bob"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["conversations"][0]["id"], conv.as_str());

    let sent = http
        .post(app.http(&format!("/api/conversations/{conv}/messages")))
        .header("authorization", auth("bob"))
        .json(&json!({"body": "over http", "client_msg_id": "h1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let sent: Value = sent.json().await.unwrap();
    assert_eq!(sent["message"]["cseq"], 2);
    // Delivered live to the socket like any other message.
    assert_eq!(alice.event_of("message").await["message"]["cseq"], 1);
    assert_eq!(alice.event_of("message").await["message"], sent["message"]);

    let history: Value = http
        .get(app.http(&format!("/api/conversations/{conv}/messages?limit=1")))
        .header("authorization", auth("bob"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["messages"][0]["body"], "over http");
    assert_eq!(history["has_more"], true);
    assert_eq!(history["total"], 2);

    for (path, user, status, code) in [
        (
            format!("/api/conversations/{conv}/messages"),
            "eve",
            403,
            "forbidden",
        ),
        (
            "/api/conversations/nope/messages".to_string(),
            "bob",
            404,
            "not_found",
        ),
        (
            format!("/api/conversations/{conv}/messages?limit=0"),
            "bob",
            400,
            "bad_request",
        ),
        (
            format!("/api/conversations/{conv}/messages?limit=abc"),
            "bob",
            400,
            "bad_request",
        ),
    ] {
        let r = http
            .get(app.http(&path))
            .header("authorization", auth(user))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }
    let too_long = http
        .post(app.http(&format!("/api/conversations/{conv}/messages")))
        .header("authorization", auth("bob"))
        .json(&json!({"body": "x".repeat(5000), "client_msg_id": "h2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(too_long.status(), 413);
    let not_json = http
        .post(app.http(&format!("/api/conversations/{conv}/messages")))
        .header("authorization", auth("bob"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
}
