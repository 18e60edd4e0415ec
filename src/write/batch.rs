//! One batch, one statement: the commands go to `pgchat.apply_batch` (schema.sql) as
//! arrays, which applies them in order, notifies the other workers, and returns what
//! happened. The statement is sent on its own, outside any `BEGIN`, so PostgreSQL runs it
//! in a transaction of its own and commits it before answering: the whole batch, its
//! locks, its inserts, its NOTIFY and its commit are one round trip, and the reply (hence
//! every ack) arrives only after the commit.
//!
//! What the function does, and in which order it locks rows so that concurrent batches
//! never deadlock, is documented beside it in schema.sql.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use postgres_types::ToSql;
use serde_json::Value;
use tokio_postgres::Row;

use super::command::{Command, Outcome, Returned};
use crate::db::queries::APPLY_BATCH;
use crate::db::Database;
use crate::foundation::error::{ApiError, Code, DbError};
use crate::foundation::frames::{DeletedFields, EventFields, Message, ReactionFields};
use crate::foundation::protocol::WorkerId;
use crate::read::cache::Snapshot;
use crate::read::store::EventKind;

/// An event to hand to the hub after commit: the frame is `{"type":kind,"seq":seq,` +
/// `fields` + `}`, and `fields` is shared by every recipient of the same event.
pub(crate) struct Published {
    pub(crate) user: String,
    pub(crate) seq: i64,
    pub(crate) kind: EventKind,
    pub(crate) fields: Arc<str>,
}

/// What a committed batch hands back.
pub(crate) struct Committed {
    pub(crate) outcomes: Vec<Result<Outcome, ApiError>>,
    pub(crate) events: Vec<Published>,
    pub(crate) conversations: Vec<Snapshot>,
    /// Messages this batch stored (a retried send returns an older one instead).
    pub(crate) stored: usize,
    /// The batch may have committed without this worker hearing of it.
    pub(crate) outcome_unknown: bool,
}

impl Committed {
    /// `commands` that all failed with `failure`: nothing committed, or (the connection
    /// lost once the statement was sent) nobody knows.
    pub(crate) fn failed(commands: &[&Command], failure: Failed) -> Committed {
        let unknown = failure.sent && failure.error.is_unavailable();
        let error = ApiError::from(failure.error);
        Committed {
            outcomes: commands
                .iter()
                .map(|c| {
                    Err(if unknown {
                        outcome_unknown(c)
                    } else {
                        error.clone()
                    })
                })
                .collect(),
            events: Vec::new(),
            conversations: Vec::new(),
            stored: 0,
            outcome_unknown: unknown,
        }
    }
}

/// A batch that did not commit, as far as this worker knows.
pub(crate) struct Failed {
    pub(crate) error: DbError,
    /// The statement had been sent: if the connection broke, the batch may have committed
    /// (PostgreSQL commits before it answers) and only the answer was lost.
    pub(crate) sent: bool,
}

impl Failed {
    fn before_sending(error: impl Into<DbError>) -> Failed {
        Failed {
            error: error.into(),
            sent: false,
        }
    }
}

/// `unavailable` for a command whose commit may or may not have happened, saying whether
/// a retry is safe ([`Command::retry_advice`]).
pub(crate) fn outcome_unknown(command: &Command) -> ApiError {
    let lost = "the connection to the database broke before the commit was confirmed";
    let advice = command.retry_advice();
    ApiError::new(Code::Unavailable, format!("{lost}: {advice}"))
}

/// The commands as the function's parallel arrays (one element per command; the user
/// lists of group commands flattened into `(command number, user)` pairs, 1-based).
#[derive(Default)]
struct Args<'a> {
    kind: Vec<&'static str>,
    actor: Vec<&'a str>,
    conv: Vec<Option<&'a str>>,
    to: Vec<Option<&'a str>>,
    text: Vec<Option<&'a str>>,
    key: Vec<Option<&'a str>>,
    num: Vec<Option<i64>>,
    list_cmd: Vec<i32>,
    list_user: Vec<&'a str>,
}

impl<'a> Args<'a> {
    fn new(commands: &[&'a Command]) -> Args<'a> {
        let mut a = Args::default();
        for (i, c) in commands.iter().enumerate() {
            let row = c.elements();
            a.kind.push(c.kind());
            a.actor.push(row.actor);
            a.conv.push(row.conv);
            a.to.push(row.to);
            a.text.push(row.text);
            a.key.push(row.key);
            a.num.push(row.num);
            for u in row.list {
                a.list_cmd.push(i as i32 + 1);
                a.list_user.push(u.as_str());
            }
        }
        a
    }
}

/// Commits `commands` in one statement. Refusals (not a member, no such conversation, a
/// full group) are outcomes, not errors: they do not abort the others.
pub(crate) async fn commit(
    db: &Database,
    commands: &[&Command],
    max_group_members: usize,
    worker: &WorkerId,
) -> Result<Committed, Failed> {
    let a = Args::new(commands);
    let max_members = max_group_members as i32;
    let params: [&(dyn ToSql + Sync); 11] = [
        &worker.as_str(),
        &max_members,
        &a.kind,
        &a.actor,
        &a.conv,
        &a.to,
        &a.text,
        &a.key,
        &a.num,
        &a.list_cmd,
        &a.list_user,
    ];
    let client = db.client().await.map_err(Failed::before_sending)?;
    let stmt = client
        .prepare_cached(APPLY_BATCH)
        .await
        .map_err(Failed::before_sending)?;
    // A connection the server ended while it sat in the pool (its backend terminated,
    // a failover) may be lent before its end is noticed. Known closed now, nothing can
    // have been sent on it: say so, rather than leave the outcome in doubt.
    if client.is_closed() {
        return Err(Failed::before_sending(DbError::Down(
            "the database connection was closed",
        )));
    }
    let started = std::time::Instant::now();
    let result = client.query_one(&stmt, &params).await;
    db.round_trips
        .batch
        .observe(started.elapsed().as_secs_f64());
    let row = match result {
        Ok(row) => row,
        Err(e) => {
            let error = DbError::from(e);
            if error.is_unavailable() {
                client.discard();
            }
            return Err(Failed { error, sent: true });
        }
    };
    drop(client);
    Ok(decode(&row, commands))
}

/// The function's output (see its OUT parameters in schema.sql) as outcomes, events for
/// the hub and snapshots for the cache.
fn decode(row: &Row, commands: &[&Command]) -> Committed {
    let (outcomes, stored, ids) = decode_outcomes(row, commands);
    // The edits' messages (by command number, 1-based), for their events.
    let edited: HashMap<i32, &Message> = commands
        .iter()
        .zip(&outcomes)
        .enumerate()
        .filter_map(|(i, (c, o))| match (c, o) {
            (Command::Edit { .. }, Ok(Outcome::Message(m))) => Some((i as i32 + 1, m)),
            _ => None,
        })
        .collect();
    let (events, recipients) = decode_events(row, &ids, &stored, &edited);
    // Conversations whose messages changed: the cache forgets its copies of them.
    let rewritten: HashSet<&str> = commands
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.is_ok())
        .filter_map(|(c, _)| c.rewrites().map(|id| id.as_str()))
        .collect();
    let count = stored.len();
    let conversations = decode_conversations(row, stored, &recipients, &rewritten);
    Committed {
        outcomes,
        events,
        conversations,
        stored: count,
        outcome_unknown: false,
    }
}

/// Each command's outcome, the messages this batch stored (each once, by id), and the
/// message id of each command (by position) that stored or found one.
#[allow(clippy::type_complexity)]
fn decode_outcomes(
    row: &Row,
    commands: &[&Command],
) -> (
    Vec<Result<Outcome, ApiError>>,
    BTreeMap<i64, Message>,
    Vec<Option<i64>>,
) {
    let codes: Vec<Option<String>> = row.get("o_code");
    let details: Vec<Option<String>> = row.get("o_detail");
    let ids: Vec<Option<i64>> = row.get("o_msg_id");
    let mut convs: Vec<Option<String>> = row.get("o_msg_conv");
    let cseqs: Vec<Option<i64>> = row.get("o_msg_cseq");
    let ats: Vec<Option<DateTime<Utc>>> = row.get("o_msg_at");
    let mut names: Vec<Option<String>> = row.get("o_msg_name");
    let mut bodies: Vec<Option<String>> = row.get("o_msg_body");
    let mut conversations: Vec<Option<Value>> = row.get("o_conv");

    let mut outcomes = Vec::with_capacity(commands.len());
    let mut stored: BTreeMap<i64, Message> = BTreeMap::new();
    for (i, command) in commands.iter().enumerate() {
        if let Some(code) = &codes[i] {
            let code = Code::parse(code).unwrap_or(Code::Internal);
            let detail = details[i].clone().unwrap_or_default();
            let mut e = ApiError::new(code, detail);
            if code == Code::RateLimited {
                // Refused for the users it would create: the quota is per clock hour.
                e.retry_after_ms = Some(until_the_next_hour_ms());
            }
            outcomes.push(Err(e));
            continue;
        }
        let returned = Returned {
            msg_id: ids[i],
            msg_conv: convs[i].take(),
            msg_cseq: cseqs[i],
            msg_at: ats[i],
            msg_name: names[i].take(),
            msg_body: bodies[i].take(),
            conversation: conversations[i].take(),
        };
        let fresh = command.stores_a_message(&returned);
        let outcome = command.outcome(returned);
        if let (Ok(Outcome::Message(m)), true) = (&outcome, fresh) {
            stored.entry(m.id).or_insert_with(|| m.clone());
        }
        outcomes.push(outcome);
    }

    (outcomes, stored, ids)
}

/// Milliseconds until the next full hour (UTC), when `new_users_per_hour` starts afresh.
fn until_the_next_hour_ms() -> u64 {
    let ms = chrono::Utc::now().timestamp_millis().rem_euclid(3_600_000);
    (3_600_000 - ms) as u64
}

/// The events to publish, a message event's fields being its message, encoded once for
/// all recipients (an edit's once per set of emoji its recipients reacted with, for
/// `me`); and who got each new message (its conversation's members), for the cache.
fn decode_events(
    row: &Row,
    ids: &[Option<i64>],
    stored: &BTreeMap<i64, Message>,
    edited: &HashMap<i32, &Message>,
) -> (Vec<Published>, HashMap<i64, Vec<String>>) {
    let mut edit_fields: HashMap<(i32, Vec<String>), Arc<str>> = HashMap::new();
    let message_fields: HashMap<i64, Arc<str>> = stored
        .values()
        .map(|m| (m.id, m.event_fields().shared()))
        .collect();
    let users: Vec<String> = row.get("e_user");
    let seqs: Vec<i64> = row.get("e_seq");
    let cmds: Vec<i32> = row.get("e_cmd");
    let kinds: Vec<String> = row.get("e_kind");
    let fields: Vec<Option<Value>> = row.get("e_fields");
    let mut recipients: HashMap<i64, Vec<String>> = HashMap::new();
    // append_events gives all recipients of one call the same payload, in a run (a group
    // change reaches every member): encode a run's payload once, not once per recipient.
    // Rows of one command and kind may still differ (a run of sends writes its own), so
    // a row reuses the previous encoding only when its payload is the same.
    let mut run: Option<(i32, EventKind, Arc<str>, Value)> = None;
    let events = users
        .into_iter()
        .zip(seqs)
        .zip(cmds)
        .zip(kinds)
        .zip(fields)
        .map(|((((user, seq), cmd), kind), fields)| {
            let kind = EventKind::parse(&kind).expect("apply_batch emits the kinds pgchat knows");
            let fields = match (kind, fields) {
                (EventKind::Message, _) => {
                    let id = ids[cmd as usize - 1].expect("a message event's send stored one");
                    recipients.entry(id).or_default().push(user.clone());
                    message_fields[&id].clone()
                }
                (EventKind::MessageEdited, mine) => {
                    // The emoji this recipient reacted with (null: none).
                    let mine: Vec<String> = mine
                        .and_then(|m| serde_json::from_value(m).ok())
                        .unwrap_or_default();
                    let message = edited[&cmd];
                    edit_fields
                        .entry((cmd, mine))
                        .or_insert_with_key(|(_, mine)| {
                            message.seen_by(mine).event_fields().shared()
                        })
                        .clone()
                }
                (_, Some(f)) => match &run {
                    Some((c, k, shared, previous)) if *c == cmd && *k == kind && *previous == f => {
                        shared.clone()
                    }
                    _ => {
                        let shared = encode_fields(kind, &f);
                        run = Some((cmd, kind, shared.clone(), f));
                        shared
                    }
                },
                (_, None) => unreachable!("apply_batch gives every other event its fields"),
            };
            Published {
                user,
                seq,
                kind,
                fields,
            }
        })
        .collect();

    (events, recipients)
}

/// An event's fields as the function returned them (jsonb, its keys in jsonb's order), in
/// the order the wire gives them: the same bytes as a replay of the event renders.
fn encode_fields(kind: EventKind, fields: &Value) -> Arc<str> {
    let typed = match kind {
        EventKind::MessageDeleted => serde_json::from_value::<DeletedFields>(fields.clone())
            .ok()
            .map(|f| EventFields::encode(&f)),
        EventKind::Reaction => serde_json::from_value::<ReactionFields>(fields.clone())
            .ok()
            .map(|f| EventFields::encode(&f)),
        _ => None,
    };
    typed
        .unwrap_or_else(|| EventFields::encode(fields))
        .shared()
}

/// The conversations written, for the cache: the last state of each, with the messages
/// this batch added to it.
fn decode_conversations(
    row: &Row,
    stored: BTreeMap<i64, Message>,
    recipients: &HashMap<i64, Vec<String>>,
    rewritten: &HashSet<&str>,
) -> Vec<Snapshot> {
    let v_ids: Vec<String> = row.get("v_id");
    let v_versions: Vec<i64> = row.get("v_version");
    let v_last: Vec<i64> = row.get("v_last_cseq");
    let v_members: Vec<Option<Value>> = row.get("v_members");
    let message_in: HashMap<&str, i64> = stored
        .values()
        .map(|m| (m.conversation.as_str(), m.id))
        .collect();
    let mut latest: BTreeMap<String, Snapshot> = BTreeMap::new();
    for (((id, version), last_cseq), members) in
        v_ids.into_iter().zip(v_versions).zip(v_last).zip(v_members)
    {
        let members: Vec<String> = match members {
            Some(m) => serde_json::from_value(m).unwrap_or_default(),
            // After sends: every member received each new message.
            None => {
                let mut m = message_in
                    .get(id.as_str())
                    .and_then(|m| recipients.get(m))
                    .cloned()
                    .unwrap_or_default();
                m.sort();
                m
            }
        };
        let snapshot = Snapshot {
            rewrites: rewritten.contains(id.as_str()),
            id: id.clone(),
            version,
            members,
            last_cseq,
            new_messages: Vec::new(),
        };
        match latest.get(&id) {
            Some(s) if s.version >= version => {}
            _ => {
                latest.insert(id, snapshot);
            }
        }
    }
    for m in stored.into_values() {
        if let Some(s) = latest.get_mut(&m.conversation) {
            s.new_messages.push(m);
        }
    }
    latest
        .into_values()
        .map(|mut s| {
            s.new_messages.sort_by_key(|m| m.cseq);
            s
        })
        .collect()
}
