//! Who gets in: the JWT secret (generated when unset, refused when weak in production),
//! the claims a token may carry, tokens kept out of the logs, and the private PostgreSQL
//! cluster admitting only pgchat.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{TestApp, PATIENCE, SECRET};
use jsonwebtoken::{encode, EncodingKey, Header};
use pgchat::foundation::auth::Authenticator;
use pgchat::foundation::protocol::UserId;
use serde_json::{json, Value};

fn pgchat() -> tokio::process::Command {
    common::pgchat_command()
}

/// A fresh directory under the target directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{what}-{:08x}", rand::random::<u32>()));
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A token with these claims, signed with `secret` (HS256).
fn signed(secret: &str, claims: &Value) -> String {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token whose header and claims are given verbatim, signed with HS256 over `secret`
/// whatever the header says (so nothing but the header's algorithm can be the reason for a
/// refusal).
fn with_header(header: &str, claims: &str, secret: &str) -> String {
    use base64::Engine;
    let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_secret(secret.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    format!("{signing_input}.{signature}")
}

/// GET /api/conversations with `token`: the status and body.
async fn api(app: &TestApp, token: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(app.http("/api/conversations"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn output_within(cmd: &mut tokio::process::Command) -> std::process::Output {
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the command ends")
        .unwrap()
}

#[tokio::test]
async fn without_jwt_secret_a_random_one_is_generated_once_and_pgchat_token_signs_with_it() {
    let data = Scratch::new("secret");
    let mint = |user: &str| {
        let mut c = pgchat();
        c.env("PGCHAT_DATA_DIR", &data.0).args(["token", user]);
        c
    };
    let first = output_within(&mut mint("alice")).await;
    assert!(first.status.success(), "{first:?}");
    let path = data.0.join("jwt_secret");
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        stderr.contains(&path.display().to_string()) && stderr.contains("generated"),
        "the first start says where the secret is: {stderr}"
    );
    let secret = std::fs::read_to_string(&path).unwrap().trim().to_string();
    assert_eq!(mode(&path), 0o600);
    assert!(secret.len() >= 64 && secret.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(
        !stderr.contains(&secret),
        "the secret itself is never printed"
    );

    let second = output_within(&mut mint("bob")).await;
    assert!(second.status.success());
    assert!(
        !String::from_utf8_lossy(&second.stderr).contains("generated"),
        "printed once"
    );
    let auth = Authenticator::new(&secret);
    for (out, user) in [(&first, "alice"), (&second, "bob")] {
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(auth.verify(&token).unwrap().user.as_str(), user);
        assert!(
            Authenticator::new(pgchat::foundation::config::OLD_DEV_JWT_SECRET)
                .verify(&token)
                .is_err(),
            "not signed with the old public secret"
        );
    }
}

#[tokio::test]
async fn the_supervisor_and_its_workers_share_the_generated_secret() {
    let db = common::TestDb::new().await;
    let data = Scratch::new("secret-workers");
    let base = loop {
        let p = 20_000 + rand::random::<u16>() % 30_000;
        if (0..2).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            break p;
        }
    };
    let stderr_path = data.0.with_extension("stderr");
    std::fs::create_dir_all(data.0.parent().unwrap()).unwrap();
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut server = pgchat()
        .env("PGCHAT_DATA_DIR", &data.0)
        .env("PORT", base.to_string())
        .env("PGCHAT_HOST", "127.0.0.1")
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .args(["serve", "--workers", "2", "--listen", "per-worker"])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    for port in [base, base + 1] {
        common::wait_ready(&format!("http://127.0.0.1:{port}/ready")).await;
    }
    let minted = output_within(
        pgchat()
            .env("PGCHAT_DATA_DIR", &data.0)
            .args(["token", "alice"]),
    )
    .await;
    let token = String::from_utf8_lossy(&minted.stdout).trim().to_string();
    for port in [base, base + 1] {
        let resp = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/api/conversations"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "worker on {port} accepts the token");
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &server.id().unwrap().to_string()])
        .status();
    let _ = tokio::time::timeout(PATIENCE, server.wait()).await;
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    let _ = std::fs::remove_file(&stderr_path);
    assert_eq!(
        log.matches("generated a random development secret").count(),
        1,
        "one process generated it, once: {log}"
    );
}

#[tokio::test]
async fn production_refuses_a_missing_short_or_public_secret_with_exit_code_2() {
    let old = pgchat::foundation::config::OLD_DEV_JWT_SECRET;
    let short = "s".repeat(31);
    for (secret, why) in [
        (None, "must be set"),
        (Some(short.as_str()), "at least 32 bytes"),
        (Some(old), "public"),
    ] {
        let mut cmd = pgchat();
        // Were the secret let through, start-up would fail at once on this database.
        cmd.env("NODE_ENV", "production")
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
            .env("PGCHAT_HOST", "127.0.0.1")
            .env("PORT", free_port().to_string())
            .arg("serve");
        if let Some(s) = secret {
            cmd.env("JWT_SECRET", s);
        }
        let out = output_within(&mut cmd).await;
        assert_eq!(out.status.code(), Some(2), "{why}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("jwt_secret") && stderr.contains(why),
            "{why}: {stderr}"
        );
    }
    let ok = output_within(
        pgchat()
            .env("NODE_ENV", "production")
            .env("JWT_SECRET", "s".repeat(32))
            .arg("config"),
    )
    .await;
    assert!(ok.status.success(), "32 bytes are enough");
}

#[tokio::test]
async fn claims_are_checked_as_documented() {
    let app = TestApp::spawn_with(|c| {
        c.jwt_audience = Some("chat".into());
        c.jwt_leeway_secs = 30;
        c.jwt_max_lifetime_secs = 3600;
    })
    .await;
    let t = now();
    let ok = |claims: Value| signed(SECRET, &claims);
    let accepted = [
        (
            "aud as a string",
            ok(json!({"sub": "a", "aud": "chat", "iat": t, "exp": t + 600})),
        ),
        (
            "aud as an array",
            ok(json!({"sub": "a", "aud": ["web", "chat"], "iat": t, "exp": t + 600})),
        ),
        (
            "exp and iat as floats",
            ok(json!({"sub": "a", "aud": "chat", "iat": t as f64 + 0.25, "exp": t as f64 + 600.5})),
        ),
        (
            "exp in exponent form",
            with_header(
                r#"{"alg":"HS256","typ":"JWT"}"#,
                &format!(
                    r#"{{"sub":"a","aud":"chat","iat":{t},"exp":{}e1}}"#,
                    (t + 600) / 10
                ),
                SECRET,
            ),
        ),
        (
            "expired within the leeway",
            ok(json!({"sub": "a", "aud": "chat", "iat": t - 600, "exp": t - 10})),
        ),
        (
            "nbf within the leeway",
            ok(json!({"sub": "a", "aud": "chat", "iat": t, "nbf": t + 10, "exp": t + 600})),
        ),
        (
            "nbf passed",
            ok(json!({"sub": "a", "aud": "chat", "iat": t, "nbf": t - 10, "exp": t + 600})),
        ),
    ];
    // Every case is tried and every mismatch reported, not only the first.
    let mut wrong = Vec::new();
    for (why, token) in accepted {
        let (status, body) = api(&app, &token).await;
        if status != 200 {
            wrong.push(format!("{why}: accepted expected, got {status} {body}"));
        }
    }
    let claims = r#"{"sub":"a","aud":"chat","exp":9999999999}"#;
    let refused = [
        (
            "expired past the leeway",
            ok(json!({"sub": "a", "aud": "chat", "iat": t - 600, "exp": t - 60})),
            "expired",
        ),
        (
            "not yet valid",
            ok(json!({"sub": "a", "aud": "chat", "iat": t, "nbf": t + 300, "exp": t + 600})),
            "not valid yet",
        ),
        (
            "another audience",
            ok(json!({"sub": "a", "aud": ["web"], "iat": t, "exp": t + 600})),
            "audience",
        ),
        (
            "no audience",
            ok(json!({"sub": "a", "iat": t, "exp": t + 600})),
            "aud",
        ),
        (
            "longer than the cap",
            ok(json!({"sub": "a", "aud": "chat", "iat": t, "exp": t + 7200})),
            "lifetime",
        ),
        (
            "iat in the future to stretch it",
            ok(json!({"sub": "a", "aud": "chat", "iat": t + 7000, "exp": t + 7200})),
            "lifetime",
        ),
        (
            "no iat under a cap",
            ok(json!({"sub": "a", "aud": "chat", "exp": t + 600})),
            "iat",
        ),
        (
            "no exp",
            ok(json!({"sub": "a", "aud": "chat", "iat": t})),
            "exp",
        ),
        (
            "exp as a string",
            ok(json!({"sub": "a", "aud": "chat", "iat": t, "exp": (t + 600).to_string()})),
            "exp",
        ),
        (
            "alg none",
            format!(
                "{}.",
                with_header(r#"{"alg":"none"}"#, claims, SECRET)
                    .rsplit_once('.')
                    .unwrap()
                    .0
            ),
            "HS256",
        ),
        (
            "HS512",
            with_header(r#"{"alg":"HS512","typ":"JWT"}"#, claims, SECRET),
            "HS256",
        ),
        (
            "RS256",
            with_header(r#"{"alg":"RS256","typ":"JWT"}"#, claims, SECRET),
            "HS256",
        ),
    ];
    for (why, token, says) in refused {
        let (status, body) = api(&app, &token).await;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        if status != 401 || body["error"]["code"] != "unauthorized" || !message.contains(says) {
            wrong.push(format!(
                "{why}: 401 saying {says:?} expected, got {status} {body}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn without_a_configured_audience_aud_is_ignored() {
    let app = TestApp::spawn().await;
    let t = now();
    for aud in [json!("anything"), json!(["a", "b"])] {
        let token = signed(SECRET, &json!({"sub": "a", "aud": aud, "exp": t + 600}));
        let (status, body) = api(&app, &token).await;
        assert_eq!(status, 200, "{aud}: {body}");
    }
}

#[tokio::test]
async fn tokens_in_query_strings_never_reach_a_log_line() {
    let db = common::TestDb::new().await;
    let port = free_port();
    let log_path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("query-token-{:08x}.log", rand::random::<u32>()));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server = pgchat()
        .env("PORT", port.to_string())
        .env("PGCHAT_HOST", "127.0.0.1")
        .env("DATABASE_URL", &db.url)
        .env("JWT_SECRET", SECRET)
        // Everything pgchat and its libraries log, at the most verbose level.
        .env("RUST_LOG", "trace")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let base = format!("127.0.0.1:{port}");
    common::wait_ready(&format!("http://{base}/ready")).await;

    let auth = Authenticator::new(SECRET);
    let mint = |user: &str| {
        auth.mint(
            &UserId::parse(user).unwrap(),
            None,
            Duration::from_secs(600),
        )
    };
    let (valid, via_access_token, over_http) = (mint("alice"), mint("bob"), mint("carol"));
    let forged = Authenticator::new("another secret").mint(
        &UserId::parse("mallory").unwrap(),
        None,
        Duration::from_secs(600),
    );
    // A socket opened with the token in the query, used, and closed.
    {
        let mut c = common::try_connect_url(&format!("ws://{base}/ws?token={valid}"), None)
            .await
            .expect("a browser-style connection is accepted");
        c.ok(json!({"type": "ping"})).await;
        c.close().await;
    }
    // Refused ones, and the same token on other paths and under other names.
    assert!(
        common::try_connect_url(&format!("ws://{base}/ws?token={forged}"), None)
            .await
            .is_err()
    );
    let _ = common::try_connect_url(
        &format!("ws://{base}/ws?access_token={via_access_token}"),
        None,
    )
    .await;
    for path in [
        format!("/api/conversations?token={over_http}"),
        format!("/health?token={over_http}"),
        format!("/nowhere?token={over_http}&x=%ZZ"),
    ] {
        let _ = reqwest::get(format!("http://{base}{path}")).await.unwrap();
    }

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &server.id().unwrap().to_string()])
        .status();
    let _ = tokio::time::timeout(PATIENCE, server.wait()).await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert!(
        text.contains("\"/ws"),
        "requests are logged at this level, so the check below means something: {text}"
    );
    for token in [&valid, &via_access_token, &over_http, &forged] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !text.contains(signature),
            "a token reached the log:\n{text}"
        );
    }
}

/// Connects to `url` and says whether the server let us in.
async fn admitted(url: &str) -> Result<(), String> {
    match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            let driver = tokio::spawn(conn);
            let _ = client.simple_query("SELECT 1").await;
            drop(client);
            let _ = driver.await;
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Starts pgchat with its private cluster under `data`, checks that the cluster admits
/// pgchat and nobody without the password, and stops it.
async fn serve_on_a_private_cluster(data: &Path) {
    let port = free_port();
    let config = pgchat::Config {
        host: Some("127.0.0.1".into()),
        port: 0,
        database_url: None,
        embedded_port: port,
        data_dir: data.to_path_buf(),
        jwt_secret: Some(SECRET.into()),
        ..pgchat::Config::default()
    };
    let application = pgchat::Application::build(config)
        .await
        .expect("starts its own cluster");
    let addr = application.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    common::wait_ready(&format!("http://{addr}/ready")).await;

    let password_file = data.join("postgres_password");
    assert_eq!(mode(&password_file), 0o600);
    let password = std::fs::read_to_string(&password_file)
        .unwrap()
        .trim()
        .to_string();
    for url in [
        format!("postgres://postgres@127.0.0.1:{port}/pgchat"),
        format!("postgres://postgres:wrong@127.0.0.1:{port}/pgchat"),
        format!(
            "host={} port={port} user=postgres dbname=pgchat",
            data.join("postgres").display()
        ),
    ] {
        assert!(admitted(&url).await.is_err(), "{url} is refused");
    }
    admitted(&format!(
        "postgres://postgres:{password}@127.0.0.1:{port}/pgchat"
    ))
    .await
    .expect("the password in the data directory lets pgchat in");
    let token = Authenticator::new(SECRET).mint(
        &UserId::parse("alice").unwrap(),
        None,
        Duration::from_secs(60),
    );
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/api/conversations"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "pgchat itself uses its database");
    let _ = stop.send(());
    server.await.unwrap();
}

#[tokio::test]
async fn the_private_cluster_admits_only_pgchat() {
    common::init_logging();
    let data = Scratch::new("embedded-auth");
    serve_on_a_private_cluster(&data.0).await;
}

#[tokio::test]
async fn a_private_cluster_made_by_an_older_pgchat_is_upgraded_to_passwords() {
    common::init_logging();
    let data = Scratch::new("embedded-trust");
    let dir = data.0.join("postgres");
    std::fs::create_dir_all(&dir).unwrap();
    // What older versions did: initdb --auth=trust, as postgres when root.
    let bindir = pgchat::db::embedded::find_bindir().expect("PostgreSQL is installed");
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap();
    let mut initdb = if root {
        std::process::Command::new("chown")
            .args(["postgres:postgres", &dir.to_string_lossy()])
            .status()
            .unwrap();
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bindir.join("initdb"));
        c
    } else {
        std::process::Command::new(bindir.join("initdb"))
    };
    let out = initdb
        .args([
            "-D",
            &dir.to_string_lossy(),
            "-U",
            "postgres",
            "--auth=trust",
        ])
        .args(["-E", "UTF8", "--no-locale", "--no-sync"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serve_on_a_private_cluster(&data.0).await;
    let hba = std::fs::read_to_string(dir.join("pg_hba.conf")).unwrap();
    assert!(
        !hba.lines()
            .any(|l| l.split('#').next().unwrap().split_whitespace().last() == Some("trust")),
        "{hba}"
    );
}

#[tokio::test]
async fn production_never_starts_the_private_cluster() {
    let data = Scratch::new("embedded-production");
    let out = output_within(
        pgchat()
            .env("NODE_ENV", "production")
            .env("JWT_SECRET", "p".repeat(40))
            .env("PGCHAT_DATA_DIR", &data.0)
            .env("PGCHAT_EMBEDDED_PORT", free_port().to_string())
            .env("PGCHAT_HOST", "127.0.0.1")
            .env("PORT", free_port().to_string())
            .env("RUST_LOG", "off")
            .arg("serve"),
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(!data.0.join("postgres").exists(), "no cluster was made");
}
