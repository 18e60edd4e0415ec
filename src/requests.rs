//! What each request does, shared by the WebSocket session and the HTTP API.
//!
//! `resume` and `ping` are not here: they concern the socket itself and live in
//! [`crate::session`].

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde_json::{json, Value};

use crate::app::App;
use crate::cache::Page;
use crate::error::{ApiError, DbError};
use crate::notify::{Notice, CHANNEL};
use crate::protocol::{ConversationId, Request, TypingState, UserId};
use crate::store;
use crate::writer::Command;

/// Runs one request for `user`; the result becomes the fields of the `ok` reply.
pub async fn handle(app: &App, user: &UserId, request: Request) -> Result<Value, ApiError> {
    let command = match request {
        Request::Send {
            target,
            body,
            client_msg_id,
        } => {
            app.metrics.messages_received.inc();
            Command::Send {
                sender: user.clone(),
                target,
                body,
                client_msg_id,
            }
        }
        Request::GroupCreate {
            name,
            members,
            client_op_id,
        } => Command::GroupCreate {
            creator: user.clone(),
            name,
            members,
            client_op_id,
        },
        Request::GroupAdd {
            conversation,
            users,
            admin,
        } => Command::GroupAdd {
            actor: user.clone(),
            conversation,
            users,
            admin,
        },
        Request::GroupRemove {
            conversation,
            users,
        } => Command::GroupRemove {
            actor: user.clone(),
            conversation,
            users,
        },
        Request::GroupLeave { conversation } => Command::GroupLeave {
            actor: user.clone(),
            conversation,
        },
        Request::Read { conversation, cseq } => Command::Read {
            user: user.clone(),
            conversation,
            cseq,
        },
        Request::History {
            conversation,
            before_cseq,
            limit,
        } => return history(app, user, &conversation, before_cseq, limit).await,
        Request::Conversations => {
            let listed = app.config.conversation_members_listed as i32;
            let list = store::conversations(&app.db, user, listed)
                .await
                .map_err(ApiError::from)?;
            return Ok(json!({ "conversations": list }));
        }
        Request::Members {
            conversation,
            after,
            limit,
        } => {
            let members = members_for(app, user, &conversation).await?;
            let start = match &after {
                Some(a) => members.partition_point(|m| m.as_str() <= a.as_str()),
                None => 0,
            };
            let page: Vec<&String> = members.iter().skip(start).take(limit as usize).collect();
            let has_more = start + page.len() < members.len();
            return Ok(json!({
                "members": page,
                "member_count": members.len(),
                "has_more": has_more,
            }));
        }
        Request::Ping => return Ok(json!({})),
        Request::Resume { .. }
        | Request::Typing { .. }
        | Request::PresenceSubscribe { .. }
        | Request::Auth { .. } => {
            return Err(ApiError::bad_request(
                "resume, typing, presence_subscribe and auth need a WebSocket",
            ))
        }
    };
    Ok(app.writer.run(command).await?.into_reply())
}

/// A page of history: the first page from the conversation cache when it holds enough,
/// else from the database.
async fn history(
    app: &App,
    user: &UserId,
    conversation: &ConversationId,
    before_cseq: Option<i64>,
    limit: i64,
) -> Result<Value, ApiError> {
    let page = match before_cseq
        .is_none()
        .then(|| {
            app.cache
                .first_page(conversation.as_str(), user.as_str(), limit as usize)
        })
        .flatten()
    {
        Some(Page::NotAMember) => return Err(store::not_a_member(conversation)),
        Some(Page::Messages {
            messages,
            has_more,
            total,
        }) => {
            app.metrics.history_from_cache.inc();
            store::HistoryPage {
                messages,
                has_more,
                total,
            }
        }
        None => store::history(&app.db, user, conversation, before_cseq, limit).await?,
    };
    Ok(json!({
        "messages": page.messages.iter().map(store::Message::to_json).collect::<Vec<_>>(),
        "has_more": page.has_more,
        "total": page.total,
    }))
}

/// The members of a conversation, from the cache or the database.
async fn members_of(
    app: &App,
    conversation: &ConversationId,
) -> Result<Arc<Vec<String>>, ApiError> {
    if let Some(m) = app.cache.members(conversation.as_str()) {
        return Ok(m);
    }
    let members = store::members(&app.db, conversation)
        .await?
        .ok_or_else(|| store::no_such_conversation(conversation))?;
    Ok(Arc::new(members))
}

/// The members of a conversation that `user` belongs to.
async fn members_for(
    app: &App,
    user: &UserId,
    conversation: &ConversationId,
) -> Result<Arc<Vec<String>>, ApiError> {
    let members = members_of(app, conversation).await?;
    if members
        .binary_search_by(|m| m.as_str().cmp(user.as_str()))
        .is_err()
    {
        return Err(store::not_a_member(conversation));
    }
    Ok(members)
}

/// Checks that `user` may send typing notices to `conversation`.
pub async fn typing_allowed(
    app: &App,
    user: &UserId,
    conversation: &ConversationId,
) -> Result<(), ApiError> {
    members_for(app, user, conversation).await.map(|_| ())
}

/// Tells the other members' live sessions on this worker that `user` is typing (or
/// stopped). Nothing is stored.
pub async fn typing(
    app: &App,
    user: &UserId,
    conversation: &ConversationId,
    state: TypingState,
) -> Result<(), ApiError> {
    let members = members_for(app, user, conversation).await?;
    deliver_typing(
        app,
        conversation.as_str(),
        user.as_str(),
        state.as_str(),
        &members,
    );
    if app.presence.peers() > 0 {
        // Other workers hold sessions too. Typing is ephemeral: if this fails, it is lost.
        let payload = Notice::typing_payload(
            &app.worker_id,
            conversation.as_str(),
            user.as_str(),
            state.as_str(),
            &members,
        );
        let client = app.db.client().await?;
        client
            .execute(crate::db::queries::NOTIFY, &[&CHANNEL, &payload])
            .await
            .map_err(DbError::from)?;
    }
    Ok(())
}

/// Pushes a typing frame to the live sessions here of every member but the typist.
pub fn deliver_typing(app: &App, conversation: &str, user: &str, state: &str, members: &[String]) {
    let frame: Utf8Bytes = json!({
        "type": "typing",
        "conversation": conversation,
        "user": user,
        "state": state,
    })
    .to_string()
    .into();
    for m in members.iter().filter(|m| m.as_str() != user) {
        let dropped = app.hub.push(m, &frame);
        app.metrics.ephemeral_dropped.inc_by(dropped as u64);
    }
}

/// Another worker's typing notice: deliver it to the members' sessions here.
pub async fn remote_typing(
    app: &App,
    conversation: String,
    user: String,
    state: String,
    members: Option<Vec<String>>,
) {
    let members = match members {
        Some(m) => m,
        None => {
            // The list did not fit in the notice. Typing is ephemeral: if the members
            // cannot be found, the notice is dropped.
            let Ok(id) = ConversationId::parse(&conversation) else {
                return;
            };
            match members_of(app, &id).await {
                Ok(m) => m.to_vec(),
                Err(_) => return,
            }
        }
    };
    deliver_typing(app, &conversation, &user, &state, &members);
}
