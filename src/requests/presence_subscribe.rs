//! `presence_subscribe {users}`: watch these users' presence. Applied by the session
//! itself ([`crate::edge::session`]): the watch list is the socket's.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::Request;
use super::{fields, user_list};
use crate::foundation::error::ApiError;

#[derive(Deserialize)]
struct Fields {
    users: Vec<Value>,
}

pub(super) fn parse(
    map: Map<String, Value>,
    max_presence_users: usize,
) -> Result<Request, ApiError> {
    let kind = "presence_subscribe";
    let f: Fields = fields(kind, map)?;
    let users = user_list(kind, "users", f.users, max_presence_users)?;
    Ok(Request::PresenceSubscribe { users })
}
