//! The test harness: a real PostgreSQL, a fresh database per test cloned from a template
//! built once from schema.sql, a pgchat server on port 0, and WebSocket clients.
//!
//! PostgreSQL is `TEST_DATABASE_URL`, else the local server on 127.0.0.1:5432, else a
//! private cluster under `target/pgchat-test-cluster` (started once, reused by later runs).
//! Set `TEST_LOG=1` to see the servers' logs.

#![allow(dead_code)]

pub mod checker;
pub mod cluster;
pub mod load;
pub mod node;
pub mod pg;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pgchat::foundation::auth::Authenticator;
use pgchat::foundation::protocol::UserId;
use pgchat::{Application, Config};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_postgres::NoTls;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";
/// How long a test waits for something that should happen; generous for busy CI machines.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// The server URL (without database) every test database lives on.
fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("TEST_DATABASE_URL") {
            return url;
        }
        let local = std::net::TcpStream::connect_timeout(
            &"127.0.0.1:5432".parse().unwrap(),
            Duration::from_secs(1),
        )
        .is_ok();
        if local {
            return "postgres://postgres@127.0.0.1:5432/postgres".to_string();
        }
        start_private_cluster()
    })
}

fn start_private_cluster() -> String {
    let bindir = pgchat::db::embedded::find_bindir().expect(
        "no PostgreSQL: set TEST_DATABASE_URL, run one on 127.0.0.1:5432, or install postgresql",
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pgchat-test-cluster");
    let port = 55432;
    // On a thread of its own: the first caller is usually inside a test's runtime, where
    // a second runtime may not block.
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if !pgchat::db::embedded::server_answers("127.0.0.1", port).await {
                    let cluster = pgchat::db::embedded::Cluster::start(&bindir, &dir, port)
                        .await
                        .expect("private test cluster");
                    // Left running on purpose: later test binaries and runs reuse it.
                    std::mem::forget(cluster);
                }
            })
        })
        .join()
        .expect("private test cluster")
    });
    // The cluster asks for its password, kept beside it (by this run or an earlier one).
    pgchat::db::embedded::url_for(&dir, port, "postgres").expect("the test cluster's password")
}

fn with_db(url: &str, db: &str) -> String {
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.dbname(db);
    // Rebuild as a URL: host, port, user are all we use.
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    match config.get_password() {
        Some(pw) => format!(
            "postgres://{user}:{}@{host}:{port}/{db}",
            String::from_utf8_lossy(pw)
        ),
        None => format!("postgres://{user}@{host}:{port}/{db}"),
    }
}

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(server_url(), NoTls)
        .await
        .expect("connect to the test PostgreSQL server");
    tokio::spawn(conn);
    client
}

/// The template database, built once per schema version and shared by every test.
async fn template() -> String {
    let hash = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        pgchat::db::schema::fingerprint().hash(&mut h);
        h.finish()
    };
    let name = format!("pgchat_tmpl_{:x}", hash & 0xffff_ffff);
    let admin = admin().await;
    // Test binaries run in parallel: one builds the template, the others wait for it.
    admin
        .batch_execute("SELECT pg_advisory_lock(727272)")
        .await
        .unwrap();
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some();
    if !exists {
        // Templates of older schemas, and test databases left by killed runs (their names
        // carry their creation time), are removed here, once per schema change.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // A template carries its build time as its comment: one built in the last hour may
        // belong to another checkout's run on this server, which still clones it.
        let stale: Vec<String> = admin
            .query(
                "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database
                 WHERE datname LIKE 'pgchat\\_tmpl\\_%' OR datname LIKE 'pgchat\\_test\\_%'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1)))
            .filter(|(d, comment)| {
                let old = |t: Option<&str>| {
                    t.and_then(|t| t.parse::<u64>().ok())
                        .is_none_or(|t| t + 3600 < now)
                };
                match d.strip_prefix("pgchat_test_") {
                    Some(rest) => old(rest.split('_').next()),
                    None => !d.ends_with("_building") && old(comment.as_deref()),
                }
            })
            .map(|(d, _)| d)
            .collect();
        for d in stale {
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {d} WITH (FORCE)"))
                .await;
        }
        let building = format!("{name}_building");
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {building}"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {building}"))
            .await
            .unwrap();
        let url = with_db(server_url(), &building);
        let target = pgchat::db::Endpoint::parse(&url, false).unwrap();
        pgchat::db::migrate(&target, None)
            .await
            .expect("schema.sql applies to an empty database");
        // Renaming only after the schema is in makes a half-built template impossible.
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {building} RENAME TO {name};
                 COMMENT ON DATABASE {name} IS '{now}'"
            ))
            .await
            .unwrap();
    }
    admin
        .batch_execute("SELECT pg_advisory_unlock(727272)")
        .await
        .unwrap();
    name
}

/// A fresh database for one test, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// Dropped with the test: false for a database on a private cluster of the test's own.
    owned: bool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        // A run of another schema on the same server (another checkout) removes this
        // one's template while building its own: then build it again.
        for _ in 0..3 {
            match Self::try_create(Some(&template().await)).await {
                Ok(db) => return db,
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_DATABASE) => {}
                Err(e) => panic!("create a test database: {e}"),
            }
        }
        panic!("the template database kept disappearing");
    }

    /// A fresh database with nothing in it.
    pub async fn empty() -> TestDb {
        Self::create(None).await
    }

    async fn create(template: Option<&str>) -> TestDb {
        Self::try_create(template)
            .await
            .expect("create a test database")
    }

    async fn try_create(template: Option<&str>) -> Result<TestDb, tokio_postgres::Error> {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let name = format!("pgchat_test_{created}_{:08x}", rand::random::<u32>());
        let admin = admin().await;
        let from = template.map_or("template0".to_string(), str::to_string);
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {from}"))
            .await?;
        Ok(TestDb {
            url: with_db(server_url(), &name),
            name,
            owned: true,
        })
    }

    /// Database `name` at `url` (on a private cluster that goes away with the test): not
    /// created here (pgchat creates it at start), never dropped.
    pub fn on_private_cluster(url: String, name: &str) -> TestDb {
        TestDb {
            url,
            name: name.to_string(),
            owned: false,
        }
    }

    /// One number from the database (`SELECT count(*) …` and the like).
    pub async fn count(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    /// This database's URL for a login role of its own (created if needed, with every
    /// privilege on the schema), so that a test can then revoke one.
    pub async fn url_for_role(&self, role: &str) -> String {
        let admin = self.client().await;
        admin
            .batch_execute(&format!(
                "DO $$ BEGIN
                     IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                         CREATE ROLE {role} LOGIN PASSWORD '{role}';
                     END IF;
                 END $$;
                 GRANT USAGE, CREATE ON SCHEMA public, pgchat TO {role};
                 GRANT ALL ON ALL TABLES IN SCHEMA public, pgchat TO {role};
                 GRANT ALL ON ALL SEQUENCES IN SCHEMA public, pgchat TO {role};"
            ))
            .await
            .unwrap();
        let mut config: tokio_postgres::Config = self.url.parse().unwrap();
        config.user(role).password(role);
        let host = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        format!("postgres://{role}:{role}@{host}:{port}/{}", self.name)
    }

    /// A direct connection, for arranging and asserting on stored state; pgchat's tables
    /// are found without their schema's name.
    pub async fn client(&self) -> tokio_postgres::Client {
        let mut config: tokio_postgres::Config = self.url.parse().unwrap();
        config.options("-c search_path=pgchat,public");
        let (client, conn) = config.connect(NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok((client, conn)) = tokio_postgres::connect(server_url(), NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

pub fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info,pgchat=debug".into()),
                )
                .with_test_writer()
                .try_init();
        }
    });
}

/// The configuration tests start from: port 0, the test database, the test secret.
pub fn test_config(db: &TestDb) -> Config {
    Config {
        host: Some("127.0.0.1".into()),
        port: 0,
        node_env: pgchat::foundation::config::NodeEnv::Test,
        database_url: Some(db.url.clone()),
        jwt_secret: Some(SECRET.into()),
        // Tests that let tokens expire do not wait out a clock leeway.
        jwt_leeway_secs: 0,
        embedded_postgres: false,
        db_max_connections: 6,
        db_min_connections: 1,
        shutdown_timeout_ms: 5_000,
        // The presence tests watch users they share no conversation with; tests/privacy.rs
        // checks the default (closed).
        presence_open: true,
        ..Config::default()
    }
}

/// A running pgchat server on its own fresh database.
pub struct TestApp {
    pub db: TestDb,
    pub addr: std::net::SocketAddr,
    /// Where `/health` and `/metrics` are served when `ops_listen` is set.
    pub ops_addr: Option<std::net::SocketAddr>,
    pub app: pgchat::App,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub stopped: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// Starts a server whose configuration `adjust` may change first.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
        init_logging();
        Self::spawn_on(TestDb::new().await, adjust).await
    }

    /// Starts a server on `db` (which it migrates, as at any start).
    pub async fn spawn_on(db: TestDb, adjust: impl FnOnce(&mut Config)) -> TestApp {
        init_logging();
        let mut config = test_config(&db);
        adjust(&mut config);
        config.validate().expect("test configuration is valid");
        let application = Application::build(config).await.expect("server starts");
        let addr = application.local_addr();
        let ops_addr = application.ops_addr();
        let app = application.app();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(application.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        // Ready means listening for notifications and caught up: wait for it, as a load
        // balancer would.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !app.listener.is_up() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the listener did not come up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        TestApp {
            db,
            addr,
            ops_addr,
            app,
            stop: Some(stop),
            stopped: Some(handle),
        }
    }

    pub fn token(&self, user: &str) -> String {
        self.token_for(
            user,
            Some(&format!("{user} name")),
            Duration::from_secs(3600),
        )
    }

    pub fn token_for(&self, user: &str, name: Option<&str>, ttl: Duration) -> String {
        Authenticator::new(SECRET).mint(&UserId::parse(user).unwrap(), name, ttl)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connects as `user` and reads the hello.
    pub async fn connect(&self, user: &str) -> Client {
        Client::connect(self, &self.token(user)).await
    }

    /// Tries to connect with `token`; the HTTP status and body on refusal.
    pub async fn try_connect(&self, token: Option<&str>) -> Result<Client, (u16, Value)> {
        try_connect_url(&format!("ws://{}/ws", self.addr), token).await
    }

    /// Stops the server as SIGTERM would, and waits for it to finish draining.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(h) = self.stopped.take() {
            tokio::time::timeout(PATIENCE, h)
                .await
                .expect("server drains within the patience window")
                .unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Tries to connect to `url` with `token`; the HTTP status and body on refusal.
pub async fn try_connect_url(url: &str, token: Option<&str>) -> Result<Client, (u16, Value)> {
    let mut request = url.into_client_request().unwrap();
    if let Some(t) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Client::from_stream(ws).await),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((status, body))
        }
        Err(e) => panic!("connect failed unexpectedly: {e}"),
    }
}

/// A WebSocket client that keeps events that arrive while it waits for a reply.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub hello: Value,
    events: VecDeque<Value>,
    next_ref: u64,
}

impl Client {
    pub async fn connect(app: &TestApp, token: &str) -> Client {
        Self::connect_url(&format!("ws://{}/ws", app.addr), token).await
    }

    pub async fn connect_url(url: &str, token: &str) -> Client {
        match try_connect_url(url, Some(token)).await {
            Ok(c) => c,
            Err((status, body)) => panic!("connect refused: {status} {body}"),
        }
    }

    async fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        let mut c = Client {
            ws,
            hello: Value::Null,
            events: VecDeque::new(),
            next_ref: 0,
        };
        let hello = c.recv().await.expect("hello frame");
        assert_eq!(hello["type"], "hello", "first frame is hello: {hello}");
        c.hello = hello;
        c
    }

    pub fn head(&self) -> i64 {
        self.hello["head"].as_i64().unwrap()
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(Message::text(text.into())).await.unwrap();
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.unwrap();
    }

    /// The next JSON frame, or None once the socket closed. Panics after PATIENCE.
    pub async fn recv(&mut self) -> Option<Value> {
        self.recv_within(PATIENCE)
            .await
            .expect("a frame within the patience window")
    }

    /// The next JSON frame within `d`: Err(()) on timeout, Ok(None) on close.
    pub async fn recv_within(&mut self, d: Duration) -> Result<Option<Value>, ()> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(()),
                Ok(None) | Ok(Some(Err(_))) => return Ok(None),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => return Ok(Some(serde_json::from_str(t.as_str()).unwrap())),
                Message::Close(_) => return Ok(None),
                _ => continue,
            }
        }
    }

    /// Reads until the socket closes; returns the close code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(PATIENCE, self.ws.next()).await {
                Err(_) => panic!("socket did not close within the patience window"),
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return frame.map(|f| u16::from(f.code));
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Sends `request` with a fresh `ref` and returns its reply; events that arrive first
    /// are kept for [`Client::event`].
    pub async fn request(&mut self, mut request: Value) -> Value {
        self.next_ref += 1;
        let r = format!("r{}", self.next_ref);
        request["ref"] = json!(r);
        self.send_text(request.to_string()).await;
        self.reply_to(&r).await
    }

    /// Waits for the reply whose ref is the integer `r`, keeping events.
    pub async fn reply_to_int(&mut self, r: i64) -> Value {
        self.reply_to_value(json!(r)).await
    }

    /// Waits for the reply whose ref is `r`, keeping events.
    pub async fn reply_to(&mut self, r: &str) -> Value {
        self.reply_to_value(json!(r)).await
    }

    async fn reply_to_value(&mut self, r: Value) -> Value {
        loop {
            let frame = self
                .recv()
                .await
                .expect("socket open while awaiting a reply");
            match frame["type"].as_str() {
                Some("ok") | Some("error") => {
                    assert_eq!(frame["ref"], r, "replies come in request order");
                    return frame;
                }
                _ => self.events.push_back(frame),
            }
        }
    }

    /// `request`, asserting it succeeded.
    pub async fn ok(&mut self, request: Value) -> Value {
        let reply = self.request(request.clone()).await;
        assert_eq!(reply["type"], "ok", "{request} failed: {reply}");
        reply
    }

    /// `request`, asserting it failed with `code`.
    pub async fn err(&mut self, request: Value, code: &str) -> Value {
        let reply = self.request(request.clone()).await;
        assert_eq!(reply["type"], "error", "{request} should fail: {reply}");
        assert_eq!(reply["code"], code, "{request}: {reply}");
        reply
    }

    /// The next event (a frame that is not a reply).
    pub async fn event(&mut self) -> Value {
        if let Some(e) = self.events.pop_front() {
            return e;
        }
        let frame = self
            .recv()
            .await
            .expect("socket open while awaiting an event");
        assert!(
            frame["type"] != "ok" && frame["type"] != "error",
            "unexpected reply while waiting for an event: {frame}"
        );
        frame
    }

    /// The next event of type `kind`, skipping others.
    pub async fn event_of(&mut self, kind: &str) -> Value {
        loop {
            let e = self.event().await;
            if e["type"] == kind {
                return e;
            }
        }
    }

    /// The next frame of type `kind` within `d`, skipping others; None on timeout or close.
    pub async fn next_of(&mut self, kind: &str, d: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Ok(Some(f)) if f["type"] == kind => return Some(f),
                Ok(Some(_)) => continue,
                Ok(None) | Err(()) => return None,
            }
        }
    }

    /// The next reply (`ok` or `error`), dropping events before it: for raw frames that
    /// carry no ref.
    pub async fn next_reply(&mut self) -> Value {
        loop {
            let f = self
                .recv()
                .await
                .expect("the socket stays open after a bad request");
            if f["type"] == "ok" || f["type"] == "error" {
                return f;
            }
        }
    }

    /// Events already received and kept.
    pub fn buffered(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }

    pub async fn send_dm(&mut self, to: &str, body: &str, client_msg_id: &str) -> Value {
        let reply = self
            .ok(json!({"type": "send", "to": to, "body": body, "client_msg_id": client_msg_id}))
            .await;
        reply["message"].clone()
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The bodies of a `history` page's messages, oldest first.
pub fn bodies(page: &Value) -> Vec<&str> {
    page["messages"]
        .as_array()
        .expect("a history page")
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect()
}

/// Polls a `/ready` URL until it answers 200; panics after PATIENCE.
/// The pgchat binary with a clean environment (no inherited PGCHAT_*, JWT_SECRET or PORT)
/// and no config file, killed when dropped.
pub fn pgchat_command() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgchat"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PGCHAT_CONFIG", "/nonexistent/pgchat.toml")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    c
}

/// Terminates every pgchat listener connection on the current database (they are named
/// "… listener"); how many.
pub async fn terminate_listeners(admin: &tokio_postgres::Client) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name LIKE '% listener') t",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

impl Client {
    /// The bodies of the next `total` message events, as the numbers they were sent as.
    pub async fn numbered_bodies(&mut self, total: usize) -> Vec<usize> {
        let mut bodies = Vec::new();
        while bodies.len() < total {
            let e = self.event().await;
            if e["type"] == "message" {
                bodies.push(e["message"]["body"].as_str().unwrap().parse().unwrap());
            }
        }
        bodies
    }
}

pub async fn wait_ready(url: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(r) = reqwest::get(url).await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} did not answer 200 in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
