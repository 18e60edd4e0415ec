//! The deployment files in the repository, run as they ship: the nginx site in front of
//! three workers, the systemd unit through `systemd-analyze verify`, the notify protocol
//! the unit relies on, the container's health probe and Heroku's PORT.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::cluster::{free_ports, serve_command, Cluster};
use common::{Client, TestApp, TestDb, PATIENCE};
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

const NGINX_CONF: &str = include_str!("../deploy/nginx.conf");
const UNIT: &str = include_str!("../deploy/pgchat.service");

/// A directory of its own under the target directory, removed first if left over.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "deploy-{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The full path of `tool` on PATH or in the sbin directories, if installed.
fn installed(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file());
    found
}

#[tokio::test]
async fn a_heroku_process_without_port_stops_with_one_line_naming_the_fix() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgchat"))
        .env_clear()
        .env("PGCHAT_CONFIG", "/nonexistent/pgchat.toml")
        .env("DYNO", "web.1")
        .env("NODE_ENV", "production")
        .env("JWT_SECRET", "x".repeat(32))
        .env("DATABASE_URL", "postgres://u@db.invalid/x")
        .arg("serve")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("PORT") && stderr.contains("Procfile"),
        "{stderr}"
    );
}

/// `pgchat health` with the server's PORT, and what it printed.
async fn health(port: u16, path: &str) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgchat"))
        .env_clear()
        .env("PGCHAT_CONFIG", "/nonexistent/pgchat.toml")
        .env("PORT", port.to_string())
        .args(["health", "--path", path])
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn pgchat_health_is_the_container_s_probe() {
    let app = TestApp::spawn().await;
    let port = app.addr.port();
    assert_eq!(health(port, "/ready").await, (Some(0), String::new()));
    let (code, said) = health(port, "/nowhere").await;
    assert_eq!(code, Some(1));
    assert!(said.contains("404"), "{said}");
    // Nothing listens there: refused, in one line.
    let (code, said) = health(free_ports(1), "/ready").await;
    assert_eq!(code, Some(1));
    assert_eq!(said.lines().count(), 1, "{said}");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    // What the unit promises must match the binary: the give-up code is not restarted.
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "NotifyAccess=main",
        "KillMode=mixed",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
    ] {
        assert!(UNIT.contains(line), "the unit lacks {line:?}");
    }
    let prevented = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("RestartPreventExitStatus="))
        .expect("RestartPreventExitStatus");
    let codes: Vec<&str> = prevented.split_whitespace().collect();
    assert!(codes.contains(&"2"), "{prevented}");
    assert!(
        codes.contains(&pgchat::supervisor::GAVE_UP.to_string().as_str()),
        "{prevented}"
    );

    let Some(analyze) = installed("systemd-analyze") else {
        eprintln!("skipped: systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = scratch("unit");
    let unit = dir.join("pgchat.service");
    std::fs::write(
        &unit,
        UNIT.replace("/usr/local/bin/pgchat", env!("CARGO_BIN_EXE_pgchat")),
    )
    .unwrap();
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    // Unknown or misspelt keys are warnings, with exit code 0: refuse those too.
    assert!(
        out.status.success() && !said.contains("pgchat.service"),
        "systemd-analyze verify: {said}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A stand-in for systemd's notify socket: every datagram, as text.
struct NotifySocket {
    path: PathBuf,
    received: mpsc::UnboundedReceiver<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let (tx, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
        NotifySocket { path, received }
    }

    /// Waits for a notice with the line `line`; returns every notice up to it.
    async fn until(&mut self, line: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE * 2;
        loop {
            let notice = tokio::time::timeout_at(deadline, self.received.recv())
                .await
                .unwrap_or_else(|_| panic!("no {line} within the deadline; got {seen:?}"))
                .expect("socket open");
            let found = notice.lines().any(|l| l == line);
            seen.push(notice);
            if found {
                return seen;
            }
        }
    }

    /// Every notice that arrives within `d`.
    async fn during(&mut self, d: Duration) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(n)) = tokio::time::timeout_at(deadline, self.received.recv()).await {
            seen.push(n);
        }
        seen
    }
}

fn count(notices: &[String], line: &str) -> usize {
    notices
        .iter()
        .flat_map(|n| n.lines())
        .filter(|l| *l == line)
        .count()
}

async fn ready_status(port: u16) -> Option<u16> {
    reqwest::get(format!("http://127.0.0.1:{port}/ready"))
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_single_server_tells_systemd_ready_after_it_answers_then_pings_and_says_stopping() {
    let db = TestDb::new().await;
    let dir = scratch("notify-single");
    let mut notify = NotifySocket::bind(&dir);
    let port = free_ports(1);
    let mut server = serve_command(&db.url, port, 1, false)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "1000000")
        .spawn()
        .unwrap();

    notify.until("READY=1").await;
    // Said only once the port listens and the notification listener is up.
    assert_eq!(ready_status(port).await, Some(200));
    // Every half second while the watchdog wants a ping every second.
    notify.until("WATCHDOG=1").await;
    notify.until("WATCHDOG=1").await;

    signal(server.id().unwrap(), "-TERM");
    notify.until("STOPPING=1").await;
    let status = tokio::time::timeout(PATIENCE, server.wait())
        .await
        .expect("drained")
        .unwrap();
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_supervisor_speaks_for_its_workers_to_systemd_and_stops_pinging_for_a_stuck_one() {
    let db = TestDb::new().await;
    let dir = scratch("notify-workers");
    let mut notify = NotifySocket::bind(&dir);
    let base = free_ports(3);
    let mut server = serve_command(&db.url, base, 3, true)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "1000000")
        .spawn()
        .unwrap();
    let supervisor = server.id().unwrap();

    let before = notify.until("READY=1").await;
    for i in 0..3 {
        assert_eq!(ready_status(base + i).await, Some(200), "worker {i}");
    }
    let after = notify.until("WATCHDOG=1").await;
    // One READY=1, from the supervisor: the workers talk to it, not to systemd.
    assert_eq!(
        count(&before, "READY=1") + count(&after, "READY=1"),
        1,
        "{before:?} {after:?}"
    );

    // A worker that stops answering (alive to waitpid, so never restarted) stops the
    // watchdog pings: systemd then restarts the service.
    let health: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{base}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let worker = health["pid"].as_u64().unwrap() as u32;
    signal(worker, "-STOP");
    // Pings already due may still come for one interval; then none.
    notify.during(Duration::from_millis(2500)).await;
    let silent = notify.during(Duration::from_secs(3)).await;
    signal(worker, "-CONT");
    assert_eq!(count(&silent, "WATCHDOG=1"), 0, "{silent:?}");
    notify.until("WATCHDOG=1").await;

    signal(supervisor, "-TERM");
    notify.until("STOPPING=1").await;
    let status = tokio::time::timeout(PATIENCE * 2, server.wait())
        .await
        .expect("drained")
        .unwrap();
    assert!(status.success(), "{status}");
    // The relay's sockets are gone with it.
    let relay = std::env::temp_dir().join(format!("pgchat-notify-{supervisor}"));
    assert!(!relay.exists(), "{} left behind", relay.display());
    let _ = std::fs::remove_dir_all(dir);
}

/// The directory deploy/nginx.conf writes its access log to.
const NGINX_LOG_DIR: &str = "/var/log/nginx/";

/// deploy/nginx.conf for this test: upstream ports from `base`, the plain server on
/// `http`, and the TLS server on `https`, with `cert`/`key` or, without them, as plain
/// HTTP (the test's clients speak no TLS); its access log under `logs`.
fn nginx_site(
    base: u16,
    http: u16,
    https: u16,
    tls: Option<(&Path, &Path)>,
    logs: &Path,
) -> String {
    let mut conf = NGINX_CONF.to_string();
    for i in 0..3u16 {
        let from = format!("127.0.0.1:{} ", 3001 + i);
        assert!(conf.contains(&from), "deploy/nginx.conf has {from}");
        conf = conf.replace(&from, &format!("127.0.0.1:{} ", base + i));
    }
    let mut out = String::new();
    for line in conf.lines() {
        let t = line.trim();
        let line = match t {
            // IPv6 may be off on a test machine.
            _ if t.starts_with("listen [::]") => continue,
            "listen 80;" => format!("listen 127.0.0.1:{http};"),
            "listen 443 ssl;" => match tls {
                Some(_) => format!("listen 127.0.0.1:{https} ssl;"),
                None => format!("listen 127.0.0.1:{https};"),
            },
            _ if t.starts_with("ssl_certificate ") => match tls {
                Some((cert, _)) => format!("ssl_certificate {};", cert.display()),
                None => continue,
            },
            _ if t.starts_with("ssl_certificate_key ") => match tls {
                Some((_, key)) => format!("ssl_certificate_key {};", key.display()),
                None => continue,
            },
            _ if t.starts_with("ssl_") && tls.is_none() => continue,
            _ if t.starts_with("access_log ") => {
                line.replace(NGINX_LOG_DIR, &format!("{}/", logs.display()))
            }
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The main configuration around a site: everything under `dir`.
fn nginx_main(dir: &Path, site: &Path) -> PathBuf {
    let d = dir.display();
    let main = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nworker_processes 1;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {};\n}}\n",
        site.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, main).unwrap();
    path
}

fn nginx_test(nginx: &Path, dir: &Path, main: &Path) {
    let out = std::process::Command::new(nginx)
        .arg("-t")
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(main)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certificate and key for `nginx -t` on the TLS server.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=chat.example.com", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl req");
    (cert, key)
}

/// nginx in the foreground, stopped with its workers when the test ends (SIGKILL to the
/// master alone would leave the workers behind).
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        signal(self.0.id(), "-TERM");
        let _ = self.0.wait();
    }
}

/// What deploy/nginx.conf logs must not hold a query string: its `log_format` has none of
/// the variables that carry one, and every server block logs with it (a block without an
/// `access_log` would inherit the http block's, `combined` as distributions ship it).
fn access_log_format_without_queries(conf: &str) {
    let start = conf
        .find("\nlog_format ")
        .expect("deploy/nginx.conf has a log_format")
        + 1;
    let directive = &conf[start..start + conf[start..].find(';').unwrap()];
    let name = directive.split_whitespace().nth(1).unwrap();
    for var in [
        "$request_uri",
        "$args",
        "$arg_",
        "$query_string",
        "$is_args",
        "$http_referer",
    ] {
        assert!(
            !directive.contains(var),
            "{name} must not log {var}: {directive}"
        );
    }
    // $request is the whole request line; $request_method, $request_time and the like are fine.
    for (i, _) in directive.match_indices("$request") {
        let next = directive[i + "$request".len()..].chars().next();
        assert_eq!(next, Some('_'), "{name} must not log $request: {directive}");
    }
    assert!(
        directive.contains("$uri"),
        "{name} logs the path: {directive}"
    );
    let blocks: Vec<&str> = conf.split("\nserver {").skip(1).collect();
    assert_eq!(blocks.len(), 2, "deploy/nginx.conf has two server blocks");
    for block in blocks {
        let logs: Vec<&str> = block
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("access_log "))
            .collect();
        assert!(
            !logs.is_empty() && logs.iter().all(|l| l.ends_with(&format!(" {name};"))),
            "every server block logs with {name}: {logs:?}"
        );
    }
}

/// The file's contents once it holds `needle` (nginx writes a WebSocket's line when the
/// connection ends).
async fn log_with(path: &Path, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needle:?} in {}: {log}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn messages_pass_through_nginx_between_clients_on_different_workers() {
    let Some(nginx) = installed("nginx") else {
        eprintln!("skipped: nginx is not installed (.ci/run installs it: apt-get install nginx)");
        return;
    };
    let cluster = Cluster::start(3, &[]).await;
    let dir = scratch("nginx");
    let [http, https] = [free_ports(1), free_ports(1)];

    // The site as shipped, TLS and all, passes nginx -t.
    let (cert, key) = self_signed(&dir);
    let site = dir.join("pgchat.conf");
    std::fs::write(
        &site,
        nginx_site(cluster.base_port, http, https, Some((&cert, &key)), &dir),
    )
    .unwrap();
    let main = nginx_main(&dir, &site);
    nginx_test(&nginx, &dir, &main);

    // And with TLS taken off the second server, it carries the test's traffic.
    std::fs::write(
        &site,
        nginx_site(cluster.base_port, http, https, None, &dir),
    )
    .unwrap();
    nginx_test(&nginx, &dir, &main);
    let _nginx = Nginx(
        std::process::Command::new(&nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&main)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::wait_ready(&format!("http://127.0.0.1:{https}/ready")).await;
    // The plain server only redirects to HTTPS.
    let redirected_token = cluster.token("dave");
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!(
            "http://127.0.0.1:{http}/ws?token={redirected_token}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 301);

    // ip_hash sends every client from 127.0.0.1 to one worker: bob goes straight to
    // another one.
    let mut alice = Client::connect_url(
        &format!("ws://127.0.0.1:{https}/ws"),
        &cluster.token("alice"),
    )
    .await;
    let mut bob = cluster.connect(0, "bob").await;
    if bob.hello["worker"] == alice.hello["worker"] {
        bob = cluster.connect(1, "bob").await;
    }
    assert_ne!(alice.hello["worker"], bob.hello["worker"]);

    let m = alice.send_dm("bob", "through nginx", "a1").await;
    assert_eq!(bob.event_of("message").await["message"], m);
    let r = bob.send_dm("alice", "and back", "b1").await;
    // Alice's own message comes to her sessions first.
    while alice.event_of("message").await["message"] != r {}

    // A browser's connection, token in the query: the access log has its path, not the
    // token. The site's format replaces the main configuration's `combined`, which has
    // its own file here (nothing may reach it either).
    let browser_token = cluster.token("carol");
    let carol = common::try_connect_url(
        &format!("ws://127.0.0.1:{https}/ws?token={browser_token}&after=0"),
        None,
    )
    .await
    .unwrap_or_else(|(status, body)| panic!("?token= through nginx: {status} {body}"));
    assert_eq!(carol.hello["user"], "carol");
    carol.close().await;
    let log = log_with(&dir.join("pgchat.access.log"), "\" 101 ").await;
    for token in [&browser_token, &redirected_token] {
        assert!(
            !log.contains(token.as_str()),
            "the access log holds a token: {log}"
        );
    }
    assert!(
        !log.contains('?'),
        "the access log holds a query string: {log}"
    );
    for status in [101, 301] {
        let line = format!("\"GET /ws HTTP/1.1\" {status} ");
        assert!(log.contains(&line), "no {line:?} in the access log: {log}");
    }
    let main_log = std::fs::read_to_string(dir.join("access.log")).unwrap_or_default();
    assert!(
        !main_log.contains("token"),
        "the http block's log got: {main_log}"
    );
    // And not by chance: nothing in the format can write a query, in either server block.
    access_log_format_without_queries(NGINX_CONF);
    let _ = std::fs::remove_dir_all(dir);
}
