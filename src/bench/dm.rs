//! `dm`: pairs of sockets, each sender writing direct messages to its own receiver, open
//! loop. Measures send → ack (the `ok` reply) and send → delivery (the receiver's
//! `message` event), the latter split by whether the pair shares a worker.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use super::client::Conn;
use super::load::{self, Phase, Recipient, Recorder, BODY};
use super::pool::{self, Pair};
use super::report::{Latency, Placement, Report};
use super::schedule::Schedule;
use super::{BenchError, Ctx, DmOptions};

/// The warm-up message's ref; measured messages have refs 0, 1, 2, …
const WARM_UP_REF: i64 = -1;
/// The `extra` histograms: delivery within a worker, and across workers.
const SAME: usize = 0;
const CROSS: usize = 1;

/// The load that dm runs once and growth runs in rounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) rate: f64,
    pub(crate) pairs: usize,
    pub(crate) cross: f64,
    pub(crate) round: Duration,
    pub(crate) rounds: usize,
}

pub(crate) async fn run(ctx: &Arc<Ctx>, o: &DmOptions) -> Result<Report, BenchError> {
    let load = Load {
        rate: o.rate,
        pairs: o.pairs,
        cross: o.cross,
        round: o.duration,
        rounds: 1,
    };
    let mut report = run_rounds(ctx, "dm", load).await?;
    // One round: its row would repeat the totals.
    report.rounds.clear();
    Ok(report)
}

/// Runs `load` for its rounds back to back on the same sockets.
pub(crate) async fn run_rounds(
    ctx: &Arc<Ctx>,
    scenario: &'static str,
    load: Load,
) -> Result<Report, BenchError> {
    let pairs = warm_pairs(ctx, load).await?;
    let (n, cross_pairs) = (pairs.len(), pairs.iter().filter(|p| p.cross).count());
    // Every writer starts from the same instant, a moment from now.
    let start = Instant::now() + Duration::from_millis(100);
    let sched = Schedule::new(start, n, load.rate, load.round, load.rounds);
    let rec = Recorder::new(load.rounds, 2);
    let mut phase = Phase::start(ctx, sched, &rec, load.round * load.rounds as u32);
    for (i, pair) in pairs.into_iter().enumerate() {
        start_pair(&mut phase, i, pair);
    }
    let (mut report, rounds) = phase.finish(scenario, 1).await;

    let rec = rec.lock().unwrap();
    report.latency = latencies(&rec, n, cross_pairs);
    report.rounds = load::round_rows(&rounds, &rec);
    report.placement = Some(Placement {
        same_worker_pairs: n - cross_pairs,
        cross_worker_pairs: cross_pairs,
    });
    Ok(report)
}

/// Opens the pairs and warms each up (see [`warm_up`]). One that fails fails the run: a
/// pair that cannot deliver one message would only measure its own failure. The pairs are
/// closed then, since no phase will close them.
async fn warm_pairs(ctx: &Arc<Ctx>, load: Load) -> Result<Vec<Pair>, BenchError> {
    let mut pairs = pool::pairs(ctx, load.pairs, load.cross).await?;
    let warm = join_all(pairs.iter_mut().map(warm_up)).await;
    if let Some(Err(e)) = warm.into_iter().find(Result::is_err) {
        join_all(
            pairs
                .into_iter()
                .flat_map(|p| [p.sender.close(), p.receiver.close()]),
        )
        .await;
        return Err(e);
    }
    Ok(pairs)
}

/// Starts pair `i`: its sender writes direct messages to its receiver, whose deliveries
/// also go into the histogram of their placement (within a worker or across workers).
fn start_pair(phase: &mut Phase, i: usize, pair: Pair) {
    let to = pair.receiver.user.clone();
    let make = move |k: u64| {
        format!(r#"{{"type":"send","to":"{to}","body":"{BODY}","client_msg_id":"{k}","ref":{k}}}"#)
    };
    let track = phase.sender(i, pair.sender, make);
    let who = Recipient {
        of: 1,
        each: Some(if pair.cross { CROSS } else { SAME }),
        last: None,
    };
    phase.recipient(i, pair.receiver, track, who);
}

/// The latency rows over all rounds. Delivery is split by placement only when the run had
/// pairs of both kinds: with one kind the split would repeat the total.
fn latencies(rec: &Recorder, pairs: usize, cross_pairs: usize) -> Vec<Latency> {
    let mut rows = vec![
        Latency::of("send → ack", &Recorder::merged(&rec.ack)),
        Latency::of("send → delivery", &Recorder::merged(&rec.delivery)),
    ];
    if cross_pairs > 0 && cross_pairs < pairs {
        rows.push(Latency::of("  within a worker", &rec.extra[SAME]));
        rows.push(Latency::of("  across workers", &rec.extra[CROSS]));
    }
    rows
}

/// One message per pair before the measured phase: it creates the direct conversation
/// (both users get a `conversation` event first), and shows the receiver is listening.
async fn warm_up(pair: &mut Pair) -> Result<(), BenchError> {
    let to = &pair.receiver.user;
    let text = format!(
        r#"{{"type":"send","to":"{to}","body":"warm-up","client_msg_id":"w","ref":{WARM_UP_REF}}}"#
    );
    let receiver: &mut Conn = &mut pair.receiver;
    let (ack, delivery) = tokio::join!(
        pair.sender.request(text, WARM_UP_REF),
        receiver.wait_for("the warm-up message", |f, _| {
            f.kind == "message" && f.client_msg_id() == Some("w")
        })
    );
    ack?;
    delivery?;
    Ok(())
}
