//! The per-worker hub: which users have live sessions here, and each such user's feed.
//!
//! A feed holds the user's newest committed `seq` (a watch channel that wakes the user's
//! sessions) and the last few event frames, encoded once and shared by every session.
//! Sessions *pull* from the feed at their own pace, each with its own cursor, so:
//! - events reach a session in `seq` order with no gap: a frame missing from the feed
//!   (evicted, or published out of order by concurrent writers) is read from the table;
//! - a slow session costs nothing here: its events wait in the durable stream;
//! - a user with no session on this worker costs nothing: publish finds no feed.
//!
//! Ephemeral frames (typing, presence) are pushed instead, into each session's small
//! bounded channel; when one is full the frame is dropped for that session: ephemeral
//! events are never stored and may be lost by definition.
//!
//! A session subscribes with its `UserId`; inside, feeds are keyed by the id's text, and
//! the writer and listener publish by the user ids their rows carry (text from the
//! database, valid by construction), so a lookup costs no conversion.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, watch};

use crate::foundation::protocol::UserId;

/// Users with live sessions on this worker. Shared by the writer (publish) and sessions.
pub(crate) struct Hub {
    /// A std mutex: held only for a map lookup or insert, never across an await.
    feeds: Mutex<HashMap<String, Arc<Feed>>>,
    limits: FeedLimits,
    /// Bytes of frames held by all feeds (each feed gives its share back when dropped).
    held: Arc<AtomicUsize>,
    ephemeral_queue: usize,
}

/// How much of its recent events each feed keeps: bounded in frames and bytes per user,
/// and in bytes over all users, so that neither many users nor long messages can grow a
/// worker's memory. What a feed does not keep, sessions read from the table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FeedLimits {
    pub(crate) frames_per_user: usize,
    pub(crate) bytes_per_user: usize,
    pub(crate) bytes_total: usize,
}

/// A session's id on this worker.
pub(crate) type SessionId = u64;

/// One user's live feed on this worker.
pub(crate) struct Feed {
    head: watch::Sender<i64>,
    /// The newest frames, ascending by seq, within the hub's [`FeedLimits`]. std mutex: the
    /// critical sections are a push or a copy of a few `Utf8Bytes` handles.
    recent: Mutex<Recent>,
    /// The user's sessions here and their ephemeral channels; the feed leaves the map when
    /// the last one drops.
    sessions: Mutex<Vec<(SessionId, mpsc::Sender<Utf8Bytes>)>>,
}

/// A feed's frames and their size in bytes.
struct Recent {
    frames: VecDeque<(i64, Utf8Bytes)>,
    bytes: usize,
    /// Frames below this seq are not kept: an edit or a deletion at this seq made them
    /// stale (they may show a text that is gone), so sessions read them from the table,
    /// which shows each message as it is now.
    floor: i64,
    /// The hub's count of bytes held, which this feed's bytes are part of.
    held: Arc<AtomicUsize>,
}

impl Recent {
    /// Forgets every frame below `seq`, and any that comes later with a seq below it.
    fn raise_floor(&mut self, seq: i64) {
        self.floor = self.floor.max(seq);
        while self.frames.front().is_some_and(|(s, _)| *s < self.floor) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, f)) = self.frames.pop_front() {
            self.bytes -= f.len();
            self.held.fetch_sub(f.len(), Ordering::AcqRel);
        }
    }
}

impl Drop for Recent {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Feed {
    /// The newest seq known to be committed for this user (0 before any publish).
    pub(crate) fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// Moves the head up to `seq` (never down), waking the sessions if it moved.
    fn raise(&self, seq: i64) {
        self.head.send_if_modified(|h| {
            let moved = seq > *h;
            if moved {
                *h = seq;
            }
            moved
        });
    }

    /// Frames with seq `after+1, after+2, …` as far as the feed holds them contiguously.
    pub(crate) fn frames_after(&self, after: i64, max: usize) -> Vec<(i64, Utf8Bytes)> {
        let recent = self.recent.lock().expect("feed lock");
        let start = recent.frames.partition_point(|(s, _)| *s <= after);
        recent
            .frames
            .iter()
            .skip(start)
            .take(max)
            .zip(after + 1..)
            .take_while(|((s, _), want)| s == want)
            .map(|((s, f), _)| (*s, f.clone()))
            .collect()
    }
}

/// Whether an event frame changes what earlier frames show: an edit or a deletion, after
/// which a kept copy of the message (or of a reaction to it) could show what is gone.
fn erases(frame: &str) -> bool {
    frame.starts_with(r#"{"type":"message_edited""#)
        || frame.starts_with(r#"{"type":"message_deleted""#)
}

/// A session's subscription to its user's feed; unsubscribes on drop.
pub(crate) struct Subscription {
    hub: Arc<Hub>,
    user: String,
    pub(crate) session: SessionId,
    pub(crate) feed: Arc<Feed>,
    pub(crate) wake: watch::Receiver<i64>,
    /// Ephemeral frames for this session.
    pub(crate) ephemeral: mpsc::Receiver<Utf8Bytes>,
    /// The sending side of `ephemeral`, for registries that target this session alone.
    pub(crate) ephemeral_tx: mpsc::Sender<Utf8Bytes>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.user, self.session, &self.feed);
    }
}

impl Hub {
    pub(crate) fn new(limits: FeedLimits, ephemeral_queue: usize) -> Arc<Hub> {
        Arc::new(Hub {
            feeds: Mutex::new(HashMap::new()),
            limits,
            held: Arc::new(AtomicUsize::new(0)),
            ephemeral_queue,
        })
    }

    /// Bytes of event frames the feeds hold now.
    #[cfg(test)]
    pub(crate) fn bytes_held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Subscribes a new session of `user`. Subscribe *before* reading the user's head from
    /// the database: then every event committed after that read is published to a feed
    /// that already exists, and none falls between the two.
    #[cfg(test)]
    pub(crate) fn subscribe(self: &Arc<Hub>, user: &UserId, session: SessionId) -> Subscription {
        self.try_subscribe(user, session, usize::MAX)
            .expect("no cap, no refusal")
    }

    /// Subscribes a new session of `user` unless the user already holds `max` sessions on
    /// this worker (checked and taken under one lock, so racing upgrades cannot pass it).
    pub(crate) fn try_subscribe(
        self: &Arc<Hub>,
        user: &UserId,
        session: SessionId,
        max: usize,
    ) -> Option<Subscription> {
        let user = user.as_str();
        let mut feeds = self.feeds.lock().expect("hub lock");
        if let Some(feed) = feeds.get(user) {
            if feed.sessions.lock().expect("feed lock").len() >= max {
                return None;
            }
        }
        let (ephemeral_tx, ephemeral) = mpsc::channel(self.ephemeral_queue);
        let feed = feeds
            .entry(user.to_string())
            .or_insert_with(|| {
                Arc::new(Feed {
                    head: watch::Sender::new(0),
                    recent: Mutex::new(Recent {
                        frames: VecDeque::new(),
                        bytes: 0,
                        floor: 0,
                        held: self.held.clone(),
                    }),
                    sessions: Mutex::new(Vec::new()),
                })
            })
            .clone();
        feed.sessions
            .lock()
            .expect("feed lock")
            .push((session, ephemeral_tx.clone()));
        drop(feeds);
        let wake = feed.head.subscribe();
        Some(Subscription {
            hub: self.clone(),
            user: user.to_string(),
            session,
            feed,
            wake,
            ephemeral,
            ephemeral_tx,
        })
    }

    fn unsubscribe(&self, user: &str, session: SessionId, feed: &Arc<Feed>) {
        let mut feeds = self.feeds.lock().expect("hub lock");
        let mut sessions = feed.sessions.lock().expect("feed lock");
        sessions.retain(|(id, _)| *id != session);
        if sessions.is_empty() {
            if let Some(current) = feeds.get(user) {
                if Arc::ptr_eq(current, feed) {
                    feeds.remove(user);
                }
            }
        }
    }

    fn feed(&self, user: &str) -> Option<Arc<Feed>> {
        self.feeds.lock().expect("hub lock").get(user).cloned()
    }

    /// Pushes an ephemeral frame to `user`'s sessions here. Returns how many sessions had
    /// no room (the frame is dropped for them).
    pub(crate) fn push(&self, user: &str, frame: &Utf8Bytes) -> usize {
        let Some(feed) = self.feed(user) else {
            return 0;
        };
        let sessions = feed.sessions.lock().expect("feed lock");
        sessions
            .iter()
            .filter(|(_, tx)| tx.try_send(frame.clone()).is_err())
            .count()
    }

    /// Hands a committed event to `user`'s sessions on this worker, if any. `frame` is
    /// called only when someone here listens, so other users' events cost one lookup.
    pub(crate) fn publish(&self, user: &str, seq: i64, frame: impl FnOnce() -> String) {
        let Some(feed) = self.feed(user) else {
            return;
        };
        {
            let mut recent = feed.recent.lock().expect("feed lock");
            // Usually the newest; concurrent batches can publish out of order.
            let at = recent.frames.partition_point(|(s, _)| *s < seq);
            if recent.frames.get(at).map(|(s, _)| *s) != Some(seq) {
                let frame = Utf8Bytes::from(frame());
                if erases(&frame) {
                    recent.raise_floor(seq);
                }
                let at = recent.frames.partition_point(|(s, _)| *s < seq);
                let len = frame.len();
                let limits = &self.limits;
                // Over the worker's total, or alone over the user's share: not kept; the
                // session reads it from the table.
                if seq >= recent.floor
                    && len <= limits.bytes_per_user
                    && self.held.load(Ordering::Acquire) + len <= limits.bytes_total
                {
                    recent.frames.insert(at, (seq, frame));
                    recent.bytes += len;
                    self.held.fetch_add(len, Ordering::AcqRel);
                    while recent.frames.len() > limits.frames_per_user
                        || recent.bytes > limits.bytes_per_user
                    {
                        recent.pop_front();
                    }
                }
            }
        }
        feed.raise(seq);
    }

    /// The newest seq this worker knows for `user`, if the user has a session here.
    pub(crate) fn head_of(&self, user: &str) -> Option<i64> {
        self.feed(user).map(|f| f.head())
    }

    /// Tells `user`'s sessions here that their stream reached `seq`, without the frames:
    /// they read what the feed lacks from the table.
    pub(crate) fn advance(&self, user: &str, seq: i64) {
        if let Some(feed) = self.feed(user) {
            feed.raise(seq);
        }
    }

    /// Every user with a live session on this worker.
    pub(crate) fn local_users(&self) -> Vec<String> {
        self.feeds
            .lock()
            .expect("hub lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Users with a live session on this worker.
    pub(crate) fn users_online(&self) -> usize {
        self.feeds.lock().expect("hub lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    fn limits(frames_per_user: usize, bytes_per_user: usize, bytes_total: usize) -> FeedLimits {
        FeedLimits {
            frames_per_user,
            bytes_per_user,
            bytes_total,
        }
    }

    #[test]
    fn feeds_are_bounded_in_bytes_per_user_and_in_total() {
        let hub = Hub::new(limits(100, 250, 400), 4);
        let a = hub.subscribe(&user("a"), 1);
        let b = hub.subscribe(&user("b"), 2);
        let frame = |n: usize| move || "x".repeat(n);
        // a: 100 + 100 fit its 250; a third evicts the first.
        for seq in 1..=3 {
            hub.publish("a", seq, frame(100));
        }
        let held: Vec<i64> = a.feed.frames_after(0, 10).iter().map(|f| f.0).collect();
        assert!(
            held.is_empty(),
            "1 was evicted, so nothing is contiguous from 0"
        );
        assert_eq!(a.feed.frames_after(1, 10).len(), 2);
        assert_eq!(hub.bytes_held(), 200);
        // b: 200 more would pass the total of 400; only what fits is kept.
        hub.publish("b", 1, frame(150));
        hub.publish("b", 2, frame(150));
        assert_eq!(hub.bytes_held(), 350);
        assert_eq!(b.feed.frames_after(0, 10).len(), 1);
        assert_eq!(
            b.feed.head(),
            2,
            "the head moves even when the frame is not kept"
        );
        // A frame alone over a user's share is never kept.
        hub.publish("a", 4, frame(300));
        assert_eq!(a.feed.frames_after(3, 10).len(), 0);
        // Dropping a user's last session gives its bytes back.
        drop(a);
        assert_eq!(hub.bytes_held(), 150);
        drop(b);
        assert_eq!(hub.bytes_held(), 0);
    }

    #[test]
    fn frames_come_out_contiguous_and_in_order() {
        let hub = Hub::new(limits(8, 1 << 20, 1 << 20), 4);
        let sub = hub.subscribe(&user("a"), 1);
        hub.publish("a", 2, || "two".into());
        hub.publish("a", 1, || "one".into());
        hub.publish("a", 4, || "four".into());
        let got: Vec<i64> = sub.feed.frames_after(0, 10).iter().map(|f| f.0).collect();
        assert_eq!(got, vec![1, 2]); // 3 is missing: stop before the gap
        assert_eq!(sub.feed.head(), 4);
        assert!(sub.feed.frames_after(2, 10).is_empty());
    }

    #[test]
    fn an_edit_or_deletion_drops_the_frames_before_it_even_those_that_come_late() {
        let hub = Hub::new(limits(8, 1 << 20, 1 << 20), 4);
        let sub = hub.subscribe(&user("a"), 1);
        hub.publish("a", 1, || {
            r#"{"type":"message","seq":1,"body":"secret"}"#.into()
        });
        hub.publish("a", 3, || r#"{"type":"message_deleted","seq":3}"#.into());
        // Published late (another worker's fetch from before the deletion): not kept.
        hub.publish("a", 2, || r#"{"type":"reaction","seq":2}"#.into());
        hub.publish("a", 4, || r#"{"type":"message","seq":4}"#.into());
        assert!(sub.feed.frames_after(0, 10).is_empty());
        let got: Vec<i64> = sub.feed.frames_after(2, 10).iter().map(|f| f.0).collect();
        assert_eq!(got, vec![3, 4]);
        assert_eq!(
            hub.bytes_held(),
            sub.feed
                .frames_after(2, 10)
                .iter()
                .map(|f| f.1.len())
                .sum::<usize>()
        );
    }

    #[test]
    fn a_user_without_sessions_is_not_kept() {
        let hub = Hub::new(limits(8, 1 << 20, 1 << 20), 4);
        let sub = hub.subscribe(&user("a"), 1);
        assert_eq!(hub.users_online(), 1);
        drop(sub);
        assert_eq!(hub.users_online(), 0);
        let mut called = false;
        hub.publish("a", 1, || {
            called = true;
            String::new()
        });
        assert!(!called);
    }
}
