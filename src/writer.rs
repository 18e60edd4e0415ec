//! The write batcher: every send goes through here, is committed with the others queued
//! beside it in one transaction, and is acknowledged only after that commit.
//!
//! Why batch: a commit costs a disk flush (about 200 µs here), and with cluster mode each
//! committing transaction that notifies takes an instance-wide lock. So `writers` tasks
//! each take whatever is queued (up to `write_batch_max`, never waiting for more) and
//! commit it at once: under light load a batch is one send and nothing waits; under heavy
//! load the batches grow and the cost per send falls.
//!
//! How `seq` and `cseq` stay gap-free and in commit order: a transaction locks the
//! conversations it writes to (by id), then every member's `users` row (by id), bumps
//! the counters in memory, inserts, and writes the counters back. Locks are always taken
//! in that global order, so concurrent batches (other writers, other workers) never
//! deadlock, and a later seq for a user can only commit after the earlier one did.
//! The locks are `FOR NO KEY UPDATE`, not `FOR UPDATE`: inserting a message or a member
//! takes `FOR KEY SHARE` on the referenced rows, which `FOR UPDATE` would conflict with
//! (and deadlock against a concurrent batch); the counters are not keys.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::{ApiError, DbError};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{Body, ClientMsgId, ConversationId, Target, UserId};
use crate::store::{self, event_frame, object_fields, EventKind, Message};

/// One message to store, as validated at the edge.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub sender: UserId,
    pub target: Target,
    pub body: Body,
    pub client_msg_id: ClientMsgId,
}

struct Job {
    request: SendRequest,
    reply: oneshot::Sender<Result<Message, ApiError>>,
    queued_at: Instant,
}

/// The handle sessions and the HTTP API send through. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts `config.writers` batching tasks on `tracker`. When `stop` is cancelled they
    /// refuse new sends, commit what is queued, and end.
    pub fn spawn(
        pool: Pool,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        config: &Config,
        stop: CancellationToken,
        tracker: &TaskTracker,
    ) -> Writer {
        let (tx, rx) = mpsc::channel(config.write_queue);
        let rx = Arc::new(Mutex::new(rx));
        let batch_max = config.write_batch_max;
        for _ in 0..config.writers {
            let ctx = Batcher {
                pool: pool.clone(),
                hub: hub.clone(),
                metrics: metrics.clone(),
                batch_max,
            };
            let rx = rx.clone();
            let stop = stop.clone();
            tracker.spawn(async move { ctx.run(rx, stop).await });
        }
        Writer { queue: tx }
    }

    /// Stores one message; returns it once committed. A failure stores nothing.
    pub async fn send(&self, request: SendRequest) -> Result<Message, ApiError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            request,
            reply,
            queued_at: Instant::now(),
        };
        // Waiting here is the back-pressure: a full queue slows senders instead of growing.
        self.queue.send(job).await.map_err(|_| {
            ApiError::new(
                crate::error::Code::Unavailable,
                "the server is shutting down; nothing was stored: retry with the same client_msg_id",
            )
        })?;
        rx.await.map_err(|_| ApiError::internal())?
    }
}

struct Batcher {
    pool: Pool,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    batch_max: usize,
}

/// An event to hand to the hub after commit.
struct Published {
    user: String,
    seq: i64,
    kind: EventKind,
    fields: Arc<str>,
}

type Outcomes = Vec<Result<Message, ApiError>>;

impl Batcher {
    async fn run(self, rx: Arc<Mutex<mpsc::Receiver<Job>>>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(self.batch_max);
        loop {
            let taken = {
                // Only one batcher waits on the queue at a time; the others are committing.
                let mut rx = rx.lock().await;
                tokio::select! {
                    n = rx.recv_many(&mut batch, self.batch_max) => n,
                    _ = stop.cancelled() => {
                        // Shutdown: refuse new sends, commit what is already queued.
                        rx.close();
                        rx.recv_many(&mut batch, self.batch_max).await
                    }
                }
            };
            if taken == 0 {
                return;
            }
            self.commit_jobs(std::mem::take(&mut batch)).await;
        }
    }

    async fn commit_jobs(&self, jobs: Vec<Job>) {
        let requests: Vec<&SendRequest> = jobs.iter().map(|j| &j.request).collect();
        self.metrics.batch_size.observe(jobs.len() as f64);
        let mut attempt = self.commit(&requests).await;
        // A deadlock or serialization failure should not happen with ordered locks; if one
        // does (a future statement gets the order wrong), retrying is correct and cheap.
        for _ in 0..3 {
            match &attempt {
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "batch hit a lock conflict; retrying");
                    attempt = self.commit(&requests).await;
                }
                _ => break,
            }
        }
        let (outcomes, published) = match attempt {
            Ok(done) => done,
            Err(e) if e.is_unavailable() || jobs.len() == 1 => {
                let error = ApiError::from(e);
                (
                    jobs.iter().map(|_| Err(error.clone())).collect(),
                    Vec::new(),
                )
            }
            Err(e) => {
                // One request may have tripped something unexpected: retry each alone so
                // that it cannot take the rest of the batch down with it.
                tracing::warn!(error = %e, size = jobs.len(), "batch failed; retrying its sends one by one");
                let mut outcomes = Vec::with_capacity(jobs.len());
                let mut published = Vec::new();
                for r in &requests {
                    match self.commit(&[*r]).await {
                        Ok((mut o, mut p)) => {
                            outcomes.append(&mut o);
                            published.append(&mut p);
                        }
                        Err(e) => outcomes.push(Err(ApiError::from(e))),
                    }
                }
                (outcomes, published)
            }
        };
        drop(requests);
        self.finish(jobs, outcomes, published);
    }

    fn finish(&self, jobs: Vec<Job>, outcomes: Outcomes, published: Vec<Published>) {
        // Deliver before replying, so that a sender's own other sessions see the message
        // no later than the sender sees its ack.
        for p in &published {
            self.hub
                .publish(&p.user, p.seq, || event_frame(p.kind, p.seq, &p.fields));
        }
        for (job, outcome) in jobs.into_iter().zip(outcomes) {
            if outcome.is_ok() {
                self.metrics
                    .send_commit_seconds
                    .observe(job.queued_at.elapsed().as_secs_f64());
            }
            let _ = job.reply.send(outcome);
        }
    }

    /// Commits `requests` in one transaction. Per-request refusals (not a member, no such
    /// conversation) are outcomes, not errors: they do not abort the others.
    async fn commit(
        &self,
        requests: &[&SendRequest],
    ) -> Result<(Outcomes, Vec<Published>), DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // PostgreSQL keeps microseconds; truncate so a live frame equals its replay.
        let now: DateTime<Utc> = Utc::now().trunc_subsecs(6);

        // 1. Recipients named by id may never have connected: give them a stream.
        let new_users: BTreeSet<&str> = requests
            .iter()
            .filter_map(|r| match &r.target {
                Target::User(u) => Some(u.as_str()),
                Target::Conversation(_) => None,
            })
            .chain(requests.iter().map(|r| r.sender.as_str()))
            .collect();
        let new_users: Vec<&str> = new_users.into_iter().collect();
        let stmt = tx
            .prepare_cached(
                "INSERT INTO users (id) SELECT u FROM unnest($1::text[]) AS u ORDER BY u
                 ON CONFLICT (id) DO NOTHING",
            )
            .await?;
        tx.execute(&stmt, &[&new_users]).await?;

        // 2. Direct conversations, found or created (keys in order, like every lock here).
        let direct_key = |r: &SendRequest| match &r.target {
            Target::User(u) => {
                let (a, b) = if r.sender <= *u {
                    (r.sender.as_str(), u.as_str())
                } else {
                    (u.as_str(), r.sender.as_str())
                };
                Some(format!("{a}\n{b}"))
            }
            Target::Conversation(_) => None,
        };
        let keys: BTreeSet<String> = requests.iter().filter_map(|r| direct_key(r)).collect();
        let keys: Vec<String> = keys.into_iter().collect();
        let mut created: BTreeMap<String, Vec<String>> = BTreeMap::new(); // id -> members
        let mut id_of_key: HashMap<String, String> = HashMap::new();
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
                let id: String = row.get(0);
                let key: String = row.get(1);
                let (a, b) = key.split_once('\n').expect("direct keys hold two ids");
                let mut members = vec![a.to_string()];
                if a != b {
                    members.push(b.to_string());
                }
                created.insert(id, members);
            }
            if !created.is_empty() {
                let (cs, us): (Vec<&str>, Vec<&str>) = created
                    .iter()
                    .flat_map(|(c, ms)| ms.iter().map(move |m| (c.as_str(), m.as_str())))
                    .unzip();
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO members (conversation_id, user_id)
                         SELECT * FROM unnest($1::text[], $2::text[])",
                    )
                    .await?;
                tx.execute(&stmt, &[&cs, &us]).await?;
            }
            let stmt = tx
                .prepare_cached(
                    "SELECT id, direct_key FROM conversations WHERE direct_key = ANY($1)",
                )
                .await?;
            for row in tx.query(&stmt, &[&keys]).await? {
                id_of_key.insert(row.get(1), row.get(0));
            }
        }
        let conversation_of = |r: &SendRequest| -> String {
            match &r.target {
                Target::Conversation(c) => c.as_str().to_string(),
                Target::User(_) => id_of_key[&direct_key(r).expect("a user target")].clone(),
            }
        };
        let targets: Vec<String> = requests.iter().map(|r| conversation_of(r)).collect();

        // 3. Lock the conversations, then read their members.
        let conv_ids: Vec<&str> = targets
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let stmt = tx
            .prepare_cached(
                "SELECT id, last_cseq FROM conversations WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
            )
            .await?;
        let mut last_cseq: HashMap<String, i64> = tx
            .query(&stmt, &[&conv_ids])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let stmt = tx
            .prepare_cached(
                "SELECT conversation_id, user_id FROM members
                 WHERE conversation_id = ANY($1) ORDER BY conversation_id, user_id",
            )
            .await?;
        let mut members: HashMap<String, Vec<String>> = HashMap::new();
        for row in tx.query(&stmt, &[&conv_ids]).await? {
            members.entry(row.get(0)).or_default().push(row.get(1));
        }

        // 4. Lock every member's stream counter, in id order.
        let all_members: Vec<&str> = members
            .values()
            .flatten()
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let stmt = tx
            .prepare_cached(
                "SELECT id, head, name FROM users WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
            )
            .await?;
        let mut heads: HashMap<String, i64> = HashMap::new();
        let mut names: HashMap<String, Option<String>> = HashMap::new();
        for row in tx.query(&stmt, &[&all_members]).await? {
            heads.insert(row.get(0), row.get(1));
            names.insert(row.get(0), row.get(2));
        }

        // 5. Idempotency: (sender, client_msg_id) already stored returns the first message.
        // Checked under the sender's lock, so a concurrent retry cannot slip past it.
        let (senders, cmids): (Vec<&str>, Vec<&str>) = requests
            .iter()
            .map(|r| (r.sender.as_str(), r.client_msg_id.as_str()))
            .unzip();
        let stmt = tx
            .prepare_cached(
                "SELECT m.id, m.conversation_id, m.cseq, m.sender_id, u.name, m.body,
                        m.client_msg_id, m.created_at
                 FROM unnest($1::text[], $2::text[]) AS k(s, c)
                 JOIN messages m ON m.sender_id = k.s AND m.client_msg_id = k.c
                 JOIN users u ON u.id = m.sender_id",
            )
            .await?;
        let mut stored: HashMap<(String, String), Message> = HashMap::new();
        for row in tx.query(&stmt, &[&senders, &cmids]).await? {
            let m = Message::from_row(&row, 0);
            stored.insert((m.sender.clone(), m.client_msg_id.clone()), m);
        }

        // 6. Allocate cseq and seq in memory, in request order.
        let mut published: Vec<Published> = Vec::new();
        let mut event_rows = EventRows::default();
        let mut alloc_seq = |user: &str| -> i64 {
            let h = heads.get_mut(user).expect("every member's row is locked");
            *h += 1;
            *h
        };
        for (id, ms) in &created {
            let conversation = json!({"conversation": {
                "id": id, "kind": "direct", "name": Value::Null, "members": ms,
            }});
            let fields: Arc<str> = object_fields(&conversation).into();
            for m in ms {
                let seq = alloc_seq(m);
                event_rows.push(
                    m,
                    seq,
                    EventKind::Conversation,
                    None,
                    Some(conversation.clone()),
                );
                published.push(Published {
                    user: m.clone(),
                    seq,
                    kind: EventKind::Conversation,
                    fields: fields.clone(),
                });
            }
        }
        let mut outcomes: Vec<Result<Message, ApiError>> = Vec::with_capacity(requests.len());
        let mut fresh: Vec<(usize, Vec<usize>)> = Vec::new(); // outcome index, event row indexes
        for (r, conv) in requests.iter().zip(&targets) {
            let key = (
                r.sender.as_str().to_string(),
                r.client_msg_id.as_str().to_string(),
            );
            if let Some(m) = stored.get(&key) {
                outcomes.push(Ok(m.clone()));
                continue;
            }
            let cid = ConversationId::parse(conv).expect("ids from the database are valid");
            let Some(cseq) = last_cseq.get_mut(conv) else {
                outcomes.push(Err(store::no_such_conversation(&cid)));
                continue;
            };
            let ms = members.get(conv).map(Vec::as_slice).unwrap_or_default();
            if ms
                .binary_search_by(|m| m.as_str().cmp(r.sender.as_str()))
                .is_err()
            {
                outcomes.push(Err(store::not_a_member(&cid)));
                continue;
            }
            *cseq += 1;
            let message = Message {
                id: 0, // assigned by the insert below
                conversation: conv.clone(),
                cseq: *cseq,
                sender: r.sender.as_str().to_string(),
                sender_name: names.get(r.sender.as_str()).cloned().flatten(),
                body: r.body.as_str().to_string(),
                client_msg_id: r.client_msg_id.as_str().to_string(),
                created_at: now,
            };
            let mut rows = Vec::with_capacity(ms.len());
            for m in ms {
                let seq = alloc_seq(m);
                rows.push(event_rows.len());
                event_rows.push(m, seq, EventKind::Message, None, None);
            }
            fresh.push((outcomes.len(), rows));
            stored.insert(key, message.clone()); // a duplicate later in this batch reuses it
            outcomes.push(Ok(message));
        }

        // 7. Write: messages first (their ids go into the events), then the rest together.
        if !fresh.is_empty() {
            let msgs: Vec<&Message> = fresh
                .iter()
                .map(|(i, _)| outcomes[*i].as_ref().expect("fresh outcomes are messages"))
                .collect();
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO messages (conversation_id, cseq, sender_id, body, client_msg_id, created_at)
                     SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
                     RETURNING id",
                )
                .await?;
            let rows = tx
                .query(
                    &stmt,
                    &[
                        &msgs
                            .iter()
                            .map(|m| m.conversation.as_str())
                            .collect::<Vec<_>>(),
                        &msgs.iter().map(|m| m.cseq).collect::<Vec<_>>(),
                        &msgs.iter().map(|m| m.sender.as_str()).collect::<Vec<_>>(),
                        &msgs.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
                        &msgs
                            .iter()
                            .map(|m| m.client_msg_id.as_str())
                            .collect::<Vec<_>>(),
                        &msgs.iter().map(|m| m.created_at).collect::<Vec<_>>(),
                    ],
                )
                .await?;
            // INSERT … SELECT FROM unnest … RETURNING yields rows in input order.
            for ((i, event_idx), row) in fresh.iter().zip(rows) {
                let id: i64 = row.get(0);
                let m = outcomes[*i].as_mut().expect("fresh outcomes are messages");
                m.id = id;
                let fields: Arc<str> = object_fields(&json!({"message": m.to_json()})).into();
                for &e in event_idx {
                    event_rows.message_ids[e] = Some(id);
                    published.push(Published {
                        user: event_rows.users[e].clone(),
                        seq: event_rows.seqs[e],
                        kind: EventKind::Message,
                        fields: fields.clone(),
                    });
                }
            }
        }
        let insert_events = tx
            .prepare_cached(
                "INSERT INTO event_queue (user_id, seq, kind, message_id, payload)
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::jsonb[])",
            )
            .await?;
        let update_convs = tx
            .prepare_cached(
                "UPDATE conversations c SET last_cseq = v.n
                 FROM unnest($1::text[], $2::int8[]) AS v(id, n) WHERE c.id = v.id AND c.last_cseq <> v.n",
            )
            .await?;
        let update_heads = tx
            .prepare_cached(
                "UPDATE users u SET head = v.h
                 FROM unnest($1::text[], $2::int8[]) AS v(id, h) WHERE u.id = v.id AND u.head <> v.h",
            )
            .await?;
        let (conv_ids, cseqs): (Vec<&str>, Vec<i64>) =
            last_cseq.iter().map(|(k, v)| (k.as_str(), *v)).unzip();
        let (user_ids, head_vals): (Vec<&str>, Vec<i64>) =
            heads.iter().map(|(k, v)| (k.as_str(), *v)).unzip();
        let kinds: Vec<&str> = event_rows.kinds.iter().map(|k| k.as_str()).collect();
        let event_params: [&(dyn ToSql + Sync); 5] = [
            &event_rows.users,
            &event_rows.seqs,
            &kinds,
            &event_rows.message_ids,
            &event_rows.payloads,
        ];
        let conv_params: [&(dyn ToSql + Sync); 2] = [&conv_ids, &cseqs];
        let head_params: [&(dyn ToSql + Sync); 2] = [&user_ids, &head_vals];
        // Pipelined: three statements, one round trip.
        tokio::try_join!(
            tx.execute(&insert_events, &event_params),
            tx.execute(&update_convs, &conv_params),
            tx.execute(&update_heads, &head_params),
        )?;
        tx.commit().await?;
        self.metrics.messages_stored.inc_by(fresh.len() as u64);
        Ok((outcomes, published))
    }
}

/// The columns of the `event_queue` rows a batch inserts, as arrays for `unnest`.
#[derive(Default)]
struct EventRows {
    users: Vec<String>,
    seqs: Vec<i64>,
    kinds: Vec<EventKind>,
    message_ids: Vec<Option<i64>>,
    payloads: Vec<Option<Value>>,
}

impl EventRows {
    fn push(
        &mut self,
        user: &str,
        seq: i64,
        kind: EventKind,
        message: Option<i64>,
        payload: Option<Value>,
    ) {
        self.users.push(user.to_string());
        self.seqs.push(seq);
        self.kinds.push(kind);
        self.message_ids.push(message);
        self.payloads.push(payload);
    }

    fn len(&self) -> usize {
        self.seqs.len()
    }
}
