//! What a worker uses of what it may use: the seed's scaling triggers as utilisation
//! figures for `/health`, and the periodic stats line of the log.
//!
//! The triggers (each past its threshold names itself in `scale_out`):
//! - `cpu`: this process's CPU time over the last interval (at least a second, measured
//!   between calls), as a share of the CPUs it may run on, over 70 %;
//! - `memory`: its resident memory over 80 % of its share of `memory_limit_mb` (the limit
//!   divided by the workers on this host), or of the container's limit;
//! - `connections`: sockets over 80 % of `max_connections`;
//! - `database`: pooled connections in use over 80 % of the pool (the listener's own
//!   connection is not counted: it is always held; a worker whose share is that one
//!   connection reports no figure).

use std::time::Duration;

use serde_json::{json, Value};

use crate::foundation::config::Config;
use crate::state::App;

const CPU_TRIGGER: f64 = 0.70;
const MEMORY_TRIGGER: f64 = 0.80;
const CONNECTIONS_TRIGGER: f64 = 0.80;
const DATABASE_TRIGGER: f64 = 0.80;

/// Resident and virtual memory of this process in bytes, from /proc (Linux; 0 elsewhere).
pub(crate) fn memory() -> (u64, u64) {
    let page = 4096u64;
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let mut fields = statm
        .split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0));
    let virt = fields.next().unwrap_or(0) * page;
    let rss = fields.next().unwrap_or(0) * page;
    (rss, virt)
}

/// The memory limit of the container this runs in (cgroup v2, then v1), if any.
fn cgroup_memory_limit() -> Option<u64> {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok();
    let v1 = || std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes").ok();
    let text = v2.or_else(v1)?;
    let bytes: u64 = text.trim().parse().ok()?; // "max": no limit
                                                // cgroup v1 writes a huge number for "no limit".
    (bytes < (1 << 60)).then_some(bytes)
}

/// The memory one worker may use, in bytes: its share of `memory_limit_mb`, or of the
/// container's limit.
pub(crate) fn memory_limit(config: &Config) -> Option<u64> {
    let total = match config.memory_limit_mb {
        0 => cgroup_memory_limit()?,
        mb => mb * 1024 * 1024,
    };
    Some(total / config.worker_count().max(1) as u64)
}

fn ratio(used: f64, limit: f64) -> f64 {
    if limit > 0.0 {
        used / limit
    } else {
        0.0
    }
}

fn percent(r: f64) -> f64 {
    (r * 1000.0).round() / 10.0
}

/// The `utilisation` block of `/health` and the `scale_out` hint: the triggers that fired,
/// or null.
pub(crate) fn utilisation(app: &App) -> (Value, Value) {
    let cpu = app.cpu.share();
    let (rss, _) = memory();
    let memory_limit = memory_limit(&app.config);
    let connections = ratio(app.open_sockets() as f64, app.config.max_connections as f64);
    let pool = app.db.pool_status();
    let database = (pool.max_size > 0)
        .then(|| ratio((pool.size - pool.available) as f64, pool.max_size as f64));
    let mut fired = Vec::new();
    if cpu > CPU_TRIGGER {
        fired.push("cpu");
    }
    let memory = memory_limit.map(|limit| ratio(rss as f64, limit as f64));
    if memory.is_some_and(|m| m > MEMORY_TRIGGER) {
        fired.push("memory");
    }
    if connections > CONNECTIONS_TRIGGER {
        fired.push("connections");
    }
    if database.is_some_and(|d| d > DATABASE_TRIGGER) {
        fired.push("database");
    }
    let block = json!({
        "cpu": {"percent": percent(cpu), "threshold": percent(CPU_TRIGGER)},
        "memory": {
            "percent": memory.map(percent),
            "rss_bytes": rss,
            "limit_bytes": memory_limit,
            "threshold": percent(MEMORY_TRIGGER),
        },
        "connections": {
            "percent": percent(connections),
            "open": app.open_sockets(),
            "max": app.config.max_connections,
            "threshold": percent(CONNECTIONS_TRIGGER),
        },
        "database": {
            "percent": database.map(percent),
            "in_use": pool.size - pool.available,
            "pool": pool.max_size,
            "threshold": percent(DATABASE_TRIGGER),
        },
    });
    let hint = if fired.is_empty() {
        Value::Null
    } else {
        json!(fired)
    };
    (block, hint)
}

/// Logs a stats line every `stats_interval_ms` (if not 0) until shutdown; with
/// `to_supervisor`, also writes `{"connections":N}` on stdout for the supervisor's
/// distribution line.
pub(crate) fn spawn_reporter(app: App, to_supervisor: bool) {
    let every = Duration::from_millis(app.config.stats_interval_ms);
    if every.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                _ = app.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let pool = app.db.pool_status();
            let (rss, _) = memory();
            tracing::info!(
                connections = app.open_sockets(),
                users_online = app.hub.users_online(),
                rss_mb = rss / (1024 * 1024),
                pool_size = pool.size,
                pool_available = pool.available,
                pool_waiting = pool.waiting,
                listener_up = app.listener.is_up(),
                "stats"
            );
            if to_supervisor {
                use std::io::Write;
                let line = format!("{}\n", json!({"connections": app.open_sockets()}));
                // The supervisor reads every line; if it is gone, the worker stops anyway.
                let _ = std::io::stdout().lock().write_all(line.as_bytes());
            }
        }
    });
}
