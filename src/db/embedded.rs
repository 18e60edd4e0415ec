//! A private PostgreSQL cluster, for a machine that has PostgreSQL installed but not running.
//!
//! PostgreSQL refuses to run as root, so as root every command goes through
//! `runuser -u postgres`. The cluster listens on 127.0.0.1 and keeps its socket in its own
//! directory, so it never touches the system's `/var/run/postgresql`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// True when something accepts TCP connections at host:port within a second.
pub async fn server_answers(host: &str, port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect((host, port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// Where `initdb` and `pg_ctl` live: `pg_config --bindir`, else the newest Debian
/// `/usr/lib/postgresql/<version>/bin`.
pub fn find_bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").exists() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A running private cluster; stopped (fast shutdown) when dropped.
pub struct Cluster {
    bindir: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    /// Initialises `dir` if it holds no cluster yet, then starts the server on `port`.
    pub async fn start(bindir: &Path, dir: &Path, port: u16) -> Result<Cluster, String> {
        let bindir = bindir.to_path_buf();
        let dir = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        tokio::task::spawn_blocking(move || {
            let cluster = Cluster {
                as_postgres: is_root(),
                bindir,
                dir,
                port,
            };
            cluster.init()?;
            cluster.run(
                "pg_ctl",
                &[
                    "-D",
                    &cluster.dir.to_string_lossy(),
                    "-o",
                    &format!(
                        "-p {} -k {} -c listen_addresses=127.0.0.1",
                        cluster.port,
                        cluster.dir.display()
                    ),
                    "-l",
                    &cluster.dir.join("log").to_string_lossy(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            )?;
            tracing::info!(dir = %cluster.dir.display(), port, "private PostgreSQL cluster started");
            Ok(cluster)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The URL of database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn init(&self) -> Result<(), String> {
        if self.dir.join("PG_VERSION").exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        if self.as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres", &self.dir.to_string_lossy()])
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !status.success() {
                return Err(format!("chown postgres {} failed", self.dir.display()));
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
        }
        self.run(
            "initdb",
            &[
                "-D",
                &self.dir.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        )
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bindir.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .output()
            .map_err(|e| format!("running {}: {e}", exe.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed: {}{}",
                program,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    /// Stops the server (fast shutdown: running transactions are rolled back).
    pub fn stop(&self) -> Result<(), String> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.dir.to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        match self.stop() {
            Ok(()) => {
                tracing::info!(dir = %self.dir.display(), "private PostgreSQL cluster stopped")
            }
            Err(e) => tracing::warn!(error = %e, "stopping the private PostgreSQL cluster"),
        }
    }
}
