//! `dm`: pairs of sockets, each sender writing direct messages to its own receiver, open
//! loop. Measures send → ack (the `ok` reply) and send → delivery (the receiver's
//! `message` event), the latter split by whether the pair shares a worker.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{close_sink, Conn};
use super::load::{self, Recipient, Recorder, Run, Track, BODY};
use super::pool::{self, Pair};
use super::progress::{self, Progress, Shows};
use super::report::{Latency, Placement, Report};
use super::schedule::{self, Schedule};
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
    let mut pairs = pool::pairs(ctx, load.pairs, load.cross).await?;
    let cross_pairs = pairs.iter().filter(|p| p.cross).count();
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

    // Every writer starts from the same instant, a moment from now.
    let start = Instant::now() + Duration::from_millis(100);
    let sched = Schedule::new(start, pairs.len(), load.rate, load.round, load.rounds);
    let rec = Recorder::new(load.rounds, 2);
    let stop = CancellationToken::new();
    let run = Run {
        sched,
        rec: rec.clone(),
        ctx: ctx.clone(),
        stop: stop.clone(),
    };
    let progress = Progress::start(
        ctx,
        start,
        Some(load.round * load.rounds as u32),
        Shows::Messages,
    );
    ctx.set_phase(progress::RUN);
    let mut clock = schedule::tick(sched, stop.clone()).into_iter();
    let (mut writers, mut readers, mut sinks, mut tracks) = (vec![], vec![], vec![], vec![]);
    for (i, pair) in pairs.into_iter().enumerate() {
        let track = Track::new(sched.count(i));
        tracks.push(track.clone());
        let to = pair.receiver.user.clone();
        let (s_sink, s_stream, s_seq) = pair.sender.split();
        let (r_sink, r_stream, r_seq) = pair.receiver.split();
        sinks.push(r_sink);
        let make = move |k: u64| {
            format!(
                r#"{{"type":"send","to":"{to}","body":"{BODY}","client_msg_id":"{k}","ref":{k}}}"#
            )
        };
        let (writer, acks) = load::spawn_sender(
            s_sink,
            s_stream,
            s_seq,
            clock.next().expect("a clock per sender"),
            i,
            &track,
            &run,
            make,
        );
        writers.push(writer);
        readers.push(acks);
        let who = Recipient {
            of: 1,
            each: Some(if pair.cross { CROSS } else { SAME }),
            last: None,
        };
        readers.push(tokio::spawn(load::read_deliveries(
            r_stream,
            r_seq,
            i,
            track,
            who,
            run.clone(),
        )));
    }
    for w in join_all(writers).await {
        sinks.push(w.expect("writer task"));
    }
    let sends_done = Instant::now();
    ctx.set_phase(progress::DRAIN);
    load::drain(ctx, 1).await;
    let ended = Instant::now();
    stop.cancel();

    let mut report = Report::new(scenario);
    let mut duplicates = 0;
    for r in join_all(readers).await {
        let r = r.expect("reader task");
        report.errors.merge(r.errors);
        report.stream.add(&r.seq);
        duplicates += r.duplicates;
    }
    join_all(sinks.into_iter().map(close_sink)).await;
    progress.finish().await;

    let rec = rec.lock().unwrap();
    let rounds = load::tally(&sched, &tracks, 1);
    let mut messages = load::total(&rounds);
    messages.duplicates = duplicates;
    load::rates(&mut messages, &sched, sends_done, rec.last_delivery);
    report.elapsed_s = (ended - start).as_secs_f64();
    report.latency = vec![
        Latency::of("send → ack", &Recorder::merged(&rec.ack)),
        Latency::of("send → delivery", &Recorder::merged(&rec.delivery)),
    ];
    if cross_pairs > 0 && cross_pairs < tracks.len() {
        report
            .latency
            .push(Latency::of("  within a worker", &rec.extra[SAME]));
        report
            .latency
            .push(Latency::of("  across workers", &rec.extra[CROSS]));
    }
    report.rounds = load::round_rows(&rounds, &rec);
    report.messages = Some(messages);
    report.placement = Some(Placement {
        same_worker_pairs: tracks.len() - cross_pairs,
        cross_worker_pairs: cross_pairs,
    });
    Ok(report)
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
