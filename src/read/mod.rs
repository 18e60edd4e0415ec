//! The read path: the durable event stream and the tables behind history, members and
//! conversations ([`store`]), and the in-memory cache of the conversations in use
//! ([`cache`]), which the writer fills after commit.

pub(crate) mod cache;
pub(crate) mod store;
