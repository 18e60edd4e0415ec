//! What the operator and the platform see of a worker: the utilisation figures and the
//! periodic stats line ([`stats`]), systemd's notify protocol ([`systemd`]), and
//! `pgchat health`, a container's health check ([`probe`]).

pub(crate) mod probe;
pub(crate) mod stats;
pub(crate) mod systemd;
