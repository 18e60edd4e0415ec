//! The edge: where a message enters. [`server`] accepts TCP connections, [`http`] routes
//! them (the HTTP API, `/ws`, health and metrics), [`session`] runs one WebSocket, and
//! [`demo`] is the browser demo.

pub(crate) mod demo;
pub(crate) mod http;
pub(crate) mod server;
pub(crate) mod session;
