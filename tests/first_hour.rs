//! What a new user meets in the first hour: a port already taken, a second `serve` on the
//! same port, and a private PostgreSQL cluster left running by a pgchat that was killed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::cluster::{free_ports, Cluster};
use common::{TestDb, PATIENCE};

/// The binary with a clean environment and no config file, bound to 127.0.0.1.
fn pgchat() -> tokio::process::Command {
    let mut c = common::pgchat_command();
    c.env("PGCHAT_HOST", "127.0.0.1")
        .env("JWT_SECRET", "first-hour-secret-first-hour-secret-0123");
    c
}

/// Runs `cmd` to its end (within twice PATIENCE).
async fn output(cmd: &mut tokio::process::Command) -> std::process::Output {
    tokio::time::timeout(PATIENCE * 2, cmd.output())
        .await
        .expect("pgchat stops by itself")
        .unwrap()
}

fn one_line(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

#[tokio::test]
async fn a_port_in_use_stops_serve_at_once_with_one_line() {
    let db = TestDb::new().await;
    let port = free_ports(3);
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port + 1)).unwrap();
    for args in [
        vec!["--workers", "2", "--listen", "per-worker"],
        vec!["--workers", "2", "--listen", "shared"],
        vec![],
    ] {
        let port = if args.contains(&"per-worker") {
            port
        } else {
            port + 1
        };
        let out = output(
            pgchat()
                .env("PORT", port.to_string())
                .env("DATABASE_URL", &db.url)
                .env("RUST_LOG", "info")
                .arg("serve")
                .args(&args),
        )
        .await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.matches("in use").count(),
            1,
            "said once, with logging on: {stderr}"
        );
        let line = one_line(&out);
        assert!(
            line.contains(&format!(
                "127.0.0.1:{}",
                _taken.local_addr().unwrap().port()
            )) && line.contains("in use"),
            "{args:?}: {line}"
        );
    }
}

#[tokio::test]
async fn a_second_serve_on_the_same_port_is_refused_instead_of_joining() {
    let mut first = Cluster::start_with(2, false, &[]).await;
    let out = output(
        pgchat()
            .env("PORT", first.base_port.to_string())
            .env("DATABASE_URL", &first.db.url)
            .env("RUST_LOG", "off")
            .args(["serve", "--workers", "2"]),
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let line = one_line(&out);
    assert!(
        line.contains("in use") && line.contains("another pgchat serve"),
        "{line}"
    );
    first.wait_ready(0).await;
    assert!(first.stop().await.success());
}

/// A scratch data directory under the target directory, removed on drop, after the
/// private cluster in it is stopped if a failed test left it running.
struct Scratch(PathBuf, PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let cluster = self.0.join("postgres");
        if cluster.join("postmaster.pid").exists() {
            let pg_ctl = self.1.join("pg_ctl");
            let args = ["-D", cluster.to_str().unwrap(), "-m", "immediate", "stop"];
            let _ = std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&pg_ctl)
                .args(args)
                .status()
                .ok()
                .filter(|s| s.success())
                .or_else(|| std::process::Command::new(&pg_ctl).args(args).status().ok());
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn postmaster_running(dir: &Path) -> bool {
    dir.join("postgres/postmaster.pid").exists()
}

#[tokio::test]
async fn a_private_cluster_left_by_a_killed_pgchat_is_adopted_and_stopped_on_exit() {
    let Some(bindir) = pgchat::db::embedded::find_bindir() else {
        eprintln!("skipped: PostgreSQL's initdb is not installed");
        return;
    };
    let data = Scratch(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("adopt-{:08x}", rand::random::<u32>())),
        bindir,
    );
    let (pg_port, port) = (free_ports(1), free_ports(1));
    let log_path = data.0.with_extension("log");
    let start = |log: std::fs::File| {
        pgchat()
            .env("PORT", port.to_string())
            .env("PGCHAT_DATA_DIR", &data.0)
            .env("PGCHAT_EMBEDDED_PORT", pg_port.to_string())
            .env("RUST_LOG", "info")
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let ready = format!("http://127.0.0.1:{port}/ready");
    let mut first = start(std::fs::File::create(&log_path).unwrap());
    common::wait_ready(&ready).await;
    first.kill().await.unwrap(); // SIGKILL: no chance to stop its cluster
    first.wait().await.unwrap();
    assert!(
        postmaster_running(&data.0),
        "the cluster outlives a kill -9"
    );

    let mut second = start(std::fs::File::create(&log_path).unwrap());
    common::wait_ready(&ready).await;
    let pid = second.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(PATIENCE, second.wait())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("adopting"), "the adoption is logged: {log}");
    assert!(
        !postmaster_running(&data.0),
        "the adopted cluster is stopped on exit: {log}"
    );
}
