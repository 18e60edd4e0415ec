//! A worker's lifecycle: `Application::build` → `local_addr()` →
//! `run_until_stopped(shutdown)`, which serves and then drains in a fixed order. What the
//! worker shares while it serves is [`crate::state::App`]; when to stop is
//! [`crate::shutdown`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::hub::{FeedLimits, Hub};
use crate::cluster::listener::{self, Listener, ListenerState};
use crate::cluster::notify::NoticeSeal;
use crate::cluster::presence::{Presence, PresenceSettings};
use crate::db::HealthProbe;
use crate::db::{Database, Plan, StartupError};
use crate::foundation::auth::Authenticator;
use crate::foundation::budget::{Budget, Sizes};
use crate::foundation::config::Config;
use crate::foundation::metrics::{CpuMeter, Metrics};
use crate::foundation::protocol::WorkerId;
use crate::foundation::ratelimit::{SignInLimits, UserLimits};
use crate::ops::stats::StatsLine;
use crate::read::cache::ConversationCache;
use crate::state::{App, AppInner};
use crate::write::{Outputs, Writer};

/// A built worker, bound to its port but not yet serving.
pub struct Application {
    app: App,
    /// Bound; listening starts in `run_until_stopped`.
    socket: socket2::Socket,
    local_addr: SocketAddr,
    /// Listen only once ready (see [`Role::listen_when_ready`]).
    listen_when_ready: bool,
    /// `ops_listen`'s socket, bound, with its address: `/health` and `/metrics` are served
    /// there instead of on the public port.
    ops: Option<(socket2::Socket, SocketAddr)>,
    writers: TaskTracker,
    writers_stop: CancellationToken,
    /// The notification listener and the presence recorder: stopped last, since in
    /// shared mode the writers' final commits run on the listener's connection.
    background: TaskTracker,
    background_stop: CancellationToken,
}

/// How this process takes part in a deployment.
#[derive(Debug, Clone, Copy)]
pub struct Role {
    pub plan: Plan,
    /// Bind with SO_REUSEPORT, so that several workers share one port.
    pub reuse_port: bool,
    /// Start listening only once the notification listener is up and caught up. For
    /// supervised workers: the kernel (SO_REUSEPORT) or the load balancer then never
    /// hands a connection to a worker that would answer `not_ready`. A single process
    /// listens at once, so /live and /ready answer while it starts.
    pub listen_when_ready: bool,
    /// Added to `ops_listen`'s port: the worker's index when each worker has a port of its
    /// own, 0 when they share one.
    pub ops_offset: u16,
}

impl Role {
    /// A single process: the whole connection budget, its own schema set-up.
    pub(crate) fn single(config: &Config) -> Role {
        Role {
            plan: Plan {
                share: config.db_max_connections,
                setup: true,
            },
            reuse_port: false,
            listen_when_ready: false,
            ops_offset: 0,
        }
    }
}

impl Application {
    /// Opens the database (creating it and applying the schema if needed), starts the
    /// write batchers and binds `host:port` (port 0 picks a free one).
    pub async fn build(config: Config) -> Result<Application, StartupError> {
        let role = Role::single(&config);
        Self::build_as(config, role).await
    }

    /// Like [`Application::build`], for a worker of a supervised deployment.
    pub async fn build_as(config: Config, role: Role) -> Result<Application, StartupError> {
        let auth =
            Authenticator::from_config(&config).map_err(|e| StartupError::Secret(e.to_string()))?;
        // The port first: a port in use is found before the database is touched.
        let socket = bind(config.listen_host(), config.port, role.reuse_port)
            .map_err(|e| bind_error(config.listen_host(), config.port, &e))?;
        let ops = match &config.ops_listen {
            Some(at) => Some(bind_ops(at, role.ops_offset, role.reuse_port)?),
            None => None,
        };
        let db = Database::open(&config, role.plan).await?;
        let seal = Arc::new(NoticeSeal::new(crate::db::notice_key(&db).await?));
        let mut application =
            Self::with_parts(config, auth, db, seal, socket, role.listen_when_ready);
        application.ops = ops;
        Ok(application)
    }

    /// Where `/health` and `/metrics` are served when `ops_listen` is set.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(|(_, a)| *a)
    }

    fn with_parts(
        config: Config,
        auth: Authenticator,
        db: Database,
        seal: Arc<NoticeSeal>,
        socket: socket2::Socket,
        listen_when_ready: bool,
    ) -> Application {
        let local_addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("a bound TCP socket has an address");
        let worker_id = next_worker_id();
        let metrics = Arc::new(Metrics::new(&db.round_trips));
        let hub = Hub::new(
            FeedLimits {
                frames_per_user: config.recent_events_per_user,
                bytes_per_user: config.recent_events_bytes_per_user,
                bytes_total: config.recent_events_bytes,
            },
            config.ephemeral_queue,
        );
        let cache = ConversationCache::new(
            config.conversation_cache,
            config.cached_messages,
            config.conversation_cache_bytes,
        );
        let writers = TaskTracker::new();
        let writers_stop = CancellationToken::new();
        let writer = Writer::spawn(
            db.clone(),
            Outputs {
                hub: hub.clone(),
                cache: cache.clone(),
                metrics: metrics.clone(),
            },
            &config,
            &worker_id,
            writers_stop.clone(),
            &writers,
        );
        let shutdown = CancellationToken::new();
        db.maintain(
            config.db_min_connections,
            Duration::from_millis(config.db_idle_timeout_ms),
            shutdown.clone(),
        );
        spawn_pruner(db.clone(), &config, shutdown.clone());
        let app = shared_state(
            config, auth, db, hub, cache, writer, metrics, shutdown, worker_id, seal,
        );
        let (background, background_stop) = spawn_background(&app);
        Application {
            app,
            socket,
            local_addr,
            listen_when_ready,
            ops: None,
            writers,
            writers_stop,
            background,
            background_stop,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Logs the periodic stats line (`stats_interval_ms`) until shutdown; with
    /// `to_supervisor`, also tells the supervisor this worker's socket count.
    pub(crate) fn spawn_stats_reporter(&self, to_supervisor: bool) {
        let app = self.app.clone();
        let every = Duration::from_millis(app.config.stats_interval_ms);
        let stop = app.shutdown.clone();
        crate::ops::stats::spawn_reporter(every, stop, to_supervisor, move || StatsLine {
            connections: app.open_sockets(),
            users_online: app.hub.users_online(),
            pool: app.db.pool_status(),
            listener_up: app.listener.is_up(),
        });
    }

    /// The worker's shared state (tests inspect it; the server itself does not need it).
    pub fn app(&self) -> App {
        self.app.clone()
    }

    /// Serves until `shutdown` resolves, then drains: stops accepting, closes sockets with
    /// 1001 after their in-flight requests finish, lets the writers commit what is queued,
    /// and closes the pool, all within `shutdown_timeout_ms`.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let Application {
            app,
            socket,
            local_addr,
            listen_when_ready,
            ops,
            writers,
            writers_stop,
            background,
            background_stop,
        } = self;
        let router = crate::edge::http::router(app.clone());
        let token = app.shutdown.clone();
        let deadline = Duration::from_millis(app.config.shutdown_timeout_ms);
        let mut shutdown = Box::pin(shutdown);
        if listen_when_ready {
            wait_until_ready(&app, &mut shutdown, &token).await;
        }
        let Some(listener) = start_listening(socket, local_addr, &token) else {
            return;
        };
        tracing::info!(addr = %local_addr, worker_id = %app.worker_id, "pgchat listening");
        crate::ops::systemd::announce_when_ready(app.listener.clone(), local_addr, token.clone());
        stop_on(shutdown, token.clone());
        let limits = crate::edge::server::Limits {
            header_read_timeout: Duration::from_millis(app.config.header_read_timeout_ms),
            max_handshakes: app.config.max_handshakes,
        };
        let ops = ops.and_then(|(socket, addr)| {
            let listener = start_listening(socket, addr, &token)?;
            tracing::info!(%addr, "serving /health and /metrics here only (ops_listen)");
            Some(tokio::spawn(crate::edge::server::serve(
                listener,
                crate::edge::http::ops_router(app.clone()),
                limits,
                token.clone(),
                deadline.mul_f32(0.2),
            )))
        });
        crate::edge::server::serve(
            listener,
            router,
            limits,
            token.clone(),
            deadline.mul_f32(0.2),
        )
        .await;
        if let Some(ops) = ops {
            let _ = ops.await;
        }
        drain(
            &app,
            deadline,
            (writers, writers_stop),
            (background, background_stop),
        )
        .await;
    }
}

/// Unique across the cluster: the host, the process, and which of the process's
/// applications (tests run several in one process, as workers of one database).
fn next_worker_id() -> WorkerId {
    static BUILT: AtomicUsize = AtomicUsize::new(0);
    let host = crate::cluster::presence::hostname();
    WorkerId::new(match BUILT.fetch_add(1, Ordering::Relaxed) {
        0 => format!("{host}-{}", std::process::id()),
        n => format!("{host}-{}-{n}", std::process::id()),
    })
}

/// The handles the worker shares, from its parts.
#[allow(clippy::too_many_arguments)]
fn shared_state(
    config: Config,
    auth: Authenticator,
    db: Database,
    hub: Arc<Hub>,
    cache: Arc<ConversationCache>,
    writer: Writer,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    worker_id: WorkerId,
    seal: Arc<NoticeSeal>,
) -> App {
    let presence = Presence::new(
        db.clone(),
        PresenceSettings {
            grace: Duration::from_millis(config.presence_grace_ms),
            max_users_per_worker: config.presence_max_users_per_worker,
        },
        &worker_id,
        seal.clone(),
        metrics.clone(),
    );
    // One bucket per recently active user; as many as sockets allowed is plenty.
    let rate_limits = UserLimits::new(
        // Every user with a socket here, and as many again on the HTTP API.
        config.max_connections.saturating_mul(2),
        config.rate_limit_per_sec,
        config.rate_limit_burst,
    );
    let health = HealthProbe::new(Duration::from_millis(config.health_cache_ms));
    let budget = Budget::new(config.outbound_budget_bytes, config.outbound_user_bytes);
    let sizes = Sizes::of(&config);
    let sign_ins = SignInLimits::new(config.dev_sign_in_per_minute);
    App::new(AppInner {
        auth,
        config,
        db,
        hub,
        cache,
        presence,
        writer,
        metrics,
        shutdown,
        sessions: TaskTracker::new(),
        worker_id,
        seal,
        started: Instant::now(),
        open_sockets: AtomicUsize::new(0),
        next_session: AtomicU64::new(1),
        listener: Arc::new(ListenerState::default()),
        health,
        rate_limits,
        sign_ins,
        cpu: CpuMeter::default(),
        budget,
        sizes,
    })
}

/// Starts the presence recorder and the notification listener. Presence stops first (its
/// last act writes to the database), then the listener, whose connection carries this
/// worker's queries when its share is one.
fn spawn_background(app: &App) -> (TaskTracker, CancellationToken) {
    let background = TaskTracker::new();
    let background_stop = CancellationToken::new();
    let presence_stop = background_stop.child_token();
    let listener_stop = CancellationToken::new();
    let presence_done = background.spawn(app.presence.clone().run(presence_stop));
    let of = app.clone();
    background.spawn(crate::cluster::listener::supervise(
        move || listener_of(&of),
        app.listener.clone(),
        listener_stop.clone(),
    ));
    background.spawn(async move {
        let _ = presence_done.await;
        listener_stop.cancel();
    });
    (background, background_stop)
}

/// Waits until the notification listener is up (or shutdown comes first, which cancels
/// `token`).
async fn wait_until_ready(
    app: &App,
    shutdown: &mut std::pin::Pin<Box<impl Future<Output = ()>>>,
    token: &CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.as_mut() => token.cancel(),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        if app.listener.is_up() || token.is_cancelled() {
            break;
        }
    }
}

/// Listens on the bound socket; on failure logs it and cancels `token`.
fn start_listening(
    socket: socket2::Socket,
    local_addr: SocketAddr,
    token: &CancellationToken,
) -> Option<TcpListener> {
    match socket
        .listen(1024)
        .and_then(|()| TcpListener::from_std(socket.into()))
    {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(error = %e, addr = %local_addr, "cannot listen");
            token.cancel();
            None
        }
    }
}

/// Stops on the signal, or when something else already cancelled the token (then
/// `shutdown` may have completed while waiting to be ready and must not be polled again).
fn stop_on(
    shutdown: std::pin::Pin<Box<impl Future<Output = ()> + Send + 'static>>,
    token: CancellationToken,
) {
    tokio::spawn(async move {
        tokio::select! {
            biased;
            _ = token.cancelled() => {}
            _ = shutdown => {}
        }
        tracing::info!("shutting down: no new connections; draining sessions");
        crate::ops::systemd::stopping();
        token.cancel();
    });
}

/// After serving: the sessions within 80% of `deadline`, then the writers' queued
/// commits, then presence and the listener, then the pool, all within `deadline`.
async fn drain(
    app: &App,
    deadline: Duration,
    (writers, writers_stop): (TaskTracker, CancellationToken),
    (background, background_stop): (TaskTracker, CancellationToken),
) {
    let started = Instant::now();
    app.sessions.close();
    if tokio::time::timeout(deadline.mul_f32(0.8), app.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = app.sessions.len(),
            "sessions did not drain in time; closing the rest"
        );
    }
    writers_stop.cancel();
    writers.close();
    let left = deadline.saturating_sub(started.elapsed());
    if tokio::time::timeout(left, writers.wait()).await.is_err() {
        tracing::warn!("writers did not finish in time");
    }
    background_stop.cancel();
    background.close();
    let left = deadline.saturating_sub(started.elapsed());
    if tokio::time::timeout(left, background.wait()).await.is_err() {
        tracing::warn!("listener or presence did not finish in time");
    }
    app.db.close();
    tracing::info!("pgchat stopped");
}

/// Deletes events older than `event_retention`, hourly (or more often for short ones), in
/// bounded batches with a pause between them while a backlog lasts; one worker of the
/// cluster at a time (the others find the advisory lock taken and wait for their turn).
fn spawn_pruner(db: Database, config: &Config, shutdown: CancellationToken) {
    let retention = config.event_retention.duration();
    let every = (retention / 24).clamp(Duration::from_secs(10), Duration::from_secs(3600));
    let batch = config.prune_batch as i32;
    let pause = Duration::from_millis(config.prune_pause_ms);
    tokio::spawn(async move {
        let mut wait = every;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = every;
            match crate::read::store::prune_events(&db, retention, batch).await {
                Ok(Some(n)) if n >= batch as u64 => {
                    tracing::debug!(deleted = n, "pruned events past retention; more to go");
                    wait = pause;
                }
                Ok(Some(0)) | Ok(None) => {}
                Ok(Some(n)) => tracing::info!(deleted = n, "pruned events past retention"),
                Err(e) => tracing::warn!(error = %e, "pruning events failed"),
            }
        }
    });
}

/// The notification listener's handles, taken from the worker's.
fn listener_of(app: &App) -> Listener {
    let config = &app.config;
    Listener {
        db: app.db.clone(),
        hub: app.hub.clone(),
        cache: app.cache.clone(),
        presence: app.presence.clone(),
        metrics: app.metrics.clone(),
        state: app.listener.clone(),
        worker_id: app.worker_id.clone(),
        seal: app.seal.clone(),
        replays: Default::default(),
        pointers: Default::default(),
        settings: listener::Settings {
            queue: config.listener_queue,
            probe_interval: Duration::from_millis(config.listener_probe_interval_ms),
            probe_timeout: Duration::from_millis(config.listener_probe_timeout_ms),
            selftest_timeout: Duration::from_millis(config.listener_selftest_timeout_ms),
        },
    }
}

/// Fails when `host:port` cannot be bound without SO_REUSEPORT: another program holds
/// it, or another `pgchat serve` whose workers share it (with SO_REUSEPORT they would
/// let a second deployment join silently, doubling the database connections).
pub(crate) fn check_port(host: &str, port: u16) -> Result<(), StartupError> {
    bind(host, port, false)
        .map(drop)
        .map_err(|e| bind_error(host, port, &e))
}

/// A bind failure as one line that says what to do.
fn bind_error(host: &str, port: u16, e: &std::io::Error) -> StartupError {
    StartupError::Bind(match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "cannot listen on {host}:{port}: the port is in use (by another pgchat serve, or \
             another program): stop that one or set PORT to a free port"
        ),
        _ => format!("cannot listen on {host}:{port}: {e} (check HOST and PORT)"),
    })
}

/// Binds `host:port` (not yet listening), with SO_REUSEPORT when several workers share
/// the port (the kernel then spreads connections over those that listen).
/// Binds `ops_listen` (an `IP:port` its validation checked), its port moved by `offset`.
fn bind_ops(
    at: &str,
    offset: u16,
    reuse_port: bool,
) -> Result<(socket2::Socket, SocketAddr), StartupError> {
    let mut addr: SocketAddr = at
        .parse()
        .map_err(|_| StartupError::Bind(format!("ops_listen: {at:?} is not IP:port")))?;
    if addr.port() != 0 {
        addr.set_port(addr.port().saturating_add(offset));
    }
    let socket = bind(&addr.ip().to_string(), addr.port(), reuse_port)
        .map_err(|e| StartupError::Bind(format!("ops_listen: cannot bind {addr}: {e}")))?;
    let bound = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(addr);
    Ok((socket, bound))
}

fn bind(host: &str, port: u16, reuse_port: bool) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
        .next()
        .ok_or_else(|| std::io::Error::other("the host resolves to no address"))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}
