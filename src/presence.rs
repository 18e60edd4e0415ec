//! Presence: who is online, and which sessions want to hear when that changes.
//!
//! A user is online while any session of theirs is open. When the last one closes the
//! user stays online for a grace period (`presence_grace_ms`), so a reconnect does not
//! flap; only then are watchers told `offline` and `users.last_seen` stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::db::Database;
use crate::error::DbError;
use crate::hub::SessionId;
use crate::protocol::{rfc3339, UserId};

pub struct Presence {
    /// A std mutex: every critical section is a few map operations, never an await.
    state: Mutex<State>,
    grace: Duration,
    db: Database,
}

#[derive(Default)]
struct State {
    /// Users considered online here: with sessions, or within their grace period.
    online: HashMap<String, Online>,
    /// watched user -> the sessions watching, with their ephemeral channels.
    watchers: HashMap<String, HashMap<SessionId, mpsc::Sender<Utf8Bytes>>>,
}

struct Online {
    sessions: usize,
    /// Bumped by every close and open, so a stale grace timer knows it is stale.
    generation: u64,
}

impl Presence {
    pub fn new(db: Database, grace: Duration) -> Arc<Presence> {
        Arc::new(Presence {
            state: Mutex::new(State::default()),
            grace,
            db,
        })
    }

    /// A session of `user` opened.
    pub fn opened(&self, user: &str) {
        let mut state = self.state.lock().expect("presence lock");
        match state.online.get_mut(user) {
            Some(o) => {
                // Already online, or back within the grace period: no change to announce.
                o.sessions += 1;
                o.generation += 1;
            }
            None => {
                state.online.insert(
                    user.to_string(),
                    Online {
                        sessions: 1,
                        generation: 0,
                    },
                );
                let now = Utc::now();
                Self::announce(&state, user, "online", Some(now));
            }
        }
    }

    /// A session of `user` closed. Spawns the grace timer when it was the last.
    pub fn closed(self: &Arc<Self>, user: &str) {
        let generation = {
            let mut state = self.state.lock().expect("presence lock");
            let Some(o) = state.online.get_mut(user) else {
                return;
            };
            o.sessions = o.sessions.saturating_sub(1);
            o.generation += 1;
            if o.sessions > 0 {
                return;
            }
            o.generation
        };
        let this = self.clone();
        let user = user.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(this.grace).await;
            this.expire(&user, generation).await;
        });
    }

    async fn expire(&self, user: &str, generation: u64) {
        let now = Utc::now().trunc_subsecs(6);
        {
            let mut state = self.state.lock().expect("presence lock");
            match state.online.get(user) {
                Some(o) if o.sessions == 0 && o.generation == generation => {
                    state.online.remove(user);
                    Self::announce(&state, user, "offline", Some(now));
                }
                _ => return, // came back, or a newer timer owns it
            }
        }
        if let Err(e) = self.store_last_seen(user, now).await {
            tracing::warn!(error = %e, user, "storing last_seen failed");
        }
    }

    async fn store_last_seen(&self, user: &str, at: DateTime<Utc>) -> Result<(), DbError> {
        let client = self.db.client().await?;
        let stmt = client
            .prepare_cached("UPDATE users SET last_seen = $2 WHERE id = $1")
            .await?;
        client.execute(&stmt, &[&user, &at]).await?;
        Ok(())
    }

    fn announce(state: &State, user: &str, status: &str, last_seen: Option<DateTime<Utc>>) {
        let Some(watchers) = state.watchers.get(user) else {
            return;
        };
        let frame: Utf8Bytes = json!({
            "type": "presence",
            "user": user,
            "status": status,
            "last_seen": last_seen.map(rfc3339),
        })
        .to_string()
        .into();
        for tx in watchers.values() {
            // Full: the frame is dropped for that session (ephemeral by definition).
            let _ = tx.try_send(frame.clone());
        }
    }

    pub fn is_online(&self, user: &str) -> bool {
        self.state
            .lock()
            .expect("presence lock")
            .online
            .contains_key(user)
    }

    /// Registers `session` as a watcher of `users` and returns their current presence.
    pub async fn subscribe(
        &self,
        session: SessionId,
        tx: &mpsc::Sender<Utf8Bytes>,
        users: &[UserId],
    ) -> Result<Vec<Value>, DbError> {
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
        let stmt = client
            .prepare_cached("SELECT id, last_seen FROM users WHERE id = ANY($1)")
            .await?;
        let last_seen: HashMap<String, Option<DateTime<Utc>>> = client
            .query(&stmt, &[&ids])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(users
            .iter()
            .map(|u| {
                let online = self.is_online(u.as_str());
                json!({
                    "user": u,
                    "status": if online { "online" } else { "offline" },
                    "last_seen": last_seen.get(u.as_str()).copied().flatten().map(rfc3339),
                })
            })
            .collect())
    }

    /// Removes `session` from the watchers of `users` (when it closes).
    pub fn unsubscribe(&self, session: SessionId, users: impl IntoIterator<Item = String>) {
        let mut state = self.state.lock().expect("presence lock");
        for u in users {
            if let Some(w) = state.watchers.get_mut(&u) {
                w.remove(&session);
                if w.is_empty() {
                    state.watchers.remove(&u);
                }
            }
        }
    }
}
