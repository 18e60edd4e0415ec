//! Faults under load. Each test starts its own private PostgreSQL cluster (never the
//! machine's server) and `pgchat serve --workers 3` on it, runs steady DM and group
//! traffic from 12 users spread over the 3 workers (so every conversation crosses
//! workers), injects one fault, lets the load go on, then stops it: every client
//! reconnects and resumes from the last seq it saw, and the independent checker
//! (tests/common/checker.rs) judges from what the clients sent, were acked and received.
//! Finally the acked messages are compared with what the database holds.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::checker::{Checker, Counts};
use common::cluster::Cluster;
use common::load::{self, Fleet, Stall};
use common::pg::{PrivatePg, Stop};
use common::TestDb;
use nix::sys::signal::Signal;
use serde_json::Value;

const USERS: usize = 12;
const GROUP: usize = 6;
/// Each client sends one message this often (12 clients: about 100 sends/s in all).
const INTERVAL: Duration = Duration::from_millis(120);
const BEFORE_FAULT: Duration = Duration::from_secs(3);
const AFTER_FAULT: Duration = Duration::from_secs(4);

/// Limits the load needs: the default per-socket rate would refuse it.
const LOAD_ENV: [(&str, &str); 2] = [
    ("PGCHAT_RATE_LIMIT_PER_SEC", "1000"),
    ("PGCHAT_RATE_LIMIT_BURST", "1000"),
];

struct Rig {
    // Field order is drop order: the workers stop before their database.
    cluster: Cluster,
    pg: PrivatePg,
}

async fn rig(extra_env: &[(&str, &str)]) -> Rig {
    let pg = PrivatePg::start().await;
    let db = TestDb::on_private_cluster(pg.url("pgchat"), "pgchat");
    let mut env = LOAD_ENV.to_vec();
    env.extend_from_slice(extra_env);
    let cluster = Cluster::start_on(db, 3, &env).await;
    Rig { cluster, pg }
}

impl Rig {
    /// Load, `fault`, more load, then the checker's verdict; panics on any violation, and
    /// on any difference between the acked messages and the stored ones.
    async fn under_load<F: std::future::Future<Output = ()>>(
        &self,
        name: &str,
        specs: Vec<load::Spec>,
        checker: Arc<Checker>,
        fault: F,
    ) -> Counts {
        self.under_load_at(INTERVAL, name, specs, checker, fault)
            .await
    }

    async fn under_load_at<F: std::future::Future<Output = ()>>(
        &self,
        interval: Duration,
        name: &str,
        specs: Vec<load::Spec>,
        checker: Arc<Checker>,
        fault: F,
    ) -> Counts {
        let fleet = Fleet::start(&self.cluster, checker.clone(), specs, interval);
        tokio::time::sleep(BEFORE_FAULT).await;
        fault.await;
        tokio::time::sleep(AFTER_FAULT).await;
        let verdict = fleet.finish().await;
        let counts = match verdict {
            Ok(c) => c,
            Err(report) => panic!("{name}: the checker found violations:\n{report}"),
        };
        println!("{name}: {counts}");
        // The final consistency check: what was acked is exactly what is stored.
        let stored = self.stored_ids().await;
        assert_eq!(
            stored,
            checker.acked_ids(),
            "{name}: stored messages differ from acked ones"
        );
        assert!(counts.acked > 0 && counts.delivered > 0, "{name}: {counts}");
        counts
    }

    async fn stored_ids(&self) -> std::collections::BTreeSet<i64> {
        let db = self.cluster.db.client().await;
        db.query("SELECT id FROM messages", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect()
    }

    async fn standard_load(&self) -> (Vec<load::Spec>, Arc<Checker>) {
        let checker = Arc::new(Checker::new());
        let specs = load::plan(&self.cluster, &checker, USERS, GROUP).await;
        (specs, checker)
    }

    /// How many times each worker's listener has connected (1 until a fault).
    async fn listener_connects(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for w in 0..self.cluster.workers {
            let h: Value = self.cluster.health(w).await;
            out.push(h["listener"]["connects"].as_u64().unwrap_or(0));
        }
        out
    }
}

#[tokio::test]
async fn a_worker_killed_with_sigkill_under_load_loses_and_duplicates_nothing() {
    let rig = rig(&[]).await;
    let (specs, checker) = rig.standard_load().await;
    let counts = rig
        .under_load("kill -9 of a worker", specs, checker, async {
            rig.cluster.kill_worker(1).await;
        })
        .await;
    // The killed worker's 4 clients lost their sockets and came back.
    assert!(counts.connections >= (2 * USERS + 4) as u64, "{counts}");
    rig.cluster.wait_ready(1).await;
}

#[tokio::test]
async fn postgres_restarted_in_fast_mode_under_load_loses_and_duplicates_nothing() {
    let rig = rig(&[]).await;
    let (specs, checker) = rig.standard_load().await;
    rig.under_load("PostgreSQL fast restart", specs, checker, async {
        rig.pg.stop(Stop::Fast).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        rig.pg.restart().await;
    })
    .await;
    let connects = rig.listener_connects().await;
    assert!(
        connects.iter().all(|&c| c >= 2),
        "listeners reconnected: {connects:?}"
    );
}

#[tokio::test]
async fn postgres_restarted_in_immediate_mode_under_load_loses_and_duplicates_nothing() {
    let rig = rig(&[]).await;
    let (specs, checker) = rig.standard_load().await;
    rig.under_load("PostgreSQL immediate restart", specs, checker, async {
        rig.pg.stop(Stop::Immediate).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        rig.pg.restart().await;
    })
    .await;
    let connects = rig.listener_connects().await;
    assert!(
        connects.iter().all(|&c| c >= 2),
        "listeners reconnected: {connects:?}"
    );
}

#[tokio::test]
async fn listener_connections_terminated_under_load_lose_nothing() {
    let rig = rig(&[]).await;
    let (specs, checker) = rig.standard_load().await;
    let admin = rig.cluster.db.client().await;
    rig.under_load("listeners terminated", specs, checker, async {
        let killed: i64 = admin
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND query LIKE 'LISTEN%') t",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(killed, 3, "one listener per worker");
    })
    .await;
    let connects = rig.listener_connects().await;
    assert!(
        connects.iter().all(|&c| c >= 2),
        "listeners reconnected: {connects:?}"
    );
}

#[tokio::test]
async fn postgres_stalled_for_seconds_under_load_loses_and_duplicates_nothing() {
    let rig = rig(&[]).await;
    let (specs, checker) = rig.standard_load().await;
    rig.under_load("PostgreSQL stalled (SIGSTOP 4 s)", specs, checker, async {
        let stopped = rig.pg.signal_all(Signal::SIGSTOP);
        assert!(stopped > 3, "the postmaster and its backends: {stopped}");
        tokio::time::sleep(Duration::from_secs(4)).await;
        rig.pg.signal_all(Signal::SIGCONT);
    })
    .await;
}

#[tokio::test]
async fn a_consumer_too_slow_for_its_queue_is_closed_and_resumes_without_loss() {
    // A small outbound queue, so the slow consumer overflows it within seconds.
    let rig = rig(&[
        ("PGCHAT_OUTBOUND_MAX_FRAMES", "64"),
        ("PGCHAT_OUTBOUND_MAX_BYTES", "262144"),
    ])
    .await;
    let (mut specs, checker) = rig.standard_load().await;
    // u0 stops reading for 10 s, on a socket with a small receive buffer; its group's
    // messages are long so that the server's queue, not the kernel's buffers, fills.
    let group = specs[0].targets[1].clone();
    for s in specs.iter_mut().take(GROUP) {
        s.body_chars = 3900;
        s.targets = vec![group.clone()];
    }
    let (release, until) = tokio::sync::watch::channel(false);
    specs[0].stall = Some(Stall {
        after: Duration::from_secs(1),
        until,
        recv_buffer: 4096,
    });
    // The load goes on until the server has closed the slow consumer (how much the kernel
    // buffers first depends on the machine); then it reads again, finds the close frame,
    // reconnects and resumes, while the load goes on for 4 s more.
    let cluster = &rig.cluster;
    let rig_checker = checker.clone();
    let counts = rig
        .under_load_at(
            Duration::from_millis(50),
            "slow consumer",
            specs,
            checker,
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while overflows(cluster).await == 0 {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no outbound queue overflowed within 60 s"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                release.send_replace(true);
            },
        )
        .await;
    // The server closed the slow consumer's first socket: with 1013 when the close frame
    // got through within the writer's 5 s, else by dropping the connection (a reset, which
    // also discards what the client had not read yet: resume brings it back).
    let slow = rig_checker.closes_of("u0");
    assert!(
        matches!(
            slow.first().map(String::as_str),
            Some("close 1013" | "io ConnectionReset")
        ),
        "the slow consumer was closed by the server: {slow:?}; {counts}"
    );
}

/// Sessions the workers closed for an overflowing outbound queue, from /metrics.
async fn overflows(cluster: &Cluster) -> u64 {
    let mut total = 0;
    for w in 0..cluster.workers {
        let text = reqwest::get(cluster.http(w, "/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        total += text
            .lines()
            .filter(|l| l.starts_with("pgchat_outbound_overflows"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    total
}
