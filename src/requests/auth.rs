//! `auth {token}`: replaces the session's token with a newer one for the same user.
//! Applied by the session itself ([`crate::edge::session`]): the token is the socket's.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::fields;
use super::Request;
use crate::foundation::error::ApiError;
use crate::foundation::protocol::BearerToken;

#[derive(Deserialize)]
struct Fields {
    token: BearerToken,
}

pub(super) fn parse(map: Map<String, Value>) -> Result<Request, ApiError> {
    let f: Fields = fields("auth", map)?;
    if f.token.as_str().is_empty() {
        return Err(ApiError::bad_request("auth: token must not be empty"));
    }
    Ok(Request::Auth { token: f.token })
}
