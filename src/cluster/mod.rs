//! Fan-out, on this worker and across workers: the per-user feeds sessions read from
//! ([`hub`]), the NOTIFY payloads between workers ([`notify`]), the listener that turns
//! other workers' notices into this worker's feeds ([`listener`]), who is online
//! ([`presence`]) and typing notices ([`typing`]).

pub(crate) mod hub;
pub(crate) mod listener;
pub(crate) mod notify;
pub(crate) mod presence;
pub(crate) mod typing;
