//! A private PostgreSQL cluster that a fault test may stop, crash and freeze: its own data
//! directory (a copy of one `initdb`'d template, so each test skips initdb) on a free port.
//! Never the machine's server. As root, every PostgreSQL command runs as `postgres`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn bindir() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        pgchat::db::embedded::find_bindir()
            .expect("PostgreSQL server binaries (.ci/run installs them)")
    })
}

/// Runs a PostgreSQL program (as `postgres` when root); Err with its output on failure.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let exe = bindir().join(program);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The template data directory, initdb'd once and reused by later tests and runs. Built
/// under a temporary name and renamed, so a half-built template is never used.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fault-pg-template");
        if dir.join("PG_VERSION").exists() {
            return dir;
        }
        let building = dir.with_extension(format!("building-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&building);
        make_private_dir(&building);
        run(
            "initdb",
            &[
                "-D",
                &building.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        )
        .expect("initdb of the fault tests' template");
        // Another test binary may have won the race: its template is as good as ours.
        if std::fs::rename(&building, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&building);
        }
        dir
    })
}

fn make_private_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    if is_root() {
        let ok = Command::new("chown")
            .args(["postgres:postgres", &dir.to_string_lossy()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown postgres {}", dir.display());
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// How to stop the server: `pg_ctl stop -m MODE`.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// Connections are terminated, a checkpoint is written.
    Fast,
    /// Every process is killed at once; the next start runs crash recovery.
    Immediate,
}

pub struct PrivatePg {
    pub dir: PathBuf,
    pub port: u16,
}

impl PrivatePg {
    /// A fresh copy of the template, started on a free port.
    pub async fn start() -> PrivatePg {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fault-pg-{port}-{:08x}", rand::random::<u32>()));
        let pg = tokio::task::spawn_blocking(move || {
            let template = template();
            // `cp -a` keeps the owner (postgres) and the modes PostgreSQL insists on.
            let ok = Command::new("cp")
                .arg("-a")
                .arg(template)
                .arg(&dir)
                .status()
                .unwrap()
                .success();
            assert!(ok, "copy the template to {}", dir.display());
            start_server(&dir, port);
            PrivatePg { dir, port }
        })
        .await
        .unwrap();
        pg
    }
}

fn start_server(dir: &Path, port: u16) {
    run(
        "pg_ctl",
        &[
            "-D",
            &dir.to_string_lossy(),
            "-o",
            &format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1",
                port,
                dir.display()
            ),
            "-l",
            &dir.join("log").to_string_lossy(),
            "-w",
            "-t",
            "60",
            "start",
        ],
    )
    .expect("start the private cluster");
}

impl PrivatePg {
    /// The URL of database `db` (pgchat creates it at start when missing).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Stops the server in `mode`; returns once it is down.
    pub async fn stop(&self, mode: Stop) {
        let dir = self.dir.clone();
        let mode = match mode {
            Stop::Fast => "fast",
            Stop::Immediate => "immediate",
        };
        tokio::task::spawn_blocking(move || {
            run(
                "pg_ctl",
                &["-D", &dir.to_string_lossy(), "-m", mode, "-w", "stop"],
            )
        })
        .await
        .unwrap()
        .expect("stop the private cluster");
    }

    /// Starts the server again after [`PrivatePg::stop`] (crash recovery after Immediate).
    pub async fn restart(&self) {
        let (dir, port) = (self.dir.clone(), self.port);
        tokio::task::spawn_blocking(move || start_server(&dir, port))
            .await
            .unwrap();
    }

    /// The postmaster and every process it started (backends, checkpointer, …).
    pub fn processes(&self) -> Vec<i32> {
        let pidfile = std::fs::read_to_string(self.dir.join("postmaster.pid")).unwrap();
        let postmaster: i32 = pidfile.lines().next().unwrap().trim().parse().unwrap();
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            // /proc/PID/stat: "pid (comm) state ppid …"; comm may hold spaces.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Sends `signal` to the postmaster and all its children (SIGSTOP / SIGCONT: a stall).
    pub fn signal_all(&self, signal: Signal) -> usize {
        let pids = self.processes();
        // Children first on STOP, so no child notices its parent frozen while it runs.
        let ordered: Vec<i32> = if signal == Signal::SIGCONT {
            pids.clone()
        } else {
            pids.iter().rev().copied().collect()
        };
        for pid in &ordered {
            let _ = kill(Pid::from_raw(*pid), signal);
        }
        pids.len()
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        // A test that failed while the server was frozen must not leave it frozen.
        if self.dir.join("postmaster.pid").exists() {
            let _ = std::panic::catch_unwind(|| self.signal_all(Signal::SIGCONT));
        }
        let _ = run(
            "pg_ctl",
            &[
                "-D",
                &self.dir.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
