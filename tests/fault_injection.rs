//! Faults under load. Each test starts its own private PostgreSQL cluster (never the
//! machine's server) and `pgchat serve --workers 3` on it, runs steady DM and group
//! traffic from 12 users spread over the 3 workers (so every conversation crosses
//! workers), injects one fault, lets the load go on, then stops it: every client
//! reconnects and resumes from the last seq it saw, and the independent checker
//! (tests/common/checker.rs) judges from what the clients sent, were acked and received.
//! Finally the acked messages are compared with what the database holds.

mod common;

use std::time::Duration;

use common::checker::Checker;
use common::cluster::Cluster;
use common::load::{rig, Stall, GROUP, USERS};
use common::pg::Stop;
use nix::sys::signal::Signal;

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
    restart_under_load("PostgreSQL fast restart", Stop::Fast).await;
}

#[tokio::test]
async fn postgres_restarted_in_immediate_mode_under_load_loses_and_duplicates_nothing() {
    restart_under_load("PostgreSQL immediate restart", Stop::Immediate).await;
}

/// Stops PostgreSQL in `mode` during the load, restarts it a second later, and checks
/// that every listener reconnected.
async fn restart_under_load(what: &str, mode: Stop) {
    let rig = rig(&[]).await;
    let (specs, checker) = rig.standard_load().await;
    rig.under_load(what, specs, checker, async {
        rig.pg.stop(mode).await;
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
        let killed = common::terminate_listeners(&admin).await;
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

/// The checker itself: given observations that break the guarantee, it says so. (Without
/// this, a checker that accepts everything would make every test above pass.)
#[test]
fn the_checker_flags_loss_duplicates_gaps_disorder_and_phantoms() {
    use common::checker::Target;
    use serde_json::json;
    let msg = |seq: i64, id: i64, cseq: i64, sender: &str, cmid: &str| {
        json!({"type": "message", "seq": seq, "message": {"id": id, "conversation": "d1",
               "cseq": cseq, "sender": {"id": sender}, "body": cmid, "client_msg_id": cmid}})
    };
    let ack = |id: i64, cseq: i64| json!({"id": id, "conversation": "d1", "cseq": cseq});
    let to_b = Target::User("b".into());
    // A clean run: a sends two messages to b; both streams have them; passes.
    let clean = || {
        let c = Checker::new();
        for (i, cmid) in ["m1", "m2"].iter().enumerate() {
            c.sent("a", cmid, &to_b, cmid);
            c.acked("a", cmid, &ack(i as i64 + 1, i as i64 + 1));
        }
        c
    };
    let c = clean();
    for user in ["a", "b"] {
        let conn = c.connected(user);
        c.received(conn, &msg(1, 1, 1, "a", "m1"));
        c.received(conn, &msg(2, 2, 2, "a", "m2"));
        c.received(conn, &msg(2, 2, 2, "a", "m2")); // a duplicate by seq: dropped
    }
    let counts = c.verify().expect("a clean run passes");
    assert_eq!((counts.delivered, counts.duplicates_dropped_by_seq), (4, 2));

    let fails = |c: Checker, what: &str| {
        let report = c.verify().expect_err(what);
        assert!(report.contains(what), "expected {what:?} in:\n{report}");
    };
    // b never gets m2.
    let c = clean();
    let (a, b) = (c.connected("a"), c.connected("b"));
    for (conn, n) in [(a, 2), (b, 1)] {
        for i in 1..=n {
            c.received(conn, &msg(i, i, i, "a", &format!("m{i}")));
        }
    }
    fails(c, "b: never received message 2");
    // b gets m2 twice, under two seqs.
    let c = clean();
    let (a, b) = (c.connected("a"), c.connected("b"));
    for conn in [a, b] {
        c.received(conn, &msg(1, 1, 1, "a", "m1"));
        c.received(conn, &msg(2, 2, 2, "a", "m2"));
    }
    c.received(b, &msg(3, 2, 2, "a", "m2"));
    fails(c, "b: message 2 delivered at seq 2 and 3");
    // b's stream skips a seq, and a live connection delivers out of order.
    let c = clean();
    let (a, b) = (c.connected("a"), c.connected("b"));
    c.resumed(b, 0);
    for conn in [a, b] {
        c.received(conn, &msg(1, 1, 1, "a", "m1"));
    }
    c.received(a, &msg(2, 2, 2, "a", "m2"));
    c.received(b, &msg(3, 2, 2, "a", "m2"));
    fails(c, "b: seq 2..2 missing");
    // A session started after 1 that gets seq 3 before seq 2 (what resuming below a
    // session's live position once did): each event must be the next one.
    let c = clean();
    let a = c.connected("a");
    for i in 1..=2 {
        c.received(a, &msg(i, i, i, "a", &format!("m{i}")));
    }
    let b = c.connected_after("b", 0);
    c.received(b, &msg(2, 2, 2, "a", "m2"));
    c.received(b, &msg(1, 1, 1, "a", "m1"));
    fails(
        c,
        "connection 2 got seq 2 after 0 (out of order on one session)",
    );
    // A send retried after `unavailable` that became two messages.
    let c = clean();
    c.sent("a", "m3", &to_b, "m3");
    c.unavailable("a", "m3");
    c.sent("a", "m3", &to_b, "m3");
    c.acked("a", "m3", &ack(3, 3));
    c.acked("a", "m3", &ack(4, 4));
    fails(c, "a/m3: acked as different messages");
    // A message nobody sent, and a send never acked.
    let c = clean();
    c.sent("a", "m9", &to_b, "m9");
    let b = c.connected("b");
    c.received(b, &msg(1, 7, 1, "x", "zz"));
    fails(c, "b: message 7 that no client sent");
    let c = clean();
    c.sent("a", "m9", &to_b, "m9");
    fails(c, "a/m9: never acked");
}
