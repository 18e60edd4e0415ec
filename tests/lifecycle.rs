//! The process: the command line, configuration errors, and graceful shutdown, both in
//! process and of the real binary under SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::TestApp;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_pgchat");

/// The binary with a clean environment (no inherited PGCHAT_* or PORT) and no config file.
fn pgchat() -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PGCHAT_CONFIG", "/nonexistent/pgchat.toml")
        .stdin(Stdio::null());
    c
}

#[test]
fn an_invalid_value_stops_start_up_with_one_line_and_exit_code_2() {
    for (var, value, key) in [
        ("PORT", "not-a-port", "port"),
        ("DB_MAX_CONNECTIONS", "1", "db_max_connections"),
        ("PGCHAT_MAX_FRAME_BYTES", "-5", "max_frame_bytes"),
        ("PGCHAT_EVENT_RETENTION", "forever", "event_retention"),
        ("DATABASE_URL", "postgres://h:notaport/db", "database_url"),
    ] {
        let out = pgchat().env(var, value).arg("serve").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(key), "{var}={value}: {stderr}");
    }
}

#[test]
fn production_refuses_to_start_without_a_jwt_secret() {
    let out = pgchat().env("NODE_ENV", "production").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("jwt_secret"));
}

#[test]
fn config_prints_the_effective_configuration_with_secrets_redacted() {
    let out = pgchat()
        .env("JWT_SECRET", "s3cret-value")
        .env("DATABASE_URL", "postgres://u:hunter2@localhost:5432/chat")
        .env("PORT", "4000")
        .env("PGCHAT_WRITERS", "3")
        .arg("config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("port = 4000"), "{text}");
    assert!(text.contains("writers = 3"), "{text}");
    assert!(
        !text.contains("s3cret-value") && !text.contains("hunter2"),
        "{text}"
    );
    assert!(
        text.contains("postgres://u:<redacted>@localhost:5432/chat"),
        "{text}"
    );
}

#[test]
fn redis_url_is_accepted_and_every_key_has_a_pgchat_name() {
    let out = pgchat()
        .env("REDIS_URL", "redis://localhost:6379")
        .env("PGCHAT_MAX_MESSAGE_CHARS", "123")
        .arg("config")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_message_chars = 123"));
}

#[test]
fn the_shipped_config_toml_is_valid_and_holds_the_defaults() {
    use figment::providers::{Format, Toml};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    // The file alone (no environment): every key must parse and equal its default.
    let from_file: pgchat::Config = figment::Figment::new()
        .merge(Toml::file(path))
        .extract()
        .expect("config.toml parses");
    from_file.validate().unwrap();
    assert_eq!(from_file, pgchat::Config::default());
    let text = std::fs::read_to_string(path).unwrap();
    let shown = pgchat::Config::default().redacted_toml();
    for line in shown.lines() {
        let key = line.trim_start_matches("# ").split(' ').next().unwrap();
        assert!(
            text.contains(&format!("{key} =")),
            "config.toml documents {key}"
        );
    }
}

#[test]
fn token_prints_a_token_the_server_accepts() {
    let out = pgchat()
        .env("JWT_SECRET", "cli-secret")
        .args(["token", "alice", "--name", "Alice", "--ttl", "5m"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let id = pgchat::foundation::auth::Authenticator::new("cli-secret")
        .verify(&token)
        .unwrap();
    assert_eq!(id.user.as_str(), "alice");
    assert_eq!(id.name.as_deref(), Some("Alice"));
    let bad = pgchat().args(["token", "no spaces"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[tokio::test]
async fn shutdown_finishes_in_flight_sends_then_closes_sockets_with_1001() {
    let mut app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    for i in 0..20 {
        alice
            .send_text(
                json!({"type": "send", "to": "bob", "body": "x", "client_msg_id": i.to_string(), "ref": i})
                    .to_string(),
            )
            .await;
    }
    // Wait until the first is acknowledged so the rest are in flight, then shut down.
    let mut acked = Vec::new();
    loop {
        let f = alice.recv().await.unwrap();
        if f["type"] == "ok" {
            acked.push(f["ref"].as_i64().unwrap());
            break;
        }
    }
    app.shutdown().await;
    // Every frame sent before the close: acks (or unavailable errors, never silence).
    loop {
        match alice.recv_within(common::PATIENCE).await {
            Ok(Some(f)) if f["type"] == "ok" => acked.push(f["ref"].as_i64().unwrap()),
            Ok(Some(f)) if f["type"] == "error" => panic!("a send failed on shutdown: {f}"),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(()) => panic!("no close after shutdown"),
        }
    }
    // Requests read before shutdown were all answered; every ack is stored.
    let db = app.db.client().await;
    let stored: i64 = db
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored as usize, acked.len());
    assert!(!acked.is_empty());
}

#[tokio::test]
async fn the_socket_close_code_on_shutdown_is_1001() {
    let mut app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let stop = app.shutdown();
    let (_, code) = tokio::join!(stop, alice.close_code());
    assert_eq!(code, Some(1001));
    // New connections are refused once draining has begun (the listener is gone).
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}/ws", app.addr))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_binary_serves_and_drains_on_sigterm() {
    let db = common::TestDb::new().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PGCHAT_CONFIG", "/nonexistent/pgchat.toml")
        .env("PORT", port.to_string())
        .env("PGCHAT_HOST", "127.0.0.1")
        .env("DATABASE_URL", &db.url)
        .env("JWT_SECRET", common::SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = format!("http://127.0.0.1:{port}/ready");
    let mut up = false;
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(&ready).await {
            if r.status() == 200 {
                up = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "/ready answers 200");

    let token = pgchat::foundation::auth::Authenticator::new(common::SECRET).mint(
        &pgchat::foundation::protocol::UserId::parse("alice").unwrap(),
        None,
        Duration::from_secs(60),
    );
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://127.0.0.1:{port}/ws"),
    )
    .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    use futures_util::StreamExt;
    let _hello = ws.next().await.unwrap().unwrap();

    let pid = child.id().unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut close = None;
    while let Some(Ok(m)) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Close(f) = m {
            close = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(close, Some(1001));
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within the shutdown timeout")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn without_database_url_or_a_server_a_private_cluster_is_started_and_stopped() {
    common::init_logging();
    assert!(
        pgchat::db::embedded::find_bindir().is_some(),
        "PostgreSQL's server binaries must be installed (.ci/run installs them)"
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let data_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("embedded-{:08x}", rand::random::<u32>()));
    let config = pgchat::Config {
        host: Some("127.0.0.1".into()),
        port: 0,
        database_url: None,
        embedded_port: port,
        data_dir: data_dir.clone(),
        jwt_secret: Some(common::SECRET.into()),
        ..pgchat::Config::default()
    };
    let application = pgchat::Application::build(config)
        .await
        .expect("starts its own cluster");
    assert!(data_dir.join("postgres/PG_VERSION").exists());
    let addr = application.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    common::wait_ready(&format!("http://{addr}/ready")).await;
    let token = pgchat::foundation::auth::Authenticator::new(common::SECRET).mint(
        &pgchat::foundation::protocol::UserId::parse("alice").unwrap(),
        None,
        Duration::from_secs(60),
    );
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/api/conversations"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the schema was applied to the new cluster"
    );

    let _ = stop.send(());
    server.await.unwrap();
    let mut stopped = false;
    for _ in 0..150 {
        if !pgchat::db::embedded::server_answers("127.0.0.1", port).await {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stopped, "the private cluster stops with the server");
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test]
async fn a_database_with_a_newer_schema_is_refused() {
    let db = common::TestDb::new().await;
    db.client()
        .await
        .execute("INSERT INTO pgchat_schema (version) VALUES (999)", &[])
        .await
        .unwrap();
    let err = pgchat::Application::build(common::test_config(&db))
        .await
        .err()
        .expect("a newer schema stops start-up");
    let text = err.to_string();
    assert!(text.contains("999") && text.contains("newer"), "{text}");
}
