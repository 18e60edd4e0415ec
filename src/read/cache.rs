//! The conversation cache of one worker: members and the most recent messages of the
//! conversations in use, least recently used evicted, bounded in entries and in bytes
//! (a few 1000-member groups of long messages must not outgrow a small dyno).
//!
//! Only the writer fills it, from the state it held locked at commit, so an entry is never
//! older than a commit it has seen. Each conversation carries a `version` that every
//! committing change bumps; an update that is not the next version (batches can finish
//! out of order) replaces the entry's state instead of appending to it, and an older one
//! is ignored. So the cache is never wrong about what it says, only sometimes behind.
//! Readers that miss go to the database and leave the cache alone.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::foundation::frames::Message;

/// A conversation's state right after a commit, as the writer saw it.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) id: String,
    /// Sorted.
    pub(crate) members: Vec<String>,
    pub(crate) last_cseq: i64,
    pub(crate) version: i64,
    /// The messages this commit added, in cseq order, ending at `last_cseq`.
    pub(crate) new_messages: Vec<Message>,
    /// The commit changed messages already there (an edit, a deletion, a reaction): copies
    /// of them are stale, and only the new ones may be kept.
    pub(crate) rewrites: bool,
}

/// One cached conversation.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Sorted, shared with readers without copying.
    pub(crate) members: Arc<Vec<String>>,
    pub(crate) last_cseq: i64,
    pub(crate) version: i64,
    /// The newest messages, contiguous in cseq and ending at `last_cseq` when non-empty.
    messages: VecDeque<Message>,
    /// What this entry is counted as in the cache's byte total.
    bytes: usize,
}

/// About what one member id or message costs in memory: its strings and fixed overhead.
fn member_bytes(m: &str) -> usize {
    m.len() + std::mem::size_of::<String>()
}

fn message_bytes(m: &Message) -> usize {
    std::mem::size_of::<Message>()
        + m.conversation.len()
        + m.sender.len()
        + m.sender_name.as_ref().map_or(0, |n| n.len())
        + m.body.len()
        + m.client_msg_id.len()
        + m.extra.heap_bytes()
}

impl Entry {
    fn measure(&self) -> usize {
        std::mem::size_of::<Entry>()
            + self.members.iter().map(|m| member_bytes(m)).sum::<usize>()
            + self.messages.iter().map(message_bytes).sum::<usize>()
    }

    pub(crate) fn is_member(&self, user: &str) -> bool {
        self.members
            .binary_search_by(|m| m.as_str().cmp(user))
            .is_ok()
    }
}

pub(crate) struct ConversationCache {
    /// A std mutex: every critical section is a map operation, never an await.
    entries: Mutex<Entries>,
    max_messages: usize,
    max_bytes: usize,
}

struct Entries {
    map: LruCache<String, Entry>,
    /// The sum of the entries' `bytes`.
    bytes: usize,
}

impl Entries {
    fn get(&mut self, id: &str) -> Option<&Entry> {
        self.map.get(id)
    }

    /// Re-measures `id` after a change and evicts the least recently used entries until
    /// the total fits (the changed one too, if it alone is over).
    fn settle(&mut self, id: &str, max_bytes: usize) {
        if let Some(e) = self.map.peek_mut(id) {
            let now = e.measure();
            self.bytes = self.bytes - e.bytes + now;
            e.bytes = now;
        }
        while self.bytes > max_bytes {
            match self.map.pop_lru() {
                Some((_, e)) => self.bytes -= e.bytes,
                None => break,
            }
        }
    }

    fn pop(&mut self, id: &str) {
        if let Some(e) = self.map.pop(id) {
            self.bytes -= e.bytes;
        }
    }
}

impl ConversationCache {
    pub(crate) fn new(
        capacity: usize,
        max_messages: usize,
        max_bytes: usize,
    ) -> Arc<ConversationCache> {
        Arc::new(ConversationCache {
            entries: Mutex::new(Entries {
                map: LruCache::new(NonZeroUsize::new(capacity.max(1)).expect("at least 1")),
                bytes: 0,
            }),
            max_messages,
            max_bytes,
        })
    }

    /// Takes in a commit's view of one conversation.
    pub(crate) fn apply(&self, s: Snapshot) {
        let mut guard = self.entries.lock().expect("cache lock");
        let id = s.id.clone();
        self.apply_locked(&mut guard, s);
        guard.settle(&id, self.max_bytes);
    }

    fn apply_locked(&self, all: &mut Entries, s: Snapshot) {
        let entries = &mut all.map;
        let contiguous_tail = |msgs: &[Message]| match (msgs.first(), msgs.last()) {
            (Some(_), Some(last)) => last.cseq == s.last_cseq,
            _ => true,
        };
        match entries.get_mut(&s.id) {
            Some(e) if s.version <= e.version => {}
            Some(e) => {
                let follows = s.version == e.version + 1
                    && !s.rewrites
                    && s.new_messages
                        .first()
                        .is_none_or(|m| m.cseq == e.last_cseq + 1);
                if !follows {
                    e.messages.clear();
                }
                if contiguous_tail(&s.new_messages) {
                    e.messages.extend(s.new_messages);
                } else {
                    e.messages.clear();
                }
                while e.messages.len() > self.max_messages {
                    e.messages.pop_front();
                }
                e.members = Arc::new(s.members);
                e.last_cseq = s.last_cseq;
                e.version = s.version;
            }
            None => {
                let mut messages: VecDeque<Message> = if contiguous_tail(&s.new_messages) {
                    s.new_messages.into()
                } else {
                    VecDeque::new()
                };
                while messages.len() > self.max_messages {
                    messages.pop_front();
                }
                // An entry pushed out by the count bound leaves the byte total too.
                let evicted = entries.push(
                    s.id,
                    Entry {
                        members: Arc::new(s.members),
                        last_cseq: s.last_cseq,
                        version: s.version,
                        messages,
                        bytes: 0,
                    },
                );
                if let Some((_, old)) = evicted {
                    all.bytes -= old.bytes;
                }
            }
        }
    }

    /// The members of a cached conversation.
    pub(crate) fn members(&self, id: &str) -> Option<Arc<Vec<String>>> {
        let mut entries = self.entries.lock().expect("cache lock");
        entries.get(id).map(|e| e.members.clone())
    }

    /// The newest `limit` messages (oldest first), with `has_more` and the total, if the
    /// cache holds enough of them; `None` when it cannot answer (go to the database).
    pub(crate) fn first_page(&self, id: &str, user: &str, limit: usize) -> Option<Page> {
        let mut entries = self.entries.lock().expect("cache lock");
        let e = entries.get(id)?;
        if !e.is_member(user) {
            return Some(Page::NotAMember);
        }
        let held = e.messages.len();
        let from_start = e.last_cseq == 0 || e.messages.front().is_some_and(|m| m.cseq == 1);
        if held < limit && !from_start {
            return None;
        }
        let take = held.min(limit);
        Some(Page::Messages {
            messages: e.messages.iter().skip(held - take).cloned().collect(),
            has_more: e.last_cseq > take as i64,
            total: e.last_cseq,
        })
    }

    /// Another worker committed `version` of a conversation: forget an older copy.
    pub(crate) fn invalidate_older(&self, id: &str, version: i64) {
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.map.peek(id).is_some_and(|e| e.version < version) {
            entries.pop(id);
        }
    }

    /// Forgets everything (after missing notifications, nothing cached can be trusted).
    pub(crate) fn clear(&self) {
        let mut entries = self.entries.lock().expect("cache lock");
        entries.map.clear();
        entries.bytes = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.lock().expect("cache lock").map.len()
    }
}

/// What [`ConversationCache::first_page`] found.
pub(crate) enum Page {
    NotAMember,
    Messages {
        messages: Vec<Message>,
        has_more: bool,
        total: i64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(cseq: i64) -> Message {
        Message {
            id: cseq,
            conversation: "c".into(),
            cseq,
            sender: "a".into(),
            sender_name: None,
            body: format!("m{cseq}"),
            client_msg_id: cseq.to_string(),
            created_at: chrono::Utc::now(),
            extra: Default::default(),
        }
    }

    fn snap(version: i64, msgs: std::ops::RangeInclusive<i64>, members: &[&str]) -> Snapshot {
        Snapshot {
            id: "c".into(),
            members: members.iter().map(|s| s.to_string()).collect(),
            last_cseq: *msgs.end(),
            version,
            new_messages: msgs.filter(|c| *c > 0).map(msg).collect(),
            rewrites: false,
        }
    }

    fn cseqs(p: Option<Page>) -> Vec<i64> {
        match p {
            Some(Page::Messages { messages, .. }) => messages.iter().map(|m| m.cseq).collect(),
            Some(Page::NotAMember) => panic!("not a member"),
            None => panic!("miss"),
        }
    }

    #[test]
    fn consecutive_commits_append_and_the_window_is_bounded() {
        let cache = ConversationCache::new(10, 3, 1 << 20);
        cache.apply(snap(1, 1..=1, &["a"]));
        cache.apply(snap(2, 2..=3, &["a"]));
        cache.apply(snap(3, 4..=4, &["a"]));
        assert_eq!(cseqs(cache.first_page("c", "a", 2)), vec![3, 4]);
        assert!(
            cache.first_page("c", "a", 4).is_none(),
            "only 3 held, 4 exist"
        );
    }

    #[test]
    fn the_cache_is_bounded_in_bytes_and_evicts_the_least_recently_used() {
        let one = {
            let cache = ConversationCache::new(10, 10, usize::MAX);
            cache.apply(snap(1, 1..=4, &["a", "b"]));
            let bytes = cache.entries.lock().unwrap().bytes;
            bytes
        };
        // Room for two such conversations, not three.
        let cache = ConversationCache::new(10, 10, one * 2 + one / 2);
        for id in ["c1", "c2", "c3"] {
            let mut s = snap(1, 1..=4, &["a", "b"]);
            s.id = id.into();
            s.new_messages
                .iter_mut()
                .for_each(|m| m.conversation = id.into());
            cache.apply(s);
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.members("c1").is_none(), "the oldest was evicted");
        assert!(cache.members("c3").is_some());
        // A conversation alone over the bound is not kept at all.
        let small = ConversationCache::new(10, 10, one / 2);
        small.apply(snap(1, 1..=4, &["a", "b"]));
        assert_eq!(small.len(), 0);
        assert_eq!(small.entries.lock().unwrap().bytes, 0);
        // Growth is counted: more messages in the same entry push others out.
        let cache = ConversationCache::new(10, 100, one * 2 + one / 2);
        let mut s = snap(1, 1..=4, &["a", "b"]);
        s.id = "old".into();
        cache.apply(s);
        cache.apply(snap(1, 1..=4, &["a", "b"]));
        cache.apply(snap(2, 5..=12, &["a", "b"]));
        assert!(cache.members("old").is_none(), "c grew past the bound");
        let total: usize = cache
            .entries
            .lock()
            .unwrap()
            .map
            .iter()
            .map(|(_, e)| e.bytes)
            .sum();
        assert_eq!(total, cache.entries.lock().unwrap().bytes);
    }

    #[test]
    fn an_out_of_order_commit_never_leaves_a_gap_or_a_stale_member() {
        let cache = ConversationCache::new(10, 10, 1 << 20);
        cache.apply(snap(1, 1..=1, &["a", "b"]));
        // Version 3 arrives before 2: the state is replaced, not appended to.
        cache.apply(snap(3, 3..=3, &["a"]));
        cache.apply(snap(2, 2..=2, &["a", "b"]));
        assert_eq!(cseqs(cache.first_page("c", "a", 1)), vec![3]);
        assert!(
            cache.first_page("c", "a", 2).is_none(),
            "2 is unknown: miss"
        );
        assert!(matches!(
            cache.first_page("c", "b", 1),
            Some(Page::NotAMember)
        ));
    }
}
