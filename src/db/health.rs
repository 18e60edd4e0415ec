//! The cached database probe of `/health`, `/ready` and `/metrics`.

use std::time::{Duration, Instant};

use super::Database;
use crate::foundation::metrics::Metrics;

/// The database probe behind `/health`, `/ready` and `/metrics`'s NOTIFY queue figure: at
/// most one `SELECT pg_notification_queue_usage()` per
/// `health_cache_ms`, whatever the number of requests, so that a flood of them (a
/// misconfigured load balancer, an attacker) cannot take the pool's connections. While a
/// probe runs, the requests that arrive wait for its answer instead of starting their own.
pub(crate) struct HealthProbe {
    max_age: Duration,
    /// A tokio mutex, held across the probe on purpose: that is what makes it one probe.
    last: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl HealthProbe {
    pub(crate) fn new(max_age: Duration) -> HealthProbe {
        HealthProbe {
            max_age,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// True when the database answered the latest probe (run now if the last is stale).
    pub(crate) async fn database_up(&self, db: &Database, metrics: &Metrics) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, up)) = *last {
            if at.elapsed() < self.max_age {
                return up;
            }
        }
        metrics.health_probes.inc();
        let usage = tokio::time::timeout(Duration::from_secs(2), db.notification_queue_usage())
            .await
            .ok()
            .flatten();
        if let Some(usage) = usage {
            metrics.notification_queue_usage.set(usage);
        }
        let up = usage.is_some();
        *last = Some((Instant::now(), up));
        up
    }
}
