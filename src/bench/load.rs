//! The open-loop machinery that dm, growth and group share: the writer task that sends
//! each message when it is due, the readers of acks and of deliveries, the drain at the
//! end, and the count of what happened to every message; [`Phase`] starts and ends them.
//!
//! Each sender ("stream" of the [`Schedule`]) has a [`Track`]: one flag byte and one
//! delivery count per planned message, preallocated, written by its tasks with atomics.
//! A message's number is its `ref` and its `client_msg_id`, so replies and events map
//! back to it, and to its due time, without a lookup table. Latencies go into shared
//! histograms behind a std `Mutex`, held for one `record` and never across an `.await`.
//!
//! With `dm --changes`, some of a sender's messages are edits, reactions and deletions of
//! the send before them ([`changes`](super::changes)): the track says which, keeps each
//! send's cseq from its ack for the change that names it, and their latencies go into
//! histograms of their own, so that the sends' figures stay those of sends alone.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::SinkExt;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::changes::{Kind, Mix};
use super::client::{close_sink, read_frames, Conn, SeqCheck, Sink, Stream, SETUP_TIMEOUT};
use super::progress::{self, Progress, Shows};
use super::report::{histogram, Errors, Latency, Messages, Report, Round};
use super::schedule::{self, Schedule};
use super::{micros, Ctx, Live};

/// The body of every measured message: about the size of a chat line.
pub(crate) const BODY: &str = "pgchat bench: a message about as long as a line of chat";

const SENT: u8 = 1;
const ACKED: u8 = 2;
const FAILED: u8 = 4;

/// What happened to each message of one sender.
pub(crate) struct Track {
    flags: Vec<AtomicU8>,
    /// Recipients that received the message (each counted once).
    deliveries: Vec<AtomicU32>,
    /// Which messages are changes of the send before them (none without `--changes`).
    pub(crate) mix: Mix,
    /// With changes: each send's cseq from its ack (0 until then, -1 if the ack had none),
    /// and the signal that another ack or refusal came.
    cseq: Vec<AtomicI64>,
    answered: Notify,
}

impl Track {
    pub(crate) fn new(count: u64, mix: Mix) -> Arc<Track> {
        let n = count as usize;
        let cseqs = if mix.active() { n } else { 0 };
        Arc::new(Track {
            flags: (0..n).map(|_| AtomicU8::new(0)).collect(),
            deliveries: (0..n).map(|_| AtomicU32::new(0)).collect(),
            mix,
            cseq: (0..cseqs).map(|_| AtomicI64::new(0)).collect(),
            answered: Notify::new(),
        })
    }

    /// The cseq of send `k` once it is acked; None if it was refused, its ack had no
    /// cseq, or no answer came within `within` (the change that needs it is not sent).
    async fn cseq_once_acked(&self, k: u64, within: Duration) -> Option<i64> {
        let deadline = Instant::now() + within;
        loop {
            let signal = self.answered.notified();
            tokio::pin!(signal);
            // Registered before looking, so that an answer in between is not missed.
            signal.as_mut().enable();
            let cseq = self.cseq[k as usize].load(Ordering::Acquire);
            if cseq != 0 {
                return (cseq > 0).then_some(cseq);
            }
            if self.flags[k as usize].load(Ordering::Relaxed) & FAILED != 0 {
                return None;
            }
            tokio::time::timeout_at(deadline, signal).await.ok()?;
        }
    }

    fn len(&self) -> u64 {
        self.flags.len() as u64
    }

    fn mark(&self, k: u64, flag: u8) -> u8 {
        self.flags[k as usize].fetch_or(flag, Ordering::Relaxed)
    }
}

/// Latency histograms of a run, per round, plus a scenario's own (`extra`).
pub(crate) struct Recorder {
    pub(crate) ack: Vec<Histogram<u64>>,
    pub(crate) delivery: Vec<Histogram<u64>>,
    /// dm: delivery on the same worker, across workers; group: to the last recipient.
    pub(crate) extra: Vec<Histogram<u64>>,
    /// dm --changes: ack and delivery of each kind of change, by [`Kind::index`]. `ack`,
    /// `delivery` and `extra` then count the sends alone.
    pub(crate) change_ack: Vec<Histogram<u64>>,
    pub(crate) change_delivery: Vec<Histogram<u64>>,
    pub(crate) last_delivery: Option<Instant>,
}

impl Recorder {
    pub(crate) fn new(rounds: usize, extra: usize) -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder {
            ack: (0..rounds).map(|_| histogram()).collect(),
            delivery: (0..rounds).map(|_| histogram()).collect(),
            extra: (0..extra).map(|_| histogram()).collect(),
            change_ack: Kind::CHANGES.iter().map(|_| histogram()).collect(),
            change_delivery: Kind::CHANGES.iter().map(|_| histogram()).collect(),
            last_delivery: None,
        }))
    }

    pub(crate) fn merged(hs: &[Histogram<u64>]) -> Histogram<u64> {
        let mut all = histogram();
        for h in hs {
            all.add(h).expect("histograms of the same bounds add up");
        }
        all
    }
}

/// What every task of a run shares.
#[derive(Clone)]
pub(crate) struct Run {
    pub(crate) sched: Schedule,
    pub(crate) rec: Arc<Mutex<Recorder>>,
    pub(crate) ctx: Arc<Ctx>,
    /// Stops the readers once the drain is over.
    pub(crate) stop: CancellationToken,
}

/// Writes the messages of sender `stream`, each when it is due, never waiting for an
/// ack, except that a change waits for the ack of the send it changes if that has not
/// come yet. `make(k, target)` is the frame of message `k`; `target` is, for a change, the
/// cseq of the send before it. Returns the sink, still open.
pub(crate) async fn write_messages(
    mut sink: Sink,
    mut due: mpsc::UnboundedReceiver<u64>,
    track: Arc<Track>,
    run: Run,
    make: impl Fn(u64, Option<i64>) -> String,
) -> Sink {
    // The clock ([`schedule::tick`]) says when each message is due.
    while let Some(k) = due.recv().await {
        let target = match track.mix.kind(k) {
            Kind::Send => None,
            // Its send was refused or never answered: the change is never sent, and the
            // run counts it so.
            _ => match track.cseq_once_acked(k - 1, SETUP_TIMEOUT).await {
                Some(cseq) => Some(cseq),
                None => continue,
            },
        };
        // Marked first: on a multi-thread runtime the ack may be read before send returns.
        track.mark(k, SENT);
        if sink.send(Message::text(make(k, target))).await.is_err() {
            // The socket is gone (its reader counts the close): the rest is never sent.
            track.flags[k as usize].fetch_and(!SENT, Ordering::Relaxed);
            break;
        }
        Live::add(&run.ctx.live.sent, 1);
    }
    sink
}

/// A measured phase under way: what its tasks share, and the tasks to wait for at its end.
/// dm and group start and end it alike; only who sends to whom differs, so a scenario
/// says that with [`Phase::sender`] and [`Phase::recipient`] and nothing else.
pub(crate) struct Phase {
    run: Run,
    progress: Progress,
    /// One receiver per sender, handed out in sender order.
    clock: std::vec::IntoIter<mpsc::UnboundedReceiver<u64>>,
    writers: Vec<JoinHandle<Sink>>,
    readers: Vec<JoinHandle<ReaderEnd>>,
    /// The recipients' sinks (they only read, but stay open to the end), and the senders'
    /// once their writers hand them back.
    sinks: Vec<Sink>,
    tracks: Vec<Arc<Track>>,
}

impl Phase {
    /// Starts the progress line (`planned` long) and the clock of `sched`: the phase is
    /// measured from here, so everything it needs is set up before.
    pub(crate) fn start(
        ctx: &Arc<Ctx>,
        sched: Schedule,
        rec: &Arc<Mutex<Recorder>>,
        planned: Duration,
    ) -> Phase {
        let stop = CancellationToken::new();
        let run = Run {
            sched,
            rec: rec.clone(),
            ctx: ctx.clone(),
            stop: stop.clone(),
        };
        let progress = Progress::start(ctx, sched.start, Some(planned), Shows::Messages);
        ctx.set_phase(progress::RUN);
        let clock = schedule::tick(sched, stop).into_iter();
        Phase {
            run,
            progress,
            clock,
            writers: Vec::new(),
            readers: Vec::new(),
            sinks: Vec::new(),
            tracks: Vec::new(),
        }
    }

    /// Starts sender `index` on `conn`: its writer (each message when the clock says it is
    /// due; `make(k, target)` is message `k`'s frame, and `mix` says which messages are
    /// changes, of which send `target`) and the reader of its acks. Returns the track of
    /// its messages, which its recipients' readers share.
    pub(crate) fn sender(
        &mut self,
        index: usize,
        conn: Conn,
        mix: Mix,
        make: impl Fn(u64, Option<i64>) -> String + Send + 'static,
    ) -> Arc<Track> {
        let track = Track::new(self.run.sched.count(index), mix);
        self.tracks.push(track.clone());
        let (sink, stream, seq) = conn.split();
        let due = self.clock.next().expect("a clock per sender");
        let run = &self.run;
        let writer = tokio::spawn(write_messages(sink, due, track.clone(), run.clone(), make));
        let acks = tokio::spawn(read_acks(stream, seq, index, track.clone(), run.clone()));
        self.writers.push(writer);
        self.readers.push(acks);
        track
    }

    /// Starts a reader of the messages sender `index` sends to `conn`.
    pub(crate) fn recipient(
        &mut self,
        index: usize,
        conn: Conn,
        track: Arc<Track>,
        who: Recipient,
    ) {
        let (sink, stream, seq) = conn.split();
        self.sinks.push(sink);
        let reader = read_deliveries(stream, seq, index, track, who, self.run.clone());
        self.readers.push(tokio::spawn(reader));
    }

    /// Ends the phase: waits for the last send, drains (each acked message owes
    /// `recipients` deliveries), stops the readers and closes every socket. Returns the
    /// report of `scenario` with its counts, rates, errors and stream checks (the
    /// latencies are the scenario's to add), and each round's counts.
    pub(crate) async fn finish(
        self,
        scenario: &'static str,
        recipients: u64,
    ) -> (Report, Vec<Messages>) {
        let Phase {
            run,
            progress,
            writers,
            readers,
            mut sinks,
            tracks,
            ..
        } = self;
        for w in join_all(writers).await {
            sinks.push(w.expect("writer task"));
        }
        let sends_done = Instant::now();
        run.ctx.set_phase(progress::DRAIN);
        drain(&run.ctx, recipients).await;
        let ended = Instant::now();
        run.stop.cancel();

        let mut report = Report::new(scenario);
        let duplicates = collect(readers, &mut report).await;
        join_all(sinks.into_iter().map(close_sink)).await;
        progress.finish().await;

        let sched = &run.sched;
        let rounds = tally(sched, &tracks, recipients);
        let mut messages = total(&rounds);
        messages.duplicates = duplicates;
        let last_delivery = run.rec.lock().unwrap().last_delivery;
        rates(&mut messages, sched, sends_done, last_delivery);
        report.elapsed_s = (ended - sched.start).as_secs_f64();
        report.messages = Some(messages);
        (report, rounds)
    }
}

/// Waits for the readers (stopped after the drain) and adds their errors and stream
/// checks to `report`. Returns the duplicate deliveries they saw.
async fn collect(readers: Vec<JoinHandle<ReaderEnd>>, report: &mut Report) -> u64 {
    let mut duplicates = 0;
    for r in join_all(readers).await {
        let r = r.expect("reader task");
        report.errors.merge(r.errors);
        report.stream.add(&r.seq);
        duplicates += r.duplicates;
    }
    duplicates
}

/// What a reader hands back when it stops.
pub(crate) struct ReaderEnd {
    pub(crate) errors: Errors,
    pub(crate) seq: SeqCheck,
    pub(crate) duplicates: u64,
}

impl ReaderEnd {
    /// The close that ended the reader (if the server closed) and the `strays` frames it
    /// could not place (`stray`: what they were) count as errors.
    fn new(
        mut errors: Errors,
        seq: SeqCheck,
        ended: Option<String>,
        strays: u64,
        stray: &str,
        duplicates: u64,
    ) -> ReaderEnd {
        if let Some(kind) = ended {
            errors.close(&kind);
        }
        for _ in 0..strays {
            errors.other(stray);
        }
        ReaderEnd {
            errors,
            seq,
            duplicates,
        }
    }
}

/// Reads a sender's socket: the replies to its messages (send → ack latency, and change
/// → ack for changes). With changes, a send's ack gives its cseq to the change after it.
pub(crate) async fn read_acks(
    mut stream: Stream,
    mut seq: SeqCheck,
    index: usize,
    track: Arc<Track>,
    run: Run,
) -> ReaderEnd {
    let Run {
        sched,
        rec,
        ctx,
        stop,
    } = run;
    let mut errors = Errors::default();
    let mut strays = 0;
    let ended = read_frames(&mut stream, &mut seq, &mut errors, &stop, |f, now| {
        let ok = match f.kind {
            "ok" => true,
            "error" => false,
            _ => return,
        };
        let k = match f.reference {
            Some(r) if r >= 0 && (r as u64) < track.len() => r as u64,
            _ => {
                strays += 1;
                return;
            }
        };
        let kind = track.mix.kind(k);
        if ok && kind == Kind::Send && track.mix.active() {
            // Stored before the flag: the writer of the change looks at the cseq only.
            let cseq = f.message_cseq().filter(|c| *c > 0).unwrap_or(-1);
            track.cseq[k as usize].store(cseq, Ordering::Release);
        }
        let before = track.mark(k, if ok { ACKED } else { FAILED });
        if track.mix.active() {
            track.answered.notify_waiters();
        }
        if before & (ACKED | FAILED) != 0 {
            strays += 1;
        } else if ok {
            let us = micros(now.saturating_duration_since(sched.due(index, k)));
            let mut r = rec.lock().unwrap();
            match kind {
                Kind::Send => r.ack[sched.round_of(index, k)].saturating_record(us),
                change => r.change_ack[change.index()].saturating_record(us),
            }
            Live::add(&ctx.live.acked, 1);
        } else {
            Live::add(&ctx.live.failed, 1);
        }
    })
    .await;
    ReaderEnd::new(
        errors,
        seq,
        ended,
        strays,
        "reply to no message of this run",
        0,
    )
}

/// Where a recipient records a delivery besides the per-round histogram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recipient {
    /// How many recipients each message has (the last one completes it).
    pub(crate) of: u32,
    /// An `extra` histogram for every delivery (dm: same or cross worker).
    pub(crate) each: Option<usize>,
    /// An `extra` histogram for the last recipient of a message (group).
    pub(crate) last: Option<usize>,
}

/// Reads a recipient's socket: the `message` events from sender `index`, and with changes
/// the `message_edited`, `reaction` and `message_deleted` events of its changes, each known
/// by the cseq of the send it changed.
pub(crate) async fn read_deliveries(
    mut stream: Stream,
    mut seq: SeqCheck,
    index: usize,
    track: Arc<Track>,
    who: Recipient,
    run: Run,
) -> ReaderEnd {
    let Run {
        sched,
        rec,
        ctx,
        stop,
    } = run;
    let mut errors = Errors::default();
    // This socket's own record of what it has seen: a bit per message.
    let mut seen = vec![0u64; track.len().div_ceil(64) as usize];
    // With changes: by cseq, 1 + the number of the send stored there, which is also the
    // number of the change that may name it (0: not one of this run's sends).
    let changes = track.mix.active();
    let mut by_cseq = vec![0u64; if changes { track.len() as usize + 2 } else { 0 }];
    let (mut duplicates, mut strays) = (0u64, 0u64);
    let ended = read_frames(&mut stream, &mut seq, &mut errors, &stop, |f, now| {
        let k = if f.kind == "message" {
            let Some(id) = f.client_msg_id() else { return };
            // The warm-up message ("w") came before the measured phase.
            let Ok(k) = id.parse::<u64>() else { return };
            if k >= track.len() {
                strays += 1;
                return;
            }
            if let Some(slot) = f.message_cseq().and_then(|c| by_cseq.get_mut(c as usize)) {
                *slot = k + 1;
            }
            k
        } else if let (true, Some(event)) = (changes, Kind::of_event(f.kind)) {
            let named = f.message_cseq().or(f.cseq);
            let k = named.and_then(|c| by_cseq.get(c as usize)).copied();
            match k {
                Some(k) if k > 0 && k < track.len() && track.mix.kind(k) == event => k,
                _ => {
                    strays += 1;
                    return;
                }
            }
        } else {
            return;
        };
        let (word, bit) = ((k / 64) as usize, 1u64 << (k % 64));
        if seen[word] & bit != 0 {
            duplicates += 1;
            return;
        }
        seen[word] |= bit;
        let nth = track.deliveries[k as usize].fetch_add(1, Ordering::Relaxed) + 1;
        let us = micros(now.saturating_duration_since(sched.due(index, k)));
        {
            let mut r = rec.lock().unwrap();
            match track.mix.kind(k) {
                Kind::Send => {
                    r.delivery[sched.round_of(index, k)].saturating_record(us);
                    if let Some(h) = who.each {
                        r.extra[h].saturating_record(us);
                    }
                    if let (Some(h), true) = (who.last, nth == who.of) {
                        r.extra[h].saturating_record(us);
                    }
                }
                change => r.change_delivery[change.index()].saturating_record(us),
            }
            r.last_delivery = Some(r.last_delivery.map_or(now, |t| t.max(now)));
        }
        Live::add(&ctx.live.delivered, 1);
    })
    .await;
    ReaderEnd::new(
        errors,
        seq,
        ended,
        strays,
        "message or change not sent by this run",
        duplicates,
    )
}

/// After the last send: waits until every sent message is answered and every acked one
/// delivered `recipients` times, or until the drain period is over.
pub(crate) async fn drain(ctx: &Ctx, recipients: u64) {
    let deadline = Instant::now() + ctx.drain;
    let l = &ctx.live;
    while Instant::now() < deadline {
        let (sent, acked, failed, delivered) = (
            Live::get(&l.sent),
            Live::get(&l.acked),
            Live::get(&l.failed),
            Live::get(&l.delivered),
        );
        if acked + failed >= sent && delivered >= acked * recipients {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Counts, per round, what happened to every planned message of these senders.
pub(crate) fn tally(sched: &Schedule, tracks: &[Arc<Track>], recipients: u64) -> Vec<Messages> {
    let mut rounds = vec![
        Messages {
            recipients,
            ..Default::default()
        };
        sched.rounds()
    ];
    for (i, t) in tracks.iter().enumerate() {
        for k in 0..t.len() {
            let m = &mut rounds[sched.round_of(i, k)];
            let f = t.flags[k as usize].load(Ordering::Relaxed);
            let got = u64::from(t.deliveries[k as usize].load(Ordering::Relaxed));
            m.planned += 1;
            m.sent += u64::from(f & SENT != 0);
            m.failed += u64::from(f & FAILED != 0);
            m.delivered += got;
            if f & ACKED != 0 {
                m.acked += 1;
                m.expected += recipients;
                m.lost += recipients.saturating_sub(got);
            } else if f & SENT != 0 && f & FAILED == 0 {
                m.unanswered += 1;
            }
        }
    }
    rounds
}

/// The totals over all rounds.
pub(crate) fn total(rounds: &[Messages]) -> Messages {
    let mut t = Messages {
        recipients: rounds.first().map_or(0, |r| r.recipients),
        ..Default::default()
    };
    for r in rounds {
        t.planned += r.planned;
        t.sent += r.sent;
        t.acked += r.acked;
        t.failed += r.failed;
        t.unanswered += r.unanswered;
        t.delivered += r.delivered;
        t.expected += r.expected;
        t.lost += r.lost;
    }
    t
}

/// One row per round: its counts and its latencies.
pub(crate) fn round_rows(rounds: &[Messages], rec: &Recorder) -> Vec<Round> {
    rounds
        .iter()
        .enumerate()
        .map(|(i, m)| Round {
            round: i + 1,
            event_rows: None,
            seq_scans: None,
            sent: m.sent,
            acked: m.acked,
            delivered: m.delivered,
            lost: m.lost,
            ack: Latency::of("send → ack", &rec.ack[i]),
            delivery: Latency::of("send → delivery", &rec.delivery[i]),
        })
        .collect()
}

/// Messages and deliveries per second, from the first due time to the last send (for
/// sends) and to the last delivery (for deliveries), but never over less than the
/// scheduled length of the run.
pub(crate) fn rates(
    m: &mut Messages,
    sched: &Schedule,
    sends_done: Instant,
    last_delivery: Option<Instant>,
) {
    let per_s = |n: u64, until: Instant| {
        let s = until
            .max(sched.end())
            .saturating_duration_since(sched.start)
            .as_secs_f64();
        (n as f64 / s * 10.0).round() / 10.0
    };
    m.sent_per_s = per_s(m.sent, sends_done);
    m.delivered_per_s = last_delivery.map_or(0.0, |t| per_s(m.delivered, t));
}
