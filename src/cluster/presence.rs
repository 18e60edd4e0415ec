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
//!
//! A presence notice is believed only from a worker in the `workers` table (the
//! listener asks [`Presence::admit`] first), at most `presence_max_users_per_worker` users
//! per worker are kept, and a worker's users go when the worker leaves the table; a notice
//! that workers are gone is checked against the table before anyone is taken offline.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::cluster::hub::SessionId;
use crate::cluster::notify::{Notice, NoticeSeal, CHANNEL};
use crate::db::{queries, Database};
use crate::foundation::error::DbError;
use crate::foundation::frames::{self, PresenceEntry, PresenceStatus};
use crate::foundation::metrics::Metrics;
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
    /// Seals this worker's notices.
    seal: Arc<NoticeSeal>,
    /// Users kept online per other worker, at most (`presence_max_users_per_worker`).
    max_users_per_worker: usize,
    /// Set by the first heartbeat that made this worker's row: a later one that has to
    /// make it again means the others reaped this worker.
    beaten: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct State {
    /// Users with sessions here, or within their grace period here.
    local: HashMap<String, Local>,
    /// user -> the other workers holding sessions of theirs.
    remote: HashMap<String, HashSet<WorkerId>>,
    /// The other way round: each other worker's users (its size is the cap's measure).
    by_worker: HashMap<WorkerId, HashSet<String>>,
    /// The other workers in the `workers` table at the last heartbeat (or admitted since,
    /// after the table was asked): only their presence notices are believed.
    known: HashSet<WorkerId>,
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

/// What [`Presence::new`] is built from.
pub(crate) struct PresenceSettings {
    pub(crate) grace: Duration,
    pub(crate) max_users_per_worker: usize,
}

impl Presence {
    pub(crate) fn new(
        db: Database,
        settings: PresenceSettings,
        worker: &WorkerId,
        seal: Arc<NoticeSeal>,
        metrics: Arc<Metrics>,
    ) -> Arc<Presence> {
        Arc::new(Presence {
            state: Mutex::new(State::default()),
            grace: settings.grace,
            db,
            worker: worker.clone(),
            flush: Notify::new(),
            peers: std::sync::atomic::AtomicUsize::new(0),
            seal,
            max_users_per_worker: settings.max_users_per_worker,
            beaten: std::sync::atomic::AtomicBool::new(false),
            metrics,
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

    /// Whether notices from `worker` may be believed: it is in the `workers` table (as of
    /// the last heartbeat, or now, asked once for a worker not seen yet).
    pub(crate) async fn admit(&self, worker: &WorkerId) -> bool {
        if self
            .state
            .lock()
            .expect("presence lock")
            .known
            .contains(worker)
        {
            return true;
        }
        let found = match self.workers_in_table(std::slice::from_ref(worker)).await {
            Ok(found) => !found.is_empty(),
            Err(e) => {
                tracing::debug!(error = %e, "could not check a worker's notice against the table");
                false
            }
        };
        if found {
            let mut state = self.state.lock().expect("presence lock");
            state.known.insert(worker.clone());
        }
        found
    }

    /// Which of `workers` the `workers` table holds.
    async fn workers_in_table(&self, workers: &[WorkerId]) -> Result<HashSet<WorkerId>, DbError> {
        let ids: Vec<&str> = workers.iter().map(WorkerId::as_str).collect();
        let client = self.db.client().await?;
        let stmt = client.prepare_cached(queries::KNOWN_WORKERS).await?;
        Ok(client
            .query(&stmt, &[&ids])
            .await?
            .iter()
            .map(|r| WorkerId::new(r.get(0)))
            .collect())
    }

    /// Applies another worker's presence notice (from a worker [`Presence::admit`]
    /// admitted).
    pub(crate) fn on_presence(&self, w: WorkerId, on: Vec<String>, off: Vec<(String, String)>) {
        let mut state = self.state.lock().expect("presence lock");
        let mut over_cap = 0u64;
        for user in on {
            let held = state.by_worker.get(&w).map_or(0, HashSet::len);
            let already = state.by_worker.get(&w).is_some_and(|u| u.contains(&user));
            if !already && held >= self.max_users_per_worker {
                over_cap += 1;
                continue;
            }
            let was = state.online(&user);
            state
                .remote
                .entry(user.clone())
                .or_default()
                .insert(w.clone());
            state
                .by_worker
                .entry(w.clone())
                .or_default()
                .insert(user.clone());
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
        drop(state);
        if over_cap > 0 {
            self.metrics.notices_ignored.inc();
            tracing::warn!(
                worker = %w,
                users = over_cap,
                cap = self.max_users_per_worker,
                "a worker announced more users than presence_max_users_per_worker: not kept"
            );
        }
    }

    /// Another worker's notice that workers are gone: believed for those the `workers`
    /// table no longer holds (a live worker is never taken offline by a notice).
    pub(crate) async fn on_gone(self: &Arc<Self>, dead: Vec<WorkerId>, graceful: bool) {
        let still = match self.workers_in_table(&dead).await {
            Ok(still) => still,
            Err(e) => {
                // Unverified: the next heartbeat reconciles with the table instead.
                tracing::debug!(error = %e, "could not check a departure notice against the table");
                return;
            }
        };
        let (gone, alive): (Vec<WorkerId>, Vec<WorkerId>) =
            dead.into_iter().partition(|w| !still.contains(w));
        if !alive.is_empty() {
            self.metrics.notices_ignored.inc();
            tracing::warn!(
                ?alive,
                "a departure notice named workers still in the workers table: ignored for them"
            );
        }
        if !gone.is_empty() {
            self.workers_gone(gone.into_iter().collect(), graceful);
        }
    }

    /// Forgets `dead` workers and their users: at once (announcing the users online
    /// nowhere else as offline), or, for a worker that shut down cleanly, after the grace
    /// period while its clients reconnect elsewhere.
    fn workers_gone(self: &Arc<Self>, dead: HashSet<WorkerId>, graceful: bool) {
        let mut state = self.state.lock().expect("presence lock");
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

    fn remove_remote(state: &mut State, user: &str, worker: &WorkerId) {
        if let Some(ws) = state.remote.get_mut(user) {
            ws.remove(worker);
            if ws.is_empty() {
                state.remote.remove(user);
            }
        }
        if let Some(users) = state.by_worker.get_mut(worker) {
            users.remove(user);
            if users.is_empty() {
                state.by_worker.remove(worker);
            }
        }
    }

    /// Forgets dead workers; returns their users who are online nowhere else now, having
    /// told watchers so if `announce`.
    fn drop_workers(state: &mut State, dead: &HashSet<WorkerId>, announce: bool) -> Vec<String> {
        let now = Utc::now();
        let mut offline = Vec::new();
        for w in dead {
            state.known.remove(w);
            let Some(users) = state.by_worker.remove(w) else {
                continue;
            };
            for user in users {
                Self::remove_remote(state, &user, w);
                if !state.online(&user) {
                    if announce {
                        state.announce(&user, PresenceStatus::Offline, Some(now));
                    }
                    offline.push(user);
                }
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
        let mut by_worker: HashMap<WorkerId, HashSet<String>> = HashMap::new();
        for row in client.query(&stmt, &[&self.worker.as_str()]).await? {
            let worker = WorkerId::new(row.get(1));
            let user: String = row.get(0);
            let users = by_worker.entry(worker.clone()).or_default();
            if users.len() >= self.max_users_per_worker {
                continue;
            }
            users.insert(user.clone());
            remote.entry(user).or_default().insert(worker);
        }
        let mut state = self.state.lock().expect("presence lock");
        let before: HashSet<String> = state.remote.keys().cloned().collect();
        state.by_worker = by_worker;
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
        // The first heartbeat before any presence notice: the other workers believe only
        // notices from workers in the table.
        if let Err(e) = self.heartbeat().await {
            tracing::debug!(error = %e, "the first heartbeat failed; retrying every 2 s");
        }
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
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
            for payload in
                Notice::presence_payloads(&self.seal, &self.worker, on.clone(), off.clone())
            {
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

    /// Records that this worker lives; learns which other workers the table holds (only
    /// their notices are believed; the users of one that left it are forgotten); takes
    /// dead workers' users offline.
    async fn heartbeat(self: &Arc<Self>) -> Result<(), DbError> {
        let client = self.db.client().await?;
        let beat = client.prepare_cached(queries::HEARTBEAT).await?;
        let host = hostname();
        let made: bool = client
            .query_one(
                &beat,
                &[&self.worker.as_str(), &host, &(std::process::id() as i32)],
            )
            .await?
            .get(0);
        let first = !self.beaten.swap(true, std::sync::atomic::Ordering::AcqRel);
        if first && !made {
            // The row is a previous process's with this id (the same host and pid, as in a
            // container restarted within the reaping period): its users are not here.
            drop(client);
            return self.forget_previous_incarnation().await;
        }
        if made && !first {
            // The others took this worker for dead (it was silent too long) and deleted
            // its presence rows: record and announce its users again.
            tracing::warn!(
                "the other workers had taken this worker for dead: announcing its users again"
            );
            self.reassert();
        }
        let peers = client.prepare_cached(queries::PEERS).await?;
        let workers: Vec<(WorkerId, bool)> = client
            .query(&peers, &[&self.worker.as_str(), &DEAD_AFTER_SECS])
            .await?
            .iter()
            .map(|r| (WorkerId::new(r.get(0)), r.get(1)))
            .collect();
        let alive = workers.iter().filter(|(_, alive)| *alive).count();
        self.peers
            .store(alive, std::sync::atomic::Ordering::Relaxed);
        let known: HashSet<WorkerId> = workers.into_iter().map(|(w, _)| w).collect();
        let vanished: HashSet<WorkerId> = {
            let mut state = self.state.lock().expect("presence lock");
            let vanished = state
                .by_worker
                .keys()
                .filter(|w| !known.contains(*w))
                .cloned()
                .collect();
            state.known = known;
            vanished
        };
        if !vanished.is_empty() {
            // Left the table without a notice reaching this worker (or before it ever
            // did): their users are online there no more.
            self.workers_gone(vanished, false);
        }
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
        self.workers_gone(dead.into_iter().collect(), false);
        Ok(())
    }

    /// At start, when a previous process with this worker id left its rows (a restart
    /// faster than the reaping): its users go offline everywhere (they reconnect to
    /// whoever serves them now), and this process's own are recorded afresh. The next
    /// heartbeat, 2 s later, learns the peers.
    async fn forget_previous_incarnation(&self) -> Result<(), DbError> {
        let tx = self.db.begin().await?;
        let stmt = tx.prepare_cached(queries::WORKER_USERS).await?;
        let users: Vec<String> = tx
            .query(&stmt, &[&self.worker.as_str()])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let forget = tx.prepare_cached(queries::FORGET_WORKERS).await?;
        tx.execute(&forget, &[&vec![self.worker.as_str()]]).await?;
        let now = rfc3339(Utc::now());
        let off: Vec<(String, String)> = users.iter().map(|u| (u.clone(), now.clone())).collect();
        for payload in Notice::presence_payloads(&self.seal, &self.worker, vec![], off) {
            tx.execute(queries::NOTIFY, &[&CHANNEL, &payload]).await?;
        }
        tx.commit().await?;
        if !users.is_empty() {
            tracing::warn!(
                users = users.len(),
                "a previous process with this worker id left users online: taken offline"
            );
        }
        self.reassert();
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
        let payload = Notice::gone_payload(&self.seal, &self.worker, workers, graceful);
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
