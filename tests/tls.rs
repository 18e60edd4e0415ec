//! TLS to PostgreSQL, against a private cluster of the tests' own with `ssl = on` and a
//! certificate made here (a test CA, and a server certificate it signed for `localhost`);
//! and start-up errors that keep PostgreSQL's (or the driver's) own words.
//!
//! The cluster is shared by the tests that overlap in time and stopped (and removed)
//! when the last of them is done.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use common::{TestApp, PATIENCE, SECRET};
use pgchat::db::embedded::{find_bindir, Cluster};
use pgchat::Application;

/// The database that `pg_hba.conf` admits only over TLS.
const TLS_ONLY_DB: &str = "tlsonly";

/// What the tests need to know about the running cluster.
#[derive(Clone)]
struct Server {
    port: u16,
    password: String,
    /// The test CA's certificate (PEM), which signed the server's.
    ca: PathBuf,
    /// Another CA's certificate, which signed nothing the server shows.
    other_ca: PathBuf,
}

impl Server {
    /// A URL for database `db` by `host`, with `query` (e.g. `sslmode=require`).
    fn url(&self, host: &str, db: &str, query: &str) -> String {
        format!(
            "postgres://postgres:{}@{host}:{}/{db}?{query}",
            self.password, self.port
        )
    }

    /// Reached by the name in its certificate (`localhost`), at 127.0.0.1.
    fn url_by_name(&self, db: &str, query: &str) -> String {
        self.url("localhost", db, &format!("hostaddr=127.0.0.1&{query}"))
    }
}

struct Running {
    users: usize,
    cluster: Option<(Cluster, PathBuf, Server)>,
}

static RUNNING: Mutex<Running> = Mutex::new(Running {
    users: 0,
    cluster: None,
});

/// Holds the cluster running; the last one dropped stops it.
struct Use(Server);

impl Drop for Use {
    fn drop(&mut self) {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        running.users -= 1;
        if running.users == 0 {
            if let Some((cluster, dir, _)) = running.cluster.take() {
                drop(cluster); // pg_ctl stop
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}

/// The shared TLS cluster, started if no test holds it now. Blocks the calling test
/// while it starts (a few seconds at most: initdb, start, reload).
fn tls_server() -> Use {
    common::init_logging();
    let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    if running.cluster.is_none() {
        // On a thread of its own: a runtime inside the test's runtime may not block.
        let started = std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(start_tls_cluster())
        })
        .join()
        .expect("the TLS cluster starts");
        running.cluster = Some(started);
    }
    running.users += 1;
    Use(running.cluster.as_ref().unwrap().2.clone())
}

async fn start_tls_cluster() -> (Cluster, PathBuf, Server) {
    let bindir = find_bindir().expect("PostgreSQL server binaries (.ci/run installs them)");
    // Everything in one scratch directory: the cluster, its password, the CA files.
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tls-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&scratch).unwrap();
    let dir = scratch.join("cluster");
    let port = common::cluster::free_ports(1);
    let cluster = Cluster::start(&bindir, &dir, port).await.unwrap();
    let url = cluster.url("postgres");
    let password = String::from_utf8(
        url.parse::<tokio_postgres::Config>()
            .unwrap()
            .get_password()
            .unwrap()
            .to_vec(),
    )
    .unwrap();

    // The certificates: a CA, and a server certificate it signs for localhost only.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pgchat test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = other_params.self_signed(&other_key).unwrap();

    // Beside the cluster, not in it: pgchat reads the CA files, the server its own.
    let ca_path = scratch.join("ca.pem");
    let other_ca_path = scratch.join("other-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&other_ca_path, other_ca.pem()).unwrap();
    write_for_postgres(&dir.join("server.crt"), &server_cert.pem());
    write_for_postgres(&dir.join("server.key"), &server_key.serialize_pem());
    // Plain connections to TLS_ONLY_DB are turned away, as Heroku Postgres turns them all.
    let hba = dir.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("hostnossl {TLS_ONLY_DB} all all reject\n{rules}"),
    )
    .unwrap();

    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    // One at a time: ALTER SYSTEM refuses to run inside a (multi-statement) transaction.
    for sql in [
        "ALTER SYSTEM SET ssl = on".to_string(),
        format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            dir.join("server.crt").display()
        ),
        format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            dir.join("server.key").display()
        ),
        "SELECT pg_reload_conf()".to_string(),
    ] {
        client.batch_execute(&sql).await.unwrap();
    }
    // The reload is asynchronous: wait until a backend sees ssl on.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let on: String = c.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        if on == "on" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ssl did not turn on; see {}/log",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(client);
    let _ = driver.await;
    let server = Server {
        port,
        password,
        ca: ca_path,
        other_ca: other_ca_path,
    };
    (cluster, scratch, server)
}

/// Writes a file the server reads: owned by `postgres` when the tests run as root (the
/// server runs as postgres then), readable by its owner only (PostgreSQL insists for keys).
fn write_for_postgres(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        let ok = std::process::Command::new("chown")
            .arg("postgres:postgres")
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown postgres {}", path.display());
    }
}

fn fresh_db() -> String {
    format!("tls_{:08x}", rand::random::<u32>())
}

/// Builds pgchat on `url` (set-up included); the start-up error if it cannot start.
async fn build(url: &str) -> Result<Application, pgchat::db::StartupError> {
    let config = pgchat::Config {
        host: Some("127.0.0.1".into()),
        port: 0,
        node_env: pgchat::foundation::config::NodeEnv::Test,
        database_url: Some(url.to_string()),
        jwt_secret: Some(SECRET.into()),
        embedded_postgres: false,
        db_max_connections: 3,
        db_min_connections: 1,
        ..pgchat::Config::default()
    };
    config.validate().expect("a valid configuration");
    Application::build(config).await
}

/// Whether pgchat's connections to `db` (listener and pool) use TLS, per pg_stat_ssl.
async fn pgchat_connections_use_tls(server: &Server, db: &str) -> Vec<bool> {
    let (client, conn) = tokio_postgres::connect(
        &server.url("127.0.0.1", "postgres", "sslmode=disable"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = $1 AND a.application_name LIKE 'pgchat%'",
            &[&db],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn with_sslmode_require_pgchat_connects_encrypted_and_serves_messages() {
    let server = tls_server();
    let db = fresh_db();
    // The certificate names localhost, not 127.0.0.1, and its CA is unknown to the
    // system: require encrypts without checking either, as Heroku Postgres needs.
    let url = server.0.url("127.0.0.1", &db, "sslmode=require");
    let app = TestApp::spawn_with(|c| c.database_url = Some(url.clone())).await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    alice.send_dm("bob", "over TLS", "m1").await;
    let got = bob.event_of("message").await;
    assert_eq!(got["message"]["body"], "over TLS", "{got}");

    let tls = pgchat_connections_use_tls(&server.0, &db).await;
    assert!(
        tls.len() >= 2,
        "the listener and the pool are connected: {tls:?}"
    );
    assert!(
        tls.iter().all(|ssl| *ssl),
        "every connection is encrypted: {tls:?}"
    );
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_from_an_unknown_ca_and_says_so() {
    let server = tls_server();
    let url = server.0.url_by_name(&fresh_db(), "sslmode=verify-full");
    let e = build(&url)
        .await
        .err()
        .expect("the system does not trust the test CA");
    let text = e.to_string();
    assert!(text.contains("UnknownIssuer"), "names the problem: {text}");
    assert!(text.contains("sslrootcert"), "says what to do: {text}");
    assert!(!text.contains(&server.0.password), "{text}");
}

#[tokio::test]
async fn verify_full_with_the_ca_works_by_the_certificate_s_name_and_refuses_another_name() {
    let server = tls_server();
    let ca = format!("sslrootcert={}", server.0.ca.display());
    let db = fresh_db();
    let app = build(
        &server
            .0
            .url_by_name(&db, &format!("sslmode=verify-full&{ca}")),
    )
    .await
    .expect("the certificate is signed by the CA and names localhost");
    drop(app);

    // By address, the name does not match what the certificate was issued for.
    let by_address = server
        .0
        .url("127.0.0.1", &db, &format!("sslmode=verify-full&{ca}"));
    let e = build(&by_address)
        .await
        .err()
        .expect("the name does not match");
    let text = e.to_string();
    assert!(text.contains("not valid for name"), "{text}");
    assert!(
        text.contains("127.0.0.1") && text.contains("verify-ca"),
        "{text}"
    );

    // verify-ca checks the CA alone, and so does require given a root certificate.
    for mode in ["verify-ca", "require"] {
        let url = server
            .0
            .url("127.0.0.1", &db, &format!("sslmode={mode}&{ca}"));
        build(&url).await.unwrap_or_else(|e| panic!("{mode}: {e}"));
    }
    let other = format!("sslrootcert={}", server.0.other_ca.display());
    let url = server
        .0
        .url("127.0.0.1", &db, &format!("sslmode=require&{other}"));
    let e = build(&url)
        .await
        .err()
        .expect("another CA signed nothing here");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
}

#[tokio::test]
async fn sslmode_disable_connects_in_plain_text_where_the_server_allows_it() {
    let server = tls_server();
    let db = fresh_db();
    let url = server.0.url("127.0.0.1", &db, "sslmode=disable");
    let app = TestApp::spawn_with(|c| c.database_url = Some(url.clone())).await;
    let mut alice = app.connect("alice").await;
    alice.send_dm("bob", "in plain text", "m1").await;
    let tls = pgchat_connections_use_tls(&server.0, &db).await;
    assert!(!tls.is_empty() && tls.iter().all(|ssl| !ssl), "{tls:?}");
}

#[tokio::test]
async fn sslmode_disable_against_a_server_that_demands_tls_says_to_require_it() {
    let server = tls_server();
    let url = server.0.url("127.0.0.1", TLS_ONLY_DB, "sslmode=disable");
    let e = build(&url).await.err().expect("plain text is rejected");
    let text = e.to_string();
    assert!(
        text.contains("no encryption"),
        "PostgreSQL's own words: {text}"
    );
    assert!(text.contains("sslmode=require"), "what to do: {text}");
    assert!(!text.contains("db error"), "{text}");
    // With TLS it is admitted.
    let url = server.0.url("127.0.0.1", TLS_ONLY_DB, "sslmode=require");
    build(&url).await.expect("admitted over TLS");
}

#[tokio::test]
async fn in_production_a_remote_host_without_sslmode_gets_tls_and_a_local_one_stays_plain() {
    let server = tls_server();
    let production = |url: String| {
        move |c: &mut pgchat::Config| {
            c.node_env = pgchat::foundation::config::NodeEnv::Production;
            c.jwt_secret = Some("p".repeat(40).into());
            c.database_url = Some(url);
        }
    };
    // A name that is not this machine's (the socket still goes to 127.0.0.1): TLS,
    // although the URL does not ask for it; the TLS-only database admits it.
    let remote = server
        .0
        .url("db.example.test", TLS_ONLY_DB, "hostaddr=127.0.0.1");
    let app = TestApp::spawn_with(production(remote)).await;
    let tls = pgchat_connections_use_tls(&server.0, TLS_ONLY_DB).await;
    assert!(!tls.is_empty() && tls.iter().all(|ssl| *ssl), "{tls:?}");
    drop(app);

    // By its loopback address the server is reached as before: in plain text.
    let db = fresh_db();
    let local = server.0.url("127.0.0.1", &db, "");
    let _app = TestApp::spawn_with(production(local)).await;
    let tls = pgchat_connections_use_tls(&server.0, &db).await;
    assert!(!tls.is_empty() && tls.iter().all(|ssl| !ssl), "{tls:?}");
}

/// Runs `pgchat serve` on `database_url` and returns its exit code and stderr.
async fn serve_fails(database_url: &str) -> (Option<i32>, String) {
    let data = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tls-data-{:08x}", rand::random::<u32>()));
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pgchat"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PGCHAT_CONFIG", "/nonexistent/pgchat.toml")
            .env("PGCHAT_DATA_DIR", &data)
            .env("PGCHAT_HOST", "127.0.0.1")
            .env("PORT", common::cluster::free_ports(1).to_string())
            .env("JWT_SECRET", SECRET)
            .env("RUST_LOG", "off")
            .env("DATABASE_URL", database_url)
            .arg("serve")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("pgchat gives up")
    .unwrap();
    let _ = std::fs::remove_dir_all(&data);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn start_up_errors_print_the_server_s_or_driver_s_own_words_once() {
    let server = tls_server();
    let wrong = "wrong-password-7f3a";
    let db = fresh_db();
    let cases = [
        (
            "postgres://no_such_role_7f3a@127.0.0.1:5432/postgres".to_string(),
            vec![
                r#"role "no_such_role_7f3a" does not exist"#,
                "28000",
                "user name",
            ],
        ),
        (
            format!(
                "postgres://postgres:{wrong}@127.0.0.1:{}/{db}?sslmode=disable",
                server.0.port
            ),
            vec![
                "password authentication failed",
                "<redacted>",
                "password in DATABASE_URL",
            ],
        ),
        (
            "postgres://postgres@no-such-host.invalid:5432/postgres".to_string(),
            vec!["no-such-host.invalid", "lookup", "host and port"],
        ),
        (
            server.0.url_by_name(&db, "sslmode=verify-full"),
            vec!["TLS", "UnknownIssuer", "sslrootcert"],
        ),
    ];
    for (url, words) in cases {
        let (code, stderr) = serve_fails(&url).await;
        assert_eq!(code, Some(1), "{url}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        for w in words {
            assert!(stderr.contains(w), "{w:?} in: {stderr}");
        }
        for never in ["db error", wrong, server.0.password.as_str()] {
            assert!(!stderr.contains(never), "{never:?} in: {stderr}");
        }
    }
}

#[tokio::test]
async fn an_unknown_sslmode_or_an_unreadable_sslrootcert_stops_start_up_with_exit_2() {
    for (url, words) in [
        (
            "postgres://postgres@127.0.0.1/x?sslmode=verify_full",
            vec!["database_url", "verify_full", "verify-full"],
        ),
        (
            "postgres://postgres@127.0.0.1/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            vec!["database_url", "sslrootcert", "/nonexistent/ca.pem"],
        ),
    ] {
        let (code, stderr) = serve_fails(url).await;
        assert_eq!(code, Some(2), "{url}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        for w in words {
            assert!(stderr.contains(w), "{w:?} in: {stderr}");
        }
    }
}
