//! `conversations {limit?, before?}`: a page of the caller's conversations, most recently
//! active first, each with its first `conversation_members_listed` members; `next` is the
//! cursor of the page after it.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{fields, Request};
use crate::db::Database;
use crate::foundation::error::ApiError;
use crate::foundation::frames::results;
use crate::foundation::metrics::Metrics;
use crate::foundation::protocol::{ConversationCursor, UserId, MAX_CONVERSATIONS_PAGE};
use crate::read::store;

#[derive(Deserialize)]
struct Fields {
    limit: Option<i64>,
    before: Option<String>,
}

pub(super) fn parse(map: Map<String, Value>) -> Result<Request, ApiError> {
    let f: Fields = fields("conversations", map)?;
    let limit = f.limit.unwrap_or(MAX_CONVERSATIONS_PAGE);
    if !(1..=MAX_CONVERSATIONS_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "conversations: limit must be 1..{MAX_CONVERSATIONS_PAGE}, got {limit}"
        )));
    }
    let before = match f.before {
        None => None,
        Some(text) => Some(ConversationCursor::parse(&text).ok_or_else(|| {
            ApiError::bad_request(
                "conversations: before must be the `next` of an earlier conversations reply",
            )
        })?),
    };
    Ok(Request::Conversations { limit, before })
}

pub(super) async fn apply(
    db: &Database,
    metrics: &Metrics,
    members_listed: usize,
    user: &UserId,
    limit: i64,
    before: Option<&ConversationCursor>,
) -> Result<results::Conversations, ApiError> {
    let listed = i32::try_from(members_listed).unwrap_or(i32::MAX);
    let (conversations, next) =
        store::conversations(db, metrics, user, listed, limit, before).await?;
    Ok(results::Conversations {
        conversations,
        has_more: next.is_some(),
        next: next.map(|c| c.encode()),
    })
}
