//! `resume {after}`: replay the caller's stream from `after`. Applied by the session
//! itself ([`crate::edge::session`]), since it moves that socket's cursor.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::fields;
use super::Request;
use crate::foundation::error::ApiError;

#[derive(Deserialize)]
struct Fields {
    after: i64,
}

pub(super) fn parse(map: Map<String, Value>) -> Result<Request, ApiError> {
    let f: Fields = fields("resume", map)?;
    if f.after < 0 {
        return Err(ApiError::bad_request("resume: after must be >= 0"));
    }
    Ok(Request::Resume { after: f.after })
}
