//! `dm`: pairs of sockets, each sender writing direct messages to its own receiver, open
//! loop. Measures send → ack (the `ok` reply) and send → delivery (the receiver's
//! `message` event), the latter split by whether the pair shares a worker. With
//! `--changes F`, a fraction F of each sender's messages are edits, reactions and
//! deletions of its send just before ([`changes`](super::changes)), each measured from
//! its due time to its ack and to the receiver's event, apart from the sends.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use tokio::time::Instant;

use super::changes::{self, Kind, Mix};
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
    /// The fraction of messages that are changes (0: sends only).
    pub(crate) changes: f64,
}

pub(crate) async fn run(ctx: &Arc<Ctx>, o: &DmOptions) -> Result<Report, BenchError> {
    let load = Load {
        rate: o.rate,
        pairs: o.pairs,
        cross: o.cross,
        round: o.duration,
        rounds: 1,
        changes: o.changes,
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
    let (n, cross_pairs) = (pairs.len(), pairs.iter().filter(|(p, _)| p.cross).count());
    // Every writer starts from the same instant, a moment from now.
    let start = Instant::now() + Duration::from_millis(100);
    let sched = Schedule::new(start, n, load.rate, load.round, load.rounds);
    let rec = Recorder::new(load.rounds, 2);
    let mut phase = Phase::start(ctx, sched, &rec, load.round * load.rounds as u32);
    for (i, (pair, conversation)) in pairs.into_iter().enumerate() {
        let mix = Mix::new(load.changes, i);
        start_pair(&mut phase, i, pair, &conversation, mix);
    }
    let (mut report, rounds) = phase.finish(scenario, 1).await;

    let rec = rec.lock().unwrap();
    report.latency = latencies(&rec, n, cross_pairs, load.changes > 0.0);
    report.rounds = load::round_rows(&rounds, &rec);
    report.placement = Some(Placement {
        same_worker_pairs: n - cross_pairs,
        cross_worker_pairs: cross_pairs,
    });
    Ok(report)
}

/// Opens the pairs and warms each up (see [`warm_up`]); each comes with the id of its
/// conversation (a JSON string, quoted). One that fails fails the run: a pair that cannot
/// deliver one message would only measure its own failure. The pairs are closed then,
/// since no phase will close them.
async fn warm_pairs(ctx: &Arc<Ctx>, load: Load) -> Result<Vec<(Pair, String)>, BenchError> {
    let mut pairs = pool::pairs(ctx, load.pairs, load.cross).await?;
    let warm = join_all(pairs.iter_mut().map(warm_up)).await;
    let mut ids = Vec::with_capacity(pairs.len());
    for w in warm {
        match w {
            Ok(id) => ids.push(id),
            Err(e) => {
                join_all(
                    pairs
                        .into_iter()
                        .flat_map(|p| [p.sender.close(), p.receiver.close()]),
                )
                .await;
                return Err(e);
            }
        }
    }
    Ok(pairs.into_iter().zip(ids).collect())
}

/// Starts pair `i`: its sender writes direct messages to its receiver, whose deliveries
/// also go into the histogram of their placement (within a worker or across workers), and
/// changes them in `conversation` where `mix` says so.
fn start_pair(phase: &mut Phase, i: usize, pair: Pair, conversation: &str, mix: Mix) {
    let to = pair.receiver.user.clone();
    let conversation = conversation.to_string();
    let make = move |k: u64, target: Option<i64>| match (mix.kind(k), target) {
        (Kind::Send, _) | (_, None) => format!(
            r#"{{"type":"send","to":"{to}","body":"{BODY}","client_msg_id":"{k}","ref":{k}}}"#
        ),
        (change, Some(cseq)) => changes::frame(change, k, &conversation, cseq),
    };
    let track = phase.sender(i, pair.sender, mix, make);
    let who = Recipient {
        of: 1,
        each: Some(if pair.cross { CROSS } else { SAME }),
        last: None,
    };
    phase.recipient(i, pair.receiver, track, who);
}

/// The latency rows over all rounds. Delivery is split by placement only when the run had
/// pairs of both kinds: with one kind the split would repeat the total. With `changes`,
/// those rows are the sends', and each kind of change has its two rows after them.
fn latencies(rec: &Recorder, pairs: usize, cross_pairs: usize, changes: bool) -> Vec<Latency> {
    let mut rows = vec![
        Latency::of("send → ack", &Recorder::merged(&rec.ack)),
        Latency::of("send → delivery", &Recorder::merged(&rec.delivery)),
    ];
    if cross_pairs > 0 && cross_pairs < pairs {
        rows.push(Latency::of("  within a worker", &rec.extra[SAME]));
        rows.push(Latency::of("  across workers", &rec.extra[CROSS]));
    }
    if changes {
        for kind in Kind::CHANGES {
            let (ack, delivery) = (
                format!("{} → ack", kind.name()),
                format!("{} → delivery", kind.name()),
            );
            rows.push(Latency::of(&ack, &rec.change_ack[kind.index()]));
            rows.push(Latency::of(&delivery, &rec.change_delivery[kind.index()]));
        }
    }
    rows
}

/// One message per pair before the measured phase: it creates the direct conversation
/// (both users get a `conversation` event first), and shows the receiver is listening.
/// Returns the conversation's id as JSON (quoted), which changes name.
async fn warm_up(pair: &mut Pair) -> Result<String, BenchError> {
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
    let ack: Value = serde_json::from_str(&ack?).unwrap_or_default();
    delivery?;
    match &ack["message"]["conversation"] {
        Value::String(id) => Ok(Value::String(id.clone()).to_string()),
        _ => Err(BenchError::Setup(format!(
            "the warm-up's reply names no conversation: {ack}"
        ))),
    }
}
