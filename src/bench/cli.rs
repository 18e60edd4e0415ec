//! `pgchat bench <scenario>`: options, the runtime, the output, the exit code (0: nothing
//! lost and no errors; 1: something was, or the run could not be set up; 2: bad options).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{
    BenchError, ConnectOptions, DmOptions, GroupOptions, GrowthOptions, IdleOptions, Options,
    Report, Scenario,
};
use crate::foundation::auth::Authenticator;
use crate::foundation::config::Config;

/// Load a running pgchat server and report latency, throughput and every loss or error.
///
/// Tokens are signed with the configured JWT secret, so the server must run with the same
/// configuration (or JWT_SECRET). Users get a random prefix per run.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    scenario: ScenarioArgs,
    /// Server WebSocket URL; repeat it for one URL per worker (`--listen per-worker`).
    /// Default: `ws://127.0.0.1:<port>/ws` with the configured port.
    #[arg(long = "url", value_name = "URL", global = true)]
    urls: Vec<String>,
    /// Write the result as JSON to PATH (`-`: stdout, and the summary goes to stderr).
    #[arg(long, value_name = "PATH", global = true)]
    json: Option<String>,
    /// No progress line on stderr.
    #[arg(long, global = true)]
    quiet: bool,
    /// Runtime threads: 1 runs on one thread, leaving the cores to the server [default: 1].
    #[arg(long, value_name = "N", global = true)]
    threads: Option<usize>,
    /// How long to wait at the end for acks and deliveries still on their way [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = duration, global = true)]
    drain: Option<Duration>,
}

#[derive(Debug, Subcommand)]
enum ScenarioArgs {
    /// Direct messages, open loop: P sender sockets each write to their own receiver.
    Dm {
        #[command(flatten)]
        load: DmLoad,
        /// How long to send, e.g. 10s, 2m.
        #[arg(long, value_parser = duration, default_value = "10s")]
        duration: Duration,
        /// The fraction of each sender's messages (0..0.5) that change its send just
        /// before instead: an edit, a reaction or a deletion, in turn, each measured apart.
        #[arg(long, default_value_t = 0.0)]
        changes: f64,
    },
    /// Group messages: G groups of K members, one sender per group, open loop.
    Group {
        /// Members per group, the sender included.
        #[arg(long, default_value_t = 10)]
        size: usize,
        #[arg(long, default_value_t = 4)]
        groups: usize,
        /// Messages per second over all groups.
        #[arg(long, default_value_t = 40.0)]
        rate: f64,
        #[arg(long, value_parser = duration, default_value = "10s")]
        duration: Duration,
    },
    /// The dm load for N rounds back to back on the same sockets, a table row per round.
    Growth {
        #[command(flatten)]
        load: DmLoad,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, value_parser = duration, default_value = "10s")]
        round_duration: Duration,
        /// Events to add to the database in bulk SQL between rounds (e.g. 2500000 with 5
        /// rounds: the last round runs on 10 million more). 0: rounds back to back.
        #[arg(long, default_value_t = 0)]
        grow_events: u64,
        /// The server's database, to grow it and read its counters [default: the
        /// configured DATABASE_URL].
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
    /// Authenticated handshakes (connect, hello, close) as fast as they go.
    Connect {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
    },
    /// Hold N idle authenticated sockets and report the server's memory per connection.
    Idle {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// How long to hold them once open.
        #[arg(long, value_parser = duration, default_value = "10s")]
        hold: Duration,
        /// Handshakes in flight while opening.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
    },
}

#[derive(Debug, Args)]
struct DmLoad {
    /// Messages per second over all pairs.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Sender/receiver pairs, each two users with one socket each.
    #[arg(long, default_value_t = 10)]
    pairs: usize,
    /// The fraction of pairs whose receiver is on another worker than its sender (0..1).
    #[arg(long, default_value_t = 0.5)]
    cross: f64,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("expected a duration like 10s or 2m: {e}"))
}

impl BenchArgs {
    /// The options of this command line, with the configuration's port and secret.
    pub(crate) fn options(&self, config: &Config, auth: Authenticator) -> Options {
        let urls = if self.urls.is_empty() {
            vec![format!("ws://127.0.0.1:{}/ws", config.port)]
        } else {
            self.urls.clone()
        };
        let scenario = match &self.scenario {
            ScenarioArgs::Dm {
                load,
                duration,
                changes,
            } => Scenario::Dm(DmOptions {
                rate: load.rate,
                pairs: load.pairs,
                cross: load.cross,
                duration: *duration,
                changes: *changes,
            }),
            ScenarioArgs::Group {
                size,
                groups,
                rate,
                duration,
            } => Scenario::Group(GroupOptions {
                size: *size,
                groups: *groups,
                rate: *rate,
                duration: *duration,
            }),
            ScenarioArgs::Growth {
                load,
                rounds,
                round_duration,
                grow_events,
                database_url,
            } => Scenario::Growth(GrowthOptions {
                rate: load.rate,
                pairs: load.pairs,
                cross: load.cross,
                rounds: *rounds,
                round_duration: *round_duration,
                grow_events: *grow_events,
                database_url: database_url.clone().or_else(|| Some(config.database_url())),
            }),
            ScenarioArgs::Connect { count, concurrency } => Scenario::Connect(ConnectOptions {
                count: *count,
                concurrency: *concurrency,
            }),
            ScenarioArgs::Idle {
                connections,
                hold,
                concurrency,
            } => Scenario::Idle(IdleOptions {
                connections: *connections,
                hold: *hold,
                concurrency: *concurrency,
            }),
        };
        Options {
            urls,
            auth,
            drain: self.drain.unwrap_or(Duration::from_secs(5)),
            quiet: self.quiet,
            threads: self.threads.unwrap_or(1),
            scenario,
        }
    }
}

pub(crate) fn main(args: BenchArgs, config: &Config) -> ExitCode {
    let auth = match Authenticator::from_config(config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pgchat bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = args.options(config, auth);
    if let Err(e) = options.validate() {
        eprintln!("pgchat bench: {e}");
        return ExitCode::from(e.exit_code());
    }
    warn_about_rate_limit(&options, config);
    let runtime = if options.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.threads)
            .enable_all()
            .build()
    };
    let runtime = runtime.expect("tokio runtime");
    let result = runtime.block_on(super::run(options));
    // Sockets the run closed may still have tasks finishing: do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result.and_then(|report| output(&report, args.json.as_deref()).map(|()| report)) {
        Ok(report) if report.passed => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("pgchat bench: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The summary on stdout (stderr when the JSON goes to stdout), then the JSON.
fn output(report: &Report, json: Option<&str>) -> Result<(), BenchError> {
    let to_stdout = json == Some("-");
    let written = if to_stdout {
        report.print(&mut std::io::stderr().lock())
    } else {
        report.print(&mut std::io::stdout().lock())
    };
    written.map_err(|source| BenchError::Output {
        path: if to_stdout { "stderr" } else { "stdout" }.into(),
        source,
    })?;
    let Some(path) = json else { return Ok(()) };
    let text = serde_json::to_string_pretty(report).expect("a report serializes") + "\n";
    let io = |source| BenchError::Output {
        path: path.to_string(),
        source,
    };
    if to_stdout {
        std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .map_err(io)
    } else {
        std::fs::write(path, text).map_err(io)
    }
}

/// The server's per-socket limit (20/s by default) would refuse a sender faster than it:
/// say so before the run rather than leave only `rate_limited` errors to explain it.
fn warn_about_rate_limit(options: &Options, config: &Config) {
    let per_socket = match &options.scenario {
        Scenario::Dm(o) => o.rate / o.pairs as f64,
        Scenario::Growth(o) => o.rate / o.pairs as f64,
        Scenario::Group(o) => o.rate / o.groups as f64,
        _ => return,
    };
    let limit = f64::from(config.rate_limit_per_sec);
    if per_socket > limit {
        eprintln!(
            "pgchat bench: warning: each sender sends {per_socket:.1}/s, over this configuration's \
             rate_limit_per_sec ({limit}): the server answers rate_limited unless it runs with a \
             higher PGCHAT_RATE_LIMIT_PER_SEC (and PGCHAT_RATE_LIMIT_BURST)"
        );
    }
}
