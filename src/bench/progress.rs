//! The progress line on stderr: one line, redrawn four times a second with `\r`, only
//! when stderr is a terminal and `--quiet` is not given.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Ctx, Live};

/// What the line counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Shows {
    /// sent, acked, delivered; the rate is messages sent per second.
    Messages,
    /// handshakes done (acked) and failed, of `total`.
    Handshakes(u64),
    /// sockets opened (acked) and failed, of `total`.
    Sockets(u64),
}

/// The phase the line names; set by the scenario as it goes.
pub(crate) const SETUP: u8 = 0;
pub(crate) const RUN: u8 = 1;
pub(crate) const DRAIN: u8 = 2;
pub(crate) const HOLD: u8 = 3;

pub(crate) struct Progress {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts drawing; the clock counts from `since` (it may lie ahead), up to `total`, the
    /// planned length of the measured phase if it has one.
    pub(crate) fn start(
        ctx: &Arc<Ctx>,
        since: Instant,
        total: Option<Duration>,
        shows: Shows,
    ) -> Progress {
        let stop = CancellationToken::new();
        if ctx.quiet || !std::io::stderr().is_terminal() {
            return Progress { stop, task: None };
        }
        let ctx = ctx.clone();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let start = since;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            // The rate over the last second: four samples of (time, count).
            let mut samples = std::collections::VecDeque::with_capacity(5);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let now = Instant::now();
                let line = line(
                    &ctx.live,
                    &ctx.phase,
                    shows,
                    now - start,
                    total,
                    &mut samples,
                    now,
                );
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{line}\x1b[K");
                let _ = err.flush();
            }
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        });
        Progress {
            stop,
            task: Some(task),
        }
    }

    /// Erases the line.
    pub(crate) async fn finish(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

fn line(
    live: &Live,
    phase: &AtomicU8,
    shows: Shows,
    elapsed: Duration,
    total: Option<Duration>,
    samples: &mut std::collections::VecDeque<(Instant, u64)>,
    now: Instant,
) -> String {
    let phase = match phase.load(Ordering::Relaxed) {
        SETUP => "setup",
        RUN => "running",
        DRAIN => "draining",
        _ => "holding",
    };
    let clock = match total {
        Some(t) => format!("{:>6.1}s/{:.0}s", elapsed.as_secs_f64(), t.as_secs_f64()),
        None => format!("{:>6.1}s", elapsed.as_secs_f64()),
    };
    let (sent, acked, failed, delivered) = (
        Live::get(&live.sent),
        Live::get(&live.acked),
        Live::get(&live.failed),
        Live::get(&live.delivered),
    );
    let counted = match shows {
        Shows::Messages => sent,
        Shows::Handshakes(_) | Shows::Sockets(_) => acked + failed,
    };
    samples.push_back((now, counted));
    if samples.len() > 5 {
        samples.pop_front();
    }
    let rate = match (samples.front(), samples.back()) {
        (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => (n1 - n0) as f64 / (*t1 - *t0).as_secs_f64(),
        _ => 0.0,
    };
    match shows {
        Shows::Messages => format!(
            "[{clock}] {phase}: sent {sent}  acked {acked}  delivered {delivered}  errors {failed}  {rate:.0}/s"
        ),
        Shows::Handshakes(n) => format!(
            "[{clock}] {phase}: {acked} of {n} handshakes, {failed} failed  {rate:.0}/s"
        ),
        Shows::Sockets(n) => format!(
            "[{clock}] {phase}: {acked} of {n} sockets open, {failed} failed  {rate:.0}/s"
        ),
    }
}
