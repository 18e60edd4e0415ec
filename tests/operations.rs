//! The operator's view: log lines (worker and pid on each, JSON in production, no escape
//! codes off a terminal, the stats lines), `/health`'s utilisation figures and scale-out
//! hint, `/metrics` in both text formats, and settings that are not settings.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::cluster::{free_ports, Cluster};
use common::{TestApp, TestDb, PATIENCE, SECRET};
use serde_json::{json, Value};

fn pgchat() -> tokio::process::Command {
    common::pgchat_command()
}

fn scratch(what: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{what}-{:08x}", rand::random::<u32>()))
}

/// Runs `pgchat serve` (with `args`) on a fresh database with stderr going to a file (not
/// a terminal) until `until` holds for its stderr, then stops it with SIGTERM and returns
/// the pid and everything it wrote on stderr.
async fn serve_until(
    env: &[(&str, &str)],
    args: &[&str],
    until: impl Fn(&str) -> bool,
) -> (u32, String) {
    let db = TestDb::new().await;
    let port = free_ports(3);
    let log_path = scratch("serve-log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = pgchat();
    cmd.env("PORT", port.to_string())
        .env("PGCHAT_HOST", "127.0.0.1")
        .env("DATABASE_URL", &db.url)
        .env("JWT_SECRET", "s".repeat(40))
        .env("RUST_LOG", "info")
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut server = cmd.spawn().unwrap();
    let pid = server.id().unwrap();
    common::wait_ready(&format!("http://127.0.0.1:{port}/ready")).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap();
        if until(&text) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never showed what was awaited:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = tokio::time::timeout(PATIENCE, server.wait())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    (pid, text)
}

#[tokio::test]
async fn production_logs_json_lines_that_name_the_worker_and_pid() {
    let (pid, text) = serve_until(
        &[
            ("NODE_ENV", "production"),
            ("WORKERS", "1"),
            ("PGCHAT_STATS_INTERVAL_MS", "200"),
        ],
        &[],
        |t| t.contains("\"stats\"") && t.contains("listening"),
    )
    .await;
    let mut stats = None;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{text}"));
        assert_eq!(v["pid"], json!(pid), "{line}");
        assert_eq!(v["worker"], json!(0), "{line}");
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["message"] == "stats" {
            stats = Some(v);
        }
    }
    let stats = stats.expect("a stats line");
    for field in [
        "connections",
        "users_online",
        "rss_mb",
        "pool_size",
        "pool_available",
    ] {
        assert!(stats[field].is_u64(), "{field}: {stats}");
    }
}

#[tokio::test]
async fn text_logs_name_the_worker_and_pid_and_carry_no_escape_codes_off_a_terminal() {
    let (pid, text) = serve_until(&[("NODE_ENV", "development")], &[], |t| {
        t.contains("listening")
    })
    .await;
    assert!(!text.contains('\x1b'), "escape codes in a file:\n{text}");
    let tag = format!("worker=0 pid={pid} ");
    for line in text.lines() {
        assert!(line.contains(&tag), "{tag:?} missing: {line}");
        assert!(
            !line.trim_start().starts_with('{'),
            "text, not JSON: {line}"
        );
    }
}

#[tokio::test]
async fn the_supervisor_logs_the_spread_of_connections_and_an_unknown_variable_once() {
    let (pid, text) = serve_until(
        &[
            ("PGCHAT_STATS_INTERVAL_MS", "200"),
            ("PGCHAT_MAX_CONECTIONS", "5"),
            ("PGCHAT_LOG_FORMAT", "json"),
        ],
        &["--workers", "2", "--listen", "per-worker"],
        |t| t.matches("\"stats\"").count() >= 2 && t.contains("connections per worker"),
    )
    .await;
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let workers: HashSet<String> = lines.iter().map(|v| v["worker"].to_string()).collect();
    for w in ["\"supervisor\"", "0", "1"] {
        assert!(workers.contains(w), "no line from worker {w}:\n{text}");
    }
    let spread = lines
        .iter()
        .find(|v| v["message"] == "connections per worker")
        .unwrap();
    assert_eq!(spread["worker"], "supervisor");
    assert_eq!(spread["pid"], json!(pid));
    assert!(spread["total"].is_u64(), "{spread}");
    let warnings: Vec<&Value> = lines
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("PGCHAT_MAX_CONECTIONS"))
        })
        .collect();
    assert_eq!(warnings.len(), 1, "warned once:\n{text}");
    assert!(
        warnings[0]["message"]
            .as_str()
            .unwrap()
            .contains("PGCHAT_MAX_CONNECTIONS"),
        "names the closest key: {}",
        warnings[0]
    );
}

#[tokio::test]
async fn health_reports_utilisation_and_hints_scale_out_when_connections_run_high() {
    let app = TestApp::spawn_with(|c| c.max_connections = 2).await;
    let health = || async {
        reqwest::get(app.http("/health"))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let idle = health().await;
    let u = &idle["utilisation"];
    for key in ["cpu", "memory", "connections", "database"] {
        assert!(u[key].is_object(), "{key}: {idle}");
    }
    assert!(u["cpu"]["percent"].is_number(), "{idle}");
    assert_eq!(u["connections"]["percent"], json!(0.0));
    assert!(
        idle["scale_out"]
            .as_array()
            .is_none_or(|a| !a.iter().any(|t| t == "connections")),
        "{idle}"
    );
    let _alice = app.connect("alice").await;
    let _bob = app.connect("bob").await;
    let busy = health().await;
    assert_eq!(busy["utilisation"]["connections"]["percent"], json!(100.0));
    assert!(
        busy["scale_out"]
            .as_array()
            .is_some_and(|a| a.iter().any(|t| t == "connections")),
        "{busy}"
    );
}

/// One metric family as a text format declares it.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    samples: Vec<String>,
}

/// Parses `text` by the rules of the classic Prometheus format (`openmetrics` false) or
/// of OpenMetrics, and returns the families by name; panics on anything out of place.
fn parse(text: &str, openmetrics: bool) -> HashMap<String, Family> {
    let mut families: HashMap<String, Family> = HashMap::new();
    let mut eof = false;
    for line in text.lines() {
        assert!(!eof, "a line after # EOF: {line}");
        if line == "# EOF" {
            assert!(openmetrics, "# EOF in the classic format");
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap(), parts.next().unwrap());
            let value = parts.next().unwrap_or_default();
            match keyword {
                "HELP" => {}
                "TYPE" => families.entry(name.to_string()).or_default().kind = value.into(),
                "UNIT" => assert!(openmetrics, "# UNIT in the classic format"),
                other => panic!("unknown keyword {other}"),
            }
            continue;
        }
        let name_end = line.find([' ', '{']).expect("a sample has a value");
        let sample = &line[..name_end];
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "{line}"
        );
        // The family a sample belongs to, by each format's suffix rules.
        let family = families
            .iter_mut()
            .filter(|(name, f)| {
                let suffixes: &[&str] = match (f.kind.as_str(), openmetrics) {
                    ("counter", true) => &["_total", "_created"],
                    ("histogram", _) => &["_bucket", "_sum", "_count", "_created"],
                    _ => &[""],
                };
                suffixes
                    .iter()
                    .any(|s| sample == format!("{name}{s}").as_str())
            })
            .map(|(_, f)| f)
            .next()
            .unwrap_or_else(|| panic!("a sample of no declared family: {line}"));
        family.samples.push(line.to_string());
    }
    assert_eq!(eof, openmetrics, "OpenMetrics ends with # EOF");
    families
}

#[tokio::test]
async fn metrics_speak_openmetrics_to_those_who_ask_and_the_classic_format_otherwise() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    alice.send_dm("bob", "hi", "m1").await;
    alice.ok(json!({"type": "conversations", "ref": 2})).await;
    let http = reqwest::Client::new();
    let get = |accept: Option<&'static str>| {
        let mut r = http.get(app.http("/metrics"));
        if let Some(a) = accept {
            r = r.header("accept", a);
        }
        async move {
            let resp = r.send().await.unwrap();
            let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
            (ctype, resp.text().await.unwrap())
        }
    };
    let (ctype, classic) = get(None).await;
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    let families = parse(&classic, false);
    assert_eq!(families["pgchat_requests_total"].kind, "counter");
    let prometheus =
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    let (ctype, om) = get(Some(prometheus)).await;
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let om_families = parse(&om, true);
    assert_eq!(om_families["pgchat_requests"].kind, "counter");
    for (name, kind) in [
        ("pgchat_db_batch_seconds", "histogram"),
        ("pgchat_db_read_seconds", "histogram"),
        ("pgchat_write_batch_size", "histogram"),
        ("pgchat_notification_lag_seconds", "histogram"),
        ("pgchat_listener_reconnects", "counter"),
        ("pgchat_notification_queue_usage", "gauge"),
    ] {
        assert_eq!(om_families[name].kind, kind, "{name}");
    }
    let count = |f: &Family, suffix: &str| -> f64 {
        f.samples
            .iter()
            .find(|s| s.split([' ', '{']).next().unwrap().ends_with(suffix))
            .and_then(|s| s.rsplit(' ').next()?.parse().ok())
            .unwrap()
    };
    assert!(count(&om_families["pgchat_db_batch_seconds"], "_count") >= 1.0);
    assert!(count(&om_families["pgchat_db_read_seconds"], "_count") >= 1.0);
    let usage = count(&om_families["pgchat_notification_queue_usage"], "usage");
    assert!((0.0..=1.0).contains(&usage), "{usage}");
}

#[tokio::test]
async fn notification_lag_is_measured_where_another_worker_delivers() {
    let cluster = Cluster::start(2, &[]).await;
    let mut bob = cluster.connect(1, "bob").await;
    let mut alice = cluster.connect(0, "alice").await;
    alice.send_dm("bob", "across", "m1").await;
    bob.event_of("message").await;
    let text = reqwest::get(cluster.http(1, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let families = parse(&text, false);
    let lag = &families["pgchat_notification_lag_seconds"];
    let count: f64 = lag
        .samples
        .iter()
        .find(|s| s.starts_with("pgchat_notification_lag_seconds_count"))
        .and_then(|s| s.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(count >= 1.0, "{text}");
}

#[tokio::test]
async fn an_unknown_variable_is_a_warning_and_an_unknown_key_in_a_file_names_the_closest() {
    let out = pgchat()
        .env("PGCHAT_MAX_CONECTIONS", "5")
        .env("PGCHAT_SOMETHING_ELSE_ENTIRELY", "x")
        .arg("config")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PGCHAT_MAX_CONECTIONS") && stderr.contains("PGCHAT_MAX_CONNECTIONS"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 2, "one line per variable: {stderr}");

    let file = scratch("config").with_extension("toml");
    std::fs::write(&file, "max_conections = 5\n").unwrap();
    let out = pgchat()
        .env("PGCHAT_CONFIG", &file)
        .arg("config")
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("max_conections") && stderr.contains("did you mean max_connections"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("db_tcp_user_timeout_ms"),
        "not the whole list: {stderr}"
    );
}

#[tokio::test]
async fn configuration_errors_speak_plainly() {
    for (var, value, phrase) in [
        ("PORT", "not-a-port", "a whole number between 0 and 65535"),
        ("PORT", "70000", "a whole number between 0 and 65535"),
        ("PGCHAT_PRESENCE_OPEN", "maybe", "true or false"),
    ] {
        let out = pgchat()
            .env(var, value)
            .env("JWT_SECRET", SECRET)
            .arg("config")
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(phrase), "{var}={value}: {stderr}");
        assert!(
            !stderr.contains("u16") && !stderr.contains("a boolean"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn health_hints_scale_out_when_memory_passes_its_limit() {
    let app = TestApp::spawn_with(|c| c.memory_limit_mb = 1).await;
    let health: Value = reqwest::get(app.http("/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let memory = &health["utilisation"]["memory"];
    assert_eq!(memory["limit_bytes"], json!(1024 * 1024), "{health}");
    assert!(memory["percent"].as_f64().unwrap() > 80.0, "{health}");
    assert!(
        health["scale_out"]
            .as_array()
            .is_some_and(|a| a.iter().any(|t| t == "memory")),
        "{health}"
    );
}

#[tokio::test]
async fn with_ops_listen_health_and_metrics_leave_the_public_port() {
    let app = common::TestApp::spawn_with(|c| c.ops_listen = Some("127.0.0.1:0".into())).await;
    let ops = app.ops_addr.expect("bound");
    let get = |url: String| async move { reqwest::get(url).await.unwrap().status().as_u16() };
    // The public port: no worker ids, pids or counters; load balancers still get /ready.
    assert_eq!(get(app.http("/health")).await, 404);
    assert_eq!(get(app.http("/metrics")).await, 404);
    assert_eq!(get(app.http("/ready")).await, 200);
    assert_eq!(get(app.http("/live")).await, 200);
    // The ops address: all four, and nothing else.
    let health: serde_json::Value = reqwest::get(format!("http://{ops}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(health["pid"].is_u64(), "{health}");
    assert_eq!(get(format!("http://{ops}/metrics")).await, 200);
    assert_eq!(get(format!("http://{ops}/ready")).await, 200);
    assert_eq!(get(format!("http://{ops}/ws")).await, 404);
}
