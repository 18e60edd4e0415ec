//! What the operator and the platform see of a worker: the utilisation figures and the
//! periodic stats line ([`stats`]), systemd's notify protocol ([`systemd`]), and
//! `pgchat health`, a container's health check ([`probe`]).

pub mod probe;
pub mod stats;
pub mod systemd;
