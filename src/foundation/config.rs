//! Configuration: built-in defaults < `config.toml` < environment, validated once at start.
//!
//! The Node server's variables keep their names and meaning (`PORT`, `DATABASE_URL`,
//! `MAX_CONNECTIONS`, `DB_MAX_CONNECTIONS`, `DB_MIN_CONNECTIONS`, `NODE_ENV`, `JWT_SECRET`);
//! every key can also be set as `PGCHAT_<KEY>`, which wins over the bare name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The development secret older versions fell back to when `JWT_SECRET` was unset. It is
/// public (it was in this source), so it is refused wherever it is configured.
pub const OLD_DEV_JWT_SECRET: &str = "pgchat-development-secret-do-not-use-in-production";

/// The shortest `JWT_SECRET` accepted with `NODE_ENV=production`: HS256 needs at least
/// as many bytes of secret as its 256-bit output to be as strong as it claims.
pub(crate) const MIN_PRODUCTION_SECRET_BYTES: usize = 32;

/// The largest clock leeway accepted for token times.
pub(crate) const MAX_JWT_LEEWAY_SECS: u64 = 300;

/// Names read from the environment without the `PGCHAT_` prefix, for compatibility with
/// the Node server's deployment files.
const BARE_ENV: &[&str] = &[
    "PORT",
    "DATABASE_URL",
    "DATABASE_LISTEN_URL",
    "MAX_CONNECTIONS",
    "DB_MAX_CONNECTIONS",
    "DB_MIN_CONNECTIONS",
    "NODE_ENV",
    "JWT_SECRET",
    "REDIS_URL",
    "MAX_FRAME_BYTES",
    "MAX_MESSAGE_CHARS",
    "MAX_GROUP_MEMBERS",
    "EVENT_RETENTION",
    "WORKERS",
];

/// A secret setting. Its `Debug` and `Display` print `<redacted>`, so that a
/// configuration in a log line or a panic message never carries it; [`Secret::expose`]
/// is the one way to its text.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A setting that takes one of a few names: an enum, parsed when the configuration is
/// loaded; a name that is none of them is refused with the list of those that are.
macro_rules! choice {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "&'static str")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// The name as written in the configuration.
            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                match value.as_str() {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(
                        "must be one of {}, got {value:?}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl From<$name> for &'static str {
            fn from(choice: $name) -> &'static str {
                choice.as_str()
            }
        }
    };
}

choice! {
    /// `node_env` (`NODE_ENV`): production requires a strong `jwt_secret`, TLS to remote
    /// databases, and logs JSON lines by default.
    NodeEnv {
        Production = "production",
        Development = "development",
        Test = "test",
    }
}

choice! {
    /// `dev_sign_in`: whether `POST /dev/token` (which mints a token for any user name) and
    /// the browser demo exist.
    DevSignIn {
        /// Only while the JWT secret is the one pgchat generated itself (no `jwt_secret`
        /// given) and outside production: nobody else trusts that secret.
        Auto = "auto",
        /// Also with a configured secret, outside production (refused in production).
        On = "on",
        Off = "off",
    }
}

choice! {
    /// `listen`: how several workers listen.
    Listen {
        /// All on `PORT` with SO_REUSEPORT: the kernel spreads connections (one Heroku dyno).
        Shared = "shared",
        /// Worker i on `PORT + i`, for a load balancer such as nginx with `ip_hash`.
        PerWorker = "per_worker",
    }
}

choice! {
    /// `log_format`: JSON lines, readable text, or (auto) JSON in production only.
    LogFormat {
        Auto = "auto",
        Text = "text",
        Json = "json",
    }
}

/// `event_retention`: how long events stay in the durable stream before they may be
/// pruned, written as a duration (`"7d"`, `"12h"`) of at least a minute. It keeps its
/// text, so that `pgchat config` prints it as it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Retention {
    text: String,
    duration: Duration,
}

impl Retention {
    pub(crate) fn duration(&self) -> Duration {
        self.duration
    }
}

impl TryFrom<String> for Retention {
    type Error = String;
    fn try_from(text: String) -> Result<Retention, String> {
        let duration = humantime::parse_duration(&text)
            .map_err(|e| format!("{e} (use a duration like \"7d\" or \"12h\")"))?;
        if duration < Duration::from_secs(60) {
            return Err("must be at least 1m".into());
        }
        Ok(Retention { text, duration })
    }
}

impl From<Retention> for String {
    fn from(retention: Retention) -> String {
        retention.text
    }
}

/// Every setting, with the meaning documented beside its default in `config.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Unset: `127.0.0.1` while development sign-in is open, else `0.0.0.0` (see
    /// [`Config::listen_host`]).
    pub host: Option<String>,
    pub port: u16,
    /// `IP:port` for `/health` and `/metrics` alone (see [`crate::edge::http::ops_router`]).
    pub ops_listen: Option<String>,
    pub node_env: NodeEnv,
    pub dev_sign_in: DevSignIn,
    pub dev_sign_in_per_minute: u32,
    pub database_url: Option<String>,
    pub database_listen_url: Option<String>,
    pub jwt_secret: Option<Secret>,
    pub jwt_audience: Option<String>,
    pub jwt_leeway_secs: u64,
    pub jwt_max_lifetime_secs: u64,
    pub redis_url: Option<String>,

    pub db_max_connections: usize,
    pub db_min_connections: usize,
    pub db_acquire_timeout_ms: u64,
    pub db_idle_timeout_ms: u64,
    pub db_statement_timeout_ms: u64,
    pub migration_lock_timeout_ms: u64,
    pub migration_attempts: u32,
    pub db_keepalive_idle_ms: u64,
    pub db_keepalive_interval_ms: u64,
    pub db_keepalive_retries: u32,
    pub db_tcp_user_timeout_ms: u64,
    pub listener_probe_interval_ms: u64,
    pub listener_probe_timeout_ms: u64,
    pub listener_queue: usize,
    pub listener_selftest_timeout_ms: u64,
    pub health_cache_ms: u64,
    pub embedded_postgres: bool,
    pub embedded_port: u16,
    pub data_dir: PathBuf,

    pub max_connections: usize,
    pub max_sockets_per_user: usize,
    pub header_read_timeout_ms: u64,
    pub max_handshakes: usize,
    pub max_frame_bytes: usize,
    pub max_message_chars: usize,
    pub max_group_members: usize,
    pub conversation_members_listed: usize,
    pub read_receipts_fanout_max: usize,
    pub new_users_per_hour: usize,
    pub group_members_per_token: usize,
    pub max_inflight_requests: usize,
    pub outbound_max_frames: usize,
    pub outbound_max_bytes: usize,
    pub outbound_stall_ms: u64,
    pub outbound_budget_bytes: usize,
    pub outbound_user_bytes: usize,
    pub ws_read_buffer_bytes: usize,
    pub ping_interval_ms: u64,
    pub token_expiring_notice_ms: u64,
    pub event_retention: Retention,
    pub prune_batch: usize,
    pub prune_pause_ms: u64,
    pub recent_events_per_user: usize,
    pub recent_events_bytes_per_user: usize,
    pub recent_events_bytes: usize,
    pub max_presence_users: usize,
    pub max_mentions: usize,
    pub presence_open: bool,
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    pub presence_grace_ms: u64,
    pub presence_max_users_per_worker: usize,
    pub typing_timeout_ms: u64,
    pub ephemeral_queue: usize,
    pub conversation_cache: usize,
    pub conversation_cache_bytes: usize,
    pub cached_messages: usize,

    pub write_batch_max: usize,
    pub writers: usize,
    pub write_queue: usize,

    pub workers: usize,
    pub listen: Listen,
    pub runtime_threads: usize,
    pub blocking_threads: usize,

    pub shutdown_timeout_ms: u64,
    pub log_format: LogFormat,
    pub stats_interval_ms: u64,
    pub memory_limit_mb: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: None,
            ops_listen: None,
            dev_sign_in: DevSignIn::Auto,
            dev_sign_in_per_minute: 30,
            port: 3000,
            node_env: NodeEnv::Development,
            database_url: None,
            database_listen_url: None,
            jwt_secret: None,
            jwt_audience: None,
            jwt_leeway_secs: 30,
            jwt_max_lifetime_secs: 0,
            redis_url: None,
            db_max_connections: 10,
            db_min_connections: 2,
            db_acquire_timeout_ms: 2_000,
            db_idle_timeout_ms: 30_000,
            db_statement_timeout_ms: 30_000,
            migration_lock_timeout_ms: 5_000,
            migration_attempts: 20,
            db_keepalive_idle_ms: 30_000,
            db_keepalive_interval_ms: 10_000,
            db_keepalive_retries: 3,
            db_tcp_user_timeout_ms: 60_000,
            listener_probe_interval_ms: 10_000,
            listener_probe_timeout_ms: 5_000,
            listener_queue: 1_024,
            listener_selftest_timeout_ms: 5_000,
            health_cache_ms: 1_000,
            embedded_postgres: true,
            embedded_port: 5432,
            data_dir: PathBuf::from("data"),
            max_connections: 10_000,
            max_sockets_per_user: 20,
            header_read_timeout_ms: 10_000,
            max_handshakes: 256,
            max_frame_bytes: 65_536,
            max_message_chars: 4_000,
            max_group_members: 1_000,
            conversation_members_listed: 100,
            read_receipts_fanout_max: 100,
            new_users_per_hour: 2_000,
            group_members_per_token: 50,
            max_inflight_requests: 32,
            outbound_max_frames: 1_024,
            outbound_max_bytes: 1 << 20,
            outbound_stall_ms: 30_000,
            outbound_budget_bytes: 64 << 20,
            outbound_user_bytes: 16 << 20,
            ws_read_buffer_bytes: 4_096,
            ping_interval_ms: 25_000,
            token_expiring_notice_ms: 60_000,
            event_retention: Retention {
                text: "7d".into(),
                duration: Duration::from_secs(7 * 24 * 3600),
            },
            prune_batch: 5_000,
            prune_pause_ms: 100,
            recent_events_per_user: 64,
            recent_events_bytes_per_user: 64 << 10,
            recent_events_bytes: 32 << 20,
            max_presence_users: 1_000,
            max_mentions: 50,
            presence_open: false,
            rate_limit_per_sec: 20,
            rate_limit_burst: 40,
            presence_grace_ms: 5_000,
            presence_max_users_per_worker: 20_000,
            typing_timeout_ms: 6_000,
            ephemeral_queue: 64,
            conversation_cache: 1_000,
            conversation_cache_bytes: 16 << 20,
            cached_messages: 100,
            write_batch_max: 256,
            writers: 2,
            write_queue: 4_096,
            workers: 0,
            listen: Listen::Shared,
            runtime_threads: 0,
            blocking_threads: 8,
            shutdown_timeout_ms: 10_000,
            log_format: LogFormat::Auto,
            stats_interval_ms: 60_000,
            memory_limit_mb: 0,
        }
    }
}

/// A configuration that cannot be used: names the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}: {problem}")]
pub struct ConfigError {
    pub(crate) key: String,
    pub(crate) problem: String,
}

impl ConfigError {
    pub(crate) fn new(key: &str, problem: impl Into<String>) -> Self {
        ConfigError {
            key: key.to_string(),
            problem: problem.into(),
        }
    }
}

impl Config {
    /// Loads defaults, then `path` (if it exists), then the environment, and validates.
    pub(crate) fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("PGCHAT_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("config.toml"));
        // Unknown PGCHAT_ variables are left out here (and reported by `unknown_env`): an
        // unrelated variable in a shared environment must not take a deployment down. A
        // config file is pgchat's alone, so an unknown key there is refused.
        let keys = known_keys();
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(&path))
            .merge(Env::raw().only(BARE_ENV))
            .merge(
                Env::prefixed("PGCHAT_")
                    .ignore(&["CONFIG"])
                    .filter(move |k| {
                        keys.iter()
                            .any(|known| k.as_str().eq_ignore_ascii_case(known))
                    }),
            );
        let config: Config = figment.extract().map_err(plain_error)?;
        config.validate()?;
        Ok(config)
    }

    /// The environment's `PGCHAT_` variables that name no setting, each with the known
    /// variable closest to it (for a warning: they are ignored).
    pub(crate) fn unknown_env() -> Vec<(String, String)> {
        let keys = known_keys();
        let mut unknown: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter_map(|name| {
                let key = name.strip_prefix("PGCHAT_")?.to_ascii_lowercase();
                (key != "config" && !keys.contains(&key)).then(|| {
                    let close = format!("PGCHAT_{}", closest(&key, &keys).to_ascii_uppercase());
                    (name, close)
                })
            })
            .collect();
        unknown.sort();
        unknown
    }

    /// Checks ranges and relations that the types alone cannot express, in the order of
    /// `config.toml`'s sections; the first problem found is the one reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_database()?;
        self.validate_connections()?;
        self.validate_streams()?;
        self.validate_processes()?;
        self.validate_urls()?;
        self.validate_jwt()?;
        Ok(())
    }

    /// The pool, its keepalives, the listener's probes and the health cache.
    fn validate_database(&self) -> Result<(), ConfigError> {
        at_least("db_max_connections", self.db_max_connections as u64, 2)?;
        if self.db_min_connections > self.db_max_connections {
            return Err(ConfigError::new(
                "db_min_connections",
                format!(
                    "must not exceed db_max_connections ({}), got {}",
                    self.db_max_connections, self.db_min_connections
                ),
            ));
        }
        at_least("db_acquire_timeout_ms", self.db_acquire_timeout_ms, 1)?;
        at_least("db_keepalive_idle_ms", self.db_keepalive_idle_ms, 1_000)?;
        at_least(
            "db_keepalive_interval_ms",
            self.db_keepalive_interval_ms,
            1_000,
        )?;
        at_least("db_keepalive_retries", self.db_keepalive_retries as u64, 1)?;
        if self.db_tcp_user_timeout_ms != 0 {
            at_least("db_tcp_user_timeout_ms", self.db_tcp_user_timeout_ms, 1_000)?;
        }
        at_least(
            "listener_probe_interval_ms",
            self.listener_probe_interval_ms,
            100,
        )?;
        at_least(
            "listener_probe_timeout_ms",
            self.listener_probe_timeout_ms,
            100,
        )?;
        at_least("listener_queue", self.listener_queue as u64, 1)?;
        at_least(
            "listener_selftest_timeout_ms",
            self.listener_selftest_timeout_ms,
            100,
        )?;
        at_least("health_cache_ms", self.health_cache_ms, 10)?;
        Ok(())
    }

    /// Sockets, frames, requests and the outbound queue.
    fn validate_connections(&self) -> Result<(), ConfigError> {
        at_least(
            "migration_lock_timeout_ms",
            self.migration_lock_timeout_ms,
            1,
        )?;
        at_least("migration_attempts", self.migration_attempts as u64, 1)?;
        at_least("max_connections", self.max_connections as u64, 1)?;
        at_least("max_sockets_per_user", self.max_sockets_per_user as u64, 1)?;
        at_least("header_read_timeout_ms", self.header_read_timeout_ms, 100)?;
        at_least("max_handshakes", self.max_handshakes as u64, 1)?;
        at_least("max_frame_bytes", self.max_frame_bytes as u64, 1024)?;
        at_least("max_message_chars", self.max_message_chars as u64, 1)?;
        at_least("max_group_members", self.max_group_members as u64, 2)?;
        at_least(
            "conversation_members_listed",
            self.conversation_members_listed as u64,
            1,
        )?;
        // Recorded in pgchat.settings for SQL, which counts in 32-bit integers.
        for (key, value) in [
            ("max_message_chars", self.max_message_chars),
            ("max_group_members", self.max_group_members),
            (
                "conversation_members_listed",
                self.conversation_members_listed,
            ),
            ("read_receipts_fanout_max", self.read_receipts_fanout_max),
            ("new_users_per_hour", self.new_users_per_hour),
        ] {
            at_most(key, value as u64, 1_000_000_000)?;
        }
        at_least(
            "max_inflight_requests",
            self.max_inflight_requests as u64,
            1,
        )?;
        at_least("outbound_max_frames", self.outbound_max_frames as u64, 16)?;
        at_least("outbound_max_bytes", self.outbound_max_bytes as u64, 4096)?;
        at_least("outbound_stall_ms", self.outbound_stall_ms, 100)?;
        // The largest single reply (a history page of the longest messages, a full
        // group's state) must fit in one user's share.
        at_least(
            "outbound_user_bytes",
            self.outbound_user_bytes as u64,
            self.largest_reply() as u64,
        )?;
        at_least(
            "outbound_budget_bytes",
            self.outbound_budget_bytes as u64,
            self.outbound_user_bytes as u64,
        )?;
        at_least(
            "ws_read_buffer_bytes",
            self.ws_read_buffer_bytes as u64,
            512,
        )?;
        at_least("ping_interval_ms", self.ping_interval_ms, 100)?;
        Ok(())
    }

    /// Pruning, the recent-event feeds, presence, rate limits, typing and the caches.
    fn validate_streams(&self) -> Result<(), ConfigError> {
        at_least("prune_batch", self.prune_batch as u64, 1)?;
        if self.prune_batch > i32::MAX as usize {
            return Err(ConfigError::new("prune_batch", "must be below 2^31"));
        }
        at_least(
            "recent_events_per_user",
            self.recent_events_per_user as u64,
            1,
        )?;
        at_least("max_presence_users", self.max_presence_users as u64, 1)?;
        at_least("max_mentions", self.max_mentions as u64, 1)?;
        at_least("new_users_per_hour", self.new_users_per_hour as u64, 1)?;
        at_least(
            "group_members_per_token",
            self.group_members_per_token as u64,
            1,
        )?;
        at_least(
            "presence_max_users_per_worker",
            self.presence_max_users_per_worker as u64,
            1,
        )?;
        at_least("rate_limit_per_sec", self.rate_limit_per_sec as u64, 1)?;
        at_least("rate_limit_burst", self.rate_limit_burst as u64, 1)?;
        at_least("typing_timeout_ms", self.typing_timeout_ms, 100)?;
        at_least("ephemeral_queue", self.ephemeral_queue as u64, 1)?;
        at_least("cached_messages", self.cached_messages as u64, 1)?;
        Ok(())
    }

    /// The writers, threads, shutdown, stats and workers.
    fn validate_processes(&self) -> Result<(), ConfigError> {
        at_least("write_batch_max", self.write_batch_max as u64, 1)?;
        at_least("writers", self.writers as u64, 1)?;
        if self.writers >= self.db_max_connections {
            return Err(ConfigError::new(
                "writers",
                format!(
                    "must be below db_max_connections ({}) so reads still get a connection, got {}",
                    self.db_max_connections, self.writers
                ),
            ));
        }
        at_least("write_queue", self.write_queue as u64, 1)?;
        at_least("blocking_threads", self.blocking_threads as u64, 1)?;
        if self.runtime_threads > 64 || self.blocking_threads > 64 {
            return Err(ConfigError::new(
                if self.runtime_threads > 64 { "runtime_threads" } else { "blocking_threads" },
                "must be at most 64 (Heroku allows 256 processes plus threads per dyno, across all workers)",
            ));
        }
        if self.shutdown_timeout_ms > 600_000 {
            return Err(ConfigError::new(
                "shutdown_timeout_ms",
                format!("must be at most 600000, got {}", self.shutdown_timeout_ms),
            ));
        }
        if self.stats_interval_ms != 0 {
            at_least("stats_interval_ms", self.stats_interval_ms, 100)?;
        }
        if self.workers > 8 || self.workers > self.db_max_connections {
            return Err(ConfigError::new(
                "workers",
                format!(
                    "at most 8, and at most db_max_connections ({}) since each worker needs a connection; got {}",
                    self.db_max_connections, self.workers
                ),
            ));
        }
        if self.listen == Listen::PerWorker && (self.port as usize) + self.worker_count() > 65536 {
            return Err(ConfigError::new("port", "port + workers exceeds 65535"));
        }
        Ok(())
    }

    /// The whole URL as start-up will read it: sslmode, sslrootcert (read now) and all.
    fn validate_urls(&self) -> Result<(), ConfigError> {
        if let Some(at) = &self.ops_listen {
            if at.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::new(
                    "ops_listen",
                    format!("must be IP:port (e.g. 127.0.0.1:9090), got {at:?}"),
                ));
            }
        }
        for (key, setting, url) in [
            ("database_url", "DATABASE_URL", &self.database_url),
            (
                "database_listen_url",
                "DATABASE_LISTEN_URL",
                &self.database_listen_url,
            ),
        ] {
            if let Some(url) = url {
                crate::foundation::endpoint::Endpoint::check(setting, url, self.is_production())
                    .map_err(|problem| ConfigError::new(key, problem))?;
            }
        }
        Ok(())
    }

    fn validate_jwt(&self) -> Result<(), ConfigError> {
        match &self.jwt_secret {
            None if self.is_production() => {
                return Err(ConfigError::new(
                    "jwt_secret",
                    "must be set when NODE_ENV=production (the shared HS256 secret of the main backend)",
                ))
            }
            None => {}
            Some(secret) if secret.expose().is_empty() => {
                return Err(ConfigError::new("jwt_secret", "must not be empty"))
            }
            Some(secret) if secret.expose() == OLD_DEV_JWT_SECRET => {
                return Err(ConfigError::new(
                    "jwt_secret",
                    "is the old built-in development secret, which is public: set a random one \
                     (e.g. `openssl rand -hex 32`), or outside production unset it to have one generated",
                ))
            }
            Some(secret)
                if self.is_production() && secret.expose().len() < MIN_PRODUCTION_SECRET_BYTES =>
            {
                return Err(ConfigError::new(
                    "jwt_secret",
                    format!(
                        "must be at least {MIN_PRODUCTION_SECRET_BYTES} bytes when NODE_ENV=production, got {} \
                         (e.g. `openssl rand -hex 32`)",
                        secret.expose().len()
                    ),
                ))
            }
            Some(_) => {}
        }
        if self.dev_sign_in == DevSignIn::On && self.is_production() {
            return Err(ConfigError::new(
                "dev_sign_in",
                "must not be on with NODE_ENV=production: POST /dev/token would mint a token for \
                 any user, signed with the secret your backend trusts",
            ));
        }
        at_least(
            "dev_sign_in_per_minute",
            self.dev_sign_in_per_minute as u64,
            1,
        )?;
        if let Some(aud) = &self.jwt_audience {
            if aud.is_empty() {
                return Err(ConfigError::new(
                    "jwt_audience",
                    "must not be empty (leave it unset to ignore aud)",
                ));
            }
        }
        if self.jwt_leeway_secs > MAX_JWT_LEEWAY_SECS {
            return Err(ConfigError::new(
                "jwt_leeway_secs",
                format!(
                    "must be at most {MAX_JWT_LEEWAY_SECS}, got {}",
                    self.jwt_leeway_secs
                ),
            ));
        }
        Ok(())
    }

    /// The number of worker processes: `workers`, or when it is 0 (auto), 1 in
    /// development and min(CPUs, 8) in production, as the Node server did.
    pub(crate) fn worker_count(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        if self.is_production() {
            available_parallelism().min(8).min(self.db_max_connections)
        } else {
            1
        }
    }

    /// The tokio worker threads of each worker process: `runtime_threads`, or when it is 0
    /// the CPUs shared out among the workers (at least one each), so that N workers do
    /// not run N times as many threads as there are CPUs.
    pub(crate) fn runtime_threads(&self) -> usize {
        self.runtime_threads_of(available_parallelism())
    }

    fn runtime_threads_of(&self, cpus: usize) -> usize {
        if self.runtime_threads > 0 {
            return self.runtime_threads;
        }
        (cpus / self.worker_count()).max(1)
    }

    /// The worst case of the largest single reply these limits allow (see
    /// [`crate::foundation::budget`]): a history page of the longest messages, a page of
    /// conversations with their last messages, or a conversation's state.
    pub fn largest_reply(&self) -> usize {
        use crate::foundation::budget::{ids_bytes, message_bytes};
        let message = message_bytes(self.max_message_chars, self.max_mentions);
        let history = crate::foundation::protocol::MAX_HISTORY_LIMIT as usize * message;
        let conversations = crate::foundation::protocol::MAX_CONVERSATIONS_PAGE as usize
            * (message + ids_bytes(self.conversation_members_listed * 2));
        let group = ids_bytes(self.conversation_members_listed * 4);
        history.max(conversations).max(group)
    }

    /// Whether `POST /dev/token` and the browser demo exist (see [`DevSignIn`]).
    pub fn dev_sign_in_open(&self) -> bool {
        match self.dev_sign_in {
            DevSignIn::Off => false,
            DevSignIn::On => !self.is_production(),
            DevSignIn::Auto => self.jwt_secret.is_none() && !self.is_production(),
        }
    }

    /// The address to bind: `host` when set; else loopback while development sign-in is
    /// open (a token for anyone must not be a request away for the whole network), else
    /// every interface.
    pub fn listen_host(&self) -> &str {
        match &self.host {
            Some(h) => h,
            None if self.dev_sign_in_open() => "127.0.0.1",
            None => "0.0.0.0",
        }
    }

    pub(crate) fn is_production(&self) -> bool {
        self.node_env == NodeEnv::Production
    }

    /// The database in force: `DATABASE_URL`, else the local default
    /// `postgres://postgres@127.0.0.1:<embedded_port>/pgchat`.
    pub(crate) fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "postgres://postgres@127.0.0.1:{}/pgchat",
                self.embedded_port
            )
        })
    }

    /// The effective configuration as TOML, with secrets and passwords replaced.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.jwt_secret.is_some() {
            shown.jwt_secret = Some("<redacted>".into());
        }
        for url in [
            &mut shown.database_url,
            &mut shown.database_listen_url,
            &mut shown.redis_url,
        ]
        .into_iter()
        .flatten()
        {
            *url = crate::foundation::endpoint::redact_url_password(url);
        }
        toml_string(&shown)
    }
}

/// A setting below its least.
/// `value` must be at most `max` (the settings pgchat also records for its SQL must fit
/// what SQL counts with).
fn at_most(key: &str, value: u64, max: u64) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::new(
            key,
            format!("must be at most {max}, got {value}"),
        ));
    }
    Ok(())
}

fn at_least(key: &str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::new(
            key,
            format!("must be at least {min}, got {value}"),
        ));
    }
    Ok(())
}

/// The CPUs this process may use: Heroku's `HEROKU_AVAILABLE_PARALLELISM` when set (a
/// dyno sees the host's CPUs, not its share of them), else what the OS and cgroups allow.
pub(crate) fn available_parallelism() -> usize {
    std::env::var("HEROKU_AVAILABLE_PARALLELISM")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Checks what the platform promises before `serve` starts. On Heroku (`DYNO` is set) the
/// router sends a web process its traffic on `$PORT` and nowhere else, so a `serve`
/// without `PORT` would listen on 3000 where nothing arrives and the dyno would fail
/// with R10 a minute later: stop at once instead, naming the fix.
pub(crate) fn check_platform(env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    if let Some(dyno) = env("DYNO") {
        if env("PORT").is_none() && env("PGCHAT_PORT").is_none() {
            return Err(ConfigError::new(
                "port",
                format!(
                    "PORT is not set on Heroku (DYNO={dyno}): start `pgchat serve` from \
                     the Procfile's `web:` line, the process Heroku gives a PORT"
                ),
            ));
        }
    }
    Ok(())
}

/// Every setting's name, in declaration order.
pub(crate) fn known_keys() -> Vec<String> {
    match serde_json::to_value(Config::default()).expect("config serialises") {
        serde_json::Value::Object(map) => map.keys().cloned().collect(),
        _ => unreachable!("a struct serialises to an object"),
    }
}

/// The known key nearest to `key` by edit distance (ties: the first declared).
fn closest<'a>(key: &str, known: &'a [String]) -> &'a str {
    known
        .iter()
        .min_by_key(|k| edit_distance(key, k))
        .map(String::as_str)
        .unwrap_or_default()
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// figment's error in words a person configuring a server uses: no Rust type names, and
/// for an unknown key the one it most likely meant rather than the whole list.
fn plain_error(e: figment::Error) -> ConfigError {
    use figment::error::{Actual, Kind};
    let key = e.path.join(".");
    let got = |actual: &Actual| match actual {
        Actual::Str(s) => format!("{s:?}"),
        Actual::Unsigned(n) => n.to_string(),
        Actual::Signed(n) => n.to_string(),
        Actual::Float(n) => n.to_string(),
        Actual::Bool(b) => b.to_string(),
        other => other.to_string(),
    };
    let (key, problem) = match &e.kind {
        Kind::UnknownField(name, _) => {
            let keys = known_keys();
            let place = e
                .metadata
                .as_ref()
                .and_then(|m| m.source.as_ref())
                .map(|s| format!(" in {s}"))
                .unwrap_or_default();
            (
                name.clone(),
                format!(
                    "not a known setting{place}; did you mean {}? (every key is listed in config.toml)",
                    closest(name, &keys)
                ),
            )
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => (
            key,
            format!("must be {}, got {}", plain_type(expected), got(actual)),
        ),
        other => (key, other.to_string()),
    };
    let key = if key.is_empty() { "config".into() } else { key };
    ConfigError::new(&key, problem)
}

/// What serde calls a type, as a phrase.
fn plain_type(expected: &str) -> String {
    let whole = |max: u128| format!("a whole number between 0 and {max}");
    match expected {
        "u8" => whole(u8::MAX.into()),
        "u16" => whole(u16::MAX.into()),
        "u32" => whole(u32::MAX.into()),
        "u64" | "usize" => whole(u64::MAX.into()),
        "i32" | "i64" | "isize" => "a whole number".into(),
        "a boolean" | "bool" => "true or false".into(),
        "a string" | "a path" => "text".into(),
        other => other.into(),
    }
}

fn toml_string(config: &Config) -> String {
    // figment's Value serialises to TOML through serde_json's shape; keep it simple and
    // stable by printing `key = value` lines in declaration order.
    let value = serde_json::to_value(config).expect("config serialises");
    let mut out = String::new();
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            match v {
                serde_json::Value::Null => out.push_str(&format!("# {k} = (unset)\n")),
                other => out.push_str(&format!("{k} = {other}\n")),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::foundation::endpoint::redact_url_password;

    #[test]
    fn a_secret_never_prints() {
        let c = Config {
            jwt_secret: Some("hunter2-hunter2".into()),
            ..Config::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(
            c.jwt_secret.as_ref().map(|s| s.to_string()).as_deref(),
            Some("<redacted>")
        );
        assert_eq!(
            c.jwt_secret.as_ref().map(Secret::expose),
            Some("hunter2-hunter2")
        );
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn production_without_secret_is_refused() {
        let c = Config {
            node_env: NodeEnv::Production,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "jwt_secret");
    }

    #[test]
    fn production_refuses_short_secrets_and_everyone_refuses_the_old_public_one() {
        let production = |secret: &str| Config {
            node_env: NodeEnv::Production,
            jwt_secret: Some(secret.into()),
            ..Config::default()
        };
        let short = "x".repeat(MIN_PRODUCTION_SECRET_BYTES - 1);
        assert_eq!(production(&short).validate().unwrap_err().key, "jwt_secret");
        production(&"x".repeat(MIN_PRODUCTION_SECRET_BYTES))
            .validate()
            .unwrap();
        for node_env in [NodeEnv::Production, NodeEnv::Development, NodeEnv::Test] {
            let c = Config {
                node_env,
                jwt_secret: Some(OLD_DEV_JWT_SECRET.into()),
                ..Config::default()
            };
            let e = c.validate().unwrap_err();
            assert!(e.problem.contains("public"), "{node_env:?}: {e}");
        }
        // Outside production a short secret is allowed (tests and local tools use them).
        Config {
            jwt_secret: Some("short".into()),
            ..Config::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url_password("postgres://u:secret@h:5432/db"),
            "postgres://u:<redacted>@h:5432/db"
        );
        assert_eq!(
            redact_url_password("host=h password=secret user=u"),
            "host=h password=<redacted> user=u"
        );
        assert_eq!(
            redact_url_password("postgres://u@h/db"),
            "postgres://u@h/db"
        );
    }

    #[test]
    fn a_heroku_process_without_port_is_refused() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let e = check_platform(env(&[("DYNO", "web.1")])).unwrap_err();
        assert_eq!(e.key, "port");
        assert!(e.problem.contains("Procfile"), "{e}");
        check_platform(env(&[("DYNO", "web.1"), ("PORT", "5000")])).unwrap();
        check_platform(env(&[("DYNO", "web.1"), ("PGCHAT_PORT", "5000")])).unwrap();
        // Off Heroku the default port stands.
        check_platform(env(&[])).unwrap();
    }

    #[test]
    fn workers_share_the_cpus_out_among_their_runtimes() {
        let workers = |workers, runtime_threads| Config {
            workers,
            runtime_threads,
            ..Config::default()
        };
        assert_eq!(workers(1, 0).runtime_threads_of(8), 8);
        assert_eq!(workers(3, 0).runtime_threads_of(8), 2);
        assert_eq!(workers(8, 0).runtime_threads_of(2), 1);
        assert_eq!(workers(3, 5).runtime_threads_of(8), 5);
        let too_many = Config {
            blocking_threads: 65,
            ..Config::default()
        };
        assert_eq!(too_many.validate().unwrap_err().key, "blocking_threads");
    }

    #[test]
    fn the_closest_key_is_named() {
        let keys = known_keys();
        assert_eq!(closest("max_conections", &keys), "max_connections");
        assert_eq!(closest("prot", &keys), "port");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn type_errors_speak_plainly() {
        assert_eq!(plain_type("u16"), "a whole number between 0 and 65535");
        assert_eq!(plain_type("a boolean"), "true or false");
    }

    /// The defaults with `key = value` on top, as a file or the environment would set it.
    fn load_with(key: &str, value: &str) -> Result<Config, ConfigError> {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::default(key, value))
            .extract::<Config>()
            .map_err(plain_error)
    }

    #[test]
    fn bad_retention_names_its_key() {
        for (value, problem) in [
            ("soon", "(use a duration like \"7d\" or \"12h\")"),
            ("30s", "must be at least 1m"),
        ] {
            let e = load_with("event_retention", value).unwrap_err();
            assert_eq!(e.key, "event_retention");
            assert!(e.problem.ends_with(problem), "{e}");
        }
        let c = load_with("event_retention", "12h").unwrap();
        assert_eq!(c.event_retention.duration(), Duration::from_secs(12 * 3600));
        assert!(toml_string(&c).contains("event_retention = \"12h\"\n"));
    }

    #[test]
    fn a_choice_outside_its_names_is_refused_with_the_list() {
        for (key, value, problem) in [
            (
                "node_env",
                "prod",
                "must be one of production, development, test, got \"prod\"",
            ),
            (
                "listen",
                "per-worker",
                "must be one of shared, per_worker, got \"per-worker\"",
            ),
            (
                "log_format",
                "JSON",
                "must be one of auto, text, json, got \"JSON\"",
            ),
        ] {
            let e = load_with(key, value).unwrap_err();
            assert_eq!((e.key.as_str(), e.problem.as_str()), (key, problem));
        }
        let c = load_with("listen", "per_worker").unwrap();
        assert_eq!(c.listen, Listen::PerWorker);
        assert!(toml_string(&Config::default()).contains("node_env = \"development\"\n"));
    }
}
