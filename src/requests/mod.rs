//! The requests, one file per kind: what each is (its fields), how it is validated, and
//! how it is applied. A kind applied by the writer (`send`, `group_*`, `read`) becomes a
//! [`Command`] here and is committed by `pgchat.apply_batch`; one that concerns the socket
//! itself (`resume`, `presence_subscribe`, `auth`) is parsed here and applied by
//! [`crate::edge::session`]. The HTTP API and the WebSocket share [`handle`].
//!
//! Requests reach the worker only through [`Services`]: the database and cache, the
//! writer, the metrics, and the typing fan-out (hub, presence, worker id). Each kind takes
//! just the parts it uses (`typing` uses all but the writer, so it takes them whole). The
//! worker's configuration, authenticator, sessions and shutdown are out of their reach.
//!
//! Adding a kind: a file here (its fields, `parse`, and how it is applied: the [`Command`]
//! it becomes, or its `apply`); its registration here (a variant of [`Request`], a line
//! in [`Request::parse_body`]'s table, and one in [`command`] or [`query`]; a kind only a
//! socket can run is applied in `edge/session.rs` and listed in `query`'s "need a
//! WebSocket" arm); if it answers with data, its result type in `frames::results` (with
//! an `Answer` variant of the same name and its `answers!` entry); if the writer commits
//! it, its variant in write/command.rs and its branch in `pgchat.apply_batch`
//! (schema.sql and a migration); and its lines in docs/PROTOCOL.md and
//! docs/asyncapi.yaml.

mod auth;
mod conversations;
mod edit;
mod group_add;
mod group_create;
mod group_leave;
mod history;
mod members;
mod presence_subscribe;
mod read;
mod receipts;
mod resume;
mod search;
mod send;
pub(crate) mod typing;

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::cluster::hub::Hub;
use crate::cluster::notify::NoticeSeal;
use crate::cluster::presence::Presence;
use crate::db::Database;
use crate::foundation::budget::{ids_bytes, Sizes, SMALL_REPLY};
use crate::foundation::error::{ApiError, Code};
use crate::foundation::frames::results::Answer;
use crate::foundation::metrics::Metrics;
use crate::foundation::protocol::{
    BearerToken, Body, ClientMsgId, ClientOpId, ConversationId, Emoji, Envelope, GroupName, Limits,
    Target, TypingState, UserId, WorkerId,
};
use crate::foundation::ratelimit::UserLimits;
use crate::read::cache::ConversationCache;
use crate::read::store;
use crate::write::{Command, Writer};

/// The handles requests use, borrowed from the worker's state
/// ([`crate::state::App::services`]).
#[derive(Clone, Copy)]
pub(crate) struct Services<'a> {
    /// The read path: the database and the conversation cache.
    pub(crate) db: &'a Database,
    pub(crate) cache: &'a ConversationCache,
    /// The write path: every durable request is a [`Command`] committed by it.
    pub(crate) writer: &'a Writer,
    pub(crate) metrics: &'a Metrics,
    /// The typing fan-out: this worker's sessions, and the other workers by NOTIFY.
    pub(crate) hub: &'a Hub,
    pub(crate) presence: &'a Presence,
    pub(crate) worker_id: &'a WorkerId,
    /// Seals the typing notices sent to the other workers.
    pub(crate) seal: &'a NoticeSeal,
    /// `conversation_members_listed`: members listed per conversation by `conversations`.
    pub(crate) members_listed: usize,
    /// The users' token buckets: group commands take more than one.
    pub(crate) rate_limits: &'a UserLimits,
    /// `group_members_per_token`.
    pub(crate) group_members_per_token: usize,
}

/// One client request, fully validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Resume {
        after: i64,
    },
    Send {
        target: Target,
        body: Body,
        client_msg_id: ClientMsgId,
        /// The cseq of the message it answers.
        reply_to: Option<i64>,
        /// Members it mentions.
        mentions: Vec<UserId>,
    },
    /// A new body for one's own message.
    Edit {
        conversation: ConversationId,
        cseq: i64,
        body: Body,
    },
    /// A message made a tombstone (its sender, or an admin of its group).
    Delete {
        conversation: ConversationId,
        cseq: i64,
    },
    /// One's reaction with `emoji` on a message, set or taken back.
    React {
        conversation: ConversationId,
        cseq: i64,
        emoji: Emoji,
        on: bool,
    },
    /// Full-text search over the messages one can see, newest first.
    Search {
        query: String,
        conversation: Option<ConversationId>,
        before_id: Option<i64>,
        limit: i64,
    },
    History {
        conversation: ConversationId,
        before_cseq: Option<i64>,
        limit: i64,
    },
    /// A page of the caller's conversations, most recent first, after the cursor.
    Conversations {
        limit: i64,
        before: Option<crate::foundation::protocol::ConversationCursor>,
    },
    /// A page of a conversation's read receipts, by member id, after `after`.
    Receipts {
        conversation: ConversationId,
        after: Option<UserId>,
        limit: i64,
    },
    /// A page of a conversation's members, by id, after `after`.
    Members {
        conversation: ConversationId,
        after: Option<UserId>,
        limit: i64,
    },
    GroupCreate {
        name: GroupName,
        members: Vec<UserId>,
        client_op_id: Option<ClientOpId>,
    },
    GroupAdd {
        conversation: ConversationId,
        users: Vec<UserId>,
        /// Also make the users admins (only an admin may).
        admin: bool,
    },
    GroupRemove {
        conversation: ConversationId,
        users: Vec<UserId>,
    },
    GroupLeave {
        conversation: ConversationId,
    },
    Read {
        conversation: ConversationId,
        cseq: i64,
    },
    Typing {
        conversation: ConversationId,
        state: TypingState,
    },
    PresenceSubscribe {
        users: Vec<UserId>,
    },
    /// Replaces the session's token with a newer one for the same user (v1.1).
    Auth {
        token: BearerToken,
    },
    Ping,
}

const DUPLICATE: &str = "duplicate field";

/// A frame's top-level object, refused if a key appears twice: which of the two would count
/// depends on the parser reading it (serde_json keeps the last, others the first), so a
/// proxy or logger could see a different request than the one run.
struct UniqueKeys(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = UniqueKeys;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut map = Map::new();
                while let Some(key) = access.next_key::<String>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("{DUPLICATE} {key:?}")));
                    }
                    let value = access.next_value()?;
                    map.insert(key, value);
                }
                Ok(UniqueKeys(map))
            }
        }
        d.deserialize_map(Keys)
    }
}

impl Request {
    /// Whether the writer commits it: its answer is owed whatever the memory budget.
    pub(crate) fn is_write(&self) -> bool {
        matches!(
            self,
            Request::Send { .. }
                | Request::GroupCreate { .. }
                | Request::GroupAdd { .. }
                | Request::GroupRemove { .. }
                | Request::GroupLeave { .. }
                | Request::Read { .. }
                | Request::Edit { .. }
                | Request::Delete { .. }
                | Request::React { .. }
        )
    }

    /// The most bytes this request's reply can take while it is built and sent: what it is
    /// charged against the user's share before it runs (see [`crate::foundation::budget`]).
    pub(crate) fn reply_bytes(&self, sizes: &Sizes) -> usize {
        let n = |limit: &i64| usize::try_from(*limit).unwrap_or(0);
        SMALL_REPLY
            + match self {
                Request::History { limit, .. } | Request::Search { limit, .. } => {
                    n(limit) * sizes.message
                }
                Request::Conversations { limit, .. } => n(limit) * sizes.conversation,
                Request::Receipts { limit, .. } => ids_bytes(n(limit)) * 2,
                Request::Members { limit, .. } => ids_bytes(n(limit)),
                Request::Send { .. } | Request::Edit { .. } => sizes.message,
                Request::GroupCreate { .. }
                | Request::GroupAdd { .. }
                | Request::GroupRemove { .. } => sizes.group,
                Request::PresenceSubscribe { users } => ids_bytes(users.len()) * 2,
                Request::GroupLeave { .. }
                | Request::Read { .. }
                | Request::Delete { .. }
                | Request::React { .. }
                | Request::Typing { .. }
                | Request::Resume { .. }
                | Request::Auth { .. }
                | Request::Ping => 0,
            }
    }

    /// Parses one text frame. The envelope is returned even when the request is invalid,
    /// so the error reply carries the `ref`.
    pub fn parse(text: &str, limits: Limits) -> (Envelope, Result<Request, ApiError>) {
        let mut map = match serde_json::from_str::<UniqueKeys>(text) {
            Ok(UniqueKeys(map)) => map,
            Err(e) => {
                let why = if !e.is_data() {
                    format!("not valid JSON: {e}")
                } else if e.to_string().starts_with(DUPLICATE) {
                    e.to_string()
                } else {
                    "a request must be a JSON object".to_string()
                };
                return (Envelope::default(), Err(ApiError::bad_request(why)));
            }
        };
        let mut envelope = Envelope::default();
        match map.remove("ref") {
            None | Some(Value::Null) => {}
            Some(r @ Value::String(_)) => envelope.r#ref = Some(r),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
                envelope.r#ref = Some(Value::Number(n))
            }
            Some(_) => {
                return (
                    envelope,
                    Err(ApiError::bad_request("ref: must be a string or an integer")),
                )
            }
        }
        let kind = match map.remove("type") {
            Some(Value::String(s)) => s,
            Some(_) => {
                return (
                    envelope,
                    Err(ApiError::bad_request("type: must be a string")),
                )
            }
            None => return (envelope, Err(ApiError::bad_request("type: missing"))),
        };
        let request = Self::parse_body(&kind, map, limits);
        (envelope, request)
    }

    /// The body of a request of type `kind`, by the kind's own file. The HTTP API calls
    /// this with the fields it gathered from the path, the query and the body.
    pub(crate) fn parse_body(
        kind: &str,
        map: Map<String, Value>,
        limits: Limits,
    ) -> Result<Request, ApiError> {
        match kind {
            "resume" => resume::parse(map),
            "send" => send::parse(map, limits.max_message_chars, limits.max_mentions),
            "edit" => edit::parse_edit(map, limits.max_message_chars),
            "delete" => edit::parse_delete(map),
            "react" => edit::parse_react(map),
            "search" => search::parse(map),
            "history" => history::parse(map),
            "conversations" => conversations::parse(map),
            "receipts" => receipts::parse(map),
            "members" => members::parse(map),
            "group_create" => group_create::parse(map, limits.max_group_members),
            "group_add" | "group_remove" => group_add::parse(kind, map, limits.max_group_members),
            "group_leave" => group_leave::parse(map),
            "read" => read::parse(map),
            "typing" => typing::parse(map),
            "presence_subscribe" => presence_subscribe::parse(map, limits.max_presence_users),
            "auth" => auth::parse(map),
            "ping" => Ok(Request::Ping),
            other => Err(ApiError::new(
                Code::UnknownType,
                format!("unknown request type {other:?}"),
            )),
        }
    }
}

/// A request's fields as `T`, with the field named in type errors.
fn fields<T: DeserializeOwned>(kind: &str, map: Map<String, Value>) -> Result<T, ApiError> {
    // serde_path_to_error names the field in type errors ("after: invalid type …").
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || inner.to_string().contains(&path) {
            ApiError::bad_request(format!("{kind}: {inner}"))
        } else {
            ApiError::bad_request(format!("{kind}: {path}: {inner}"))
        }
    })
}

/// Parses a list of user ids: at most `max` (checked before parsing any, so a huge list
/// costs nothing), each valid, duplicates removed, order kept.
fn user_list(
    kind: &str,
    field: &str,
    values: Vec<Value>,
    max: usize,
) -> Result<Vec<UserId>, ApiError> {
    if values.len() > max {
        return Err(ApiError::new(
            Code::TooLarge,
            format!("{kind}: {field}: at most {max} users, got {}", values.len()),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        let s = v.as_str().ok_or_else(|| {
            ApiError::bad_request(format!("{kind}: {field}[{i}]: must be a user id string"))
        })?;
        let u = UserId::parse(s)
            .map_err(|e| ApiError::bad_request(format!("{kind}: {field}[{i}]: {e}")))?;
        if seen.insert(u.clone()) {
            out.push(u);
        }
    }
    Ok(out)
}

/// Runs one request for `user`; the answer becomes the fields of the `ok` reply. A kind
/// the writer commits is acknowledged after its commit; the others read.
pub(crate) async fn handle(
    services: Services<'_>,
    user: &UserId,
    request: Request,
) -> Result<Answer, ApiError> {
    match command(services.metrics, user, request) {
        Ok(command) => {
            charge_fanout(&services, user, &command).await?;
            Ok(services.writer.run(command).await?.into())
        }
        Err(request) => query(services, user, request).await,
    }
}

/// A group command writes an event to every member's stream: it costs rate-limit tokens
/// in proportion, one per `group_members_per_token` members it reaches (the one its frame
/// took already counts), at most a whole burst. Refused, it is `rate_limited` and not run.
async fn charge_fanout(
    services: &Services<'_>,
    user: &UserId,
    command: &Command,
) -> Result<(), ApiError> {
    let (conversation, more) = match command {
        Command::GroupCreate { members, .. } => (None, members.len() + 1),
        Command::GroupAdd {
            conversation,
            users,
            ..
        } => (Some(conversation), users.len()),
        Command::GroupRemove { conversation, .. } | Command::GroupLeave { conversation, .. } => {
            (Some(conversation), 0)
        }
        Command::Send { .. }
        | Command::Read { .. }
        | Command::Edit { .. }
        | Command::Delete { .. }
        | Command::React { .. } => return Ok(()),
    };
    let size = match conversation {
        // Not found, or not a member: the writer refuses it; it costs what its frame did.
        Some(c) => crate::cluster::typing::members_of(services.cache, services.db, c)
            .await
            .map_or(0, |m| m.len()),
        None => 0,
    };
    let reach = size + more;
    let per_token = services.group_members_per_token.max(1);
    let tokens = u32::try_from(reach.div_ceil(per_token)).unwrap_or(u32::MAX);
    if tokens <= 1 {
        return Ok(());
    }
    services
        .rate_limits
        .take_n(user.as_str(), tokens - 1)
        .map_err(|retry_after_ms| {
            services.metrics.rate_limited.inc();
            let mut e = ApiError::new(
                Code::RateLimited,
                format!(
                    "{}: it reaches {reach} members, so it costs {tokens} requests of your rate \
                     limit (one per group_members_per_token = {per_token} members): wait \
                     {retry_after_ms} ms",
                    command.kind()
                ),
            );
            e.retry_after_ms = Some(retry_after_ms);
            e
        })
}

/// A request the writer commits, as its [`Command`] (made by the kind's file); any other
/// request is handed back.
fn command(metrics: &Metrics, user: &UserId, request: Request) -> Result<Command, Request> {
    Ok(match request {
        Request::Send {
            target,
            body,
            client_msg_id,
            reply_to,
            mentions,
        } => send::command(
            metrics,
            user,
            target,
            body,
            client_msg_id,
            send::Answering { reply_to, mentions },
        ),
        Request::Edit {
            conversation,
            cseq,
            body,
        } => edit::edit(user, conversation, cseq, body),
        Request::Delete { conversation, cseq } => edit::delete(user, conversation, cseq),
        Request::React {
            conversation,
            cseq,
            emoji,
            on,
        } => edit::react(user, conversation, cseq, emoji, on),
        Request::GroupCreate {
            name,
            members,
            client_op_id,
        } => group_create::command(user, name, members, client_op_id),
        Request::GroupAdd {
            conversation,
            users,
            admin,
        } => group_add::add(user, conversation, users, admin),
        Request::GroupRemove {
            conversation,
            users,
        } => group_add::remove(user, conversation, users),
        Request::GroupLeave { conversation } => group_leave::command(user, conversation),
        Request::Read { conversation, cseq } => read::command(user, conversation, cseq),
        // Listed, not `_`: a new kind must be placed here or there.
        request @ (Request::History { .. }
        | Request::Search { .. }
        | Request::Conversations { .. }
        | Request::Receipts { .. }
        | Request::Members { .. }
        | Request::Ping
        | Request::Resume { .. }
        | Request::Typing { .. }
        | Request::PresenceSubscribe { .. }
        | Request::Auth { .. }) => return Err(request),
    })
}

/// A request answered from the database or the cache, without the writer.
async fn query(
    services: Services<'_>,
    user: &UserId,
    request: Request,
) -> Result<Answer, ApiError> {
    let Services {
        db, cache, metrics, ..
    } = services;
    match request {
        Request::History {
            conversation,
            before_cseq,
            limit,
        } => history::apply(db, cache, metrics, user, &conversation, before_cseq, limit)
            .await
            .map(Answer::from),
        Request::Search {
            query,
            conversation,
            before_id,
            limit,
        } => {
            let started = std::time::Instant::now();
            let found = search::apply(
                db,
                metrics,
                user,
                &query,
                conversation.as_ref(),
                before_id,
                limit,
            )
            .await;
            metrics
                .search_seconds
                .observe(started.elapsed().as_secs_f64());
            found.map(Answer::from)
        }
        Request::Conversations { limit, before } => {
            let listed = services.members_listed;
            conversations::apply(db, metrics, listed, user, limit, before.as_ref())
                .await
                .map(Answer::from)
        }
        Request::Receipts {
            conversation,
            after,
            limit,
        } => receipts::apply(db, user, &conversation, after.as_ref(), limit)
            .await
            .map(Answer::from),
        Request::Members {
            conversation,
            after,
            limit,
        } => members::apply(db, cache, user, &conversation, after, limit)
            .await
            .map(Answer::from),
        Request::Ping => Ok(Answer::Empty {}),
        Request::Resume { .. }
        | Request::Typing { .. }
        | Request::PresenceSubscribe { .. }
        | Request::Auth { .. } => Err(ApiError::bad_request(
            "resume, typing, presence_subscribe and auth need a WebSocket",
        )),
        // `command` took these: none reaches here.
        Request::Send { .. }
        | Request::GroupCreate { .. }
        | Request::GroupAdd { .. }
        | Request::GroupRemove { .. }
        | Request::GroupLeave { .. }
        | Request::Read { .. }
        | Request::Edit { .. }
        | Request::Delete { .. }
        | Request::React { .. } => {
            tracing::error!("a durable request reached the read path");
            Err(ApiError::internal())
        }
    }
}

/// The members of a conversation that `user` belongs to.
async fn members_for(
    db: &Database,
    cache: &ConversationCache,
    user: &UserId,
    conversation: &ConversationId,
) -> Result<Arc<Vec<String>>, ApiError> {
    let members = crate::cluster::typing::members_of(cache, db, conversation).await?;
    if members
        .binary_search_by(|m| m.as_str().cmp(user.as_str()))
        .is_err()
    {
        return Err(store::not_a_member(conversation));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_message_chars: 10,
        max_mentions: 2,
        max_group_members: 3,
        max_presence_users: 2,
    };

    #[test]
    fn errors_keep_the_ref() {
        let (env, r) = Request::parse(r#"{"type":"nope","ref":7}"#, LIMITS);
        assert_eq!(env.r#ref, Some(Value::from(7)));
        assert_eq!(r.unwrap_err().code, Code::UnknownType);
        let (env, r) = Request::parse(r#"{"type":"send","ref":"x","to":"bob"}"#, LIMITS);
        assert_eq!(env.r#ref, Some(Value::from("x")));
        let e = r.unwrap_err();
        assert_eq!(e.code, Code::BadRequest);
        assert!(e.message.contains("body"), "{}", e.message);
    }

    #[test]
    fn over_long_bodies_are_too_large() {
        let (_, r) = Request::parse(
            r#"{"type":"send","to":"bob","body":"12345678901","client_msg_id":"m"}"#,
            LIMITS,
        );
        assert_eq!(r.unwrap_err().code, Code::TooLarge);
    }

    #[test]
    fn send_needs_exactly_one_target() {
        let (_, r) = Request::parse(
            r#"{"type":"send","to":"bob","conversation":"c1","body":"x","client_msg_id":"m"}"#,
            LIMITS,
        );
        assert_eq!(r.unwrap_err().code, Code::BadRequest);
    }

    #[test]
    fn user_lists_are_bounded_checked_and_deduplicated() {
        let (_, r) = Request::parse(
            r#"{"type":"group_create","name":"g","members":["a","b","c"]}"#,
            LIMITS,
        );
        assert_eq!(r.unwrap_err().code, Code::TooLarge);
        let (_, r) = Request::parse(
            r#"{"type":"group_create","name":"g","members":["a","a"]}"#,
            LIMITS,
        );
        match r.unwrap() {
            Request::GroupCreate { members, .. } => assert_eq!(members.len(), 1),
            other => panic!("{other:?}"),
        }
        let (_, r) = Request::parse(
            r#"{"type":"presence_subscribe","users":["a","b c"]}"#,
            LIMITS,
        );
        let e = r.unwrap_err();
        assert!(e.message.contains("users[1]"), "{}", e.message);
        let (_, r) = Request::parse(
            r#"{"type":"group_create","name":"  ","members":[]}"#,
            LIMITS,
        );
        assert_eq!(r.unwrap_err().code, Code::BadRequest);
    }
}
