//! What workers tell each other over PostgreSQL `NOTIFY`, on one channel.
//!
//! A notification carries only what lets a worker find the truth in the tables: which
//! streams grew (user and newest seq) and which conversations changed (id and version),
//! never the events themselves. PostgreSQL refuses payloads of 8000 bytes or more; a
//! batch whose list would not fit sends a pointer instead (`"all":true`: "streams grew;
//! check every user you hold"), which costs the receivers one query, never a failure.

use serde::{Deserialize, Serialize};

use crate::foundation::protocol::{TypingState, WorkerId};

/// The channel every worker LISTENs on.
pub(crate) const CHANNEL: &str = "pgchat";

/// The largest payload PostgreSQL accepts (8000 bytes fails).
pub(crate) const MAX_PAYLOAD: usize = 7999;

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
    /// fit (the users first: conversations are fewer and spare the caches).
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
        if text.len() <= MAX_PAYLOAD {
            return text;
        }
        if let Notice::Events { u, all, .. } = &mut notice {
            u.clear();
            *all = true;
        }
        let text = encode(&notice);
        if text.len() <= MAX_PAYLOAD {
            return text;
        }
        if let Notice::Events { c, all_c, .. } = &mut notice {
            c.clear();
            *all_c = true;
        }
        encode(&notice)
    }

    /// Workers found gone: the list, or a pointer when it would not fit.
    pub(crate) fn gone_payload(worker: &WorkerId, dead: &[WorkerId], graceful: bool) -> String {
        let mut notice = Notice::Gone {
            w: worker.clone(),
            dead: dead.to_vec(),
            graceful,
            all: false,
        };
        let text = serde_json::to_string(&notice).expect("notices serialise");
        if text.len() <= MAX_PAYLOAD {
            return text;
        }
        if let Notice::Gone { dead, all, .. } = &mut notice {
            dead.clear();
            *all = true;
        }
        serde_json::to_string(&notice).expect("notices serialise")
    }

    /// A typing notice, with the members when they fit.
    pub(crate) fn typing_payload(
        worker: &WorkerId,
        conversation: &str,
        user: &str,
        state: TypingState,
        members: &[String],
    ) -> String {
        let mut notice = Notice::Typing {
            w: worker.clone(),
            c: conversation.to_string(),
            u: user.to_string(),
            s: state,
            m: Some(members.to_vec()),
        };
        let text = serde_json::to_string(&notice).expect("notices serialise");
        if text.len() <= MAX_PAYLOAD {
            return text;
        }
        if let Notice::Typing { m, .. } = &mut notice {
            *m = None;
        }
        serde_json::to_string(&notice).expect("notices serialise")
    }

    /// Presence changes, split over as many payloads as needed to stay under the limit.
    pub(crate) fn presence_payloads(
        worker: &WorkerId,
        on: Vec<String>,
        off: Vec<(String, String)>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut current = (Vec::new(), Vec::new());
        // A user id is at most 64 bytes and a time about 30: 120 bytes per entry is safe.
        let per_payload = (MAX_PAYLOAD - 200) / 120;
        let flush = |current: &mut (Vec<String>, Vec<(String, String)>), out: &mut Vec<String>| {
            if current.0.is_empty() && current.1.is_empty() {
                return;
            }
            let (on, off) = std::mem::take(current);
            out.push(
                serde_json::to_string(&Notice::Presence {
                    w: worker.clone(),
                    on,
                    off,
                })
                .expect("notices serialise"),
            );
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str) -> WorkerId {
        WorkerId::new(id.to_string())
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
        assert!(big.len() <= MAX_PAYLOAD);
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
        assert!(huge.len() <= MAX_PAYLOAD);
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
    fn many_dead_workers_become_a_pointer() {
        let few = Notice::gone_payload(&w("w1"), &[w("w2")], false);
        assert_eq!(few, r#"{"k":"g","w":"w1","dead":["w2"]}"#);
        let many: Vec<WorkerId> = (0..500)
            .map(|i| w(&format!("{}-{i}", "h".repeat(60))))
            .collect();
        let big = Notice::gone_payload(&w("w1"), &many, false);
        assert!(big.len() <= MAX_PAYLOAD);
        assert_eq!(big, r#"{"k":"g","w":"w1","dead":[],"all":true}"#);
    }

    #[test]
    fn typing_notices_carry_the_state_as_the_wire_names_it() {
        let members = ["a".to_string(), "b".to_string()];
        let text = Notice::typing_payload(&w("w1"), "c1", "a", TypingState::Stop, &members);
        assert_eq!(
            text,
            r#"{"k":"t","w":"w1","c":"c1","u":"a","s":"stop","m":["a","b"]}"#
        );
        match serde_json::from_str::<Notice>(&text).unwrap() {
            Notice::Typing { s, .. } => assert_eq!(s, TypingState::Stop),
            other => panic!("{other:?}"),
        }
        let unknown = r#"{"k":"t","w":"w1","c":"c1","u":"a","s":"sleeping"}"#;
        assert!(serde_json::from_str::<Notice>(unknown).is_err());
    }

    #[test]
    fn presence_is_split_to_fit() {
        let on: Vec<String> = (0..2000).map(|i| "x".repeat(60) + &i.to_string()).collect();
        let payloads = Notice::presence_payloads(&w("w"), on, vec![]);
        assert!(payloads.len() > 1);
        let mut n = 0;
        for p in &payloads {
            assert!(p.len() <= MAX_PAYLOAD, "{}", p.len());
            match serde_json::from_str::<Notice>(p).unwrap() {
                Notice::Presence { on, .. } => n += on.len(),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(n, 2000);
    }
}
