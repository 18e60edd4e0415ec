//! The foundations every layer stands on: the configuration, the protocol's types and
//! their errors, metrics, secrets, logging, the URLs pgchat connects to, and the two
//! guards a request meets first (who it is from, and whether that user may ask now).
//! Nothing here imports from above.

pub mod auth;
pub(crate) mod budget;
pub mod config;
pub(crate) mod endpoint;
pub mod error;
pub(crate) mod frames;
pub(crate) mod logging;
pub(crate) mod metrics;
pub mod protocol;
pub(crate) mod ratelimit;
pub(crate) mod secrets;
