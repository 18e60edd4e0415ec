//! `members {conversation, after?, limit?}`: a page of a conversation's members, by id,
//! for a member of it.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::Request;
use super::{fields, members_for};
use crate::db::Database;
use crate::foundation::error::ApiError;
use crate::foundation::frames::results;
use crate::foundation::protocol::{ConversationId, UserId, MAX_MEMBERS_PAGE};
use crate::read::cache::ConversationCache;

#[derive(Deserialize)]
struct Fields {
    conversation: ConversationId,
    after: Option<UserId>,
    limit: Option<i64>,
}

pub(super) fn parse(map: Map<String, Value>) -> Result<Request, ApiError> {
    let f: Fields = fields("members", map)?;
    let limit = f.limit.unwrap_or(MAX_MEMBERS_PAGE);
    if !(1..=MAX_MEMBERS_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "members: limit must be 1..{MAX_MEMBERS_PAGE}, got {limit}"
        )));
    }
    Ok(Request::Members {
        conversation: f.conversation,
        after: f.after,
        limit,
    })
}

pub(super) async fn apply(
    db: &Database,
    cache: &ConversationCache,
    user: &UserId,
    conversation: &ConversationId,
    after: Option<UserId>,
    limit: i64,
) -> Result<results::Members, ApiError> {
    let members = members_for(db, cache, user, conversation).await?;
    let start = match &after {
        Some(a) => members.partition_point(|m| m.as_str() <= a.as_str()),
        None => 0,
    };
    let end = members.len().min(start.saturating_add(limit as usize));
    Ok(results::Members {
        member_count: members.len(),
        has_more: end < members.len(),
        members: results::MemberPage {
            all: members,
            page: start..end,
        },
    })
}
