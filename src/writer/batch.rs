//! One batch, one transaction: lock what the commands touch, apply the commands in order
//! to an in-memory copy, write the differences, commit.
//!
//! Lock order, the same in every transaction that allocates `seq` or `cseq`:
//! 1. new `users` rows (inserted in id order),
//! 2. new direct `conversations` (inserted in key order),
//! 3. the touched `conversations` rows, by id, `FOR NO KEY UPDATE`,
//! 4. the `users` rows whose stream may grow, by id, `FOR NO KEY UPDATE`.
//!
//! `FOR NO KEY UPDATE` rather than `FOR UPDATE`: inserting a message or a member takes
//! `FOR KEY SHARE` on the rows it references, which `FOR UPDATE` would conflict with.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use futures_util::future::{try_join_all, BoxFuture};
use postgres_types::ToSql;
use serde_json::{json, Value};

use super::{Command, Outcome};
use crate::cache::Snapshot;
use crate::db::{Database, Tx};
use crate::error::{ApiError, Code, DbError};
use crate::notify::{Notice, CHANNEL};
use crate::protocol::{ConversationId, Target};
use crate::store::{self, object_fields, EventKind, Message};

/// An event to hand to the hub after commit: the frame is `{"type":kind,"seq":seq,` +
/// `fields` + `}`, and `fields` is shared by every recipient of the same event.
pub struct Published {
    pub user: String,
    pub seq: i64,
    pub kind: EventKind,
    pub fields: Arc<str>,
}

/// What a committed batch hands back.
pub struct Committed {
    pub outcomes: Vec<Result<Outcome, ApiError>>,
    pub events: Vec<Published>,
    pub conversations: Vec<Snapshot>,
}

impl Committed {
    /// `n` commands that all failed with `error`: nothing committed.
    pub fn failed(n: usize, error: ApiError) -> Committed {
        Committed {
            outcomes: vec![Err(error); n],
            events: Vec::new(),
            conversations: Vec::new(),
        }
    }
}

/// A conversation as loaded and locked, then changed by the batch's commands.
struct Conv {
    kind: String,
    name: Option<String>,
    last_cseq: i64,
    version: i64,
    /// user -> read_cseq, now.
    members: BTreeMap<String, i64>,
    /// user -> read_cseq, as loaded.
    loaded: BTreeMap<String, i64>,
    changed: bool,
    new_messages: Vec<usize>,
}

impl Conv {
    /// The version this batch commits: one more if anything changed.
    fn committed_version(&self) -> i64 {
        if self.changed {
            self.version + 1
        } else {
            self.version
        }
    }

    fn json(&self, id: &str) -> Value {
        json!({
            "id": id,
            "kind": self.kind,
            "name": self.name,
            "members": self.members.keys().collect::<Vec<_>>(),
        })
    }
}

/// The columns of the `event_queue` rows a batch inserts, as arrays for `unnest`.
#[derive(Default)]
struct EventRows {
    users: Vec<String>,
    seqs: Vec<i64>,
    kinds: Vec<EventKind>,
    message_ids: Vec<Option<i64>>,
    /// For every kind but `message`, whose row points at its message instead.
    conversation_ids: Vec<Option<String>>,
    payloads: Vec<Option<Value>>,
    /// The live frame fields of each row; `None` for message events until the id is known.
    fields: Vec<Option<Arc<str>>>,
    /// For message events: which message (index into `Apply::messages`).
    message_of: Vec<Option<usize>>,
}

/// The in-memory state a batch applies its commands to.
struct Apply {
    now: DateTime<Utc>,
    max_group_members: usize,
    convs: BTreeMap<String, Conv>,
    /// user -> (head as locked, head now): the streams that grew are those that differ.
    heads: HashMap<String, (i64, i64)>,
    names: HashMap<String, Option<String>>,
    events: EventRows,
    messages: Vec<Message>,
    /// (sender, client_msg_id) -> the message already stored, or new in this batch.
    stored: HashMap<(String, String), MessageRef>,
}

/// A message a send resolved to: one stored before, or the n-th new one of this batch
/// (whose id is known only after the insert).
#[derive(Clone)]
enum MessageRef {
    Stored(Message),
    New(usize),
}

/// What one command came to, before the batch's message ids are known.
enum Applied {
    Message(MessageRef),
    Done(Outcome),
}

impl Apply {
    fn next_seq(&mut self, user: &str) -> i64 {
        let (_, now) = self
            .heads
            .get_mut(user)
            .expect("every user whose stream grows was locked");
        *now += 1;
        *now
    }

    /// Appends an event to `users`' streams, all sharing one set of live fields.
    fn emit<'a>(
        &mut self,
        users: impl IntoIterator<Item = &'a String>,
        kind: EventKind,
        conversation: &str,
        payload: Option<Value>,
        fields: Option<Arc<str>>,
        message: Option<usize>,
    ) {
        for user in users {
            let seq = self.next_seq(user);
            let e = &mut self.events;
            e.users.push(user.clone());
            e.seqs.push(seq);
            e.kinds.push(kind);
            e.message_ids.push(None);
            e.conversation_ids
                .push((kind != EventKind::Message).then(|| conversation.to_string()));
            e.payloads.push(payload.clone());
            e.fields.push(fields.clone());
            e.message_of.push(message);
        }
    }

    /// Every member gets a `conversation` event with the conversation as it is now.
    fn announce(&mut self, id: &str, to: &[String]) {
        let conv = &self.convs[id];
        let fields: Arc<str> = object_fields(&json!({ "conversation": conv.json(id) })).into();
        self.emit(to, EventKind::Conversation, id, None, Some(fields), None);
    }

    fn conv_mut(&mut self, id: &ConversationId) -> Result<&mut Conv, ApiError> {
        self.convs
            .get_mut(id.as_str())
            .ok_or_else(|| store::no_such_conversation(id))
    }

    /// The conversation, checked to exist and to have `actor` as a member.
    fn member_of(&mut self, id: &ConversationId, actor: &str) -> Result<&mut Conv, ApiError> {
        let conv = self.conv_mut(id)?;
        if !conv.members.contains_key(actor) {
            return Err(store::not_a_member(id));
        }
        Ok(conv)
    }

    fn group_of(
        &mut self,
        id: &ConversationId,
        actor: &str,
        what: &str,
    ) -> Result<&mut Conv, ApiError> {
        let conv = self.member_of(id, actor)?;
        if conv.kind != "group" {
            return Err(ApiError::bad_request(format!(
                "{what}: {:?} is a direct conversation; its members are fixed",
                id.as_str()
            )));
        }
        Ok(conv)
    }

    fn apply(&mut self, command: &Command, conversation: &str) -> Result<Applied, ApiError> {
        let cid = ConversationId::parse(conversation).expect("ids from the database are valid");
        match command {
            Command::Send {
                sender,
                body,
                client_msg_id,
                ..
            } => {
                let key = (
                    sender.as_str().to_string(),
                    client_msg_id.as_str().to_string(),
                );
                if let Some(m) = self.stored.get(&key) {
                    return Ok(Applied::Message(m.clone()));
                }
                let conv = self.member_of(&cid, sender.as_str())?;
                conv.last_cseq += 1;
                conv.changed = true;
                let message = Message {
                    id: 0, // assigned by the insert
                    conversation: conversation.to_string(),
                    cseq: conv.last_cseq,
                    sender: sender.as_str().to_string(),
                    sender_name: self.names.get(sender.as_str()).cloned().flatten(),
                    body: body.as_str().to_string(),
                    client_msg_id: client_msg_id.as_str().to_string(),
                    created_at: self.now,
                };
                let index = self.messages.len();
                self.messages.push(message);
                let conv = self.convs.get_mut(conversation).expect("checked above");
                conv.new_messages.push(index);
                let members: Vec<String> = conv.members.keys().cloned().collect();
                self.emit(
                    &members,
                    EventKind::Message,
                    conversation,
                    None,
                    None,
                    Some(index),
                );
                self.stored.insert(key, MessageRef::New(index));
                Ok(Applied::Message(MessageRef::New(index)))
            }
            Command::GroupCreate {
                creator, members, ..
            } => {
                let conv = self.conv_mut(&cid)?;
                conv.members.insert(creator.as_str().to_string(), 0);
                for m in members {
                    conv.members.insert(m.as_str().to_string(), 0);
                }
                conv.changed = true;
                let all: Vec<String> = conv.members.keys().cloned().collect();
                self.announce(conversation, &all);
                Ok(Applied::Done(Outcome::Conversation(
                    self.convs[conversation].json(conversation),
                )))
            }
            Command::GroupAdd { actor, users, .. } => {
                let max = self.max_group_members;
                let conv = self.group_of(&cid, actor.as_str(), "group_add")?;
                let new: Vec<&str> = users
                    .iter()
                    .map(|u| u.as_str())
                    .filter(|u| !conv.members.contains_key(*u))
                    .collect();
                if conv.members.len() + new.len() > max {
                    return Err(ApiError::new(
                        Code::TooLarge,
                        format!(
                            "group_add: the group would have {} members; the limit is {max}",
                            conv.members.len() + new.len()
                        ),
                    ));
                }
                if !new.is_empty() {
                    for u in new {
                        conv.members.insert(u.to_string(), 0);
                    }
                    conv.changed = true;
                    let all: Vec<String> = conv.members.keys().cloned().collect();
                    self.announce(conversation, &all);
                }
                Ok(Applied::Done(Outcome::Conversation(
                    self.convs[conversation].json(conversation),
                )))
            }
            Command::GroupRemove { actor, users, .. } => {
                let conv = self.group_of(&cid, actor.as_str(), "group_remove")?;
                let gone: Vec<String> = users
                    .iter()
                    .map(|u| u.as_str().to_string())
                    .filter(|u| conv.members.contains_key(u))
                    .collect();
                self.remove(conversation, &gone);
                Ok(Applied::Done(Outcome::Conversation(
                    self.convs[conversation].json(conversation),
                )))
            }
            Command::GroupLeave { actor, .. } => {
                self.group_of(&cid, actor.as_str(), "group_leave")?;
                self.remove(conversation, &[actor.as_str().to_string()]);
                Ok(Applied::Done(Outcome::Done))
            }
            Command::Read { user, cseq, .. } => {
                let conv = self.member_of(&cid, user.as_str())?;
                if *cseq > conv.last_cseq {
                    return Err(ApiError::bad_request(format!(
                        "read: cseq {cseq} does not exist in {:?} (its last is {})",
                        cid.as_str(),
                        conv.last_cseq
                    )));
                }
                let marker = conv.members.get_mut(user.as_str()).expect("member");
                if *cseq <= *marker {
                    return Ok(Applied::Done(Outcome::Done)); // never moves backwards
                }
                *marker = *cseq;
                let others: Vec<String> = conv
                    .members
                    .keys()
                    .filter(|m| m.as_str() != user.as_str())
                    .cloned()
                    .collect();
                let payload = json!({"conversation": conversation, "user": user, "cseq": cseq});
                let fields: Arc<str> = object_fields(&payload).into();
                self.emit(
                    &others,
                    EventKind::Read,
                    conversation,
                    Some(payload),
                    Some(fields),
                    None,
                );
                Ok(Applied::Done(Outcome::Done))
            }
        }
    }

    /// Removes `gone` from a group: each gets `removed`, the rest get the new membership.
    fn remove(&mut self, conversation: &str, gone: &[String]) {
        if gone.is_empty() {
            return;
        }
        let conv = self
            .convs
            .get_mut(conversation)
            .expect("checked by the caller");
        for u in gone {
            conv.members.remove(u);
        }
        conv.changed = true;
        let rest: Vec<String> = conv.members.keys().cloned().collect();
        let payload = json!({ "conversation": conversation });
        let fields: Arc<str> = object_fields(&payload).into();
        self.emit(
            gone,
            EventKind::Removed,
            conversation,
            Some(payload),
            Some(fields),
            None,
        );
        self.announce(conversation, &rest);
    }
}

fn direct_key(command: &Command) -> Option<String> {
    match command {
        Command::Send {
            sender,
            target: Target::User(u),
            ..
        } => {
            let (a, b) = if sender <= u {
                (sender, u)
            } else {
                (u, sender)
            };
            Some(format!("{a}\n{b}"))
        }
        _ => None,
    }
}

/// Commits `commands` in one transaction. Refusals (not a member, no such conversation,
/// a full group) are outcomes, not errors: they do not abort the others.
pub async fn commit(
    db: &Database,
    commands: &[&Command],
    max_group_members: usize,
    worker: &str,
) -> Result<Committed, DbError> {
    let tx = db.begin().await?;

    // 1. Everyone named may be new to pgchat: give them a stream.
    let named: BTreeSet<&str> = commands.iter().flat_map(|c| c.users_named()).collect();
    let named: Vec<&str> = named.into_iter().collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO users (id) SELECT u FROM unnest($1::text[]) AS u ORDER BY u
             ON CONFLICT (id) DO NOTHING",
        )
        .await?;
    tx.execute(&stmt, &[&named]).await?;

    // 2. New conversations: direct ones found or created by key, groups created.
    let keys: BTreeSet<String> = commands.iter().filter_map(|c| direct_key(c)).collect();
    let keys: Vec<String> = keys.into_iter().collect();
    let mut id_of_key: HashMap<String, String> = HashMap::new();
    let mut created_direct: Vec<(String, [String; 2])> = Vec::new();
    if !keys.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO conversations (id, kind, direct_key)
                 SELECT 'd' || nextval('conversation_ids'), 'direct', k
                 FROM unnest($1::text[]) AS k ORDER BY k
                 ON CONFLICT (direct_key) DO NOTHING
                 RETURNING id, direct_key",
            )
            .await?;
        for row in tx.query(&stmt, &[&keys]).await? {
            let (id, key): (String, String) = (row.get(0), row.get(1));
            let (a, b) = key.split_once('\n').expect("direct keys hold two ids");
            created_direct.push((id, [a.to_string(), b.to_string()]));
        }
        let stmt = tx
            .prepare_cached("SELECT id, direct_key FROM conversations WHERE direct_key = ANY($1)")
            .await?;
        for row in tx.query(&stmt, &[&keys]).await? {
            id_of_key.insert(row.get(1), row.get(0));
        }
    }
    let groups: Vec<&Command> = commands
        .iter()
        .copied()
        .filter(|c| matches!(c, Command::GroupCreate { .. }))
        .collect();
    let mut new_group_ids = Vec::new();
    if !groups.is_empty() {
        let n = groups.len() as i64;
        let stmt = tx
            .prepare_cached(
                "SELECT 'g' || nextval('conversation_ids') FROM generate_series(1, $1::int8)",
            )
            .await?;
        new_group_ids = tx
            .query(&stmt, &[&n])
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        let (names, creators): (Vec<&str>, Vec<&str>) = groups
            .iter()
            .map(|c| match c {
                Command::GroupCreate { creator, name, .. } => (name.as_str(), creator.as_str()),
                _ => unreachable!("filtered to group_create"),
            })
            .unzip();
        let stmt = tx
            .prepare_cached(
                "INSERT INTO conversations (id, kind, name, created_by)
                 SELECT id, 'group', n, c FROM unnest($1::text[], $2::text[], $3::text[]) AS t(id, n, c)",
            )
            .await?;
        tx.execute(&stmt, &[&new_group_ids, &names, &creators])
            .await?;
    }
    let mut next_group = new_group_ids.iter();
    let targets: Vec<String> = commands
        .iter()
        .map(|c| match c {
            Command::Send {
                target: Target::Conversation(id),
                ..
            }
            | Command::GroupAdd {
                conversation: id, ..
            }
            | Command::GroupRemove {
                conversation: id, ..
            }
            | Command::GroupLeave {
                conversation: id, ..
            }
            | Command::Read {
                conversation: id, ..
            } => id.as_str().to_string(),
            Command::Send { .. } => id_of_key[&direct_key(c).expect("a user target")].clone(),
            Command::GroupCreate { .. } => next_group.next().expect("one id per group").clone(),
        })
        .collect();

    // 3. Lock the conversations, then read their members.
    let conv_ids: Vec<&str> = targets
        .iter()
        .map(String::as_str)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let stmt = tx
        .prepare_cached(
            "SELECT id, kind, name, last_cseq, version FROM conversations
             WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
        )
        .await?;
    let mut convs: BTreeMap<String, Conv> = BTreeMap::new();
    for row in tx.query(&stmt, &[&conv_ids]).await? {
        convs.insert(
            row.get(0),
            Conv {
                kind: row.get(1),
                name: row.get(2),
                last_cseq: row.get(3),
                version: row.get(4),
                members: BTreeMap::new(),
                loaded: BTreeMap::new(),
                changed: false,
                new_messages: Vec::new(),
            },
        );
    }
    let stmt = tx
        .prepare_cached(
            "SELECT conversation_id, user_id, read_cseq FROM members WHERE conversation_id = ANY($1)",
        )
        .await?;
    for row in tx.query(&stmt, &[&conv_ids]).await? {
        if let Some(c) = convs.get_mut(row.get::<_, &str>(0)) {
            c.members.insert(row.get(1), row.get(2));
        }
    }
    for c in convs.values_mut() {
        c.loaded = c.members.clone();
    }

    // 4. Lock every stream that may grow: members now, and everyone named.
    let streams: BTreeSet<&str> = convs
        .values()
        .flat_map(|c| c.members.keys().map(String::as_str))
        .chain(named.iter().copied())
        .collect();
    let streams: Vec<&str> = streams.into_iter().collect();
    let stmt = tx
        .prepare_cached(
            "SELECT id, head, name FROM users WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
        )
        .await?;
    let mut heads = HashMap::new();
    let mut names = HashMap::new();
    for row in tx.query(&stmt, &[&streams]).await? {
        let head: i64 = row.get(1);
        heads.insert(row.get::<_, String>(0), (head, head));
        names.insert(row.get::<_, String>(0), row.get::<_, Option<String>>(2));
    }

    // 5. Idempotency: a (sender, client_msg_id) already stored returns the first message.
    // Looked up under the sender's lock, so a concurrent retry cannot slip past it.
    let (senders, cmids): (Vec<&str>, Vec<&str>) = commands
        .iter()
        .filter_map(|c| match c {
            Command::Send {
                sender,
                client_msg_id,
                ..
            } => Some((sender.as_str(), client_msg_id.as_str())),
            _ => None,
        })
        .unzip();
    let mut stored = HashMap::new();
    if !senders.is_empty() {
        let stmt = tx
            .prepare_cached(
                "SELECT m.id, m.conversation_id, m.cseq, m.sender_id, u.name, m.body,
                        m.client_msg_id, m.created_at
                 FROM unnest($1::text[], $2::text[]) AS k(s, c)
                 JOIN messages m ON m.sender_id = k.s AND m.client_msg_id = k.c
                 JOIN users u ON u.id = m.sender_id",
            )
            .await?;
        for row in tx.query(&stmt, &[&senders, &cmids]).await? {
            let m = Message::from_row(&row, 0);
            stored.insert(
                (m.sender.clone(), m.client_msg_id.clone()),
                MessageRef::Stored(m),
            );
        }
    }

    // 6. Apply the commands in order.
    let mut apply = Apply {
        // PostgreSQL keeps microseconds; truncate so that a live frame equals its replay.
        now: Utc::now().trunc_subsecs(6),
        max_group_members,
        convs,
        heads,
        names,
        events: EventRows::default(),
        messages: Vec::new(),
        stored,
    };
    for (id, pair) in &created_direct {
        let conv = apply.convs.get_mut(id).expect("locked");
        for m in pair {
            conv.members.insert(m.clone(), 0);
        }
        conv.changed = true;
        let members: Vec<String> = conv.members.keys().cloned().collect();
        apply.announce(id, &members);
    }
    let applied: Vec<Result<Applied, ApiError>> = commands
        .iter()
        .zip(&targets)
        .map(|(c, t)| apply.apply(c, t))
        .collect();

    // 7. Write the differences.
    write(&tx, &mut apply, worker).await?;
    tx.commit().await?;

    // The message ids are known now: fill them into the outcomes and the live frames.
    let Apply {
        mut events,
        messages,
        convs,
        ..
    } = apply;
    let message_fields: Vec<Arc<str>> = messages
        .iter()
        .map(|m| object_fields(&json!({"message": m.to_json()})).into())
        .collect();
    let outcomes = applied
        .into_iter()
        .map(|a| {
            a.map(|a| match a {
                Applied::Message(MessageRef::New(i)) => Outcome::Message(messages[i].clone()),
                Applied::Message(MessageRef::Stored(m)) => Outcome::Message(m),
                Applied::Done(o) => o,
            })
        })
        .collect();
    let published = (0..events.seqs.len())
        .map(|i| Published {
            user: std::mem::take(&mut events.users[i]),
            seq: events.seqs[i],
            kind: events.kinds[i],
            fields: match events.message_of[i] {
                Some(m) => message_fields[m].clone(),
                None => events.fields[i]
                    .clone()
                    .expect("non-message events carry fields"),
            },
        })
        .collect();
    let conversations = convs
        .into_iter()
        .map(|(id, c)| Snapshot {
            id,
            version: c.committed_version(),
            kind: c.kind,
            name: c.name,
            members: c.members.into_keys().collect(),
            last_cseq: c.last_cseq,
            new_messages: c
                .new_messages
                .iter()
                .map(|&i| messages[i].clone())
                .collect(),
        })
        .collect();
    Ok(Committed {
        outcomes,
        events: published,
        conversations,
    })
}

type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

/// Writes what `apply` changed: members, read markers, messages, events, counters.
async fn write(tx: &Tx, apply: &mut Apply, worker: &str) -> Result<(), DbError> {
    // Messages first: their ids go into the events.
    if !apply.messages.is_empty() {
        let m = &apply.messages;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO messages (conversation_id, cseq, sender_id, body, client_msg_id, created_at)
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
                 RETURNING id, conversation_id, cseq",
            )
            .await?;
        let rows = tx
            .query(
                &stmt,
                &[
                    &m.iter()
                        .map(|m| m.conversation.as_str())
                        .collect::<Vec<_>>(),
                    &m.iter().map(|m| m.cseq).collect::<Vec<_>>(),
                    &m.iter().map(|m| m.sender.as_str()).collect::<Vec<_>>(),
                    &m.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
                    &m.iter()
                        .map(|m| m.client_msg_id.as_str())
                        .collect::<Vec<_>>(),
                    &m.iter().map(|m| m.created_at).collect::<Vec<_>>(),
                ],
            )
            .await?;
        let index: HashMap<(String, i64), usize> = apply
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| ((m.conversation.clone(), m.cseq), i))
            .collect();
        for row in rows {
            let i = index[&(row.get::<_, String>(1), row.get::<_, i64>(2))];
            apply.messages[i].id = row.get(0);
        }
        for (e, m) in apply.events.message_of.iter().enumerate() {
            if let Some(m) = m {
                apply.events.message_ids[e] = Some(apply.messages[*m].id);
            }
        }
    }

    // Membership and read markers: the difference between loaded and final state.
    let (mut add_c, mut add_u, mut add_r) = (Vec::new(), Vec::new(), Vec::new());
    let (mut del_c, mut del_u) = (Vec::new(), Vec::new());
    let (mut read_c, mut read_u, mut read_r) = (Vec::new(), Vec::new(), Vec::new());
    for (id, c) in &apply.convs {
        for (u, r) in &c.members {
            match c.loaded.get(u) {
                None => {
                    add_c.push(id.as_str());
                    add_u.push(u.as_str());
                    add_r.push(*r);
                }
                Some(before) if before != r => {
                    read_c.push(id.as_str());
                    read_u.push(u.as_str());
                    read_r.push(*r);
                }
                Some(_) => {}
            }
        }
        for u in c.loaded.keys().filter(|u| !c.members.contains_key(*u)) {
            del_c.push(id.as_str());
            del_u.push(u.as_str());
        }
    }
    let (conv_ids, cseqs, versions): (Vec<&str>, Vec<i64>, Vec<i64>) = apply
        .convs
        .iter()
        .filter(|(_, c)| c.changed)
        .map(|(id, c)| (id.as_str(), c.last_cseq, c.committed_version()))
        .fold((vec![], vec![], vec![]), |mut acc, (a, b, c)| {
            acc.0.push(a);
            acc.1.push(b);
            acc.2.push(c);
            acc
        });
    let (user_ids, heads): (Vec<&str>, Vec<i64>) = apply
        .heads
        .iter()
        .filter(|(_, (locked, now))| now != locked)
        .map(|(u, (_, now))| (u.as_str(), *now))
        .unzip();

    let mut statements: Vec<(&str, Params)> = Vec::new();
    if !add_c.is_empty() {
        statements.push((
            "INSERT INTO members (conversation_id, user_id, read_cseq)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])",
            vec![&add_c, &add_u, &add_r],
        ));
    }
    if !del_c.is_empty() {
        statements.push((
            "DELETE FROM members m USING unnest($1::text[], $2::text[]) AS d(c, u)
             WHERE m.conversation_id = d.c AND m.user_id = d.u",
            vec![&del_c, &del_u],
        ));
    }
    if !read_c.is_empty() {
        statements.push((
            "UPDATE members m SET read_cseq = GREATEST(m.read_cseq, v.r)
             FROM unnest($1::text[], $2::text[], $3::int8[]) AS v(c, u, r)
             WHERE m.conversation_id = v.c AND m.user_id = v.u",
            vec![&read_c, &read_u, &read_r],
        ));
    }
    if !conv_ids.is_empty() {
        statements.push((
            "UPDATE conversations c SET last_cseq = v.n, version = v.v
             FROM unnest($1::text[], $2::int8[], $3::int8[]) AS v(id, n, v) WHERE c.id = v.id",
            vec![&conv_ids, &cseqs, &versions],
        ));
    }
    if !user_ids.is_empty() {
        statements.push((
            "UPDATE users u SET head = v.h
             FROM unnest($1::text[], $2::int8[]) AS v(id, h) WHERE u.id = v.id",
            vec![&user_ids, &heads],
        ));
    }
    let e = &apply.events;
    let kinds: Vec<&str> = e.kinds.iter().map(|k| k.as_str()).collect();
    if !e.seqs.is_empty() {
        statements.push((
            "INSERT INTO event_queue (user_id, seq, kind, message_id, conversation_id, payload)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::text[], $6::jsonb[])",
            vec![
                &e.users,
                &e.seqs,
                &kinds,
                &e.message_ids,
                &e.conversation_ids,
                &e.payloads,
            ],
        ));
    }
    // One notification per batch, delivered at commit: it tells the other workers which
    // streams grew and which conversations changed (see notify.rs).
    let payload;
    if !user_ids.is_empty() || !conv_ids.is_empty() {
        payload = Notice::events_payload(
            worker,
            user_ids
                .iter()
                .zip(&heads)
                .map(|(u, h)| (u.to_string(), *h))
                .collect(),
            conv_ids
                .iter()
                .zip(&versions)
                .map(|(c, v)| (c.to_string(), *v))
                .collect(),
        );
        statements.push(("SELECT pg_notify($1, $2)", vec![&CHANNEL, &payload]));
    }
    // Pipelined on the one connection: one round trip for all of them.
    let mut prepared = Vec::with_capacity(statements.len());
    for (sql, _) in &statements {
        prepared.push(tx.prepare_cached(sql).await?);
    }
    let runs: Vec<BoxFuture<'_, Result<u64, tokio_postgres::Error>>> = statements
        .iter()
        .zip(&prepared)
        .map(|((_, params), stmt)| Box::pin(tx.execute(stmt, params)) as BoxFuture<'_, _>)
        .collect();
    try_join_all(runs).await?;
    Ok(())
}
