//! One WebSocket session: reads requests, answers them in order, and streams the user's
//! durable events from its own cursor.
//!
//! Two tasks per socket, as in axum's chat example: this one owns the read half and all
//! state; a small writer task owns the write half and drains the bounded outbound queue.
//! Requests run concurrently (up to `max_inflight_requests`, so a client may pipeline
//! sends) but their replies leave in request order (`FuturesOrdered`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::future::BoxFuture;
use futures_util::sink::SinkExt;
use futures_util::stream::{FuturesOrdered, SplitSink, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::cluster::hub::Subscription;
use crate::foundation::auth::Identity;
use crate::foundation::budget::{Account, Charge, Short};
use crate::foundation::error::{ApiError, Code};
use crate::foundation::frames::results::{self, Answer};
use crate::foundation::frames::{self, PresenceEntry, PresenceStatus};
use crate::foundation::protocol::{
    rfc3339, BearerToken, ConversationId, Envelope, TypingState, UserId,
};
use crate::read::store;
use crate::requests::{self, Request};
use crate::state::App;

/// Close codes of PROTOCOL.md.
pub(crate) mod close {
    pub(crate) const GOING_AWAY: u16 = 1001;
    pub(crate) const PROTOCOL_ERROR: u16 = 1002;
    pub(crate) const INVALID_DATA: u16 = 1007;
    pub(crate) const POLICY: u16 = 1008;
    pub(crate) const TOO_BIG: u16 = 1009;
    pub(crate) const INTERNAL: u16 = 1011;
    pub(crate) const TRY_AGAIN_LATER: u16 = 1013;
}

/// Events read from the database per round trip when the feed cannot serve them, at most,
/// and the bytes such a page is charged (it holds fewer events when they are long).
const REPLAY_PAGE: usize = 500;
const REPLAY_PAGE_BYTES: usize = 2 << 20;
/// What a byte of a body (or state) read from the table may cost while it is read,
/// decoded and encoded (see foundation::budget::message_bytes).
const EXPANSION: usize = 14;
/// Conversations one session may be typing in at once.
const MAX_TYPING: usize = 32;

/// Why a session ends, and so which close frame (if any) it sends.
#[derive(Debug)]
enum End {
    ClientGone,
    Shutdown,
    Expired,
    TooBig,
    /// A text frame that is not UTF-8.
    NotUtf8,
    /// A frame sequence RFC 6455 forbids (a stray continuation, a reserved opcode, …).
    Violation,
    Overflow,
    /// Events after the cursor were pruned by retention before this session sent them.
    Pruned,
    Dead,
    Internal,
    /// The user's share of the worker's budget for replies and replays, or the worker's
    /// budget, had no room for a page of events read from the table: not an end either;
    /// the session tries again like [`End::DbUnavailable`].
    Busy(Short),
    /// The database could not be reached (or no pooled connection was free in time) while
    /// reading this session's events: not an end. The session stays open and tries again
    /// ([`CATCH_UP_RETRY`]); its events wait in the stream.
    DbUnavailable,
}

/// When to send `token_expiring` for a token that expires at `expires`.
fn notice_time(expires: Instant, ahead: Duration) -> Instant {
    expires.checked_sub(ahead).unwrap_or_else(Instant::now)
}

/// How soon a session whose events could not be read tries again.
const CATCH_UP_RETRY: Duration = Duration::from_millis(250);

/// What a finished request hands back to the loop, in request order.
enum Reply {
    /// The reply, and the bytes it holds of the user's share (given back once the socket
    /// has taken it).
    Frame(String, Option<Charge>),
    /// These need the session's own state (cursor, typing timers, watch list), so the loop
    /// itself runs them when their turn comes.
    Resume { envelope: Envelope, after: i64 },
    Typing {
        envelope: Envelope,
        conversation: ConversationId,
        state: TypingState,
    },
    Presence {
        envelope: Envelope,
        users: Vec<UserId>,
    },
}

/// The bounded queue to the writer task: at most `outbound_max_frames` frames and
/// `outbound_max_bytes` bytes of live events. A live event that finds it full means a slow
/// consumer: close 1013; its durable events stay in the stream for `resume`.
///
/// Replies and replays are different: the client asked for them, so they wait for room
/// (flow control) instead of overflowing, for at most `outbound_stall_ms` of the client
/// reading nothing. A single reply larger than the byte limit (a long `history` page) waits
/// until the queue is empty and then goes alone; its bytes are "oversized" and do not count
/// against the live events queued behind it, so it cannot make them overflow either.
struct Outbox {
    tx: mpsc::Sender<Queued>,
    room: Arc<Room>,
    max_bytes: usize,
    stall: Duration,
    /// Skips the queue: 1008/1009/1011/1013 must go out even when the queue is full.
    close_now: Option<oneshot::Sender<CloseFrame>>,
}

/// A frame on its way to the socket, with the bytes it holds of the user's share, if it
/// was made for this session alone (a reply, a replayed event).
type Queued = (Message, Option<Charge>);

/// The outbound queue's byte accounting, shared with the writer task.
struct Room {
    /// Bytes queued, oversized replies included.
    bytes: AtomicUsize,
    /// Bytes of queued frames larger than `max_bytes` (at most one at a time).
    oversized: AtomicUsize,
    /// Signalled by the writer each time a frame leaves the queue.
    drained: tokio::sync::Notify,
}

impl Room {
    /// Bytes that count against the limit.
    fn counted(&self) -> usize {
        self.bytes
            .load(Ordering::Acquire)
            .saturating_sub(self.oversized.load(Ordering::Acquire))
    }

    /// The writer took a frame of `len` bytes off the queue.
    fn sent(&self, len: usize, max_bytes: usize) {
        if len > max_bytes {
            self.oversized.fetch_sub(len, Ordering::AcqRel);
        }
        self.bytes.fetch_sub(len, Ordering::AcqRel);
        self.drained.notify_one();
    }
}

impl Outbox {
    /// Queues a live frame, or reports overflow.
    fn push(&self, text: Utf8Bytes) -> Result<(), End> {
        let len = text.len();
        if self.room.counted() + len > self.max_bytes {
            return Err(End::Overflow);
        }
        self.room.bytes.fetch_add(len, Ordering::AcqRel);
        self.tx
            .try_send((Message::Text(text), None))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => End::Overflow,
                mpsc::error::TrySendError::Closed(_) => End::ClientGone,
            })
    }

    /// Queues a reply or a replayed event, waiting for room as long as the client keeps
    /// reading: overflow only after `stall` without progress.
    async fn push_wait(&self, text: Utf8Bytes, charge: Option<Charge>) -> Result<(), End> {
        let len = text.len();
        let oversized = len > self.max_bytes;
        let mut deadline = Instant::now() + self.stall;
        let mut last = self.room.bytes.load(Ordering::Acquire);
        loop {
            let fits = if oversized {
                self.room.oversized.load(Ordering::Acquire) == 0
            } else {
                self.room.counted() + len <= self.max_bytes
            };
            if fits {
                break;
            }
            if tokio::time::timeout_at(deadline, self.room.drained.notified())
                .await
                .is_err()
            {
                return Err(End::Overflow);
            }
            let now = self.room.bytes.load(Ordering::Acquire);
            if now < last {
                deadline = Instant::now() + self.stall;
            }
            last = now;
        }
        if oversized {
            self.room.oversized.fetch_add(len, Ordering::AcqRel);
        }
        self.room.bytes.fetch_add(len, Ordering::AcqRel);
        match tokio::time::timeout_at(deadline, self.tx.send((Message::Text(text), charge))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::ClientGone),
            Err(_) => Err(End::Overflow),
        }
    }
}

/// Runs a session until the client leaves, the token expires or the server shuts down.
/// `after`: the `?after=N` it starts from (events after N first, in order), else `head`.
pub(crate) async fn run(
    socket: WebSocket,
    app: App,
    identity: Identity,
    sub: Subscription,
    head: i64,
    after: Option<i64>,
) {
    let config = &app.config;
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel(config.outbound_max_frames);
    let (close_tx, close_rx) = oneshot::channel();
    let room = Arc::new(Room {
        bytes: AtomicUsize::new(0),
        oversized: AtomicUsize::new(0),
        drained: tokio::sync::Notify::new(),
    });
    let max_bytes = config.outbound_max_bytes;
    let writer = tokio::spawn(write_loop(sink, rx, close_rx, room.clone(), max_bytes));
    let mut session = Session {
        outbox: Outbox {
            tx,
            room,
            max_bytes,
            stall: Duration::from_millis(config.outbound_stall_ms),
            close_now: Some(close_tx),
        },
        app: app.clone(),
        account: app.budget.account(identity.user.as_str()),
        charged: None,
        replay_to: None,
        read_paused_until: None,
        identity,
        sub,
        cursor: head,
        stalled: false,
        pending: FuturesOrdered::new(),
        typing: HashMap::new(),
        watching: HashSet::new(),
        catch_up_at: None,
        token_replaced: false,
    };
    let user = session.identity.user.clone();
    let _online = Online::new(&app, &user);
    let end = session.serve(&mut stream, head, after).await;
    tracing::debug!(user = %user, ?end, "session ends");
    session.close(end).await;
    session.stop_typing_everywhere().await;
    app.presence
        .unsubscribe(session.sub.session, session.watching.drain());
    // Keep the priority-close sender alive until the writer is done: a dropped sender
    // would wake the writer as if a close were requested, and cut off queued frames.
    let close_now = session.outbox.close_now.take();
    drop(session);
    // The writer ends once it has sent what is queued (or the close frame).
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    drop(close_now);
}

/// A session counted as open and its user as present, undone on drop: even if the
/// session's task panics, the gauge and the presence come back down.
struct Online {
    app: App,
    user: UserId,
}

impl Online {
    fn new(app: &App, user: &UserId) -> Online {
        app.metrics.connections.inc();
        app.metrics.connections_total.inc();
        app.presence.opened(user);
        Online {
            app: app.clone(),
            user: user.clone(),
        }
    }
}

impl Drop for Online {
    fn drop(&mut self) {
        self.app.presence.closed(&self.user);
        self.app.metrics.connections.dec();
    }
}

struct Session {
    app: App,
    identity: Identity,
    /// The user's share of the worker's budget for replies and replays.
    account: Arc<Account>,
    /// Signalled when the last request spawned holds its charge (see `run_request`).
    charged: Option<oneshot::Receiver<()>>,
    /// A replay put off (the database or the budget had no room) that catch-up finishes
    /// first: up to this seq, waiting for the client to read.
    replay_to: Option<i64>,
    sub: Subscription,
    /// The last seq this session has queued for its client.
    cursor: i64,
    /// A resume was answered `resync_required`: no events go out until the next resume
    /// succeeds (the client is fetching its state afresh).
    stalled: bool,
    pending: FuturesOrdered<BoxFuture<'static, Reply>>,
    outbox: Outbox,
    /// Reading stops until then: the client's pings and pongs ran out of rate.
    read_paused_until: Option<Instant>,
    /// Conversations this session is typing in, with when that ends by itself.
    typing: HashMap<ConversationId, Instant>,
    /// Users this session watches the presence of.
    watching: HashSet<UserId>,
    /// When to try again to queue events the database could not give us (see
    /// [`End::DbUnavailable`]).
    catch_up_at: Option<Instant>,
    /// An `auth` request replaced the token: the expiry timers must be set afresh.
    token_replaced: bool,
}

impl Session {
    async fn serve(
        &mut self,
        stream: &mut futures_util::stream::SplitStream<WebSocket>,
        head: i64,
        after: Option<i64>,
    ) -> End {
        let hello = frames::encode(&frames::Hello {
            user: self.identity.user.as_str(),
            session: random_id(),
            worker: self.app.worker_id.as_str(),
            head,
            server_time: rfc3339(chrono::Utc::now()),
            after,
        });
        if let Err(end) = self.outbox.push(hello.into()) {
            return end;
        }
        if let Some(after) = after {
            if let Err(end) = self.start_after(after, head).await {
                return end;
            }
        }
        let shutdown = self.app.shutdown.clone();
        // The close at expiry (1008), and the `token_expiring` notice before it: once per
        // token, `token_expiring_notice_ms` ahead (at once if less is left).
        let notice_ahead = Duration::from_millis(self.app.config.token_expiring_notice_ms);
        let expires = Instant::now() + self.identity.remaining();
        let expiry = tokio::time::sleep_until(expires);
        let notice = tokio::time::sleep_until(notice_time(expires, notice_ahead));
        let mut noticed = false;
        tokio::pin!(expiry, notice);
        let period = Duration::from_millis(self.app.config.ping_interval_ms);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut unanswered_pings = 0u32;
        let max_inflight = self.app.config.max_inflight_requests;
        loop {
            let result = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Err(End::Shutdown),
                _ = &mut expiry => Err(End::Expired),
                _ = &mut notice, if !noticed => {
                    noticed = true;
                    self.notice_expiry()
                }
                Some(reply) = self.pending.next(), if !self.pending.is_empty() => {
                    self.on_reply(reply).await
                }
                changed = self.sub.wake.changed() => match changed {
                    Ok(()) => self.catch_up().await,
                    Err(_) => Err(End::Internal),
                },
                _ = sleep_until_some(self.catch_up_at), if self.catch_up_at.is_some() => {
                    self.catch_up().await
                }
                Some(frame) = self.sub.ephemeral.recv() => self.outbox.push(frame),
                _ = sleep_until_first(&self.typing), if !self.typing.is_empty() => {
                    self.expire_typing().await;
                    Ok(())
                }
                frame = stream.next(), if self.pending.len() < max_inflight && self.read_paused_until.is_none() => {
                    unanswered_pings = 0;
                    self.on_frame(frame)
                }
                _ = sleep_until_some(self.read_paused_until), if self.read_paused_until.is_some() => {
                    self.read_paused_until = None;
                    Ok(())
                }
                _ = ping.tick() => {
                    if unanswered_pings >= 2 {
                        Err(End::Dead)
                    } else {
                        unanswered_pings += 1;
                        self.outbox.tx.try_send((Message::Ping(Default::default()), None)).map_err(|_| End::Overflow)
                    }
                }
            };
            if let Err(end) = result {
                return end;
            }
            if std::mem::take(&mut self.token_replaced) {
                let expires = Instant::now() + self.identity.remaining();
                expiry.as_mut().reset(expires);
                notice.as_mut().reset(notice_time(expires, notice_ahead));
                noticed = false;
            }
        }
    }

    /// `?after=N`: the session starts from N, replaying every event after it (waiting for
    /// the client to read, as `resume` does) before anything live, so that the client
    /// sees its stream in order from N. N older than the retained stream (or beyond the
    /// head) cannot be continued: the first frame after `hello` is `resync_required` (no
    /// `ref`), and no events go out until a `resume` succeeds.
    async fn start_after(&mut self, after: i64, head: i64) -> Result<(), End> {
        let refuse = |session: &mut Session, e: ApiError| {
            session.stalled = true;
            let frame = frames::error_frame(&Envelope::default(), &e);
            session.outbox.push(frame.into())
        };
        let pruned = match store::stream_bounds(&self.app.db, &self.identity.user).await {
            Ok((_, pruned)) => pruned,
            // The database is busy or away for a moment: start the replay later (a prune
            // past `after` is then met as a hole the table explains).
            Err(e) if e.is_unavailable() => {
                self.cursor = after;
                self.replay_to = Some(head);
                self.catch_up_at = Some(Instant::now() + CATCH_UP_RETRY);
                return Ok(());
            }
            Err(e) => return Err(unreadable(e)),
        };
        if after < pruned {
            return refuse(self, resync_required(after));
        }
        if after > head {
            let e = ApiError::new(
                Code::ResyncRequired,
                format!(
                    "after ({after}) is beyond your stream's head ({head}): this server's \
                     stream is not the one you saw; fetch conversations and history afresh, \
                     then resume from head"
                ),
            );
            return refuse(self, e);
        }
        self.cursor = after;
        match self.advance(head, true).await {
            Ok(()) => Ok(()),
            Err(End::Pruned) => refuse(self, resync_required(self.cursor)),
            Err(End::DbUnavailable | End::Busy(_)) => {
                self.replay_to = Some(head);
                // Live events after the cursor still come once it can read them.
                self.catch_up_at = Some(Instant::now() + CATCH_UP_RETRY);
                Ok(())
            }
            Err(end) => Err(end),
        }
    }

    /// `{"type":"token_expiring","expires_in_ms":…}`: the time left until the 1008 close,
    /// so that the client can send `auth` with a fresh token first.
    fn notice_expiry(&mut self) -> Result<(), End> {
        let left = self.identity.remaining().as_millis() as u64;
        let frame = frames::encode(&frames::TokenExpiring {
            expires_in_ms: left,
        });
        self.outbox.push(frame.into())
    }

    /// `auth`: a newer token for the same user replaces the session's, so that its expiry
    /// (and display name) are the new token's. A bad token changes nothing.
    fn reauthenticate(&mut self, envelope: Envelope, token: &BearerToken) {
        let identity = match self.app.auth.verify(token.as_str()) {
            Ok(identity) => identity,
            Err(e) => return self.answer(envelope, Err(e)),
        };
        if identity.user != self.identity.user {
            let e = ApiError::new(
                Code::Forbidden,
                format!(
                    "the token is for user {:?}, this socket is {:?}'s: connect a new socket for another user",
                    identity.user.as_str(),
                    self.identity.user.as_str()
                ),
            );
            return self.answer(envelope, Err(e));
        }
        let renamed = identity.name.is_some() && identity.name != self.identity.name;
        // The same expiry (the same token sent again, as a client whose token source has
        // nothing newer yet would): the notice already sent stands, and is not repeated.
        self.token_replaced = identity.expires_at != self.identity.expires_at;
        self.identity = identity;
        self.app.metrics.token_refreshes.inc();
        if !renamed {
            return self.answer(envelope, Ok(Answer::Empty {}));
        }
        // The user's display name follows the token, as at connect.
        let app = self.app.clone();
        let user = self.identity.user.clone();
        let name = self.identity.name.clone();
        // A task of its own, like every request that reads the database: it is driven,
        // and its pooled connection given back, even while the session waits to write.
        let (task_app, task_envelope) = (app.clone(), envelope.clone());
        let task = Task(tokio::spawn(async move {
            let result = store::touch_user(&task_app.db, &user, name.as_deref())
                .await
                .map(|_| Answer::Empty {})
                .map_err(ApiError::from);
            reply_frame(&task_app, &task_envelope, result)
        }));
        self.pending.push_back(Box::pin(async move {
            let frame = task.await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "a request's task failed");
                reply_frame(&app, &envelope, Err(ApiError::internal()))
            });
            Reply::Frame(frame, None)
        }));
    }

    fn on_frame(&mut self, frame: Option<Result<Message, axum::Error>>) -> Result<(), End> {
        let text = match frame {
            None | Some(Ok(Message::Close(_))) => return Err(End::ClientGone),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                let e = ApiError::bad_request("binary frames are not supported: send JSON text");
                self.answer(Envelope::default(), Err(e));
                return Ok(());
            }
            // Control frames cost a token too (tungstenite has already queued the pong):
            // past the limit, stop reading until the bucket has one again.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                if let Err(retry_after_ms) = self.app.rate_limits.take(self.identity.user.as_str())
                {
                    self.app.metrics.rate_limited.inc();
                    self.read_paused_until =
                        Some(Instant::now() + Duration::from_millis(retry_after_ms));
                }
                return Ok(());
            }
            Some(Err(e)) => return Err(read_failure(e)),
        };
        let app = &self.app;
        app.metrics.requests.inc();
        let (envelope, request) = Request::parse(text.as_str(), app.limits());
        if let Err(retry_after_ms) = app.rate_limits.take(self.identity.user.as_str()) {
            let e = self
                .app
                .rate_limits
                .refusal(&self.app.metrics, retry_after_ms);
            self.answer(envelope, Err(e));
            return Ok(());
        }
        match request {
            Err(e) => self.answer(envelope, Err(e)),
            Ok(Request::Resume { after }) => self
                .pending
                .push_back(Box::pin(async move { Reply::Resume { envelope, after } })),
            Ok(Request::Typing {
                conversation,
                state,
            }) => self.pending.push_back(Box::pin(async move {
                Reply::Typing {
                    envelope,
                    conversation,
                    state,
                }
            })),
            Ok(Request::PresenceSubscribe { users }) => self
                .pending
                .push_back(Box::pin(async move { Reply::Presence { envelope, users } })),
            Ok(Request::Ping) => self.answer(envelope, Ok(Answer::Empty {})),
            Ok(Request::Auth { token }) => self.reauthenticate(envelope, &token),
            Ok(request) => {
                // Charged in request order (see run_request), each after the one before.
                let (charged, next) = oneshot::channel();
                let turn = Turn {
                    after: self.charged.replace(next),
                    done: charged,
                };
                let task = Task(tokio::spawn(run_request(
                    app.clone(),
                    self.account.clone(),
                    self.identity.user.clone(),
                    envelope.clone(),
                    request,
                    turn,
                )));
                let app = app.clone();
                self.pending.push_back(Box::pin(async move {
                    match task.await {
                        Ok((frame, charge)) => Reply::Frame(frame, charge),
                        Err(e) => {
                            tracing::error!(error = %e, "a request's task failed");
                            let e = ApiError::new(Code::Internal, "internal error");
                            Reply::Frame(reply_frame(&app, &envelope, Err(e)), None)
                        }
                    }
                }));
            }
        }
        Ok(())
    }

    /// Queues an immediate answer behind any earlier pending ones.
    fn answer(&mut self, envelope: Envelope, result: Result<Answer, ApiError>) {
        let frame = reply_frame(&self.app, &envelope, result);
        self.pending
            .push_back(Box::pin(async move { Reply::Frame(frame, None) }));
    }

    async fn on_reply(&mut self, reply: Reply) -> Result<(), End> {
        match reply {
            Reply::Frame(f, charge) => self.outbox.push_wait(f.into(), charge).await,
            Reply::Resume { envelope, after } => {
                let result = self.resume(after).await?;
                let frame = reply_frame(&self.app, &envelope, result);
                self.outbox.push_wait(frame.into(), None).await
            }
            Reply::Typing {
                envelope,
                conversation,
                state,
            } => {
                let result = self.typing(conversation, state).await;
                let frame = reply_frame(&self.app, &envelope, result.map(|()| Answer::Empty {}));
                self.outbox.push_wait(frame.into(), None).await
            }
            Reply::Presence { envelope, users } => {
                let result = self.watch(users).await;
                let frame = reply_frame(&self.app, &envelope, result);
                self.outbox.push_wait(frame.into(), None).await
            }
        }
    }

    /// `typing`: tells the other members on a change of state only (a repeated `start`
    /// just extends the timer), so a client refreshing every second costs nothing.
    async fn typing(
        &mut self,
        conversation: ConversationId,
        state: TypingState,
    ) -> Result<(), ApiError> {
        let timeout = Duration::from_millis(self.app.config.typing_timeout_ms);
        let was_typing = self.typing.contains_key(&conversation);
        match state {
            TypingState::Start if was_typing => {
                self.typing.insert(conversation, Instant::now() + timeout);
                Ok(())
            }
            TypingState::Start => {
                if self.typing.len() >= MAX_TYPING {
                    let mut e = ApiError::new(
                        Code::RateLimited,
                        format!("typing in more than {MAX_TYPING} conversations at once"),
                    );
                    e.retry_after_ms = Some(self.app.config.typing_timeout_ms);
                    return Err(e);
                }
                requests::typing::apply(
                    self.app.services(),
                    &self.identity.user,
                    &conversation,
                    state,
                )
                .await?;
                self.typing.insert(conversation, Instant::now() + timeout);
                Ok(())
            }
            TypingState::Stop if was_typing => {
                self.typing.remove(&conversation);
                requests::typing::apply(
                    self.app.services(),
                    &self.identity.user,
                    &conversation,
                    state,
                )
                .await
            }
            // Not typing there: only check that the request was allowed.
            TypingState::Stop => {
                requests::typing::allowed(self.app.services(), &self.identity.user, &conversation)
                    .await
            }
        }
    }

    /// Ends the typing whose time is up, telling the other members.
    async fn expire_typing(&mut self) {
        let now = Instant::now();
        let expired: Vec<ConversationId> = self
            .typing
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for c in expired {
            self.typing.remove(&c);
            announce_stop(&self.app, &self.identity.user, &c).await;
        }
    }

    /// On close: whoever saw this session typing sees it stop.
    async fn stop_typing_everywhere(&mut self) {
        for (c, _) in std::mem::take(&mut self.typing) {
            announce_stop(&self.app, &self.identity.user, &c).await;
        }
    }

    /// `presence_subscribe`: watch `users` (adding to what this session already watches).
    /// Unless presence is open, only users who share a conversation with this one (checked
    /// now) are watched; the others are reported `unknown` and never announced.
    async fn watch(&mut self, requested: Vec<UserId>) -> Result<Answer, ApiError> {
        let visible: HashSet<String> = if self.app.config.presence_open {
            requested.iter().map(|u| u.as_str().to_string()).collect()
        } else {
            store::sharing_a_conversation(&self.app.db, &self.identity.user, &requested)
                .await?
                .into_iter()
                .collect()
        };
        let users: Vec<UserId> = requested
            .iter()
            .filter(|u| visible.contains(u.as_str()))
            .cloned()
            .collect();
        let max = self.app.config.max_presence_users;
        let new = users.iter().filter(|u| !self.watching.contains(*u)).count();
        if self.watching.len() + new > max {
            return Err(ApiError::new(
                Code::TooLarge,
                format!(
                    "presence_subscribe: a session may watch at most {max} users; it watches {} and asked for {new} more",
                    self.watching.len()
                ),
            ));
        }
        self.watching.extend(users.iter().cloned());
        let mut snapshot = self
            .app
            .presence
            .subscribe(self.sub.session, &self.sub.ephemeral_tx, &users)
            .await?
            .into_iter();
        // In the order asked, the hidden ones as `unknown`.
        let presence: Vec<PresenceEntry> = requested
            .iter()
            .map(|u| match visible.contains(u.as_str()) {
                true => snapshot
                    .next()
                    .expect("Presence::subscribe answers every user asked, in order"),
                false => PresenceEntry {
                    user: u.as_str().to_string(),
                    status: PresenceStatus::Unknown,
                    last_seen: None,
                },
            })
            .collect();
        Ok(results::Presence { presence }.into())
    }

    /// Replays every event after `after`, then reports the head reached.
    async fn resume(&mut self, after: i64) -> Result<Result<Answer, ApiError>, End> {
        let (head, pruned) = match store::stream_bounds(&self.app.db, &self.identity.user).await {
            Ok(b) => b,
            Err(e) => return Ok(Err(e.into())),
        };
        if after < pruned {
            return Ok(Err(resync_required(after)));
        }
        if after > head {
            return Ok(Err(ApiError::bad_request(format!(
                "resume: after ({after}) is beyond your stream's head ({head})"
            ))));
        }
        self.cursor = after;
        self.stalled = false;
        match self.advance(head, true).await {
            Ok(()) => Ok(Ok(results::Head { head: self.cursor }.into())),
            Err(End::Internal) => Ok(Err(ApiError::unavailable())),
            Err(End::Pruned) => {
                // Pruned while this replay ran: never jump over the gap.
                self.stalled = true;
                Ok(Err(resync_required(self.cursor)))
            }
            Err(End::DbUnavailable) => {
                // The rest still comes, in order, once the database answers.
                self.replay_to = Some(head);
                self.catch_up_at = Some(Instant::now() + CATCH_UP_RETRY);
                Ok(Err(ApiError::unavailable()))
            }
            Err(End::Busy(short)) => {
                self.replay_to = Some(head);
                self.catch_up_at = Some(Instant::now() + CATCH_UP_RETRY);
                Ok(Err(over_budget(&self.app, short)))
            }
            Err(end) => Err(end),
        }
    }

    /// Queues the live events up to the feed's head. A database that cannot be reached
    /// for the events the feed no longer holds delays them, never ends the session: a
    /// restart or failover of PostgreSQL, or a pool busy with a reconnect storm, would
    /// otherwise close every session that is behind at that moment (and send them all
    /// back at once).
    ///
    /// A replay that was put off (`resume` or `?after=` meeting a database or a budget
    /// without room) is finished first, still waiting for the client to read, as a replay
    /// does: only live events are sent without waiting.
    async fn catch_up(&mut self) -> Result<(), End> {
        self.catch_up_at = None;
        let result = match self.replay_to {
            Some(to) => match self.advance(to, true).await {
                Ok(()) => {
                    self.replay_to = None;
                    self.advance(self.sub.feed.head(), false).await
                }
                other => other,
            },
            None => self.advance(self.sub.feed.head(), false).await,
        };
        match result {
            Err(End::DbUnavailable | End::Busy(_)) => {
                self.catch_up_at = Some(Instant::now() + CATCH_UP_RETRY);
                Ok(())
            }
            other => other,
        }
    }

    /// Queues this user's events from the cursor up to at least `target`, from the feed
    /// where it has them and from the table where it does not. `wait`: wait for room in
    /// the outbound queue (replay) instead of treating a full queue as overflow (live).
    ///
    /// Every row read from the table must follow the one before it (`cursor + 1`,
    /// `cursor + 2`, …): a gap ends the page there, so nothing is ever skipped silently.
    /// What stops at a gap is decided by the table (see [`Session::behind`]), never by
    /// `target`, which may come from another worker's notice.
    async fn advance(&mut self, target: i64, wait: bool) -> Result<(), End> {
        while self.cursor < target && !self.stalled {
            let mut frames: Vec<(i64, Option<Utf8Bytes>)> = self
                .sub
                .feed
                .frames_after(self.cursor, 256)
                .into_iter()
                .map(|(seq, f)| (seq, Some(f)))
                .collect();
            // Frames from the feed are shared (not charged); a page read from the table is
            // this session's alone, charged for its worst case before it is read.
            let mut page: Option<Charge> = None;
            if frames.is_empty() {
                let charge = Self::page_charge(&self.app, &self.account, wait).await?;
                // The page may hold as many bytes of bodies as its charge covers once they
                // are read, decoded and encoded (see foundation::budget).
                let raw = (charge.bytes() / EXPANSION).max(1) as i64;
                let rows = store::events_after(
                    &self.app.db,
                    &self.identity.user,
                    self.cursor,
                    REPLAY_PAGE as i64,
                    raw,
                    &self.app.metrics,
                )
                .await
                .map_err(unreadable)?;
                let first = rows.first().map(|(seq, _)| *seq);
                frames = rows
                    .into_iter()
                    .zip(self.cursor + 1..)
                    .take_while(|((seq, _), want)| seq == want)
                    .map(|((seq, f), _)| (seq, f.map(Utf8Bytes::from)))
                    .collect();
                if frames.is_empty() {
                    match self.behind(first, target).await? {
                        true => continue,
                        false => return Ok(()),
                    }
                }
                self.app.metrics.replayed_events.inc_by(frames.len() as u64);
                let mut charge = charge;
                let bytes = frames.iter().flat_map(|(_, f)| f).map(|f| f.len()).sum();
                // The worker's budget has no room for them: dropped, read again later.
                charge.settle(bytes).map_err(End::Busy)?;
                page = Some(charge);
            }
            for (seq, frame) in frames {
                // An event that cannot be shown (see store::events_after) is passed over:
                // it was logged and counted where it was read.
                if let Some(frame) = frame {
                    let charge = page.as_mut().map(|c| c.split_off(frame.len()));
                    if wait {
                        self.outbox.push_wait(frame, charge).await?;
                    } else {
                        self.outbox.push(frame)?;
                    }
                    self.app.metrics.events_delivered.inc();
                }
                self.cursor = seq;
            }
        }
        Ok(())
    }

    /// The charge for one page of events read from the table: as many events' worst case
    /// as the user's share has room for (at least one, at most a page). A replay (`wait`)
    /// waits for room while the client reads, and a client that reads nothing for
    /// `outbound_stall_ms` is a stalled reader (1013); live catch-up does not wait, its
    /// events wait in the stream instead. A full worker budget delays both.
    /// (A free function: the session is not `Sync`, so it is not borrowed across the
    /// await.)
    async fn page_charge(app: &App, account: &Arc<Account>, wait: bool) -> Result<Charge, End> {
        let event = app.sizes.event;
        let room = app.budget.per_user().saturating_sub(account.used());
        let bytes = REPLAY_PAGE_BYTES.max(event).min(room.max(event));
        let charged = if wait {
            let stall = Duration::from_millis(app.config.outbound_stall_ms);
            account.charge(bytes, stall).await
        } else {
            account.try_charge(bytes)
        };
        // No room: the page waits (the session retries), it never ends the session. Whether
        // this client reads is for its outbound queue to tell (outbound_stall_ms); the
        // share may be held by another socket of the same user.
        charged.map_err(End::Busy)
    }

    /// The table has no event right after the cursor (`first`: the next one it has, if
    /// any). Pruned by retention past the cursor: the client must resync (close 1013),
    /// never be skipped over. Nothing at all after the cursor: the target was wrong (a
    /// notice is only a hint), so stop, keeping the cursor (`Ok(false)`). A gap retention
    /// does not explain (an event row deleted by hand): logged, counted, and the cursor
    /// moves to just before `first` (`Ok(true)`), so that the session goes on.
    async fn behind(&mut self, first: Option<i64>, target: i64) -> Result<bool, End> {
        let (head, pruned) = store::stream_bounds(&self.app.db, &self.identity.user)
            .await
            .map_err(unreadable)?;
        if pruned > self.cursor {
            // Committed events always exist up to head, so the next one is missing only
            // if retention pruned it before this session sent it. Jumping over it would
            // lose events silently: the client must resync.
            tracing::info!(user = %self.identity.user, cursor = self.cursor, target, "a session fell behind retention");
            return Err(End::Pruned);
        }
        match first {
            None => {
                tracing::debug!(user = %self.identity.user, cursor = self.cursor, target, head, "no event after the cursor yet");
                Ok(false)
            }
            Some(next) => {
                store::bad_row(
                    &self.app.metrics,
                    "a gap in an event stream",
                    &format!(
                        "{:?} has no events {}..{} (head {head}, pruned through {pruned})",
                        self.identity.user.as_str(),
                        self.cursor + 1,
                        next - 1
                    ),
                );
                self.cursor = next - 1;
                Ok(true)
            }
        }
    }

    /// Sends the close frame that `end` calls for. On shutdown, replies still in flight
    /// are finished first (their commits complete and their acks go out).
    async fn close(&mut self, end: End) {
        let (code, reason) = match end {
            End::ClientGone | End::Dead => return,
            End::Shutdown => {
                while let Some(reply) = self.pending.next().await {
                    if self.on_reply(reply).await.is_err() {
                        break;
                    }
                }
                let frame = CloseFrame {
                    code: close::GOING_AWAY,
                    reason: "server shutting down: reconnect and resume".into(),
                };
                let _ = self.outbox.tx.send((Message::Close(Some(frame)), None)).await;
                return;
            }
            End::Expired => (close::POLICY, "token expired: reconnect with a new token"),
            End::TooBig => (close::TOO_BIG, "frame larger than max_frame_bytes"),
            End::NotUtf8 => (close::INVALID_DATA, "a text frame must be UTF-8"),
            End::Violation => (close::PROTOCOL_ERROR, "WebSocket protocol violation"),
            End::Overflow => {
                self.app.metrics.outbound_overflows.inc();
                (
                    close::TRY_AGAIN_LATER,
                    "outbound queue overflow: reconnect and resume; nothing is lost",
                )
            }
            End::Internal => (close::INTERNAL, "internal error: reconnect and resume"),
            End::Pruned => (
                close::TRY_AGAIN_LATER,
                "events you had not received were pruned: reconnect; resume will answer resync_required",
            ),
            End::DbUnavailable | End::Busy(_) => {
                (close::INTERNAL, "internal error: reconnect and resume")
            }
        };
        if let Some(tx) = self.outbox.close_now.take() {
            let _ = tx.send(CloseFrame {
                code,
                reason: reason.into(),
            });
        }
    }
}

/// A failed read of the session's events, as how the session goes on: a database that
/// cannot be reached delays them ([`End::DbUnavailable`]), anything else closes with 1011.
fn unreadable(e: crate::foundation::error::DbError) -> End {
    tracing::warn!(error = %e, "reading events for a session failed");
    if e.is_unavailable() {
        End::DbUnavailable
    } else {
        End::Internal
    }
}

/// The answer to a resume that cannot continue from where the client is.
fn resync_required(after: i64) -> ApiError {
    ApiError::new(
        Code::ResyncRequired,
        format!(
            "events after seq {after} were pruned before you received them: fetch conversations and history afresh, then resume from head"
        ),
    )
}

/// Why reading the socket failed, as the way the session ends: a frame past the limit,
/// invalid UTF-8 and protocol violations get their close codes (RFC 6455 section 7.4.1),
/// so that a client can tell its own bug from a network failure.
fn read_failure(e: axum::Error) -> End {
    use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
    let e = e.into_inner();
    let end = match e.downcast_ref::<Error>() {
        Some(Error::Capacity(_)) => End::TooBig,
        Some(Error::Utf8(_)) => End::NotUtf8,
        Some(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => End::ClientGone,
        Some(Error::Protocol(_)) => End::Violation,
        _ => End::ClientGone,
    };
    tracing::debug!(error = %e, ?end, "socket read failed");
    end
}

/// Tells `conversation`'s other members that `user` stopped typing (best effort: typing
/// is ephemeral). A free function: the session is not `Sync`, so it is not borrowed
/// across the await.
async fn announce_stop(app: &App, user: &UserId, conversation: &ConversationId) {
    let _ = requests::typing::apply(app.services(), user, conversation, TypingState::Stop).await;
}

/// Runs one request in a task of its own, so that it is driven (and any pooled
/// connection it holds given back) even while the session waits for its client to read
/// an earlier reply. Its reply's worst case is charged to the user's share first; the
/// charge shrinks to the encoded frame and goes with it to the socket.
///
/// The charges of one session's requests are taken in request order: a request waits for
/// the one before it to hold its charge. Replies leave in request order too, so a later
/// request that took the bytes an earlier one waits for would hold them until that earlier
/// one gave up.
async fn run_request(
    app: App,
    account: Arc<Account>,
    user: UserId,
    envelope: Envelope,
    request: Request,
    turn: Turn,
) -> (String, Option<Charge>) {
    if let Some(before) = turn.after {
        // A sender dropped (its request's task ended) counts as done.
        let _ = before.await;
    }
    let wait = Duration::from_millis(app.config.outbound_stall_ms);
    let charged = account.charge(request.reply_bytes(&app.sizes), wait).await;
    let _ = turn.done.send(());
    let mut charge = match charged {
        Ok(c) => c,
        // The refusal itself is a few bytes, like every inline answer.
        Err(short) => {
            return (
                reply_frame(&app, &envelope, Err(over_budget(&app, short))),
                None,
            )
        }
    };
    let owed = request.is_write();
    let result = requests::handle(app.services(), &user, request).await;
    let frame = reply_frame(&app, &envelope, result);
    if owed {
        // A committed write's answer goes whatever the budget (it is small, and owed).
        charge.settle_anyway(frame.len());
    } else if let Err(short) = charge.settle(frame.len()) {
        // The worker holds as many unread replies as it may: this one is dropped.
        return (
            reply_frame(&app, &envelope, Err(over_budget(&app, short))),
            None,
        );
    }
    (frame, Some(charge))
}

/// A request's place in its session's order of charges: the signal of the request before
/// it, and its own for the one after.
struct Turn {
    after: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
}

/// `rate_limited`, for a request whose reply would not fit in memory: the user's share
/// stayed full (their earlier replies are not being read), or the worker's budget is.
pub(crate) fn over_budget(app: &App, short: Short) -> ApiError {
    app.metrics.rate_limited.inc();
    let message = match short {
        Short::User => format!(
            "your replies not yet read hold your share of this worker's memory \
             (outbound_user_bytes, {} bytes): read them, then retry",
            app.config.outbound_user_bytes
        ),
        Short::Worker => "this worker holds as many unread replies as it may \
             (outbound_budget_bytes): retry shortly"
            .to_string(),
    };
    let mut e = ApiError::new(Code::RateLimited, message);
    e.retry_after_ms = Some(1_000);
    e
}

/// A spawned task that is aborted when dropped: a session that ends takes its requests'
/// tasks with it (a send already handed to the writer commits anyway).
struct Task<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for Task<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

fn reply_frame(app: &App, envelope: &Envelope, result: Result<Answer, ApiError>) -> String {
    match result {
        Ok(answer) => frames::ok_frame(envelope, &answer),
        Err(e) => {
            app.metrics.request_errors.inc();
            frames::error_frame(envelope, &e)
        }
    }
}

/// Owns the write half: sends queued frames, flushing when the queue runs dry, and sends
/// a priority close frame as soon as one is requested.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Queued>,
    mut close_now: oneshot::Receiver<CloseFrame>,
    room: Arc<Room>,
    max_bytes: usize,
) {
    // The charges of frames fed without a flush. A feed completes once the frame before
    // the one it hands on is written: the last two fed may still sit in SplitSink's slot
    // and tungstenite's buffer, so their charges are given back only after later feeds, or
    // a flush, have written them out.
    let mut unflushed: std::collections::VecDeque<Option<Charge>> =
        std::collections::VecDeque::with_capacity(3);
    let close = loop {
        tokio::select! {
            biased;
            frame = &mut close_now => break frame.ok(),
            msg = rx.recv() => {
                let Some((msg, charge)) = msg else {
                    let _ = sink.close().await;
                    return;
                };
                let closing = matches!(msg, Message::Close(_));
                let len = match &msg {
                    Message::Text(t) => Some(t.len()),
                    _ => None,
                };
                let flush = rx.is_empty() || closing;
                // A client that stops reading blocks the write; a priority close must still
                // get its turn, so race the two.
                let sent = tokio::select! {
                    biased;
                    frame = &mut close_now => break frame.ok(),
                    sent = async {
                        if flush { sink.send(msg).await } else { sink.feed(msg).await }
                    } => sent,
                };
                // Counted as queued until tungstenite has taken it.
                if let Some(len) = len {
                    room.sent(len, max_bytes);
                }
                // A send completes once everything is written; the bytes held for a reply
                // go only when they are out.
                if flush {
                    unflushed.clear();
                    drop(charge);
                } else {
                    unflushed.push_back(charge);
                    if unflushed.len() > 2 {
                        unflushed.pop_front();
                    }
                }
                if sent.is_err() || closing {
                    return;
                }
            }
        }
    };
    drop(unflushed);
    // What is already buffered goes out first, then the close frame; a client that does
    // not read within the time gets its connection dropped instead.
    if let Some(frame) = close {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

/// Resolves at `until` (never when `None`).
async fn sleep_until_some(until: Option<Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the earliest typing timer is due.
async fn sleep_until_first(typing: &HashMap<ConversationId, Instant>) {
    sleep_until_some(typing.values().min().copied()).await
}

fn random_id() -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("{n:032x}")
}
