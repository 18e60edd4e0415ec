//! The command line: `pgchat [serve]`, `pgchat config`, `pgchat token <user>`.
//!
//! Exit codes: 0 after a clean shutdown, 1 when start-up fails (the database cannot be
//! reached, …), 2 for an invalid configuration or command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::protocol::UserId;

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
    Serve,
    /// Print the effective configuration, secrets redacted.
    Config,
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
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgchat: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => {
            print!("{}", config.redacted_toml());
            ExitCode::SUCCESS
        }
        Command::Token { user, name, ttl } => {
            let user = match UserId::parse(&user) {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("pgchat: user: {e}");
                    return ExitCode::from(2);
                }
            };
            let ttl = match humantime::parse_duration(&ttl) {
                Ok(t) if t >= Duration::from_secs(1) => t,
                _ => {
                    eprintln!("pgchat: --ttl: expected a duration like 30m, 1h or 7d, got {ttl:?}");
                    return ExitCode::from(2);
                }
            };
            let auth = Authenticator::new(config.jwt_secret());
            println!("{}", auth.mint(&user, name.as_deref(), ttl));
            ExitCode::SUCCESS
        }
        Command::Serve => serve(config),
    }
}

fn serve(config: Config) -> ExitCode {
    init_logging(&config);
    if config.redis_url.is_some() {
        tracing::warn!("REDIS_URL is set but ignored: pgchat shares state through PostgreSQL only");
    }
    if config.jwt_secret.is_none() {
        tracing::warn!(
            "JWT_SECRET is not set: using the built-in DEVELOPMENT secret; anyone can mint tokens. \
             Set JWT_SECRET (production refuses to start without it)."
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let app = match crate::Application::build(config).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("pgchat: {e}");
                return ExitCode::from(1);
            }
        };
        app.run_until_stopped(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
