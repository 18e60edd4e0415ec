// PLACEHOLDER — NOT THE REAL CLIENT.
//
// The real client (issue 10, item 3) is written on the `client` branch at the same time as
// the demo. This stand-in was written on the `demo` branch only so that the demo (served
// at /pgchat.js, src/demo) and its browser test can run before that lands. It implements
// the API the common brief gives for clients/js/pgchat.js, minimally. When the branches
// are merged, the `client` branch's file replaces this one entirely: keep theirs.

export class MemoryStore {
  #map = new Map();
  get(key) { return this.#map.get(key); }
  set(key, value) { this.#map.set(key, value); }
}

export class PgChatError extends Error {
  constructor(code, message, frame) {
    super(message);
    this.name = 'PgChatError';
    this.code = code;
    if (frame !== undefined) this.frame = frame;
  }
}

const RETRYABLE = new Set(['unavailable', 'rate_limited', 'internal', 'not_ready', 'at_capacity']);

function randomId() {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export class PgChat {
  #opts; #ws = null; #state = 'idle'; #user = null; #lastSeq = 0; #listeners = new Map();
  #pending = new Map(); #nextRef = 1; #outbox = new Map(); #attempt = 0; #timer = null;
  #resumed = false; #closed = false; #firstConnect = null; #first = null; #waiters = []; #head = 0;

  constructor(options) {
    if (!options || !options.url) throw new TypeError('PgChat: options.url is required');
    this.#opts = {
      store: new MemoryStore(), startAt: 'head', requestTimeoutMs: 15000,
      ...options, backoff: { initialMs: 500, maxMs: 10000, ...(options.backoff || {}) },
    };
  }

  get state() { return this.#state; }
  get user() { return this.#user; }
  get lastSeq() { return this.#lastSeq; }

  on(event, listener) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) { this.#listeners.get(event)?.delete(listener); }

  #emit(event, ...args) {
    for (const l of [...(this.#listeners.get(event) || [])]) {
      try { l(...args); } catch (e) { queueMicrotask(() => { throw e; }); }
    }
  }

  #setState(state, extra = {}) {
    this.#state = state;
    this.#emit('state', { state, ...extra });
    if (state === 'open') for (const w of this.#waiters.splice(0)) w.resolve();
  }

  connect() {
    if (this.#closed) return Promise.reject(new PgChatError('closed', 'the client is closed'));
    if (!this.#firstConnect) {
      this.#firstConnect = new Promise((resolve, reject) => { this.#first = { resolve, reject }; });
      this.#open();
    }
    return this.#firstConnect;
  }

  close() {
    this.#closed = true;
    clearTimeout(this.#timer);
    const err = new PgChatError('closed', 'the client was closed');
    for (const p of this.#pending.values()) { clearTimeout(p.timer); p.reject(err); }
    this.#pending.clear();
    for (const s of this.#outbox.values()) s.reject(err);
    this.#outbox.clear();
    for (const w of this.#waiters.splice(0)) w.reject(err);
    if (this.#ws) { try { this.#ws.close(1000); } catch { /* already closed */ } }
    this.#first?.reject(err);
    this.#setState('closed');
  }

  async #open() {
    if (this.#closed) return;
    this.#setState(this.#attempt === 0 && !this.#user ? 'connecting' : 'reconnecting', { attempt: this.#attempt });
    let token;
    try {
      token = this.#opts.getToken ? await this.#opts.getToken() : this.#opts.token;
    } catch (e) {
      this.#emit('error', new PgChatError('unauthorized', `getToken failed: ${e?.message || e}`));
      return this.#retry('getToken failed');
    }
    if (this.#closed) return;
    const WS = this.#opts.WebSocket || globalThis.WebSocket;
    const sep = this.#opts.url.includes('?') ? '&' : '?';
    let ws;
    try {
      ws = new WS(`${this.#opts.url}${sep}token=${encodeURIComponent(token)}`);
    } catch (e) {
      return this.#retry(String(e?.message || e));
    }
    this.#ws = ws;
    this.#resumed = false;
    ws.onmessage = (m) => { if (this.#ws === ws) this.#frame(m.data); };
    ws.onclose = (e) => { if (this.#ws === ws) this.#lost(`closed ${e.code}${e.reason ? `: ${e.reason}` : ''}`); };
    ws.onerror = () => {};
  }

  #lost(reason) {
    this.#ws = null;
    this.#resumed = false;
    const err = new PgChatError('closed', `the connection was lost (${reason})`);
    for (const p of this.#pending.values()) { clearTimeout(p.timer); p.reject(err); }
    this.#pending.clear();
    for (const s of this.#outbox.values()) s.inflight = false;
    if (!this.#closed) this.#retry(reason);
  }

  #retry(reason) {
    const { initialMs, maxMs } = this.#opts.backoff;
    const delayMs = Math.floor(Math.random() * Math.min(maxMs, initialMs * 2 ** this.#attempt));
    this.#attempt += 1;
    this.#setState('reconnecting', { attempt: this.#attempt, delayMs, reason });
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#open(), delayMs);
  }

  #key() { return `pgchat:${this.#user}:seq`; }

  async #frame(text) {
    let f;
    try { f = JSON.parse(text); } catch { f = null; }
    if (!f || typeof f !== 'object' || typeof f.type !== 'string') {
      this.#emit('error', new PgChatError('bad_frame', 'a frame that is not a JSON object with a type', text));
      return;
    }
    if (f.type === 'hello') return this.#hello(f);
    if (f.type === 'ok' || f.type === 'error') {
      const p = this.#pending.get(f.ref);
      if (!p) {
        if (f.type === 'error') this.#emit('error', new PgChatError(f.code || 'bad_frame', f.message || '', f));
        return;
      }
      this.#pending.delete(f.ref);
      clearTimeout(p.timer);
      if (f.type === 'ok') p.resolve(f); else p.reject(new PgChatError(f.code, f.message, f));
      return;
    }
    if (f.type === 'token_expiring') {
      this.#emit('token_expiring', { expiresInMs: f.expires_in_ms });
      if (this.#opts.getToken) {
        try { await this.request('auth', { token: await this.#opts.getToken() }); } catch (e) { this.#emit('error', e); }
      }
      return;
    }
    if (typeof f.seq === 'number') {
      if (f.seq <= this.#lastSeq) return; // a duplicate
      if (f.seq !== this.#lastSeq + 1) {
        // Before the resume reply, live events may run ahead: the replay sends them again.
        if (this.#resumed) this.#resume();
        return;
      }
      this.#lastSeq = f.seq;
      try { await this.#opts.store.set(this.#key(), String(f.seq)); } catch (e) { this.#emit('error', e); }
      if (f.type === 'message') this.#emit('message', f.message, f);
      else if (f.type === 'conversation') this.#emit('conversation', f.conversation, f);
      else if (f.type === 'read') this.#emit('read', f);
      this.#emit('event', f);
      return;
    }
    if (f.type === 'typing') this.#emit('typing', f);
    else if (f.type === 'presence') this.#emit('presence', f);
    else this.#emit('error', new PgChatError('bad_frame', `unexpected frame type ${f.type}`, f));
  }

  async #hello(hello) {
    if (this.#user && this.#user !== hello.user) {
      this.#lastSeq = 0;
    }
    this.#user = hello.user;
    this.#head = hello.head;
    if (!this.#resumedOnce) {
      let stored = null;
      try { stored = await this.#opts.store.get(this.#key()); } catch { stored = null; }
      if (stored != null && stored !== '') this.#lastSeq = Number(stored);
      else this.#lastSeq = this.#opts.startAt === 'head' ? hello.head : Number(this.#opts.startAt) || 0;
    }
    this.#emit('hello', hello);
    this.#resume();
  }

  #resumedOnce = false;

  async #resume() {
    try {
      const ok = await this.#raw('resume', { after: this.#lastSeq }, 0);
      if (typeof ok.head === 'number' && ok.head > this.#lastSeq) this.#lastSeq = ok.head;
    } catch (e) {
      if (e.code === 'resync_required' || e.code === 'bad_request') {
        // Events were pruned (or the position belongs to another database): the
        // application reloads its state, and the stream goes on from the head.
        this.#lastSeq = this.#head;
        try { await this.#opts.store.set(this.#key(), String(this.#head)); } catch { /* best effort */ }
        this.#emit('resync', { head: this.#head });
        return this.#resume();
      }
      return;
    }
    this.#resumed = true;
    const first = !this.#resumedOnce;
    this.#resumedOnce = true;
    this.#attempt = 0;
    this.#setState('open');
    if (first) this.#first?.resolve();
    for (const s of this.#outbox.values()) this.#transmit(s);
  }

  #raw(type, fields, timeoutMs) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1) return Promise.reject(new PgChatError('closed', 'not connected'));
    const ref = this.#nextRef++;
    return new Promise((resolve, reject) => {
      const p = { resolve, reject, timer: null };
      if (timeoutMs > 0) {
        p.timer = setTimeout(() => {
          this.#pending.delete(ref);
          reject(new PgChatError('timeout', `${type}: no reply in ${timeoutMs} ms`));
        }, timeoutMs);
      }
      this.#pending.set(ref, p);
      ws.send(JSON.stringify({ ...fields, type, ref }));
    });
  }

  #whenOpen() {
    if (this.#state === 'open') return Promise.resolve();
    if (this.#closed) return Promise.reject(new PgChatError('closed', 'the client is closed'));
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  async request(type, fields = {}) {
    await this.#whenOpen();
    const ok = await this.#raw(type, fields, this.#opts.requestTimeoutMs);
    const { type: _t, ref: _r, ...rest } = ok;
    return rest;
  }

  send(target, body, opts = {}) {
    if (this.#closed) return Promise.reject(new PgChatError('closed', 'the client is closed'));
    const clientMsgId = opts.clientMsgId || randomId();
    return new Promise((resolve, reject) => {
      const s = { target, body, clientMsgId, resolve, reject, inflight: false };
      this.#outbox.set(clientMsgId, s);
      if (this.#state === 'open') this.#transmit(s);
    });
  }

  async #transmit(s) {
    if (s.inflight || this.#state !== 'open') return;
    s.inflight = true;
    try {
      const ok = await this.#raw('send', { ...s.target, body: s.body, client_msg_id: s.clientMsgId }, 0);
      this.#outbox.delete(s.clientMsgId);
      s.resolve(ok.message);
    } catch (e) {
      s.inflight = false;
      if (e.code === 'closed') return; // sent again after the reconnect
      if (RETRYABLE.has(e.code)) {
        setTimeout(() => this.#transmit(s), e.frame?.retry_after_ms || 1000);
        return;
      }
      this.#outbox.delete(s.clientMsgId);
      s.reject(e);
    }
  }

  async history(conversation, opts = {}) {
    const f = { conversation };
    if (opts.beforeCseq != null) f.before_cseq = opts.beforeCseq;
    if (opts.limit != null) f.limit = opts.limit;
    return (await this.request('history', f)).messages;
  }

  async conversations() { return (await this.request('conversations')).conversations; }

  members(conversation, opts = {}) { return this.request('members', { conversation, ...opts }); }

  async createGroup(name, members, opts = {}) {
    const f = { name, members };
    if (opts.clientOpId) f.client_op_id = opts.clientOpId;
    return (await this.request('group_create', f)).conversation;
  }

  addToGroup(conversation, users, opts = {}) {
    return this.request('group_add', { conversation, users, ...(opts.admin ? { admin: true } : {}) });
  }

  removeFromGroup(conversation, users) { return this.request('group_remove', { conversation, users }); }

  leaveGroup(conversation) { return this.request('group_leave', { conversation }); }

  markRead(conversation, cseq) { return this.request('read', { conversation, cseq }); }

  async typing(conversation, state) { await this.request('typing', { conversation, state }); }

  async subscribePresence(users) { return (await this.request('presence_subscribe', { users })).presence; }
}
