//! The wire contract: incoming frames parsed once into typed requests, and the replies.
//!
//! Parsing happens in two steps so that every error can echo the request's `ref`: first
//! the envelope (`type`, `ref`), then the body for that type. Ids, bodies and names are
//! newtypes that can only hold valid values, so nothing past this module re-checks them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::foundation::error::{ApiError, Code};

/// The longest user id, client message id or conversation id accepted.
pub(crate) const MAX_ID_CHARS: usize = 64;
/// The most events in one `history` page.
pub const MAX_HISTORY_LIMIT: i64 = 100;
pub(crate) const DEFAULT_HISTORY_LIMIT: i64 = 50;
/// The most members one `members` page lists (and its default).
pub const MAX_MEMBERS_PAGE: i64 = 1_000;
/// The longest group name.
pub(crate) const MAX_NAME_CHARS: usize = 100;

/// A user id: 1..64 chars of `A-Z a-z 0-9 _ . @ : -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn parse(s: &str) -> Result<UserId, String> {
        if s.is_empty() || s.chars().count() > MAX_ID_CHARS {
            return Err(format!(
                "a user id has 1..{MAX_ID_CHARS} characters, got {}",
                s.chars().count()
            ));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_.@:-".contains(*c)))
        {
            return Err(format!(
                "a user id may hold only A-Z a-z 0-9 _ . @ : -, found {bad:?}"
            ));
        }
        Ok(UserId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A worker's id, unique across the cluster (host, process, and which of the process's
/// applications): the sender named in notifications and presence rows, and `hello`'s
/// `worker`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub(crate) struct WorkerId(String);

impl WorkerId {
    pub(crate) fn new(id: String) -> WorkerId {
        WorkerId(id)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for WorkerId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UserId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Declares a newtype over `String` that is checked on construction and on deserialising.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<$name, String> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(s)?;
                Ok($name(s.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn bounded_text(what: &str, s: &str, max: usize) -> Result<(), String> {
    let n = s.chars().count();
    if n == 0 || n > max {
        return Err(format!("{what} has 1..{max} characters, got {n}"));
    }
    // PostgreSQL text cannot hold NUL; refuse it here instead of failing a whole batch.
    if s.contains('\0') {
        return Err(format!("{what} must not contain the NUL character"));
    }
    Ok(())
}

checked_string!(
    /// A server-chosen conversation id, opaque to clients.
    ConversationId,
    |s| bounded_text("a conversation id", s, MAX_ID_CHARS)
);
checked_string!(
    /// A group's name: 1..100 characters, not only whitespace or other invisible ones.
    GroupName,
    |s| {
        bounded_text("name", s, MAX_NAME_CHARS)?;
        if s.chars().all(invisible) {
            return Err(
                "name must not be blank (only spaces, control, zero-width or direction characters)"
                    .into(),
            );
        }
        Ok(())
    }
);

/// A character that shows nothing by itself: whitespace, a control character, or one of
/// the zero-width, direction and filler characters a blank-looking name could be made of.
pub(crate) fn invisible(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(c,
            '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}'
            | '\u{17b5}' | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}' | '\u{fff0}'..='\u{fff8}'
            | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e0fff}')
}
checked_string!(
    /// The client's idempotency key for a send: 1..64 characters.
    ClientMsgId,
    |s| bounded_text("client_msg_id", s, MAX_ID_CHARS)
);
checked_string!(
    /// The client's idempotency key for a `group_create`: 1..64 characters.
    ClientOpId,
    |s| bounded_text("client_op_id", s, MAX_ID_CHARS)
);

/// A message body. Its length limit is configurable, so it is checked where the
/// configuration is known ([`Request::parse`]), not on deserialising.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body(String);

impl Body {
    pub fn parse(s: String, max_chars: usize) -> Result<Body, ApiError> {
        let n = s.chars().count();
        if n == 0 {
            return Err(ApiError::bad_request("body: must not be empty"));
        }
        if n > max_chars {
            return Err(ApiError::new(
                Code::TooLarge,
                format!("body: has {n} characters, the limit is {max_chars}"),
            ));
        }
        if s.contains('\0') {
            return Err(ApiError::bad_request(
                "body: must not contain the NUL character",
            ));
        }
        Ok(Body(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a message goes: an existing conversation, or the direct conversation with a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Conversation(ConversationId),
    User(UserId),
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
    },
    History {
        conversation: ConversationId,
        before_cseq: Option<i64>,
        limit: i64,
    },
    Conversations,
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

/// A token as a client sent it, not yet verified. Its `Debug` hides it, so that a request
/// printed in a log line never carries a credential.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct BearerToken(String);

impl BearerToken {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BearerToken({} bytes)", self.0.len())
    }
}

/// `typing`'s `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TypingState {
    Start,
    Stop,
}

impl TypingState {
    pub fn as_str(self) -> &'static str {
        match self {
            TypingState::Start => "start",
            TypingState::Stop => "stop",
        }
    }
}

/// The request envelope: what is needed to answer even a request that fails to parse.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// Echoed back as given: a string or an integer.
    pub r#ref: Option<Value>,
}

/// Limits that parsing needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_chars: usize,
    pub max_group_members: usize,
    pub max_presence_users: usize,
}

/// RFC 3339 in UTC with millisecond precision, the one time format on the wire.
pub(crate) fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_message_chars: 10,
        max_group_members: 3,
        max_presence_users: 2,
    };

    #[test]
    fn user_ids_accept_the_documented_alphabet_only() {
        assert!(UserId::parse("alice.b@x:y-z_1").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a b").is_err());
        assert!(UserId::parse("é").is_err());
        assert!(UserId::parse(&"a".repeat(64)).is_ok());
        assert!(UserId::parse(&"a".repeat(65)).is_err());
    }

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
