//! `typing {conversation, state}`: tells the other members' live sessions, on every
//! worker, that the caller is typing (or stopped). Nothing is stored; the session keeps
//! the timers that end typing by themselves. The fan-out is [`crate::cluster::typing`].

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{fields, members_for};
use crate::foundation::error::ApiError;
use crate::foundation::protocol::{ConversationId, Request, TypingState, UserId};
use crate::state::App;

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
    app: &App,
    user: &UserId,
    conversation: &ConversationId,
) -> Result<(), ApiError> {
    members_for(app, user, conversation).await.map(|_| ())
}

/// Tells the other members' live sessions (on every worker) that `user` is typing (or
/// stopped).
pub(crate) async fn apply(
    app: &App,
    user: &UserId,
    conversation: &ConversationId,
    state: TypingState,
) -> Result<(), ApiError> {
    let members = members_for(app, user, conversation).await?;
    let (c, u, s) = (conversation.as_str(), user.as_str(), state.as_str());
    crate::cluster::typing::deliver(&app.hub, &app.metrics, c, u, s, &members);
    if app.presence.peers() > 0 {
        // Other workers hold sessions too. Typing is ephemeral: if this fails, it is lost.
        crate::cluster::typing::announce(&app.db, &app.worker_id, c, u, s, &members).await?;
    }
    Ok(())
}
