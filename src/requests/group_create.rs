//! `group_create {name, members, client_op_id?}`: a group with the caller as its admin,
//! committed by the writer (`pgchat.apply_batch`'s `group_create` branch).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::Request;
use super::{fields, user_list};
use crate::foundation::error::ApiError;
use crate::foundation::protocol::{ClientOpId, GroupName, UserId};
use crate::write::Command;

#[derive(Deserialize)]
struct Fields {
    name: GroupName,
    members: Vec<Value>,
    client_op_id: Option<ClientOpId>,
}

pub(super) fn parse(
    map: Map<String, Value>,
    max_group_members: usize,
) -> Result<Request, ApiError> {
    let kind = "group_create";
    let f: Fields = fields(kind, map)?;
    // The creator is a member too, so at most max - 1 others.
    let members = user_list(kind, "members", f.members, max_group_members - 1)?;
    Ok(Request::GroupCreate {
        name: f.name,
        members,
        client_op_id: f.client_op_id,
    })
}

/// The group as the writer's command, made by `creator`.
pub(super) fn command(
    creator: &UserId,
    name: GroupName,
    members: Vec<UserId>,
    client_op_id: Option<ClientOpId>,
) -> Command {
    Command::GroupCreate {
        creator: creator.clone(),
        name,
        members,
        client_op_id,
    }
}
