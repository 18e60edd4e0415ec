//! `receipts {conversation, after?, limit?}`: a page of the members' read positions (the
//! last `cseq` each has read), by user id, for a member of it. How members of a group
//! larger than `read_receipts_fanout_max` learn them: there a read marker is not sent to
//! every member as an event.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{fields, Request};
use crate::db::Database;
use crate::foundation::error::ApiError;
use crate::foundation::frames::results;
use crate::foundation::protocol::{ConversationId, UserId, MAX_MEMBERS_PAGE};
use crate::read::store;

/// Receipts in a page unless the request says fewer.
const DEFAULT_LIMIT: i64 = 100;

#[derive(Deserialize)]
struct Fields {
    conversation: ConversationId,
    after: Option<UserId>,
    limit: Option<i64>,
}

pub(super) fn parse(map: Map<String, Value>) -> Result<Request, ApiError> {
    let f: Fields = fields("receipts", map)?;
    let limit = f.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_MEMBERS_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "receipts: limit must be 1..{MAX_MEMBERS_PAGE}, got {limit}"
        )));
    }
    Ok(Request::Receipts {
        conversation: f.conversation,
        after: f.after,
        limit,
    })
}

pub(super) async fn apply(
    db: &Database,
    user: &UserId,
    conversation: &ConversationId,
    after: Option<&UserId>,
    limit: i64,
) -> Result<results::Receipts, ApiError> {
    let (page, has_more) = store::receipts(db, user, conversation, after, limit).await?;
    Ok(results::Receipts {
        receipts: page
            .into_iter()
            .map(|(user, cseq)| results::Receipt { user, cseq })
            .collect(),
        has_more,
    })
}
