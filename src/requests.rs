//! What each request does, shared by the WebSocket session and the HTTP API.
//!
//! `resume` and `ping` are not here: they concern the socket itself and live in
//! [`crate::session`].

use serde_json::{json, Value};

use crate::app::App;
use crate::error::ApiError;
use crate::protocol::{Request, UserId};
use crate::store;
use crate::writer::SendRequest;

/// Runs one request for `user`; the result becomes the fields of the `ok` reply.
pub async fn handle(app: &App, user: &UserId, request: Request) -> Result<Value, ApiError> {
    match request {
        Request::Send {
            target,
            body,
            client_msg_id,
        } => {
            app.metrics.messages_received.inc();
            let message = app
                .writer
                .send(SendRequest {
                    sender: user.clone(),
                    target,
                    body,
                    client_msg_id,
                })
                .await?;
            Ok(json!({ "message": message.to_json() }))
        }
        Request::History {
            conversation,
            before_cseq,
            limit,
        } => {
            let page =
                store::history(&app.db.pool, user, &conversation, before_cseq, limit).await?;
            Ok(json!({
                "messages": page.messages.iter().map(store::Message::to_json).collect::<Vec<_>>(),
                "has_more": page.has_more,
                "total": page.total,
            }))
        }
        Request::Conversations => {
            let list = store::conversations(&app.db.pool, user)
                .await
                .map_err(ApiError::from)?;
            Ok(json!({ "conversations": list }))
        }
        Request::Ping => Ok(json!({})),
        Request::Resume { .. } => Err(ApiError::bad_request(
            "resume is only meaningful on a WebSocket",
        )),
    }
}
