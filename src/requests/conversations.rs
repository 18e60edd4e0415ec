//! `conversations`: the caller's conversations, most recent first, each with its first
//! `conversation_members_listed` members.

use crate::db::Database;
use crate::foundation::error::ApiError;
use crate::foundation::frames::results;
use crate::foundation::metrics::Metrics;
use crate::foundation::protocol::UserId;
use crate::read::store;

pub(super) async fn apply(
    db: &Database,
    metrics: &Metrics,
    members_listed: usize,
    user: &UserId,
) -> Result<results::Conversations, ApiError> {
    let conversations = store::conversations(db, metrics, user, members_listed as i32).await?;
    Ok(results::Conversations { conversations })
}
