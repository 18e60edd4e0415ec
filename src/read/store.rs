//! The read path's queries: the durable event stream (events after a cursor, the heads
//! and bounds of streams), history, members and the conversation list, and how their rows
//! become the wire's types. Writes that allocate `seq`/`cseq` live in
//! [`crate::write`]; the writes here are a user's upsert ([`touch_user`]) and the pruning
//! of events past `event_retention` ([`prune_events`]), with parameterised statements
//! cached per connection.

use chrono::{DateTime, Utc};
use postgres_types::ToSql;
use serde_json::Value;
use tokio_postgres::Row;

use crate::db::{queries, Database};
use crate::foundation::error::{ApiError, DbError};
use crate::foundation::frames::{
    event_frame, ConversationEntry, ConversationFields, ConversationKind, DeletedFields,
    EventFields, Extra, Message, ReactionFields,
};
use crate::foundation::metrics::Metrics;
use crate::foundation::protocol::{ConversationCursor, ConversationId, UserId};

/// The columns [`message_from_row`] reads.
pub(crate) const MESSAGE_COLUMNS: usize = 13;

/// Reads a message from the columns `id, conversation_id, cseq, sender_id, sender_name,
/// body, client_msg_id, created_at` and then `queries::message_extras!`'s `edited_at,
/// deleted, reply, mentions, reactions`, starting at `at`. An error (a NULL where a message
/// has a value: the message row is gone, deleted by hand) says which column.
pub(crate) fn message_from_row(row: &Row, at: usize) -> Result<Message, String> {
    let get = |e: tokio_postgres::Error| e.to_string();
    let reply: Option<Value> = row.try_get(at + 10).map_err(get)?;
    let reactions: Option<Value> = row.try_get(at + 12).map_err(get)?;
    Ok(Message {
        id: row.try_get(at).map_err(get)?,
        conversation: row.try_get(at + 1).map_err(get)?,
        cseq: row.try_get(at + 2).map_err(get)?,
        sender: row.try_get(at + 3).map_err(get)?,
        sender_name: row.try_get(at + 4).map_err(get)?,
        body: row.try_get(at + 5).map_err(get)?,
        client_msg_id: row.try_get(at + 6).map_err(get)?,
        created_at: row.try_get(at + 7).map_err(get)?,
        extra: Extra {
            edited_at: row.try_get(at + 8).map_err(get)?,
            deleted: row.try_get(at + 9).map_err(get)?,
            reply_to: reply
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| format!("reply: {e}"))?,
            mentions: row
                .try_get::<_, Option<Vec<String>>>(at + 11)
                .map_err(get)?
                .unwrap_or_default(),
            reactions: reactions
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| format!("reactions: {e}"))?
                .unwrap_or_default(),
        },
    })
}

/// A row pgchat cannot use (a message deleted by hand, a column of the wrong shape): one
/// log line and a count (`pgchat_bad_rows`), never a panic; the caller skips it.
pub(crate) fn bad_row(metrics: &Metrics, what: &str, detail: &dyn std::fmt::Display) {
    metrics.bad_rows.inc();
    tracing::error!(%detail, "skipped {what} that pgchat cannot read (changed by hand?)");
}

/// The kinds of durable events, as stored in `event_queue.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    Message,
    Conversation,
    Removed,
    Read,
    MessageEdited,
    MessageDeleted,
    Reaction,
}

impl EventKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Conversation => "conversation",
            EventKind::Removed => "removed",
            EventKind::Read => "read",
            EventKind::MessageEdited => "message_edited",
            EventKind::MessageDeleted => "message_deleted",
            EventKind::Reaction => "reaction",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<EventKind> {
        [
            EventKind::Message,
            EventKind::Conversation,
            EventKind::Removed,
            EventKind::Read,
            EventKind::MessageEdited,
            EventKind::MessageDeleted,
            EventKind::Reaction,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Records the user (and their current display name); returns their stream head.
/// Reads first so that an unchanged user costs no write.
pub(crate) async fn touch_user(
    db: &Database,
    user: &UserId,
    name: Option<&str>,
) -> Result<i64, DbError> {
    let client = db.client().await?;
    let stmt = client.prepare_cached(queries::USER).await?;
    if let Some(row) = client.query_opt(&stmt, &[&user.as_str()]).await? {
        let stored: Option<String> = row.get(1);
        if name.is_none() || stored.as_deref() == name {
            return Ok(row.get(0));
        }
    }
    let stmt = client.prepare_cached(queries::UPSERT_USER).await?;
    Ok(client
        .query_one(&stmt, &[&user.as_str(), &name])
        .await?
        .get(0))
}

/// One event row (as [`queries::EVENTS_AFTER`] and [`queries::EVENTS_IN`] select it) as
/// `(user, seq, frame)`. The frame is `None` for an event that cannot be shown (its
/// message row is gone, its kind is unknown): the stream still has that seq, and a
/// session moves past it instead of waiting for it forever. `None` for a row without a
/// user and seq at all.
fn event_from_row(row: &Row, metrics: &Metrics) -> Option<(String, i64, Option<String>)> {
    let (user, seq): (String, i64) = match (row.try_get(0), row.try_get(1)) {
        (Ok(u), Ok(s)) => (u, s),
        (Err(e), _) | (_, Err(e)) => {
            bad_row(metrics, "an event row", &e);
            return None;
        }
    };
    let frame = render_event(row, seq).map_err(|e| {
        bad_row(
            metrics,
            &format!("event {seq} of {user:?} (not delivered)"),
            &e,
        )
    });
    Some((user, seq, frame.ok()))
}

fn render_event(row: &Row, seq: i64) -> Result<String, String> {
    let kind: String = row.try_get(2).map_err(|e| e.to_string())?;
    let kind = EventKind::parse(&kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
    let after_message = 4 + MESSAGE_COLUMNS;
    let message = || message_from_row(row, 4).map_err(|e| format!("its message: {e}"));
    let deleted = |m: &Message| {
        EventFields::encode(&DeletedFields {
            conversation: m.conversation.clone(),
            cseq: m.cseq,
            id: m.id,
        })
    };
    Ok(match kind {
        EventKind::Message | EventKind::MessageEdited => {
            event_frame(kind.as_str(), seq, message()?.event_fields().as_str())
        }
        EventKind::MessageDeleted => event_frame(kind.as_str(), seq, deleted(&message()?).as_str()),
        EventKind::Reaction => {
            let m = message()?;
            let user: Option<String> = row.try_get("rc_user").map_err(|e| e.to_string())?;
            match user {
                Some(user) => {
                    let fields = ReactionFields {
                        conversation: m.conversation,
                        cseq: m.cseq,
                        user,
                        emoji: row.try_get("rc_emoji").map_err(|e| e.to_string())?,
                        on: row.try_get("rc_added").map_err(|e| e.to_string())?,
                    };
                    event_frame(kind.as_str(), seq, EventFields::encode(&fields).as_str())
                }
                // Its change was erased with its message: what is left to say is that.
                None => event_frame(
                    EventKind::MessageDeleted.as_str(),
                    seq,
                    deleted(&m).as_str(),
                ),
            }
        }
        EventKind::Conversation => {
            // The state the event was written with (see queries::EVENTS_AFTER).
            let state: Option<Value> = row.try_get(after_message).map_err(|e| e.to_string())?;
            let fields = EventFields::encode(&ConversationFields {
                conversation: state.as_ref(),
            });
            event_frame(kind.as_str(), seq, fields.as_str())
        }
        EventKind::Removed | EventKind::Read => {
            let payload: Option<Value> = row.try_get(3).map_err(|e| e.to_string())?;
            let payload = payload.unwrap_or_else(|| Value::Object(Default::default()));
            event_frame(kind.as_str(), seq, EventFields::encode(&payload).as_str())
        }
    })
}

/// The durable events of `user` with `seq > after`, oldest first, at most `limit` and
/// about `max_bytes` of bodies and states (at least one), as ready-to-send frames (`None`:
/// an event that cannot be shown, see [`event_from_row`]).
pub(crate) async fn events_after(
    db: &Database,
    user: &UserId,
    after: i64,
    limit: i64,
    max_bytes: i64,
    metrics: &Metrics,
) -> Result<Vec<(i64, Option<String>)>, DbError> {
    let client = db.client().await?;
    let stmt = client.prepare_cached(queries::EVENTS_AFTER).await?;
    let rows = db
        .timed_read(client.query(&stmt, &[&user.as_str(), &after, &limit, &max_bytes]))
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| event_from_row(row, metrics))
        .map(|(_, seq, frame)| (seq, frame))
        .collect())
}

/// The events in several users' ranges `(after, upto]` at once, in one query: how a
/// worker fetches what another worker's notification announced. One range scan of the
/// primary key per user (a lateral subquery behind `OFFSET 0`: a plain join against the
/// array was once planned as a hash join over the whole table), as far as `max_bytes` of
/// bodies go. Events that cannot be shown are left out: a session that needs one reads
/// the table and moves past it.
pub(crate) async fn events_in(
    db: &Database,
    ranges: &[(String, i64, i64)],
    max_bytes: i64,
    metrics: &Metrics,
) -> Result<Vec<(String, i64, String, DateTime<Utc>)>, DbError> {
    let client = db.client().await?;
    let stmt = client.prepare_cached(queries::EVENTS_IN).await?;
    let users: Vec<&str> = ranges.iter().map(|r| r.0.as_str()).collect();
    let after: Vec<i64> = ranges.iter().map(|r| r.1).collect();
    let upto: Vec<i64> = ranges.iter().map(|r| r.2).collect();
    let rows = db
        .timed_read(client.query(&stmt, &[&users, &after, &upto, &max_bytes]))
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let (user, seq, frame) = event_from_row(row, metrics)?;
            let at = row.try_get("event_at").ok()?;
            Some((user, seq, frame?, at))
        })
        .collect())
}

/// The stream heads of `users` (one primary-key probe each).
pub(crate) async fn heads(db: &Database, users: &[String]) -> Result<Vec<(String, i64)>, DbError> {
    let client = db.client().await?;
    let stmt = client.prepare_cached(queries::HEADS).await?;
    Ok(db
        .timed_read(client.query(&stmt, &[&users]))
        .await?
        .iter()
        .filter_map(|r| Some((r.get(0), r.get::<_, Option<i64>>(1)?)))
        .collect())
}

/// Where a resume may start: the user's head and the last pruned seq.
pub(crate) async fn stream_bounds(db: &Database, user: &UserId) -> Result<(i64, i64), DbError> {
    let client = db.client().await?;
    let stmt = client.prepare_cached(queries::STREAM_BOUNDS).await?;
    Ok(db
        .timed_read(client.query_opt(&stmt, &[&user.as_str()]))
        .await?
        .map(|r| (r.get(0), r.get(1)))
        .unwrap_or((0, 0)))
}

/// Which of `users` share a conversation with `user` (and `user` itself, if named).
pub(crate) async fn sharing_a_conversation(
    db: &Database,
    user: &UserId,
    users: &[UserId],
) -> Result<Vec<String>, DbError> {
    let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
    let client = db.client().await?;
    let stmt = client.prepare_cached(queries::SHARING).await?;
    Ok(db
        .timed_read(client.query(&stmt, &[&user.as_str(), &ids]))
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// One page of a conversation's history.
pub(crate) struct HistoryPage {
    pub(crate) messages: Vec<Message>,
    pub(crate) has_more: bool,
    pub(crate) total: i64,
}

/// A page of messages older than `before_cseq`, oldest first, for a member.
///
/// The access check (with the total) and the page run concurrently, pipelined on one
/// connection: one round trip. The total is the conversation's `last_cseq`, which equals
/// its message count because cseq is gap-free and messages are never deleted, so no
/// COUNT(*) scan is needed; usernames are resolved once per sender of the page.
pub(crate) async fn history(
    db: &Database,
    metrics: &Metrics,
    user: &UserId,
    conversation: &ConversationId,
    before_cseq: Option<i64>,
    limit: i64,
) -> Result<HistoryPage, ApiError> {
    let client = db.client().await?;
    let access = client
        .prepare_cached(queries::HISTORY_ACCESS)
        .await
        .map_err(DbError::from)?;
    let page = client
        .prepare_cached(queries::HISTORY_PAGE)
        .await
        .map_err(DbError::from)?;
    let before = before_cseq.unwrap_or(i64::MAX);
    let fetch = limit + 1;
    let (cid, uid) = (conversation.as_str(), user.as_str());
    let access_params: [&(dyn ToSql + Sync); 2] = [&cid, &uid];
    let page_params: [&(dyn ToSql + Sync); 4] = [&cid, &before, &fetch, &uid];
    // Pipelined: one round trip for both.
    let (access, rows) = db
        .timed_read(async {
            tokio::try_join!(
                client.query_opt(&access, &access_params),
                client.query(&page, &page_params),
            )
        })
        .await
        .map_err(DbError::from)?;
    let access = access.ok_or_else(|| no_such_conversation(conversation))?;
    if !access.get::<_, bool>(1) {
        return Err(not_a_member(conversation));
    }
    // Oldest first; the one row past the limit, if any, is the oldest.
    let has_more = rows.len() as i64 > limit;
    let page = if has_more { &rows[1..] } else { &rows[..] };
    let messages: Vec<Message> = page
        .iter()
        .filter_map(|r| {
            message_from_row(r, 0)
                .map_err(|e| bad_row(metrics, "a message of history", &e))
                .ok()
        })
        .collect();
    Ok(HistoryPage {
        messages,
        has_more,
        total: access.get(0),
    })
}

/// The members of a conversation (sorted), or `None` if it does not exist.
pub(crate) async fn members(
    db: &Database,
    conversation: &ConversationId,
) -> Result<Option<Vec<String>>, DbError> {
    let client = db.client().await?;
    let stmt = client.prepare_cached(queries::MEMBERS).await?;
    Ok(db
        .timed_read(client.query_opt(&stmt, &[&conversation.as_str()]))
        .await?
        .map(|r| r.get(0)))
}

pub(crate) fn no_such_conversation(c: &ConversationId) -> ApiError {
    ApiError::not_found(format!("conversation {:?} does not exist", c.as_str()))
}

pub(crate) fn not_a_member(c: &ConversationId) -> ApiError {
    ApiError::forbidden(format!(
        "you are not a member of conversation {:?}",
        c.as_str()
    ))
}

/// A page of the user's conversations, most recently active first, each with its members,
/// last message and unread count, in one query (no query per conversation), and the
/// cursor of the next page if there is one. The page is chosen from each membership's
/// conversation row and last message (reached by key: lateral subqueries with `LIMIT 1`,
/// never a join the planner could turn into a scan); only its rows are filled in. `unread`
/// counts nothing: a member's read marker also moves to every message they send, so the
/// unread messages are exactly those after it.
///
/// Each lists at most `members_listed` members (the first by id) beside `member_count`, so
/// a user in a few large groups does not get a reply of megabytes; `members` of one
/// conversation reads the whole list.
pub(crate) async fn conversations(
    db: &Database,
    metrics: &Metrics,
    user: &UserId,
    members_listed: i32,
    limit: i64,
    before: Option<&ConversationCursor>,
) -> Result<(Vec<ConversationEntry>, Option<ConversationCursor>), DbError> {
    let client = db.client().await?;
    let stmt = client.prepare_cached(queries::CONVERSATIONS).await?;
    let fetch = limit + 1;
    let (at, id) = (before.map(|c| c.at), before.map(|c| c.id.as_str()));
    let rows = db
        .timed_read(client.query(&stmt, &[&user.as_str(), &members_listed, &fetch, &at, &id]))
        .await?;
    let more = rows.len() as i64 > limit;
    let page = &rows[..rows.len().min(limit as usize)];
    let next = match (more, page.last()) {
        (true, Some(last)) => Some(ConversationCursor::new(
            last.try_get("active_at")?,
            last.try_get(0)?,
        )),
        _ => None,
    };
    let entries = page
        .iter()
        .filter_map(|row| {
            conversation_from_row(row)
                .map_err(|e| bad_row(metrics, "a conversation of a list", &e))
                .ok()
        })
        .collect();
    Ok((entries, next))
}

/// A page of a conversation's read receipts (each member's read position, by user id,
/// after `after`), for a member of it, and whether more follow. The access check and the
/// page run pipelined on one connection: one round trip.
pub(crate) async fn receipts(
    db: &Database,
    user: &UserId,
    conversation: &ConversationId,
    after: Option<&UserId>,
    limit: i64,
) -> Result<(Vec<(String, i64)>, bool), ApiError> {
    let client = db.client().await?;
    let access = client
        .prepare_cached(queries::HISTORY_ACCESS)
        .await
        .map_err(DbError::from)?;
    let page = client
        .prepare_cached(queries::RECEIPTS)
        .await
        .map_err(DbError::from)?;
    let (cid, uid) = (conversation.as_str(), user.as_str());
    let after = after.map_or("", UserId::as_str);
    let fetch = limit + 1;
    let access_params: [&(dyn ToSql + Sync); 2] = [&cid, &uid];
    let page_params: [&(dyn ToSql + Sync); 3] = [&cid, &after, &fetch];
    let (access, rows) = db
        .timed_read(async {
            tokio::try_join!(
                client.query_opt(&access, &access_params),
                client.query(&page, &page_params),
            )
        })
        .await
        .map_err(DbError::from)?;
    let access = access.ok_or_else(|| no_such_conversation(conversation))?;
    if !access.get::<_, bool>(1) {
        return Err(not_a_member(conversation));
    }
    let more = rows.len() as i64 > limit;
    let receipts = rows
        .iter()
        .take(limit as usize)
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok((receipts, more))
}

fn conversation_from_row(row: &Row) -> Result<ConversationEntry, String> {
    let last_message = match row
        .try_get::<_, Option<i64>>(6)
        .map_err(|e| e.to_string())?
    {
        Some(_) => Some(message_from_row(row, 6).map_err(|e| format!("its last message: {e}"))?),
        None => None,
    };
    let kind: String = row.try_get(1).map_err(|e| e.to_string())?;
    let kind = ConversationKind::parse(&kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
    let get = |e: tokio_postgres::Error| e.to_string();
    Ok(ConversationEntry {
        id: row.try_get(0).map_err(get)?,
        kind,
        name: row.try_get(2).map_err(get)?,
        members: row
            .try_get::<_, Option<Vec<String>>>(3)
            .map_err(get)?
            .unwrap_or_default(),
        member_count: row
            .try_get::<_, Option<i64>>("member_count")
            .map_err(get)?
            .unwrap_or(0),
        last_message,
        unread: row.try_get(5).map_err(get)?,
        mentions_unread: i64::from(row.try_get::<_, i32>("mentions_unread").map_err(get)?),
        admins: row.try_get(4).map_err(get)?,
    })
}

/// A page of search results for `user`: messages of their conversations (or of
/// `conversation` only) matching `query`, newest first, with ids below `before_id`, and
/// whether more follow.
pub(crate) async fn search(
    db: &Database,
    metrics: &Metrics,
    user: &UserId,
    conversation: Option<&ConversationId>,
    query: &str,
    before_id: Option<i64>,
    limit: i64,
) -> Result<(Vec<Message>, bool), ApiError> {
    let client = db.client().await?;
    if let Some(c) = conversation {
        // A conversation the user is not in: the same answers as history's.
        let access = client
            .prepare_cached(queries::HISTORY_ACCESS)
            .await
            .map_err(DbError::from)?;
        let row = db
            .timed_read(client.query_opt(&access, &[&c.as_str(), &user.as_str()]))
            .await
            .map_err(DbError::from)?
            .ok_or_else(|| no_such_conversation(c))?;
        if !row.get::<_, bool>(1) {
            return Err(not_a_member(c));
        }
    }
    let stmt = client
        .prepare_cached(queries::SEARCH)
        .await
        .map_err(DbError::from)?;
    let before = before_id.unwrap_or(i64::MAX);
    let fetch = limit + 1;
    let conv = conversation.map(ConversationId::as_str);
    let rows = db
        .timed_read(client.query(&stmt, &[&user.as_str(), &conv, &query, &before, &fetch]))
        .await
        .map_err(DbError::from)?;
    let more = rows.len() as i64 > limit;
    let messages = rows
        .iter()
        .take(limit as usize)
        .filter_map(|r| {
            message_from_row(r, 0)
                .map_err(|e| bad_row(metrics, "a message found by search", &e))
                .ok()
        })
        .collect();
    Ok((messages, more))
}

/// Deletes up to `batch` events older than `retention`, oldest first, recording how far
/// each stream was pruned (so that a resume from before it gets `resync_required`).
/// Returns how many it deleted, or `None` when another process is pruning right now.
pub(crate) async fn prune_events(
    db: &Database,
    retention: std::time::Duration,
    batch: i32,
) -> Result<Option<u64>, DbError> {
    let client = db.client().await?;
    let stmt = client.prepare_cached(queries::PRUNE_EVENTS).await?;
    let deleted: i64 = client
        .query_one(&stmt, &[&retention.as_secs_f64(), &batch])
        .await?
        .get(0);
    Ok((deleted >= 0).then_some(deleted as u64))
}
