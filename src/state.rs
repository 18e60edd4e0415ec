//! The shared state of one worker: the handles its sessions, requests and HTTP routes
//! use. Built by [`crate::app::Application`], which owns the lifecycle.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::hub::Hub;
use crate::cluster::listener::ListenerState;
use crate::cluster::notify::NoticeSeal;
use crate::cluster::presence::Presence;
use crate::db::{Database, HealthProbe};
use crate::foundation::auth::Authenticator;
use crate::foundation::budget::{Budget, Sizes};
use crate::foundation::config::Config;
use crate::foundation::metrics::{CpuMeter, Metrics};
use crate::foundation::protocol::{Limits, WorkerId};
use crate::foundation::ratelimit::{SignInLimits, UserLimits};
use crate::read::cache::ConversationCache;
use crate::requests::Services;
use crate::write::Writer;

/// The shared state of one worker. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct App(Arc<AppInner>);

pub struct AppInner {
    pub config: Config,
    pub(crate) db: Database,
    pub(crate) hub: Arc<Hub>,
    pub(crate) cache: Arc<ConversationCache>,
    pub(crate) presence: Arc<Presence>,
    pub writer: Writer,
    pub(crate) auth: Authenticator,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the worker starts shutting down; every session watches it.
    pub(crate) shutdown: CancellationToken,
    /// Every WebSocket session, so shutdown can wait for them (axum does not).
    pub(crate) sessions: TaskTracker,
    pub(crate) worker_id: WorkerId,
    /// Seals this worker's notices and opens the cluster's (see `cluster::notify`).
    pub(crate) seal: Arc<NoticeSeal>,
    pub(crate) started: Instant,
    /// Sockets held now, checked against `max_connections` before each upgrade.
    pub(crate) open_sockets: AtomicUsize,
    pub(crate) next_session: AtomicU64,
    pub listener: Arc<ListenerState>,
    /// The cached database probe of `/health` and `/ready`.
    pub(crate) health: HealthProbe,
    /// One token bucket per user, shared by the user's sessions and the HTTP API.
    pub(crate) rate_limits: UserLimits,
    /// `POST /dev/token`'s limit, per client address.
    pub(crate) sign_ins: SignInLimits,
    /// This process's CPU use, for `/health`'s utilisation figures.
    pub(crate) cpu: CpuMeter,
    /// The bytes held for replies and replays, per user and in all (see
    /// `foundation::budget`), and the worst cases requests are charged.
    pub(crate) budget: Arc<Budget>,
    pub(crate) sizes: Sizes,
}

impl std::ops::Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl App {
    pub(crate) fn new(inner: AppInner) -> App {
        App(Arc::new(inner))
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_message_chars: self.config.max_message_chars,
            max_mentions: self.config.max_mentions,
            max_group_members: self.config.max_group_members,
            max_presence_users: self.config.max_presence_users,
        }
    }

    /// The handles requests use: the read and write paths, the metrics, the typing
    /// fan-out. Narrower than the worker: no configuration, auth, sessions or shutdown.
    pub(crate) fn services(&self) -> Services<'_> {
        Services {
            db: &self.db,
            cache: &self.cache,
            writer: &self.writer,
            metrics: &self.metrics,
            hub: &self.hub,
            presence: &self.presence,
            worker_id: &self.worker_id,
            seal: &self.seal,
            members_listed: self.config.conversation_members_listed,
            rate_limits: &self.rate_limits,
            group_members_per_token: self.config.group_members_per_token,
        }
    }

    /// Takes a socket slot if this worker holds fewer than `max_connections`.
    pub(crate) fn try_take_slot(&self) -> Option<SocketSlot> {
        self.open_sockets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.config.max_connections).then_some(n + 1)
            })
            .ok()
            .map(|_| SocketSlot(self.clone()))
    }

    /// A session id unique within this worker.
    pub(crate) fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub fn open_sockets(&self) -> usize {
        self.open_sockets.load(Ordering::Acquire)
    }
}

/// One of `max_connections` socket slots; released on drop.
pub(crate) struct SocketSlot(App);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.open_sockets.fetch_sub(1, Ordering::AcqRel);
    }
}
