//! Cluster mode: worker processes that share only PostgreSQL. Each test runs a real
//! `pgchat serve --workers N` and talks to its workers over real sockets.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::PATIENCE;
use serde_json::{json, Value};

#[tokio::test]
async fn direct_and_group_messages_cross_workers_in_order() {
    let cluster = Cluster::start(3, &[]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
    let mut carol = cluster.connect(2, "carol").await;
    assert_ne!(alice.hello["worker"], bob.hello["worker"]);

    let m = alice.send_dm("bob", "across", "1").await;
    assert_eq!(bob.event_of("conversation").await["seq"], 1);
    assert_eq!(bob.event_of("message").await["message"], m);

    let g = alice
        .ok(json!({"type": "group_create", "name": "g", "members": ["bob", "carol"]}))
        .await;
    let gid = g["conversation"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        carol.event_of("conversation").await["conversation"]["id"],
        gid.as_str()
    );
    // Many messages from two workers: every member sees them all, in cseq order.
    for i in 0..20 {
        let (c, who) = if i % 2 == 0 {
            (&mut bob, "b")
        } else {
            (&mut carol, "c")
        };
        c.ok(json!({"type": "send", "conversation": gid, "body": format!("{i}"), "client_msg_id": format!("{who}{i}")}))
            .await;
    }
    for c in [&mut alice, &mut bob, &mut carol] {
        let mut cseqs = Vec::new();
        let mut last_seq = 0;
        while cseqs.len() < 20 {
            let e = c.event().await;
            let seq = e["seq"].as_i64().unwrap();
            assert!(seq > last_seq, "seq increases: {last_seq} then {seq}");
            last_seq = seq;
            if e["type"] == "message" && e["message"]["conversation"] == gid.as_str() {
                cseqs.push(e["message"]["cseq"].as_i64().unwrap());
            }
        }
        assert_eq!(cseqs, (1..=20).collect::<Vec<i64>>());
    }
}

#[tokio::test]
async fn a_member_added_on_one_worker_can_send_through_another_at_once() {
    let cluster = Cluster::start(2, &[]).await;
    let mut owner = cluster.connect(0, "owner").await;
    let mut dave = cluster.connect(1, "dave").await;
    let g = owner
        .ok(json!({"type": "group_create", "name": "g", "members": []}))
        .await;
    let gid = g["conversation"]["id"].as_str().unwrap().to_string();
    // Dave's worker caches nothing about the group yet; typing checks membership there.
    dave.err(
        json!({"type": "typing", "conversation": gid, "state": "start"}),
        "forbidden",
    )
    .await;
    owner
        .ok(json!({"type": "group_add", "conversation": gid, "users": ["dave"]}))
        .await;
    let m = dave
        .ok(json!({"type": "send", "conversation": gid, "body": "hi", "client_msg_id": "d1"}))
        .await;
    assert_eq!(m["message"]["cseq"], 1);
    assert_eq!(owner.event_of("message").await["message"]["body"], "hi");
    // The cache on dave's worker followed the change: typing is allowed now.
    let mut typed = false;
    for _ in 0..50 {
        let r = dave
            .request(json!({"type": "typing", "conversation": gid, "state": "start"}))
            .await;
        if r["type"] == "ok" {
            typed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(typed, "membership reached the other worker's cache");
    assert_eq!(owner.event_of("typing").await["user"], "dave");
}

#[tokio::test]
async fn presence_is_shared_across_workers_without_flapping() {
    let cluster = Cluster::start(3, &[("PGCHAT_PRESENCE_GRACE_MS", "3000")]).await;
    let mut watcher = cluster.connect(0, "watcher").await;
    watcher
        .ok(json!({"type": "presence_subscribe", "users": ["bob"]}))
        .await;
    let bob = cluster.connect(1, "bob").await;
    let on = watcher.next_of("presence", PATIENCE).await.unwrap();
    assert_eq!(on["status"], "online");
    // A second watcher on a third worker sees bob online: in its snapshot, or, when that
    // worker's listener has not yet heard of bob, in the event that follows.
    let mut other = cluster.connect(2, "other").await;
    let snap = other
        .ok(json!({"type": "presence_subscribe", "users": ["bob"]}))
        .await;
    if snap["presence"][0]["status"] != "online" {
        let on = other.next_of("presence", PATIENCE).await.unwrap();
        assert_eq!(on["status"], "online", "{snap}");
    }

    // Bob moves from worker 1 to worker 2 within the grace period: no flap.
    bob.close().await;
    let _bob = cluster.connect(2, "bob").await;
    let flap = watcher
        .next_of("presence", Duration::from_millis(4_000))
        .await;
    assert!(flap.is_none(), "no presence change: {flap:?}");

    // Bob leaves for good: offline after the grace period, everywhere.
    drop(_bob);
    let off = watcher.next_of("presence", PATIENCE).await.unwrap();
    assert_eq!(off["status"], "offline");
    let off = other.next_of("presence", PATIENCE).await.unwrap();
    assert_eq!(off["status"], "offline");
}

#[tokio::test]
async fn a_killed_worker_s_users_go_offline_and_resume_elsewhere_with_nothing_lost() {
    let cluster = Cluster::start(3, &[("PGCHAT_PRESENCE_GRACE_MS", "300")]).await;
    let mut watcher = cluster.connect(0, "watcher").await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
    watcher
        .ok(json!({"type": "presence_subscribe", "users": ["bob"]}))
        .await;
    // Bob has seen the first messages.
    for i in 0..3 {
        alice
            .send_dm("bob", &format!("m{i}"), &format!("{i}"))
            .await;
    }
    let mut seen = 0;
    while seen < 4 {
        seen = bob.event().await["seq"].as_i64().unwrap();
    }

    let killed_at = std::time::Instant::now();
    cluster.kill_worker(1).await;
    // Messages keep coming while bob's worker is dead.
    for i in 3..8 {
        alice
            .send_dm("bob", &format!("m{i}"), &format!("{i}"))
            .await;
    }
    // (An `online` for bob may still be on its way from before the subscription.)
    let off = loop {
        let p = watcher
            .next_of("presence", Duration::from_secs(20))
            .await
            .expect("bob goes offline");
        if p["status"] == "offline" {
            break p;
        }
    };
    assert_eq!(off["user"], "bob");
    assert!(
        killed_at.elapsed() < Duration::from_secs(15),
        "offline within 15 s, took {:?}",
        killed_at.elapsed()
    );

    // Bob's client reconnects to another worker and resumes: everything, in order.
    let mut bob = cluster.connect(2, "bob").await;
    let r = bob.ok(json!({"type": "resume", "after": seen})).await;
    assert_eq!(r["head"], 9);
    let replayed: Vec<Value> = bob.buffered();
    let seqs: Vec<i64> = replayed
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (5..=9).collect::<Vec<i64>>());
    let bodies: Vec<&str> = replayed
        .iter()
        .map(|e| e["message"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["m3", "m4", "m5", "m6", "m7"]);
    // And the supervisor brought the dead worker back.
    cluster.wait_ready(1).await;
}

#[tokio::test]
async fn terminating_the_listener_connection_mid_traffic_loses_nothing() {
    // Sends every 5 ms and more: above the default per-socket rate limit.
    let limits = [
        ("PGCHAT_RATE_LIMIT_PER_SEC", "1000"),
        ("PGCHAT_RATE_LIMIT_BURST", "1000"),
    ];
    let cluster = Cluster::start(2, &limits).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
    let admin = cluster.db.client().await;
    let total = 60;
    let sender = tokio::spawn(async move {
        for i in 0..total {
            alice
                .ok(json!({"type": "send", "to": "bob", "body": format!("{i}"), "client_msg_id": format!("{i}")}))
                .await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        alice
    });
    // Terminate every listener (their connections are named "… listener") while messages flow.
    tokio::time::sleep(Duration::from_millis(80)).await;
    let killed = common::terminate_listeners(&admin).await;
    assert!(killed >= 1, "found the listeners");
    let _alice = sender.await.unwrap();
    // Bob receives every message, in order, exactly as numbered, live.
    let bodies = bob.numbered_bodies(total).await;
    assert_eq!(bodies, (0..total).collect::<Vec<usize>>());
    let h = cluster.health(1).await;
    assert!(h["listener"]["connects"].as_u64().unwrap() >= 2, "{h}");
    cluster.wait_ready(1).await;
}

#[tokio::test]
async fn notifications_near_and_past_8000_bytes_still_deliver() {
    let cluster = Cluster::start(2, &[]).await;
    let mut owner = cluster.connect(0, "owner").await;
    let mut reader = cluster.connect(1, "reader").await;
    // 63-character ids make each entry about 70 bytes in the notification: 100 members
    // fit (about 7 KB), 130 do not (about 9 KB: the worker falls back to a pointer).
    for members in [100usize, 130] {
        let ids: Vec<String> = (0..members - 2)
            .map(|i| format!("{}{:05}", "m".repeat(58), i + members * 1000))
            .chain(["reader".to_string()])
            .collect();
        let g = owner
            .ok(json!({"type": "group_create", "name": "big", "members": ids}))
            .await;
        let gid = g["conversation"]["id"].as_str().unwrap().to_string();
        let m = owner
            .ok(json!({"type": "send", "conversation": gid, "body": format!("to {members}"), "client_msg_id": format!("{members}")}))
            .await;
        let got = loop {
            let e = reader.event().await;
            if e["type"] == "message" {
                break e;
            }
        };
        assert_eq!(got["message"], m["message"], "{members} members");
    }
}

#[tokio::test]
async fn eight_workers_on_one_port_stay_within_the_connection_budget_under_load() {
    let cluster = Cluster::start_with(8, false, &[]).await;
    let admin = cluster.db.client().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Sample pg_stat_activity all along.
    let sampler = {
        let stop = stop.clone();
        let name = cluster.db.name.clone();
        tokio::spawn(async move {
            let mut max = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n: i64 = admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                        &[&name],
                    )
                    .await
                    .unwrap()
                    .get(0);
                max = max.max(n);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            max
        })
    };
    // Load: 16 clients spread by the kernel over the 8 workers, sending and receiving.
    // Everyone connects first, so that every message is live for its recipient.
    let mut connected = Vec::new();
    let mut workers_seen = std::collections::HashSet::new();
    for i in 0..16 {
        let c = cluster.connect(0, &format!("u{i}")).await;
        workers_seen.insert(c.hello["worker"].as_str().unwrap().to_string());
        connected.push(c);
    }
    let mut tasks = Vec::new();
    for (i, mut c) in connected.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for j in 0..20 {
                c.ok(json!({"type": "send", "to": format!("u{}", (i + 1) % 16), "body": "x", "client_msg_id": format!("{j}")}))
                    .await;
                c.ok(json!({"type": "conversations"})).await;
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    // Every message arrived, whichever worker held its recipient.
    for (i, c) in clients.iter_mut().enumerate() {
        let mut n = 0;
        while n < 20 {
            let e = c.event().await;
            if e["type"] == "message" && e["message"]["sender"]["id"] != format!("u{i}") {
                n += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let max = sampler.await.unwrap();
    assert!(max <= 10, "at most DB_MAX_CONNECTIONS (10), saw {max}");
    assert!(max >= 8, "every worker holds its listener, saw {max}");
    assert!(
        workers_seen.len() >= 2,
        "the kernel spread sockets: {workers_seen:?}"
    );
}

#[tokio::test]
async fn the_cluster_drains_on_sigterm() {
    let mut cluster = Cluster::start(2, &[]).await;
    let mut a = cluster.connect(0, "a").await;
    let mut b = cluster.connect(1, "b").await;
    let status = cluster.stop().await;
    assert!(status.success(), "{status}");
    assert_eq!(a.close_code().await, Some(1001));
    assert_eq!(b.close_code().await, Some(1001));
    // The workers removed their presence and heartbeat rows on the way out.
    let db = cluster.db.client().await;
    let rows: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM workers) + (SELECT count(*) FROM presence)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn a_worker_that_keeps_dying_makes_the_supervisor_give_up_with_an_error() {
    // Worker 1 is killed each time it comes up. (A port in use no longer serves: the
    // supervisor stops at once on it, see tests/first_hour.rs.)
    let db = common::TestDb::new().await;
    let base = common::cluster::free_ports(2);
    let started = std::time::Instant::now();
    let mut supervisor = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgchat"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PGCHAT_CONFIG", "/nonexistent/pgchat.toml")
        .env("PORT", base.to_string())
        .env("PGCHAT_HOST", "127.0.0.1")
        .env("PGCHAT_PRESENCE_OPEN", "true")
        .env("DATABASE_URL", &db.url)
        .env("JWT_SECRET", common::SECRET)
        .args(["serve", "--workers", "2", "--listen", "per-worker"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let health = format!("http://127.0.0.1:{}/health", base + 1);
    let mut killed = std::collections::HashSet::new();
    let status = loop {
        if let Some(status) = supervisor.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the supervisor gives up"
        );
        let pid = match reqwest::get(&health).await {
            Ok(r) => r.json::<Value>().await.ok().and_then(|h| h["pid"].as_u64()),
            Err(_) => None,
        };
        if let Some(pid) = pid.filter(|p| killed.insert(*p)) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(pgchat::supervisor::GAVE_UP.into()));
    assert_eq!(killed.len(), 5, "given up after 5 deaths: {killed:?}");
}

#[tokio::test]
async fn a_deployment_started_elsewhere_on_the_same_database_joins_the_cluster() {
    let first = Cluster::start(2, &[]).await;
    let second = first.join(1).await;
    let mut alice = first.connect(0, "alice").await;
    let mut bob = second.connect(0, "bob").await;
    let mut watcher = second.connect(0, "watcher").await;
    let snap = watcher
        .ok(json!({"type": "presence_subscribe", "users": ["alice"]}))
        .await;
    // Alice's worker records her presence just after her hello, and the other deployment
    // hears of it by notification: the snapshot may predate that, then an event follows.
    if snap["presence"][0]["status"] != "online" {
        let p = watcher.event_of("presence").await;
        assert_eq!(
            (&p["user"], &p["status"]),
            (&json!("alice"), &json!("online"))
        );
    }
    let m = alice.send_dm("bob", "from the other deployment", "1").await;
    assert_eq!(bob.event_of("message").await["message"], m);
    let back = bob.send_dm("alice", "and back", "2").await;
    assert_eq!(
        alice.event_of("message").await["message"],
        m,
        "her own copy first"
    );
    assert_eq!(alice.event_of("message").await["message"], back);
}

#[tokio::test]
async fn a_rolling_restart_of_a_worker_does_not_flap_its_users() {
    let cluster = Cluster::start(2, &[("PGCHAT_PRESENCE_GRACE_MS", "3000")]).await;
    let mut watcher = cluster.connect(0, "watcher").await;
    let mut bob = cluster.connect(1, "bob").await;
    watcher
        .ok(json!({"type": "presence_subscribe", "users": ["bob"]}))
        .await;
    // Any `online` for bob from before the subscription has arrived by now or never will.
    let _ = watcher
        .next_of("presence", Duration::from_millis(300))
        .await;

    cluster.term_worker(1).await;
    assert_eq!(bob.close_code().await, Some(1001));
    // Bob's client takes a moment (less than the grace period) to reconnect, to the worker
    // still up: worker 1 has finished leaving by then.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _bob = cluster.connect(0, "bob").await;
    let flap = watcher
        .next_of("presence", Duration::from_millis(4_000))
        .await;
    assert!(flap.is_none(), "no presence change: {flap:?}");
    let snap = watcher
        .ok(json!({"type": "presence_subscribe", "users": ["bob"]}))
        .await;
    assert_eq!(snap["presence"][0]["status"], "online");
}
