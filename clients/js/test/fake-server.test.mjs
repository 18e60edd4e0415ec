// What pgchat itself never does, so a real server cannot show it: malformed frames (the
// client reports each as an 'error', code 'bad_frame', and carries on), a bad hello, a
// server that upgrades and then says nothing, the close codes' backoff policy, and (until
// pgchat has it) a session started with `?after=`, confirmed in the hello or refused with
// `resync_required`. Also what a server sees of the token (header or query).
//
// NOTE: the server in this file is NOT pgchat. It is a tiny WebSocket server written here
// with node:http's upgrade and raw RFC 6455 framing, to test the CLIENT's parser and
// policies. It scripts a few protocol frames (hello, replies) around the garbage; it
// stands in for no pgchat behaviour under test (every other test file runs real pgchat).

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import { test } from 'node:test';

import { MemoryStore, PgChat } from '../pgchat.js';
import { track, waitFor } from './helpers.mjs';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** One raw WebSocket connection, server side. */
class RawConnection {
  constructor(socket) {
    this.socket = socket;
    this.buffer = Buffer.alloc(0);
    this.received = [];
    this.waiters = [];
    socket.on('data', (d) => this.#onData(d));
    socket.on('error', () => {});
  }

  #onData(data) {
    this.buffer = Buffer.concat([this.buffer, data]);
    for (;;) {
      const b = this.buffer;
      if (b.length < 2) return;
      const opcode = b[0] & 0x0f;
      let len = b[1] & 0x7f;
      let offset = 2;
      if (len === 126) { if (b.length < 4) return; len = b.readUInt16BE(2); offset = 4; }
      else if (len === 127) { if (b.length < 10) return; len = Number(b.readBigUInt64BE(2)); offset = 10; }
      const masked = (b[1] & 0x80) !== 0;
      const mask = masked ? b.subarray(offset, offset + 4) : null;
      if (masked) offset += 4;
      if (b.length < offset + len) return;
      const payload = Buffer.from(b.subarray(offset, offset + len));
      if (mask) for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i % 4];
      this.buffer = b.subarray(offset + len);
      if (opcode === 1) {
        const frame = JSON.parse(payload.toString('utf8'));
        const w = this.waiters.shift();
        if (w) w(frame);
        else this.received.push(frame);
      } else if (opcode === 8) {
        this.socket.end();
      }
    }
  }

  /** The client's next request. */
  next() {
    if (this.received.length) return Promise.resolve(this.received.shift());
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  frame(opcode, payload) {
    const len = payload.length;
    const head = len < 126 ? Buffer.from([0x80 | opcode, len])
      : len < 65536 ? Buffer.from([0x80 | opcode, 126, len >> 8, len & 0xff])
        : (() => { const h = Buffer.alloc(10); h[0] = 0x80 | opcode; h[1] = 127; h.writeBigUInt64BE(BigInt(len), 2); return h; })();
    this.socket.write(Buffer.concat([head, payload]));
  }

  close(code, reason = '') {
    const r = Buffer.from(reason, 'utf8');
    const payload = Buffer.alloc(2 + r.length);
    payload.writeUInt16BE(code, 0);
    r.copy(payload, 2);
    this.frame(8, payload);
    this.socket.end();
  }

  text(s) { this.frame(1, Buffer.from(typeof s === 'string' ? s : JSON.stringify(s), 'utf8')); }
  binary(bytes) { this.frame(2, Buffer.from(bytes)); }

  hello(user, head = 0, extra = {}) {
    this.text({ type: 'hello', user, session: 's', worker: 'fake', head, server_time: new Date().toISOString(), ...extra });
  }

  /** Answers the client's resume (asserting it is one) with `head`. */
  async answerResume(head) {
    const r = await this.next();
    assert.equal(r.type, 'resume');
    this.text({ type: 'ok', ref: r.ref, head });
    return r;
  }
}

/** A WebSocket server that hands each connection to the next of `scripts`. */
async function fakeServer(scripts) {
  const server = http.createServer((_, res) => res.writeHead(404).end());
  const connections = [];
  server.on('upgrade', (req, socket) => {
    const accept = createHash('sha1').update(req.headers['sec-websocket-key'] + GUID).digest('base64');
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    const conn = new RawConnection(socket);
    // The request line's target and the headers, as the server received them.
    conn.request = { target: req.url, headers: req.headers };
    connections.push(conn);
    const script = scripts.shift();
    if (script) script(conn).catch((e) => { conn.error = e; });
  });
  const port = await new Promise((r) => server.listen(0, '127.0.0.1', () => r(server.address().port)));
  return {
    url: `ws://127.0.0.1:${port}/ws`,
    connections,
    close: () => { for (const c of connections) c.socket.destroy(); server.close(); },
  };
}

/** A JWT-shaped token naming `sub` (unsigned: this server checks nothing). */
const jwt = (sub) => [{ alg: 'HS256', typ: 'JWT' }, { sub, exp: 4102444800 }]
  .map((part) => Buffer.from(JSON.stringify(part)).toString('base64url')).join('.') + '.c2ln';

const message = (seq, id, body) => ({
  type: 'message', seq,
  message: { id, conversation: 'd1', cseq: id, sender: { id: 'eve', name: null }, body, client_msg_id: `c${id}`, created_at: new Date().toISOString() },
});

test('malformed frames are reported as bad_frame errors and skipped; the connection and the stream go on', async (t) => {
  const garbage = [
    'not json',
    '[1,2,3]',
    '{"no":"type"}',
    '{"type":"message","seq":"7"}',
    '{"type":"message","seq":-1,"message":{}}',
    '{"type":"message","seq":1,"message":{"id":"not a number"}}',
    '{"type":"ok"}',
    '{"type":"typing","conversation":1}',
    '{"type":"presence"}',
    '{"type":"token_expiring","expires_in_ms":"soon"}',
    '{"type":"hello","user":"mallory","head":0}',
  ];
  let done;
  const finished = new Promise((r) => { done = r; });
  const fake = await fakeServer([async (conn) => {
    conn.hello('mallory');
    await conn.answerResume(0);
    for (const g of garbage) conn.text(g);
    conn.binary([0xde, 0xad, 0xbe, 0xef]);
    conn.text('{"type":"some_future_event","x":1}'); // unknown, no seq: ignored, not an error
    conn.text('{"type":"constructor"}'); // a name on Object.prototype is no known type either
    conn.text(message(2, 2, 'valid'));
    conn.text(message(2, 2, 'valid')); // a duplicate
    conn.text({ type: 'read', seq: 3, conversation: 'd1', user: 'eve', cseq: 2 });
    const ping = await conn.next();
    conn.text({ type: 'ok', ref: ping.ref });
    done();
  }]);
  t.after(() => fake.close());

  const chat = track(new PgChat({ url: fake.url, token: 'x.y.z', backoff: { initialMs: 10, maxMs: 50 } }));
  const errors = [];
  chat.on('error', (e) => errors.push(e));
  const got = [];
  chat.on('message', (m) => got.push(m));
  const reads = [];
  chat.on('read', (e) => reads.push(e));
  const states = [];
  chat.on('state', (s) => states.push(s.state));
  await chat.connect();
  await waitFor(() => reads.length === 1, 'the read event after the garbage');
  await chat.ping();
  await finished;

  assert.equal(errors.length, garbage.length + 1, errors.map((e) => e.message).join('\n'));
  for (const e of errors) {
    assert.equal(e.name, 'PgChatError');
    assert.equal(e.code, 'bad_frame');
    assert.ok(e.frame !== undefined, 'the offending frame is attached');
  }
  assert.deepEqual(got.map((m) => m.body), ['valid'], 'the valid message once');
  assert.equal(chat.lastSeq, 3, 'seq 1 (malformed but numbered) counted, so no wait for it');
  assert.equal(chat.stats.duplicates, 1);
  assert.deepEqual(states, ['connecting', 'open'], 'never dropped the connection');
  chat.close();
});

test('a bad hello, and a frame the WebSocket layer refuses (not UTF-8): reconnect and resume', async (t) => {
  const resumes = [];
  const fake = await fakeServer([
    async (conn) => {
      conn.text({ type: 'hello', user: 'mallory' }); // no head
    },
    async (conn) => {
      conn.hello('mallory', 5);
      resumes.push((await conn.answerResume(5)).after);
      conn.text(message(6, 6, 'six'));
      conn.frame(1, Buffer.from([0xff, 0xfe, 0xfd])); // invalid UTF-8 in a text frame
    },
    async (conn) => {
      conn.hello('mallory', 7);
      const r = await conn.next();
      resumes.push(r.after);
      conn.text(message(7, 7, 'seven'));
      conn.text({ type: 'ok', ref: r.ref, head: 7 });
    },
  ]);
  t.after(() => fake.close());
  const chat = track(new PgChat({ url: fake.url, getToken: () => 'x.y.z', backoff: { initialMs: 10, maxMs: 50 } }));
  const errors = [];
  chat.on('error', (e) => errors.push(e));
  const got = [];
  chat.on('message', (m) => got.push(m.body));
  const states = [];
  chat.on('state', (s) => states.push(s));
  await chat.connect();
  await waitFor(() => got.length === 2, 'both messages');
  assert.deepEqual(got, ['six', 'seven']);
  assert.deepEqual(resumes, [5, 6], 'the second connection resumed from where the first stopped');
  assert.equal(errors[0].code, 'bad_frame');
  assert.ok(states.filter((s) => s.state === 'reconnecting').length >= 2);
  assert.equal(chat.state, 'open');
  chat.close();
});

test('a server that upgrades but never says hello: given up after connectTimeoutMs, then the next works', async (t) => {
  const fake = await fakeServer([
    async () => {}, // silence
    async (conn) => {
      conn.hello('mallory', 0);
      await conn.answerResume(0);
    },
  ]);
  t.after(() => fake.close());
  const chat = track(new PgChat({ url: fake.url, token: 'x.y.z', connectTimeoutMs: 300, backoff: { initialMs: 10, maxMs: 50 } }));
  const states = [];
  chat.on('state', (s) => states.push(s));
  await chat.connect();
  const drop = states.find((s) => s.state === 'reconnecting');
  assert.equal(drop.code, 4000);
  assert.match(drop.reason, /no progress/);
  assert.equal(fake.connections.length, 2);
  chat.close();
});

test('close codes: after 1013 (try again later) the backoff starts at attempt 3, after 1001 (going away) at 0', async (t) => {
  const fake = await fakeServer([
    async (conn) => { conn.hello('mallory', 0); await conn.answerResume(0); conn.close(1001, 'going away'); },
    async (conn) => { conn.hello('mallory', 0); await conn.answerResume(0); conn.close(1013, 'try again later'); },
    async (conn) => { conn.hello('mallory', 0); await conn.answerResume(0); },
  ]);
  t.after(() => fake.close());
  const backoff = { initialMs: 10, maxMs: 1000 };
  const chat = track(new PgChat({ url: fake.url, token: 'x.y.z', backoff }));
  const drops = [];
  chat.on('state', (s) => { if (s.state === 'reconnecting') drops.push(s); });
  await chat.connect();
  await waitFor(() => fake.connections.length === 3 && chat.state === 'open' && drops.length === 2, 'the third connection');
  assert.deepEqual(drops.map((d) => [d.code, d.attempt]), [[1001, 0], [1013, 3]]);
  assert.ok(drops[0].delayMs < backoff.initialMs);
  assert.ok(drops[1].delayMs < backoff.initialMs * 8);
  chat.close();
});

test('ordering: live events ahead of the replay are held back, and a gap after the resume is asked for again', async (t) => {
  const asked = [];
  const fake = await fakeServer([async (conn) => {
    conn.hello('mallory', 5);
    const resume = await conn.next(); // after 2, from the store
    asked.push(resume.after);
    // As pgchat may: live events from the hello's head come before the replay ...
    conn.text(message(6, 6, 'six'));
    // ... then the replay from the resume's point, then its reply.
    for (const n of [3, 4, 5, 6]) conn.text(message(n, n, ['', '', '', 'three', 'four', 'five', 'six'][n]));
    conn.text({ type: 'ok', ref: resume.ref, head: 6 });
    // pgchat never skips within a session; if a seq jumps anyway, the client asks again.
    conn.text(message(8, 8, 'eight'));
    const again = await conn.next();
    asked.push(again.after);
    assert.equal(again.type, 'resume');
    conn.text(message(7, 7, 'seven'));
    conn.text(message(8, 8, 'eight'));
    conn.text({ type: 'ok', ref: again.ref, head: 8 });
    conn.text(message(8, 8, 'eight')); // and a duplicate
    const ping = await conn.next();
    conn.text({ type: 'ok', ref: ping.ref });
  }]);
  t.after(() => fake.close());
  const store = new MemoryStore();
  store.set('pgchat:lastSeq:mallory', '2');
  const chat = track(new PgChat({ url: fake.url, token: 'x.y.z', store }));
  const got = [];
  chat.on('message', (m) => got.push(m.body));
  await chat.connect();
  await waitFor(() => got.length === 6, 'six messages');
  await chat.ping();
  assert.deepEqual(got, ['three', 'four', 'five', 'six', 'seven', 'eight']);
  assert.deepEqual(asked, [2, 6]);
  assert.equal(chat.stats.heldBack, 2, "'six' before the replay, 'eight' before 'seven'");
  assert.equal(chat.stats.duplicates, 1, "the last 'eight'");
  assert.equal(store.get('pgchat:lastSeq:mallory'), '8');
  chat.close();
});

test('?after=: a hello that confirms it needs no resume; the replay, then live events, in order; the next connection asks from where this one stopped', async (t) => {
  const token = jwt('mallory');
  const requests = [];
  const firstFrames = [];
  const fake = await fakeServer([
    async (conn) => {
      requests.push(conn.request);
      conn.hello('mallory', 5, { after: 2 });
      // The session streams from 2: the replay (3..5), then a live event.
      for (const n of [3, 4, 5, 6]) conn.text(message(n, n, `m${n}`));
      const ping = await conn.next(); // the client's first frame on this socket
      firstFrames.push(ping.type);
      conn.text({ type: 'ok', ref: ping.ref });
      conn.close(1001, 'going away');
    },
    async (conn) => {
      requests.push(conn.request);
      conn.hello('mallory', 6, { after: 6 });
      conn.text(message(7, 7, 'm7'));
      const ping = await conn.next();
      firstFrames.push(ping.type);
      conn.text({ type: 'ok', ref: ping.ref });
    },
  ]);
  t.after(() => fake.close());
  const store = new MemoryStore();
  store.set('pgchat:lastSeq:mallory', '2');
  const chat = track(new PgChat({ url: fake.url, token, store, backoff: { initialMs: 10, maxMs: 50 } }));
  const got = [];
  chat.on('message', (m) => got.push(m.body));
  const states = [];
  chat.on('state', (s) => states.push(s.state));
  await chat.connect();
  await waitFor(() => got.length === 4, 'the replay and the live event');
  await chat.ping();
  await waitFor(() => chat.state === 'open' && fake.connections.length === 2 && got.length === 5, 'the second connection');
  await chat.ping();

  assert.deepEqual(got, ['m3', 'm4', 'm5', 'm6', 'm7']);
  assert.deepEqual(firstFrames, ['ping', 'ping'], 'no resume on either connection');
  // The first connection knew the user from the token's sub, so it asked from the store's
  // position; the second from the last seq handed over.
  assert.deepEqual(requests.map((r) => r.target), ['/ws?after=2', '/ws?after=6']);
  for (const r of requests) {
    assert.ok(!r.target.includes('token'), `no token in the request line: ${r.target}`);
    assert.equal(r.headers.authorization, `Bearer ${token}`, 'Node: the token in the Authorization header');
  }
  assert.equal(chat.stats.heldBack, 0, 'nothing arrived ahead of its turn');
  assert.deepEqual(states, ['connecting', 'open', 'reconnecting', 'connecting', 'open']);
  assert.equal(store.get('pgchat:lastSeq:mallory'), '7');
  chat.close();
});

test('?after= refused: resync_required right after the hello is a resync, then a resume from the head', async (t) => {
  const asked = [];
  const fake = await fakeServer([async (conn) => {
    asked.push(conn.request.target);
    conn.hello('mallory', 9, { after: 2 });
    conn.text({ type: 'error', code: 'resync_required', message: 'events after seq 2 were pruned: reload' });
    const resume = await conn.next();
    asked.push(resume);
    conn.text(message(10, 10, 'ten'));
    conn.text({ type: 'ok', ref: resume.ref, head: 10 });
    const ping = await conn.next();
    conn.text({ type: 'ok', ref: ping.ref });
  }]);
  t.after(() => fake.close());
  const store = new MemoryStore();
  store.set('pgchat:lastSeq:mallory', '2');
  const chat = track(new PgChat({ url: fake.url, token: jwt('mallory'), store }));
  const resyncs = [];
  chat.on('resync', (r) => resyncs.push(r));
  const errors = [];
  chat.on('error', (e) => errors.push(e));
  const got = [];
  chat.on('message', (m) => got.push(m.body));
  await chat.connect();
  await waitFor(() => got.length === 1, 'the event after the head');
  await chat.ping();
  assert.equal(asked[0], '/ws?after=2');
  assert.equal(asked[1].type, 'resume');
  assert.equal(asked[1].after, 9, "from the hello's head");
  assert.deepEqual(resyncs.map((r) => [r.head, r.reason]), [[9, 'events after seq 2 were pruned: reload']]);
  assert.deepEqual(errors, [], 'the refusal is the resync, not an error');
  assert.deepEqual(got, ['ten']);
  assert.equal(chat.lastSeq, 10);
  assert.equal(store.get('pgchat:lastSeq:mallory'), '10');
  chat.close();
});

test('?after= not confirmed (a hello without after, or with another seq): resume, as in v1', async (t) => {
  const resumes = [];
  const fake = await fakeServer([
    async (conn) => {
      conn.hello('mallory', 8, { after: 3 }); // not what was asked
      resumes.push([conn.request.target, (await conn.answerResume(8)).after]);
      conn.close(1001);
    },
    async (conn) => {
      conn.hello('mallory', 8); // a server that ignores ?after=
      resumes.push([conn.request.target, (await conn.answerResume(8)).after]);
    },
  ]);
  t.after(() => fake.close());
  const store = new MemoryStore();
  store.set('pgchat:lastSeq:mallory', '4');
  const chat = track(new PgChat({ url: fake.url, token: jwt('mallory'), store, startAt: 0, backoff: { initialMs: 10, maxMs: 50 } }));
  await chat.connect();
  await waitFor(() => resumes.length === 2 && chat.state === 'open', 'the second connection resumed');
  assert.deepEqual(resumes, [['/ws?after=4', 4], ['/ws?after=4', 4]]);
  chat.close();
});

test("tokenIn: 'query' puts the token in ?token=; 'header' and 'auto' (in Node) in Authorization only", async (t) => {
  const answer = async (conn) => { conn.hello('mallory', 0); await conn.answerResume(0); };
  const fake = await fakeServer([answer, answer, answer]);
  t.after(() => fake.close());
  const token = 'x.y.z'; // names no user: nothing is known before the hello, so no ?after=
  for (const tokenIn of ['query', 'header', undefined]) {
    const chat = track(new PgChat({ url: fake.url, token, ...(tokenIn ? { tokenIn } : {}) }));
    await chat.connect();
    chat.close();
  }
  const seen = fake.connections.map((c) => [c.request.target, c.request.headers.authorization]);
  assert.deepEqual(seen, [
    [`/ws?token=${token}`, undefined],
    ['/ws', `Bearer ${token}`],
    ['/ws', `Bearer ${token}`],
  ]);
  assert.throws(() => new PgChat({ url: fake.url, token, tokenIn: 'cookie' }), TypeError);
});
