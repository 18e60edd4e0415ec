//! Typing notices: ephemeral and at most once. A notice goes to the live sessions of the
//! conversation's other members on this worker, and (when other workers hold sessions)
//! in one NOTIFY to the rest, whose listeners deliver it the same way. Nothing is stored;
//! a notice that cannot be delivered is dropped.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;

use crate::cluster::hub::Hub;
use crate::cluster::notify::{Notice, NoticeSeal, CHANNEL};
use crate::db::Database;
use crate::foundation::error::{ApiError, DbError};
use crate::foundation::frames;
use crate::foundation::metrics::Metrics;
use crate::foundation::protocol::{ConversationId, TypingState, WorkerId};
use crate::read::cache::ConversationCache;
use crate::read::store;

/// Pushes a typing frame to the live sessions here of every member but the typist.
pub(crate) fn deliver(
    hub: &Hub,
    metrics: &Metrics,
    conversation: &str,
    user: &str,
    state: TypingState,
    members: &[String],
) {
    let frame: Utf8Bytes = frames::encode(&frames::Typing {
        conversation,
        user,
        state,
    })
    .into();
    for m in members.iter().filter(|m| m.as_str() != user) {
        let dropped = hub.push(m, &frame);
        metrics.ephemeral_dropped.inc_by(dropped as u64);
    }
}

/// Tells the other workers: one NOTIFY that their listeners hand to [`deliver`].
pub(crate) async fn announce(
    db: &Database,
    seal: &NoticeSeal,
    worker_id: &WorkerId,
    conversation: &str,
    user: &str,
    state: TypingState,
    members: &[String],
) -> Result<(), ApiError> {
    let payload = Notice::typing_payload(seal, worker_id, conversation, user, state, members);
    let client = db.client().await?;
    client
        .execute(crate::db::queries::NOTIFY, &[&CHANNEL, &payload])
        .await
        .map_err(DbError::from)?;
    Ok(())
}

/// The members of a conversation, from the cache or the database.
pub(crate) async fn members_of(
    cache: &ConversationCache,
    db: &Database,
    conversation: &ConversationId,
) -> Result<Arc<Vec<String>>, ApiError> {
    if let Some(m) = cache.members(conversation.as_str()) {
        return Ok(m);
    }
    let members = store::members(db, conversation)
        .await?
        .ok_or_else(|| store::no_such_conversation(conversation))?;
    Ok(Arc::new(members))
}

/// Another worker's typing notice, as its NOTIFY carried it.
pub(crate) struct RemoteTyping {
    pub(crate) conversation: String,
    pub(crate) user: String,
    pub(crate) state: TypingState,
    /// `None` when the list did not fit in the notice.
    pub(crate) members: Option<Vec<String>>,
}

/// Another worker's typing notice: deliver it to the members' sessions here.
pub(crate) async fn remote(
    hub: &Hub,
    metrics: &Metrics,
    cache: &ConversationCache,
    db: &Database,
    notice: RemoteTyping,
) {
    let RemoteTyping {
        conversation,
        user,
        state,
        members,
    } = notice;
    let members = match members {
        Some(m) => m,
        None => {
            // Typing is ephemeral: if the members cannot be found, the notice is dropped.
            let Ok(id) = ConversationId::parse(&conversation) else {
                return;
            };
            match members_of(cache, db, &id).await {
                Ok(m) => m.to_vec(),
                Err(_) => return,
            }
        }
    };
    deliver(hub, metrics, &conversation, &user, state, &members);
}
