//! `group_add {conversation, users, admin?}` and `group_remove {conversation, users}`: an
//! admin changes a group's members; committed by the writer (`pgchat.apply_batch`'s
//! `group_add` and `group_remove` branches). One file: the two share their fields.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::Request;
use super::{fields, user_list};
use crate::foundation::error::ApiError;
use crate::foundation::protocol::{ConversationId, UserId};
use crate::write::Command;

#[derive(Deserialize)]
struct Fields {
    conversation: ConversationId,
    users: Vec<Value>,
    admin: Option<bool>,
}

/// `group_add` when `add`, else `group_remove`.
pub(super) fn parse(
    kind: &str,
    map: Map<String, Value>,
    max_group_members: usize,
) -> Result<Request, ApiError> {
    let f: Fields = fields(kind, map)?;
    let users = user_list(kind, "users", f.users, max_group_members)?;
    if users.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{kind}: users: must not be empty"
        )));
    }
    Ok(if kind == "group_add" {
        Request::GroupAdd {
            conversation: f.conversation,
            users,
            admin: f.admin.unwrap_or(false),
        }
    } else {
        Request::GroupRemove {
            conversation: f.conversation,
            users,
        }
    })
}

/// `actor` adding `users` (as admins too when `admin`), as the writer's command.
pub(super) fn add(
    actor: &UserId,
    conversation: ConversationId,
    users: Vec<UserId>,
    admin: bool,
) -> Command {
    Command::GroupAdd {
        actor: actor.clone(),
        conversation,
        users,
        admin,
    }
}

/// `actor` removing `users`, as the writer's command.
pub(super) fn remove(actor: &UserId, conversation: ConversationId, users: Vec<UserId>) -> Command {
    Command::GroupRemove {
        actor: actor.clone(),
        conversation,
        users,
    }
}
