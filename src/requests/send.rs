//! `send {conversation | to, body, client_msg_id}`: a message, committed by the writer
//! (`pgchat.apply_batch`'s `send` branch) and acknowledged after commit.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::fields;
use super::Request;
use crate::foundation::error::ApiError;
use crate::foundation::metrics::Metrics;
use crate::foundation::protocol::{Body, ClientMsgId, ConversationId, Target, UserId};
use crate::write::Command;

#[derive(Deserialize)]
struct Fields {
    conversation: Option<ConversationId>,
    to: Option<UserId>,
    body: String,
    client_msg_id: ClientMsgId,
}

pub(super) fn parse(
    map: Map<String, Value>,
    max_message_chars: usize,
) -> Result<Request, ApiError> {
    let f: Fields = fields("send", map)?;
    let target = match (f.conversation, f.to) {
        (Some(c), None) => Target::Conversation(c),
        (None, Some(u)) => Target::User(u),
        _ => {
            return Err(ApiError::bad_request(
                "send: give exactly one of conversation or to",
            ))
        }
    };
    Ok(Request::Send {
        target,
        body: Body::parse(f.body, max_message_chars)?,
        client_msg_id: f.client_msg_id,
    })
}

pub(super) fn command(
    metrics: &Metrics,
    sender: &UserId,
    target: Target,
    body: Body,
    client_msg_id: ClientMsgId,
) -> Command {
    metrics.messages_received.inc();
    Command::Send {
        sender: sender.clone(),
        target,
        body,
        client_msg_id,
    }
}
