//! `edit {conversation, cseq, body}`, `delete {conversation, cseq}` and
//! `react {conversation, cseq, emoji, on}`: changes to a message, committed by the writer
//! (`pgchat.apply_batch`'s `edit`, `delete` and `react` branches, which check who may make
//! them) and told to every member as `message_edited`, `message_deleted` or `reaction`.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::fields;
use super::Request;
use crate::foundation::error::ApiError;
use crate::foundation::protocol::{Body, ConversationId, Emoji, UserId};
use crate::write::Command;

#[derive(Deserialize)]
struct Target {
    conversation: ConversationId,
    cseq: i64,
}

#[derive(Deserialize)]
struct EditFields {
    #[serde(flatten)]
    target: Target,
    body: String,
}

#[derive(Deserialize)]
struct ReactFields {
    #[serde(flatten)]
    target: Target,
    emoji: String,
    on: bool,
}

fn checked(kind: &str, t: Target) -> Result<(ConversationId, i64), ApiError> {
    if t.cseq < 1 {
        return Err(ApiError::bad_request(format!("{kind}: cseq must be >= 1")));
    }
    Ok((t.conversation, t.cseq))
}

pub(super) fn parse_edit(
    map: Map<String, Value>,
    max_message_chars: usize,
) -> Result<Request, ApiError> {
    let f: EditFields = fields("edit", map)?;
    let (conversation, cseq) = checked("edit", f.target)?;
    Ok(Request::Edit {
        conversation,
        cseq,
        body: Body::parse(f.body, max_message_chars)?,
    })
}

pub(super) fn parse_delete(map: Map<String, Value>) -> Result<Request, ApiError> {
    let t: Target = fields("delete", map)?;
    let (conversation, cseq) = checked("delete", t)?;
    Ok(Request::Delete { conversation, cseq })
}

pub(super) fn parse_react(map: Map<String, Value>) -> Result<Request, ApiError> {
    let f: ReactFields = fields("react", map)?;
    let (conversation, cseq) = checked("react", f.target)?;
    Ok(Request::React {
        conversation,
        cseq,
        emoji: Emoji::parse(f.emoji)?,
        on: f.on,
    })
}

pub(super) fn edit(actor: &UserId, conversation: ConversationId, cseq: i64, body: Body) -> Command {
    Command::Edit {
        actor: actor.clone(),
        conversation,
        cseq,
        body,
    }
}

pub(super) fn delete(actor: &UserId, conversation: ConversationId, cseq: i64) -> Command {
    Command::Delete {
        actor: actor.clone(),
        conversation,
        cseq,
    }
}

pub(super) fn react(
    actor: &UserId,
    conversation: ConversationId,
    cseq: i64,
    emoji: Emoji,
    on: bool,
) -> Command {
    Command::React {
        actor: actor.clone(),
        conversation,
        cseq,
        emoji,
        on,
    }
}
