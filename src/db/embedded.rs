//! A private PostgreSQL cluster, for a machine that has PostgreSQL installed but not running.
//!
//! PostgreSQL refuses to run as root, so as root every command goes through
//! `runuser -u postgres`. The cluster listens on 127.0.0.1 and keeps its socket in its own
//! directory, so it never touches the system's `/var/run/postgresql`.
//!
//! It admits only its own user: `initdb --auth=scram-sha-256` with a password generated on
//! first start and kept beside the cluster (`<dir>_password`, i.e.
//! `<data_dir>/postgres_password`, mode 0600). Without it anyone on the machine could
//! connect to 127.0.0.1 as the superuser. SCRAM over TCP rather than a Unix socket alone:
//! the workers of `serve --workers N` and the tests reach the cluster by URL like any
//! other server, and a socket directory private to the `postgres` user would shut out a
//! pgchat not running as root. A cluster made by an older pgchat (`--auth=trust`) is
//! upgraded on its next start: the password is set, every `trust` line of `pg_hba.conf`
//! becomes `scram-sha-256`, and the configuration is reloaded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

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
    /// The `postgres` role's password (hex, so it needs no escaping in a URL or in SQL).
    password: String,
    /// An exclusive flock on `<dir>.lock`, held as long as this process runs the cluster:
    /// how a later start tells a cluster left running by a killed pgchat (the kernel
    /// released its lock) from one another pgchat is running now.
    _owner: Option<Flock<std::fs::File>>,
}

/// A private cluster found running at start.
pub(crate) enum Found {
    /// Left running by a pgchat that is gone (killed): now this process's, stopped on exit.
    Adopted(Cluster),
    /// Run by another pgchat that is still running: used, and left to it (the URL).
    InUse(String),
}

/// Takes the owner's lock of the cluster in `dir`; `None` when another process holds it.
fn owner_lock(dir: &Path) -> Result<Option<Flock<std::fs::File>>, String> {
    let path = dir.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(format!("locking {}: {e}", path.display())),
    }
}

/// The pid of the postmaster serving the cluster in `dir` on `port`, if one is alive
/// (from `postmaster.pid`: the pid on its first line, the port on its fourth).
pub(crate) fn running_postmaster(dir: &Path, port: u16) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let pid: i32 = lines.first()?.trim().parse().ok()?;
    let its_port: u16 = lines.get(3)?.trim().parse().ok()?;
    let alive = matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Ok(()) | Err(nix::errno::Errno::EPERM)
    );
    (its_port == port && alive).then_some(pid)
}

/// Where the password of the cluster in `dir` is kept: beside it, outside the directory
/// that `initdb` wants empty and the `postgres` user owns.
pub(crate) fn password_path(dir: &Path) -> PathBuf {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    dir.with_file_name(format!("{name}_password"))
}

/// The URL of database `db` on the private cluster in `dir`, started earlier (by this
/// process or another) on `port`.
pub fn url_for(dir: &Path, port: u16, db: &str) -> Result<String, String> {
    let password = crate::foundation::secrets::load_or_create(&password_path(dir))
        .map_err(|e| e.to_string())?
        .value;
    Ok(local_url(&password, port, db))
}

fn local_url(password: &str, port: u16, db: &str) -> String {
    format!("postgres://postgres:{password}@127.0.0.1:{port}/{db}")
}

impl Cluster {
    /// Takes over the cluster in `dir`, found running on `port`, if the pgchat that
    /// started it is gone; else leaves it to that pgchat and only uses it.
    pub(crate) fn adopt(bindir: &Path, dir: &Path, port: u16) -> Result<Found, String> {
        let dir = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let password = crate::foundation::secrets::load_or_create(&password_path(&dir))
            .map_err(|e| e.to_string())?
            .value;
        match owner_lock(&dir)? {
            None => Ok(Found::InUse(local_url(&password, port, "pgchat"))),
            Some(lock) => Ok(Found::Adopted(Cluster {
                bindir: bindir.to_path_buf(),
                dir,
                port,
                as_postgres: is_root(),
                password,
                _owner: Some(lock),
            })),
        }
    }

    /// Initialises `dir` if it holds no cluster yet, then starts the server on `port`.
    pub async fn start(bindir: &Path, dir: &Path, port: u16) -> Result<Cluster, String> {
        let bindir = bindir.to_path_buf();
        let dir = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cluster = tokio::task::spawn_blocking(move || {
            let password = crate::foundation::secrets::load_or_create(&password_path(&dir))
                .map_err(|e| e.to_string())?
                .value;
            // Taken before the server starts, so that no other start adopts it meanwhile.
            let owner = owner_lock(&dir)?;
            let cluster = Cluster {
                as_postgres: is_root(),
                bindir,
                dir,
                port,
                password,
                _owner: owner,
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
            Ok::<_, String>(cluster)
        })
        .await
        .map_err(|e| e.to_string())??;
        cluster.require_password().await?;
        Ok(cluster)
    }

    /// The URL of database `db` on this cluster, with its password.
    pub fn url(&self, db: &str) -> String {
        local_url(&self.password, self.port, db)
    }

    /// Upgrades a cluster made by an older pgchat with `--auth=trust`: sets the password,
    /// then makes every `trust` rule of `pg_hba.conf` ask for it. Safe to repeat after a
    /// crash half-way: the password file was written first, and setting it again is harmless.
    async fn require_password(&self) -> Result<(), String> {
        let hba = self.dir.join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).map_err(|e| format!("{}: {e}", hba.display()))?;
        let Some(upgraded) = without_trust(&text) else {
            return Ok(());
        };
        tracing::warn!(
            dir = %self.dir.display(),
            "the private cluster admits local users without a password (made by an older \
             pgchat): setting a password and switching pg_hba.conf to scram-sha-256"
        );
        let mut pg = tokio_postgres::Config::new();
        pg.host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(10));
        let (client, conn) = pg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connecting to upgrade authentication: {e}"))?;
        let driver = tokio::spawn(conn);
        // The password is hex: it cannot break out of the literal.
        let sql = format!(
            "SET password_encryption = 'scram-sha-256'; ALTER ROLE postgres PASSWORD '{}'",
            self.password
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| format!("setting the password: {e}"))?;
        // Truncate and rewrite in place: the file keeps its owner (postgres) and mode.
        std::fs::write(&hba, upgraded).map_err(|e| format!("{}: {e}", hba.display()))?;
        client
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .map_err(|e| format!("reloading pg_hba.conf: {e}"))?;
        drop(client);
        let _ = driver.await;
        Ok(())
    }

    fn init(&self) -> Result<(), String> {
        if self.dir.join("PG_VERSION").exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        self.give_to_postgres(&self.dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
        }
        // initdb reads the password from a file, which the postgres user must be able to
        // read: a private copy beside the cluster, removed as soon as initdb is done.
        let pwfile = crate::foundation::secrets::temporary_name(&password_path(&self.dir));
        crate::foundation::secrets::write_private(&pwfile, &self.password)
            .map_err(|e| format!("{}: {e}", pwfile.display()))?;
        let init = self.give_to_postgres(&pwfile).and_then(|()| {
            self.run(
                "initdb",
                &[
                    "-D",
                    &self.dir.to_string_lossy(),
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    &format!("--pwfile={}", pwfile.display()),
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
            )
        });
        let _ = std::fs::remove_file(&pwfile);
        init
    }

    /// As root, hands `path` to the postgres user that runs the cluster.
    fn give_to_postgres(&self, path: &Path) -> Result<(), String> {
        if !self.as_postgres {
            return Ok(());
        }
        let status = Command::new("chown")
            .args(["postgres:postgres", &path.to_string_lossy()])
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !status.success() {
            return Err(format!("chown postgres {} failed", path.display()));
        }
        Ok(())
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

/// `pg_hba.conf` with every `trust` rule asking for a SCRAM password instead, or `None`
/// when no rule trusts.
fn without_trust(text: &str) -> Option<String> {
    let mut changed = false;
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        let rule = line.split('#').next().unwrap_or_default();
        // The method is the last field of a rule (trust takes no options).
        if rule.split_whitespace().last() == Some("trust") {
            let at = rule.rfind("trust").expect("found above");
            out.push_str(&line[..at]);
            out.push_str("scram-sha-256");
            out.push_str(&line[at + "trust".len()..]);
            changed = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    changed.then_some(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_trust_rules_are_rewritten() {
        let hba = "# trust is a word in comments\nlocal all all trust\n\
                   host all all 127.0.0.1/32 trust # trust me\nhost all all ::1/128 scram-sha-256\n";
        let new = without_trust(hba).unwrap();
        assert_eq!(
            new,
            "# trust is a word in comments\nlocal all all scram-sha-256\n\
             host all all 127.0.0.1/32 scram-sha-256 # trust me\nhost all all ::1/128 scram-sha-256\n"
        );
        assert_eq!(without_trust(&new), None);
    }
}
