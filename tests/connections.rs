//! Connections that fail quietly: keepalives on every database connection; a listener
//! whose connection stalls is noticed (/ready 503) and replaced, and delivery resumes; a
//! listener never deadlocks when notifications outpace it; writers leave reads a
//! connection; any number of dead workers is announced; /health and /ready answer from a
//! cached probe and never show the driver's text.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Client, TestApp, TestDb, PATIENCE};
use pgchat::app::Role;
use pgchat::db::Plan;
use pgchat::{Application, Config};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP proxy in front of the test's PostgreSQL. The test can freeze one of its
/// connections (bytes stop flowing both ways, nothing closes: the connection a failover
/// or a dead peer leaves half-open), or cut them all and refuse new ones (the database
/// unreachable).
struct Proxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<ProxyConn>>>,
    refuse: Arc<AtomicBool>,
    accept: JoinHandle<()>,
}

struct ProxyConn {
    /// The proxy's own port towards PostgreSQL: pg_stat_activity's `client_port`.
    upstream_port: u16,
    frozen: Arc<AtomicBool>,
    pumps: [JoinHandle<()>; 2],
}

impl Proxy {
    async fn start(db: &TestDb) -> Proxy {
        let config: tokio_postgres::Config = db.url.parse().unwrap();
        let host = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            other => panic!("the test database is reached over TCP, not {other:?}"),
        };
        let port = config.get_ports()[0];
        let target = format!("{host}:{port}");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<ProxyConn>>> = Arc::default();
        let refuse = Arc::new(AtomicBool::new(false));
        let accept = tokio::spawn({
            let conns = conns.clone();
            let refuse = refuse.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if refuse.load(Ordering::SeqCst) {
                        continue; // dropped: closed at once
                    }
                    let Ok(upstream) = TcpStream::connect(&target).await else {
                        continue;
                    };
                    let upstream_port = upstream.local_addr().unwrap().port();
                    let frozen = Arc::new(AtomicBool::new(false));
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = upstream.into_split();
                    let pumps = [
                        tokio::spawn(pump(cr, uw, frozen.clone())),
                        tokio::spawn(pump(ur, cw, frozen.clone())),
                    ];
                    conns.lock().unwrap().push(ProxyConn {
                        upstream_port,
                        frozen,
                        pumps,
                    });
                }
            }
        });
        Proxy {
            addr,
            conns,
            refuse,
            accept,
        }
    }

    /// `db`'s URL, through the proxy.
    fn url(&self, db: &TestDb) -> String {
        let config: tokio_postgres::Config = db.url.parse().unwrap();
        let user = config.get_user().unwrap();
        format!("postgres://{user}@{}/{}", self.addr, db.name)
    }

    fn upstream_ports(&self) -> Vec<i32> {
        let conns = self.conns.lock().unwrap();
        conns.iter().map(|c| i32::from(c.upstream_port)).collect()
    }

    /// Stops forwarding on the connection whose port towards PostgreSQL is `port`.
    fn freeze(&self, port: u16) {
        let conns = self.conns.lock().unwrap();
        let conn = conns
            .iter()
            .find(|c| c.upstream_port == port)
            .expect("a connection of the proxy");
        conn.frozen.store(true, Ordering::SeqCst);
    }

    /// Closes every connection and refuses new ones.
    fn cut(&self) {
        self.refuse.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            for p in c.pumps {
                p.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies bytes until either side closes; while `frozen`, holds them.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits until `check` holds, for at most PATIENCE.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// The client ports of this database's pgchat listener backends.
async fn listener_ports(admin: &tokio_postgres::Client) -> Vec<i32> {
    admin
        .query(
            "SELECT client_port FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'pgchat listener'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn probe_often(c: &mut Config) {
    c.listener_probe_interval_ms = 300;
    c.listener_probe_timeout_ms = 500;
}

/// The TCP sockets connected to `server_port`, with their keepalive timer, from
/// /proc/net/tcp: local port → seconds until the next keepalive probe (None when another
/// timer, or none, runs).
fn keepalive_timers(server_port: u16) -> std::collections::HashMap<u16, Option<f64>> {
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if port(f[2]) != server_port {
                return None;
            }
            let (timer, when) = f[5].split_once(':')?;
            // Timer 2 is keepalive; `when` is in USER_HZ (100 a second) ticks.
            let secs =
                (timer == "02").then(|| u64::from_str_radix(when, 16).unwrap() as f64 / 100.0);
            Some((port(f[1]), secs))
        })
        .collect()
}

#[tokio::test]
async fn every_database_connection_has_keepalives_and_a_user_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.db_keepalive_idle_ms = 7_000;
        c.db_min_connections = 2;
    })
    .await;
    let _alice = app.connect("alice").await; // a pooled connection, at least
    let admin = app.db.client().await;
    let ports: Vec<u16> = admin
        .query(
            "SELECT client_port FROM pg_stat_activity
             WHERE datname = current_database() AND application_name LIKE 'pgchat%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i32>(0) as u16)
        .collect();
    assert!(ports.len() >= 2, "the listener and the pool: {ports:?}");
    let server_port = admin
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get::<_, i32>(0) as u16;
    // Without pgchat's settings the kernel would first probe after two hours.
    eventually(
        "every pgchat connection probes within 7 s of silence",
        || async {
            let timers = keepalive_timers(server_port);
            ports
                .iter()
                .all(|p| timers.get(p).copied().flatten().is_some_and(|s| s <= 7.0))
        },
    )
    .await;
    // The user timeout cannot be read back from outside the socket; every connection
    // (pool, listener, set-up) is opened with these settings.
    let mut config = common::test_config(&app.db);
    config.db_tcp_user_timeout_ms = 9_000;
    config.db_keepalive_interval_ms = 3_000;
    config.db_keepalive_retries = 4;
    let pg = pgchat::db::connection_config(&config, &app.db.url)
        .unwrap()
        .pg;
    assert_eq!(pg.get_tcp_user_timeout(), Some(&Duration::from_secs(9)));
    assert!(pg.get_keepalives());
    assert_eq!(pg.get_keepalives_interval(), Some(Duration::from_secs(3)));
    assert_eq!(pg.get_keepalives_retries(), Some(4));
}

#[tokio::test]
async fn a_stalled_listener_connection_turns_ready_503_and_delivery_resumes() {
    let a = TestApp::spawn_with(probe_often).await;
    let proxy = Proxy::start(&a.db).await;
    let through_proxy = proxy.url(&a.db);
    // Worker B reaches the database only through the proxy.
    let b = TestApp::spawn_with(|c| {
        probe_often(c);
        c.database_url = Some(through_proxy.clone());
    })
    .await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    let m1 = alice.send_dm("bob", "before", "1").await;
    assert_eq!(bob.event_of("message").await["message"], m1);

    // B's listener connection goes half-open: nothing flows, nothing closes.
    let admin = a.db.client().await;
    let proxied = proxy.upstream_ports();
    let port = listener_ports(&admin)
        .await
        .into_iter()
        .find(|p| proxied.contains(p))
        .expect("B's listener runs through the proxy");
    proxy.freeze(port as u16);
    eventually("B's /ready turns 503 with its listener down", || async {
        let (status, body) = get_json(&b.http("/ready")).await;
        status == 503 && body["listener"] == "down"
    })
    .await;
    let (_, health) = get_json(&b.http("/health")).await;
    assert_eq!(health["listener"]["last_error"], "unresponsive", "{health}");

    // A new connection through the proxy works: B reconnects, catches up, is ready.
    let m2 = alice.send_dm("bob", "while B was deaf", "2").await;
    common::wait_ready(&b.http("/ready")).await;
    assert_eq!(bob.event_of("message").await["message"], m2);
    let m3 = alice.send_dm("bob", "live again", "3").await;
    assert_eq!(bob.event_of("message").await["message"], m3);
    assert!(b.app.metrics.listener_connects.get() >= 2);
}

#[tokio::test]
async fn a_terminated_listener_backend_is_replaced_and_delivery_resumes() {
    let a = TestApp::spawn().await;
    let url = a.db.url.clone();
    let b = TestApp::spawn_with(|c| c.database_url = Some(url.clone())).await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    let admin = a.db.client().await;
    for round in 1..=3 {
        let before = b.app.metrics.listener_connects.get();
        let killed: i64 = admin
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'pgchat listener'
                   AND pid <> pg_backend_pid()) t",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(killed, 2, "both workers' listeners");
        let m = alice
            .send_dm("bob", &format!("round {round}"), &round.to_string())
            .await;
        assert_eq!(bob.event_of("message").await["message"], m);
        eventually("B's listener reconnected", || async {
            b.app.metrics.listener_connects.get() > before && b.app.listener.is_up()
        })
        .await;
    }
    let (status, health) = get_json(&b.http("/health")).await;
    assert_eq!(status, 200);
    assert_eq!(health["listener"]["last_error"], "connection_lost");
}

/// A worker of a supervised deployment whose share of the budget is `share`.
struct Worker {
    app: pgchat::App,
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn spawn_worker(db: &TestDb, share: usize, adjust: impl FnOnce(&mut Config)) -> Worker {
    common::init_logging();
    let mut config = common::test_config(db);
    adjust(&mut config);
    config.validate().unwrap();
    let role = Role {
        plan: Plan { share, setup: true },
        reuse_port: false,
        listen_when_ready: false,
        ops_offset: 0,
    };
    let application = Application::build_as(config, role).await.unwrap();
    let addr = application.local_addr();
    let app = application.app();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(application.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    eventually("the worker's listener came up", || async {
        app.listener.is_up()
    })
    .await;
    Worker {
        app,
        addr,
        _stop: stop,
    }
}

#[tokio::test]
async fn a_worker_on_one_connection_keeps_up_when_notifications_outpace_its_listener() {
    let db = TestDb::new().await;
    // One connection for everything, and room for one notification.
    let worker = spawn_worker(&db, 1, |c| c.listener_queue = 1).await;
    let token = pgchat::foundation::auth::Authenticator::new(common::SECRET).mint(
        &pgchat::foundation::protocol::UserId::parse("bob").unwrap(),
        None,
        Duration::from_secs(3600),
    );
    let mut bob = Client::connect_url(&format!("ws://{}/ws", worker.addr), &token).await;
    // The backend sends 1,500 messages, each in a transaction of its own: 1,500
    // notifications, far faster than the listener fetches them one by one.
    let backend = db.client().await;
    backend
        .batch_execute("SELECT pgchat.ensure_user('shop')")
        .await
        .unwrap();
    let total = 1_500;
    let send = backend
        .prepare("SELECT pgchat.send_direct('shop', 'bob', $1, $1)")
        .await
        .unwrap();
    let keys: Vec<String> = (0..total).map(|i| i.to_string()).collect();
    let (backend, send) = (&backend, &send);
    futures_util::future::try_join_all(
        keys.iter()
            .map(|k| async move { backend.execute(send, &[k]).await }),
    )
    .await
    .unwrap();
    let bodies = bob.numbered_bodies(total).await;
    assert_eq!(bodies, (0..total).collect::<Vec<_>>());
    assert!(
        worker.app.metrics.listener_overflows.get() >= 1,
        "the queue overflowed"
    );
    assert_eq!(
        worker.app.metrics.listener_connects.get(),
        1,
        "caught up on the same connection, without a reconnect"
    );
}

#[tokio::test]
async fn reads_are_served_while_every_writer_waits_on_a_lock() {
    // A listener and a pool of 2; `writers` asks for 2 batchers.
    let app = TestApp::spawn_with(|c| {
        c.db_max_connections = 3;
        c.db_min_connections = 1;
        c.writers = 2;
    })
    .await;
    let mut alice = app.connect("alice").await;
    let mut alice2 = app.connect("alice").await;
    let m = alice.send_dm("bob", "first", "1").await;
    let conversation = m["conversation"].as_str().unwrap().to_string();
    // Hold the conversation's row: every batch that writes to it waits.
    let mut admin = app.db.client().await;
    let lock = admin.transaction().await.unwrap();
    lock.execute(
        "SELECT 1 FROM pgchat.conversations WHERE id = $1 FOR UPDATE",
        &[&conversation],
    )
    .await
    .unwrap();
    // Each send waits on the lock in a batch of its own, while batchers are free.
    let batchers = app.app.writer.batchers() as i64;
    let watcher = app.db.client().await;
    let waiting = || async {
        watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'pgchat'
                   AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    for (n, (client, key)) in [(&mut alice, "2"), (&mut alice2, "3")]
        .into_iter()
        .enumerate()
    {
        client
            .send_text(
                json!({"type": "send", "to": "bob", "body": key, "client_msg_id": key, "ref": key})
                    .to_string(),
            )
            .await;
        let expected = (n as i64 + 1).min(batchers);
        eventually("the send's batch waits on the lock", || async {
            waiting().await == expected
        })
        .await;
    }
    // Every batcher this worker runs now waits on the lock, holding its connection.
    assert_eq!(waiting().await, batchers);
    // A socket still connects (its user is read and recorded) and resumes (a read).
    let mut carol = app
        .try_connect(Some(&app.token("carol")))
        .await
        .expect("a connection is left for reads");
    let resumed = carol.ok(json!({"type": "resume", "after": 0})).await;
    assert_eq!(resumed["head"], 0);
    lock.rollback().await.unwrap();
    assert_eq!(alice.reply_to("2").await["type"], "ok");
    assert_eq!(alice2.reply_to("3").await["type"], "ok");
}

#[tokio::test]
async fn hundreds_of_dead_workers_are_reaped_and_announced_everywhere() {
    let db = TestDb::new().await;
    let setup = db.client().await;
    // 300 workers of another deployment, alive for now, each holding one user: their ids
    // alone are about 20 kB, far past what a notification carries.
    let ghosts = 300;
    setup
        .execute(
            "WITH w AS (
                 SELECT i, 'crashed-deployment-' || repeat('x', 40) || '-' || i AS id,
                        'ghost-' || i AS u
                 FROM generate_series(0, $1 - 1) i
             ), u AS (
                 INSERT INTO pgchat.users (id) SELECT u FROM w
             ), k AS (
                 INSERT INTO pgchat.workers (id, host, pid) SELECT id, 'elsewhere', i FROM w
             )
             INSERT INTO pgchat.presence (user_id, worker_id) SELECT u, id FROM w",
            &[&ghosts],
        )
        .await
        .unwrap();
    let url = db.url.clone();
    let a = TestApp::spawn_on(db, |_| {}).await;
    let b = TestApp::spawn_with(|c| c.database_url = Some(url.clone())).await;
    let mut watchers = Vec::new();
    for app in [&a, &b] {
        let mut w = app.connect("watcher").await;
        let snap = w
            .ok(json!({"type": "presence_subscribe", "users": ["ghost-0", "ghost-299"]}))
            .await;
        assert_eq!(snap["presence"][0]["status"], "online", "{snap}");
        watchers.push(w);
    }
    // The deployment crashed: its heartbeats stopped long ago.
    setup
        .execute(
            "UPDATE pgchat.workers SET heartbeat_at = now() - interval '1 hour'
             WHERE host = 'elsewhere'",
            &[],
        )
        .await
        .unwrap();
    // Whichever worker reaps them, both tell their watchers.
    for w in &mut watchers {
        let mut offline = std::collections::HashSet::new();
        while offline.len() < 2 {
            let p = w.event_of("presence").await;
            assert_eq!(p["status"], "offline", "{p}");
            offline.insert(p["user"].as_str().unwrap().to_string());
        }
    }
    let left =
        a.db.count("SELECT count(*) FROM pgchat.workers WHERE host = 'elsewhere'")
            .await;
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_flood_of_ready_requests_costs_a_probe_or_two() {
    let app = TestApp::spawn_with(|c| c.max_handshakes = 1_024).await;
    let http = reqwest::Client::new();
    let before = app.app.metrics.health_probes.get();
    let started = std::time::Instant::now();
    let requests = (0..500).map(|i| {
        let http = http.clone();
        let url = app.http(if i % 2 == 0 { "/ready" } else { "/health" });
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    });
    let statuses = futures_util::future::join_all(requests).await;
    let elapsed = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let probes = app.app.metrics.health_probes.get() - before;
    // One probe per health_cache_ms (1 s) at most, however many requests.
    assert!(
        probes <= 2 + elapsed.as_secs(),
        "{probes} probes for 500 requests in {elapsed:?}"
    );
}

#[tokio::test]
async fn health_names_a_lost_database_without_the_driver_s_words() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(&db).await;
    let url = proxy.url(&db);
    let app = TestApp::spawn_with(|c| {
        c.database_url = Some(url.clone());
        c.health_cache_ms = 100;
        c.db_acquire_timeout_ms = 500;
    })
    .await;
    proxy.cut();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let last = loop {
        let (_, body) = get_json(&app.http("/health")).await;
        if body["database"]["up"] == false
            && body["listener"]["up"] == false
            && body["listener"]["last_error"] == "connect_failed"
        {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/health reports the database and the listener down: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = last.to_string().to_lowercase();
    for driver_words in [
        "db error",
        "error connecting",
        "connection closed",
        "connection refused",
        "os error",
        "eof",
        "127.0.0.1",
    ] {
        assert!(!text.contains(driver_words), "{driver_words:?} in {last}");
    }
    let (status, ready) = get_json(&app.http("/ready")).await;
    assert_eq!(status, 503);
    assert!(!ready.to_string().contains("error"), "{ready}");
}
