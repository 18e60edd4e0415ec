//! `typing {conversation, state}`: tells the other members' live sessions, on every
//! worker, that the caller is typing (or stopped). Nothing is stored; the session keeps
//! the timers that end typing by themselves. The fan-out is [`crate::cluster::typing`].

use serde::Deserialize;
use serde_json::{Map, Value};

use super::Request;
use super::{fields, members_for, Services};
use crate::foundation::error::ApiError;
use crate::foundation::protocol::{ConversationId, TypingState, UserId};

#[derive(Deserialize)]
struct Fields {
    conversation: ConversationId,
    state: TypingState,
}

pub(super) fn parse(map: Map<String, Value>) -> Result<Request, ApiError> {
    let f: Fields = fields("typing", map)?;
    Ok(Request::Typing {
        conversation: f.conversation,
        state: f.state,
    })
}

/// Checks that `user` may send typing notices to `conversation`.
pub(crate) async fn allowed(
    services: Services<'_>,
    user: &UserId,
    conversation: &ConversationId,
) -> Result<(), ApiError> {
    members_for(services.db, services.cache, user, conversation)
        .await
        .map(|_| ())
}

/// Tells the other members' live sessions (on every worker) that `user` is typing (or
/// stopped).
pub(crate) async fn apply(
    services: Services<'_>,
    user: &UserId,
    conversation: &ConversationId,
    state: TypingState,
) -> Result<(), ApiError> {
    let Services {
        db,
        cache,
        metrics,
        hub,
        presence,
        worker_id,
        seal,
        ..
    } = services;
    let members = members_for(db, cache, user, conversation).await?;
    let (c, u, s) = (conversation.as_str(), user.as_str(), state);
    crate::cluster::typing::deliver(hub, metrics, c, u, s, &members);
    if presence.peers() > 0 {
        // Other workers hold sessions too. Typing is ephemeral: if this fails, it is lost
        // there, and the caller is not told (it was delivered here, and its session must
        // still keep the timer that ends it).
        if let Err(e) =
            crate::cluster::typing::announce(db, seal, worker_id, c, u, s, &members).await
        {
            tracing::debug!(error = %e.message, "a typing notice did not reach the other workers");
        }
    }
    Ok(())
}
