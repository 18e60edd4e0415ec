//! A worker that starts under the id of a process that just died (the same host and pid,
//! as a container restarted within the reaping period) takes that process's users offline
//! instead of leaving them online for ever. One test in its own binary: worker ids are
//! numbered per process (`host-pid`, then `host-pid-1`, …), so the test knows the second
//! one's id before it starts.

mod common;

use std::time::Duration;

use common::{TestApp, TestDb};
use serde_json::json;

#[tokio::test]
async fn a_worker_restarted_under_the_same_id_takes_the_old_one_s_users_offline() {
    let db = TestDb::new().await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pgchat".into());
    let second = format!("{host}-{}-1", std::process::id());
    // What the dead process left: its heartbeat, fresh, and a user online on it.
    db.client()
        .await
        .batch_execute(&format!(
            "INSERT INTO workers (id, host, pid) VALUES ('{second}', 'h', 1);
             INSERT INTO users (id) VALUES ('ghost');
             INSERT INTO presence (user_id, worker_id) VALUES ('ghost', '{second}');"
        ))
        .await
        .unwrap();
    let again = TestDb::on_private_cluster(db.url.clone(), &db.name);
    let observer = TestApp::spawn_on(db, |c| c.presence_grace_ms = 100).await;
    let mut bob = observer.connect("bob").await;
    let now = bob
        .ok(json!({"type": "presence_subscribe", "users": ["ghost"]}))
        .await;
    assert_eq!(now["presence"][0]["status"], "online", "{now}");
    // The process comes back with the same id.
    let restarted = TestApp::spawn_on(again, |c| c.presence_grace_ms = 100).await;
    let offline = bob
        .next_of("presence", common::PATIENCE)
        .await
        .expect("ghost is taken offline");
    assert_eq!(
        (offline["user"].as_str(), offline["status"].as_str()),
        (Some("ghost"), Some("offline"))
    );
    assert_eq!(
        restarted
            .db
            .count(&format!(
                "SELECT count(*) FROM presence WHERE worker_id = '{second}'"
            ))
            .await,
        0
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}
