//! Open loop: every message has a due time fixed before the run starts, and its latency
//! counts from that time, not from when it was written. A server that stalls cannot hide
//! the queue it builds (no coordinated omission), and no sender ever waits for an ack.
//!
//! `streams` senders share `rate`: message number n of the whole run (n = 0, 1, …) is due
//! at `start + n / rate`, and belongs to sender `n % streams` as that sender's message
//! `n / streams`. So the senders interleave evenly, each at `rate / streams`.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    pub(crate) start: Instant,
    streams: u64,
    rate: f64,
    /// Messages in the whole run: those due before `start + length`.
    total: u64,
    /// Rounds of `round` each (growth); a plain run is one round as long as the run.
    round: Duration,
    rounds: usize,
}

impl Schedule {
    pub(crate) fn new(
        start: Instant,
        streams: usize,
        rate: f64,
        round: Duration,
        rounds: usize,
    ) -> Self {
        let length = round.as_secs_f64() * rounds as f64;
        Schedule {
            start,
            streams: streams as u64,
            rate,
            total: (length * rate).ceil() as u64,
            round,
            rounds,
        }
    }

    fn number(&self, stream: usize, k: u64) -> u64 {
        k * self.streams + stream as u64
    }

    /// When message `k` of sender `stream` is due.
    pub(crate) fn due(&self, stream: usize, k: u64) -> Instant {
        self.start + Duration::from_secs_f64(self.number(stream, k) as f64 / self.rate)
    }

    /// How many messages sender `stream` sends in the run.
    pub(crate) fn count(&self, stream: usize) -> u64 {
        let first = stream as u64;
        if first >= self.total {
            0
        } else {
            (self.total - 1 - first) / self.streams + 1
        }
    }

    /// The round message `k` of sender `stream` belongs to (by its due time).
    pub(crate) fn round_of(&self, stream: usize, k: u64) -> usize {
        let at = self.number(stream, k) as f64 / self.rate;
        ((at / self.round.as_secs_f64()) as usize).min(self.rounds - 1)
    }

    pub(crate) fn rounds(&self) -> usize {
        self.rounds
    }

    /// When the last message is due.
    pub(crate) fn end(&self) -> Instant {
        self.start + self.round * self.rounds as u32
    }
}

/// Starts the clock of a run: a thread of its own that hands each sender the number of
/// its next message when that message is due. tokio's timers fire on a 1 ms wheel, up to
/// a millisecond late, and that lateness would count as the server's latency; a thread
/// sleeping on the OS's timer wakes within some tens of microseconds. One receiver per
/// sender; each gets exactly its messages, in order. Ends with the run or with `stop`.
pub(crate) fn tick(sched: Schedule, stop: CancellationToken) -> Vec<mpsc::UnboundedReceiver<u64>> {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..sched.streams)
        .map(|_| mpsc::unbounded_channel())
        .unzip();
    std::thread::Builder::new()
        .name("bench-clock".into())
        .spawn(move || {
            let start = sched.start.into_std();
            for n in 0..sched.total {
                if stop.is_cancelled() {
                    return;
                }
                let due = start + Duration::from_secs_f64(n as f64 / sched.rate);
                if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                    std::thread::sleep(wait);
                }
                let stream = (n % sched.streams) as usize;
                // A sender whose socket is gone has dropped its receiver.
                let _ = txs[stream].send(n / sched.streams);
            }
        })
        .expect("a thread for the bench's clock");
    rxs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_interleave_and_share_every_message_of_the_run() {
        let start = Instant::now();
        // 3 senders, 10/s for 1 s: messages 0..10, due every 100 ms.
        let s = Schedule::new(start, 3, 10.0, Duration::from_secs(1), 1);
        assert_eq!((0..3).map(|i| s.count(i)).sum::<u64>(), 10);
        assert_eq!([s.count(0), s.count(1), s.count(2)], [4, 3, 3]);
        assert_eq!(s.due(1, 0) - start, Duration::from_millis(100));
        assert_eq!(s.due(0, 1) - start, Duration::from_millis(300));
        assert!(s.due(0, 3) < s.end());
    }

    #[test]
    fn a_message_belongs_to_the_round_it_is_due_in() {
        let s = Schedule::new(Instant::now(), 2, 4.0, Duration::from_secs(1), 3);
        // 12 messages, 4 per round; sender 1's message 2 is number 5, due at 1.25 s.
        assert_eq!(s.count(0) + s.count(1), 12);
        assert_eq!(s.round_of(1, 2), 1);
        assert_eq!(s.round_of(0, 0), 0);
        assert_eq!(s.round_of(1, 5), 2);
    }

    #[tokio::test]
    async fn the_clock_hands_each_sender_its_messages_in_order() {
        let s = Schedule::new(Instant::now(), 3, 1000.0, Duration::from_millis(10), 1);
        let mut rxs = tick(s, CancellationToken::new());
        for (i, rx) in rxs.iter_mut().enumerate() {
            let mut got = Vec::new();
            while let Some(k) = rx.recv().await {
                got.push(k);
            }
            assert_eq!(got, (0..s.count(i)).collect::<Vec<u64>>());
        }
    }

    #[test]
    fn more_senders_than_messages_leaves_some_idle() {
        let s = Schedule::new(Instant::now(), 10, 2.0, Duration::from_secs(1), 1);
        assert_eq!(s.count(1), 1);
        assert_eq!(s.count(2), 0);
    }
}
