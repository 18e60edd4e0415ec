// Shared by the client's tests: a REAL pgchat server (the binary, started and restarted by
// the test itself), tokens minted with node:crypto, and small waiting helpers.
//
// Run by tests/js_client.rs, which creates a fresh database and passes DATABASE_URL,
// PGCHAT_BIN and JWT_SECRET. By hand, after `cargo build`:
//   DATABASE_URL=postgres://postgres@127.0.0.1:5432/some_db PGCHAT_BIN=target/debug/pgchat \
//   JWT_SECRET=test-secret node --experimental-websocket --test clients/js/test/
// (TEST_LOG=1 shows the servers' logs.)

import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { after } from 'node:test';

import { PgChat } from '../pgchat.js';

export const { DATABASE_URL, PGCHAT_BIN, JWT_SECRET } = process.env;
if (!DATABASE_URL || !PGCHAT_BIN || !JWT_SECRET) {
  throw new Error('set DATABASE_URL, PGCHAT_BIN and JWT_SECRET (tests/js_client.rs does)');
}

/** How long a test waits for something that should happen (generous for busy machines). */
export const PATIENCE_MS = 20000;

/** An HS256 JWT for `user`, living `ttlSecs` (fractional seconds are fine). */
export function mintToken(user, { ttlSecs = 3600, name, secret = JWT_SECRET } = {}) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const claims = { sub: user, exp: Math.floor(Date.now() / 1000 + ttlSecs), iat: Math.floor(Date.now() / 1000) };
  if (name !== undefined) claims.name = name;
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

/** A user id no other test (or run) uses: tests share one database. */
export function uniqueUser(name) {
  return `${name}_${randomBytes(4).toString('hex')}`;
}

/**
 * A free port below the kernel's ephemeral range (as tests/common/cluster.rs picks them):
 * a port inside it may be taken by an outgoing connection before the server binds it.
 */
export async function freePort() {
  let start = 32768;
  try {
    start = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || start;
  } catch { /* not Linux */ }
  const [low, high] = start > 12000 ? [10000, start] : [20000, 32768];
  for (let i = 0; i < 200; i++) {
    const port = low + Math.floor(Math.random() * (high - low));
    const free = await new Promise((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error('no free port');
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until `cond()` is truthy (polling), or fails naming `what`. */
export async function waitFor(cond, what, timeoutMs = PATIENCE_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

const running = new Set();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** One pgchat process (one worker) on its own port, restartable on the same port. */
export class Server {
  constructor(env = {}) {
    this.env = env;
    this.port = null;
    this.child = null;
  }

  get url() { return `ws://127.0.0.1:${this.port}/ws`; }
  get http() { return `http://127.0.0.1:${this.port}`; }

  async start() {
    this.port ??= await freePort();
    const child = spawn(PGCHAT_BIN, [], {
      env: {
        PATH: process.env.PATH,
        PGCHAT_CONFIG: '/nonexistent/pgchat.toml',
        DATABASE_URL,
        JWT_SECRET,
        PORT: String(this.port),
        PGCHAT_HOST: '127.0.0.1',
        NODE_ENV: 'test',
        WORKERS: '1',
        RUST_LOG: process.env.RUST_LOG ?? 'warn',
        ...this.env,
      },
      stdio: ['ignore', process.env.TEST_LOG ? 'inherit' : 'ignore', process.env.TEST_LOG ? 'inherit' : 'ignore'],
    });
    this.child = child;
    running.add(child);
    const exited = new Promise((resolve) => child.once('exit', (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    }));
    child.exited = exited;
    const deadline = Date.now() + PATIENCE_MS;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`pgchat exited at start: ${JSON.stringify(await exited)} (TEST_LOG=1 shows why)`);
      }
      try {
        const r = await fetch(`${this.http}/ready`);
        if (r.status === 200) return this;
      } catch { /* not listening yet */ }
      if (Date.now() > deadline) throw new Error('pgchat did not become ready');
      await sleep(20);
    }
  }

  /** Stops the process with `signal` and waits for it to exit. */
  async stop(signal = 'SIGTERM') {
    const child = this.child;
    if (!child) return null;
    this.child = null;
    child.kill(signal);
    return child.exited;
  }

  async restart(signal = 'SIGTERM', pauseMs = 0) {
    await this.stop(signal);
    if (pauseMs) await sleep(pauseMs);
    return this.start();
  }
}

const clients = new Set();
// A failed test leaves its clients reconnecting; the file's run must still end.
after(() => {
  for (const c of clients) c.close();
});

/** A client for `user` on `server` with fast backoff (tests should not wait seconds). */
export function client(server, user, options = {}) {
  return track(new PgChat({
    url: server.url,
    getToken: () => mintToken(user),
    backoff: { initialMs: 50, maxMs: 400 },
    requestTimeoutMs: PATIENCE_MS,
    ...options,
  }));
}

/** Closes `chat` when the file's tests end. */
export function track(chat) {
  clients.add(chat);
  return chat;
}

/** Records every emission of `events` on `chat`, in order, as [event, ...args]. */
export function record(chat, events) {
  const log = [];
  for (const e of events) chat.on(e, (...args) => log.push([e, ...args]));
  return log;
}

/** The `message` events' messages on `chat`, as received. */
export function messages(chat, conversation) {
  const list = [];
  chat.on('message', (m) => {
    if (conversation === undefined || m.conversation === conversation) list.push(m);
  });
  return list;
}

/** Every message of a conversation, oldest first, through history pages. */
export async function fullHistory(chat, conversation) {
  const all = [];
  let before;
  for (;;) {
    const page = await chat.historyPage(conversation, { limit: 100, ...(before === undefined ? {} : { beforeCseq: before }) });
    all.unshift(...page.messages);
    if (!page.has_more || page.messages.length === 0) return all;
    before = page.messages[0].cseq;
  }
}

/** Runs SQL on the test database with psql (for what only the database can do: age events). */
export async function psql(sql) {
  const child = spawn('psql', [DATABASE_URL, '-v', 'ON_ERROR_STOP=1', '-qAtc', sql], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  const code = await new Promise((r) => child.on('exit', r));
  if (code !== 0) throw new Error(`psql failed (${code}): ${err}`);
  return out.trim();
}

/**
 * A TCP proxy in front of a server: cuts one client's connections (as a network failure
 * would) and refuses new ones for a while, while the server and other clients go on.
 * It relays bytes; it never speaks for the server.
 */
export class Proxy {
  constructor(server) {
    this.server = server;
    this.refusing = false;
    this.sockets = new Set();
    this.accepted = 0;
  }

  get url() { return `ws://127.0.0.1:${this.port}/ws`; }

  async start() {
    this.listener = net.createServer((down) => {
      if (this.refusing) {
        down.destroy();
        return;
      }
      this.accepted++;
      const up = net.connect(this.server.port, '127.0.0.1');
      for (const [a, b] of [[down, up], [up, down]]) {
        this.sockets.add(a);
        a.on('data', (d) => { if (!a.frozen) b.write(d); });
        a.on('error', () => b.destroy());
        a.on('close', () => { this.sockets.delete(a); b.destroy(); });
      }
    });
    this.port = await new Promise((resolve) => this.listener.listen(0, '127.0.0.1', () => resolve(this.listener.address().port)));
    return this;
  }

  /** Drops every relayed connection at once (no close frame: the client sees 1006). */
  cut() {
    for (const s of this.sockets) s.destroy();
  }

  /** Stops relaying on the current connections without closing them (a dead route). */
  freeze() {
    for (const s of this.sockets) s.frozen = true;
  }

  refuse(on = true) {
    this.refusing = on;
    if (on) this.cut();
  }

  close() {
    this.refuse(true);
    this.listener?.close();
  }
}

/**
 * A WebSocket that logs what it opens (the URL and the second argument: the headers, if the
 * client passed any), sends and receives, with times (for options.WebSocket).
 */
export function spyWebSocket(log) {
  return class SpyWebSocket extends globalThis.WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      log.push({ t: performance.now(), dir: 'open', url: String(url), init: protocols });
      this.addEventListener('message', (e) => log.push({ t: performance.now(), dir: 'in', frame: safeParse(e.data) }));
    }
    send(data) {
      log.push({ t: performance.now(), dir: 'out', frame: safeParse(data) });
      super.send(data);
    }
  };
}

function safeParse(s) {
  try { return JSON.parse(s); } catch { return s; }
}
