//! The demo end to end in a real browser: tests/js/browser.mjs drives two headless Chromium
//! pages (Debian's `chromium`, through playwright-core) against the pgchat binary that this
//! test starts, kills and starts again when the script asks (lines `@@control kill|start`
//! on its stdout, answered `ok` on its stdin).
//!
//! The script's screenshot goes to target/browser/demo.png on every run, and also to
//! docs/demo.png (the README's) with `PGCHAT_UPDATE_SCREENSHOT=1`.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The browser: `CHROMIUM` if set, else `chromium` on the PATH.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "CHROMIUM={} does not exist: unset it to use `chromium` from the PATH",
            path.display()
        );
        return path;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the browser test needs Chromium: `apt-get install chromium` (Debian), \
                 or set CHROMIUM to a Chromium or Chrome binary"
            )
        })
}

struct Server {
    db_url: String,
    port: u16,
    child: Option<tokio::process::Child>,
}

impl Server {
    async fn start(&mut self) {
        let log = std::env::var_os("TEST_LOG").is_some();
        let child = common::pgchat_command()
            .env("DATABASE_URL", &self.db_url)
            .env("JWT_SECRET", common::SECRET)
            .env("PORT", self.port.to_string())
            .env("PGCHAT_HOST", "127.0.0.1")
            .env("NODE_ENV", "development")
            // The demo signs in with POST /dev/token, closed by default with a JWT_SECRET.
            .env("PGCHAT_DEV_SIGN_IN", "on")
            // Offline one second after the socket goes, so that the test sees it soon.
            .env("PGCHAT_PRESENCE_GRACE_MS", "1000")
            .stdout(Stdio::null())
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("start pgchat");
        self.child = Some(child);
        common::wait_ready(&format!("http://127.0.0.1:{}/ready", self.port)).await;
    }

    /// SIGKILL: no drain, no close frames; the pages find their sockets dead.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill pgchat");
        }
    }
}

#[tokio::test]
async fn two_browser_pages_chat_through_the_demo() {
    let chromium = chromium();
    let db = common::TestDb::new().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut server = Server {
        db_url: db.url.clone(),
        port,
        child: None,
    };
    server.start().await;

    let root = common::node::repo_root();
    let mut screenshots = vec![root.join("target/browser/demo.png")];
    if std::env::var("PGCHAT_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        screenshots.push(root.join("docs/demo.png"));
    }
    let screenshots = std::env::join_paths(&screenshots).unwrap();

    let mut node = common::node::node("browser.mjs")
        .env("PGCHAT_URL", format!("http://127.0.0.1:{port}"))
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOTS", &screenshots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node tests/js/browser.mjs");
    let mut stdin = node.stdin.take().unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();

    let run = async {
        while let Some(line) = lines.next_line().await.expect("read the script's output") {
            match line.strip_prefix("@@control ") {
                Some("kill") => server.kill().await,
                Some("start") => server.start().await,
                Some(other) => panic!("unknown control command {other:?}"),
                None => {
                    println!("{line}");
                    continue;
                }
            }
            stdin.write_all(b"ok\n").await.unwrap();
            stdin.flush().await.unwrap();
        }
        node.wait().await.expect("wait for node")
    };
    let status = tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .expect("the browser test finishes within 150 s");
    server.kill().await;
    assert!(
        status.success(),
        "tests/js/browser.mjs failed ({status}): its output is above"
    );
}
