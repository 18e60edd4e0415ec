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

pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub connections_total: Counter,
    pub messages_received: Counter,
    pub messages_stored: Counter,
    pub events_delivered: Counter,
    pub replayed_events: Counter,
    pub outbound_overflows: Counter,
    pub rate_limited: Counter,
    pub token_refreshes: Counter,
    pub ephemeral_dropped: Counter,
    pub history_from_cache: Counter,
    pub requests: Counter,
    pub request_errors: Counter,
    pub refused_connections: Counter,
    pub listener_up: Gauge,
    pub listener_connects: Counter,
    pub notifications: Counter,
    pub listener_overflows: Counter,
    pub health_probes: Counter,
    pub db_share: Gauge,
    pub pool_size: Gauge,
    pub pool_available: Gauge,
    pub pool_waiting: Gauge,
    pub send_commit_seconds: Histogram,
    pub batch_size: Histogram,
    pub listener_reconnects: Counter,
    pub notification_lag_seconds: Histogram,
    /// `pg_notification_queue_usage()`, sampled by the cached health probe.
    pub notification_queue_usage: Gauge<f64, AtomicU64>,
}

/// The database round trips, timed where they run (the batcher and the read queries of
/// [`crate::store`]); the [`crate::db::Database`] handle carries them there.
#[derive(Clone)]
pub struct RoundTrips {
    /// One write batch: its single statement (every command, the NOTIFY and the commit).
    pub batch: Histogram,
    /// One read query.
    pub read: Histogram,
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
pub enum Format {
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Classic,
}

impl Format {
    /// OpenMetrics when `accept` lists `application/openmetrics-text` with a non-zero
    /// quality, else the classic format (also for a missing or unreadable header).
    pub fn from_accept(accept: Option<&str>) -> Format {
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

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

impl Metrics {
    pub fn new(round_trips: &RoundTrips) -> Metrics {
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
    pub fn render(&self, pool: &deadpool_postgres::Status, format: Format) -> String {
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
        })
    }
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
