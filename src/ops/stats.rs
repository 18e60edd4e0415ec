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

use deadpool_postgres::Status as PoolStatus;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::foundation::config::Config;

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

/// What the triggers are computed from, read off a worker by its caller.
pub(crate) struct Readings {
    /// The share of the CPUs this process used lately (0..1).
    pub(crate) cpu: f64,
    /// Resident memory, in bytes.
    pub(crate) rss: u64,
    /// This worker's share of the memory limit, if there is one ([`memory_limit`]).
    pub(crate) memory_limit: Option<u64>,
    pub(crate) open_sockets: usize,
    pub(crate) max_connections: usize,
    pub(crate) pool: PoolStatus,
}

/// The `utilisation` block of `/health` and the `scale_out` hint: the triggers that fired,
/// or null.
pub(crate) fn utilisation(r: &Readings) -> (Value, Value) {
    let (cpu, rss, memory_limit, pool) = (r.cpu, r.rss, r.memory_limit, r.pool);
    let connections = ratio(r.open_sockets as f64, r.max_connections as f64);
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
            "open": r.open_sockets,
            "max": r.max_connections,
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

/// What the periodic stats line reports, read off a worker by its caller.
pub(crate) struct StatsLine {
    pub(crate) connections: usize,
    pub(crate) users_online: usize,
    pub(crate) pool: PoolStatus,
    pub(crate) listener_up: bool,
}

/// Logs a stats line (from `read`) every `every` (if not 0) until `stop`; with
/// `to_supervisor`, also writes `{"connections":N}` on stdout for the supervisor's
/// distribution line.
pub(crate) fn spawn_reporter(
    every: Duration,
    stop: CancellationToken,
    to_supervisor: bool,
    read: impl Fn() -> StatsLine + Send + 'static,
) {
    if every.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let StatsLine {
                connections,
                users_online,
                pool,
                listener_up,
            } = read();
            let (rss, _) = memory();
            tracing::info!(
                connections,
                users_online,
                rss_mb = rss / (1024 * 1024),
                pool_size = pool.size,
                pool_available = pool.available,
                pool_waiting = pool.waiting,
                listener_up,
                "stats"
            );
            if to_supervisor {
                use std::io::Write;
                let line = format!("{}\n", json!({ "connections": connections }));
                // The supervisor reads every line; if it is gone, the worker stops anyway.
                let _ = std::io::stdout().lock().write_all(line.as_bytes());
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(cpu: f64, open_sockets: usize, in_use: usize) -> Readings {
        Readings {
            cpu,
            rss: 100,
            memory_limit: Some(1000),
            open_sockets,
            max_connections: 100,
            pool: PoolStatus {
                max_size: 10,
                size: in_use,
                available: 0,
                waiting: 0,
            },
        }
    }

    #[test]
    fn each_trigger_past_its_threshold_names_itself() {
        let (block, hint) = utilisation(&readings(0.1, 10, 1));
        assert_eq!(hint, Value::Null);
        assert_eq!(block["connections"]["percent"], 10.0);
        assert_eq!(block["memory"]["percent"], 10.0);
        let (_, hint) = utilisation(&readings(0.9, 81, 9));
        assert_eq!(hint, json!(["cpu", "connections", "database"]));
        let mut shared = readings(0.1, 0, 0);
        shared.pool.max_size = 0; // the listener's one connection: no figure
        let (block, _) = utilisation(&shared);
        assert_eq!(block["database"]["percent"], Value::Null);
    }
}
