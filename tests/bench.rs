//! `pgchat bench` against the real server: each scenario runs briefly at a modest rate
//! and must account for every message. Only counts are asserted, never timings.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::{TestApp, SECRET};
use pgchat::bench::{
    self, ConnectOptions, DmOptions, GroupOptions, GrowthOptions, IdleOptions, Options, Report,
    Scenario,
};

/// Far above what the tests send: the default 20/s per socket would refuse the load.
const RATE_LIMIT: u32 = 100_000;

async fn server() -> TestApp {
    TestApp::spawn_with(|c| {
        c.rate_limit_per_sec = RATE_LIMIT;
        c.rate_limit_burst = RATE_LIMIT;
    })
    .await
}

fn options(urls: Vec<String>, scenario: Scenario) -> Options {
    Options {
        urls,
        auth: pgchat::foundation::auth::Authenticator::new(SECRET),
        drain: Duration::from_secs(5),
        quiet: true,
        threads: 1,
        scenario,
    }
}

fn url(app: &TestApp) -> Vec<String> {
    vec![format!("ws://{}/ws", app.addr)]
}

async fn run(options: Options) -> Report {
    bench::run(options).await.expect("the bench runs")
}

/// Nothing lost, no error of any kind, every stream without gaps.
fn assert_clean(r: &Report) {
    assert!(r.passed, "{:?}\n{:#?}", r.problems, r.errors);
    assert_eq!(r.lost(), 0);
    assert_eq!(r.errors.total(), 0, "{:#?}", r.errors);
    assert_eq!((r.stream.seq_gaps, r.stream.seq_duplicates), (0, 0));
}

fn dm(rate: f64, pairs: usize, cross: f64, secs: u64) -> Scenario {
    Scenario::Dm(DmOptions {
        rate,
        pairs,
        cross,
        duration: Duration::from_secs(secs),
        changes: 0.0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dm_delivers_every_acked_message_once() {
    let app = server().await;
    let r = run(options(url(&app), dm(100.0, 5, 0.5, 2))).await;
    assert_clean(&r);
    let m = r.messages.as_ref().unwrap();
    assert_eq!(m.planned, 200);
    assert_eq!((m.sent, m.acked, m.delivered), (200, 200, 200));
    assert_eq!((m.unanswered, m.duplicates), (0, 0));
    assert_eq!(r.latency("send → delivery").unwrap().count, 200);
    // One worker: the cross fraction cannot be met, and the report says so.
    assert_eq!(r.placement.as_ref().unwrap().cross_worker_pairs, 0);
    assert!(r.notes.iter().any(|n| n.contains("only one worker")));
    // Each pair's two users have one event stream each.
    assert_eq!(r.stream.sockets, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dm_across_two_workers_loses_nothing() {
    let limit = RATE_LIMIT.to_string();
    let cluster = Cluster::start(
        2,
        &[
            ("PGCHAT_RATE_LIMIT_PER_SEC", &limit),
            ("PGCHAT_RATE_LIMIT_BURST", &limit),
        ],
    )
    .await;
    let urls = (0..2)
        .map(|w| format!("ws://127.0.0.1:{}/ws", cluster.port(w)))
        .collect();
    let r = run(options(urls, dm(80.0, 4, 0.5, 2))).await;
    assert_clean(&r);
    assert_eq!(r.workers.len(), 2);
    let p = r.placement.as_ref().unwrap();
    assert_eq!((p.same_worker_pairs, p.cross_worker_pairs), (2, 2));
    let m = r.messages.as_ref().unwrap();
    assert_eq!((m.sent, m.acked, m.delivered), (160, 160, 160));
    let across = r.latency("  across workers").unwrap().count;
    let within = r.latency("  within a worker").unwrap().count;
    assert_eq!((across, within), (80, 80));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dm_with_changes_delivers_every_edit_reaction_and_deletion() {
    let app = server().await;
    let scenario = Scenario::Dm(DmOptions {
        rate: 100.0,
        pairs: 5,
        cross: 0.0,
        duration: Duration::from_secs(3),
        changes: 0.3,
    });
    let r = run(options(url(&app), scenario)).await;
    assert_clean(&r);
    let m = r.messages.as_ref().unwrap();
    assert_eq!(m.planned, 300);
    assert_eq!((m.sent, m.acked, m.delivered), (300, 300, 300));
    // The changes (30 %, a third each) are counted apart from the sends.
    let count = |name: &str| r.latency(name).unwrap().count;
    let changes: Vec<u64> = ["edit", "react", "delete"]
        .iter()
        .map(|k| count(&format!("{k} → delivery")))
        .collect();
    assert_eq!(count("send → delivery") + changes.iter().sum::<u64>(), 300);
    for (kind, n) in ["edit", "react", "delete"].iter().zip(&changes) {
        assert!((25..=35).contains(n), "{kind}: {n}");
        assert_eq!(count(&format!("{kind} → ack")), *n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_each_receive_every_acked_message() {
    let app = server().await;
    let scenario = Scenario::Group(GroupOptions {
        size: 4,
        groups: 3,
        rate: 30.0,
        duration: Duration::from_secs(2),
    });
    let r = run(options(url(&app), scenario)).await;
    assert_clean(&r);
    let m = r.messages.as_ref().unwrap();
    assert_eq!((m.sent, m.acked), (60, 60));
    assert_eq!(m.recipients, 3);
    assert_eq!(m.delivered, m.acked * 3);
    assert_eq!(m.expected, m.delivered);
    assert_eq!(r.latency("send → last recipient").unwrap().count, 60);
    assert_eq!(r.stream.sockets, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growth_reports_one_row_per_round_that_add_up() {
    let app = server().await;
    let scenario = Scenario::Growth(GrowthOptions {
        rate: 40.0,
        pairs: 2,
        cross: 0.0,
        rounds: 3,
        round_duration: Duration::from_millis(500),
        grow_events: 0,
        database_url: None,
    });
    let r = run(options(url(&app), scenario)).await;
    assert_clean(&r);
    assert_eq!(r.rounds.len(), 3);
    assert!(r
        .rounds
        .iter()
        .all(|round| round.sent == 20 && round.delivered == round.acked && round.lost == 0));
    let m = r.messages.as_ref().unwrap();
    assert_eq!(
        m.delivered,
        r.rounds.iter().map(|x| x.delivered).sum::<u64>()
    );
    assert!(r.last_to_first_p99.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growth_grows_the_database_between_rounds_and_counts_its_scans() {
    let app = server().await;
    let scenario = Scenario::Growth(GrowthOptions {
        rate: 40.0,
        pairs: 2,
        cross: 0.0,
        rounds: 2,
        round_duration: Duration::from_millis(500),
        grow_events: 20_000,
        database_url: Some(app.db.url.clone()),
    });
    let r = run(options(url(&app), scenario)).await;
    assert_clean(&r);
    assert_eq!(r.rounds.len(), 2);
    let (first, second) = (&r.rounds[0], &r.rounds[1]);
    let grown = second.event_rows.unwrap() - first.event_rows.unwrap();
    // The growth, plus what the first round's load wrote (two events per message and
    // the conversation events of its warm-up).
    assert!(grown >= 20_000 + 2 * first.acked as i64, "{grown}");
    for round in &r.rounds {
        let scans = round.seq_scans.as_ref().unwrap();
        assert_eq!(scans.len(), 5, "{scans:?}");
        assert!(round.sent == 20 && round.delivered == round.acked);
    }
    let m = r.messages.as_ref().unwrap();
    assert_eq!(m.sent, 40);
    assert_eq!(m.delivered, m.acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_counts_every_handshake() {
    let app = server().await;
    let scenario = Scenario::Connect(ConnectOptions {
        count: 100,
        concurrency: 10,
    });
    let r = run(options(url(&app), scenario)).await;
    assert_clean(&r);
    let h = r.handshakes.as_ref().unwrap();
    assert_eq!((h.attempted, h.succeeded, h.failed), (100, 100, 0));
    assert_eq!(r.latency("handshake").unwrap().count, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_its_sockets_and_reads_the_server_memory() {
    let app = server().await;
    let scenario = Scenario::Idle(IdleOptions {
        connections: 50,
        hold: Duration::from_secs(1),
        concurrency: 25,
    });
    let r = run(options(url(&app), scenario)).await;
    assert_clean(&r);
    let idle = r.idle.as_ref().unwrap();
    assert_eq!((idle.opened, idle.failed, idle.dropped), (50, 0, 0));
    assert_eq!(idle.server_connections, Some(50));
    // The server runs in this test's process, on this machine.
    assert_eq!(idle.rss_source, "proc");
    assert_eq!(idle.servers.len(), 1);
    assert_eq!(idle.servers[0].pid, std::process::id());
    assert!(idle.rss_per_connection_bytes.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_fail_the_run_and_are_counted_by_code() {
    // The default limit, 20 per second per socket: one sender at 100/s is refused.
    let app = TestApp::spawn().await;
    let r = run(options(url(&app), dm(100.0, 1, 0.0, 1))).await;
    assert!(!r.passed);
    let refused = r.errors.replies.get("rate_limited").copied().unwrap_or(0);
    assert!(refused > 0, "{:#?}", r.errors);
    let m = r.messages.as_ref().unwrap();
    assert_eq!(m.failed, refused);
    assert_eq!(m.acked + m.failed, m.sent);
    // Refused messages are not owed to anyone: nothing counts as lost.
    assert_eq!((m.lost, m.delivered), (0, m.acked));
}
