//! Counters and histograms of one worker, exposed at `/metrics` (OpenMetrics text, which
//! Prometheus scrapes natively) and summarised in `/health`.
//!
//! A registry per application rather than a global recorder: tests run several servers in
//! one process, and each must count only its own traffic.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde_json::json;

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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
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
            registry,
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self, pool: &deadpool_postgres::Status) -> String {
        self.pool_size.set(pool.size as i64);
        self.pool_available.set(pool.available as i64);
        self.pool_waiting.set(pool.waiting as i64);
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
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
            "ephemeral_dropped": self.ephemeral_dropped.get(),
            "history_from_cache": self.history_from_cache.get(),
            "requests": self.requests.get(),
            "request_errors": self.request_errors.get(),
            "refused_connections": self.refused_connections.get(),
        })
    }
}
