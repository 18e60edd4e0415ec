//! The result of a run: what was sent and what arrived, latency percentiles, and
//! everything that went wrong. Printed as a one-screen summary and written as JSON.

use std::collections::BTreeMap;
use std::io::{self, Write};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{Ctx, Options, Scenario};

/// Counts by kind (an error code, a close code, …), sorted.
pub(crate) type Counts = BTreeMap<String, u64>;

/// Everything that went wrong that is not a lost message or a stream gap.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Errors {
    /// Error replies, by code (`rate_limited`, `unavailable`, …).
    pub replies: Counts,
    /// Handshakes that failed, by kind (`http 503 at_capacity`, `io: connection refused`, …).
    pub(crate) connects: Counts,
    /// Sockets the server closed (by close code) or dropped during the run.
    pub(crate) closes: Counts,
    /// Anything else: unparsable frames, replies that match no request.
    pub(crate) other: Counts,
}

impl Errors {
    pub(crate) fn reply(&mut self, code: &str) {
        bump(&mut self.replies, code);
    }

    pub(crate) fn connect(&mut self, kind: &str) {
        bump(&mut self.connects, kind);
    }

    pub(crate) fn close(&mut self, kind: &str) {
        bump(&mut self.closes, kind);
    }

    pub(crate) fn other(&mut self, kind: &str) {
        bump(&mut self.other, kind);
    }

    pub(crate) fn merge(&mut self, other: Errors) {
        for (mine, theirs) in [
            (&mut self.replies, other.replies),
            (&mut self.connects, other.connects),
            (&mut self.closes, other.closes),
            (&mut self.other, other.other),
        ] {
            for (k, n) in theirs {
                *mine.entry(k).or_default() += n;
            }
        }
    }

    pub fn total(&self) -> u64 {
        [&self.replies, &self.connects, &self.closes, &self.other]
            .iter()
            .flat_map(|m| m.values())
            .sum()
    }
}

/// `kind: n, kind: n`, for one line of text.
pub(crate) fn list(map: &Counts) -> String {
    let items: Vec<String> = map.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    items.join(", ")
}

fn bump(map: &mut Counts, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_string(), 1);
        }
    }
}

/// A latency histogram: microseconds, 1 µs to 1 hour, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of one latency, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub(crate) name: String,
    pub count: u64,
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
    pub(crate) mean_us: f64,
}

impl Latency {
    pub(crate) fn of(name: &str, h: &Histogram<u64>) -> Latency {
        let q = |p: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(p)
            }
        };
        Latency {
            name: name.to_string(),
            count: h.len(),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if h.is_empty() { 0 } else { h.max() },
            mean_us: if h.is_empty() {
                0.0
            } else {
                (h.mean() * 10.0).round() / 10.0
            },
        }
    }
}

/// Messages of the dm, group and growth scenarios.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Messages {
    /// Due before the end of the run.
    pub planned: u64,
    pub sent: u64,
    /// Answered `ok`.
    pub acked: u64,
    /// Answered with an error reply.
    pub failed: u64,
    /// Sent, and neither acked nor refused by the end of the drain.
    pub unanswered: u64,
    /// Recipients per message: 1 for a direct message, size - 1 in a group.
    pub recipients: u64,
    /// Deliveries: a recipient's socket received the `message` event (once).
    pub delivered: u64,
    /// The deliveries acked messages owe: acked × recipients.
    pub expected: u64,
    /// Expected deliveries that had not come by the end of the drain.
    pub lost: u64,
    /// `message` events a recipient received again.
    pub duplicates: u64,
    pub(crate) sent_per_s: f64,
    pub(crate) delivered_per_s: f64,
}

/// Where the dm pairs' sockets landed.
#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    pub same_worker_pairs: usize,
    pub cross_worker_pairs: usize,
}

/// Every socket's event stream, checked: each durable event carries the previous seq + 1.
#[derive(Debug, Default, Clone, Serialize)]
pub struct StreamCheck {
    pub sockets: u64,
    /// Events skipped over.
    pub seq_gaps: u64,
    /// Events whose seq was not above the previous one.
    pub seq_duplicates: u64,
}

impl StreamCheck {
    pub(crate) fn add(&mut self, seq: &super::client::SeqCheck) {
        self.sockets += 1;
        self.seq_gaps += seq.gaps;
        self.seq_duplicates += seq.duplicates;
    }
}

/// One round of the growth scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub(crate) round: usize,
    /// growth with --grow-events: the rows in event_queue when the round began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_rows: Option<i64>,
    /// growth with --grow-events: sequential scans of each growing table during the round
    /// (PostgreSQL's counters, which backends flush within about a second).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq_scans: Option<BTreeMap<String, i64>>,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub lost: u64,
    pub(crate) ack: Latency,
    pub(crate) delivery: Latency,
}

impl Round {
    /// The round's row of the growth table, and with --grow-events a line under it.
    fn print(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "{:>5}{:>8}{:>8}{:>10}{:>6}{:>10}{:>10}{:>10}{:>10}{:>10}",
            self.round,
            self.sent,
            self.acked,
            self.delivered,
            self.lost,
            ms(self.ack.p50_us),
            ms(self.ack.p99_us),
            ms(self.delivery.p50_us),
            ms(self.delivery.p99_us),
            ms(self.delivery.max_us)
        )?;
        if let (Some(rows), Some(scans)) = (self.event_rows, &self.seq_scans) {
            let scans: u64 = scans.values().map(|n| *n as u64).sum();
            writeln!(
                out,
                "{:>5} began with {rows} event rows; sequential scans of growing tables: {scans}",
                ""
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Handshakes {
    pub attempted: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub(crate) per_s: f64,
}

/// The idle scenario's sockets and the server's memory around them.
#[derive(Debug, Default, Clone, Serialize)]
pub struct IdleResult {
    pub(crate) requested: u64,
    pub opened: u64,
    pub failed: u64,
    /// Sockets the server closed or dropped while they were held.
    pub dropped: u64,
    pub(crate) held_s: f64,
    /// `proc` (VmRSS of the worker pids, server on this machine), `health` (the workers'
    /// own figure from /health), or `none`.
    pub rss_source: String,
    pub servers: Vec<ServerMemory>,
    pub(crate) rss_before_bytes: u64,
    pub(crate) rss_after_bytes: u64,
    /// (after - before) / opened.
    pub rss_per_connection_bytes: Option<i64>,
    /// What the workers' /health counted after the hold.
    pub server_connections: Option<u64>,
}

impl IdleResult {
    /// The sockets' lines of the summary: how many were held, and what the server's
    /// memory did meanwhile.
    fn print(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "sockets: {} of {} opened, {} failed, {} dropped while held for {:.1} s",
            self.opened, self.requested, self.failed, self.dropped, self.held_s
        )?;
        let mb = |b: u64| b as f64 / 1e6;
        match self.rss_per_connection_bytes {
            Some(per) => writeln!(
                out,
                "server RSS ({}, {} process{}): {:.1} MB before, {:.1} MB after: {:.1} KB per connection",
                self.rss_source,
                self.servers.len(),
                if self.servers.len() == 1 { "" } else { "es" },
                mb(self.rss_before_bytes),
                mb(self.rss_after_bytes),
                per as f64 / 1e3
            )?,
            None => writeln!(out, "server RSS: not measured (see notes)")?,
        }
        if let Some(c) = self.server_connections {
            writeln!(out, "server connections after the hold: {c}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerMemory {
    pub(crate) worker: String,
    pub pid: u32,
    pub(crate) rss_before_bytes: u64,
    pub(crate) rss_after_bytes: u64,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub(crate) scenario: &'static str,
    pub(crate) parameters: Option<Options>,
    /// The workers the sockets landed on (`hello.worker`).
    pub workers: Vec<String>,
    /// The measured phase: from the first due message to the end of the drain, or the
    /// whole connect run, or the hold.
    pub(crate) elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Messages>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshakes: Option<Handshakes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleResult>,
    pub(crate) latency: Vec<Latency>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<Round>,
    /// growth: the last round's delivery p99 over the first's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_to_first_p99: Option<f64>,
    pub stream: StreamCheck,
    pub errors: Errors,
    pub notes: Vec<String>,
    /// Nothing lost, no errors, no gaps or duplicates: exit code 0.
    pub passed: bool,
    /// Why not, one phrase per problem.
    pub problems: Vec<String>,
}

impl Report {
    pub(crate) fn new(scenario: &'static str) -> Report {
        Report {
            scenario,
            parameters: None,
            workers: Vec::new(),
            elapsed_s: 0.0,
            messages: None,
            placement: None,
            handshakes: None,
            idle: None,
            latency: Vec::new(),
            rounds: Vec::new(),
            last_to_first_p99: None,
            stream: StreamCheck::default(),
            errors: Errors::default(),
            notes: Vec::new(),
            passed: false,
            problems: Vec::new(),
        }
    }

    /// Adds another run of the same load (a growth round run apart) and its row. Counts
    /// add up; percentiles of separate runs cannot be merged, so the overall latency table
    /// gives way to the rounds' rows.
    pub(crate) fn add_round(&mut self, other: Report, row: Round) {
        if let (Some(m), Some(o)) = (&mut self.messages, other.messages) {
            m.planned += o.planned;
            m.sent += o.sent;
            m.acked += o.acked;
            m.failed += o.failed;
            m.unanswered += o.unanswered;
            m.delivered += o.delivered;
            m.expected += o.expected;
            m.lost += o.lost;
            m.duplicates += o.duplicates;
            let elapsed = self.elapsed_s + other.elapsed_s;
            let per_s = |n: u64| (n as f64 / elapsed.max(1e-9) * 10.0).round() / 10.0;
            m.sent_per_s = per_s(m.sent);
            m.delivered_per_s = per_s(m.delivered);
        }
        self.elapsed_s += other.elapsed_s;
        self.stream.sockets += other.stream.sockets;
        self.stream.seq_gaps += other.stream.seq_gaps;
        self.stream.seq_duplicates += other.stream.seq_duplicates;
        self.latency.clear();
        self.rounds.push(row);
    }

    /// Deliveries owed and never made.
    pub fn lost(&self) -> u64 {
        self.messages.as_ref().map_or(0, |m| m.lost)
    }

    pub fn latency(&self, name: &str) -> Option<&Latency> {
        self.latency.iter().find(|l| l.name == name)
    }

    /// Adds what the whole run shares (errors, workers, notes) and judges it.
    pub(super) fn finish(&mut self, ctx: &Ctx, options: Options) {
        self.errors.merge(ctx.errors.lock().unwrap().clone());
        self.workers = ctx.workers.lock().unwrap().iter().cloned().collect();
        self.notes.extend(ctx.notes());
        self.parameters = Some(options);
        self.problems = self.find_problems();
        self.passed = self.problems.is_empty();
    }

    fn find_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut count = |n: u64, what: &str| {
            if n > 0 {
                p.push(format!("{n} {what}"));
            }
        };
        if let Some(m) = &self.messages {
            count(m.lost, "lost");
            count(m.unanswered, "unanswered");
            count(m.planned - m.sent.min(m.planned), "never sent");
            count(m.duplicates, "duplicate deliveries");
        }
        count(self.stream.seq_gaps, "seq gaps");
        count(self.stream.seq_duplicates, "seq duplicates");
        count(self.errors.replies.values().sum(), "error replies");
        count(self.errors.connects.values().sum(), "failed connects");
        count(self.errors.closes.values().sum(), "closes by the server");
        count(self.errors.other.values().sum(), "other errors");
        p
    }

    /// The one-screen summary: what ran, what it counted, the latency and round tables
    /// (each only if the scenario has one), and what went wrong.
    pub(crate) fn print(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(out, "pgchat bench {}: {}", self.scenario, self.describe())?;
        let w = &self.workers;
        if !w.is_empty() {
            writeln!(out, "workers: {} ({})", w.len(), w.join(", "))?;
        }
        self.print_counts(out)?;
        if !self.latency.is_empty() {
            writeln!(out)?;
            self.print_latency(out)?;
        }
        if !self.rounds.is_empty() {
            writeln!(out)?;
            self.print_rounds(out)?;
        }
        writeln!(out)?;
        self.print_errors(out)?;
        for n in &self.notes {
            writeln!(out, "note: {n}")?;
        }
        if self.passed {
            writeln!(out, "result: PASSED")
        } else {
            writeln!(out, "result: FAILED ({})", self.problems.join(", "))
        }
    }

    /// One line per count the scenario keeps (messages, handshakes, idle sockets), then
    /// the event streams' check.
    fn print_counts(&self, out: &mut impl Write) -> io::Result<()> {
        if let Some(m) = &self.messages {
            writeln!(
                out,
                "messages: planned {}, sent {} ({:.1}/s), acked {}, failed {}, unanswered {}",
                m.planned, m.sent, m.sent_per_s, m.acked, m.failed, m.unanswered
            )?;
            writeln!(
                out,
                "deliveries: {} of {} expected ({:.1}/s), lost {}, duplicates {}",
                m.delivered, m.expected, m.delivered_per_s, m.lost, m.duplicates
            )?;
        }
        if let Some(h) = &self.handshakes {
            writeln!(
                out,
                "handshakes: {} attempted, {} succeeded, {} failed, {:.1}/s over {:.1} s",
                h.attempted, h.succeeded, h.failed, h.per_s, self.elapsed_s
            )?;
        }
        if let Some(i) = &self.idle {
            i.print(out)?;
        }
        if self.stream.sockets > 0 {
            writeln!(
                out,
                "event streams: {} sockets checked, {} seq gaps, {} seq duplicates",
                self.stream.sockets, self.stream.seq_gaps, self.stream.seq_duplicates
            )?;
        }
        Ok(())
    }

    /// The latency table: a row per latency, in milliseconds.
    fn print_latency(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "{:<26}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
            "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
        )?;
        for l in &self.latency {
            writeln!(
                out,
                "{:<26}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
                l.name,
                l.count,
                ms(l.p50_us),
                ms(l.p90_us),
                ms(l.p99_us),
                ms(l.p999_us),
                ms(l.max_us)
            )?;
        }
        Ok(())
    }

    /// The growth table: a row per round (and, with --grow-events, a line on what the
    /// database held and scanned), then how the delivery p99 moved from first to last.
    fn print_rounds(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "{:>5}{:>8}{:>8}{:>10}{:>6}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "round",
            "sent",
            "acked",
            "delivered",
            "lost",
            "ack p50",
            "ack p99",
            "dlv p50",
            "dlv p99",
            "dlv max"
        )?;
        for r in &self.rounds {
            r.print(out)?;
        }
        if let Some(ratio) = self.last_to_first_p99 {
            writeln!(out, "delivery p99, last round / first: {ratio:.2}")?;
        }
        Ok(())
    }

    /// `errors: none`, or a line per kind of error that occurred, with its counts.
    fn print_errors(&self, out: &mut impl Write) -> io::Result<()> {
        if self.errors.total() == 0 {
            return writeln!(out, "errors: none");
        }
        for (what, map) in [
            ("error replies", &self.errors.replies),
            ("failed connects", &self.errors.connects),
            ("closed by the server", &self.errors.closes),
            ("other errors", &self.errors.other),
        ] {
            if !map.is_empty() {
                writeln!(out, "{what}: {}", list(map))?;
            }
        }
        Ok(())
    }

    /// The parameters in one line.
    fn describe(&self) -> String {
        let Some(o) = &self.parameters else {
            return String::new();
        };
        let threads = if o.threads == 1 {
            "1 thread".to_string()
        } else {
            format!("{} threads", o.threads)
        };
        let d = |d: std::time::Duration| humantime::format_duration(d).to_string();
        let drain = d(o.drain);
        match &o.scenario {
            Scenario::Dm(s) => format!(
                "{} pairs{}, {}/s for {}{}, drain {drain}, {threads}",
                s.pairs,
                self.placed(),
                s.rate,
                d(s.duration),
                if s.changes > 0.0 {
                    format!(
                        ", {}% of them edits, reactions and deletions",
                        (s.changes * 1000.0).round() / 10.0
                    )
                } else {
                    String::new()
                }
            ),
            Scenario::Growth(s) => format!(
                "{} rounds of {}, {} pairs{}, {}/s, drain {drain}, {threads}",
                s.rounds,
                d(s.round_duration),
                s.pairs,
                self.placed(),
                s.rate
            ),
            Scenario::Group(s) => format!(
                "{} groups of {}, {}/s for {}, drain {drain}, {threads}",
                s.groups,
                s.size,
                s.rate,
                d(s.duration)
            ),
            Scenario::Connect(s) => format!(
                "{} handshakes, {} at a time, {threads}",
                s.count, s.concurrency
            ),
            Scenario::Idle(s) => format!(
                "{} sockets held for {}, {} handshakes at a time, {threads}",
                s.connections,
                d(s.hold),
                s.concurrency
            ),
        }
    }

    fn placed(&self) -> String {
        match &self.placement {
            Some(p) => format!(
                " ({} same-worker, {} cross-worker)",
                p.same_worker_pairs, p.cross_worker_pairs
            ),
            None => String::new(),
        }
    }
}

fn ms(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms >= 1000.0 {
        format!("{ms:.0}")
    } else if ms >= 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(mut r: Report) -> Report {
        r.problems = r.find_problems();
        r.passed = r.problems.is_empty();
        r
    }

    #[test]
    fn a_run_passes_only_when_nothing_was_lost_and_nothing_went_wrong() {
        let clean = Messages {
            planned: 10,
            sent: 10,
            acked: 10,
            recipients: 1,
            delivered: 10,
            expected: 10,
            ..Default::default()
        };
        let mut r = Report::new("dm");
        r.messages = Some(clean.clone());
        assert!(judged(r.clone()).passed);

        r.messages = Some(Messages {
            delivered: 9,
            lost: 1,
            ..clean
        });
        r.stream.seq_gaps = 2;
        r.errors.reply("unavailable");
        r.errors.close("close 1013");
        let r = judged(r);
        assert!(!r.passed);
        assert_eq!(
            r.problems,
            [
                "1 lost",
                "2 seq gaps",
                "1 error replies",
                "1 closes by the server"
            ]
        );
        let mut text = Vec::new();
        r.print(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("error replies: unavailable: 1"), "{text}");
        assert!(text.ends_with(
            "result: FAILED (1 lost, 2 seq gaps, 1 error replies, 1 closes by the server)\n"
        ));
    }
}
