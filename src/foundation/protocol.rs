//! The values requests carry: the envelope (`ref`), ids, bodies, names, a bearer token,
//! typing's state, and the protocol's fixed limits. Ids, bodies and names are newtypes
//! that can only hold valid values, so nothing that holds one re-checks it. The requests
//! themselves (`requests::Request`) are parsed in [`crate::requests`], a layer above: in
//! two steps, so that every error can echo the request's `ref`.

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
/// The most conversations one `conversations` page lists, and how many by default.
pub const MAX_CONVERSATIONS_PAGE: i64 = 100;
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
/// configuration is known (`requests::Request::parse`), not on deserialising.
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

/// The most distinct emoji one message may carry (a 21st is too_large: schema.sql's
/// `react` branch holds the same number).
pub const MAX_REACTIONS: usize = 20;
/// The longest emoji (or reaction name) `react` takes, in characters.
pub const MAX_EMOJI_CHARS: usize = 32;
/// The most messages one `search` page holds, and how many by default.
pub const MAX_SEARCH_LIMIT: i64 = 50;
pub(crate) const DEFAULT_SEARCH_LIMIT: i64 = 20;
/// The longest search query, in characters.
pub const MAX_QUERY_CHARS: usize = 200;

/// A reaction: 1..32 characters (an emoji, or a name such as `:tada:`), not blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emoji(String);

impl Emoji {
    pub fn parse(s: String) -> Result<Emoji, ApiError> {
        let n = s.chars().count();
        if n == 0 || s.chars().all(invisible) {
            return Err(ApiError::bad_request(
                "react: emoji must not be empty or blank",
            ));
        }
        if n > MAX_EMOJI_CHARS {
            return Err(ApiError::new(
                Code::TooLarge,
                format!("react: emoji has {n} characters, the limit is {MAX_EMOJI_CHARS}"),
            ));
        }
        if s.contains('\0') {
            return Err(ApiError::bad_request(
                "react: emoji must not contain the NUL character",
            ));
        }
        Ok(Emoji(s))
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
    /// As the wire names it.
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
    /// The most users one `send` may mention.
    pub max_mentions: usize,
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

    #[test]
    fn user_ids_accept_the_documented_alphabet_only() {
        assert!(UserId::parse("alice.b@x:y-z_1").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a b").is_err());
        assert!(UserId::parse("é").is_err());
        assert!(UserId::parse(&"a".repeat(64)).is_ok());
        assert!(UserId::parse(&"a".repeat(65)).is_err());
    }
}

/// Where a page of `conversations` starts: after the entry active at `at` with id `id`
/// (the order is most recent first, then by id). On the wire, an opaque cursor: the
/// reply's `next`, given back as `before`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationCursor {
    pub(crate) at: chrono::DateTime<chrono::Utc>,
    pub(crate) id: String,
}

impl ConversationCursor {
    pub(crate) fn new(at: chrono::DateTime<chrono::Utc>, id: String) -> ConversationCursor {
        ConversationCursor { at, id }
    }

    /// The cursor as `next` gives it: microseconds since the epoch, `/`, the id.
    pub fn encode(&self) -> String {
        format!("{}/{}", self.at.timestamp_micros(), self.id)
    }

    /// A cursor an earlier reply gave, or `None` for anything else.
    pub fn parse(text: &str) -> Option<ConversationCursor> {
        let (micros, id) = text.split_once('/')?;
        let at = chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        ConversationId::parse(id).ok()?;
        Some(ConversationCursor {
            at,
            id: id.to_string(),
        })
    }
}
