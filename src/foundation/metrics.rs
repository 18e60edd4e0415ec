//! Counters and histograms of one worker, exposed at `/metrics` and summarised in
//! `/health`. `/metrics` speaks OpenMetrics to a scraper whose `Accept` asks for
//! `application/openmetrics-text`, and the classic Prometheus text format (0.0.4) to
//! everyone else (older Prometheus, VictoriaMetrics agents, curl): the two differ in the
//! counters' family names (`_total` on the family in the classic format), `# UNIT` and
//! `# EOF`, which prometheus-client's two encoders handle.
//!
//! A registry per application rather than a global recorder: tests run several servers in
//! one process, and each must count only its own traffic.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde_json::json;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Metrics {
    registry: Registry,
    pub(crate) connections: Gauge,
    pub(crate) connections_total: Counter,
    pub(crate) messages_received: Counter,
    pub(crate) messages_stored: Counter,
    pub(crate) events_delivered: Counter,
    pub(crate) replayed_events: Counter,
    pub(crate) outbound_overflows: Counter,
    pub(crate) rate_limited: Counter,
    pub(crate) token_refreshes: Counter,
    pub(crate) ephemeral_dropped: Counter,
    pub(crate) history_from_cache: Counter,
    pub(crate) requests: Counter,
    pub(crate) request_errors: Counter,
    pub(crate) refused_connections: Counter,
    pub(crate) listener_up: Gauge,
    pub listener_connects: Counter,
    pub notifications: Counter,
    pub listener_overflows: Counter,
    pub notices_unsealed: Counter,
    pub notices_ignored: Counter,
    pub bad_rows: Counter,
    pub(crate) outbound_held: Gauge,
    pub health_probes: Counter,
    pub(crate) db_share: Gauge,
    pub(crate) pool_size: Gauge,
    pub(crate) pool_available: Gauge,
    pub(crate) pool_waiting: Gauge,
    pub(crate) send_commit_seconds: Histogram,
    pub(crate) batch_size: Histogram,
    pub(crate) message_changes: Counter,
    pub(crate) search_seconds: Histogram,
    pub(crate) listener_reconnects: Counter,
    pub(crate) notification_lag_seconds: Histogram,
    /// `pg_notification_queue_usage()`, sampled by the cached health probe.
    pub(crate) notification_queue_usage: Gauge<f64, AtomicU64>,
}

/// The database round trips, timed where they run (the batcher and the read queries of
/// [`crate::read::store`]); the [`crate::db::Database`] handle carries them there.
#[derive(Clone)]
pub(crate) struct RoundTrips {
    /// One write batch: its single statement (every command, the NOTIFY and the commit).
    pub(crate) batch: Histogram,
    /// One read query.
    pub(crate) read: Histogram,
}

impl Default for RoundTrips {
    fn default() -> Self {
        let buckets = || Histogram::new(exponential_buckets(0.000_125, 2.0, 16));
        RoundTrips {
            batch: buckets(),
            read: buckets(),
        }
    }
}

/// Which text format a scraper gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Classic,
}

impl Format {
    /// OpenMetrics when `accept` lists `application/openmetrics-text` with a non-zero
    /// quality, else the classic format (also for a missing or unreadable header).
    pub(crate) fn from_accept(accept: Option<&str>) -> Format {
        let asks = accept.unwrap_or_default().split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f64>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        });
        if asks {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

impl Metrics {
    pub(crate) fn new(round_trips: &RoundTrips) -> Metrics {
        let mut registry = Registry::with_prefix("pgchat");
        macro_rules! reg {
            ($name:literal, $help:literal, $metric:expr) => {{
                let m = $metric;
                registry.register($name, $help, m.clone());
                m
            }};
        }
        Metrics {
            connections: reg!("connections", "Open WebSocket sessions", Gauge::default()),
            connections_total: reg!(
                "connections_accepted",
                "WebSocket sessions accepted",
                Counter::default()
            ),
            messages_received: reg!(
                "messages_received",
                "Send requests received",
                Counter::default()
            ),
            messages_stored: reg!(
                "messages_sent",
                "Messages committed to the database",
                Counter::default()
            ),
            events_delivered: reg!(
                "events_delivered",
                "Durable events written to sockets",
                Counter::default()
            ),
            replayed_events: reg!(
                "events_replayed",
                "Durable events read back from the database for resume or catch-up",
                Counter::default()
            ),
            outbound_overflows: reg!(
                "outbound_overflows",
                "Sessions closed with 1013 because their outbound queue overflowed",
                Counter::default()
            ),
            rate_limited: reg!(
                "rate_limited",
                "Requests refused with rate_limited",
                Counter::default()
            ),
            token_refreshes: reg!(
                "token_refreshes",
                "Tokens replaced in place by an auth request",
                Counter::default()
            ),
            ephemeral_dropped: reg!(
                "ephemeral_dropped",
                "Typing or presence frames dropped for a session whose queue was full",
                Counter::default()
            ),
            history_from_cache: reg!(
                "history_from_cache",
                "History pages served from the conversation cache",
                Counter::default()
            ),
            requests: reg!("requests", "Client requests handled", Counter::default()),
            request_errors: reg!(
                "request_errors",
                "Client requests answered with an error",
                Counter::default()
            ),
            refused_connections: reg!(
                "refused_connections",
                "Upgrades refused (unauthorized, at_capacity, not_ready)",
                Counter::default()
            ),
            listener_up: reg!(
                "listener_up",
                "1 while this worker listens for notifications and has caught up",
                Gauge::default()
            ),
            listener_connects: reg!(
                "listener_connects",
                "Times the notification listener (re)connected",
                Counter::default()
            ),
            notifications: reg!(
                "notifications_received",
                "Notifications received from the cluster (this worker's own included)",
                Counter::default()
            ),
            listener_overflows: reg!(
                "listener_overflows",
                "Times notifications outpaced the listener and it caught up from the tables instead",
                Counter::default()
            ),
            notices_unsealed: reg!(
                "notices_unsealed",
                "Notifications on pgchat's channel dropped because they did not carry pgchat's seal (another database role, or a different key)",
                Counter::default()
            ),
            notices_ignored: reg!(
                "notices_ignored",
                "Sealed notifications not acted on: replayed, stale, from a worker not in the workers table, or past a worker's presence cap",
                Counter::default()
            ),
            bad_rows: reg!(
                "bad_rows",
                "Rows read from the database that pgchat could not use (a message deleted by hand, a malformed member list): logged and skipped",
                Counter::default()
            ),
            outbound_held: reg!(
                "outbound_held_bytes",
                "Bytes held for replies and replayed events that clients have not read yet, all users (bounded by outbound_budget_bytes)",
                Gauge::default()
            ),
            health_probes: reg!(
                "health_probes",
                "Database probes run for /health and /ready (at most one per health_cache_ms)",
                Counter::default()
            ),
            db_share: reg!(
                "db_connections_share",
                "Database connections this worker may hold, its listener included",
                Gauge::default()
            ),
            pool_size: reg!("db_pool_size", "Open pooled connections", Gauge::default()),
            pool_available: reg!(
                "db_pool_available",
                "Idle pooled connections",
                Gauge::default()
            ),
            pool_waiting: reg!(
                "db_pool_waiting",
                "Tasks waiting for a pooled connection",
                Gauge::default()
            ),
            send_commit_seconds: reg!(
                "send_commit_seconds",
                "From a send entering the write queue to its commit",
                Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
            ),
            batch_size: reg!(
                "write_batch_size",
                "Sends committed per transaction",
                Histogram::new(exponential_buckets(1.0, 2.0, 10))
            ),
            message_changes: reg!(
                "message_changes",
                "Edits, deletions and reactions committed (those that changed nothing included)",
                Counter::default()
            ),
            search_seconds: reg!(
                "search_seconds",
                "Search requests, from the request to its results (refusals included)",
                Histogram::new(exponential_buckets(0.000_5, 2.0, 14))
            ),
            listener_reconnects: {
                registry.register(
                    "db_batch_seconds",
                    "Database round trip of one write batch (its one statement, NOTIFY and commit included)",
                    round_trips.batch.clone(),
                );
                registry.register(
                    "db_read_seconds",
                    "Database round trip of one read query (history, resume, catch-up, lists)",
                    round_trips.read.clone(),
                );
                reg!(
                    "listener_reconnects",
                    "Times the notification listener connected again after losing its connection",
                    Counter::default()
                )
            },
            notification_lag_seconds: reg!(
                "notification_lag_seconds",
                "From an event's transaction (database clock) to its publication on this worker after another worker's notification (worker clock)",
                Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
            ),
            notification_queue_usage: reg!(
                "notification_queue_usage",
                "pg_notification_queue_usage(): the fill of PostgreSQL's NOTIFY queue (0..1), as the latest health probe saw it",
                Gauge::<f64, AtomicU64>::default()
            ),
            registry,
        }
    }

    /// Every metric, in `format`.
    pub(crate) fn render(&self, pool: &deadpool_postgres::Status, format: Format) -> String {
        self.pool_size.set(pool.size as i64);
        self.pool_available.set(pool.available as i64);
        self.pool_waiting.set(pool.waiting as i64);
        let mut out = String::new();
        match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
            Format::Classic => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
        }
        .expect("writing to a String cannot fail");
        out
    }

    /// The counters as JSON, for `/health`.
    pub fn summary(&self) -> serde_json::Value {
        json!({
            "connections": self.connections.get(),
            "connections_accepted": self.connections_total.get(),
            "messages_received": self.messages_received.get(),
            "messages_sent": self.messages_stored.get(),
            "events_delivered": self.events_delivered.get(),
            "events_replayed": self.replayed_events.get(),
            "outbound_overflows": self.outbound_overflows.get(),
            "rate_limited": self.rate_limited.get(),
            "token_refreshes": self.token_refreshes.get(),
            "ephemeral_dropped": self.ephemeral_dropped.get(),
            "history_from_cache": self.history_from_cache.get(),
            "requests": self.requests.get(),
            "request_errors": self.request_errors.get(),
            "refused_connections": self.refused_connections.get(),
            "notices_unsealed": self.notices_unsealed.get(),
            "notices_ignored": self.notices_ignored.get(),
            "bad_rows": self.bad_rows.get(),
        })
    }
}

/// CPU use between calls, over at least a second (a burst of /health requests reuses the
/// last figure rather than measuring over microseconds).
pub(crate) struct CpuMeter {
    /// A std mutex: nothing awaits while it is held.
    last: Mutex<CpuSample>,
}

struct CpuSample {
    at: Instant,
    cpu: f64,
    /// The share of the available CPUs used over the last interval (0..1).
    share: f64,
}

impl Default for CpuMeter {
    fn default() -> Self {
        CpuMeter {
            last: Mutex::new(CpuSample {
                at: Instant::now(),
                cpu: cpu_seconds().unwrap_or(0.0),
                share: 0.0,
            }),
        }
    }
}

impl CpuMeter {
    /// The share of the CPUs available to this process it used lately (0..1).
    pub(crate) fn share(&self) -> f64 {
        let mut last = self.last.lock().expect("cpu meter");
        let elapsed = last.at.elapsed();
        if elapsed >= Duration::from_secs(1) {
            if let Some(cpu) = cpu_seconds() {
                let cores = super::config::available_parallelism() as f64;
                last.share = ((cpu - last.cpu) / elapsed.as_secs_f64() / cores).max(0.0);
                last.cpu = cpu;
                last.at = Instant::now();
            }
        }
        last.share
    }
}

/// CPU seconds this process has used (user + system), from /proc/self/stat.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses: count fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; in
    // USER_HZ, which Linux fixes at 100 for /proc.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_for_scrapers_that_ask_for_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(None), Format::Classic);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Classic);
        assert_eq!(
            Format::from_accept(Some("text/plain;version=0.0.4")),
            Format::Classic
        );
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text; q=0, text/plain")),
            Format::Classic
        );
    }
}
