//! `search {query, conversation?, before_id?, limit?}`: full-text search over the messages
//! the caller can see (their conversations, from while they have been members, never
//! deleted ones), newest first, paged by message id. Words match as PostgreSQL's text
//! search (the `simple` configuration) matches them; the query takes websearch syntax.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{fields, Request};
use crate::db::Database;
use crate::foundation::error::{ApiError, Code};
use crate::foundation::frames::results;
use crate::foundation::metrics::Metrics;
use crate::foundation::protocol::{
    invisible, ConversationId, UserId, DEFAULT_SEARCH_LIMIT, MAX_QUERY_CHARS, MAX_SEARCH_LIMIT,
};
use crate::read::store;

#[derive(Deserialize)]
struct Fields {
    query: String,
    conversation: Option<ConversationId>,
    before_id: Option<i64>,
    limit: Option<i64>,
}

pub(super) fn parse(map: Map<String, Value>) -> Result<Request, ApiError> {
    let f: Fields = fields("search", map)?;
    let n = f.query.chars().count();
    if n == 0 || f.query.chars().all(invisible) {
        return Err(ApiError::bad_request("search: query must not be empty"));
    }
    if n > MAX_QUERY_CHARS {
        return Err(ApiError::new(
            Code::TooLarge,
            format!("search: query has {n} characters, the limit is {MAX_QUERY_CHARS}"),
        ));
    }
    if f.query.contains('\0') {
        return Err(ApiError::bad_request(
            "search: query must not contain the NUL character",
        ));
    }
    let limit = f.limit.unwrap_or(DEFAULT_SEARCH_LIMIT);
    if !(1..=MAX_SEARCH_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "search: limit must be 1..{MAX_SEARCH_LIMIT}, got {limit}"
        )));
    }
    if let Some(b) = f.before_id {
        if b < 1 {
            return Err(ApiError::bad_request("search: before_id must be >= 1"));
        }
    }
    Ok(Request::Search {
        query: f.query,
        conversation: f.conversation,
        before_id: f.before_id,
        limit,
    })
}

pub(super) async fn apply(
    db: &Database,
    metrics: &Metrics,
    user: &UserId,
    query: &str,
    conversation: Option<&ConversationId>,
    before_id: Option<i64>,
    limit: i64,
) -> Result<results::Search, ApiError> {
    let (messages, has_more) =
        store::search(db, metrics, user, conversation, query, before_id, limit).await?;
    Ok(results::Search { messages, has_more })
}
