//! `send {conversation | to, body, client_msg_id, reply_to?, mentions?}`: a message,
//! committed by the writer (`pgchat.apply_batch`'s `send` branch, which checks that the
//! message answered is one of the conversation and that those mentioned are members) and
//! acknowledged after commit.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::Request;
use super::{fields, user_list};
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
    reply_to: Option<i64>,
    #[serde(default)]
    mentions: Vec<Value>,
}

pub(super) fn parse(
    map: Map<String, Value>,
    max_message_chars: usize,
    max_mentions: usize,
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
    if let Some(r) = f.reply_to {
        if r < 1 {
            return Err(ApiError::bad_request(
                "send: reply_to must be a cseq (>= 1)",
            ));
        }
    }
    Ok(Request::Send {
        target,
        body: Body::parse(f.body, max_message_chars)?,
        client_msg_id: f.client_msg_id,
        reply_to: f.reply_to,
        mentions: user_list("send", "mentions", f.mentions, max_mentions)?,
    })
}

/// What a send carries besides its target, body and key.
pub(crate) struct Answering {
    pub(crate) reply_to: Option<i64>,
    pub(crate) mentions: Vec<UserId>,
}

pub(super) fn command(
    metrics: &Metrics,
    sender: &UserId,
    target: Target,
    body: Body,
    client_msg_id: ClientMsgId,
    answering: Answering,
) -> Command {
    metrics.messages_received.inc();
    Command::Send {
        sender: sender.clone(),
        target,
        body,
        client_msg_id,
        reply_to: answering.reply_to,
        mentions: answering.mentions,
    }
}
