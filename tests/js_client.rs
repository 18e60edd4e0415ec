//! The JavaScript client (clients/js/pgchat.js) against a real pgchat: the Node tests in
//! clients/js/test start the pgchat binary themselves (so that they can kill and restart
//! it) on a fresh database made here, and mint their own tokens with the test secret.
//! Also: its TypeScript declarations compile under `--strict`, with a typed usage file.
//!
//! Node.js >= 20 is required (npm too, for the pinned TypeScript in tests/js).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The whole Node suite takes well under a minute; this is for a machine at its limit.
const NODE_PATIENCE: Duration = Duration::from_secs(240);

fn client_dir() -> PathBuf {
    common::node::repo_root().join("clients/js")
}

/// clients/js/test/*.test.mjs, sorted.
fn test_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("test"))
        .expect("clients/js/test")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    files
}

/// Runs `cmd` in a process group of its own, capturing its output; past `patience`, the
/// whole group (node and the pgchat servers it started) is killed. Prints the output
/// (shown by `cargo test` on failure or with `--nocapture`) and returns whether it passed.
async fn run_group(mut cmd: tokio::process::Command, patience: Duration) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn().expect("node must be installed (Node.js >= 20)");
    let group = child.id().expect("a running child");
    let outcome = tokio::time::timeout(patience, child.wait_with_output()).await;
    // Whatever happened, nothing of the group may outlive the test (its servers hold
    // connections to the database the test drops). killpg(2) itself, never kill(1):
    // procps-ng 4.0.2 reads `kill -KILL -<pgid>` as `kill(-1, SIGKILL)`, every process.
    let group = i32::try_from(group).expect("a pid");
    assert!(group > 1, "the child leads a process group of its own");
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(group),
        nix::sys::signal::Signal::SIGKILL,
    );
    match outcome {
        Ok(output) => {
            let output = output.expect("wait for node");
            println!("{}", String::from_utf8_lossy(&output.stdout));
            eprintln!("{}", String::from_utf8_lossy(&output.stderr));
            output.status.success()
        }
        Err(_) => {
            eprintln!("the Node tests did not finish within {patience:?}: killed");
            false
        }
    }
}

#[tokio::test]
async fn the_javascript_client_keeps_its_guarantees_against_a_real_server() {
    let db = common::TestDb::new().await;
    let dir = client_dir();
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("--experimental-websocket")
        .arg("--test")
        .arg("--test-concurrency=3")
        .args(test_files(&dir))
        .current_dir(&dir)
        .env("DATABASE_URL", &db.url)
        .env("PGCHAT_BIN", env!("CARGO_BIN_EXE_pgchat"))
        .env("JWT_SECRET", common::SECRET)
        .env("NODE_NO_WARNINGS", "1");
    assert!(
        run_group(cmd, NODE_PATIENCE).await,
        "the JavaScript client's tests failed (their TAP output is above)"
    );
}

#[tokio::test]
async fn the_typescript_declarations_compile_strictly_and_type_their_usage() {
    let tsc = common::node::js_dir().join("node_modules/.bin/tsc");
    let dir = client_dir();
    for args in [
        &["--noEmit", "--strict", "pgchat.d.ts"][..],
        &[
            "--noEmit",
            "--strict",
            "--target",
            "es2022",
            "--module",
            "nodenext",
            "--moduleResolution",
            "nodenext",
            "test/types-check.ts",
        ][..],
    ] {
        let mut cmd = tokio::process::Command::new(&tsc);
        cmd.args(args).current_dir(&dir);
        assert!(
            run_group(cmd, Duration::from_secs(120)).await,
            "tsc {args:?} failed (its output is above)"
        );
    }
}
