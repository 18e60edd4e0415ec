//! Telling the service manager how this process is doing (systemd's `Type=notify`):
//! `READY=1` once the port listens and the notification listener is up, `WATCHDOG=1` at
//! half the watchdog interval, `STOPPING=1` when draining begins. Through the `sd-notify`
//! crate; every call is a no-op when `NOTIFY_SOCKET` is unset.
//!
//! Under `serve --workers N` only the supervisor is systemd's main process, and systemd
//! takes notices from it alone (`NotifyAccess=main`). So the supervisor stands in for
//! systemd towards its workers ([`Relay`]): each worker gets a socket of its own as its
//! `NOTIFY_SOCKET`, and the supervisor tells systemd `READY=1` once every worker has said
//! so, and `WATCHDOG=1` only while every worker keeps pinging: a worker whose runtime is
//! wedged (alive to `waitpid`, so the supervisor would never restart it) stops the
//! supervisor's pings, and systemd restarts the service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::net::UnixDatagram;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::listener::ListenerState;

/// Sends `states` to `NOTIFY_SOCKET`, if set; a failure is logged, never fatal.
pub(crate) fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// The watchdog interval asked for by the service manager, if this process is the one
/// it watches (`WATCHDOG_USEC`, and `WATCHDOG_PID` unset or ours).
pub(crate) fn watchdog() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Pings the watchdog at half its interval for as long as the runtime runs: the pings
/// prove that the runtime still schedules tasks.
pub(crate) fn spawn_watchdog() {
    if let Some(interval) = watchdog() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            loop {
                tick.tick().await;
                notify(&[NotifyState::Watchdog]);
            }
        });
    }
}

/// `READY=1` once the notification listener is up (the port already listens): from
/// then on a connection gets a worker that can deliver messages from the others.
pub(crate) fn announce_when_ready(
    listener: Arc<ListenerState>,
    addr: SocketAddr,
    stop: CancellationToken,
) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    tokio::spawn(async move {
        while !listener.is_up() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        let status = format!("listening on {addr}");
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    });
}

/// `STOPPING=1`: draining has begun.
pub(crate) fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// The supervisor's stand-in for systemd towards its workers (see the module's notes).
pub(crate) struct Relay {
    dir: PathBuf,
    watchdog: Option<Duration>,
    stop: CancellationToken,
}

impl Relay {
    /// Binds one socket per worker when the supervisor itself has a `NOTIFY_SOCKET`;
    /// `None` otherwise (the workers are then told nothing either).
    pub(crate) fn start(workers: usize) -> std::io::Result<Option<Relay>> {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Ok(None);
        }
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("pgchat-notify-{}", std::process::id()));
        // Left over from an earlier process that had this pid: ours now.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let relay = Relay {
            dir,
            watchdog: watchdog(),
            stop: CancellationToken::new(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        for index in 0..workers {
            let socket = UnixDatagram::bind(relay.socket(index))?;
            let tx = tx.clone();
            let stop = relay.stop.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        got = socket.recv(&mut buf) => match got {
                            Ok(n) => {
                                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                                if tx.send((index, text)).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(worker = index, error = %e, "notify relay");
                                return;
                            }
                        },
                    }
                }
            });
        }
        tokio::spawn(relay_loop(workers, relay.watchdog, rx, relay.stop.clone()));
        Ok(Some(relay))
    }

    fn socket(&self, index: usize) -> PathBuf {
        self.dir.join(format!("worker-{index}.sock"))
    }

    /// Worker `index`'s environment: its own socket, and the watchdog interval with no
    /// `WATCHDOG_PID` (which names the supervisor, not the worker).
    pub(crate) fn worker_env(&self, index: usize, cmd: &mut tokio::process::Command) {
        cmd.env("NOTIFY_SOCKET", self.socket(index))
            .env_remove("WATCHDOG_PID");
        match self.watchdog {
            Some(d) => cmd.env("WATCHDOG_USEC", d.as_micros().to_string()),
            None => cmd.env_remove("WATCHDOG_USEC"),
        };
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the workers say, and what the supervisor tells systemd on their behalf.
async fn relay_loop(
    workers: usize,
    watchdog: Option<Duration>,
    mut notices: tokio::sync::mpsc::Receiver<(usize, String)>,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let mut ready = vec![false; workers];
    let mut announced = false;
    // A worker that has not pinged yet is given from the relay's start.
    let mut last_ping = vec![started; workers];
    let mut tick = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |d| d / 2));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Some((index, text)) = notices.recv() => {
                for line in text.lines() {
                    match line {
                        "READY=1" => ready[index] = true,
                        "WATCHDOG=1" => last_ping[index] = Instant::now(),
                        _ => {}
                    }
                }
                if !announced && ready.iter().all(|r| *r) {
                    announced = true;
                    let status = format!("{workers} workers ready");
                    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
                }
            }
            _ = tick.tick() => {
                let Some(interval) = watchdog else { continue };
                let silent: Vec<usize> = (0..workers)
                    .filter(|i| last_ping[*i].elapsed() > interval)
                    .collect();
                if silent.is_empty() {
                    notify(&[NotifyState::Watchdog]);
                } else {
                    tracing::error!(workers = ?silent, "workers stopped pinging the watchdog: not pinging systemd");
                }
            }
        }
    }
}
