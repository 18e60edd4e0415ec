//! `group_leave {conversation}`: the caller leaves a group; committed by the writer
//! (`pgchat.apply_batch`'s `group_leave` branch).

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
}

pub(super) fn parse(map: Map<String, Value>) -> Result<Request, ApiError> {
    let f: Fields = fields("group_leave", map)?;
    Ok(Request::GroupLeave {
        conversation: f.conversation,
    })
}

/// `actor` leaving, as the writer's command.
pub(super) fn command(actor: &UserId, conversation: ConversationId) -> Command {
    Command::GroupLeave {
        actor: actor.clone(),
        conversation,
    }
}
