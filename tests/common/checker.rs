//! An independent checker of the delivery guarantee. It knows only what clients observed:
//! what each sent (`client_msg_id`, target, body), every reply to a send (an ack with the
//! message's id, conversation and cseq, or `unavailable`), the members of each
//! conversation as the acks of its creation told them, and every event each client
//! received, on which connection. It never reads the server's state or the database.
//!
//! Its verdict, from those observations alone:
//! - every send was acked in the end, every ack of one `client_msg_id` names the same
//!   message, and two sends never became one message (nor one send two);
//! - each user's stream, deduplicated by `seq`, is 1, 2, 3, … without a gap, and a `seq`
//!   seen twice carried the same event both times;
//! - every acked message reached every member of its conversation (the sender included,
//!   per PROTOCOL.md) exactly once, with the acked conversation, cseq, body and sender;
//! - per user and conversation, messages come in `cseq` order 1, 2, 3, … without a gap;
//! - on one connection started with `?after=N`, every event is the next: N+1, N+2, …
//!   with no gap, no duplicate and nothing out of order, replayed and live alike (and on
//!   one that sent `resume`, the same from the reply to it on);
//! - no message arrived that no client sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;

use serde_json::Value;

#[derive(Default)]
pub struct Checker {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sends: HashMap<(String, String), SendRecord>,
    /// Conversation id → members, from the acks that created them.
    members: HashMap<String, BTreeSet<String>>,
    /// User → seq → the event as first received.
    streams: HashMap<String, BTreeMap<i64, Value>>,
    duplicates_by_seq: u64,
    events_received: u64,
    /// Connection id → (user, last seq in order once resumed).
    connections: HashMap<u64, Connection>,
    next_connection: u64,
    closes: BTreeMap<String, u64>,
    closes_by_user: HashMap<String, Vec<String>>,
    connect_refusals: u64,
    rate_limited: u64,
    problems: Vec<String>,
}

/// Where a send went: `to` a user (a direct conversation) or to a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    User(String),
    Conversation(String),
}

struct SendRecord {
    target: Target,
    body: String,
    attempts: u32,
    unavailable: u32,
    /// (message id, conversation, cseq) of every ack.
    acks: Vec<(i64, String, i64)>,
}

struct Connection {
    user: String,
    /// Set by the reply to `resume`: from then on, the next event must be this + 1.
    in_order_from: Option<i64>,
}

/// What the checker counted, for the test's report.
#[derive(Debug, Default)]
pub struct Counts {
    pub sent: u64,
    pub attempts: u64,
    pub acked: u64,
    pub unavailable: u64,
    pub retried: u64,
    pub delivered: u64,
    /// Acked messages times their conversations' members: what `delivered` must equal.
    pub expected_deliveries: u64,
    pub duplicates_dropped_by_seq: u64,
    pub connections: u64,
    pub connect_refusals: u64,
    pub rate_limited: u64,
    pub closes: BTreeMap<String, u64>,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} (attempts {}), acked {}, unavailable {}, retried {}, delivered {} of {}, \
             duplicates dropped by seq {}, connections {}, connect refusals {}, \
             rate_limited {}, closes {:?}",
            self.sent,
            self.attempts,
            self.acked,
            self.unavailable,
            self.retried,
            self.delivered,
            self.expected_deliveries,
            self.duplicates_dropped_by_seq,
            self.connections,
            self.connect_refusals,
            self.rate_limited,
            self.closes
        )
    }
}

impl Checker {
    pub fn new() -> Checker {
        Checker::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A conversation the test created, with its members as the ack listed them.
    pub fn conversation(&self, ack: &Value) {
        let id = ack["id"].as_str().expect("conversation id").to_string();
        let members = ack["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect();
        self.state().members.insert(id, members);
    }

    /// A send went out (its first attempt or a retry).
    pub fn sent(&self, user: &str, client_msg_id: &str, target: &Target, body: &str) {
        let mut s = self.state();
        let r = s
            .sends
            .entry((user.to_string(), client_msg_id.to_string()))
            .or_insert_with(|| SendRecord {
                target: target.clone(),
                body: body.to_string(),
                attempts: 0,
                unavailable: 0,
                acks: Vec::new(),
            });
        if r.target != *target || r.body != body {
            let msg = format!("{user}/{client_msg_id}: a retry changed its target or body");
            s.problems.push(msg);
            return;
        }
        r.attempts += 1;
    }

    /// The ok reply to a send.
    pub fn acked(&self, user: &str, client_msg_id: &str, message: &Value) {
        let id = message["id"].as_i64().expect("message id");
        let conv = message["conversation"].as_str().unwrap().to_string();
        let cseq = message["cseq"].as_i64().unwrap();
        let mut s = self.state();
        let key = (user.to_string(), client_msg_id.to_string());
        let Some(r) = s.sends.get_mut(&key) else {
            s.problems
                .push(format!("{user}/{client_msg_id}: an ack for nothing sent"));
            return;
        };
        r.acks.push((id, conv.clone(), cseq));
        // A direct conversation's members are the sender and the addressee.
        if let Target::User(to) = r.target.clone() {
            let m = s.members.entry(conv).or_default();
            m.insert(user.to_string());
            m.insert(to);
        }
    }

    /// The `unavailable` reply to a send: nothing was stored; the client retries.
    pub fn unavailable(&self, user: &str, client_msg_id: &str) {
        let mut s = self.state();
        if let Some(r) = s
            .sends
            .get_mut(&(user.to_string(), client_msg_id.to_string()))
        {
            r.unavailable += 1;
        }
    }

    /// Any other error reply to a send.
    pub fn send_error(&self, user: &str, client_msg_id: &str, reply: &Value) {
        if reply["code"] == "rate_limited" {
            self.state().rate_limited += 1;
            return;
        }
        self.problem(format!("{user}/{client_msg_id}: send failed: {reply}"));
    }

    pub fn problem(&self, p: String) {
        self.state().problems.push(p);
    }

    pub fn connect_refused(&self) {
        self.state().connect_refusals += 1;
    }

    /// A new connection of `user`; its id for [`Checker::received`].
    pub fn connected(&self, user: &str) -> u64 {
        let mut s = self.state();
        s.next_connection += 1;
        let id = s.next_connection;
        s.connections.insert(
            id,
            Connection {
                user: user.to_string(),
                in_order_from: None,
            },
        );
        id
    }

    /// A new connection of `user` that the server starts after `after` (`?after=`): from
    /// its first event on, each must be the next.
    pub fn connected_after(&self, user: &str, after: i64) -> u64 {
        let id = self.connected(user);
        self.resumed(id, after);
        id
    }

    /// The reply to this connection's `resume`: `head` was the last event replayed.
    pub fn resumed(&self, connection: u64, head: i64) {
        if let Some(c) = self.state().connections.get_mut(&connection) {
            c.in_order_from = Some(head);
        }
    }

    /// How a connection of `user` ended: a close code, an I/O error, "eof", ….
    pub fn closed(&self, user: &str, how: String) {
        let mut s = self.state();
        *s.closes.entry(how.clone()).or_default() += 1;
        s.closes_by_user
            .entry(user.to_string())
            .or_default()
            .push(how);
    }

    /// How each connection of `user` ended, in order.
    pub fn closes_of(&self, user: &str) -> Vec<String> {
        self.state()
            .closes_by_user
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    /// An event with a `seq` arrived on `connection`.
    pub fn received(&self, connection: u64, event: &Value) {
        let Some(seq) = event["seq"].as_i64() else {
            return;
        };
        let mut s = self.state();
        s.events_received += 1;
        let (user, order_problem) = {
            let c = s
                .connections
                .get_mut(&connection)
                .expect("known connection");
            let mut p = None;
            if let Some(last) = c.in_order_from {
                if seq != last + 1 {
                    p = Some(format!(
                        "{}: connection {connection} got seq {seq} after {last} (out of order on one session)",
                        c.user
                    ));
                }
                c.in_order_from = Some(seq.max(last));
            }
            (c.user.clone(), p)
        };
        if let Some(p) = order_problem {
            s.problems.push(p);
        }
        let stream = s.streams.entry(user.clone()).or_default();
        // A replayed `conversation` event may show a later state than the live one did;
        // a message is the same message whenever it is sent.
        let same = |a: &Value, b: &Value| a["type"] == b["type"] && a["message"] == b["message"];
        match stream.get(&seq) {
            None => {
                stream.insert(seq, event.clone());
            }
            Some(first) if same(first, event) => s.duplicates_by_seq += 1,
            Some(first) => {
                let p = format!("{user}: seq {seq} carried {first} and later {event}");
                s.duplicates_by_seq += 1;
                s.problems.push(p);
            }
        }
    }

    /// The highest seq `user` has seen with nothing missing below it.
    pub fn contiguous_head(&self, user: &str) -> i64 {
        let s = self.state();
        let mut head = 0;
        if let Some(stream) = s.streams.get(user) {
            for &seq in stream.keys() {
                if seq != head + 1 {
                    break;
                }
                head = seq;
            }
        }
        head
    }

    /// Every acked message's id, for a final cross-check against the database.
    pub fn acked_ids(&self) -> BTreeSet<i64> {
        self.state()
            .sends
            .values()
            .flat_map(|r| r.acks.iter().map(|a| a.0))
            .collect()
    }

    /// Users that have not yet received every acked message of their conversations
    /// (an empty list: live delivery has converged).
    pub fn missing_deliveries(&self) -> Vec<String> {
        let s = self.state();
        let mut delivered: HashMap<&str, BTreeSet<i64>> = HashMap::new();
        for (user, stream) in &s.streams {
            let ids = delivered.entry(user).or_default();
            for e in stream.values() {
                if let Some(id) = e["message"]["id"].as_i64() {
                    ids.insert(id);
                }
            }
        }
        let mut missing = BTreeSet::new();
        for r in s.sends.values() {
            let Some((id, conv, _)) = r.acks.first() else {
                continue;
            };
            for m in s.members.get(conv).into_iter().flatten() {
                if !delivered.get(m.as_str()).is_some_and(|d| d.contains(id)) {
                    missing.insert(m.clone());
                }
            }
        }
        missing.into_iter().collect()
    }

    pub fn counts(&self) -> Counts {
        let s = self.state();
        let delivered = s
            .streams
            .values()
            .flat_map(|st| st.values())
            .filter(|e| e["type"] == "message")
            .count() as u64;
        Counts {
            sent: s.sends.len() as u64,
            attempts: s.sends.values().map(|r| r.attempts as u64).sum(),
            acked: s.sends.values().filter(|r| !r.acks.is_empty()).count() as u64,
            unavailable: s.sends.values().map(|r| r.unavailable as u64).sum(),
            retried: s.sends.values().filter(|r| r.attempts > 1).count() as u64,
            delivered,
            expected_deliveries: s
                .sends
                .values()
                .filter_map(|r| r.acks.first())
                .map(|(_, conv, _)| s.members.get(conv).map_or(0, |m| m.len() as u64))
                .sum(),
            duplicates_dropped_by_seq: s.duplicates_by_seq,
            connections: s.connections.len() as u64,
            connect_refusals: s.connect_refusals,
            rate_limited: s.rate_limited,
            closes: s.closes.clone(),
        }
    }

    /// The verdict: Ok with the counts, or Err listing every violation found (first 40).
    pub fn verify(&self) -> Result<Counts, String> {
        let mut problems = self.state().problems.clone();
        problems.extend(self.violations());
        let counts = self.counts();
        if problems.is_empty() {
            return Ok(counts);
        }
        let mut out = format!("{} violations; counts: {counts}\n", problems.len());
        for p in problems.iter().take(40) {
            let _ = writeln!(out, "  {p}");
        }
        Err(out)
    }

    fn violations(&self) -> Vec<String> {
        let s = self.state();
        let mut v = Vec::new();
        // Sends and their acks: each send is one message, each message one send.
        let mut by_id: HashMap<i64, (&str, &str, &SendRecord, &str, i64)> = HashMap::new();
        let mut by_position: HashMap<(&str, i64), i64> = HashMap::new();
        for ((user, cmid), r) in &s.sends {
            let Some((id, conv, cseq)) = r.acks.first() else {
                v.push(format!(
                    "{user}/{cmid}: never acked ({} attempts, {} unavailable)",
                    r.attempts, r.unavailable
                ));
                continue;
            };
            if r.acks.iter().any(|a| a != &r.acks[0]) {
                v.push(format!(
                    "{user}/{cmid}: acked as different messages {:?}",
                    r.acks
                ));
            }
            if let Some((u2, c2, ..)) = by_id.insert(*id, (user, cmid, r, conv, *cseq)) {
                v.push(format!(
                    "message {id} acked for {user}/{cmid} and {u2}/{c2}"
                ));
            }
            if let Some(other) = by_position.insert((conv, *cseq), *id) {
                v.push(format!(
                    "{conv} cseq {cseq} is both message {other} and {id}"
                ));
            }
        }
        // Each user's stream: gap-free, and each acked message of theirs exactly once.
        for (user, stream) in &s.streams {
            let mut expected = 1;
            for &seq in stream.keys() {
                if seq != expected {
                    v.push(format!("{user}: seq {expected}..{} missing", seq - 1));
                }
                expected = seq + 1;
            }
            let mut seen: HashMap<i64, i64> = HashMap::new();
            let mut cseqs: HashMap<&str, i64> = HashMap::new();
            for (&seq, e) in stream {
                if e["type"] != "message" {
                    continue;
                }
                let m = &e["message"];
                let id = m["id"].as_i64().unwrap_or(-1);
                if let Some(first) = seen.insert(id, seq) {
                    v.push(format!(
                        "{user}: message {id} delivered at seq {first} and {seq}"
                    ));
                }
                let conv = m["conversation"].as_str().unwrap_or("?");
                let cseq = m["cseq"].as_i64().unwrap_or(-1);
                let last = cseqs.entry(conv).or_insert(0);
                if cseq != *last + 1 {
                    v.push(format!(
                        "{user}: in {conv}, cseq {cseq} followed {} (seq {seq})",
                        *last
                    ));
                }
                *last = cseq.max(*last);
                match by_id.get(&id) {
                    None => v.push(format!("{user}: message {id} that no client sent: {m}")),
                    Some((sender, cmid, r, aconv, acseq)) => {
                        let same = m["sender"]["id"] == *sender
                            && m["client_msg_id"] == *cmid
                            && m["body"] == r.body.as_str()
                            && conv == *aconv
                            && cseq == *acseq;
                        if !same {
                            v.push(format!(
                                "{user}: message {id} differs from its ack ({sender}/{cmid} \
                                 {aconv}#{acseq}): {m}"
                            ));
                        }
                    }
                }
            }
        }
        // Every acked message reached every member of its conversation.
        for (id, (sender, cmid, _, conv, _)) in &by_id {
            let Some(members) = s.members.get(*conv) else {
                v.push(format!(
                    "{sender}/{cmid}: acked in unknown conversation {conv}"
                ));
                continue;
            };
            for m in members {
                let got = s.streams.get(m).is_some_and(|st| {
                    st.values()
                        .any(|e| e["type"] == "message" && e["message"]["id"] == *id)
                });
                if !got {
                    v.push(format!(
                        "{m}: never received message {id} ({sender}/{cmid} in {conv})"
                    ));
                }
            }
        }
        v.sort();
        v
    }
}
