//! The notification listener: one dedicated connection per worker that LISTENs for what
//! other workers committed, and brings this worker's feeds up to date from the tables.
//!
//! Notifications only say where to look (see [`crate::notify`]); the events are read
//! from `event_queue`, for all the users of a notification in one query, and published to
//! the hub exactly as local commits are. Notifications sent while nobody listened are
//! gone for good, so after every (re)connection the worker first catches up: it reads the
//! heads of all its users and fetches what it missed, and only then reports ready.
//!
//! pooled connections cannot receive notifications (deadpool drives them itself), so
//! this connection is driven here with `poll_message`. When the worker's share of the
//! connection budget is one connection, it also carries the worker's queries
//! ([`crate::db::lease`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::db::SharedConn;
use crate::error::DbError;
use crate::notify::{Notice, CHANNEL};
use crate::store;

/// Events fetched per user per notification at most; a user further behind is only told
/// the new head, and their sessions page through the table themselves.
const FETCH_WINDOW: i64 = 256;

/// What `/ready` and `/health` report about the listener (its counts are in metrics).
#[derive(Default)]
pub struct ListenerState {
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl ListenerState {
    /// Listening, and caught up since the last (re)connection.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("listener state").clone()
    }

    fn set_down(&self, why: String) {
        self.up.store(false, Ordering::Release);
        *self.last_error.lock().expect("listener state") = Some(why);
    }
}

/// Listens until `stop`, reconnecting with backoff (100 ms doubling to 5 s).
pub async fn run(app: App, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = listen(&app, &stop).await;
        app.db.source.set_shared(None);
        match result {
            Ok(()) => return, // stopped
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "notification listener down");
                app.listener.set_down(e.to_string());
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection's life: connect, LISTEN, catch up, then handle notifications until the
/// connection ends (an error) or `stop` (Ok).
async fn listen(app: &App, stop: &CancellationToken) -> Result<(), DbError> {
    let (client, mut connection) = app.db.connect_dedicated().await?;
    let (tx, mut rx) = mpsc::channel::<String>(1024);
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {} // server notices
                Err(e) => {
                    tracing::debug!(error = %e, "listener connection ended");
                    return;
                }
            }
        }
    });
    // Whatever happens below, the driver goes with this function.
    let _driver = AbortOnDrop(driver);
    let shared = SharedConn::new(client);
    shared
        .client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await?;
    app.db.source.set_shared(Some(shared.clone()));
    app.metrics.listener_connects.inc();
    // Listening already, so nothing committed from here on is missed; now read what may
    // have been missed before.
    catch_up(app).await?;
    app.listener.up.store(true, Ordering::Release);
    tracing::info!("listening for notifications");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            payload = rx.recv() => {
                let Some(first) = payload else {
                    return Err(DbError::Down("the listener's connection closed"));
                };
                // Take whatever else is waiting: one fetch serves them all.
                let mut payloads = vec![first];
                while payloads.len() < 256 {
                    match rx.try_recv() {
                        Ok(p) => payloads.push(p),
                        Err(_) => break,
                    }
                }
                app.metrics.notifications.inc_by(payloads.len() as u64);
                handle(app, payloads).await;
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Applies notifications from other workers.
async fn handle(app: &App, payloads: Vec<String>) {
    let mut grew: HashMap<String, i64> = HashMap::new();
    let mut all_streams = false;
    let mut all_conversations = false;
    for payload in payloads {
        let notice: Notice = match serde_json::from_str(&payload) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, payload, "ignoring a notification pgchat cannot read");
                continue;
            }
        };
        if notice.from_worker() == app.worker_id {
            continue; // published locally at commit already
        }
        match notice {
            Notice::Events {
                u, c, all, all_c, ..
            } => {
                all_streams |= all;
                all_conversations |= all_c;
                for (user, seq) in u {
                    note_growth(app, &mut grew, user, seq);
                }
                for (conversation, version) in c {
                    app.cache.invalidate_older(&conversation, version);
                }
            }
            Notice::Typing { c, u, s, m, .. } => {
                crate::requests::remote_typing(app, c, u, s, m).await
            }
            other => app.presence.on_notice(other),
        }
    }
    if all_conversations {
        app.cache.clear();
    }
    if all_streams {
        // A batch too large to list: check every user held here.
        if let Err(e) = catch_up_streams(app, grew).await {
            tracing::warn!(error = %e, "catching up after a pointer notification failed");
        }
    } else if !grew.is_empty() {
        fetch(app, grew).await;
    }
}

/// Records that `user`'s stream reached `seq`, if the user has a session here that has
/// not seen it yet.
fn note_growth(app: &App, grew: &mut HashMap<String, i64>, user: String, seq: i64) {
    if app.hub.head_of(&user).is_some_and(|h| seq > h) {
        let e = grew.entry(user).or_insert(seq);
        *e = (*e).max(seq);
    }
}

/// After a (re)connection: forgets the cache and reloads presence (changes may have been
/// missed), then catches the streams up.
async fn catch_up(app: &App) -> Result<(), DbError> {
    app.cache.clear();
    app.presence.reload().await?;
    app.presence.reassert();
    catch_up_streams(app, HashMap::new()).await
}

/// Reads the heads of every user with a session here and fetches what grew (with
/// `grew`, what notifications already announced).
async fn catch_up_streams(app: &App, mut grew: HashMap<String, i64>) -> Result<(), DbError> {
    let users = app.hub.local_users();
    if !users.is_empty() {
        for (user, head) in store::heads(&app.db, &users).await? {
            note_growth(app, &mut grew, user, head);
        }
    }
    if !grew.is_empty() {
        fetch(app, grew).await;
    }
    Ok(())
}

/// Fetches the events between each user's known head and the announced one, in one
/// query, and publishes them to the hub; then moves the heads, so sessions fetch for
/// themselves anything the query did not bring.
async fn fetch(app: &App, grew: HashMap<String, i64>) {
    let mut ranges = Vec::new();
    for (user, upto) in &grew {
        let Some(known) = app.hub.head_of(user) else {
            continue;
        };
        if upto - known <= FETCH_WINDOW {
            ranges.push((user.clone(), known, *upto));
        }
    }
    if !ranges.is_empty() {
        match store::events_in(&app.db, &ranges).await {
            Ok(rows) => {
                for (user, seq, frame) in rows {
                    app.hub.publish(&user, seq, move || frame);
                }
            }
            Err(e) => tracing::warn!(error = %e, "fetching announced events failed"),
        }
    }
    for (user, upto) in grew {
        app.hub.advance(&user, upto);
    }
}
