//! Fan-out, on this worker and across workers: the per-user feeds sessions read from
//! ([`hub`]), the NOTIFY payloads between workers ([`notify`]), the listener that turns
//! other workers' notices into this worker's feeds ([`listener`]), who is online
//! ([`presence`]) and typing notices ([`typing`]).

pub mod hub;
pub mod listener;
pub mod notify;
pub mod presence;
pub mod typing;
