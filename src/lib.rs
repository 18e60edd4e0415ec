//! pgchat: a chat server that needs nothing but PostgreSQL.
//!
//! # Layout
//! The folders are the layers a message crosses, bottom first; a module imports only
//! from its own layer and those below (`tests/architecture.rs` checks it).
//!
//! - [`foundation`]: [`config`](foundation::config) (defaults < `config.toml` <
//!   environment, validated once), the [`protocol`](foundation::protocol)'s values
//!   (ids, bodies, names), the [`frames`](foundation::frames) the server sends,
//!   [`error`](foundation::error)s, [`metrics`](foundation::metrics),
//!   [`secrets`](foundation::secrets), [`logging`](foundation::logging), the database
//!   URLs ([`endpoint`](foundation::endpoint)), token checks ([`auth`](foundation::auth))
//!   and the per-user token buckets ([`ratelimit`](foundation::ratelimit)).
//! - [`db`]: finds (or starts) PostgreSQL, applies `schema.sql`, opens the pool (or
//!   shares the listener's connection when the worker's budget is one connection); its
//!   SQL is in `db::queries`.
//! - [`read`]: the durable event stream and the queries of history, members and
//!   conversations ([`store`](read::store)); the conversation [`cache`](read::cache).
//! - [`cluster`]: after commit the writer publishes each event to the recipient's feed
//!   in the [`hub`](cluster::hub); sessions wake and pull it. Between workers, one NOTIFY
//!   per batch ([`notify`](cluster::notify)) names the streams that grew, and every
//!   other worker's [`listener`](cluster::listener) fetches those events for its users.
//!   [`presence`](cluster::presence) and [`typing`](cluster::typing) ride the same path.
//! - [`write`](mod@write): a `send` is queued here, committed with the others beside it
//!   in one transaction (allocating gap-free `seq`/`cseq`), and acknowledged after
//!   commit; `write::command` says what each kind of write is to the writer.
//! - [`requests`]: one file per request kind (its fields, validation and application),
//!   shared by the socket and the HTTP API. They reach the worker through
//!   [`Services`](requests::Services) (database and cache, writer, metrics, typing
//!   fan-out), each kind taking only the parts it uses. Beside them, [`ops`]: the
//!   utilisation figures and the stats line (from readings its callers take), systemd,
//!   `pgchat health`.
//! - [`state`]: the handles a worker shares ([`App`]), from which the edge lends each
//!   request its `Services`.
//! - [`edge`]: accepting connections ([`server`](edge::server)), the routes
//!   ([`http`](edge::http)), one WebSocket ([`session`](edge::session)), the browser
//!   [`demo`](edge::demo).
//! - [`app`]: a worker's lifecycle (build, serve, drain); [`shutdown`]: when to stop.
//! - [`supervisor`]: `serve --workers N` runs N such workers, sharing only PostgreSQL;
//!   [`cli`]: the command line, which `main.rs` hands over to.
//!
//! Beside the server, [`bench`](mod@bench) is `pgchat bench`: a load tool that speaks the protocol
//! to a running server and reports latency, and what was lost.

// The tour and the module docs name crate-private items on purpose: they are written for
// readers of the source (`cargo doc --document-private-items` renders every link).
#![allow(rustdoc::private_intra_doc_links)]

pub mod foundation;

pub mod db;

pub mod read;

pub mod cluster;

pub mod write;

pub mod ops;
pub mod requests;

pub mod state;

pub mod edge;

pub mod app;
pub mod shutdown;

pub mod bench;
pub mod supervisor;

pub mod cli;

pub use app::Application;
pub use foundation::config::Config;
pub use state::App;
