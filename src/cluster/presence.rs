//! Presence: who is online, across every worker, and which sessions want to hear when
//! that changes.
//!
//! A user is online while any session of theirs is open on any worker. When the last
//! session on a worker closes, that worker keeps the user online for a grace period
//! (`presence_grace_ms`), so a reconnect, to this worker or another, does not flap.
//!
//! Across workers: each worker records the users it holds in the `presence` table and
//! announces changes with a notification; the others keep a map of who is online where.
//! Each worker heartbeats in `workers`; one silent for 8 s is taken for dead, its rows
//! are deleted, and its users go offline everywhere (within about 10 s).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::cluster::hub::SessionId;
use crate::cluster::notify::{Notice, CHANNEL};
use crate::db::{queries, Database};
use crate::foundation::error::DbError;
use crate::foundation::frames::{self, PresenceEntry, PresenceStatus};
use crate::foundation::protocol::{rfc3339, UserId, WorkerId};

/// How often a worker heartbeats and looks for dead workers.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A worker whose heartbeat is older than this is dead.
const DEAD_AFTER_SECS: f64 = 8.0;

pub(crate) struct Presence {
    /// A std mutex: every critical section is a few map operations, never an await.
    state: Mutex<State>,
    grace: Duration,
    db: Database,
    worker: WorkerId,
    /// Wakes the flusher when `state.pending` has changes to record.
    flush: Notify,
    /// Other live workers, as of the last heartbeat: ephemeral events are announced to
    /// them only when there are any.
    peers: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct State {
    /// Users with sessions here, or within their grace period here.
    local: HashMap<String, Local>,
    /// user -> the other workers holding sessions of theirs.
    remote: HashMap<String, HashSet<WorkerId>>,
    /// watched user -> the sessions watching, with their ephemeral channels.
    watchers: HashMap<String, HashMap<SessionId, mpsc::Sender<Utf8Bytes>>>,
    /// Changes of this worker's own rows not yet written: user -> online here, or the
    /// time they went offline here.
    pending: HashMap<String, Option<DateTime<Utc>>>,
    /// Users gone offline everywhere whose `last_seen` is not written yet, with its time.
    last_seen: HashMap<String, DateTime<Utc>>,
    /// Users of a worker that shut down cleanly, still counted online for the grace
    /// period while their clients reconnect elsewhere (value: which grace timer owns it).
    lingering: HashMap<String, u64>,
    next_linger: u64,
}

struct Local {
    sessions: usize,
    /// Bumped by every close and open, so a stale grace timer knows it is stale.
    generation: u64,
}

impl State {
    fn online(&self, user: &str) -> bool {
        self.local.contains_key(user)
            || self.remote.get(user).is_some_and(|w| !w.is_empty())
            || self.lingering.contains_key(user)
    }

    fn announce(&self, user: &str, status: PresenceStatus, last_seen: Option<DateTime<Utc>>) {
        let Some(watchers) = self.watchers.get(user) else {
            return;
        };
        let frame: Utf8Bytes = frames::encode(&frames::Presence {
            user,
            status,
            last_seen: last_seen.map(rfc3339),
        })
        .into();
        for tx in watchers.values() {
            // Full: the frame is dropped for that session (ephemeral by definition).
            let _ = tx.try_send(frame.clone());
        }
    }
}

impl Presence {
    pub(crate) fn new(db: Database, grace: Duration, worker: &WorkerId) -> Arc<Presence> {
        Arc::new(Presence {
            state: Mutex::new(State::default()),
            grace,
            db,
            worker: worker.clone(),
            flush: Notify::new(),
            peers: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// A session of `user` opened here.
    pub(crate) fn opened(&self, user: &UserId) {
        let user = user.as_str();
        let mut state = self.state.lock().expect("presence lock");
        if let Some(l) = state.local.get_mut(user) {
            // Already here, or back within the grace period: nothing changes.
            l.sessions += 1;
            l.generation += 1;
            return;
        }
        let was_online = state.online(user);
        state.local.insert(
            user.to_string(),
            Local {
                sessions: 1,
                generation: 0,
            },
        );
        state.pending.insert(user.to_string(), None);
        if !was_online {
            state.announce(user, PresenceStatus::Online, Some(Utc::now()));
        }
        drop(state);
        self.flush.notify_one();
    }

    /// A session of `user` closed here. Starts the grace timer when it was the last.
    pub(crate) fn closed(self: &Arc<Self>, user: &UserId) {
        let user = user.as_str();
        let generation = {
            let mut state = self.state.lock().expect("presence lock");
            let Some(l) = state.local.get_mut(user) else {
                return;
            };
            l.sessions = l.sessions.saturating_sub(1);
            l.generation += 1;
            if l.sessions > 0 {
                return;
            }
            l.generation
        };
        let this = self.clone();
        let user = user.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(this.grace).await;
            this.expire(&user, generation).await;
        });
    }

    /// The grace period of `user` here ended.
    async fn expire(&self, user: &str, generation: u64) {
        // Whole seconds: a storm of closes then shares a few timestamps, so the flusher
        // stores `last_seen` in a few statements, not one per user.
        let now = Utc::now().trunc_subsecs(0);
        {
            let mut state = self.state.lock().expect("presence lock");
            match state.local.get(user) {
                Some(l) if l.sessions == 0 && l.generation == generation => {}
                _ => return, // came back, or a newer timer owns it
            }
            state.local.remove(user);
            state.pending.insert(user.to_string(), Some(now));
            if !state.online(user) {
                state.announce(user, PresenceStatus::Offline, Some(now));
                state.last_seen.insert(user.to_string(), now);
            }
        }
        // The flusher records it with the rest, in one transaction on one connection:
        // 1,500 sockets closing at once cost a few statements, not 1,500 pool checkouts.
        self.flush.notify_one();
    }

    /// Other live workers at the last heartbeat (at most 2 s old).
    pub(crate) fn peers(&self) -> usize {
        self.peers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Applies another worker's presence notice.
    pub(crate) fn on_notice(self: &Arc<Self>, notice: Notice) {
        let mut state = self.state.lock().expect("presence lock");
        match notice {
            Notice::Presence { w, on, off } => {
                for user in on {
                    let was = state.online(&user);
                    state
                        .remote
                        .entry(user.clone())
                        .or_default()
                        .insert(w.clone());
                    if !was {
                        state.announce(&user, PresenceStatus::Online, Some(Utc::now()));
                    }
                }
                for (user, at) in off {
                    Self::remove_remote(&mut state, &user, &w);
                    if !state.online(&user) {
                        let at = DateTime::parse_from_rfc3339(&at)
                            .map(|t| t.with_timezone(&Utc))
                            .unwrap_or_else(|_| Utc::now());
                        state.announce(&user, PresenceStatus::Offline, Some(at));
                    }
                }
            }
            // A pointer: the listener reloads presence from the table instead.
            Notice::Gone { all: true, .. } => {}
            Notice::Gone { dead, graceful, .. } => {
                let dead: HashSet<WorkerId> = dead.into_iter().collect();
                let offline = Self::drop_workers(&mut state, &dead, !graceful);
                if graceful && !offline.is_empty() {
                    // A worker that shut down cleanly closed its sockets with 1001, and its
                    // clients are reconnecting elsewhere: they stay online for the grace
                    // period before watchers are told they left.
                    state.next_linger += 1;
                    let generation = state.next_linger;
                    for u in &offline {
                        state.lingering.insert(u.clone(), generation);
                    }
                    let this = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(this.grace).await;
                        let mut state = this.state.lock().expect("presence lock");
                        let now = Utc::now();
                        for user in offline {
                            if state.lingering.get(&user) == Some(&generation) {
                                state.lingering.remove(&user);
                                if !state.online(&user) {
                                    state.announce(&user, PresenceStatus::Offline, Some(now));
                                }
                            }
                        }
                    });
                }
            }
            Notice::Events { .. } | Notice::Typing { .. } => {}
        }
    }

    fn remove_remote(state: &mut State, user: &str, worker: &WorkerId) {
        if let Some(ws) = state.remote.get_mut(user) {
            ws.remove(worker);
            if ws.is_empty() {
                state.remote.remove(user);
            }
        }
    }

    /// Forgets dead workers; returns their users who are online nowhere else now, having
    /// told watchers so if `announce`.
    fn drop_workers(state: &mut State, dead: &HashSet<WorkerId>, announce: bool) -> Vec<String> {
        let affected: Vec<String> = state
            .remote
            .iter()
            .filter(|(_, ws)| ws.iter().any(|w| dead.contains(w)))
            .map(|(u, _)| u.clone())
            .collect();
        let now = Utc::now();
        let mut offline = Vec::new();
        for user in affected {
            for w in dead {
                Self::remove_remote(state, &user, w);
            }
            if !state.online(&user) {
                if announce {
                    state.announce(&user, PresenceStatus::Offline, Some(now));
                }
                offline.push(user);
            }
        }
        offline
    }

    /// Rebuilds the view of the other workers from the `presence` table (at start, and
    /// after the listener reconnects: notices may have been missed), announcing changes.
    pub(crate) async fn reload(&self) -> Result<(), DbError> {
        let client = self.db.client().await?;
        let stmt = client.prepare_cached(queries::REMOTE_PRESENCE).await?;
        let mut remote: HashMap<String, HashSet<WorkerId>> = HashMap::new();
        for row in client.query(&stmt, &[&self.worker.as_str()]).await? {
            let worker = WorkerId::new(row.get(1));
            remote.entry(row.get(0)).or_default().insert(worker);
        }
        let mut state = self.state.lock().expect("presence lock");
        let before: HashSet<String> = state.remote.keys().cloned().collect();
        let old = std::mem::replace(&mut state.remote, remote);
        let now = Utc::now();
        for user in before.union(&state.remote.keys().cloned().collect()) {
            let was = state.local.contains_key(user) || old.contains_key(user);
            let is = state.online(user);
            if was != is {
                state.announce(user, PresenceStatus::of(is), Some(now));
            }
        }
        Ok(())
    }

    /// Records again every user this worker holds (after the listener reconnects: if the
    /// outage outlasted the heartbeat, the other workers reaped this one's rows).
    pub(crate) fn reassert(&self) {
        let mut state = self.state.lock().expect("presence lock");
        let users: Vec<String> = state
            .local
            .iter()
            .filter(|(_, l)| l.sessions > 0)
            .map(|(u, _)| u.clone())
            .collect();
        for u in users {
            state.pending.entry(u).or_insert(None);
        }
        drop(state);
        self.flush.notify_one();
    }

    /// Registers `session` as a watcher of `users` and returns their current presence.
    pub(crate) async fn subscribe(
        &self,
        session: SessionId,
        tx: &mpsc::Sender<Utf8Bytes>,
        users: &[UserId],
    ) -> Result<Vec<PresenceEntry>, DbError> {
        // Watch first, then read: a change in between is announced, not missed.
        {
            let mut state = self.state.lock().expect("presence lock");
            for u in users {
                state
                    .watchers
                    .entry(u.as_str().to_string())
                    .or_default()
                    .insert(session, tx.clone());
            }
        }
        let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
        let client = self.db.client().await?;
        let stmt = client.prepare_cached(queries::LAST_SEEN).await?;
        let last_seen: HashMap<String, Option<DateTime<Utc>>> = client
            .query(&stmt, &[&ids])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let state = self.state.lock().expect("presence lock");
        Ok(users
            .iter()
            .map(|u| {
                let online = state.online(u.as_str());
                PresenceEntry {
                    user: u.as_str().to_string(),
                    status: PresenceStatus::of(online),
                    last_seen: Some(last_seen.get(u.as_str()).copied().flatten().map(rfc3339)),
                }
            })
            .collect())
    }

    /// Removes `session` from the watchers of `users` (when it closes).
    pub(crate) fn unsubscribe(&self, session: SessionId, users: impl IntoIterator<Item = UserId>) {
        let mut state = self.state.lock().expect("presence lock");
        for u in users {
            if let Some(w) = state.watchers.get_mut(u.as_str()) {
                w.remove(&session);
                if w.is_empty() {
                    state.watchers.remove(u.as_str());
                }
            }
        }
    }

    /// Writes this worker's presence changes and announces them, coalescing whatever
    /// piled up meanwhile into one transaction; heartbeats and reaps dead workers every
    /// 2 s. Runs until `stop`, then removes this worker's rows.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.flush.notified() => {
                    if let Err(e) = self.write_pending().await {
                        tracing::warn!(error = %e, "recording presence failed; will retry");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        self.flush.notify_one();
                    }
                }
                _ = heartbeat.tick() => match self.heartbeat().await {
                    Ok(()) => {}
                    // The listener's connection is not up yet (or is reconnecting): the
                    // listener reports that itself.
                    Err(DbError::Down(_)) => {}
                    Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
                },
            }
        }
        if let Err(e) = self.leave().await {
            tracing::warn!(error = %e, "removing this worker's presence failed");
        }
    }

    async fn write_pending(&self) -> Result<(), DbError> {
        let (pending, last_seen) = {
            let mut state = self.state.lock().expect("presence lock");
            (
                std::mem::take(&mut state.pending),
                std::mem::take(&mut state.last_seen),
            )
        };
        if pending.is_empty() && last_seen.is_empty() {
            return Ok(());
        }
        let mut seen_at: HashMap<DateTime<Utc>, Vec<&str>> = HashMap::new();
        for (user, at) in &last_seen {
            seen_at.entry(*at).or_default().push(user);
        }
        let mut on = Vec::new();
        let mut off = Vec::new();
        for (user, gone) in &pending {
            match gone {
                None => on.push(user.clone()),
                Some(at) => off.push((user.clone(), rfc3339(*at))),
            }
        }
        let result = async {
            let tx = self.db.begin().await?;
            if !on.is_empty() {
                let stmt = tx.prepare_cached(queries::PRESENCE_ON).await?;
                tx.execute(&stmt, &[&on, &self.worker.as_str()]).await?;
            }
            if !off.is_empty() {
                let users: Vec<&str> = off.iter().map(|(u, _)| u.as_str()).collect();
                let stmt = tx.prepare_cached(queries::PRESENCE_OFF).await?;
                tx.execute(&stmt, &[&users, &self.worker.as_str()]).await?;
            }
            if !seen_at.is_empty() {
                let stmt = tx.prepare_cached(queries::STORE_LAST_SEEN).await?;
                for (at, users) in &seen_at {
                    tx.execute(&stmt, &[users, at]).await?;
                }
            }
            for payload in Notice::presence_payloads(&self.worker, on.clone(), off.clone()) {
                tx.execute(queries::NOTIFY, &[&CHANNEL, &payload]).await?;
            }
            tx.commit().await
        }
        .await;
        if result.is_err() {
            // Put back what was not written, unless newer changes replaced it.
            let mut state = self.state.lock().expect("presence lock");
            for (user, change) in pending {
                state.pending.entry(user).or_insert(change);
            }
            for (user, at) in last_seen {
                state.last_seen.entry(user).or_insert(at);
            }
        }
        result
    }

    /// Records that this worker lives; takes dead workers' users offline.
    async fn heartbeat(self: &Arc<Self>) -> Result<(), DbError> {
        let client = self.db.client().await?;
        let beat = client.prepare_cached(queries::HEARTBEAT).await?;
        let host = hostname();
        client
            .execute(
                &beat,
                &[&self.worker.as_str(), &host, &(std::process::id() as i32)],
            )
            .await?;
        let count = client.prepare_cached(queries::PEERS).await?;
        let peers: i64 = client
            .query_one(&count, &[&self.worker.as_str(), &DEAD_AFTER_SECS])
            .await?
            .get(0);
        self.peers
            .store(peers as usize, std::sync::atomic::Ordering::Relaxed);
        drop(client);
        let tx = self.db.begin().await?;
        let reap = tx.prepare_cached(queries::REAP_WORKERS).await?;
        let dead: Vec<WorkerId> = tx
            .query(&reap, &[&DEAD_AFTER_SECS])
            .await?
            .iter()
            .map(|r| WorkerId::new(r.get(0)))
            .collect();
        if dead.is_empty() {
            return tx.commit().await;
        }
        self.forget_workers(&tx, &dead, false).await?;
        tx.commit().await?;
        tracing::warn!(
            ?dead,
            "workers stopped heartbeating: their users are offline"
        );
        self.on_notice(Notice::Gone {
            w: self.worker.clone(),
            dead,
            graceful: false,
            all: false,
        });
        Ok(())
    }

    /// Deletes `workers`' presence rows, stores last_seen for users now online nowhere,
    /// and tells the other workers.
    async fn forget_workers(
        &self,
        tx: &crate::db::Tx,
        workers: &[WorkerId],
        graceful: bool,
    ) -> Result<(), DbError> {
        let stmt = tx.prepare_cached(queries::FORGET_WORKERS).await?;
        let ids: Vec<&str> = workers.iter().map(WorkerId::as_str).collect();
        tx.execute(&stmt, &[&ids]).await?;
        // Hundreds of dead workers (a crashed deployment's worth, say) would not fit in a
        // notification, and a NOTIFY that fails would fail the reap with it.
        let payload = Notice::gone_payload(&self.worker, workers, graceful);
        tx.execute(queries::NOTIFY, &[&CHANNEL, &payload]).await?;
        Ok(())
    }

    /// On shutdown: this worker's users leave with it (those online elsewhere stay).
    async fn leave(&self) -> Result<(), DbError> {
        let tx = self.db.begin().await?;
        let me = [self.worker.clone()];
        self.forget_workers(&tx, &me, true).await?;
        let stmt = tx.prepare_cached(queries::DELETE_WORKER).await?;
        tx.execute(&stmt, &[&self.worker.as_str()]).await?;
        tx.commit().await
    }
}

/// This machine's name, for worker ids and the `workers` table.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "pgchat".into())
}
