//! The bytes a worker holds for its clients' replies and replays, bounded per user and
//! per worker.
//!
//! Every reply (a `history` page, a conversation list) and every page of events read back
//! from the table for one session is memory allocated for that client alone, held until
//! the client reads it. A client that stops reading would otherwise pin it: one user's 20
//! sockets pipelining `history` pages grew a worker by over 60 MiB. So each such
//! allocation reserves its worst case of the user's share (`outbound_user_bytes`) before
//! the query runs; once the frame is encoded the reservation shrinks to its real size,
//! which is then charged to the worker's budget (`outbound_budget_bytes`) too, until the
//! frame has been written to the socket. Past the user's share a request waits for that
//! user's earlier replies to drain (up to `outbound_stall_ms`, the time a stalled reader
//! is given anyway); a reply the worker's budget has no room for is dropped and answered
//! `rate_limited` at once, so that the users who pin it cannot make everyone else wait
//! too. (A worst case is far above the usual reply: reserved against the worker's budget,
//! a handful of `conversations` requests would fill it.)
//!
//! Live events are not charged: their frames are encoded once and shared by every
//! session of every recipient (and the feed), and each session's queue of them is bounded
//! by `outbound_max_bytes`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

/// The worker's budget. One per worker, shared by its sessions and its HTTP API.
pub(crate) struct Budget {
    limit: usize,
    per_user: usize,
    used: AtomicUsize,
    /// One account per user holding or waiting for bytes. A std mutex: held for a map
    /// lookup, never across an await. Weak, so an account goes with its last charge and
    /// its last session.
    accounts: Mutex<HashMap<String, Weak<Account>>>,
    /// Woken whenever bytes are given back.
    freed: Notify,
}

/// One user's share of the budget on this worker.
pub(crate) struct Account {
    budget: Arc<Budget>,
    used: AtomicUsize,
    /// HTTP API replies of this user being written now.
    http: Arc<AtomicUsize>,
}

/// One of a user's HTTP API replies being written; given back on drop.
pub(crate) struct HttpSlot(Arc<AtomicUsize>);

impl Drop for HttpSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bytes held for one reply or one page of events: reserved of the user's share and, once
/// settled, charged to the worker's budget too; given back on drop.
pub(crate) struct Charge {
    account: Arc<Account>,
    bytes: usize,
    /// Counted in the worker's budget (see [`Charge::settle`]).
    settled: bool,
}

/// Why a charge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Short {
    /// The user's share stayed full for the whole wait: their earlier replies are not
    /// being read.
    User,
    /// The worker's budget is full: the replies of all users not yet read.
    Worker,
}

impl Budget {
    pub(crate) fn new(limit: usize, per_user: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            per_user: per_user.min(limit),
            used: AtomicUsize::new(0),
            accounts: Mutex::new(HashMap::new()),
            freed: Notify::new(),
        })
    }

    /// Bytes held now, all users.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The largest charge one user can hold.
    pub(crate) fn per_user(&self) -> usize {
        self.per_user
    }

    /// `user`'s account (the one every session and HTTP request of theirs shares).
    pub(crate) fn account(self: &Arc<Budget>, user: &str) -> Arc<Account> {
        let mut accounts = self.accounts.lock().expect("budget lock");
        if let Some(a) = accounts.get(user).and_then(Weak::upgrade) {
            return a;
        }
        if accounts.len() >= 1024 && accounts.len().is_power_of_two() {
            accounts.retain(|_, a| a.strong_count() > 0);
        }
        let a = Arc::new(Account {
            budget: self.clone(),
            used: AtomicUsize::new(0),
            http: Arc::new(AtomicUsize::new(0)),
        });
        accounts.insert(user.to_string(), Arc::downgrade(&a));
        a
    }
}

impl Account {
    /// A slot for one more HTTP API reply of this user's, if fewer than `max` are being
    /// written now.
    pub(crate) fn http_slot(&self, max: usize) -> Option<HttpSlot> {
        self.http
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| HttpSlot(self.http.clone()))
    }

    /// Bytes this user holds now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Reserves `bytes` of the user's share (at most all of it) if it has room now: the
    /// worst case of a reply about to be built. The worker's budget is charged only what
    /// the reply turns out to hold ([`Charge::settle`]).
    pub(crate) fn try_charge(self: &Arc<Self>, bytes: usize) -> Result<Charge, Short> {
        let per_user = self.budget.per_user;
        let bytes = bytes.min(per_user);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + bytes <= per_user).then_some(u + bytes)
            })
            .map_err(|_| Short::User)?;
        Ok(Charge {
            account: self.clone(),
            bytes,
            settled: false,
        })
    }

    /// Reserves `bytes`, waiting up to `wait` for the user's share to have room (their
    /// earlier replies being read).
    pub(crate) async fn charge(
        self: &Arc<Self>,
        bytes: usize,
        wait: Duration,
    ) -> Result<Charge, Short> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.budget.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Ok(charge) = self.try_charge(bytes) {
                return Ok(charge);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(Short::User);
            }
        }
    }
}

impl Charge {
    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The reply is built and holds `bytes`: the reservation shrinks to that, and the
    /// worker's budget is charged it, if it has room; else `Short::Worker`, and the caller
    /// drops the reply (the charge goes with it). Unread replies of all users together
    /// thus never pass `outbound_budget_bytes`, while what requests reserve for the
    /// moment they run is bounded by each user's share.
    pub(crate) fn settle(&mut self, bytes: usize) -> Result<(), Short> {
        self.shrink_to(bytes);
        let budget = &self.account.budget;
        let bytes = self.bytes;
        budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + bytes <= budget.limit).then_some(u + bytes)
            })
            .map_err(|_| Short::Worker)?;
        self.settled = true;
        Ok(())
    }

    /// As [`Charge::settle`], for a reply that must go whatever the budget (the answer to a
    /// committed write: small, and owed).
    pub(crate) fn settle_anyway(&mut self, bytes: usize) {
        self.shrink_to(bytes);
        self.account
            .budget
            .used
            .fetch_add(self.bytes, Ordering::AcqRel);
        self.settled = true;
    }

    /// Gives back all but `bytes` (a reply turned out smaller than its worst case).
    pub(crate) fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.give_back(self.bytes - bytes);
            self.bytes = bytes;
        }
    }

    /// Splits off `bytes` of this charge into a charge of its own (at most all of it): a
    /// page of events hands each frame its share as it is queued.
    pub(crate) fn split_off(&mut self, bytes: usize) -> Charge {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        Charge {
            account: self.account.clone(),
            bytes,
            settled: self.settled,
        }
    }

    fn give_back(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.account.used.fetch_sub(bytes, Ordering::AcqRel);
        if self.settled {
            self.account.budget.used.fetch_sub(bytes, Ordering::AcqRel);
        }
        self.account.budget.freed.notify_waiters();
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.give_back(self.bytes);
    }
}

/// Worst-case bytes of one message while a reply that holds it is built and sent: its row
/// as read (up to 4 bytes a character), the message as decoded (4), and encoded (6, for
/// the characters JSON escapes), beside its other fields: the users it mentions, the
/// snippet of the message it answers (100 characters), and its reactions (20 emoji).
pub(crate) fn message_bytes(max_message_chars: usize, max_mentions: usize) -> usize {
    let text = |chars: usize| chars * 14;
    let reactions = crate::foundation::protocol::MAX_REACTIONS
        * (text(crate::foundation::protocol::MAX_EMOJI_CHARS) + 64);
    text(max_message_chars) + 1024 + ids_bytes(max_mentions) + text(100) + reactions
}

/// Worst-case bytes of `n` user ids in a reply (an id is 64 characters that need no
/// escaping; read, decoded and encoded).
pub(crate) fn ids_bytes(n: usize) -> usize {
    n * 3 * 67
}

/// The worst cases this configuration allows, worked out once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// One message ([`message_bytes`]).
    pub(crate) message: usize,
    /// A conversation's state: its listed members and admins, and the change.
    pub(crate) group: usize,
    /// One entry of a `conversations` page: its listed members and admins, its last
    /// message.
    pub(crate) conversation: usize,
    /// One event of a stream, of any kind.
    pub(crate) event: usize,
}

impl Sizes {
    pub(crate) fn of(config: &crate::foundation::config::Config) -> Sizes {
        let message = message_bytes(config.max_message_chars, config.max_mentions);
        // A conversation's state lists at most conversation_members_listed members, as
        // many admins, and as many added or removed (pgchat.conversation_json).
        let group = ids_bytes(config.conversation_members_listed * 4) + SMALL_REPLY;
        Sizes {
            message,
            group,
            conversation: message + ids_bytes(config.conversation_members_listed * 2),
            event: message.max(group),
        }
    }
}

/// Worst-case bytes of a small reply (`{}`, a head, a presence entry or two).
pub(crate) const SMALL_REPLY: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_bounded_per_user_and_per_worker_and_given_back() {
        let budget = Budget::new(1000, 400);
        let alice = budget.account("alice");
        let bob = budget.account("bob");
        // Reservations count against each user's share only.
        let mut a1 = alice.try_charge(300).unwrap();
        assert_eq!(alice.try_charge(200).err(), Some(Short::User));
        let mut b1 = bob.try_charge(400).unwrap();
        assert_eq!(budget.used(), 0, "nothing settled yet");
        // Settled, the worker's budget holds what the replies hold.
        a1.settle(250).unwrap();
        b1.settle(400).unwrap();
        assert_eq!((alice.used(), budget.used()), (250, 650));
        let carol = budget.account("carol");
        let mut c1 = carol.try_charge(400).unwrap();
        // 650 held: 400 more would pass the worker's 1000.
        assert_eq!(c1.settle(400).err(), Some(Short::Worker));
        drop(c1);
        assert_eq!(
            (carol.used(), budget.used()),
            (0, 650),
            "a refused reply holds nothing"
        );
        drop(b1);
        assert_eq!(budget.used(), 250);
        let mut c2 = carol.try_charge(100).unwrap();
        c2.settle(10).unwrap();
        assert_eq!((carol.used(), budget.used()), (10, 260));
        let part = c2.split_off(4);
        assert_eq!((part.bytes(), c2.bytes()), (4, 6));
        drop((a1, c2, part));
        assert_eq!((budget.used(), alice.used(), carol.used()), (0, 0, 0));
        // An owed reply is settled past the budget; more than a share is the whole share.
        let mut owed = alice.try_charge(10_000).unwrap();
        assert_eq!(owed.bytes(), 400);
        owed.settle_anyway(300);
        assert_eq!(budget.used(), 300);
    }

    #[tokio::test]
    async fn a_charge_past_the_user_s_share_waits_for_it_to_drain() {
        let budget = Budget::new(1000, 400);
        let alice = budget.account("alice");
        let held = alice.try_charge(400).unwrap();
        let waiting = {
            let alice = alice.clone();
            tokio::spawn(async move { alice.charge(100, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(held);
        assert_eq!(waiting.await.unwrap().unwrap().bytes(), 100);
        // Nothing drains: refused once the wait is over.
        let _held = alice.try_charge(400).unwrap();
        let refused = alice.charge(100, Duration::from_millis(20)).await;
        assert_eq!(refused.err(), Some(Short::User));
    }
}
