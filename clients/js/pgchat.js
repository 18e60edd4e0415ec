// pgchat.js: the JavaScript client for pgchat (docs/PROTOCOL.md), one ES module without
// dependencies, for browsers and Node >= 20 (Node 20 needs --experimental-websocket, or
// pass a WebSocket constructor as `options.WebSocket`).
//
// What it guarantees while it is open (docs/CLIENT.md says how each is tested):
// - Reconnects after any drop with exponential backoff and full jitter.
// - Resumes from the last `seq` it has seen (kept in a pluggable store, keyed by user), so
//   durable events missed while offline arrive after reconnecting, in order, once: it
//   connects with `?after=<seq>` (the server replays, then goes on live, in order), or
//   sends `resume` when the server does not confirm that in its hello. Events are handed
//   over strictly in seq order: those at or below the last seq are dropped, and an event
//   that would skip one is held back until the replay that fills the gap.
// - Sends the token in an Authorization header where the WebSocket can (Node.js), in
//   `?token=` where it cannot (browsers): `tokenIn`.
// - Sends wait in an outbox until the server acknowledges them, each with a
//   `client_msg_id`; after a reconnect they are sent again with the same id (the server
//   stores a message once per id), one at a time, in the order they were made, so a
//   conversation shows them in that order.
// - Requests made while offline wait for the next connection (at most `maxWaiting`);
//   `typing` never does: it would be stale by then.
// - Edits, deletions and reactions of one message go out one at a time, in the order they
//   were made, so the last one made is the one that stays; each is safe to send again
//   after a drop (the server makes no second event for a repeat).
// - Refreshes the token in place (`auth`) when the server says it is expiring, and
//   reconnects with a fresh token after a 1008 close.
// - Emits 'resync' when the server can no longer replay what was missed (the stream was
//   pruned): the application reloads conversations and history.
// - A malformed frame is reported as an 'error' (code 'bad_frame') and skipped.

/** How long non-send requests wait for their reply (and for a connection) by default. */
const DEFAULT_REQUEST_TIMEOUT_MS = 15000;
const DEFAULT_CONNECT_TIMEOUT_MS = 15000;
const DEFAULT_HEARTBEAT_MS = 30000;
const DEFAULT_MAX_OUTBOX = 1000;
const DEFAULT_MAX_WAITING = 1000;
const DEFAULT_MAX_FRAME_BYTES = 65536;
const DEFAULT_BACKOFF = { initialMs: 500, maxMs: 30000 };

/**
 * Close codes that ask for patience (PROTOCOL.md "Closing"): the backoff starts at this
 * attempt instead of 0. 1013: try again later (a slow consumer; pruned events). 1011: an
 * internal fault. 1002/1007/1009: this side broke the protocol (a bug here): do not hammer.
 * 1001 (shutdown), 1012 (restart), 1006 (dropped) and 1008 (expired: new token) retry from 0.
 */
const CLOSE_MIN_ATTEMPT = { 1002: 3, 1007: 3, 1009: 3, 1011: 1, 1013: 3 };

/** Errors after which a request may be sent again unchanged. */
const RETRYABLE = new Set(['unavailable', 'rate_limited']);

/**
 * Request types that mean something only on the connection they are made on: never kept
 * for the next one. A `typing` start sent after a reconnect would announce typing that
 * ended with the old session (the server ends a closed session's typing itself).
 */
const CONNECTION_BOUND = new Set(['typing']);

/**
 * Request types whose repetition changes nothing more (safe to resend after a drop). An
 * `edit` repeated with the same body, a `delete` of a deleted message and a `react` to the
 * state it already has answer ok with no second event (shared PROTOCOL.md v1.2).
 */
const IDEMPOTENT = new Set([
  'resume', 'history', 'conversations', 'members', 'receipts', 'group_add', 'group_remove',
  'group_leave', 'read', 'typing', 'presence_subscribe', 'ping', 'auth', 'search',
  'edit', 'delete', 'react',
]);

/** The error every failure of this client is reported as. */
export class PgChatError extends Error {
  /**
   * @param {string} code a protocol error code (`unavailable`, `forbidden`, …) or one of
   *   this client's: `closed`, `bad_frame`, `timeout`, `disconnected`, `outbox_full`,
   *   `queue_full`, `too_large` (checked locally), `store`, `listener`, `token`.
   * @param {string} message
   * @param {{frame?: unknown, retryAfterMs?: number, cause?: unknown}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = 'PgChatError';
    this.code = code;
    if (extra.frame !== undefined) this.frame = extra.frame;
    if (extra.retryAfterMs !== undefined) this.retryAfterMs = extra.retryAfterMs;
  }
}

/** The default store: the last seq lives as long as the page or process. */
export class MemoryStore {
  #map = new Map();
  get(key) {
    return this.#map.has(key) ? this.#map.get(key) : null;
  }
  set(key, value) {
    this.#map.set(key, value);
  }
}

/** A store over Web Storage (`localStorage` by default): survives reloads in a browser. */
export class WebStorageStore {
  #storage;
  constructor(storage = globalThis.localStorage) {
    if (!storage) throw new TypeError('WebStorageStore: no storage (localStorage) available');
    this.#storage = storage;
  }
  get(key) {
    return this.#storage.getItem(key);
  }
  set(key, value) {
    this.#storage.setItem(key, value);
  }
}

/**
 * The reconnect delay after `attempt` consecutive failures (0 for the first retry): full
 * jitter, a uniformly random delay in [0, min(maxMs, initialMs * 2^attempt)).
 */
export function backoffDelay(attempt, { initialMs = DEFAULT_BACKOFF.initialMs, maxMs = DEFAULT_BACKOFF.maxMs } = {}, random = Math.random) {
  const cap = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 52));
  return Math.floor(random() * cap);
}

/** A random id for `client_msg_id` / `client_op_id` (32 hex digits). */
export function randomId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') {
    try {
      return c.randomUUID().replace(/-/g, '');
    } catch {
      // randomUUID needs a secure context in browsers: fall through.
    }
  }
  const bytes = new Uint8Array(16);
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

const isObject = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);
const isSeq = (v) => Number.isSafeInteger(v) && v >= 0;
const isString = (v) => typeof v === 'string';

function validMessage(m) {
  return isObject(m) && Number.isSafeInteger(m.id) && isString(m.conversation) &&
    Number.isSafeInteger(m.cseq) && isObject(m.sender) && isString(m.sender.id) &&
    isString(m.body) && isString(m.created_at);
}

function validConversation(c) {
  return isObject(c) && isString(c.id) && isString(c.kind) && Array.isArray(c.members);
}

/** What a durable event of each known type must hold, beyond its `seq`. */
const DURABLE_SHAPES = {
  __proto__: null,
  message: (f) => validMessage(f.message),
  conversation: (f) => validConversation(f.conversation),
  removed: (f) => isString(f.conversation),
  read: (f) => isString(f.conversation) && isString(f.user) && Number.isSafeInteger(f.cseq),
  message_edited: (f) => validMessage(f.message),
  message_deleted: (f) => isString(f.conversation) && Number.isSafeInteger(f.cseq) && Number.isSafeInteger(f.id),
  reaction: (f) => isString(f.conversation) && Number.isSafeInteger(f.cseq) && isString(f.user) &&
    isString(f.emoji) && typeof f.on === 'boolean',
};

const utf8Length = (s) => new TextEncoder().encode(s).length;

/**
 * The user a JWT names (`sub`), unverified, or null for anything else. Only a hint, to find
 * the stored position to connect from before the hello says whose socket this is: a hello
 * for someone else makes the client resume that user's own position instead.
 */
function tokenSubject(token) {
  const parts = isString(token) ? token.split('.') : [];
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
    return isObject(claims) && isString(claims.sub) && claims.sub ? claims.sub : null;
  } catch {
    return null;
  }
}

/**
 * Whether the WebSocket of this platform takes handshake headers, as
 * `new WebSocket(url, { headers })`: Node.js's own (undici, in every Node that has one)
 * and the `ws` package do, and so does Bun's. Browsers cannot set headers on a WebSocket
 * (anything with a `document` counts as one, an Electron renderer included), nor can Deno
 * without an unstable flag.
 */
function platformTakesHeaders() {
  const g = globalThis;
  if (g.document !== undefined || g.Deno !== undefined) return false;
  return isString(g.process?.versions?.node);
}

export class PgChat {
  // Options.
  #url;
  #token;
  #getToken;
  /** The token the current socket's session holds (connect, or the last `auth`). */
  #sessionToken = null;
  #store;
  #startAt;
  #WebSocket;
  #backoff;
  #requestTimeoutMs;
  #connectTimeoutMs;
  #heartbeatMs;
  #maxOutbox;
  #maxWaiting;
  #maxFrameBytes;
  #storePrefix;
  /** Whether the token goes in an Authorization header (else in ?token=). */
  #tokenInHeader;

  // Connection.
  #state = 'idle';
  #ws = null;
  #hello = null;
  #resumed = false;
  /** Consecutive failed attempts (reset once a connection has resumed). */
  #attempt = 0;
  #reconnectTimer = null;
  #connectTimer = null;
  #heartbeatTimer = null;
  #pinging = false;
  #lastFrameAt = 0;
  #connectWaiters = [];
  /** Frames waiting while the hello is being handled (the store may be asynchronous). */
  #inbox = [];
  #draining = false;
  /** This connection's resume: a second `resync_required` in a row reconnects. */
  #resyncs = 0;
  #resumeRetryTimer = null;
  /**
   * The position this connection asked to start from (`?after=`): { user, after }, after
   * null when nothing was known (the session starts at the hello's head). Null when the
   * user was unknown before the hello.
   */
  #asked = null;
  /**
   * What a ref-less `resync_required` as the first frame after the hello means (the
   * server refusing `?after=`): 'resync' when the hello confirmed `after`; 'ignore' when
   * a `resume` went out anyway (its answer decides); null when no `after` was asked.
   */
  #afterRefusal = null;
  /**
   * For a session the server started at `?after=`: the hello's head, which the replay
   * reaches before the connection counts as resumed (so that `connect()` resolves, and
   * requests go out, once what was missed has been handed over, as after a `resume`).
   */
  #replayTo = null;

  // Stream position.
  #user = null;
  #lastSeq = -1;
  #persisting = false;
  #persistAgain = false;

  // Requests.
  #nextRef = 1;
  /** ref → pending entry (requests and sends in flight on the current socket). */
  #inflight = new Map();
  /** Non-send requests waiting for a connection (or for their retry); maxWaiting at most. */
  #waiting = [];
  /** Sends not yet acknowledged, in the order they were made. */
  #outbox = [];
  #sendTimer = null;
  #sendAttempts = 0;
  /** Users whose presence is watched: subscribed again on each new connection. */
  #watching = new Set();
  /**
   * Per message (conversation and cseq): the last edit, delete or react made, which the
   * next one waits for. pgchat runs a socket's requests concurrently, so an edit and the
   * edit after it (or a reaction and its undoing) sent together could commit in either
   * order, and a retry after a drop could land after a later change.
   */
  #changes = new Map();
  #refreshing = false;

  #listeners = new Map();
  #stats = { duplicates: 0, heldBack: 0, reconnects: 0, badFrames: 0, resyncs: 0, retriedSends: 0 };

  /** @param {import('./pgchat.js').PgChatOptions} options */
  constructor(options) {
    if (!isObject(options)) throw new TypeError('PgChat: options required');
    if (!isString(options.url) || !options.url) throw new TypeError('PgChat: options.url required (ws(s)://host/ws)');
    if (options.token === undefined && options.getToken === undefined) {
      throw new TypeError('PgChat: options.token or options.getToken required');
    }
    if (options.getToken !== undefined && typeof options.getToken !== 'function') {
      throw new TypeError('PgChat: options.getToken must be a function');
    }
    try {
      new URL(options.url);
    } catch {
      throw new TypeError(`PgChat: options.url is not a URL: ${options.url}`);
    }
    this.#url = options.url;
    this.#token = options.token;
    this.#getToken = options.getToken;
    this.#store = options.store ?? new MemoryStore();
    this.#startAt = options.startAt ?? 'head';
    if (this.#startAt !== 'head' && !isSeq(this.#startAt)) {
      throw new TypeError("PgChat: options.startAt must be 'head' or a seq (an integer >= 0)");
    }
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== 'function') {
      throw new TypeError('PgChat: no WebSocket: pass options.WebSocket (Node 20 needs --experimental-websocket)');
    }
    this.#backoff = {
      initialMs: options.backoff?.initialMs ?? DEFAULT_BACKOFF.initialMs,
      maxMs: options.backoff?.maxMs ?? DEFAULT_BACKOFF.maxMs,
    };
    this.#requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.#heartbeatMs = options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
    this.#maxOutbox = options.maxOutbox ?? DEFAULT_MAX_OUTBOX;
    this.#maxWaiting = options.maxWaiting ?? DEFAULT_MAX_WAITING;
    if (typeof this.#maxWaiting !== 'number' || !(this.#maxWaiting >= 0)) {
      throw new TypeError('PgChat: options.maxWaiting must be a number >= 0 (Infinity: unbounded)');
    }
    const tokenIn = options.tokenIn ?? 'auto';
    if (tokenIn !== 'auto' && tokenIn !== 'header' && tokenIn !== 'query') {
      throw new TypeError("PgChat: options.tokenIn must be 'auto', 'header' or 'query'");
    }
    this.#tokenInHeader = tokenIn === 'header' || (tokenIn === 'auto' && platformTakesHeaders());
    this.#maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.#storePrefix = options.storeKeyPrefix ?? 'pgchat:lastSeq:';
  }

  // ---- Public state ----------------------------------------------------------------

  get state() { return this.#state; }
  get user() { return this.#user; }
  /** The last durable seq handed to the application (-1 before the first hello). */
  get lastSeq() { return this.#lastSeq; }
  /** The current connection's hello frame, or null. */
  get hello() { return this.#hello; }
  /** Sends not yet acknowledged. */
  get pendingSends() { return this.#outbox.length; }
  /** Counters: duplicates dropped, events held back for a gap, reconnects, bad frames, … */
  get stats() { return { ...this.#stats }; }
  /** The store key this client's position is kept under (null before the first hello). */
  get storeKey() { return this.#user === null ? null : this.#storePrefix + this.#user; }

  // ---- Events ----------------------------------------------------------------------

  on(event, listener) {
    if (typeof listener !== 'function') throw new TypeError('PgChat.on: listener must be a function');
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
  }

  /** Calls `event`'s listeners; a listener that throws is reported, never breaks the client. */
  #emit(event, ...args) {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (e) {
        if (event === 'error') {
          // Nowhere left to report it without recursion.
          queueMicrotask(() => { throw e; });
        } else {
          this.#emit('error', new PgChatError('listener', `a '${event}' listener threw: ${e?.message ?? e}`, { cause: e }));
        }
      }
    }
  }

  #setState(state, details = {}) {
    this.#state = state;
    this.#emit('state', { state, ...details });
  }

  // ---- Connecting ------------------------------------------------------------------

  /** Connects; resolves once connected and resumed the first time. */
  connect() {
    if (this.#state === 'closed') return Promise.reject(new PgChatError('closed', 'the client was closed'));
    if (this.#state === 'open') return Promise.resolve();
    const p = new Promise((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (this.#state === 'idle') this.#open();
    return p;
  }

  /** Final: closes the socket; pending sends and requests reject with code 'closed'. */
  close() {
    if (this.#state === 'closed') return;
    this.#stopTimers();
    const ws = this.#ws;
    this.#detach();
    if (ws) {
      try { ws.close(1000, 'client closed'); } catch { /* already closing */ }
    }
    const err = () => new PgChatError('closed', 'the client was closed');
    for (const s of this.#outbox.splice(0)) s.reject(err());
    for (const r of this.#waiting.splice(0)) this.#settle(r, err());
    for (const r of this.#inflight.values()) if (r.kind === 'request') this.#settle(r, err());
    this.#inflight.clear();
    for (const w of this.#connectWaiters.splice(0)) w.reject(err());
    this.#setState('closed', { reason: 'closed by the application' });
  }

  #stopTimers() {
    for (const t of [this.#reconnectTimer, this.#connectTimer, this.#sendTimer, this.#resumeRetryTimer]) clearTimeout(t);
    clearInterval(this.#heartbeatTimer);
    this.#reconnectTimer = this.#connectTimer = this.#sendTimer = this.#resumeRetryTimer = null;
    this.#heartbeatTimer = null;
  }

  async #currentToken() {
    if (this.#getToken) {
      const t = await this.#getToken();
      if (!isString(t) || !t) throw new PgChatError('token', 'getToken() must return a non-empty string');
      this.#token = t;
    }
    return this.#token;
  }

  async #open() {
    if (this.#state === 'closed') return;
    this.#setState('connecting', { attempt: this.#attempt });
    let token;
    try {
      token = await this.#currentToken();
    } catch (e) {
      this.#emit('error', e instanceof PgChatError ? e : new PgChatError('token', `getToken() failed: ${e?.message ?? e}`, { cause: e }));
      this.#scheduleReconnect('getToken() failed');
      return;
    }
    if (this.#state === 'closed') return;
    if (!isString(token) || !token) {
      this.#final(new PgChatError('token', 'no token: pass options.token or options.getToken'));
      return;
    }
    this.#sessionToken = token;
    // Where to start: with `?after=` the server replays what was missed before any live
    // event, in order, with no `resume` (shared PROTOCOL.md v1.2); a server that predates
    // it ignores the parameter, and the hello says which it was.
    const user = tokenSubject(token) ?? this.#user;
    const asked = user === null ? null : { user, after: await this.#positionOf(user) };
    if (this.#state === 'closed') return;
    const url = new URL(this.#url);
    if (asked?.after !== null && asked?.after !== undefined) url.searchParams.set('after', String(asked.after));
    let ws;
    try {
      if (this.#tokenInHeader) {
        // Out of the URL, the token stays out of proxies' and servers' access logs.
        ws = new this.#WebSocket(url.toString(), { headers: { Authorization: `Bearer ${token}` } });
      } else {
        url.searchParams.set('token', token);
        ws = new this.#WebSocket(url.toString());
      }
    } catch (e) {
      const how = this.#tokenInHeader
        ? " with the token in an Authorization header (tokenIn: pass 'query' if this WebSocket cannot take { headers })"
        : '';
      this.#emit('error', new PgChatError('closed', `cannot open a WebSocket${how}: ${e?.message ?? e}`, { cause: e }));
      this.#scheduleReconnect('cannot open a WebSocket');
      return;
    }
    this.#ws = ws;
    this.#hello = null;
    this.#resumed = false;
    this.#resyncs = 0;
    this.#asked = asked;
    this.#afterRefusal = null;
    this.#replayTo = null;
    this.#inbox = [];
    this.#lastFrameAt = Date.now();
    ws.addEventListener('message', (e) => { if (ws === this.#ws) this.#receive(e.data); });
    ws.addEventListener('close', (e) => { if (ws === this.#ws) this.#onClose(e.code, e.reason); });
    ws.addEventListener('error', () => {
      // A close event should follow; Node 20's WebSocket (undici before nodejs/undici#3566)
      // sends none when the connection could not be established: then this is the close.
      setTimeout(() => { if (ws === this.#ws) this.#drop(1006, 'connection failed'); }, 100);
    });
    this.#armConnectTimer();
  }

  /**
   * Until the resume is answered, a connection that makes no progress (no frame) for
   * connectTimeoutMs is given up; a long replay that keeps coming is not.
   */
  #armConnectTimer() {
    const ws = this.#ws;
    clearTimeout(this.#connectTimer);
    this.#connectTimer = setTimeout(() => {
      if (ws === this.#ws && !this.#resumed) this.#drop(4000, 'no progress opening and resuming');
    }, this.#connectTimeoutMs);
  }

  /** Stops listening to the current socket (its late events are ignored). */
  #detach() {
    const ws = this.#ws;
    this.#ws = null;
    this.#hello = null;
    this.#resumed = false;
    this.#asked = null;
    this.#afterRefusal = null;
    this.#replayTo = null;
    this.#inbox = [];
    clearTimeout(this.#connectTimer);
    clearTimeout(this.#resumeRetryTimer);
    clearInterval(this.#heartbeatTimer);
    this.#connectTimer = this.#resumeRetryTimer = this.#heartbeatTimer = null;
    return ws;
  }

  /** Gives up on the current socket at once (it may be dead) and reconnects. */
  #drop(code, reason) {
    const ws = this.#ws;
    if (!ws) return;
    try {
      // close() takes only 1000 and 3000..4999.
      if (code === 1000 || (code >= 3000 && code <= 4999)) ws.close(code, reason);
      else ws.close();
    } catch { /* not open yet */ }
    this.#onClose(code, reason);
  }

  #onClose(code, reason) {
    if (this.#state === 'closed') return;
    this.#detach();
    this.#afterDisconnect();
    if (code === 1008) {
      // The token expired (PROTOCOL.md "Closing"): only a fresh token can go on.
      if (!this.#getToken) {
        this.#final(new PgChatError('unauthorized', `the token expired (close 1008${reason ? `: ${reason}` : ''}) and there is no getToken() to get another`));
        return;
      }
    }
    const min = CLOSE_MIN_ATTEMPT[code];
    if (min !== undefined) this.#attempt = Math.max(this.#attempt, min);
    this.#scheduleReconnect(`close ${code}${reason ? `: ${reason}` : ''}`, code);
  }

  /** After a socket is gone: sends in flight go back to the outbox, requests wait or fail. */
  #afterDisconnect() {
    clearTimeout(this.#sendTimer);
    this.#sendTimer = null;
    this.#refreshing = false;
    for (const entry of this.#inflight.values()) {
      if (entry.kind === 'send') {
        entry.ref = null; // retried with the same client_msg_id after the next resume
      } else if (entry.bound) {
        // resume, auth, heartbeat pings, presence re-subscriptions: redone per connection;
        // typing: stale on the next one.
        this.#settle(entry, new PgChatError('disconnected', `the connection dropped before '${entry.type}' was answered`));
      } else if (entry.idempotent) {
        entry.ref = null;
        this.#wait(entry);
      } else {
        this.#settle(entry, new PgChatError('disconnected', `the connection dropped before '${entry.type}' was answered: its outcome is unknown`));
      }
    }
    this.#inflight.clear();
  }

  #scheduleReconnect(reason, code) {
    if (this.#state === 'closed') return;
    const delayMs = backoffDelay(this.#attempt, this.#backoff);
    const attempt = this.#attempt;
    this.#attempt++;
    this.#stats.reconnects++;
    this.#setState('reconnecting', { attempt, delayMs, reason, ...(code === undefined ? {} : { code }) });
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      this.#open();
    }, delayMs);
  }

  /** Closes for good because going on cannot succeed. */
  #final(error) {
    this.#emit('error', error);
    const ws = this.#detach();
    if (ws) {
      try { ws.close(1000, error.message.slice(0, 100)); } catch { /* closing */ }
    }
    this.#stopTimers();
    for (const s of this.#outbox.splice(0)) s.reject(error);
    for (const r of this.#waiting.splice(0)) this.#settle(r, error);
    for (const r of this.#inflight.values()) if (r.kind === 'request') this.#settle(r, error);
    this.#inflight.clear();
    for (const w of this.#connectWaiters.splice(0)) w.reject(error);
    this.#setState('closed', { reason: error.message });
  }

  // ---- Frames ----------------------------------------------------------------------

  #badFrame(message, frame) {
    this.#stats.badFrames++;
    this.#emit('error', new PgChatError('bad_frame', message, { frame }));
  }

  #receive(data) {
    this.#lastFrameAt = Date.now();
    if (!this.#resumed) this.#armConnectTimer();
    if (!isString(data)) {
      this.#badFrame('a binary frame: pgchat sends only JSON text frames', data);
      return;
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (e) {
      this.#badFrame(`a frame that is not JSON: ${e.message}`, data);
      return;
    }
    if (!isObject(frame) || !isString(frame.type)) {
      this.#badFrame('a frame that is not a JSON object with a string "type"', data);
      return;
    }
    this.#inbox.push(frame);
    this.#drain();
  }

  /** Handles queued frames in order; the hello may wait for the store. */
  async #drain() {
    if (this.#draining) return;
    this.#draining = true;
    const ws = this.#ws;
    try {
      while (this.#inbox.length && ws === this.#ws) {
        const frame = this.#inbox.shift();
        try {
          if (frame.type === 'hello') await this.#onHello(frame, ws);
          else this.#onFrame(frame);
        } catch (e) {
          this.#emit('error', e instanceof PgChatError ? e : new PgChatError('internal', `handling a '${frame.type}' frame failed: ${e?.message ?? e}`, { cause: e, frame }));
        }
      }
    } finally {
      this.#draining = false;
    }
    if (this.#inbox.length && this.#ws) this.#drain();
  }

  async #onHello(frame, ws) {
    if (this.#hello) {
      this.#badFrame('a second hello on one connection', frame);
      return;
    }
    if (!isString(frame.user) || !isSeq(frame.head)) {
      this.#badFrame('a hello without a string "user" and an integer "head"', frame);
      this.#drop(4000, 'bad hello');
      return;
    }
    if (this.#user !== null && this.#user !== frame.user) {
      // A token for someone else: nothing of the old user's carries over.
      const err = new PgChatError('forbidden', `the token is now for ${frame.user}, not ${this.#user}: unsent messages dropped`);
      for (const s of this.#outbox.splice(0)) s.reject(err);
      this.#watching.clear();
      this.#lastSeq = -1;
    }
    this.#user = frame.user;
    this.#hello = frame;
    const asked = this.#asked?.user === frame.user ? this.#asked : null;
    if (this.#lastSeq < 0) {
      // Found before connecting if the token named this user; else from the store now.
      const after = asked ? asked.after : await this.#positionOf(frame.user);
      if (ws !== this.#ws) return;
      this.#lastSeq = after ?? frame.head;
    }
    if (this.#lastSeq > frame.head) {
      // The position belongs to another database (or a stream that was reset).
      this.#resync(frame.head, 'the stored position is beyond the server\'s head');
    }
    // The server started this session from where the client is (`?after=`): what follows
    // is the replay, then live events, in order. Anything else (an older server ignores
    // the parameter; the position moved or was someone else's): resume, as in v1.
    const streaming = asked !== null && asked.after !== null && frame.after === asked.after &&
      this.#lastSeq === asked.after;
    this.#emit('hello', frame);
    this.#afterRefusal = streaming ? 'resync' : asked?.after != null ? 'ignore' : null;
    if (!streaming) this.#sendResume();
    // Open once the replay has reached the hello's head (at once if nothing was missed).
    else if (this.#lastSeq >= frame.head) this.#opened(ws, frame.head);
    else this.#replayTo = frame.head;
    if (this.#heartbeatMs > 0) {
      clearInterval(this.#heartbeatTimer);
      this.#heartbeatTimer = setInterval(() => this.#heartbeat(), this.#heartbeatMs);
    }
  }

  /** Sends `resume` from the last seq; the connection is open once it is answered. */
  #sendResume() {
    const ws = this.#ws;
    // No timeout of its own: the connect timer watches for progress. Handled as its reply
    // is read, not a microtask later: frames read in the same tick come after the resume.
    const onSettle = (e, ok) => (e ? failed(e) : this.#opened(ws, ok.head));
    const failed = (e) => {
      if (ws !== this.#ws) return;
      if (e.code === 'resync_required' && this.#resyncs++ === 0) {
        // Resume from this connection's head; the application reloads what came before.
        this.#resync(this.#hello.head, e.message);
        this.#sendResume();
      } else if (RETRYABLE.has(e.code)) {
        const delay = e.retryAfterMs ?? backoffDelay(0, this.#backoff);
        this.#resumeRetryTimer = setTimeout(() => { if (ws === this.#ws) this.#sendResume(); }, delay);
      } else if (e.code !== 'closed') {
        this.#drop(4000, `resume failed: ${e.code}`);
      }
    };
    this.#request('resume', { after: this.#lastSeq }, { bound: true, early: true, timeoutMs: 0, onSettle })
      .catch(() => { /* handled by onSettle */ });
  }

  /** The connection `ws` is resumed (streaming from the client's position): open. */
  #opened(ws, head) {
    if (ws !== this.#ws) return;
    this.#resumed = true;
    this.#resyncs = 0;
    this.#attempt = 0;
    clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    this.#setState('open', { head });
    for (const w of this.#connectWaiters.splice(0)) w.resolve();
    this.#afterResume();
  }

  /**
   * Where `user`'s stream is to go on from: the position in memory, else the store's, else
   * startAt; null for "from the hello's head" (nothing known, startAt 'head').
   */
  async #positionOf(user) {
    if (user === this.#user && this.#lastSeq >= 0) return this.#lastSeq;
    let stored = null;
    try {
      stored = await this.#store.get(this.#storePrefix + user);
    } catch (e) {
      this.#emit('error', new PgChatError('store', `store.get failed: ${e?.message ?? e}`, { cause: e }));
    }
    const n = stored === null || stored === undefined ? NaN : Number(stored);
    if (isSeq(n)) return n;
    return this.#startAt === 'head' ? null : this.#startAt;
  }

  #resync(head, reason) {
    this.#stats.resyncs++;
    this.#lastSeq = head;
    this.#persist();
    this.#emit('resync', { head, reason });
  }

  /** Once resumed: watch presence again, then send what waits. */
  #afterResume() {
    if (this.#watching.size) {
      const users = [...this.#watching];
      const ws = this.#ws;
      this.#request('presence_subscribe', { users }, { bound: true }).then((ok) => {
        if (ws !== this.#ws || !Array.isArray(ok.presence)) return;
        for (const p of ok.presence) {
          if (isObject(p) && isString(p.user)) this.#emit('presence', { type: 'presence', ...p });
        }
      }, () => { /* the next connection tries again */ });
    }
    for (const r of this.#waiting.splice(0)) this.#transmit(r);
    this.#pumpSends();
  }

  #heartbeat() {
    if (!this.#resumed || this.#pinging || Date.now() - this.#lastFrameAt < this.#heartbeatMs) return;
    const ws = this.#ws;
    this.#pinging = true;
    this.#request('ping', {}, { bound: true, timeoutMs: Math.max(1000, this.#heartbeatMs / 2) })
      .catch((e) => { if (ws === this.#ws && e.code === 'timeout') this.#drop(4000, 'heartbeat: no reply'); })
      .finally(() => { this.#pinging = false; });
  }

  #onFrame(frame) {
    if (!this.#hello) {
      this.#badFrame(`a '${frame.type}' frame before the hello`, frame);
      return;
    }
    const refusal = this.#afterRefusal;
    this.#afterRefusal = null;
    if (refusal && frame.type === 'error' && !('ref' in frame) && frame.code === 'resync_required') {
      if (refusal === 'ignore') return;
      // `?after=` was older than the retained stream: as when `resume` answers so, the
      // application reloads, and the stream goes on from this connection's head (the
      // session sends nothing until a resume: this one opens the connection).
      this.#replayTo = null;
      this.#resync(this.#hello.head, isString(frame.message) ? frame.message : 'resync_required');
      this.#sendResume();
      return;
    }
    switch (frame.type) {
      case 'ok':
      case 'error':
        this.#onReply(frame);
        return;
      case 'typing':
        if (!isString(frame.conversation) || !isString(frame.user) || (frame.state !== 'start' && frame.state !== 'stop')) {
          this.#badFrame('a typing event without conversation, user and state start|stop', frame);
        } else this.#emit('typing', frame);
        return;
      case 'presence':
        if (!isString(frame.user) || !isString(frame.status)) {
          this.#badFrame('a presence event without user and status', frame);
        } else this.#emit('presence', frame);
        return;
      case 'token_expiring':
        if (typeof frame.expires_in_ms !== 'number' || !(frame.expires_in_ms >= 0)) {
          this.#badFrame('a token_expiring event without a number expires_in_ms', frame);
        } else this.#onTokenExpiring(frame.expires_in_ms);
        return;
      default:
        if ('seq' in frame || Object.hasOwn(DURABLE_SHAPES, frame.type)) this.#onDurable(frame);
        // Other types without seq: from a newer server; ignored.
    }
  }

  #onDurable(frame) {
    const seq = frame.seq;
    if (!Number.isSafeInteger(seq) || seq < 1) {
      this.#badFrame(`a '${frame.type}' event without a positive integer seq`, frame);
      return;
    }
    if (seq <= this.#lastSeq) {
      this.#stats.duplicates++;
      return;
    }
    if (seq > this.#lastSeq + 1) {
      // A gap: before the resume is answered, live events from the hello's head come
      // ahead of the replay that fills it; they are sent again after it. After (and from
      // the hello on, for a session started with `?after=`), the server never skips: ask
      // it to replay from where we are.
      this.#stats.heldBack++;
      if (this.#resumed || this.#replayTo !== null) this.#replayFrom(this.#lastSeq);
      return;
    }
    this.#lastSeq = seq;
    this.#persist();
    if (this.#replayTo !== null && seq >= this.#replayTo) {
      this.#replayTo = null;
      this.#opened(this.#ws, seq);
    }
    const shape = DURABLE_SHAPES[frame.type];
    if (shape && !shape(frame)) {
      this.#badFrame(`a '${frame.type}' event (seq ${seq}) missing required fields`, frame);
      return;
    }
    this.#emit('event', frame);
    switch (frame.type) {
      case 'message': this.#emit('message', frame.message, frame); break;
      case 'conversation': this.#emit('conversation', frame.conversation, frame); break;
      case 'removed': this.#emit('removed', frame); break;
      case 'read': this.#emit('read', frame); break;
      case 'message_edited': this.#emit('message_edited', frame.message, frame); break;
      case 'message_deleted': this.#emit('message_deleted', frame); break;
      case 'reaction': this.#emit('reaction', frame); break;
      default: break;
    }
  }

  #replaying = false;
  #replayFrom(after) {
    if (this.#replaying) return;
    this.#replaying = true;
    const ws = this.#ws;
    this.#request('resume', { after }, { bound: true, early: true })
      .catch((e) => {
        if (ws !== this.#ws) return;
        if (e.code === 'resync_required') {
          this.#resync(this.#hello.head, e.message);
          this.#drop(4000, 'resync');
        }
      })
      .finally(() => { this.#replaying = false; });
  }

  /** Writes the last seq to the store, one write at a time, the newest last. */
  async #persist() {
    if (this.#user === null) return;
    if (this.#persisting) {
      this.#persistAgain = true;
      return;
    }
    this.#persisting = true;
    try {
      do {
        this.#persistAgain = false;
        try {
          await this.#store.set(this.storeKey, String(this.#lastSeq));
        } catch (e) {
          this.#emit('error', new PgChatError('store', `store.set failed: ${e?.message ?? e}`, { cause: e }));
        }
      } while (this.#persistAgain);
    } finally {
      this.#persisting = false;
    }
  }

  // ---- Token refresh ---------------------------------------------------------------

  async #onTokenExpiring(expiresInMs) {
    this.#emit('token_expiring', { expiresInMs });
    if (!this.#getToken || this.#refreshing) return;
    this.#refreshing = true;
    const ws = this.#ws;
    const deadline = Date.now() + expiresInMs;
    try {
      while (ws === this.#ws) {
        try {
          const token = await this.#currentToken();
          if (ws !== this.#ws) return;
          // The same token again extends nothing (and would only re-arm the notice).
          if (token !== this.#sessionToken) {
            await this.#request('auth', { token }, { bound: true, early: true, timeoutMs: Math.max(1000, Math.min(this.#requestTimeoutMs, expiresInMs)) });
            if (ws !== this.#ws) return;
            this.#sessionToken = token;
            this.#emit('token_refreshed', {});
            return;
          }
        } catch (e) {
          if (ws !== this.#ws || e.code === 'closed') return;
          this.#emit('error', e instanceof PgChatError ? e : new PgChatError('token', `refreshing the token failed: ${e?.message ?? e}`, { cause: e }));
        }
        // Try again while there is time; after the 1008 close we reconnect with getToken().
        const left = deadline - Date.now();
        if (left < 1000) return;
        await new Promise((r) => setTimeout(r, Math.min(5000, left / 2)));
      }
    } finally {
      if (ws === this.#ws) this.#refreshing = false;
    }
  }

  // ---- Requests --------------------------------------------------------------------

  /**
   * One request. `bound`: belongs to this connection (never sent on another: if there is
   * none, or it drops first, the request rejects with 'disconnected'); `early`: may go
   * before the resume is answered.
   */
  #request(type, fields, {
    bound = CONNECTION_BOUND.has(type), early = CONNECTION_BOUND.has(type), idempotent,
    timeoutMs = this.#requestTimeoutMs, onSettle,
  } = {}) {
    if (this.#state === 'closed') return Promise.reject(new PgChatError('closed', 'the client was closed'));
    return new Promise((resolve, reject) => {
      const entry = {
        kind: 'request', type, fields, resolve, reject, bound, early, ref: null, done: false, onSettle,
        idempotent: idempotent ?? (IDEMPOTENT.has(type) || (type === 'group_create' && fields.client_op_id !== undefined) || (type === 'send' && fields.client_msg_id !== undefined)),
        timer: null,
      };
      if (timeoutMs > 0 && Number.isFinite(timeoutMs)) {
        entry.timer = setTimeout(() => {
          if (entry.ref !== null) this.#inflight.delete(entry.ref);
          const i = this.#waiting.indexOf(entry);
          if (i >= 0) this.#waiting.splice(i, 1);
          this.#settle(entry, new PgChatError('timeout', `no reply to '${type}' within ${timeoutMs} ms`));
        }, timeoutMs);
      }
      if (this.#ws && (this.#resumed || (early && this.#hello))) this.#transmit(entry);
      else if (bound) this.#settle(entry, notConnected(type));
      else this.#wait(entry);
    });
  }

  #settle(entry, error, value) {
    if (entry.done) return;
    entry.done = true;
    clearTimeout(entry.timer);
    entry.onSettle?.(error, value);
    if (error) entry.reject(error);
    else entry.resolve(value);
  }

  /** Puts a request on the socket, or back in the queue if the socket is not usable. */
  #transmit(entry) {
    if (entry.done) return;
    const ref = this.#nextRef++;
    const text = JSON.stringify({ ...entry.fields, type: entry.type, ref });
    if (utf8Length(text) > this.#maxFrameBytes) {
      this.#settle(entry, new PgChatError('too_large', `the '${entry.type}' frame is larger than maxFrameBytes (${this.#maxFrameBytes})`));
      return;
    }
    if (!this.#rawSend(text)) {
      if (entry.bound) this.#settle(entry, notConnected(entry.type));
      else this.#wait(entry);
      return;
    }
    entry.ref = ref;
    this.#inflight.set(ref, entry);
  }

  /** Queues a request for the next connection, if fewer than maxWaiting wait already. */
  #wait(entry) {
    if (entry.done) return;
    if (this.#waiting.length >= this.#maxWaiting) {
      this.#settle(entry, new PgChatError('queue_full', `${this.#waiting.length} requests wait for a connection already (maxWaiting ${this.#maxWaiting}): '${entry.type}' was not queued; try again once connected`));
      return;
    }
    this.#waiting.push(entry);
  }

  #rawSend(text) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(text);
      return true;
    } catch {
      return false;
    }
  }

  #onReply(frame) {
    if (!('ref' in frame)) {
      if (frame.type === 'error') {
        this.#emit('error', new PgChatError(isString(frame.code) ? frame.code : 'internal', isString(frame.message) ? frame.message : 'an error without a ref', { frame }));
      } else this.#badFrame('an ok reply without a ref', frame);
      return;
    }
    const entry = this.#inflight.get(frame.ref);
    if (!entry) return; // a reply to a request that timed out
    this.#inflight.delete(frame.ref);
    entry.ref = null;
    if (frame.type === 'error' && (!isString(frame.code) || !isString(frame.message))) {
      this.#badFrame('an error reply without a string code and message', frame);
    }
    if (entry.kind === 'send') {
      this.#onSendReply(entry, frame);
      return;
    }
    if (frame.type === 'ok') {
      const { type: _t, ref: _r, ...result } = frame;
      this.#settle(entry, null, result);
      return;
    }
    const error = replyError(frame);
    if (error.code === 'rate_limited' || (error.code === 'unavailable' && entry.idempotent)) {
      if (entry.bound) {
        this.#settle(entry, error);
        return;
      }
      // Retry when the server says (rate limit) or after a short backoff.
      const delay = error.retryAfterMs ?? backoffDelay(1, this.#backoff);
      setTimeout(() => {
        if (entry.done) return;
        if (this.#resumed) this.#transmit(entry);
        else this.#wait(entry);
      }, delay);
      return;
    }
    this.#settle(entry, error);
  }

  // ---- Sends -----------------------------------------------------------------------

  /**
   * Sends a message; resolves with it once the server has stored it (exactly once, even
   * across reconnects and server restarts), rejects only on a permanent error or close().
   * `replyTo`: the cseq of the message of the conversation it answers; `mentions`: the
   * members it mentions (user ids).
   */
  send(target, body, opts = {}) {
    if (this.#state === 'closed') return Promise.reject(new PgChatError('closed', 'the client was closed'));
    const fields = {};
    if (isObject(target) && isString(target.conversation) && target.to === undefined) fields.conversation = target.conversation;
    else if (isObject(target) && isString(target.to) && target.conversation === undefined) fields.to = target.to;
    else return Promise.reject(new TypeError('send: target must be { conversation } or { to }'));
    if (!isString(body)) return Promise.reject(new TypeError('send: body must be a string'));
    const clientMsgId = opts.clientMsgId ?? randomId();
    if (!isString(clientMsgId) || clientMsgId.length < 1 || clientMsgId.length > 64) {
      return Promise.reject(new TypeError('send: clientMsgId must be 1..64 characters'));
    }
    if (this.#outbox.length >= this.#maxOutbox) {
      return Promise.reject(new PgChatError('outbox_full', `${this.#outbox.length} sends wait already (maxOutbox)`));
    }
    if (opts.replyTo !== undefined) {
      if (!Number.isSafeInteger(opts.replyTo) || opts.replyTo < 1) {
        return Promise.reject(new TypeError('send: replyTo must be the cseq (an integer >= 1) of a message of the conversation'));
      }
      fields.reply_to = opts.replyTo;
    }
    if (opts.mentions !== undefined) {
      if (!Array.isArray(opts.mentions) || !opts.mentions.every(isString)) {
        return Promise.reject(new TypeError('send: mentions must be an array of user ids'));
      }
      if (opts.mentions.length) fields.mentions = [...opts.mentions];
    }
    fields.body = body;
    fields.client_msg_id = clientMsgId;
    return new Promise((resolve, reject) => {
      const entry = { kind: 'send', fields, clientMsgId, resolve, reject, ref: null, retryAt: 0, tries: 0 };
      if (utf8Length(JSON.stringify({ ...fields, type: 'send', ref: 0 })) + 20 > this.#maxFrameBytes) {
        reject(new PgChatError('too_large', `the send frame is larger than maxFrameBytes (${this.#maxFrameBytes})`));
        return;
      }
      this.#outbox.push(entry);
      this.#pumpSends();
    });
  }

  /** Puts the oldest unacknowledged send on the socket: one at a time, in order. */
  #pumpSends() {
    if (!this.#resumed || !this.#ws) return;
    const head = this.#outbox[0];
    if (!head || head.ref !== null) return;
    const wait = head.retryAt - Date.now();
    if (wait > 0) {
      clearTimeout(this.#sendTimer);
      this.#sendTimer = setTimeout(() => { this.#sendTimer = null; this.#pumpSends(); }, wait);
      return;
    }
    const ref = this.#nextRef++;
    if (!this.#rawSend(JSON.stringify({ type: 'send', ref, ...head.fields }))) return; // the close event follows
    if (head.tries++ > 0) this.#stats.retriedSends++;
    head.ref = ref;
    this.#inflight.set(ref, head);
  }

  #onSendReply(entry, frame) {
    if (frame.type === 'ok') {
      if (!validMessage(frame.message)) {
        this.#badFrame('a send reply without a valid message', frame);
      }
      this.#outbox.splice(this.#outbox.indexOf(entry), 1);
      this.#sendAttempts = 0;
      entry.resolve(frame.message);
    } else {
      const error = replyError(frame);
      if (RETRYABLE.has(error.code)) {
        // Nothing stored, or stored at most once with this client_msg_id: try again.
        entry.retryAt = Date.now() + (error.retryAfterMs ?? backoffDelay(this.#sendAttempts++, this.#backoff));
      } else {
        this.#outbox.splice(this.#outbox.indexOf(entry), 1);
        entry.reject(error);
      }
    }
    this.#pumpSends();
  }

  // ---- The protocol's requests -----------------------------------------------------

  /** Any request; resolves with the ok frame's fields (without type and ref). */
  request(type, fields = {}) {
    if (!isString(type) || !type) return Promise.reject(new TypeError('request: type must be a string'));
    const { type: _t, ref: _r, ...rest } = isObject(fields) ? fields : {};
    return this.#request(type, rest);
  }

  async history(conversation, opts = {}) {
    return (await this.historyPage(conversation, opts)).messages;
  }

  /** `history` with its paging fields: { messages, has_more, total }. */
  historyPage(conversation, { beforeCseq, limit } = {}) {
    const fields = { conversation };
    if (beforeCseq !== undefined) fields.before_cseq = beforeCseq;
    if (limit !== undefined) fields.limit = limit;
    return this.#request('history', fields);
  }

  /**
   * Every conversation of the user, most recently active first: the pages of
   * `conversationsPage` followed to the last. The server orders by last activity, so a
   * conversation that gets a message while the pages are read moves to the front, behind
   * the cursor, and a plain walk would miss it. So after a walk of more than one page the
   * front is read again, up to the first conversation whose last message is the one
   * already read (everything active since comes before it). Each conversation comes once,
   * in the latest state read.
   */
  async conversations() {
    /** id → the last message id read for it (null: none). */
    const lastRead = new Map();
    const walks = [await this.#walkConversations(lastRead, false)];
    // A front of several pages may have been overtaken in turn (more than a page of
    // conversations active meanwhile): read it again, a few times at most; the events
    // report whatever is newer still.
    while (walks.at(-1).pages > 1 && walks.length < 4) {
      walks.push(await this.#walkConversations(lastRead, true));
    }
    // The latest walk first: its entries are the newest, and every entry an earlier walk
    // read that has not changed since is older than all of them.
    const out = new Map();
    for (const walk of walks.reverse()) {
      for (const c of walk.entries) if (!out.has(c.id)) out.set(c.id, c);
    }
    return [...out.values()];
  }

  /**
   * Reads pages of `conversations`, from the most recent: to the last page or, with
   * `front`, up to the first conversation whose last message `lastRead` already holds.
   * Records each one's last message in `lastRead`.
   */
  async #walkConversations(lastRead, front) {
    const entries = [];
    const ids = new Set();
    let before;
    let pages = 0;
    for (;;) {
      const page = await this.conversationsPage(before === undefined ? {} : { before });
      pages++;
      if (!Array.isArray(page.conversations)) {
        throw new PgChatError('bad_frame', "a 'conversations' reply without a conversations list: is this server pgchat?", { frame: page });
      }
      for (const c of page.conversations) {
        if (!validConversation(c) || ids.has(c.id)) continue;
        const last = c.last_message?.id ?? null;
        if (front && lastRead.has(c.id) && lastRead.get(c.id) === last) return { entries, pages };
        ids.add(c.id);
        lastRead.set(c.id, last);
        entries.push(c);
      }
      // A server before paging (PROTOCOL.md v1.2) answers everything at once, without has_more.
      if (page.has_more !== true) return { entries, pages };
      if (!isString(page.next) || page.next === before) {
        throw new PgChatError('bad_frame', `a 'conversations' reply with has_more but ${isString(page.next) ? 'the same next cursor again' : 'no next cursor'}: the pages cannot be followed`, { frame: page });
      }
      before = page.next;
    }
  }

  /**
   * One page of `conversations`: `{ conversations, has_more, next }`, most recently active
   * first; give `next` as `before` for the page after it (null on the last).
   */
  conversationsPage({ limit, before } = {}) {
    const fields = {};
    if (limit !== undefined) fields.limit = limit;
    if (before !== undefined && before !== null) fields.before = before;
    return this.#request('conversations', fields);
  }

  members(conversation, { after, limit } = {}) {
    const fields = { conversation };
    if (after !== undefined) fields.after = after;
    if (limit !== undefined) fields.limit = limit;
    return this.#request('members', fields);
  }

  /**
   * One page of the members' read positions, by user id: `{ receipts: [{user, cseq}],
   * has_more }`; the next page is `after` the last user of this one.
   */
  receipts(conversation, { after, limit } = {}) {
    const fields = { conversation };
    if (after !== undefined) fields.after = after;
    if (limit !== undefined) fields.limit = limit;
    return this.#request('receipts', fields);
  }

  /**
   * Every member's read position, by user id: the pages of `receipts`, 1000 at a time.
   * Each member of the whole call comes once, with a position at least as new as when the
   * call began (positions only move forward); one who joins meanwhile may be missing.
   */
  async allReceipts(conversation) {
    const all = [];
    let after;
    for (;;) {
      const page = await this.receipts(conversation, after === undefined ? { limit: 1000 } : { after, limit: 1000 });
      if (!Array.isArray(page.receipts)) {
        throw new PgChatError('bad_frame', "a 'receipts' reply without a receipts list", { frame: page });
      }
      all.push(...page.receipts);
      if (page.has_more !== true) return all;
      const last = page.receipts.at(-1)?.user;
      if (!isString(last) || last === after) {
        throw new PgChatError('bad_frame', "a 'receipts' reply with has_more but no receipt to page after: the pages cannot be followed", { frame: page });
      }
      after = last;
    }
  }

  /**
   * Replaces the body of one of the user's messages; resolves with the message as it is
   * now (`edited_at` set). Every member, the user's own sessions included, gets a
   * `message_edited` event. The same body again resolves with no event.
   */
  async edit(conversation, cseq, body) {
    if (!isString(body)) throw new TypeError('edit: body must be a string');
    const ok = await this.#change('edit', { conversation, cseq, body });
    if (!validMessage(ok.message)) {
      throw new PgChatError('bad_frame', "an 'edit' reply without a valid message", { frame: ok });
    }
    return ok.message;
  }

  /**
   * Deletes a message (the user's own, or any in a group the user is an admin of): it
   * stays as a tombstone (`deleted: true`, body `""`) and every member gets a
   * `message_deleted` event. Deleting a deleted message resolves with no event.
   */
  async deleteMessage(conversation, cseq) {
    await this.#change('delete', { conversation, cseq });
  }

  /**
   * Puts the user's reaction `emoji` on a message (`on` true) or takes it off (false);
   * every member gets a `reaction` event. The state it already has resolves with no event.
   */
  async react(conversation, cseq, emoji, on = true) {
    if (!isString(emoji)) throw new TypeError('react: emoji must be a string');
    if (typeof on !== 'boolean') throw new TypeError('react: on must be a boolean');
    await this.#change('react', { conversation, cseq, emoji, on });
  }

  /** An edit, delete or react, after the changes to the same message made before it. */
  #change(type, fields) {
    if (!isString(fields.conversation)) return Promise.reject(new TypeError(`${type}: conversation must be a string`));
    if (!Number.isSafeInteger(fields.cseq) || fields.cseq < 1) {
      return Promise.reject(new TypeError(`${type}: cseq must be an integer >= 1`));
    }
    const key = `${fields.conversation}\u0000${fields.cseq}`;
    const before = this.#changes.get(key);
    const run = () => this.#request(type, fields);
    const p = before ? before.then(run, run) : run();
    this.#changes.set(key, p);
    const done = () => { if (this.#changes.get(key) === p) this.#changes.delete(key); };
    p.then(done, done);
    return p;
  }

  /**
   * Finds messages by their words, newest first, in the user's conversations (or in
   * `conversation`): `{ messages, has_more }`. The next page is `beforeId` the last
   * message's id. `query` takes PostgreSQL's websearch syntax: words, "a phrase", or, -word.
   */
  search(query, { conversation, beforeId, limit } = {}) {
    if (!isString(query)) return Promise.reject(new TypeError('search: query must be a string'));
    const fields = { query };
    if (conversation !== undefined) fields.conversation = conversation;
    if (beforeId !== undefined) fields.before_id = beforeId;
    if (limit !== undefined) fields.limit = limit;
    return this.#request('search', fields);
  }

  async createGroup(name, members, { clientOpId } = {}) {
    const client_op_id = clientOpId ?? randomId();
    return (await this.#request('group_create', { name, members, client_op_id })).conversation;
  }

  async addToGroup(conversation, users, { admin } = {}) {
    const fields = { conversation, users };
    if (admin !== undefined) fields.admin = admin;
    return (await this.#request('group_add', fields)).conversation;
  }

  async removeFromGroup(conversation, users) {
    return (await this.#request('group_remove', { conversation, users })).conversation;
  }

  async leaveGroup(conversation) {
    await this.#request('group_leave', { conversation });
  }

  async markRead(conversation, cseq) {
    await this.#request('read', { conversation, cseq });
  }

  async typing(conversation, state) {
    await this.#request('typing', { conversation, state });
  }

  /** Watches users' presence, now and on every later connection; returns the snapshot. */
  async subscribePresence(users) {
    const ok = await this.#request('presence_subscribe', { users });
    for (const p of ok.presence ?? []) {
      if (isObject(p) && isString(p.user) && p.status !== 'unknown') this.#watching.add(p.user);
    }
    return ok.presence;
  }

  ping() {
    return this.#request('ping', {}).then(() => undefined);
  }
}

function notConnected(type) {
  const why = CONNECTION_BOUND.has(type) ? `: '${type}' is not kept for the next connection (it would be stale by then)` : '';
  return new PgChatError('disconnected', `not connected${why}`);
}

function replyError(frame) {
  const code = isString(frame.code) ? frame.code : 'internal';
  const message = isString(frame.message) ? frame.message : `error ${code}`;
  const extra = { frame };
  if (typeof frame.retry_after_ms === 'number' && frame.retry_after_ms >= 0) extra.retryAfterMs = frame.retry_after_ms;
  return new PgChatError(code, message, extra);
}

export default PgChat;
