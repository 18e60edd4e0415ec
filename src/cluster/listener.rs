//! The notification listener: one dedicated connection per worker that LISTENs for what
//! other workers committed, and brings this worker's feeds up to date from the tables.
//!
//! Notifications only say where to look (see [`crate::cluster::notify`]); the events are read
//! from `event_queue`, for all the users of a notification in one query, and published to
//! the hub exactly as local commits are. Notifications sent while nobody listened are
//! gone for good, so after every (re)connection the worker first catches up: it reads the
//! heads of all its users and fetches what it missed, and only then reports ready.
//!
//! Before it reports ready, the listener proves that it hears what the worker's query
//! path sends: it LISTENs on a channel of its own, sends one notification to it through
//! the pool (`DATABASE_URL`), and waits up to `listener_selftest_timeout_ms`. A listener
//! behind a transaction pooler, or one that `DATABASE_LISTEN_URL` points at another
//! database, would otherwise hear nothing, silently; it stays down instead, saying why
//! (`not_receiving`), and tries again with backoff.
//!
//! Every notification is opened with the cluster's seal first: one without it (another
//! database role's NOTIFY on pgchat's channel) is dropped and counted. A sealed one is
//! still only a hint: a stream that "grew" is read, and a feed's head moves only to what
//! the table holds; presence is taken only from workers in the `workers` table, and
//! replayed notices are dropped (see [`crate::cluster::notify`]).
//!
//! pooled connections cannot receive notifications (deadpool drives them itself), so
//! this connection is driven here with `poll_message`. When the worker's share of the
//! connection budget is one connection, it also carries the worker's queries
//! ([`crate::db::lease`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::cluster::hub::Hub;
use crate::cluster::notify::{Notice, NoticeSeal, Replays, CHANNEL};
use crate::cluster::presence::Presence;
use crate::cluster::typing::{self, RemoteTyping};
use crate::db::{Connection, Database, SharedConn};
use crate::foundation::error::DbError;
use crate::foundation::metrics::Metrics;
use crate::foundation::protocol::WorkerId;
use crate::read::cache::ConversationCache;
use crate::read::store;

/// Events fetched per user per notification at most; a user further behind is only told
/// the new head, and their sessions page through the table themselves.
const FETCH_WINDOW: i64 = 256;

/// Bytes of bodies (and states) one fetch reads at most: a burst of long messages to a
/// large group online here is not read into memory at once (frames for every recipient
/// besides); what it leaves out, each session reads itself, charged to its user.
const FETCH_BYTES: i64 = 2 << 20;

/// The listener's handles: what it reads, what it feeds, and what it reports to.
pub(crate) struct Listener {
    pub(crate) db: Database,
    pub(crate) hub: Arc<Hub>,
    pub(crate) cache: Arc<ConversationCache>,
    pub(crate) presence: Arc<Presence>,
    pub(crate) metrics: Arc<Metrics>,
    /// Shared with `/ready` and `/health`.
    pub(crate) state: Arc<ListenerState>,
    /// Notices this worker sent itself are skipped: their events were published at commit.
    pub(crate) worker_id: WorkerId,
    /// Opens the cluster's notices (and seals the self-test's).
    pub(crate) seal: Arc<NoticeSeal>,
    /// The numbered notices already applied, per sender.
    pub(crate) replays: Replays,
    /// When pointer notices were last followed at once.
    pub(crate) pointers: Pointers,
    pub(crate) settings: Settings,
}

/// How often pointer notices (`"all":true`: check everything) are followed at once.
#[derive(Default)]
pub(crate) struct Pointers {
    /// A std mutex: a clock read and a write.
    last: Mutex<Option<std::time::Instant>>,
    clear_cache: AtomicBool,
    reload_presence: AtomicBool,
}

impl Pointers {
    /// True at most once a second.
    fn allowed(&self) -> bool {
        let mut last = self.last.lock().expect("pointers lock");
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return false;
        }
        *last = Some(now);
        true
    }

    fn defer(&self, clear_cache: bool, reload_presence: bool) {
        if clear_cache {
            self.clear_cache.store(true, Ordering::Release);
        }
        if reload_presence {
            self.reload_presence.store(true, Ordering::Release);
        }
    }

    /// What deferred pointers asked for (the streams are caught up by the caller).
    async fn apply_deferred(&self, ln: &Listener) {
        if self.clear_cache.swap(false, Ordering::AcqRel) {
            ln.cache.clear();
        }
        if self.reload_presence.swap(false, Ordering::AcqRel) {
            if let Err(e) = ln.presence.reload().await {
                tracing::warn!(error = %e, "reloading presence after deferred pointer notices failed");
                self.reload_presence.store(true, Ordering::Release);
            }
        }
    }
}

/// The listener's settings (`listener_*` in the configuration).
pub(crate) struct Settings {
    /// Notifications queued between the connection and the listener before it drops
    /// them and catches up from the tables.
    pub(crate) queue: usize,
    pub(crate) probe_interval: Duration,
    pub(crate) probe_timeout: Duration,
    pub(crate) selftest_timeout: Duration,
}

/// What `/ready` and `/health` report about the listener (its counts are in metrics).
#[derive(Default)]
pub struct ListenerState {
    up: AtomicBool,
    /// Why it last went down, as a stable code (the driver's text is only logged: it may
    /// name hosts, users or addresses).
    last_error: Mutex<Option<&'static str>>,
    /// The running listener task, which [`supervise`] restarts if it ends.
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl ListenerState {
    /// Listening, and caught up since the last (re)connection.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// `connect_failed`, `connection_lost`, `unresponsive`, `not_receiving` or `crashed`,
    /// or none yet.
    pub(crate) fn last_error(&self) -> Option<&'static str> {
        *self.last_error.lock().expect("listener state")
    }

    fn set_down(&self, why: &'static str) {
        self.up.store(false, Ordering::Release);
        *self.last_error.lock().expect("listener state") = Some(why);
    }

    /// Ends the running listener task as a crash would: for fault tests (the supervisor
    /// must notice, report the listener down and start it again).
    pub fn abort_task(&self) {
        if let Some(task) = self.task.lock().expect("listener state").as_ref() {
            task.abort();
        }
    }
}

/// Runs the listener until `stop`, starting it again whenever its task ends otherwise (a
/// panic, an abort): `/ready` says 503 (`last_error: "crashed"`) until the new one is up
/// and caught up. `listener` builds each one afresh (its state is only a cache).
pub(crate) async fn supervise(
    listener: impl Fn() -> Listener,
    state: Arc<ListenerState>,
    stop: CancellationToken,
) {
    loop {
        let ln = listener();
        let db = ln.db.clone();
        let task = tokio::spawn(run(ln, stop.clone()));
        *state.task.lock().expect("listener state") = Some(task.abort_handle());
        let ended = task.await;
        if stop.is_cancelled() {
            return;
        }
        // A task that died mid-connection left its connection as the worker's query
        // path (when the share is one): take it away before anyone queries a dead one.
        db.source.set_shared(None);
        state.set_down("crashed");
        match ended {
            Err(e) if e.is_panic() => {
                tracing::error!(error = %e, "the notification listener panicked: starting it again")
            }
            _ => tracing::error!("the notification listener ended: starting it again"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Why a connection's life ended.
enum Down {
    /// Connecting, or LISTEN, failed.
    Connect(DbError),
    /// The connection broke (the server closed it, a query on it failed).
    Lost(DbError),
    /// It did not answer the liveness probe in time: half-open, or stalled.
    Unresponsive,
    /// Its own test notification, sent through the query path, never arrived; the text
    /// says why that may be and what to do.
    NotReceiving(String),
}

impl Down {
    fn code(&self) -> &'static str {
        match self {
            Down::Connect(_) => "connect_failed",
            Down::Lost(_) => "connection_lost",
            Down::Unresponsive => "unresponsive",
            Down::NotReceiving(_) => "not_receiving",
        }
    }
}

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Down::Connect(e) => write!(f, "connecting failed: {e}"),
            Down::Lost(e) => write!(f, "the connection broke: {e}"),
            Down::Unresponsive => f.write_str("the connection did not answer its probe in time"),
            Down::NotReceiving(why) => f.write_str(why),
        }
    }
}

/// Listens until `stop`, reconnecting with backoff (100 ms doubling to 5 s, and back to
/// 100 ms once a connection came up).
pub(crate) async fn run(ln: Listener, stop: CancellationToken) {
    const FIRST: Duration = Duration::from_millis(100);
    let mut backoff = FIRST;
    loop {
        let result = listen(&ln, &stop).await;
        ln.db.source.set_shared(None);
        let was_up = ln.state.is_up();
        match result {
            Ok(()) => return, // stopped
            Err(e @ Down::NotReceiving(_)) => {
                tracing::error!(retry_in = ?backoff, "notification listener not ready: {e}");
                ln.state.set_down(e.code());
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "notification listener down");
                ln.state.set_down(e.code());
            }
        }
        if was_up {
            // A connection that worked is retried at once: a restart or failover of the
            // server should cost readiness as little as possible.
            backoff = FIRST;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection's life: connect, LISTEN, catch up, then handle notifications until the
/// connection ends or stops answering (an error) or `stop` (Ok).
async fn listen(ln: &Listener, stop: &CancellationToken) -> Result<(), Down> {
    let (client, connection) = ln
        .db
        .connect_dedicated()
        .await
        .map_err(|e| Down::Connect(e.into()))?;
    let (tx, mut rx) = mpsc::channel::<String>(ln.settings.queue);
    // Set by the driver when the queue was full and it dropped a notification: the
    // listener then catches up from the tables instead.
    let overflow = Arc::new(Notify::new());
    // This connection's own channel for the self-test, and the signal that it was heard.
    let selftest = format!("pgchat_selftest_{:016x}", rand::random::<u64>());
    let heard = Arc::new(Notify::new());
    let driver = spawn_driver(
        connection,
        Queue {
            tx,
            overflow: overflow.clone(),
            seal: ln.seal.clone(),
            metrics: ln.metrics.clone(),
        },
        selftest.clone(),
        heard.clone(),
    );
    // Whatever happens below, the driver goes with this function.
    let _driver = AbortOnDrop(driver);
    let shared = SharedConn::new(client);
    // From here on the connection proves itself alive every probe interval, whatever the
    // listener is doing meanwhile (LISTEN, catching up, fetching): a half-open connection
    // would otherwise leave every one of those waiting forever.
    let probe = probe(
        shared.clone(),
        ln.settings.probe_interval,
        ln.settings.probe_timeout,
    );
    tokio::pin!(probe);
    let work = async {
        start_listening(ln, &shared, &selftest, &heard).await?;
        relay(ln, &mut rx, &overflow).await
    };
    tokio::select! {
        _ = stop.cancelled() => Ok(()),
        down = &mut probe => Err(down),
        result = work => result,
    }
}

/// Where the driver puts what it reads: the listener's queue (of sealed notices, opened),
/// and the signal that the queue was full.
struct Queue {
    tx: mpsc::Sender<String>,
    overflow: Arc<Notify>,
    seal: Arc<NoticeSeal>,
    metrics: Arc<Metrics>,
}

/// Reads the connection: queues the sealed notifications for the listener, opened (never
/// waiting for room: on a full queue it drops them and signals `overflow`; unsealed ones
/// are dropped at once), and signals `heard` when the self-test's notification arrives.
fn spawn_driver(
    mut connection: Connection,
    queue: Queue,
    selftest: String,
    heard: Arc<Notify>,
) -> tokio::task::JoinHandle<()> {
    let Queue {
        tx,
        overflow,
        seal,
        metrics,
    } = queue;
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) if n.channel() == selftest => heard.notify_one(),
                // Never wait for room: while this task waits, the connection is not
                // read, and the listener, whose queries (all of the worker's, when
                // its share is one connection) answer on it, would wait forever.
                Ok(AsyncMessage::Notification(n)) => {
                    let Some(notice) = unseal(&seal, &metrics, n.payload()) else {
                        continue;
                    };
                    match tx.try_send(notice) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => overflow.notify_one(),
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                Ok(_) => {} // server notices
                Err(e) => {
                    tracing::debug!(error = %e, "listener connection ended");
                    return;
                }
            }
        }
    })
}

/// LISTEN, share the connection with the worker's queries, prove it hears itself, catch
/// up on what was missed, and declare the listener up.
async fn start_listening(
    ln: &Listener,
    shared: &Arc<SharedConn>,
    selftest: &str,
    heard: &Notify,
) -> Result<(), Down> {
    shared
        .client
        .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {selftest}"))
        .await
        .map_err(|e| Down::Connect(e.into()))?;
    ln.db.source.set_shared(Some(shared.clone()));
    if ln.metrics.listener_connects.get() > 0 {
        ln.metrics.listener_reconnects.inc();
    }
    ln.metrics.listener_connects.inc();
    self_test(ln, shared, selftest, heard).await?;
    // Listening already, so nothing committed from here on is missed; now read what may
    // have been missed before.
    catch_up(ln).await.map_err(Down::Lost)?;
    ln.state.up.store(true, Ordering::Release);
    tracing::info!("listening for notifications");
    Ok(())
}

/// Handles the queued notifications, several at once when they queue up, until the
/// connection closes; after an overflow, drops the queue and catches up from the tables.
async fn relay(
    ln: &Listener,
    rx: &mut mpsc::Receiver<String>,
    overflow: &Notify,
) -> Result<(), Down> {
    // Set when announced events could not be read (no pooled connection in time, say):
    // the streams are checked against the table again then, since the notice alone is
    // never believed.
    let mut retry: Option<tokio::time::Instant> = None;
    let mut retry_delay = RETRY_FIRST;
    loop {
        let unread = tokio::select! {
            biased;
            _ = overflow.notified() => {
                // Some notifications were dropped, and what is queued is older than
                // what the tables hold: drop it too and catch up from the tables.
                ln.metrics.listener_overflows.inc();
                while rx.try_recv().is_ok() {}
                tracing::debug!("notifications outpaced the listener: catching up from the tables");
                recover(ln).await.map_err(Down::Lost)?;
                false
            }
            _ = sleep_until(retry), if retry.is_some() => {
                retry = None;
                ln.pointers.apply_deferred(ln).await;
                catch_up_streams(ln, HashMap::new()).await.is_err()
            }
            payload = rx.recv() => {
                let Some(first) = payload else {
                    return Err(Down::Lost(DbError::Down("the listener's connection closed")));
                };
                // Take whatever else is waiting: one fetch serves them all.
                let mut payloads = vec![first];
                while payloads.len() < 256 {
                    match rx.try_recv() {
                        Ok(p) => payloads.push(p),
                        Err(_) => break,
                    }
                }
                ln.metrics.notifications.inc_by(payloads.len() as u64);
                !handle(ln, payloads).await
            }
        };
        if unread {
            retry.get_or_insert_with(|| tokio::time::Instant::now() + retry_delay);
            retry_delay = (retry_delay * 2).min(RETRY_MAX);
        } else if retry.is_none() {
            retry_delay = RETRY_FIRST;
        }
    }
}

/// How soon streams whose announced events could not be read are read again, doubling to
/// [`RETRY_MAX`] while the database does not answer.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(2);

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the connection fails to answer `SELECT 1` within `timeout`, tried every
/// `every`. The probe takes the connection's read gate like any query, so it never runs
/// inside a transaction that holds the connection alone; waiting for that gate counts
/// against the timeout.
async fn probe(conn: Arc<SharedConn>, every: Duration, timeout: Duration) -> Down {
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(timeout, conn.probe()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Down::Lost(e.into()),
            Err(_) => return Down::Unresponsive,
        }
    }
}

/// Sends a notification to `channel` through the worker's query path (the pool, or in
/// shared mode this very connection) and waits for `heard`; then stops listening to it.
async fn self_test(
    ln: &Listener,
    conn: &SharedConn,
    channel: &str,
    heard: &Notify,
) -> Result<(), Down> {
    let timeout = ln.settings.selftest_timeout;
    // A simple query: no prepared statement, which a transaction pooler may not keep.
    let notify = format!("NOTIFY {channel}");
    let sender = ln.db.client().await.map_err(Down::Lost)?;
    sender
        .simple_query(&notify)
        .await
        .map_err(|e| Down::Lost(e.into()))?;
    if tokio::time::timeout(timeout, heard.notified())
        .await
        .is_err()
    {
        let databases = match (
            current_database(&sender).await,
            current_database(&conn.client).await,
        ) {
            (Some(a), Some(b)) if a != b => {
                format!(" (queries reach database {a:?}, the listener reaches {b:?})")
            }
            _ => String::new(),
        };
        let listen = &ln.db.listen;
        return Err(Down::NotReceiving(format!(
            "a test notification sent through {queries} did not reach the listener \
             ({listen_setting}) within {timeout:?}{databases}: notifications from other workers \
             would be lost. The listener needs a session of its own on the same database as \
             DATABASE_URL: if DATABASE_URL goes through a pooler in transaction mode (PgBouncer, \
             Supavisor, a cloud provider's pooler), set DATABASE_LISTEN_URL to a direct \
             connection to that database; if DATABASE_LISTEN_URL is set, make it reach that \
             database without a pooler",
            queries = ln.db.endpoint.setting,
            listen_setting = listen.setting,
        )));
    }
    drop(sender);
    conn.client
        .batch_execute(&format!("UNLISTEN {channel}"))
        .await
        .map_err(|e| Down::Lost(e.into()))
}

async fn current_database(client: &tokio_postgres::Client) -> Option<String> {
    let rows = client
        .simple_query("SELECT current_database()")
        .await
        .ok()?;
    rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens a payload: the notice inside it if it carries the cluster's seal; else `None`,
/// counted and logged (at most once a minute: a role that floods the channel must not
/// flood the log too). The connection's driver calls it before anything is queued, so
/// that unsealed notices cannot fill the queue and push the listener into catching up.
fn unseal(seal: &NoticeSeal, metrics: &Metrics, payload: &str) -> Option<String> {
    let opened = seal.open(payload);
    if opened.is_none() {
        metrics.notices_unsealed.inc();
        if log_allowed(&LAST_UNSEALED_LOG) {
            tracing::warn!(
                bytes = payload.len(),
                "dropped a notification on pgchat's channel without pgchat's seal: another \
                 database role sent it (any role that can connect may NOTIFY), a worker of a \
                 pgchat version before sealing (during a rolling upgrade), or one with \
                 another pgchat.notice_key (counted in pgchat_notices_unsealed)"
            );
        }
    }
    opened
}

/// A sealed notice as this build reads it, or `None` (logged, counted).
fn parse(ln: &Listener, json: &str) -> Option<Notice> {
    match serde_json::from_str(json) {
        Ok(n) => Some(n),
        Err(e) => {
            // Sealed but unreadable: a newer pgchat's notice during a rolling upgrade.
            tracing::warn!(error = %e, bytes = json.len(), "ignoring a notification pgchat cannot read");
            ln.metrics.notices_ignored.inc();
            None
        }
    }
}

static LAST_UNSEALED_LOG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// True at most once a minute per `last` (the seconds since the epoch it was last true).
fn log_allowed(last: &std::sync::atomic::AtomicU64) -> bool {
    let now = crate::cluster::notify::now_micros() / 1_000_000;
    let before = last.load(Ordering::Relaxed);
    now >= before + 60
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// Applies notifications from other workers; false if announced events could not be
/// read (the caller reads the streams again later).
async fn handle(ln: &Listener, payloads: Vec<String>) -> bool {
    let mut grew: HashMap<String, i64> = HashMap::new();
    let mut all_streams = false;
    let mut all_conversations = false;
    let mut reload_presence = false;
    for payload in payloads {
        let Some(notice) = parse(ln, &payload) else {
            continue;
        };
        if notice.sender() == &ln.worker_id {
            continue; // published locally at commit already
        }
        if !ln.replays.fresh(&notice) {
            ln.metrics.notices_ignored.inc();
            tracing::debug!(sender = %notice.sender(), "dropped a replayed or stale notice");
            continue;
        }
        match notice {
            Notice::Events {
                u, c, all, all_c, ..
            } => {
                all_streams |= all;
                all_conversations |= all_c;
                for (user, seq) in u {
                    note_growth(ln, &mut grew, user, seq);
                }
                for (conversation, version) in c {
                    ln.cache.invalidate_older(&conversation, version);
                }
            }
            Notice::Typing { w, c, u, s, m, .. } => {
                if !admitted(ln, &w).await {
                    continue;
                }
                let notice = RemoteTyping {
                    conversation: c,
                    user: u,
                    state: s,
                    members: m,
                };
                typing::remote(&ln.hub, &ln.metrics, &ln.cache, &ln.db, notice).await
            }
            Notice::Presence { w, on, off, .. } => {
                if admitted(ln, &w).await {
                    ln.presence.on_presence(w, on, off);
                }
            }
            Notice::Gone { all: true, .. } => reload_presence = true,
            // The senders' replay floors stay: a worker id back after a restart (the same
            // host and pid) numbers on from the clock, past them.
            Notice::Gone { dead, graceful, .. } => ln.presence.on_gone(dead, graceful).await,
        }
    }
    // Pointers make this worker check everything, and a role that listens can replay a
    // sealed one at will: at most one a second is followed at once; more within the
    // second are deferred to the catch-up after it (the caller's retry), where they
    // collapse into one.
    let pointer = all_conversations || reload_presence || all_streams;
    if pointer && !ln.pointers.allowed() {
        ln.pointers.defer(all_conversations, reload_presence);
        if !grew.is_empty() {
            // Still fetch what was listed; the rest waits for the catch-up.
            let _ = fetch(ln, grew).await;
        }
        return false;
    }
    if all_conversations {
        ln.cache.clear();
    }
    if reload_presence {
        // Workers too many to list are gone: the table says who is still online.
        if let Err(e) = ln.presence.reload().await {
            tracing::warn!(error = %e, "reloading presence after a pointer notification failed");
        }
    }
    if all_streams {
        // A batch too large to list: check every user held here.
        if let Err(e) = catch_up_streams(ln, grew).await {
            tracing::warn!(error = %e, "catching up after a pointer notification failed");
            return false;
        }
        true
    } else if !grew.is_empty() {
        fetch(ln, grew).await.is_ok()
    } else {
        true
    }
}

/// Whether `worker`'s presence and typing notices are believed: it is in the `workers`
/// table. Counted when not.
async fn admitted(ln: &Listener, worker: &WorkerId) -> bool {
    let admitted = ln.presence.admit(worker).await;
    if !admitted {
        ln.metrics.notices_ignored.inc();
        tracing::debug!(%worker, "ignored a notice from a worker that is not in the workers table");
    }
    admitted
}

/// Records that `user`'s stream reached `seq`, if the user has a session here that has
/// not seen it yet.
fn note_growth(ln: &Listener, grew: &mut HashMap<String, i64>, user: String, seq: i64) {
    if ln.hub.head_of(&user).is_some_and(|h| seq > h) {
        let e = grew.entry(user).or_insert(seq);
        *e = (*e).max(seq);
    }
}

/// After a (re)connection: what [`recover`] does, and this worker's presence recorded
/// again (if the outage outlasted the heartbeat, the other workers reaped it).
async fn catch_up(ln: &Listener) -> Result<(), DbError> {
    recover(ln).await?;
    ln.presence.reassert();
    Ok(())
}

/// After notifications were missed: forgets the cache and reloads presence (changes may
/// have been missed), then catches the streams up. Typing notices missed stay missed
/// (they are at most once).
async fn recover(ln: &Listener) -> Result<(), DbError> {
    ln.cache.clear();
    ln.presence.reload().await?;
    catch_up_streams(ln, HashMap::new()).await
}

/// Reads the heads of every user with a session here and fetches what grew (with
/// `grew`, what notifications already announced).
async fn catch_up_streams(ln: &Listener, mut grew: HashMap<String, i64>) -> Result<(), DbError> {
    let users = ln.hub.local_users();
    if !users.is_empty() {
        for (user, head) in store::heads(&ln.db, &users).await? {
            note_growth(ln, &mut grew, user, head);
        }
    }
    if !grew.is_empty() {
        fetch(ln, grew).await?;
    }
    Ok(())
}

/// Fetches the events between each user's known head and the announced one, in one
/// query, and publishes them to the hub. A notice is only a hint: a feed's head moves to
/// what was read, never to the number announced. For a user further behind than
/// [`FETCH_WINDOW`], the stream's head is read instead (one primary-key probe) and the
/// feed moves to that, so the user's sessions page through the table themselves.
async fn fetch(ln: &Listener, grew: HashMap<String, i64>) -> Result<(), DbError> {
    let mut ranges = Vec::new();
    let mut far = Vec::new();
    for (user, upto) in grew {
        let Some(known) = ln.hub.head_of(&user) else {
            continue;
        };
        if upto - known <= FETCH_WINDOW {
            ranges.push((user, known, upto));
        } else {
            far.push(user);
        }
    }
    if !ranges.is_empty() {
        match store::events_in(&ln.db, &ranges, FETCH_BYTES, &ln.metrics).await {
            Ok(rows) => {
                // Commit to delivery, across workers: the event's time is its transaction's
                // (database clock), now is this worker's; on other hosts their clocks'
                // difference is part of the figure.
                let now = chrono::Utc::now();
                let mut reached: HashMap<String, i64> = HashMap::new();
                for (user, seq, frame, at) in rows {
                    let lag = (now - at).to_std().unwrap_or_default();
                    ln.metrics
                        .notification_lag_seconds
                        .observe(lag.as_secs_f64());
                    ln.hub.publish(&user, seq, move || frame);
                    reached.insert(user, seq);
                }
                // Fewer events than announced (pruned already, unshowable, or a notice
                // that claimed too much): the stream's head says how far it really went.
                far.extend(
                    ranges
                        .into_iter()
                        .filter(|(user, _, upto)| reached.get(user).is_none_or(|r| r < upto))
                        .map(|(user, _, _)| user),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "fetching announced events failed; reading the streams again shortly");
                return Err(e);
            }
        }
    }
    if !far.is_empty() {
        match store::heads(&ln.db, &far).await {
            Ok(heads) => {
                for (user, head) in heads {
                    ln.hub.advance(&user, head);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the heads of announced streams failed; again shortly");
                return Err(e);
            }
        }
    }
    Ok(())
}
