//! The edge: where a message enters. [`server`] accepts TCP connections, [`http`] routes
//! them (the HTTP API, `/ws`, health and metrics), [`session`] runs one WebSocket, and
//! [`demo`] is the browser demo.

pub mod demo;
pub mod http;
pub mod server;
pub mod session;
