//! The foundations every layer stands on: the configuration, the protocol's types and
//! their errors, metrics, secrets, logging, the URLs pgchat connects to, and the two
//! guards a request meets first (who it is from, and whether that user may ask now).
//! Nothing here imports from above.

pub mod auth;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod frames;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod ratelimit;
pub mod secrets;
