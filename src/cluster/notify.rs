//! What workers tell each other over PostgreSQL `NOTIFY`, on one channel.
//!
//! A notification carries only what lets a worker find the truth in the tables: which
//! streams grew (user and newest seq) and which conversations changed (id and version),
//! never the events themselves. PostgreSQL refuses payloads of 8000 bytes or more; a
//! batch whose list would not fit sends a pointer instead (`"all":true`: "streams grew;
//! check every user you hold"), which costs the receivers one query, never a failure.
//!
//! Any role that can connect to the database may `NOTIFY` on any channel and `LISTEN` to
//! it (PostgreSQL checks no privilege), so every payload is sealed: its last field, `"s"`,
//! is 32 hex digits of HMAC-SHA256 (truncated to 128 bits) over the notice without that
//! field, under a key kept in `pgchat.notice_key`, which only pgchat's own role (and the SQL API's `SECURITY DEFINER`
//! functions) can read. A payload without a valid seal is dropped and counted, never acted
//! on ([`NoticeSeal::open`]). A seal proves who wrote a notice, not that it is fresh: a
//! role that listens can replay one. So notices that change state here (presence,
//! departures, typing) carry `n`, a per-worker number that only grows, and receivers drop
//! one they have seen; and none is believed without the tables (see the listener and
//! presence): a stream-advance notice only makes a worker read the stream.
//!
//! The seal is a field, not a prefix, so that workers of the version before it (which read
//! every payload as JSON and ignore fields they do not know) keep hearing the cluster
//! while a rolling upgrade replaces them.

use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::foundation::protocol::{TypingState, WorkerId};

/// The channel every worker LISTENs on.
pub(crate) const CHANNEL: &str = "pgchat";

/// The largest payload PostgreSQL accepts (8000 bytes fails).
pub(crate) const MAX_PAYLOAD: usize = 7999;

/// Hex digits of the seal.
pub(crate) const SEAL_HEX: usize = 32;

/// What the seal adds to a notice: `,"s":"` + the digits + `"`.
pub(crate) const SEAL_LEN: usize = SEAL_HEX + 7;

/// The largest notice (its JSON) that fits in a payload with its seal.
pub(crate) const MAX_NOTICE: usize = MAX_PAYLOAD - SEAL_LEN;

/// Where the seal starts: `,"s":"`, the last field of a sealed notice.
const SEAL_FIELD: &str = ",\"s\":\"";

/// Signs the notices this worker sends and opens those it receives: the cluster's shared
/// key (read from `pgchat.notice_key` at start) and this worker's notice counter.
pub(crate) struct NoticeSeal {
    key: Vec<u8>,
    /// The last `n` handed out: microseconds since the epoch at start, then one more per
    /// notice (or the clock, if it is ahead), so it keeps growing across restarts of a
    /// worker that gets the same id (the same host and pid, as in a container).
    counter: AtomicU64,
}

impl NoticeSeal {
    pub(crate) fn new(key: Vec<u8>) -> NoticeSeal {
        NoticeSeal {
            key,
            counter: AtomicU64::new(now_micros()),
        }
    }

    fn mac(&self, json: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(json.as_bytes());
        mac
    }

    /// The seal of `json`: the first 16 bytes of its HMAC, in hex.
    fn tag(&self, json: &str) -> String {
        let tag = self.mac(json).finalize().into_bytes();
        tag[..SEAL_HEX / 2]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `json` (an object) with its seal as the last field: the payload to NOTIFY.
    pub(crate) fn seal(&self, json: &str) -> String {
        let body = json.strip_suffix('}').expect("a notice is a JSON object");
        format!("{body}{SEAL_FIELD}{}\"}}", self.tag(json))
    }

    /// The notice inside `payload` (without its seal) if the seal is valid (checked in
    /// constant time).
    pub(crate) fn open(&self, payload: &str) -> Option<String> {
        let at = payload.rfind(SEAL_FIELD)?;
        let tag = payload.get(at + SEAL_FIELD.len()..)?.strip_suffix("\"}")?;
        if tag.len() != SEAL_HEX {
            return None;
        }
        let mut bytes = [0u8; SEAL_HEX / 2];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(tag.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        let json = format!("{}}}", &payload[..at]);
        self.mac(&json).verify_truncated_left(&bytes).ok()?;
        Some(json)
    }

    /// The next notice number of this worker.
    pub(crate) fn next_n(&self) -> u64 {
        let now = now_micros();
        let prev = self
            .counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(1).max(now))
            })
            .expect("always Some");
        prev.saturating_add(1).max(now)
    }
}

/// Microseconds since the Unix epoch, by this host's clock.
pub(crate) fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub(crate) enum Notice {
    /// A batch committed: these streams and conversations changed.
    #[serde(rename = "e")]
    Events {
        w: WorkerId,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        u: Vec<(String, i64)>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        c: Vec<(String, i64)>,
        /// Set instead of `u` when the list would not fit: any user's stream may have
        /// grown.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        all: bool,
        /// Set instead of `c` when that list would not fit either: any conversation may
        /// have changed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        all_c: bool,
    },
    /// Users came online on worker `w`, or went offline there (with the time).
    #[serde(rename = "p")]
    Presence {
        w: WorkerId,
        /// The sender's notice number (see [`NoticeSeal::next_n`]).
        #[serde(default)]
        n: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        on: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        off: Vec<(String, String)>,
    },
    /// Workers found dead (no heartbeat), or one that shut down cleanly (`graceful`):
    /// their users' sessions are gone.
    #[serde(rename = "g")]
    Gone {
        w: WorkerId,
        #[serde(default)]
        n: u64,
        #[serde(default)]
        dead: Vec<WorkerId>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        graceful: bool,
        /// Set instead of `dead` when the list would not fit: some workers are gone;
        /// receivers reload presence from the `presence` table.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        all: bool,
    },
    /// `u` started or stopped typing in conversation `c`, whose members are `m` (left out
    /// when the list would not fit: receivers look the members up).
    #[serde(rename = "t")]
    Typing {
        w: WorkerId,
        #[serde(default)]
        n: u64,
        c: String,
        u: String,
        s: TypingState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        m: Option<Vec<String>>,
    },
}

impl Notice {
    /// The worker that sent it.
    pub(crate) fn sender(&self) -> &WorkerId {
        match self {
            Notice::Events { w, .. }
            | Notice::Presence { w, .. }
            | Notice::Gone { w, .. }
            | Notice::Typing { w, .. } => w,
        }
    }

    /// The payload for a batch's changes: the full lists, or pointers for what does not
    /// fit (the users first: conversations are fewer and spare the caches). The writer's
    /// batches are sealed in SQL (`pgchat.events_notice`, `pgchat.sign_notice`); this is
    /// the same shape, for tests.
    #[cfg(test)]
    pub(crate) fn events_payload(
        worker: &WorkerId,
        users: Vec<(String, i64)>,
        conversations: Vec<(String, i64)>,
    ) -> String {
        let encode = |n: &Notice| serde_json::to_string(n).expect("notices serialise");
        let mut notice = Notice::Events {
            w: worker.clone(),
            u: users,
            c: conversations,
            all: false,
            all_c: false,
        };
        let text = encode(&notice);
        if text.len() <= MAX_NOTICE {
            return text;
        }
        if let Notice::Events { u, all, .. } = &mut notice {
            u.clear();
            *all = true;
        }
        let text = encode(&notice);
        if text.len() <= MAX_NOTICE {
            return text;
        }
        if let Notice::Events { c, all_c, .. } = &mut notice {
            c.clear();
            *all_c = true;
        }
        encode(&notice)
    }

    /// Workers found gone: the list, or a pointer when it would not fit; sealed.
    pub(crate) fn gone_payload(
        seal: &NoticeSeal,
        worker: &WorkerId,
        dead: &[WorkerId],
        graceful: bool,
    ) -> String {
        let mut notice = Notice::Gone {
            w: worker.clone(),
            n: seal.next_n(),
            dead: dead.to_vec(),
            graceful,
            all: false,
        };
        let text = serde_json::to_string(&notice).expect("notices serialise");
        if text.len() <= MAX_NOTICE {
            return seal.seal(&text);
        }
        if let Notice::Gone { dead, all, .. } = &mut notice {
            dead.clear();
            *all = true;
        }
        seal.seal(&serde_json::to_string(&notice).expect("notices serialise"))
    }

    /// A typing notice, with the members when they fit; sealed.
    pub(crate) fn typing_payload(
        seal: &NoticeSeal,
        worker: &WorkerId,
        conversation: &str,
        user: &str,
        state: TypingState,
        members: &[String],
    ) -> String {
        let mut notice = Notice::Typing {
            w: worker.clone(),
            n: seal.next_n(),
            c: conversation.to_string(),
            u: user.to_string(),
            s: state,
            m: Some(members.to_vec()),
        };
        let text = serde_json::to_string(&notice).expect("notices serialise");
        if text.len() <= MAX_NOTICE {
            return seal.seal(&text);
        }
        if let Notice::Typing { m, .. } = &mut notice {
            *m = None;
        }
        seal.seal(&serde_json::to_string(&notice).expect("notices serialise"))
    }

    /// Presence changes, split over as many payloads as needed to stay under the limit,
    /// each sealed with a number of its own (in the order they must be applied).
    pub(crate) fn presence_payloads(
        seal: &NoticeSeal,
        worker: &WorkerId,
        on: Vec<String>,
        off: Vec<(String, String)>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut current = (Vec::new(), Vec::new());
        // A user id is at most 64 bytes and a time about 30: 120 bytes per entry is safe.
        let per_payload = (MAX_NOTICE - 200) / 120;
        let flush = |current: &mut (Vec<String>, Vec<(String, String)>), out: &mut Vec<String>| {
            if current.0.is_empty() && current.1.is_empty() {
                return;
            }
            let (on, off) = std::mem::take(current);
            let text = serde_json::to_string(&Notice::Presence {
                w: worker.clone(),
                n: seal.next_n(),
                on,
                off,
            })
            .expect("notices serialise");
            out.push(seal.seal(&text));
        };
        for u in on {
            current.0.push(u);
            if current.0.len() + current.1.len() >= per_payload {
                flush(&mut current, &mut out);
            }
        }
        for u in off {
            current.1.push(u);
            if current.0.len() + current.1.len() >= per_payload {
                flush(&mut current, &mut out);
            }
        }
        flush(&mut current, &mut out);
        out
    }

    /// The notice's number, for the kinds that change state on the receiver.
    pub(crate) fn number(&self) -> Option<u64> {
        match self {
            Notice::Presence { n, .. } | Notice::Gone { n, .. } | Notice::Typing { n, .. } => {
                Some(*n)
            }
            Notice::Events { .. } => None,
        }
    }
}

/// Which numbered notices a receiver has already applied, per sender, so that a replayed
/// one (a role that listens can capture a sealed payload and NOTIFY it again) is dropped.
///
/// Presence and departure notices of one worker are sent by one task, one transaction
/// after another, and NOTIFY delivers in commit order: each must be newer than the last.
/// Typing notices come from many sessions at once and may arrive out of order: each must
/// be recent (within [`TYPING_WINDOW_MICROS`] of this host's clock) and not among those
/// of its sender seen within that window (at most [`TYPING_REMEMBERED`], the oldest
/// forgotten first: a worker sending more typing notices than that in the window is far
/// past anything real).
#[derive(Default)]
pub(crate) struct Replays {
    /// A std mutex: each check is a few map operations, never an await.
    senders: std::sync::Mutex<std::collections::HashMap<WorkerId, Seen>>,
}

#[derive(Default)]
struct Seen {
    ordered: u64,
    /// Typing numbers seen, in arrival order, and the same as a set.
    typing: std::collections::VecDeque<u64>,
    typing_set: std::collections::HashSet<u64>,
}

/// How far a typing notice's number may be from this host's clock (clock skew between
/// hosts included).
pub(crate) const TYPING_WINDOW_MICROS: u64 = 30_000_000;
/// Typing notice numbers remembered per sender, at most.
const TYPING_REMEMBERED: usize = 8192;
/// Senders remembered at most; past it the map starts afresh (a real cluster has a few
/// workers; only sealed notices get here, so only pgchat's own workers fill it).
const SENDERS_REMEMBERED: usize = 1024;

impl Replays {
    /// Whether `notice` (from another worker, sealed) is new, recording it if so.
    pub(crate) fn fresh(&self, notice: &Notice) -> bool {
        let Some(n) = notice.number() else {
            return true; // stream-advance hints: a replay costs one read, nothing more
        };
        let mut senders = self.senders.lock().expect("replays lock");
        if senders.len() >= SENDERS_REMEMBERED && !senders.contains_key(notice.sender()) {
            senders.clear();
        }
        let seen = senders.entry(notice.sender().clone()).or_default();
        match notice {
            Notice::Typing { .. } => {
                let now = now_micros();
                if n.abs_diff(now) > TYPING_WINDOW_MICROS || seen.typing_set.contains(&n) {
                    return false;
                }
                // Forget what is out of the window (and so refused anyway), then make room.
                let cutoff = now.saturating_sub(TYPING_WINDOW_MICROS);
                while let Some(&old) = seen.typing.front() {
                    if old >= cutoff && seen.typing.len() < TYPING_REMEMBERED {
                        break;
                    }
                    seen.typing.pop_front();
                    seen.typing_set.remove(&old);
                }
                seen.typing.push_back(n);
                seen.typing_set.insert(n);
                true
            }
            _ => {
                if n <= seen.ordered {
                    return false;
                }
                seen.ordered = n;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str) -> WorkerId {
        WorkerId::new(id.to_string())
    }

    fn seal() -> NoticeSeal {
        NoticeSeal::new(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    /// The notice inside a payload this worker sealed.
    fn opened(payload: &str) -> Notice {
        serde_json::from_str(&seal().open(payload).expect("a valid seal")).unwrap()
    }

    #[test]
    fn a_list_that_would_not_fit_becomes_a_pointer() {
        let small =
            Notice::events_payload(&w("w1"), vec![("alice".into(), 3)], vec![("d1".into(), 2)]);
        assert_eq!(
            small,
            r#"{"k":"e","w":"w1","u":[["alice",3]],"c":[["d1",2]]}"#
        );
        let many: Vec<(String, i64)> = (0..1000).map(|i| (format!("user-{i:04}"), i)).collect();
        let big = Notice::events_payload(&w("w1"), many.clone(), vec![("d1".into(), 2)]);
        assert!(big.len() <= MAX_NOTICE);
        assert_eq!(
            serde_json::from_str::<Notice>(&big).unwrap(),
            Notice::Events {
                w: w("w1"),
                u: vec![],
                c: vec![("d1".into(), 2)],
                all: true,
                all_c: false,
            }
        );
        let huge = Notice::events_payload(&w("w1"), many.clone(), many);
        assert!(huge.len() <= MAX_NOTICE);
        assert!(matches!(
            serde_json::from_str::<Notice>(&huge).unwrap(),
            Notice::Events {
                all: true,
                all_c: true,
                ..
            }
        ));
    }

    #[test]
    fn only_a_payload_sealed_with_the_key_opens() {
        let s = seal();
        let payload = s.seal(r#"{"k":"e","w":"w1","u":[["bob",9]]}"#);
        assert_eq!(payload.len(), SEAL_LEN + 34);
        assert!(
            payload.starts_with(r#"{"k":"e","w":"w1","u":[["bob",9]],"s":""#),
            "{payload}"
        );
        assert_eq!(
            s.open(&payload).as_deref(),
            Some(r#"{"k":"e","w":"w1","u":[["bob",9]]}"#)
        );
        // A reader of the version before the seal reads the notice, ignoring "s".
        assert!(matches!(
            serde_json::from_str::<Notice>(&payload).unwrap(),
            Notice::Events { .. }
        ));
        // Another key, a changed notice, a changed seal, no seal, a short or non-hex one.
        let other = NoticeSeal::new(b"another key".to_vec());
        assert_eq!(other.open(&payload), None);
        let tampered = payload.replace("9]]", "9223372036854775807]]");
        assert_eq!(s.open(&tampered), None);
        let mut flipped = payload.clone().into_bytes();
        let last_digit = flipped.len() - 3;
        flipped[last_digit] = if flipped[last_digit] == b'0' {
            b'1'
        } else {
            b'0'
        };
        assert_eq!(s.open(&String::from_utf8(flipped).unwrap()), None);
        assert_eq!(s.open(r#"{"k":"e","w":"w1","u":[["bob",9]]}"#), None);
        assert_eq!(s.open("abc"), None);
        assert_eq!(
            s.open(&format!(r#"{{"k":"e","s":"{}"}}"#, "zz".repeat(16))),
            None
        );
        assert_eq!(
            s.open(&format!(r#"{{"k":"e","s":"{}"}}"#, "0".repeat(31))),
            None
        );
        assert_eq!(s.open("é".repeat(40).as_str()), None);
    }

    #[test]
    fn the_seal_is_the_one_sql_computes() {
        // pgchat.sign_notice: sha256(outer_pad || sha256(inner_pad || payload)), the first
        // 16 bytes in hex: standard HMAC-SHA256, truncated (RFC 2104). The vector is RFC
        // 4231's test case 2.
        let s = NoticeSeal::new(b"Jefe".to_vec());
        assert_eq!(
            s.tag("what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c7"
        );
    }

    #[test]
    fn notice_numbers_only_grow() {
        let s = seal();
        let a = s.next_n();
        let b = s.next_n();
        assert!(b > a);
        assert!(a >= now_micros() - 60_000_000);
    }

    #[test]
    fn many_dead_workers_become_a_pointer() {
        let s = seal();
        let few = opened(&Notice::gone_payload(&s, &w("w1"), &[w("w2")], false));
        assert!(matches!(few, Notice::Gone { ref dead, all: false, .. } if dead == &[w("w2")]));
        let many: Vec<WorkerId> = (0..500)
            .map(|i| w(&format!("{}-{i}", "h".repeat(60))))
            .collect();
        let big = Notice::gone_payload(&s, &w("w1"), &many, false);
        assert!(big.len() <= MAX_PAYLOAD);
        assert!(
            matches!(opened(&big), Notice::Gone { ref dead, all: true, .. } if dead.is_empty())
        );
    }

    #[test]
    fn typing_notices_carry_the_state_as_the_wire_names_it() {
        let members = ["a".to_string(), "b".to_string()];
        let s = seal();
        let text = Notice::typing_payload(&s, &w("w1"), "c1", "a", TypingState::Stop, &members);
        let json = s.open(&text).unwrap();
        assert!(json.starts_with(r#"{"k":"t","w":"w1","n":"#), "{json}");
        assert!(
            json.ends_with(r#","c":"c1","u":"a","s":"stop","m":["a","b"]}"#),
            "{json}"
        );
        match opened(&text) {
            Notice::Typing { s, .. } => assert_eq!(s, TypingState::Stop),
            other => panic!("{other:?}"),
        }
        let unknown = r#"{"k":"t","w":"w1","c":"c1","u":"a","s":"sleeping"}"#;
        assert!(serde_json::from_str::<Notice>(unknown).is_err());
    }

    #[test]
    fn presence_is_split_to_fit() {
        let on: Vec<String> = (0..2000).map(|i| "x".repeat(60) + &i.to_string()).collect();
        let payloads = Notice::presence_payloads(&seal(), &w("w"), on, vec![]);
        assert!(payloads.len() > 1);
        let mut n = 0;
        let mut last = 0;
        for p in &payloads {
            assert!(p.len() <= MAX_PAYLOAD, "{}", p.len());
            match opened(p) {
                Notice::Presence { on, n: number, .. } => {
                    n += on.len();
                    assert!(number > last, "numbered in the order they apply");
                    last = number;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(n, 2000);
    }

    #[test]
    fn a_replayed_notice_is_not_fresh() {
        let replays = Replays::default();
        let s = seal();
        let presence = |n| Notice::Presence {
            w: w("w2"),
            n,
            on: vec!["bob".into()],
            off: vec![],
        };
        let first = s.next_n();
        assert!(replays.fresh(&presence(first)));
        assert!(!replays.fresh(&presence(first)), "the same again");
        assert!(!replays.fresh(&presence(first - 1)), "an older one");
        assert!(replays.fresh(&presence(first + 1)));
        let typing = |n| Notice::Typing {
            w: w("w2"),
            n,
            c: "c1".into(),
            u: "bob".into(),
            s: TypingState::Start,
            m: None,
        };
        let (t1, t2) = (s.next_n(), s.next_n());
        assert!(replays.fresh(&typing(t2)));
        assert!(replays.fresh(&typing(t1)), "typing may arrive out of order");
        assert!(!replays.fresh(&typing(t1)));
        assert!(
            !replays.fresh(&typing(t1 - TYPING_WINDOW_MICROS - 1_000_000)),
            "stale"
        );
        // Stream-advance hints carry no number: replaying one only costs a read.
        let hint = Notice::Events {
            w: w("w2"),
            u: vec![],
            c: vec![],
            all: true,
            all_c: false,
        };
        assert!(replays.fresh(&hint) && replays.fresh(&hint));
        // A worker id back after a restart numbers on from the clock: past the floor.
        assert!(replays.fresh(&presence(now_micros() + 1_000_000)));
    }
}
