//! The command line: `pgchat [serve]`, `pgchat config`, `pgchat token <user>`,
//! `pgchat bench <scenario>` (its options and exit codes are in [`crate::bench::cli`]).
//!
//! Exit codes: 0 after a clean shutdown, 1 when start-up fails (the database cannot be
//! reached, …), 2 for an invalid configuration or command line, 3 when the supervisor
//! gave up on a worker that kept dying. `pgchat health`: 0 when the server answers 200.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::Role;
use crate::db::Plan;
use crate::foundation::auth::Authenticator;
use crate::foundation::config::{Config, ConfigError, Listen};
use crate::foundation::protocol::UserId;

#[derive(Parser)]
#[command(
    name = "pgchat",
    version,
    about = "A chat server that needs nothing but PostgreSQL"
)]
struct Cli {
    /// The configuration file (default: $PGCHAT_CONFIG, else ./config.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve WebSocket and HTTP clients (the default).
    Serve {
        /// Worker processes (overrides `workers`); more than 1 starts a supervisor.
        #[arg(long)]
        workers: Option<usize>,
        /// How several workers listen: shared (one port, SO_REUSEPORT) or per-worker
        /// (PORT, PORT+1, …). Overrides `listen`.
        #[arg(long, value_parser = ["shared", "per-worker", "per_worker"])]
        listen: Option<String>,
    },
    /// One worker of a supervised deployment (started by `serve --workers N`).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        index: usize,
        /// Connections this worker may hold, its listener included.
        #[arg(long)]
        share: usize,
        #[arg(long)]
        reuse_port: bool,
    },
    /// Print the effective configuration, secrets redacted.
    Config,
    /// Create the database if missing, bring its schema up to date (the migrations, then
    /// what they leave to build outside a transaction, such as the search index), and exit.
    /// Servers do the same at start; on a large database run this first (e.g. as Heroku's
    /// release phase), so that no server waits for a long index build while it boots.
    Migrate,
    /// Ask the server on this host (127.0.0.1:PORT) for PATH; exit 0 on 200, else 1.
    /// For a container's HEALTHCHECK, so the image needs no curl.
    Health {
        #[arg(long, default_value = "/ready")]
        path: String,
    },
    /// Print a token for USER signed with the configured JWT secret.
    Token {
        user: String,
        /// The display name claim.
        #[arg(long)]
        name: Option<String>,
        /// How long the token is valid, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Load a running server: latency, throughput, and every loss or error.
    #[command(
        after_help = "Tokens are signed with the configured JWT secret: run it with \
        the server's configuration (or JWT_SECRET). Exit status: 0 when nothing was lost and \
        no error occurred, 1 otherwise, 2 for bad options."
    )]
    Bench(crate::bench::cli::BenchArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgchat: {e}");
            return ExitCode::from(2);
        }
    };
    // Read here, once: a supervisor's workers inherit the environment, and one warning
    // per variable is enough.
    let unknown_env = Config::unknown_env();
    let command = cli.command.unwrap_or(Command::Serve {
        workers: None,
        listen: None,
    });
    if let Command::Serve { workers, listen } = &command {
        if let Err(e) = serve_overrides(&mut config, *workers, listen.as_deref()) {
            eprintln!("pgchat: {e}");
            return ExitCode::from(2);
        }
    }
    match &command {
        Command::Config | Command::Token { .. } | Command::Bench(_) | Command::Migrate => {
            for (name, close) in &unknown_env {
                eprintln!(
                    "pgchat: warning: {name} is not a setting (did you mean {close}?); ignored"
                );
            }
        }
        _ => {}
    }
    match command {
        Command::Config => {
            print!("{}", config.redacted_toml());
            ExitCode::SUCCESS
        }
        Command::Token { user, name, ttl } => token(&config, &user, name.as_deref(), &ttl),
        Command::Bench(args) => crate::bench::cli::main(args, &config),
        Command::Health { path } => crate::ops::probe::main(&config, &path),
        Command::Migrate => migrate(&config),
        Command::Serve { .. } => serve_command(config, cli.config, &unknown_env),
        Command::Worker {
            index,
            share,
            reuse_port,
        } => {
            crate::foundation::logging::init(
                &config,
                crate::foundation::logging::Who::Worker(index),
            );
            tracing::info!(share, "worker starting");
            let role = Role {
                plan: Plan {
                    share,
                    setup: false,
                },
                reuse_port,
                listen_when_ready: true,
                // Sharing one port, the workers share ops_listen's too.
                ops_offset: if reuse_port { 0 } else { index as u16 },
            };
            serve(
                config,
                move |_| role,
                crate::shutdown::signal_or_orphaned(),
                true,
            )
        }
    }
}

/// `serve`'s options over the configuration, then the checks that depend on them.
fn serve_overrides(
    config: &mut Config,
    workers: Option<usize>,
    listen: Option<&str>,
) -> Result<(), ConfigError> {
    crate::foundation::config::check_platform(|k| std::env::var(k).ok())?;
    if let Some(n) = workers {
        config.workers = n;
    }
    if let Some(l) = listen {
        // The flag takes `per-worker` as well as the configuration's `per_worker`.
        config.listen = Listen::try_from(l.replace('-', "_"))
            .map_err(|why| ConfigError::new("--listen", why))?;
    }
    config.validate()
}

/// `pgchat token USER`: a token signed with the configured secret.
fn token(config: &Config, user: &str, name: Option<&str>, ttl: &str) -> ExitCode {
    let user = match UserId::parse(user) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("pgchat: user: {e}");
            return ExitCode::from(2);
        }
    };
    let ttl = match humantime::parse_duration(ttl) {
        Ok(t) if t >= Duration::from_secs(1) => t,
        _ => {
            eprintln!("pgchat: --ttl: expected a duration like 30m, 1h or 7d, got {ttl:?}");
            return ExitCode::from(2);
        }
    };
    let auth = match Authenticator::from_config(config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pgchat: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(max) = auth.max_ttl().filter(|max| ttl > *max) {
        eprintln!(
            "pgchat: --ttl: at most jwt_max_lifetime_secs ({} s), got {ttl:?}",
            max.as_secs()
        );
        return ExitCode::from(2);
    }
    println!("{}", auth.mint(&user, name, ttl));
    ExitCode::SUCCESS
}

/// `pgchat migrate`: the database created if missing and its schema brought up to date.
fn migrate(config: &Config) -> ExitCode {
    crate::foundation::logging::init(config, crate::foundation::logging::Who::Single);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        match crate::db::setup(config).await {
            Ok((_, cluster)) => {
                tracing::info!(
                    version = crate::db::SCHEMA_VERSION,
                    "the database is up to date"
                );
                // A private cluster started for it (development only) stops again.
                drop(cluster);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgchat: {e}");
                ExitCode::from(e.exit_code())
            }
        }
    })
}

/// `pgchat serve`: one worker in this process, or a supervisor of several.
fn serve_command(
    config: Config,
    config_path: Option<PathBuf>,
    unknown_env: &[(String, String)],
) -> ExitCode {
    let n = config.worker_count();
    let who = if n > 1 {
        crate::foundation::logging::Who::Supervisor
    } else {
        crate::foundation::logging::Who::Single
    };
    crate::foundation::logging::init(&config, who);
    for (name, close) in unknown_env {
        tracing::warn!(
            variable = %name,
            closest = %close,
            "{name} is not a setting (did you mean {close}?); ignored"
        );
    }
    // Before any worker starts, so that the first start generates the development
    // secret once and every worker reads the same file.
    if let Err(e) = crate::foundation::secrets::jwt_secret(&config) {
        eprintln!("pgchat: {e}");
        return ExitCode::from(1);
    }
    warn_about(&config);
    if n > 1 {
        return crate::supervisor::run(config, n, config_path);
    }
    serve(config, Role::single, crate::shutdown::signal(), false)
}

fn warn_about(config: &Config) {
    if config.redis_url.is_some() {
        tracing::warn!("REDIS_URL is set but ignored: pgchat shares state through PostgreSQL only");
    }
    match &config.jwt_secret {
        None => tracing::info!(
            file = %crate::foundation::secrets::jwt_secret_path(config).display(),
            "JWT_SECRET is not set: using the generated development secret kept in the data \
             directory (production refuses to start without JWT_SECRET)"
        ),
        Some(s) if s.expose().len() < crate::foundation::config::MIN_PRODUCTION_SECRET_BYTES => {
            tracing::warn!(
                bytes = s.expose().len(),
                "JWT_SECRET is shorter than {} bytes: production would refuse it",
                crate::foundation::config::MIN_PRODUCTION_SECRET_BYTES
            )
        }
        Some(_) => {}
    }
    if config.dev_sign_in_open() {
        let host = config.listen_host();
        let scope = match &config.host {
            None => "listening on 127.0.0.1 only (set host / PGCHAT_HOST to listen elsewhere)",
            Some(_) => "listening where host says: anyone who reaches it can sign in as anyone",
        };
        tracing::warn!(
            host,
            "development sign-in is open: POST /dev/token mints a token for any user name \
             (the browser demo's sign-in); {scope}. It closes when JWT_SECRET is set, or with \
             dev_sign_in = \"off\""
        );
    }
}

/// Runs one worker until `stop` resolves; a `supervised` one reports its connections to
/// the supervisor on stdout.
fn serve(
    config: Config,
    role: impl FnOnce(&Config) -> Role,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    supervised: bool,
) -> ExitCode {
    // Capped: tokio's blocking pool grows to 512 threads by default, and a Heroku dyno
    // allows 256 processes plus threads in all.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime_threads())
        .max_blocking_threads(config.blocking_threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async move {
        crate::ops::systemd::spawn_watchdog();
        let role = role(&config);
        let app = match crate::app::Application::build_as(config, role).await {
            Ok(app) => app,
            Err(e) => {
                // Once, on stderr: a log line as well would say it twice.
                eprintln!("pgchat: {e}");
                return ExitCode::from(e.exit_code());
            }
        };
        app.spawn_stats_reporter(supervised);
        app.run_until_stopped(stop).await;
        ExitCode::SUCCESS
    });
    // Everything has drained; do not wait for a blocking read of stdin that never ends.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}
