//! `pgchat bench`: a load tool that speaks the wire protocol to a running server and
//! reports latency percentiles *and* what went wrong (lost messages, error replies,
//! closes, gaps in the event stream). It replaces the Node scripts in `bench/`.
//!
//! # Layout
//! - [`cli`]: the `pgchat bench <scenario>` command line, the runtime, the exit code.
//! - [`client`]: one socket: connect with a minted token, read the hello, parse only the
//!   fields a scenario needs, check each socket's `seq`.
//! - [`pool`]: opens many sockets at once and places them on workers (`hello.worker`).
//! - [`schedule`]: open loop: when each message is due, so that latency counts from then;
//!   [`load`]: the writer, the readers, the drain and the tally that dm and group share.
//! - one file per scenario: [`dm`] (and [`growth`], rounds of it, with [`grow`] growing
//!   the database between rounds; [`changes`], the edits, reactions and deletions that
//!   `dm --changes` mixes in), [`group`], [`connect`], [`idle`].
//! - [`report`]: the result (counts, latency summaries, errors), the summary on stdout,
//!   the JSON; [`progress`]: the line on stderr while it runs.
//!
//! The tool is meant to share a 2-core machine with the server it measures, so it runs on
//! a `current_thread` runtime unless told otherwise, and its hot path (a frame in, a
//! frame out) parses borrowed fields and records into preallocated state.

pub(crate) mod changes;
pub(crate) mod cli;
pub(crate) mod client;
pub(crate) mod connect;
pub(crate) mod dm;
pub(crate) mod group;
pub(crate) mod grow;
pub(crate) mod growth;
pub(crate) mod idle;
pub(crate) mod load;
pub(crate) mod pool;
pub(crate) mod progress;
pub(crate) mod report;
pub(crate) mod schedule;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::foundation::auth::Authenticator;
use crate::foundation::protocol::UserId;

pub use report::{Errors, Report};

/// What to run, against which server. Built by [`cli`] from the command line, or directly
/// by tests.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// WebSocket URLs; one per worker when workers listen on their own ports, else one.
    pub urls: Vec<String>,
    /// Signs the tokens: the server's secret and `jwt_*` rules.
    #[serde(skip)]
    pub auth: Authenticator,
    /// How long to wait at the end for acks and deliveries still on their way.
    #[serde(serialize_with = "human")]
    pub drain: Duration,
    /// No progress line.
    #[serde(skip)]
    pub quiet: bool,
    /// Runtime threads (1: `current_thread`). Informational here: [`cli`] builds the runtime.
    pub threads: usize,
    #[serde(flatten)]
    pub scenario: Scenario,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "scenario", rename_all = "lowercase")]
pub enum Scenario {
    Dm(DmOptions),
    Group(GroupOptions),
    Growth(GrowthOptions),
    Connect(ConnectOptions),
    Idle(IdleOptions),
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Dm(_) => "dm",
            Scenario::Group(_) => "group",
            Scenario::Growth(_) => "growth",
            Scenario::Connect(_) => "connect",
            Scenario::Idle(_) => "idle",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DmOptions {
    /// Messages per second over all pairs.
    pub rate: f64,
    pub pairs: usize,
    /// The fraction of pairs whose two sockets are on different workers.
    pub cross: f64,
    #[serde(serialize_with = "human")]
    pub duration: Duration,
    /// The fraction of each sender's messages that are changes (edit, react, delete, in
    /// turn) of its send just before, instead of sends: 0 ..= 0.5.
    pub changes: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupOptions {
    /// Members per group, the sender included.
    pub size: usize,
    pub groups: usize,
    /// Messages per second over all groups.
    pub rate: f64,
    #[serde(serialize_with = "human")]
    pub duration: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct GrowthOptions {
    pub rate: f64,
    pub pairs: usize,
    pub cross: f64,
    pub rounds: usize,
    #[serde(serialize_with = "human")]
    pub round_duration: Duration,
    /// Events to add in bulk SQL between rounds (0: the rounds run back to back).
    pub grow_events: u64,
    /// The server's database: to grow it, count its events and read its scan counters.
    #[serde(skip)]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectOptions {
    pub count: usize,
    pub concurrency: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleOptions {
    pub connections: usize,
    #[serde(serialize_with = "human")]
    pub hold: Duration,
    /// Handshakes in flight while opening.
    pub concurrency: usize,
}

fn human<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// Why a run could not produce a report. Anything that goes wrong *during* a run is
/// counted in the report instead.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bad option: exit code 2.
    #[error("{0}")]
    Options(String),
    /// The run could not be set up (no socket opened, a warm-up never arrived, …).
    #[error("setup failed: {0}")]
    Setup(String),
    #[error("{path}: {source}")]
    Output {
        path: String,
        source: std::io::Error,
    },
}

impl BenchError {
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            BenchError::Options(_) => 2,
            _ => 1,
        }
    }
}

impl Options {
    /// Rejects values no run can use (exit code 2 on the command line).
    pub(crate) fn validate(&self) -> Result<(), BenchError> {
        if self.urls.is_empty() {
            return bad("--url: at least one".into());
        }
        for u in &self.urls {
            if !u.starts_with("ws://") {
                return bad(format!("--url: expected ws://host:port/path, got {u:?}"));
            }
        }
        positive("--threads", self.threads)?;
        self.scenario.validate()
    }
}

impl Scenario {
    /// Rejects the scenario's own values no run can use, the first one found.
    fn validate(&self) -> Result<(), BenchError> {
        match self {
            Scenario::Dm(o) => {
                rate(o.rate)?;
                positive("--pairs", o.pairs)?;
                fraction(o.cross)?;
                nonzero("--duration", o.duration)?;
                if !(0.0..=changes::MAX_FRACTION).contains(&o.changes) {
                    return bad(format!(
                        "--changes: a fraction 0..{} (each change needs a send before it), got {}",
                        changes::MAX_FRACTION,
                        o.changes
                    ));
                }
            }
            Scenario::Growth(o) => {
                rate(o.rate)?;
                positive("--pairs", o.pairs)?;
                fraction(o.cross)?;
                positive("--rounds", o.rounds)?;
                nonzero("--round-duration", o.round_duration)?;
            }
            Scenario::Group(o) => {
                rate(o.rate)?;
                positive("--groups", o.groups)?;
                if o.size < 2 {
                    return bad(format!(
                        "--size: a group needs at least 2 members, got {}",
                        o.size
                    ));
                }
                nonzero("--duration", o.duration)?;
            }
            Scenario::Connect(o) => {
                positive("--count", o.count)?;
                positive("--concurrency", o.concurrency)?;
            }
            Scenario::Idle(o) => {
                positive("--connections", o.connections)?;
                positive("--concurrency", o.concurrency)?;
            }
        }
        Ok(())
    }
}

/// A refused option: `m` says which and why.
fn bad(m: String) -> Result<(), BenchError> {
    Err(BenchError::Options(m))
}

/// `--rate`: messages per second, so a finite number above 0.
fn rate(r: f64) -> Result<(), BenchError> {
    if r.is_finite() && r > 0.0 {
        Ok(())
    } else {
        bad(format!("--rate: a positive number, got {r}"))
    }
}

/// A count (`name`) that a run needs at least one of.
fn positive(name: &str, n: usize) -> Result<(), BenchError> {
    if n == 0 {
        bad(format!("{name}: at least 1"))
    } else {
        Ok(())
    }
}

/// A duration (`name`) that a run needs some of.
fn nonzero(name: &str, d: Duration) -> Result<(), BenchError> {
    if d.is_zero() {
        bad(format!("{name}: longer than 0"))
    } else {
        Ok(())
    }
}

/// `--cross`: a fraction of the pairs, so 0..1.
fn fraction(c: f64) -> Result<(), BenchError> {
    if (0.0..=1.0).contains(&c) {
        Ok(())
    } else {
        bad(format!("--cross: a fraction 0..1, got {c}"))
    }
}

/// Runs one scenario to the end and reports. Call it from a tokio runtime (any flavour).
pub async fn run(options: Options) -> Result<Report, BenchError> {
    options.validate()?;
    let ctx = Arc::new(Ctx::new(&options));
    if let Some(note) = raise_open_files_limit() {
        ctx.note(note);
    }
    let mut report = match &options.scenario {
        Scenario::Dm(o) => dm::run(&ctx, o).await?,
        Scenario::Growth(o) => growth::run(&ctx, o).await?,
        Scenario::Group(o) => group::run(&ctx, o).await?,
        Scenario::Connect(o) => connect::run(&ctx, o).await?,
        Scenario::Idle(o) => idle::run(&ctx, o).await?,
    };
    report.finish(&ctx, options);
    Ok(report)
}

/// What every part of a run shares: the server, the tokens, the live counters, and the
/// tallies that tasks add to when they end.
pub(crate) struct Ctx {
    pub(crate) urls: Vec<String>,
    auth: Authenticator,
    /// Users are `<prefix>-<n>`: a random prefix per run, so runs never share a user.
    pub(crate) prefix: String,
    next_user: AtomicUsize,
    /// Tokens outlive the run by far: an expired token closes its socket with 1008.
    ttl: Duration,
    pub(crate) drain: Duration,
    pub(crate) quiet: bool,
    pub(crate) live: Live,
    /// What the progress line says the run is doing ([`progress::SETUP`], …).
    pub(crate) phase: AtomicU8,
    /// std Mutexes: tasks add to these once, when they end, and never across an `.await`.
    pub(crate) errors: Mutex<Errors>,
    pub(crate) workers: Mutex<BTreeSet<String>>,
    notes: Mutex<Vec<String>>,
}

/// Counters the progress line reads while the run goes on.
#[derive(Default)]
pub(crate) struct Live {
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) delivered: AtomicU64,
}

impl Live {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl Ctx {
    fn new(options: &Options) -> Ctx {
        Ctx {
            urls: options.urls.clone(),
            auth: options.auth.clone(),
            prefix: format!("bench{:08x}", rand::random::<u32>()),
            next_user: AtomicUsize::new(0),
            ttl: options
                .auth
                .max_ttl()
                .map_or(Duration::from_secs(24 * 3600), |max| {
                    max.min(Duration::from_secs(24 * 3600))
                }),
            drain: options.drain,
            quiet: options.quiet,
            live: Live::default(),
            phase: AtomicU8::new(progress::SETUP),
            errors: Mutex::new(Errors::default()),
            workers: Mutex::new(BTreeSet::new()),
            notes: Mutex::new(Vec::new()),
        }
    }

    /// A fresh user of this run and a token for it.
    pub(crate) fn new_user(&self) -> (String, String) {
        let n = self.next_user.fetch_add(1, Ordering::Relaxed);
        let user = format!("{}-{n}", self.prefix);
        let id = UserId::parse(&user).expect("bench user ids are valid");
        let token = self.auth.mint(&id, None, self.ttl);
        (user, token)
    }

    pub(crate) fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::Relaxed);
    }

    pub(crate) fn note(&self, note: impl Into<String>) {
        self.notes.lock().unwrap().push(note.into());
    }

    pub(crate) fn notes(&self) -> Vec<String> {
        self.notes.lock().unwrap().clone()
    }

    pub(crate) fn saw_worker(&self, worker: &str) {
        let mut w = self.workers.lock().unwrap();
        if !w.contains(worker) {
            w.insert(worker.to_string());
        }
    }
}

/// Many sockets need many descriptors: the soft limit goes up to the hard one.
fn raise_open_files_limit() -> Option<String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return None;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => None,
        Err(e) => Some(format!(
            "could not raise the open files limit from {soft} to {hard}: {e}"
        )),
    }
}

/// Microseconds, for the histograms.
pub(crate) fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dm(rate: f64, cross: f64) -> Options {
        dm_changing(rate, cross, 0.0)
    }

    fn dm_changing(rate: f64, cross: f64, changes: f64) -> Options {
        Options {
            urls: vec!["ws://127.0.0.1:3000/ws".into()],
            auth: Authenticator::new("s"),
            drain: Duration::from_secs(1),
            quiet: true,
            threads: 1,
            scenario: Scenario::Dm(DmOptions {
                rate,
                pairs: 2,
                cross,
                duration: Duration::from_secs(1),
                changes,
            }),
        }
    }

    #[test]
    fn options_no_run_can_use_are_refused_with_exit_code_2() {
        assert!(dm(10.0, 0.5).validate().is_ok());
        assert!(dm_changing(10.0, 0.5, 0.5).validate().is_ok());
        for bad in [
            dm(0.0, 0.5),
            dm(f64::NAN, 0.5),
            dm(10.0, 1.5),
            dm_changing(10.0, 0.5, 0.6),
            dm_changing(10.0, 0.5, -0.1),
            dm_changing(10.0, 0.5, f64::NAN),
        ] {
            assert_eq!(bad.validate().unwrap_err().exit_code(), 2);
        }
        let mut wss = dm(10.0, 0.5);
        wss.urls = vec!["wss://chat.example/ws".into()];
        assert!(wss.validate().is_err());
    }

    #[test]
    fn each_run_has_its_own_users() {
        let (a, b) = (Ctx::new(&dm(1.0, 0.0)), Ctx::new(&dm(1.0, 0.0)));
        let (a0, _) = a.new_user();
        let (a1, token) = a.new_user();
        assert_ne!(a0, a1);
        assert_ne!(a0.split('-').next(), b.new_user().0.split('-').next());
        let id = Authenticator::new("s").verify(&token).unwrap();
        assert_eq!(id.user.as_str(), a1);
    }
}
