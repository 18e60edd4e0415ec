//! The supervisor of `pgchat serve --workers N`: sets the database up once, starts N
//! worker processes with their share of the connection budget, restarts one that dies
//! (with backoff, giving up if they keep dying), and on SIGTERM forwards it and waits for
//! the workers to drain. Under systemd it speaks for the workers ([`crate::ops::systemd::Relay`]).
//!
//! Exit codes: those of the CLI, and [`GAVE_UP`] when a worker kept dying: a restart by
//! systemd or a container runtime would only repeat it (`RestartPreventExitStatus=`).
//!
//! The budget: `db_max_connections` split as evenly as it goes (with 10 and 3 workers:
//! 4, 3, 3). Each worker spends one on its notification listener and the rest on its
//! pool; a worker whose share is 1 runs its queries on the listener's connection too.
//! The supervisor itself holds no connection while the workers run.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::foundation::config::{Config, Listen};

/// A worker that died this many times within [`DEATH_WINDOW`] is not restarted again.
const MAX_DEATHS: usize = 5;
const DEATH_WINDOW: Duration = Duration::from_secs(60);
/// The exit code after giving up on a worker that keeps dying.
pub const GAVE_UP: u8 = 3;

/// The connections each of `workers` may hold, summing to at most `budget`.
pub(crate) fn shares(budget: usize, workers: usize) -> Vec<usize> {
    let base = budget / workers;
    let extra = budget % workers;
    (0..workers)
        .map(|i| base + usize::from(i < extra))
        .collect()
}

struct Worker {
    index: usize,
    share: usize,
    port: u16,
    child: Option<Child>,
    /// The write end of the worker's stdin, held so that the worker sees EOF only when
    /// the supervisor is gone (tokio's `Child::wait` would close it if it were left in).
    _stdin: Option<tokio::process::ChildStdin>,
    deaths: VecDeque<Instant>,
    restart_at: Option<tokio::time::Instant>,
}

/// Runs `workers` worker processes, listening as `config.listen` says, until a signal.
pub(crate) fn run(config: Config, workers: usize, config_path: Option<PathBuf>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(config.blocking_threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(supervise(config, workers, config_path))
}

async fn supervise(config: Config, n: usize, config_path: Option<PathBuf>) -> ExitCode {
    let listen = config.listen;
    // The ports before anything else: one in use (another program, or another `serve`
    // whose workers would otherwise be joined through SO_REUSEPORT) stops start-up.
    if let Err(code) = check_ports(&config, n, listen) {
        return code;
    }
    // Set up once, so that workers do not race to, and no set-up connection overlaps
    // theirs. A private cluster, if one is started, lives as long as the supervisor.
    let (url, _cluster) = match crate::db::setup(&config).await {
        Ok(x) => x,
        Err(e) => {
            // Once, on stderr: a log line as well would say it twice.
            eprintln!("pgchat: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pgchat: cannot find its own executable: {e}");
            return ExitCode::from(1);
        }
    };
    let mut workers = plan(&config, n, listen);
    tracing::info!(
        workers = n,
        ?listen,
        shares = ?workers.iter().map(|w| w.share).collect::<Vec<_>>(),
        "starting workers"
    );
    let relay = match crate::ops::systemd::Relay::start(n) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgchat: cannot relay the workers' notices to systemd: {e}");
            return ExitCode::from(1);
        }
    };
    let launcher = Launcher {
        exe,
        relay,
        config_path,
        listen,
        n,
        url,
        reported: Arc::new(Mutex::new(vec![None; n])),
    };
    for w in workers.iter_mut() {
        if let Err(e) = launcher.spawn(w) {
            eprintln!("pgchat: cannot start worker {}: {e}", w.index);
            return ExitCode::from(1);
        }
    }
    if let Err(code) = watch(&config, &mut workers, &launcher).await {
        stop_all(&mut workers, &config).await;
        return code;
    }
    tracing::info!("forwarding shutdown to the workers");
    crate::ops::systemd::stopping();
    stop_all(&mut workers, &config).await;
    ExitCode::SUCCESS
}

/// Fails (with the exit code) when a port the workers need cannot be bound.
fn check_ports(config: &Config, n: usize, listen: Listen) -> Result<(), ExitCode> {
    let ports = match listen {
        Listen::Shared => vec![config.port],
        Listen::PerWorker => (0..n).map(|i| config.port + i as u16).collect(),
    };
    for port in ports {
        if let Err(e) = crate::app::check_port(config.listen_host(), port) {
            eprintln!("pgchat: {e}");
            return Err(ExitCode::from(e.exit_code()));
        }
    }
    Ok(())
}

/// The workers to run, each with its share of the connections and its port; none started.
fn plan(config: &Config, n: usize, listen: Listen) -> Vec<Worker> {
    shares(config.db_max_connections, n)
        .into_iter()
        .enumerate()
        .map(|(index, share)| Worker {
            index,
            share,
            port: match listen {
                Listen::Shared => config.port,
                Listen::PerWorker => config.port + index as u16,
            },
            child: None,
            _stdin: None,
            deaths: VecDeque::new(),
            restart_at: None,
        })
        .collect()
}

/// What starting a worker process takes.
struct Launcher {
    exe: PathBuf,
    relay: Option<crate::ops::systemd::Relay>,
    config_path: Option<PathBuf>,
    listen: Listen,
    n: usize,
    url: String,
    /// Each worker's connections as it last reported them on its stdout (see
    /// `stats::spawn_reporter`); None until it reports, and once it exits.
    reported: Arc<Mutex<Vec<Option<u64>>>>,
}

impl Launcher {
    fn spawn(&self, w: &mut Worker) -> std::io::Result<()> {
        let n = self.n;
        let mut cmd = Command::new(&self.exe);
        match &self.relay {
            Some(relay) => relay.worker_env(w.index, &mut cmd),
            None => {
                cmd.env_remove("NOTIFY_SOCKET")
                    .env_remove("WATCHDOG_USEC")
                    .env_remove("WATCHDOG_PID");
            }
        }
        if let Some(p) = &self.config_path {
            cmd.arg("--config").arg(p);
        }
        cmd.arg("worker")
            .arg("--index")
            .arg(w.index.to_string())
            .arg("--share")
            .arg(w.share.to_string())
            .args((self.listen == Listen::Shared).then_some("--reuse-port"))
            .env("PORT", w.port.to_string())
            // So that each worker sizes its runtime for its share of the CPUs, and knows
            // its share of memory_limit_mb.
            .env("PGCHAT_WORKERS", n.to_string())
            .env("DATABASE_URL", &self.url)
            // The worker exits when this pipe closes: it never outlives the supervisor.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        w._stdin = child.stdin.take();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(read_reports(out, w.index, self.reported.clone()));
        }
        w.child = Some(child);
        w.restart_at = None;
        Ok(())
    }
}

/// Restarts workers that die until a signal (Ok), or until one cannot start or keeps
/// dying (the exit code; the caller stops the others).
async fn watch(
    config: &Config,
    workers: &mut [Worker],
    launcher: &Launcher,
) -> Result<(), ExitCode> {
    let shutdown = crate::shutdown::signal();
    tokio::pin!(shutdown);
    let mut stats = (config.stats_interval_ms > 0).then(|| {
        let every = Duration::from_millis(config.stats_interval_ms);
        tokio::time::interval_at(tokio::time::Instant::now() + every, every)
    });
    loop {
        // Wait for a signal, a worker's exit, or a restart that is due.
        let next_restart = workers.iter().filter_map(|w| w.restart_at).min();
        let exited = {
            let mut waits: FuturesUnordered<_> = workers
                .iter_mut()
                .filter_map(|w| {
                    let index = w.index;
                    w.child
                        .as_mut()
                        .map(|c| async move { (index, c.wait().await) })
                })
                .collect();
            tokio::select! {
                // A signal first: Heroku and `docker stop` signal the workers too, and
                // a worker that drained must not be restarted.
                biased;
                _ = &mut shutdown => None,
                Some(exit) = waits.next() => Some(Some(exit)),
                _ = sleep_until(next_restart) => Some(None),
                _ = tick(&mut stats) => {
                    log_distribution(&launcher.reported.lock().expect("reports"));
                    continue;
                }
            }
        };
        match exited {
            None => return Ok(()),
            Some(Some((index, status))) => died(&mut workers[index], status)?,
            Some(None) => {
                let now = tokio::time::Instant::now();
                for w in workers
                    .iter_mut()
                    .filter(|w| w.restart_at.is_some_and(|t| t <= now))
                {
                    if let Err(e) = launcher.spawn(w) {
                        tracing::error!(of_worker = w.index, error = %e, "restarting worker failed");
                        w.restart_at = Some(now + Duration::from_secs(1));
                    }
                }
            }
        }
    }
}

/// A worker exited: schedules its restart with backoff, or gives up (the exit code) when
/// it cannot start or keeps dying.
fn died(w: &mut Worker, status: std::io::Result<std::process::ExitStatus>) -> Result<(), ExitCode> {
    let index = w.index;
    w.child = None;
    // Exit code 2: what the configuration must fix (its port is taken, …), said by the
    // worker on stderr. Restarting would only say it again.
    if status.as_ref().is_ok_and(|s| s.code() == Some(2)) {
        tracing::error!(of_worker = index, "worker cannot start; stopping");
        return Err(ExitCode::from(2));
    }
    let now = Instant::now();
    w.deaths.push_back(now);
    while w.deaths.front().is_some_and(|t| now - *t > DEATH_WINDOW) {
        w.deaths.pop_front();
    }
    if w.deaths.len() >= MAX_DEATHS {
        tracing::error!(of_worker = index, ?status, "worker keeps dying; giving up");
        eprintln!(
            "pgchat: worker {index} died {MAX_DEATHS} times within {}s; stopping",
            DEATH_WINDOW.as_secs()
        );
        return Err(ExitCode::from(GAVE_UP));
    }
    let backoff = Duration::from_millis(250) * 2u32.pow(w.deaths.len() as u32 - 1);
    tracing::warn!(of_worker = index, ?status, restart_in = ?backoff, "worker died; restarting");
    w.restart_at = Some(tokio::time::Instant::now() + backoff);
    Ok(())
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Reads a worker's reports (`{"connections":N}` lines) until it exits.
async fn read_reports(
    out: tokio::process::ChildStdout,
    index: usize,
    reported: Arc<Mutex<Vec<Option<u64>>>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let connections = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["connections"].as_u64());
        if let Some(c) = connections {
            reported.lock().expect("reports")[index] = Some(c);
        }
    }
    reported.lock().expect("reports")[index] = None;
}

/// The supervisor's stats line: how the connections spread over the workers, as each
/// last reported them (`null`: not reported yet, or not running).
fn log_distribution(reported: &[Option<u64>]) {
    let known: Vec<u64> = reported.iter().flatten().copied().collect();
    let total: u64 = known.iter().sum();
    let (min, max) = (known.iter().min(), known.iter().max());
    tracing::info!(
        connections = %serde_json::to_string(reported).expect("numbers serialise"),
        total,
        min = min.copied().unwrap_or(0),
        max = max.copied().unwrap_or(0),
        "connections per worker"
    );
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGTERM to every worker, then wait for them to drain; SIGKILL what is left after the
/// shutdown timeout and a margin.
async fn stop_all(workers: &mut [Worker], config: &Config) {
    for w in workers.iter() {
        if let Some(pid) = w.child.as_ref().and_then(Child::id) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    let deadline = Duration::from_millis(config.shutdown_timeout_ms) + Duration::from_secs(2);
    for w in workers.iter_mut() {
        if let Some(child) = w.child.as_mut() {
            if tokio::time::timeout(deadline, child.wait()).await.is_err() {
                tracing::warn!(
                    of_worker = w.index,
                    "worker did not drain in time; killing it"
                );
                let _ = child.kill().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_split_evenly_and_never_exceeded() {
        assert_eq!(shares(10, 1), vec![10]);
        assert_eq!(shares(10, 3), vec![4, 3, 3]);
        assert_eq!(shares(10, 8), vec![2, 2, 1, 1, 1, 1, 1, 1]);
        for n in 1..=10 {
            let s = shares(10, n);
            assert_eq!(s.iter().sum::<usize>(), 10);
            assert!(s.iter().all(|x| *x >= 1));
        }
    }
}
