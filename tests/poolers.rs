//! `DATABASE_LISTEN_URL`: the listener's own connection beside a pool that may go through
//! a transaction pooler, and the self-test that refuses readiness when the listener does
//! not hear what the query path sends (a pooler in the way, or another database).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{TestApp, TestDb, PATIENCE, SECRET};
use serde_json::Value;

async fn get_json(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_listen_url_on_the_same_database_listens_there_and_is_ready() {
    let db = TestDb::new().await;
    let direct = format!("{}?application_name=direct", db.url);
    let app = TestApp::spawn_on(db, |c| c.database_listen_url = Some(direct.clone())).await;
    let (status, body) = get_json(&app.http("/ready")).await;
    assert_eq!(status, 200, "{body}");
    // The listener connected through DATABASE_LISTEN_URL, the pool through DATABASE_URL.
    let names: Vec<String> = app
        .db
        .client()
        .await
        .query(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()
             AND application_name LIKE '%listener'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, vec!["direct listener".to_string()]);
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    alice.send_dm("bob", "hi", "m1").await;
    assert_eq!(bob.event_of("message").await["message"]["body"], "hi");
}

#[tokio::test]
async fn a_listener_that_does_not_hear_the_query_path_refuses_readiness_and_says_why() {
    common::init_logging();
    // A pooler that routes the listener elsewhere, simulated: the listener is pointed at
    // another database, where nothing the pool sends is ever heard.
    let queries = TestDb::new().await;
    let elsewhere = TestDb::new().await;
    let port = common::cluster::free_ports(1);
    let log_path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("poolers-{:08x}.log", rand::random::<u32>()));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgchat"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PGCHAT_CONFIG", "/nonexistent/pgchat.toml")
        .env("PGCHAT_HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("JWT_SECRET", SECRET)
        .env("DATABASE_URL", &queries.url)
        .env("DATABASE_LISTEN_URL", &elsewhere.url)
        .env("PGCHAT_LISTENER_SELFTEST_TIMEOUT_MS", "500")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let base = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let health = loop {
        if let Ok(resp) = reqwest::get(format!("{base}/health")).await {
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if body["listener"]["last_error"] == "not_receiving" {
                break body;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/health names the listener's problem; log: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health["listener"]["up"], false, "{health}");
    // It keeps trying, and keeps refusing: the second attempt fails the same way.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (status, ready) = get_json(&format!("{base}/ready")).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["listener"], "down", "{ready}");

    let _ = server.start_kill();
    let _ = server.wait().await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    let line = log
        .lines()
        .find(|l| l.contains("test notification"))
        .unwrap_or_else(|| panic!("a line says why: {log}"));
    for words in [
        "DATABASE_LISTEN_URL",
        "pooler",
        "same database",
        &format!("{:?}", elsewhere.name),
    ] {
        assert!(line.contains(words), "{words:?} in: {line}");
    }
}
