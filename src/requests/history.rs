//! `history {conversation, before_cseq?, limit?}`: a page of a conversation's messages,
//! newest first; the first page from the conversation cache when it holds enough.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::fields;
use super::Request;
use crate::db::Database;
use crate::foundation::error::ApiError;
use crate::foundation::frames::results;
use crate::foundation::metrics::Metrics;
use crate::foundation::protocol::{
    ConversationId, UserId, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT,
};
use crate::read::cache::{ConversationCache, Page};
use crate::read::store;

#[derive(Deserialize)]
struct Fields {
    conversation: ConversationId,
    before_cseq: Option<i64>,
    limit: Option<i64>,
}

pub(super) fn parse(map: Map<String, Value>) -> Result<Request, ApiError> {
    let f: Fields = fields("history", map)?;
    let limit = f.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "history: limit must be 1..{MAX_HISTORY_LIMIT}, got {limit}"
        )));
    }
    if let Some(b) = f.before_cseq {
        if b < 1 {
            return Err(ApiError::bad_request("history: before_cseq must be >= 1"));
        }
    }
    Ok(Request::History {
        conversation: f.conversation,
        before_cseq: f.before_cseq,
        limit,
    })
}

pub(super) async fn apply(
    db: &Database,
    cache: &ConversationCache,
    metrics: &Metrics,
    user: &UserId,
    conversation: &ConversationId,
    before_cseq: Option<i64>,
    limit: i64,
) -> Result<results::History, ApiError> {
    let page = match before_cseq
        .is_none()
        .then(|| cache.first_page(conversation.as_str(), user.as_str(), limit as usize))
        .flatten()
    {
        Some(Page::NotAMember) => return Err(store::not_a_member(conversation)),
        Some(Page::Messages {
            messages,
            has_more,
            total,
        }) => {
            metrics.history_from_cache.inc();
            store::HistoryPage {
                messages,
                has_more,
                total,
            }
        }
        None => store::history(db, metrics, user, conversation, before_cseq, limit).await?,
    };
    Ok(results::History {
        messages: page.messages,
        has_more: page.has_more,
        total: page.total,
    })
}
