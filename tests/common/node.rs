//! Running the JavaScript side of the tests (tests/js, clients/js) from `cargo test`.
//!
//! Node.js ≥ 20 and npm must be installed; the packages the checks use (tests/js/package.json,
//! pinned by its package-lock.json) are installed with `npm ci` the first time a test needs
//! them. Node 20 has a WebSocket only behind `--experimental-websocket`; 22 has it always.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// tests/js, with its node_modules installed (once per test binary; `flock` keeps two
/// binaries run at once from installing over each other).
pub fn js_dir() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY
        .get_or_init(|| {
            let dir = repo_root().join("tests/js");
            let marker = dir.join("node_modules/.package-lock.json");
            if !fresh(&marker, &dir.join("package-lock.json")) {
                let status = std::process::Command::new("flock")
                    .arg(dir.join(".npm-install.lock"))
                    .args(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&dir)
                    .status()
                    .expect(
                        "npm must be installed (Node.js >= 20 with npm) for the JavaScript tests",
                    );
                assert!(status.success(), "npm ci in tests/js failed: {status}");
            }
            dir
        })
        .clone()
}

/// Whether `installed` exists and is no older than `lock`.
fn fresh(installed: &Path, lock: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(installed), modified(lock)) {
        (Some(i), Some(l)) => i >= l,
        _ => false,
    }
}

/// `node --experimental-websocket <script> <args>` run from tests/js, with its output
/// passed through to the test's; killed if the test ends first.
pub fn node(script: impl AsRef<Path>) -> tokio::process::Command {
    let dir = js_dir();
    let mut c = tokio::process::Command::new("node");
    c.arg("--experimental-websocket")
        .arg(script.as_ref())
        .current_dir(&dir)
        .env("NODE_NO_WARNINGS", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    c
}
