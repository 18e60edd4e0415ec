//! Every frame the server sends, as serde types: the one place the wire's shapes are
//! written down (docs/asyncapi.yaml describes the same shapes; tests/spec.rs checks them
//! against each other). Field order is declaration order and is part of the contract.
//!
//! Events are the hot path: a committed event goes to every member of a conversation, and
//! only its `seq` differs between them. So an event's fields are encoded once
//! ([`EventFields::encode`]) and each recipient's frame only wraps them in
//! `{"type":…,"seq":N,…}` ([`event_frame`]).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ApiError, ErrorDetail};
use super::protocol::{rfc3339, Envelope, TypingState};

/// `hello`: the first frame of every socket.
#[derive(Serialize)]
#[serde(tag = "type", rename = "hello")]
pub(crate) struct Hello<'a> {
    pub(crate) user: &'a str,
    pub(crate) session: String,
    pub(crate) worker: &'a str,
    pub(crate) head: i64,
    pub(crate) server_time: String,
    /// The `?after=N` the session was asked to start from (and does), when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) after: Option<i64>,
}

/// `token_expiring`: the time left until the 1008 close.
#[derive(Serialize)]
#[serde(tag = "type", rename = "token_expiring")]
pub(crate) struct TokenExpiring {
    pub(crate) expires_in_ms: u64,
}

/// `typing`: a member started or stopped typing.
#[derive(Serialize)]
#[serde(tag = "type", rename = "typing")]
pub(crate) struct Typing<'a> {
    pub(crate) conversation: &'a str,
    pub(crate) user: &'a str,
    pub(crate) state: TypingState,
}

/// A conversation's kind, as the wire (and `conversations.kind`) names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ConversationKind {
    Direct,
    Group,
}

impl ConversationKind {
    pub(crate) fn parse(s: &str) -> Option<ConversationKind> {
        match s {
            "direct" => Some(ConversationKind::Direct),
            "group" => Some(ConversationKind::Group),
            _ => None,
        }
    }
}

/// One conversation in `conversations`' reply.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConversationEntry {
    pub(crate) id: String,
    pub(crate) kind: ConversationKind,
    pub(crate) name: Option<String>,
    /// The first `conversation_members_listed`, by id.
    pub(crate) members: Vec<String>,
    pub(crate) member_count: i64,
    pub(crate) last_message: Option<Message>,
    pub(crate) unread: i64,
    /// Messages above the caller's read position that mention them (a kept counter).
    pub(crate) mentions_unread: i64,
    /// Groups name their admins, as in `conversation` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) admins: Option<Vec<String>>,
}

/// A user's presence, as the wire names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PresenceStatus {
    Online,
    Offline,
    /// A user whose presence the caller may not see.
    Unknown,
}

impl PresenceStatus {
    pub(crate) fn of(online: bool) -> PresenceStatus {
        if online {
            PresenceStatus::Online
        } else {
            PresenceStatus::Offline
        }
    }
}

/// `presence`: a watched user came online or went offline.
#[derive(Serialize)]
#[serde(tag = "type", rename = "presence")]
pub(crate) struct Presence<'a> {
    pub(crate) user: &'a str,
    pub(crate) status: PresenceStatus,
    pub(crate) last_seen: Option<String>,
}

/// One user in `presence_subscribe`'s reply: `last_seen` is absent for a user whose
/// presence the caller may not see (`unknown`), and `null` for one never seen.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PresenceEntry {
    pub(crate) user: String,
    pub(crate) status: PresenceStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_seen: Option<Option<String>>,
}

/// The results of `ok` replies: the fields that follow `type` and `ref`, one type per
/// request kind that returns something. The socket wraps one in an `ok` frame
/// ([`ok_frame`]); the HTTP API sends it as the response body.
pub(crate) mod results {
    use std::sync::Arc;

    use serde::Serialize;

    use super::{ConversationEntry, ConversationState, Message, PresenceEntry};

    /// What a request answers: the result of its kind, or nothing (`{"type":"ok"}`).
    /// Every variant must serialise as a JSON object: `ok` frames flatten it.
    #[derive(Serialize)]
    #[serde(untagged)]
    pub(crate) enum Answer {
        /// `ping`, `read`, `group_leave`, `typing`, `auth`: no fields.
        Empty {},
        History(History),
        Members(Members),
        Conversations(Conversations),
        Receipts(Receipts),
        Presence(Presence),
        Head(Head),
        Sent(Sent),
        Conversation(Conversation),
        Search(Search),
    }

    /// `search`: matching messages, newest first; `has_more` when a page with
    /// `before_id` = the last one's id would find more.
    #[derive(Serialize)]
    pub(crate) struct Search {
        pub(crate) messages: Vec<Message>,
        pub(crate) has_more: bool,
    }

    /// `history`: a page of messages, oldest first.
    #[derive(Serialize)]
    pub(crate) struct History {
        pub(crate) messages: Vec<Message>,
        pub(crate) has_more: bool,
        pub(crate) total: i64,
    }

    /// `members`: a page of a conversation's members, in order.
    #[derive(Serialize)]
    pub(crate) struct Members {
        pub(crate) members: MemberPage,
        pub(crate) member_count: usize,
        pub(crate) has_more: bool,
    }

    /// A page of a shared, sorted member list: encoded from the list itself, not a copy.
    pub(crate) struct MemberPage {
        pub(crate) all: Arc<Vec<String>>,
        pub(crate) page: std::ops::Range<usize>,
    }

    impl Serialize for MemberPage {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(&self.all[self.page.clone()])
        }
    }

    /// `conversations`: a page of the caller's, most recent first; `next` is the cursor of
    /// the page after it (`before`), null on the last.
    #[derive(Serialize)]
    pub(crate) struct Conversations {
        pub(crate) conversations: Vec<ConversationEntry>,
        pub(crate) has_more: bool,
        pub(crate) next: Option<String>,
    }

    /// `receipts`: a page of the members' read positions, by user id.
    #[derive(Serialize)]
    pub(crate) struct Receipts {
        pub(crate) receipts: Vec<Receipt>,
        pub(crate) has_more: bool,
    }

    /// One member's read position: the last `cseq` they have read.
    #[derive(Serialize)]
    pub(crate) struct Receipt {
        pub(crate) user: String,
        pub(crate) cseq: i64,
    }

    /// `presence_subscribe`: one entry per user asked about, in the order asked.
    #[derive(Serialize)]
    pub(crate) struct Presence {
        pub(crate) presence: Vec<PresenceEntry>,
    }

    /// `resume`: the head of the stream reached.
    #[derive(Serialize)]
    pub(crate) struct Head {
        pub(crate) head: i64,
    }

    /// `send`: the message as stored.
    #[derive(Serialize)]
    pub(crate) struct Sent {
        pub(crate) message: Message,
    }

    /// `group_create`, `group_add`, `group_remove`: the conversation after the change.
    #[derive(Serialize)]
    pub(crate) struct Conversation {
        pub(crate) conversation: ConversationState,
    }

    /// `Answer::Kind(result)` from each kind's result.
    macro_rules! answers {
        ($($kind:ident),*) => {$(
            impl From<$kind> for Answer {
                fn from(result: $kind) -> Answer {
                    Answer::$kind(result)
                }
            }
        )*};
    }
    answers!(
        History,
        Members,
        Conversations,
        Receipts,
        Presence,
        Head,
        Sent,
        Conversation,
        Search
    );
}

/// `ok`: the reply to a request, echoing its `ref`; `result`'s fields follow.
#[derive(Serialize)]
#[serde(tag = "type", rename = "ok")]
struct OkFrame<'a, R: Serialize> {
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    r#ref: Option<&'a Value>,
    #[serde(flatten)]
    result: R,
}

/// `error`: a request refused, echoing its `ref`.
#[derive(Serialize)]
#[serde(tag = "type", rename = "error")]
struct ErrorFrame<'a> {
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    r#ref: Option<&'a Value>,
    #[serde(flatten)]
    detail: ErrorDetail<'a>,
}

/// A frame as text. Encoding these types cannot fail (string keys, no maps of other keys).
pub(crate) fn encode<T: Serialize>(frame: &T) -> String {
    serde_json::to_string(frame).expect("a frame encodes")
}

/// `{"type":"ok","ref":…, …answer}`.
pub(crate) fn ok_frame(envelope: &Envelope, answer: &results::Answer) -> String {
    encode(&OkFrame {
        r#ref: envelope.r#ref.as_ref(),
        result: answer,
    })
}

/// `{"type":"error","ref":…,"code":…,"message":…}`.
pub(crate) fn error_frame(envelope: &Envelope, error: &ApiError) -> String {
    encode(&ErrorFrame {
        r#ref: envelope.r#ref.as_ref(),
        detail: error.detail(),
    })
}

/// An event's fields, encoded once: the text of a JSON object's members without its
/// braces, shared by every recipient's frame. Holds the object as encoded and lends the
/// inside, so the fields are not copied again.
pub(crate) struct EventFields(String);

impl EventFields {
    /// `fields` must serialize as a JSON object.
    pub(crate) fn encode<T: Serialize>(fields: &T) -> EventFields {
        let s = encode(fields);
        debug_assert!(s.starts_with('{') && s.ends_with('}'));
        EventFields(s)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0[1..self.0.len() - 1]
    }

    /// The fields as the hub shares them between an event's recipients.
    pub(crate) fn shared(&self) -> Arc<str> {
        Arc::from(self.as_str())
    }
}

/// One event frame: `{"type":kind,"seq":seq,<fields>}`, `fields` as
/// [`EventFields::encode`] made them.
pub(crate) fn event_frame(kind: &str, seq: i64, fields: &str) -> String {
    let mut s = String::with_capacity(fields.len() + 40);
    s.push_str("{\"type\":\"");
    s.push_str(kind);
    s.push_str("\",\"seq\":");
    s.push_str(&seq.to_string());
    if !fields.is_empty() {
        s.push(',');
        s.push_str(fields);
    }
    s.push('}');
    s
}

/// A stored message: what `message` events, `send`'s reply, `history` and the
/// conversation list show. Encoded through [`MessageFrame`], its wire shape.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub(crate) id: i64,
    pub(crate) conversation: String,
    pub(crate) cseq: i64,
    pub(crate) sender: String,
    pub(crate) sender_name: Option<String>,
    pub(crate) body: String,
    pub(crate) client_msg_id: String,
    pub(crate) created_at: DateTime<Utc>,
    /// The extensions of protocol v1.2 (who answered what, who is mentioned, edits,
    /// deletion, reactions), all of them empty for most messages.
    pub(crate) extra: Extra,
}

/// What protocol v1.2 adds to a message. `Default` is a message never edited, not
/// deleted, answering nothing, mentioning no one, with no reactions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Extra {
    #[serde(default, with = "optional_time")]
    pub(crate) edited_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub(crate) deleted: bool,
    #[serde(default)]
    pub(crate) reply_to: Option<ReplyTo>,
    #[serde(default)]
    pub(crate) mentions: Vec<String>,
    #[serde(default)]
    pub(crate) reactions: Vec<Reaction>,
}

impl Extra {
    /// What the message costs in memory beyond its fixed size (the cache's bound).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.reply_to
            .as_ref()
            .map_or(0, |r| r.sender.len() + r.snippet.len() + 48)
            + self.mentions.iter().map(|m| m.len() + 24).sum::<usize>()
            + self
                .reactions
                .iter()
                .map(|r| r.emoji.len() + 40)
                .sum::<usize>()
    }
}

/// The message a reply answers: its cseq, its sender, and its first 100 characters as
/// they are now (`""` once it is deleted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReplyTo {
    pub(crate) cseq: i64,
    pub(crate) sender: String,
    pub(crate) snippet: String,
}

/// One emoji's reactions on a message: how many, and whether the reader is among them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Reaction {
    pub(crate) emoji: String,
    pub(crate) count: i64,
    pub(crate) me: bool,
}

/// `edited_at` as the wire writes times (RFC 3339, milliseconds, UTC), or null.
mod optional_time {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        t: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::rfc3339(*t)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<DateTime<Utc>>::deserialize(d)
    }
}

/// A message as `pgchat.message_json` returns it (schema.sql): what edit answers and a
/// retried send finds. Times come as RFC 3339 text.
#[derive(Deserialize)]
struct MessageJson {
    id: i64,
    conversation: String,
    cseq: i64,
    sender: SenderJson,
    body: String,
    client_msg_id: String,
    created_at: DateTime<Utc>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Deserialize)]
struct SenderJson {
    id: String,
    name: Option<String>,
}

impl Message {
    /// The message `pgchat.message_json` returned.
    pub(crate) fn from_json(value: Value) -> Result<Message, serde_json::Error> {
        let m: MessageJson = serde_json::from_value(value)?;
        Ok(Message {
            id: m.id,
            conversation: m.conversation,
            cseq: m.cseq,
            sender: m.sender.id,
            sender_name: m.sender.name,
            body: m.body,
            client_msg_id: m.client_msg_id,
            created_at: m.created_at,
            extra: m.extra,
        })
    }

    /// The same message as a reader who reacted with exactly `mine` sees it.
    pub(crate) fn seen_by(&self, mine: &[String]) -> Message {
        let mut m = self.clone();
        for r in &mut m.extra.reactions {
            r.me = mine.contains(&r.emoji);
        }
        m
    }
}

impl Message {
    /// The message as the wire shows it.
    fn frame(&self) -> MessageFrame<'_> {
        MessageFrame {
            id: self.id,
            conversation: &self.conversation,
            cseq: self.cseq,
            sender: Sender {
                id: &self.sender,
                name: self.sender_name.as_deref(),
            },
            body: &self.body,
            client_msg_id: &self.client_msg_id,
            created_at: rfc3339(self.created_at),
            extra: &self.extra,
        }
    }

    /// The fields of this message's event, encoded once for every recipient.
    pub(crate) fn event_fields(&self) -> EventFields {
        EventFields::encode(&MessageFields { message: self })
    }
}

impl Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.frame().serialize(s)
    }
}

/// A message as the wire shows it.
#[derive(Serialize)]
struct MessageFrame<'a> {
    id: i64,
    conversation: &'a str,
    cseq: i64,
    sender: Sender<'a>,
    body: &'a str,
    client_msg_id: &'a str,
    created_at: String,
    #[serde(flatten)]
    extra: &'a Extra,
}

/// A message's sender: the id, and the display name their token carried (or `null`).
#[derive(Serialize)]
struct Sender<'a> {
    id: &'a str,
    name: Option<&'a str>,
}

/// The fields of a `message` event.
#[derive(Serialize)]
struct MessageFields<'a> {
    message: &'a Message,
}

/// A conversation as the writer returns it after a change (`pgchat.conversation_json`
/// in schema.sql): in `conversation` events and in the group commands' replies. The
/// fields are in the order PostgreSQL's `jsonb` keeps them, which the events show too.
/// Keys this build does not know are ignored, not refused: during a rolling upgrade an
/// older worker may read a state a newer migration shaped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConversationState {
    pub(crate) id: String,
    pub(crate) kind: ConversationKind,
    pub(crate) name: Option<String>,
    /// Who the change that made this state added (at most `conversation_members_listed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) added: Option<Vec<String>>,
    /// Groups only: the members who may remove others and name admins (the first
    /// `conversation_members_listed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) admins: Option<Vec<String>>,
    /// The first `conversation_members_listed` members by id; `members` lists them all.
    pub(crate) members: Vec<String>,
    /// Who the change removed (at most `conversation_members_listed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) removed: Option<Vec<String>>,
    /// How many members it has (states stored before schema version 4 lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) member_count: Option<i64>,
}

/// The fields of a `message_deleted` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DeletedFields {
    pub(crate) conversation: String,
    pub(crate) cseq: i64,
    pub(crate) id: i64,
}

/// The fields of a `reaction` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReactionFields {
    pub(crate) conversation: String,
    pub(crate) cseq: i64,
    pub(crate) user: String,
    pub(crate) emoji: String,
    pub(crate) on: bool,
}

/// The fields of a `conversation` event: the conversation's state as the writer stored it.
#[derive(Serialize)]
pub(crate) struct ConversationFields<'a> {
    pub(crate) conversation: Option<&'a Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ok_frames_merge_the_answer() {
        let env = Envelope {
            r#ref: Some("r".into()),
        };
        assert_eq!(
            ok_frame(&env, &results::Head { head: 3 }.into()),
            r#"{"type":"ok","ref":"r","head":3}"#
        );
    }

    #[test]
    fn ok_and_error_frames_keep_the_documented_order() {
        let with_ref = Envelope {
            r#ref: Some(json!("r1")),
        };
        let members = results::Members {
            members: results::MemberPage {
                all: Arc::new(vec!["z".into(), "a".into(), "b".into()]),
                page: 1..3,
            },
            member_count: 2,
            has_more: false,
        };
        assert_eq!(
            ok_frame(&with_ref, &members.into()),
            r#"{"type":"ok","ref":"r1","members":["a","b"],"member_count":2,"has_more":false}"#
        );
        assert_eq!(
            ok_frame(&Envelope::default(), &results::Answer::Empty {}),
            r#"{"type":"ok"}"#
        );
        let mut e = ApiError::bad_request("no");
        assert_eq!(
            error_frame(&with_ref, &e),
            r#"{"type":"error","ref":"r1","code":"bad_request","message":"no"}"#
        );
        e.retry_after_ms = Some(5);
        assert_eq!(
            error_frame(&Envelope::default(), &e),
            r#"{"type":"error","code":"bad_request","message":"no","retry_after_ms":5}"#
        );
    }

    #[test]
    fn messages_and_conversations_keep_their_wire_shape() {
        let m = Message {
            id: 1,
            conversation: "c".into(),
            cseq: 2,
            sender: "u".into(),
            sender_name: None,
            body: "hi".into(),
            client_msg_id: "k".into(),
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
            extra: Extra::default(),
        };
        let sent = ok_frame(
            &Envelope::default(),
            &results::Answer::Sent(results::Sent { message: m.clone() }),
        );
        assert_eq!(
            sent,
            r#"{"type":"ok","message":{"id":1,"conversation":"c","cseq":2,"sender":{"id":"u","name":null},"body":"hi","client_msg_id":"k","created_at":"1970-01-01T00:00:00.000Z","edited_at":null,"deleted":false,"reply_to":null,"mentions":[],"reactions":[]}}"#
        );
        assert_eq!(
            event_frame("message", 5, m.event_fields().as_str()),
            sent.replace(r#"{"type":"ok","#, r#"{"type":"message","seq":5,"#)
        );
        // As pgchat.conversation_json returns it (jsonb's key order), and back unchanged.
        let stored = r#"{"id":"g","kind":"group","name":"n","added":["b"],"admins":["a"],"members":["a","b"],"removed":["c"],"member_count":2}"#;
        let state: ConversationState = serde_json::from_str(stored).unwrap();
        assert_eq!(encode(&state), stored);
        let direct =
            r#"{"id":"d","kind":"direct","name":null,"members":["a","b"],"member_count":2}"#;
        let state: ConversationState = serde_json::from_str(direct).unwrap();
        assert_eq!(encode(&state), direct);
        // A state stored before schema version 4.
        let direct = r#"{"id":"d","kind":"direct","name":null,"members":["a","b"]}"#;
        let state: ConversationState = serde_json::from_str(direct).unwrap();
        assert_eq!(encode(&state), direct);
    }

    #[test]
    fn events_share_their_fields_and_vary_only_type_and_seq() {
        let fields = EventFields::encode(&ConversationFields { conversation: None });
        assert_eq!(fields.as_str(), r#""conversation":null"#);
        assert_eq!(
            event_frame("conversation", 7, fields.as_str()),
            r#"{"type":"conversation","seq":7,"conversation":null}"#
        );
        let empty = EventFields::encode(&json!({}));
        assert_eq!(
            event_frame("read", 1, empty.as_str()),
            r#"{"type":"read","seq":1}"#
        );
    }

    #[test]
    fn ephemeral_frames_carry_their_type_first() {
        let t = Typing {
            conversation: "c",
            user: "u",
            state: TypingState::Start,
        };
        assert_eq!(
            encode(&t),
            r#"{"type":"typing","conversation":"c","user":"u","state":"start"}"#
        );
        let p = Presence {
            user: "u",
            status: PresenceStatus::Offline,
            last_seen: None,
        };
        assert_eq!(
            encode(&p),
            r#"{"type":"presence","user":"u","status":"offline","last_seen":null}"#
        );
        assert_eq!(
            encode(&TokenExpiring { expires_in_ms: 9 }),
            r#"{"type":"token_expiring","expires_in_ms":9}"#
        );
        let unknown = PresenceEntry {
            user: "u".into(),
            status: PresenceStatus::Unknown,
            last_seen: None,
        };
        assert_eq!(encode(&unknown), r#"{"user":"u","status":"unknown"}"#);
    }
}
