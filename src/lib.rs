//! pgchat: a chat server that needs nothing but PostgreSQL.
//!
//! # Layout
//! Read the modules in the order a message travels:
//!
//! - [`config`]: defaults < `config.toml` < environment, validated once.
//! - [`db`]: finds (or starts) PostgreSQL, applies `schema.sql`, opens the pool (or
//!   shares the listener's connection when the worker's budget is one connection).
//! - [`server`]: accepts connections, with a header timeout and a cap on handshakes.
//! - [`http`]: the routes; `/ws` authenticates ([`auth`]) and upgrades the socket;
//!   [`demo`] is the browser demo at `/` and its development sign-in (not in production).
//!   [`secrets`] keeps the secrets pgchat generates for itself (the development JWT
//!   secret, the private cluster's password) in the data directory.
//! - [`session`]: one socket. Parses frames into [`protocol::Request`]s and runs them
//!   through [`requests`], answering in order.
//! - [`writer`]: a `send` is queued here, committed with the others beside it in one
//!   transaction (allocating gap-free `seq`/`cseq`), and acknowledged after commit.
//! - [`hub`]: after commit the writer publishes each event to the recipient's feed on
//!   this worker; the recipient's sessions wake and pull it onto their sockets. Events a
//!   feed no longer holds are read back from the durable stream ([`store`]).
//! - [`cache`]: members and recent messages of the conversations in use, filled by the
//!   writer; serves typing fan-out and the first page of history.
//! - [`presence`]: who is online (with a grace period) and who watches them.
//! - [`ratelimit`]: the token buckets of sessions and of HTTP API users.
//! - [`app`]: the shared handle and the lifecycle (build, serve, drain on shutdown).
//! - [`notify`] and [`listener`]: between workers. After commit, one NOTIFY per batch
//!   names the streams that grew; every other worker's listener fetches those events
//!   for its own users and publishes them to its hub, as above.
//! - [`supervisor`]: `serve --workers N` runs N such workers, sharing only PostgreSQL.
//! - [`metrics`]: counters for `/metrics` and `/health`; [`stats`]: the utilisation
//!   figures of `/health` and the periodic stats line; [`logging`]: the log lines.
//! - [`systemd`]: `Type=notify` for systemd (ready, watchdog, stopping); [`probe`] is
//!   `pgchat health`, a container's health check.
//!
//! Beside the server, [`bench`] is `pgchat bench`: a load tool that speaks the protocol
//! to a running server and reports latency, and what was lost.

pub mod app;
pub mod auth;
pub mod bench;
pub mod cache;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod error;
pub mod http;
pub mod hub;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod presence;
pub mod probe;
pub mod protocol;
pub mod ratelimit;
pub mod requests;
pub mod secrets;
pub mod server;
pub mod session;
pub mod stats;
pub mod store;
pub mod supervisor;
pub mod systemd;
pub mod writer;

pub use app::{App, Application};
pub use config::Config;
