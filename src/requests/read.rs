//! `read {conversation, cseq}`: the caller has read up to `cseq`; committed by the writer
//! (`pgchat.apply_batch`'s `read` branch), which tells the other members.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::fields;
use super::Request;
use crate::foundation::error::ApiError;
use crate::foundation::protocol::{ConversationId, UserId};
use crate::write::Command;

#[derive(Deserialize)]
struct Fields {
    conversation: ConversationId,
    cseq: i64,
}

pub(super) fn parse(map: Map<String, Value>) -> Result<Request, ApiError> {
    let f: Fields = fields("read", map)?;
    if f.cseq < 1 {
        return Err(ApiError::bad_request("read: cseq must be >= 1"));
    }
    Ok(Request::Read {
        conversation: f.conversation,
        cseq: f.cseq,
    })
}

/// `user`'s read marker, as the writer's command.
pub(super) fn command(user: &UserId, conversation: ConversationId, cseq: i64) -> Command {
    Command::Read {
        user: user.clone(),
        conversation,
        cseq,
    }
}
