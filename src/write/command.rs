//! What the writer commits, kind by kind: each [`Command`], its elements of
//! `pgchat.apply_batch`'s arrays, what its commit returns ([`Outcome`]), and what to tell
//! the client when the commit's fate is unknown. A new durable request kind is a variant
//! here and its branch in `pgchat.apply_batch` (schema.sql, and a migration); the batch
//! ([`super::batch`]) only moves the arrays and needs no change.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::foundation::error::{ApiError, Code};
use crate::foundation::frames::results::{self, Answer};
use crate::foundation::frames::{ConversationState, Extra, Message};
use crate::foundation::protocol::{
    Body, ClientMsgId, ClientOpId, ConversationId, Emoji, GroupName, Target, UserId,
};

/// One write, as validated at the edge. Every variant names the user acting.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    Send {
        sender: UserId,
        target: Target,
        body: Body,
        client_msg_id: ClientMsgId,
        /// The cseq of the message it answers, in the same conversation.
        reply_to: Option<i64>,
        /// Members it mentions.
        mentions: Vec<UserId>,
    },
    GroupCreate {
        creator: UserId,
        name: GroupName,
        members: Vec<UserId>,
        client_op_id: Option<ClientOpId>,
    },
    GroupAdd {
        actor: UserId,
        conversation: ConversationId,
        users: Vec<UserId>,
        admin: bool,
    },
    GroupRemove {
        actor: UserId,
        conversation: ConversationId,
        users: Vec<UserId>,
    },
    GroupLeave {
        actor: UserId,
        conversation: ConversationId,
    },
    Read {
        user: UserId,
        conversation: ConversationId,
        cseq: i64,
    },
    Edit {
        actor: UserId,
        conversation: ConversationId,
        cseq: i64,
        body: Body,
    },
    Delete {
        actor: UserId,
        conversation: ConversationId,
        cseq: i64,
    },
    React {
        actor: UserId,
        conversation: ConversationId,
        cseq: i64,
        emoji: Emoji,
        on: bool,
    },
}

impl Command {
    /// The command's name in `pgchat.apply_batch`'s `c_kind`, as on the wire.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Command::Send { .. } => "send",
            Command::GroupCreate { .. } => "group_create",
            Command::GroupAdd { .. } => "group_add",
            Command::GroupRemove { .. } => "group_remove",
            Command::GroupLeave { .. } => "group_leave",
            Command::Read { .. } => "read",
            Command::Edit { .. } => "edit",
            Command::Delete { .. } => "delete",
            Command::React { .. } => "react",
        }
    }

    /// The conversation whose messages it changes (edit, delete, react): the cache's
    /// copies of them are stale after it.
    pub(crate) fn rewrites(&self) -> Option<&ConversationId> {
        match self {
            Command::Edit { conversation, .. }
            | Command::Delete { conversation, .. }
            | Command::React { conversation, .. } => Some(conversation),
            _ => None,
        }
    }
}

/// What a committed command returns to its caller.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Message(Message),
    Conversation(ConversationState),
    Done,
}

impl From<Outcome> for Answer {
    /// The `ok` reply's result.
    fn from(outcome: Outcome) -> Answer {
        match outcome {
            Outcome::Message(message) => results::Sent { message }.into(),
            Outcome::Conversation(conversation) => results::Conversation { conversation }.into(),
            Outcome::Done => Answer::Empty {},
        }
    }
}

/// One command's elements of `pgchat.apply_batch`'s arrays (batch.rs's `Args`): what
/// each column means depends on the kind.
pub(super) struct Elements<'a> {
    pub(super) actor: &'a str,
    pub(super) conv: Option<&'a str>,
    pub(super) to: Option<&'a str>,
    pub(super) text: Option<&'a str>,
    pub(super) key: Option<&'a str>,
    pub(super) num: Option<i64>,
    pub(super) list: &'a [UserId],
}

impl Command {
    /// This command's elements of the batch's arrays.
    pub(super) fn elements(&self) -> Elements<'_> {
        let row = |actor| Elements {
            actor: UserId::as_str(actor),
            conv: None,
            to: None,
            text: None,
            key: None,
            num: None,
            list: &[],
        };
        match self {
            Command::Send {
                sender,
                target,
                body,
                client_msg_id,
                reply_to,
                mentions,
            } => {
                let (conv, to) = match target {
                    Target::Conversation(id) => (Some(id.as_str()), None),
                    Target::User(u) => (None, Some(u.as_str())),
                };
                Elements {
                    conv,
                    to,
                    text: Some(body.as_str()),
                    key: Some(client_msg_id.as_str()),
                    num: *reply_to,
                    list: mentions,
                    ..row(sender)
                }
            }
            Command::GroupCreate {
                creator,
                name,
                members,
                client_op_id,
            } => Elements {
                text: Some(name.as_str()),
                key: client_op_id.as_ref().map(|k| k.as_str()),
                list: members,
                ..row(creator)
            },
            Command::GroupAdd {
                actor,
                conversation,
                users,
                admin,
            } => Elements {
                conv: Some(conversation.as_str()),
                // apply_batch's flag for "make them admins too".
                num: admin.then_some(1),
                list: users,
                ..row(actor)
            },
            Command::GroupRemove {
                actor,
                conversation,
                users,
            } => Elements {
                conv: Some(conversation.as_str()),
                list: users,
                ..row(actor)
            },
            Command::GroupLeave {
                actor,
                conversation,
            } => Elements {
                conv: Some(conversation.as_str()),
                ..row(actor)
            },
            Command::Read {
                user,
                conversation,
                cseq,
            } => Elements {
                conv: Some(conversation.as_str()),
                num: Some(*cseq),
                ..row(user)
            },
            Command::Edit {
                actor,
                conversation,
                cseq,
                body,
            } => Elements {
                conv: Some(conversation.as_str()),
                num: Some(*cseq),
                text: Some(body.as_str()),
                ..row(actor)
            },
            Command::Delete {
                actor,
                conversation,
                cseq,
            } => Elements {
                conv: Some(conversation.as_str()),
                num: Some(*cseq),
                ..row(actor)
            },
            Command::React {
                actor,
                conversation,
                cseq,
                emoji,
                on,
            } => Elements {
                conv: Some(conversation.as_str()),
                num: Some(*cseq),
                text: Some(emoji.as_str()),
                key: Some(if *on { "on" } else { "off" }),
                ..row(actor)
            },
        }
    }
}

/// What `pgchat.apply_batch` returned for one command that it applied (its `o_*` columns
/// at the command's position).
pub(super) struct Returned {
    pub(super) msg_id: Option<i64>,
    pub(super) msg_conv: Option<String>,
    pub(super) msg_cseq: Option<i64>,
    pub(super) msg_at: Option<DateTime<Utc>>,
    pub(super) msg_name: Option<String>,
    /// A retried send that found its message stored before: that message's body.
    pub(super) msg_body: Option<String>,
    /// A group command: the conversation after it. An edit: the message after it. A
    /// retried send: its message as it is now; a new reply: `{"reply_to": …}`.
    pub(super) conversation: Option<Value>,
}

impl Command {
    /// The outcome of this command, applied, from what the function returned for it.
    pub(super) fn outcome(&self, r: Returned) -> Result<Outcome, ApiError> {
        Ok(match self {
            Command::Send { .. } if r.msg_body.is_some() => {
                // A retry: the message stored the first time, as it is now.
                Outcome::Message(stored_message(r.conversation)?)
            }
            Command::Send {
                sender,
                body,
                client_msg_id,
                mentions,
                ..
            } => {
                let reply_to = match r.conversation {
                    Some(mut extra) => extra
                        .get_mut("reply_to")
                        .map(|v| serde_json::from_value(v.take()))
                        .transpose()
                        .map_err(|e| unreadable("the message answered", &e))?,
                    None => None,
                };
                Outcome::Message(Message {
                    id: r.msg_id.expect("a send's message id"),
                    conversation: r.msg_conv.expect("a send's conversation"),
                    cseq: r.msg_cseq.expect("a send's cseq"),
                    sender: sender.as_str().to_string(),
                    sender_name: r.msg_name,
                    body: body.as_str().to_string(),
                    client_msg_id: client_msg_id.as_str().to_string(),
                    created_at: r.msg_at.expect("a send's time"),
                    extra: Extra {
                        reply_to,
                        mentions: mentions.iter().map(|m| m.as_str().to_string()).collect(),
                        ..Extra::default()
                    },
                })
            }
            Command::Edit { .. } => Outcome::Message(stored_message(r.conversation)?),
            Command::GroupCreate { .. }
            | Command::GroupAdd { .. }
            | Command::GroupRemove { .. } => {
                Outcome::Conversation(conversation_state(r.conversation)?)
            }
            Command::GroupLeave { .. }
            | Command::Read { .. }
            | Command::Delete { .. }
            | Command::React { .. } => Outcome::Done,
        })
    }

    /// Whether its outcome is a message this commit stored (a new send, not a retry).
    pub(super) fn stores_a_message(&self, r: &Returned) -> bool {
        matches!(self, Command::Send { .. }) && r.msg_body.is_none()
    }

    /// For a command whose commit may or may not have happened: whether a retry is safe
    /// (it is where the command is idempotent).
    pub(super) fn retry_advice(&self) -> String {
        match self {
            Command::Send { .. } => "the message may or may not be stored; retrying with the same client_msg_id is safe: it is stored once at most".to_string(),
            Command::GroupCreate { client_op_id: Some(_), .. } => "the group may or may not have been created; retrying with the same client_op_id is safe: it returns the same group".to_string(),
            Command::GroupCreate { client_op_id: None, .. } => "the group may or may not have been created, and a retry without client_op_id may create a second one: check `conversations` first (send client_op_id to make retries safe)".to_string(),
            // Each kind's advice is its own: a new kind must say whether it is idempotent.
            c @ (Command::GroupAdd { .. }
            | Command::GroupRemove { .. }
            | Command::GroupLeave { .. }
            | Command::Read { .. }
            | Command::Delete { .. }
            | Command::React { .. }) => format!("the {} may or may not have been applied; retrying is safe: applying it again changes nothing more", c.kind()),
            Command::Edit { .. } => "the edit may or may not have been applied; retrying is safe: the same body again changes nothing and tells no one".to_string(),
        }
    }
}

/// A message as `pgchat.message_json` returned it (committed already: see below).
fn stored_message(value: Option<Value>) -> Result<Message, ApiError> {
    let value = value.ok_or_else(|| unreadable("the message", &"none was returned"))?;
    Message::from_json(value).map_err(|e| unreadable("the message", &e))
}

/// A committed change whose result this build cannot read: logged, and said so.
fn unreadable(what: &str, problem: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(%problem, "pgchat.apply_batch returned {what} in a shape this build cannot read");
    ApiError::new(
        Code::Internal,
        "the change is committed, but its result could not be read (logged on the server): read it with `history`",
    )
}

/// A group command's conversation as `pgchat.conversation_json` returned it. Committed
/// already, so a shape this build does not know is reported, not retried.
fn conversation_state(value: Option<Value>) -> Result<ConversationState, ApiError> {
    let decoded = value.map(serde_json::from_value::<ConversationState>);
    match decoded {
        Some(Ok(state)) => Ok(state),
        problem => {
            tracing::error!(
                ?problem,
                "pgchat.apply_batch returned a conversation this build cannot read"
            );
            Err(ApiError::new(
                Code::Internal,
                "the change is committed, but its conversation could not be read (logged on the server): list it with `conversations`",
            ))
        }
    }
}
