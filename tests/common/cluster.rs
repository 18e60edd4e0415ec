//! A real cluster for tests: `pgchat serve --workers N` as a child process, on its own
//! fresh database, with workers on ports `base..base+N` (per-worker) or all on `base`.

use std::process::Stdio;
use std::time::Duration;

use pgchat::foundation::auth::Authenticator;
use pgchat::foundation::protocol::UserId;
use serde_json::Value;

use super::{Client, TestDb, PATIENCE, SECRET};

pub struct Cluster {
    /// Shared when a second deployment joins the same database ([`Cluster::join`]).
    pub db: std::sync::Arc<TestDb>,
    pub base_port: u16,
    pub workers: usize,
    pub per_worker: bool,
    supervisor: Option<tokio::process::Child>,
}

/// A base port with `n` free ports above it, below the kernel's range of ephemeral ports:
/// a port inside that range, free when checked, may be taken by any outgoing connection
/// (to PostgreSQL, a test client) before the worker binds it; the worker then cannot
/// start and never answers /ready.
pub fn free_ports(n: usize) -> u16 {
    let (low, high) = unassigned_ports();
    for _ in 0..200 {
        let base: u16 = low + rand::random::<u16>() % (high - low - n as u16);
        let free =
            (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i as u16)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no run of {n} free ports");
}

/// Ports the kernel never hands to outgoing connections: from 10000 up to the start of
/// `ip_local_port_range` (32768 by default).
fn unassigned_ports() -> (u16, u16) {
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if start > 12_000 {
        (10_000, start)
    } else {
        (20_000, 32_768) // an unusual range: the old guess
    }
}

/// `pgchat serve --workers n` on `db_url` from `base_port`, with a clean environment
/// and the test secret; its output is shown only with `TEST_LOG`.
pub fn serve_command(
    db_url: &str,
    base_port: u16,
    n: usize,
    per_worker: bool,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgchat"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PGCHAT_CONFIG", "/nonexistent/pgchat.toml")
        .env("PORT", base_port.to_string())
        .env("PGCHAT_HOST", "127.0.0.1")
        .env("PGCHAT_PRESENCE_OPEN", "true")
        .env("DATABASE_URL", db_url)
        .env("JWT_SECRET", SECRET)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .args(["serve", "--workers", &n.to_string()])
        .args(["--listen", if per_worker { "per-worker" } else { "shared" }])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if std::env::var_os("TEST_LOG").is_none() {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    cmd
}

impl Cluster {
    /// Starts `n` workers, port per worker, and waits until each is ready.
    pub async fn start(n: usize, env: &[(&str, &str)]) -> Cluster {
        Self::start_with(n, true, env).await
    }

    pub async fn start_with(n: usize, per_worker: bool, env: &[(&str, &str)]) -> Cluster {
        super::init_logging();
        let db = std::sync::Arc::new(TestDb::new().await);
        Self::launch(db, n, per_worker, env).await
    }

    /// Starts `n` workers, port per worker, on `db` (a private cluster's database).
    pub async fn start_on(db: TestDb, n: usize, env: &[(&str, &str)]) -> Cluster {
        super::init_logging();
        Self::launch(std::sync::Arc::new(db), n, true, env).await
    }

    /// Another deployment (another `serve`, as if on another host) on this one's database.
    pub async fn join(&self, n: usize) -> Cluster {
        Self::launch(self.db.clone(), n, true, &[]).await
    }

    async fn launch(
        db: std::sync::Arc<TestDb>,
        n: usize,
        per_worker: bool,
        env: &[(&str, &str)],
    ) -> Cluster {
        let base_port = free_ports(n);
        let mut cmd = serve_command(&db.url, base_port, n, per_worker);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let supervisor = cmd.spawn().expect("start pgchat serve");
        let mut cluster = Cluster {
            db,
            base_port,
            workers: n,
            per_worker,
            supervisor: Some(supervisor),
        };
        for i in 0..cluster.ports() {
            cluster.wait_started(i).await;
        }
        // Formed: every worker has heard the others' heartbeats (every 2 s).
        if per_worker {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            for i in 0..n {
                while cluster.health(i).await["cluster"]["peers"]
                    .as_u64()
                    .is_none_or(|p| (p as usize) < n - 1)
                {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "worker {i} did not see its peers"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        cluster
    }

    fn ports(&self) -> usize {
        if self.per_worker {
            self.workers
        } else {
            1
        }
    }

    pub fn port(&self, worker: usize) -> u16 {
        if self.per_worker {
            self.base_port + worker as u16
        } else {
            self.base_port
        }
    }

    pub fn http(&self, worker: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port(worker))
    }

    /// Waits for worker `worker`'s /ready to answer 200; fails at once, saying so, if
    /// `pgchat serve` exits first.
    async fn wait_started(&mut self, worker: usize) {
        let url = self.http(worker, "/ready");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status() == 200 {
                    return;
                }
            }
            let child = self.supervisor.as_mut().expect("running");
            if let Some(status) = child.try_wait().unwrap() {
                panic!("pgchat serve exited ({status}) before {url} answered 200; TEST_LOG=1 shows why");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{url} did not answer 200 in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_ready(&self, worker: usize) {
        super::wait_ready(&self.http(worker, "/ready")).await;
    }

    pub async fn health(&self, worker: usize) -> Value {
        reqwest::get(self.http(worker, "/health"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn token(&self, user: &str) -> String {
        Authenticator::new(SECRET).mint(
            &UserId::parse(user).unwrap(),
            Some(&format!("{user} name")),
            Duration::from_secs(3600),
        )
    }

    /// Connects `user` to worker `worker`.
    pub async fn connect(&self, worker: usize, user: &str) -> Client {
        Client::connect_url(
            &format!("ws://127.0.0.1:{}/ws", self.port(worker)),
            &self.token(user),
        )
        .await
    }

    /// kill -9 of worker `worker`; returns its pid.
    pub async fn kill_worker(&self, worker: usize) -> u32 {
        self.signal_worker(worker, "-KILL").await
    }

    /// SIGTERM to worker `worker` alone (a rolling restart); returns its pid.
    pub async fn term_worker(&self, worker: usize) -> u32 {
        self.signal_worker(worker, "-TERM").await
    }

    async fn signal_worker(&self, worker: usize, signal: &str) -> u32 {
        let pid = self.health(worker).await["pid"].as_u64().unwrap() as u32;
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        pid
    }

    /// The connections the cluster holds to its database now.
    pub async fn connections(&self, admin: &tokio_postgres::Client) -> i64 {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&self.db.name],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// SIGTERM to the supervisor; waits for it to exit.
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.supervisor.take().expect("running");
        let pid = child.id().unwrap();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        tokio::time::timeout(PATIENCE * 2, child.wait())
            .await
            .expect("the cluster stops within the shutdown timeout")
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(child) = self.supervisor.as_ref() {
            if let Some(pid) = child.id() {
                // The workers see their stdin close and drain; the supervisor is killed.
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
}
