//! The write batcher: every write that puts events in streams (sends, group changes, read
//! markers) goes through here, is committed with the others queued beside it in one
//! transaction ([`batch`]), and is acknowledged only after that commit. What each kind of
//! write is to the writer (its arrays, its outcome, its retry advice) is [`command`].
//!
//! Why batch: a commit costs a disk flush (about 200 µs here), and with cluster mode each
//! committing transaction that notifies takes an instance-wide lock. So `writers` tasks
//! each take whatever is queued (up to `write_batch_max`, never waiting for more) and
//! commit it at once: under light load a batch is one send and nothing waits; under heavy
//! load the batches grow and the cost per send falls.
//!
//! How `seq` and `cseq` stay gap-free and in commit order: each user's stream has a
//! counter row (`users.head`) and each conversation one (`last_cseq`). A batch locks the
//! rows it will bump, in one global order (see [`batch`]), bumps them in memory, inserts
//! and writes them back. A later seq for a user can only commit after the earlier one.

pub(crate) mod batch;
mod command;

pub(crate) use command::{Command, Outcome};

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::hub::Hub;
use crate::db::Database;
use crate::foundation::config::Config;
use crate::foundation::error::{ApiError, Code};
use crate::foundation::frames::event_frame;
use crate::foundation::metrics::Metrics;
use crate::foundation::protocol::WorkerId;
use crate::read::cache::ConversationCache;

/// Where committed work goes: the hub (delivery), the cache, the metrics.
pub(crate) struct Outputs {
    pub(crate) hub: Arc<Hub>,
    pub(crate) cache: Arc<ConversationCache>,
    pub(crate) metrics: Arc<Metrics>,
}

struct Job {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, ApiError>>,
    queued_at: Instant,
}

/// The handle sessions and the HTTP API write through. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
    batchers: usize,
}

impl Writer {
    /// Starts `config.writers` batching tasks on `tracker`. When `stop` is cancelled they
    /// refuse new commands, commit what is queued, and end.
    pub(crate) fn spawn(
        db: Database,
        outputs: Outputs,
        config: &Config,
        worker: &WorkerId,
        stop: CancellationToken,
        tracker: &TaskTracker,
    ) -> Writer {
        let Outputs {
            hub,
            cache,
            metrics,
        } = outputs;
        let (tx, rx) = mpsc::channel(config.write_queue);
        let rx = Arc::new(Mutex::new(rx));
        let batchers = batchers(config.writers, &db);
        if batchers < config.writers {
            tracing::info!(
                writers = config.writers,
                batchers,
                "fewer batchers than `writers`: one pooled connection stays for reads"
            );
        }
        // One resync task for all batchers: a burst of batches whose outcome is unknown
        // (an outage) asks for it many times, and it runs once per burst.
        let resync = Arc::new(tokio::sync::Notify::new());
        tracker.spawn(resync_after_unknown_outcomes(
            db.clone(),
            hub.clone(),
            cache.clone(),
            resync.clone(),
            stop.clone(),
        ));
        for _ in 0..batchers {
            let batcher = Batcher {
                db: db.clone(),
                hub: hub.clone(),
                cache: cache.clone(),
                metrics: metrics.clone(),
                resync: resync.clone(),
                batch_max: config.write_batch_max,
                max_group_members: config.max_group_members,
                worker: worker.clone(),
            };
            let rx = rx.clone();
            let stop = stop.clone();
            tracker.spawn(async move { batcher.run(rx, stop).await });
        }
        Writer {
            queue: tx,
            batchers,
        }
    }

    /// The batchers committing concurrently at most (see [`batchers`]).
    pub fn batchers(&self) -> usize {
        self.batchers
    }

    /// Commits one command; returns its outcome once committed. A failure stores nothing.
    pub(crate) async fn run(&self, command: Command) -> Result<Outcome, ApiError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            command,
            reply,
            queued_at: Instant::now(),
        };
        // Waiting here is the back-pressure: a full queue slows writers instead of growing.
        self.queue.send(job).await.map_err(|_| {
            ApiError::new(
                Code::Unavailable,
                "the server is shutting down; nothing was stored: retry (sends with the same client_msg_id)",
            )
        })?;
        rx.await.map_err(|_| ApiError::internal())?
    }
}

/// How many batchers a worker runs: `writers`, but never so many that they could hold
/// every pooled connection: each holds one while it commits, and a batch that waits on a
/// lock holds it that long, so with as many batchers as connections, reads (`history`,
/// `resume`, a connecting socket) would wait for the writes. One connection's worth of
/// reads is always left, except in a pool of one, which writes and reads take in turn
/// (its waiters are served first come, first served). On the listener's shared
/// connection, queries are pipelined, so batchers never keep reads out.
fn batchers(writers: usize, db: &Database) -> usize {
    match &db.source {
        crate::db::Source::Pool(pool) => {
            writers.min(pool.status().max_size.saturating_sub(1)).max(1)
        }
        crate::db::Source::Shared(_) => writers,
    }
}

struct Batcher {
    db: Database,
    hub: Arc<Hub>,
    cache: Arc<ConversationCache>,
    metrics: Arc<Metrics>,
    /// Wakes [`resync_after_unknown_outcomes`].
    resync: Arc<tokio::sync::Notify>,
    batch_max: usize,
    max_group_members: usize,
    /// Named in notifications, so this worker can skip its own.
    worker: WorkerId,
}

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
                        // Shutdown: refuse new commands, commit what is already queued.
                        rx.close();
                        rx.recv_many(&mut batch, self.batch_max).await
                    }
                }
            };
            if taken == 0 {
                return;
            }
            // A bug that panics in one batch must not take the batcher with it: the batch's
            // callers see their reply channel closed (`internal`), the next batch goes on.
            let mut jobs = std::mem::take(&mut batch);
            // Two sends with one (sender, client_msg_id) never share a batch: the later is
            // a retry of the earlier and must see it stored, so it waits for the next.
            while !jobs.is_empty() {
                let repeats = split_off_repeats(&mut jobs);
                if AssertUnwindSafe(self.commit_jobs(jobs))
                    .catch_unwind()
                    .await
                    .is_err()
                {
                    tracing::error!("a write batch panicked; its requests were answered internal");
                }
                jobs = repeats;
            }
        }
    }

    async fn commit(&self, commands: &[&Command]) -> Result<batch::Committed, batch::Failed> {
        batch::commit(&self.db, commands, self.max_group_members, &self.worker).await
    }

    async fn commit_jobs(&self, jobs: Vec<Job>) {
        let commands: Vec<&Command> = jobs.iter().map(|j| &j.command).collect();
        self.metrics.batch_size.observe(jobs.len() as f64);
        let mut attempt = self.commit(&commands).await;
        // A deadlock should not happen with ordered locks, but two sends of one key may
        // race into different conversations (a unique violation). Retrying is correct and
        // cheap: the retry sees what the other transaction committed.
        for _ in 0..3 {
            match &attempt {
                Err(f) if f.error.is_retryable() => {
                    tracing::warn!(error = %f.error, "batch met a concurrent one; retrying");
                    attempt = self.commit(&commands).await;
                }
                // Nothing was sent: the pool lent a connection that had died meanwhile
                // (another may be alive: the dead one is dropped), or lent none in time.
                Err(f) if !f.sent && f.error.is_unavailable() => {
                    tracing::warn!(error = %f.error, "batch got no usable connection; retrying");
                    attempt = self.commit(&commands).await;
                }
                _ => break,
            }
        }
        let committed = match attempt {
            Ok(done) => vec![done],
            Err(f) if f.error.is_unavailable() || jobs.len() == 1 => {
                vec![batch::Committed::failed(&commands, f)]
            }
            Err(f) => {
                // One command may have tripped something unexpected: retry each alone so
                // that it cannot take the rest of the batch down with it.
                tracing::warn!(error = %f.error, size = jobs.len(), "batch failed; retrying its commands one by one");
                let mut each = Vec::with_capacity(jobs.len());
                for c in &commands {
                    each.push(
                        self.commit(&[*c])
                            .await
                            .unwrap_or_else(|f| batch::Committed::failed(&[*c], f)),
                    );
                }
                each
            }
        };
        drop(commands);
        self.finish(jobs, committed);
    }

    /// After commit: refresh the cache, deliver, then acknowledge, in that order, so that
    /// whoever gets an ack can already read and see what it acknowledged.
    fn finish(&self, jobs: Vec<Job>, committed: Vec<batch::Committed>) {
        if committed.iter().any(|c| c.outcome_unknown) {
            // The batch may have committed, and its notification is one this worker skips
            // as its own: bring this worker's sessions up to the stored heads by itself.
            self.resync.notify_one();
        }
        let mut outcomes = Vec::with_capacity(jobs.len());
        for c in committed {
            self.metrics.messages_stored.inc_by(c.stored as u64);
            for snapshot in c.conversations {
                self.cache.apply(snapshot);
            }
            for p in &c.events {
                self.hub.publish(&p.user, p.seq, || {
                    event_frame(p.kind.as_str(), p.seq, &p.fields)
                });
            }
            outcomes.extend(c.outcomes);
        }
        for (job, outcome) in jobs.into_iter().zip(outcomes) {
            if let (Ok(Outcome::Message(_)), Command::Send { .. }) = (&outcome, &job.command) {
                self.metrics
                    .send_commit_seconds
                    .observe(job.queued_at.elapsed().as_secs_f64());
            }
            if outcome.is_ok() && job.command.rewrites().is_some() {
                self.metrics.message_changes.inc();
            }
            let _ = job.reply.send(outcome);
        }
    }
}

/// After batches whose outcome is unknown: once the database answers again, forget the
/// cache (it may lack those batches' changes) and move every local user's feed to the head
/// stored, so that sessions read from the table whatever the batches committed. Requests
/// that come while it runs are served by one more pass after it (`Notify` keeps a permit).
async fn resync_after_unknown_outcomes(
    db: Database,
    hub: Arc<Hub>,
    cache: Arc<ConversationCache>,
    wake: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
        }
        // Until it succeeds: the listener also catches up once it reconnects, but it skips
        // this worker's own notifications, so only this pass covers them.
        loop {
            match crate::read::store::heads(&db, &hub.local_users()).await {
                Ok(heads) => {
                    cache.clear();
                    for (user, head) in heads {
                        hub.advance(&user, head);
                    }
                    break;
                }
                Err(_) => tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                },
            }
        }
    }
}

/// Moves out of `jobs` every send whose (sender, client_msg_id) an earlier send of `jobs`
/// already has, keeping the order of both.
fn split_off_repeats(jobs: &mut Vec<Job>) -> Vec<Job> {
    let mut seen = std::collections::HashSet::new();
    let (first, repeats): (Vec<Job>, Vec<Job>) =
        std::mem::take(jobs)
            .into_iter()
            .partition(|j| match &j.command {
                Command::Send {
                    sender,
                    client_msg_id,
                    ..
                } => seen.insert((sender.clone(), client_msg_id.clone())),
                _ => true,
            });
    *jobs = first;
    repeats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::foundation::protocol::{Body, ClientMsgId, Target, UserId};

    fn send(sender: &str, key: &str) -> Job {
        Job {
            command: Command::Send {
                sender: UserId::parse(sender).unwrap(),
                target: Target::User(UserId::parse("bob").unwrap()),
                body: Body::parse("x".into(), 10).unwrap(),
                client_msg_id: ClientMsgId::parse(key).unwrap(),
                reply_to: None,
                mentions: Vec::new(),
            },
            reply: oneshot::channel().0,
            queued_at: Instant::now(),
        }
    }

    fn keys(jobs: &[Job]) -> Vec<String> {
        jobs.iter()
            .map(|j| match &j.command {
                Command::Send {
                    sender,
                    client_msg_id,
                    ..
                } => format!("{sender}/{}", client_msg_id.as_str()),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn a_repeated_key_waits_for_the_next_batch_in_order() {
        let mut jobs = vec![
            send("a", "1"),
            send("a", "2"),
            send("b", "1"),
            send("a", "1"),
            send("a", "1"),
        ];
        let later = split_off_repeats(&mut jobs);
        assert_eq!(keys(&jobs), ["a/1", "a/2", "b/1"]);
        assert_eq!(keys(&later), ["a/1", "a/1"]);
        let mut later = later;
        let last = split_off_repeats(&mut later);
        assert_eq!((later.len(), last.len()), (1, 1));
    }
}
