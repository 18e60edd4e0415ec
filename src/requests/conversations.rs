//! `conversations`: the caller's conversations, most recent first, each with its first
//! `conversation_members_listed` members.

use serde_json::Value;

use crate::foundation::error::ApiError;
use crate::foundation::frames::{self, results};
use crate::foundation::protocol::UserId;
use crate::read::store;
use crate::state::App;

pub(super) async fn apply(app: &App, user: &UserId) -> Result<Value, ApiError> {
    let listed = app.config.conversation_members_listed as i32;
    let list = store::conversations(&app.db, user, listed)
        .await
        .map_err(ApiError::from)?;
    Ok(frames::result(&results::Conversations {
        conversations: list,
    }))
}
