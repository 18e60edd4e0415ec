// Reconnecting (backoff with full jitter), resuming after a disconnect (what was sent
// meanwhile arrives after reconnecting, in order, once; asked for with ?after= at connect,
// and with resume where the server does not confirm that), dropping duplicates by seq, and
// no stale typing after a reconnect.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { MemoryStore, backoffDelay } from '../pgchat.js';
import { Proxy, Server, client, fullHistory, messages, sleep, spyWebSocket, uniqueUser, waitFor } from './helpers.mjs';

const server = new Server({ PGCHAT_RATE_LIMIT_PER_SEC: '100000', PGCHAT_RATE_LIMIT_BURST: '100000' });
before(() => server.start());
after(() => server.stop());

test('backoffDelay is full jitter: uniform in [0, min(maxMs, initialMs * 2^attempt))', () => {
  const opts = { initialMs: 100, maxMs: 1000 };
  assert.equal(backoffDelay(0, opts, () => 0), 0);
  assert.equal(backoffDelay(0, opts, () => 0.999999), 99);
  assert.equal(backoffDelay(3, opts, () => 0.5), 400);
  assert.equal(backoffDelay(4, opts, () => 0.999999), 999, 'capped at maxMs');
  assert.equal(backoffDelay(60, opts, () => 0.5), 500, 'no overflow for large attempts');
  // The real random source: spread over the whole range, not bunched at the cap.
  const samples = Array.from({ length: 2000 }, () => backoffDelay(10, opts));
  assert.ok(samples.every((d) => Number.isInteger(d) && d >= 0 && d < 1000));
  const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
  assert.ok(mean > 400 && mean < 600, `mean ${mean} near 500`);
  assert.ok(Math.min(...samples) < 50 && Math.max(...samples) > 950);
});

test('while the server is down the client retries with growing, jittered delays, then resumes', async (t) => {
  const user = uniqueUser('patient');
  const backoff = { initialMs: 40, maxMs: 320 };
  const chat = client(server, user, { backoff });
  const states = [];
  chat.on('state', (s) => states.push({ ...s, at: performance.now() }));
  await chat.connect();

  await server.stop('SIGTERM');
  await waitFor(() => states.filter((s) => s.state === 'reconnecting').length >= 7, 'seven retries');
  await server.start();
  await waitFor(() => chat.state === 'open', 'open again');

  const retries = states.filter((s) => s.state === 'reconnecting');
  t.diagnostic(`delays: ${retries.map((s) => s.delayMs).join(', ')} ms; reasons: ${[...new Set(retries.map((s) => s.reason))].join(' | ')}`);
  assert.equal(retries[0].code, 1001, 'the server said it was going away');
  retries.forEach((s, i) => {
    assert.equal(s.attempt, i, 'attempts count up while every try fails');
    const cap = Math.min(backoff.maxMs, backoff.initialMs * 2 ** i);
    assert.ok(Number.isInteger(s.delayMs) && s.delayMs >= 0 && s.delayMs < cap, `delay ${s.delayMs} within [0, ${cap})`);
  });
  assert.ok(new Set(retries.map((s) => s.delayMs)).size > 1, 'jittered, not one fixed delay');
  // Each try starts no sooner than its delay (timers may round by a millisecond).
  for (let i = 0; i < states.length - 1; i++) {
    if (states[i].state !== 'reconnecting') continue;
    assert.equal(states[i + 1].state, 'connecting');
    assert.ok(states[i + 1].at - states[i].at >= states[i].delayMs - 2, 'waited its delay');
  }
  assert.deepEqual(states.at(-1).state, 'open');

  // Once open, the count starts again: the next drop retries within initialMs.
  await server.restart('SIGKILL');
  await waitFor(() => chat.state === 'open', 'open after the second restart');
  const after = states.slice(states.findLastIndex((s) => s.state === 'open' && s !== states.at(-1)) + 1)
    .filter((s) => s.state === 'reconnecting');
  assert.equal(after[0].attempt, 0);
  assert.equal(after[0].code, 1006, 'a killed server says nothing');
  assert.ok(after[0].delayMs < backoff.initialMs);
  chat.close();
});

test('messages sent while a client was cut off arrive after it reconnects, in order, once', async (t) => {
  const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
  const proxy = await new Proxy(server).start();
  t.after(() => proxy.close());
  const alice = client(server, a);
  const bob = client(proxy, b);
  const seen = messages(bob);
  await Promise.all([alice.connect(), bob.connect()]);
  const { conversation } = await alice.send({ to: b }, 'before');
  await waitFor(() => seen.length === 1, 'the first message');

  proxy.refuse(true); // bob's socket drops, and his reconnects fail for now
  await waitFor(() => bob.state === 'reconnecting', 'bob reconnecting');
  for (let i = 0; i < 30; i++) await alice.send({ conversation }, `offline ${i}`);
  assert.equal(seen.length, 1, 'nothing reached bob while he was cut off');
  proxy.refuse(false);
  // More while he comes back: live events after his new hello race the replay.
  const racing = [];
  for (let i = 0; i < 30; i++) racing.push(alice.send({ conversation }, `racing ${i}`));
  await Promise.all(racing);
  await alice.send({ conversation }, 'end');
  await waitFor(() => seen.at(-1)?.body === 'end', "bob's 'end'");
  assert.deepEqual(seen.map((m) => m.body), [
    'before',
    ...Array.from({ length: 30 }, (_, i) => `offline ${i}`),
    ...Array.from({ length: 30 }, (_, i) => `racing ${i}`),
    'end',
  ]);
  assert.deepEqual(seen.map((m) => m.cseq), Array.from({ length: 62 }, (_, i) => i + 1));
  t.diagnostic(`bob: ${JSON.stringify(bob.stats)}`);
  alice.close();
  bob.close();
});

test('duplicates are dropped by seq: a replay that overlaps what was seen shows nothing twice', async (t) => {
  const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
  const alice = client(server, a);
  const bob = client(server, b);
  const seen = messages(bob);
  const events = [];
  bob.on('event', (e) => events.push(e.seq));
  await Promise.all([alice.connect(), bob.connect()]);
  const { conversation } = await alice.send({ to: b }, 'm0');
  for (let i = 1; i < 10; i++) await alice.send({ conversation }, `m${i}`);
  await waitFor(() => seen.length === 10, 'ten messages');
  const last = bob.lastSeq;
  const before = bob.stats.duplicates;

  // The real server replays the last 8 events again (resume moves its cursor back) ...
  const replay = await bob.request('resume', { after: last - 8 });
  assert.equal(replay.head, last);
  // ... twice, concurrently, while a new message arrives.
  const [second] = await Promise.all([
    bob.request('resume', { after: last - 4 }),
    alice.send({ conversation }, 'm10'),
  ]);
  assert.ok(second.head >= last);
  await waitFor(() => seen.at(-1)?.body === 'm10', 'm10');
  await bob.ping(); // every replayed frame is in before this reply
  assert.ok(bob.stats.duplicates - before >= 12, `the replays' ${bob.stats.duplicates - before} events were dropped`);
  assert.deepEqual(seen.map((m) => m.body), Array.from({ length: 11 }, (_, i) => `m${i}`));
  assert.deepEqual(events, Array.from({ length: events.length }, (_, i) => events[0] + i), 'seq gap-free, each once');
  assert.deepEqual((await fullHistory(bob, conversation)).map((m) => m.body), seen.map((m) => m.body));
  alice.close();
  bob.close();
});

test('close 1001 (the server shutting down): a new session, resumed, and no error reported', async () => {
  const user = uniqueUser('closer');
  const chat = client(server, user);
  const errors = [];
  chat.on('error', (e) => errors.push(e));
  await chat.connect();
  const hello1 = chat.hello.session;
  await server.restart('SIGTERM');
  await waitFor(() => chat.state === 'open' && chat.hello?.session !== hello1, 'a new session');
  assert.deepEqual(errors, []);
  chat.close();
});

test('a connection that silently stops carrying frames is found by the heartbeat and replaced', async () => {
  const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
  const proxy = await new Proxy(server).start();
  const alice = client(server, a);
  const bob = client(proxy, b, { heartbeatMs: 300 });
  const seen = messages(bob);
  const states = [];
  bob.on('state', (s) => states.push(s));
  await Promise.all([alice.connect(), bob.connect()]);
  proxy.freeze(); // no close, no error: frames just stop
  const { conversation } = await alice.send({ to: b }, 'while frozen');
  await waitFor(() => seen.length === 1, 'the message, over a new connection');
  const drop = states.find((s) => s.state === 'reconnecting');
  assert.equal(drop.code, 4000);
  assert.match(drop.reason, /heartbeat/);
  assert.equal(proxy.accepted, 2);
  await alice.send({ conversation }, 'after');
  await waitFor(() => seen.length === 2, 'the next');
  alice.close();
  bob.close();
  proxy.close();
});

/** The spy's log cut into connections: each from its 'open' on, with the hello if it came. */
function connections(wire) {
  const list = [];
  for (const w of wire) {
    if (w.dir === 'open') list.push({ url: new URL(w.url), init: w.init, frames: [] });
    else list.at(-1).frames.push(w);
  }
  for (const c of list) c.hello = c.frames.find((w) => w.dir === 'in' && w.frame.type === 'hello')?.frame;
  return list;
}

test('each (re)connect asks for ?after=<last seq>, with the token in a header; resume only where the hello does not confirm it', async (t) => {
  const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
  const proxy = await new Proxy(server).start();
  t.after(() => proxy.close());
  const wire = [];
  const store = new MemoryStore();
  const alice = client(server, a);
  const bob = client(proxy, b, { WebSocket: spyWebSocket(wire), store });
  const seen = messages(bob);
  await Promise.all([alice.connect(), bob.connect()]);
  const { conversation } = await alice.send({ to: b }, 'one');
  await alice.send({ conversation }, 'two');
  await waitFor(() => seen.length === 2, 'two messages');
  const cutAt = bob.lastSeq;
  proxy.refuse(true);
  await waitFor(() => bob.state === 'reconnecting', 'bob cut off');
  await alice.send({ conversation }, 'three');
  await sleep(100); // a few refused attempts
  proxy.refuse(false);
  await waitFor(() => seen.length === 3 && bob.state === 'open', "'three', after the reconnect");
  bob.close();
  // A new instance on the same store knows the user from the token: it asks at once.
  const wire2 = [];
  const again = client(proxy, b, { WebSocket: spyWebSocket(wire2), store });
  await again.connect();
  await again.ping();
  again.close();

  const all = [...connections(wire), ...connections(wire2)];
  const afters = all.map((c) => c.url.searchParams.get('after'));
  assert.equal(afters[0], null, 'a first start with nothing stored asks for nothing (live from the head)');
  assert.ok(afters.slice(1, -1).every((x) => x === String(cutAt)), `reconnects from ${cutAt}: ${afters}`);
  assert.equal(afters.at(-1), String(cutAt + 1), 'the new instance from the stored seq');
  for (const c of all) {
    assert.ok(!c.url.search.includes('token'), `no token in the URL: ${c.url}`);
    assert.match(c.init?.headers?.Authorization ?? '', /^Bearer [\w-]+\.[\w-]+\.[\w-]+$/);
  }
  const opened = all.filter((c) => c.hello);
  assert.ok(opened.length >= 3);
  for (const c of opened) {
    const asked = c.url.searchParams.get('after');
    const resumes = c.frames.filter((w) => w.dir === 'out' && w.frame.type === 'resume').map((w) => w.frame.after);
    if (asked !== null && c.hello.after === Number(asked)) assert.deepEqual(resumes, [], 'the hello confirmed ?after=: no resume');
    else assert.deepEqual(resumes, [asked === null ? c.hello.head : Number(asked)], 'no confirmation: resume from the same seq');
  }
  t.diagnostic(`hellos ${opened.map((c) => ('after' in c.hello ? `confirmed after=${c.hello.after}` : 'without after')).join(', ')}`);
  assert.deepEqual(seen.map((m) => m.body), ['one', 'two', 'three']);
  alice.close();
});

test('no stale typing: a typing in flight when the socket drops, or made while disconnected, rejects and is never sent later', async (t) => {
  const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
  const proxy = await new Proxy(server).start();
  t.after(() => proxy.close());
  const wire = [];
  const alice = client(proxy, a, { WebSocket: spyWebSocket(wire) });
  const bob = client(server, b);
  await Promise.all([alice.connect(), bob.connect()]);
  const { conversation } = await alice.send({ to: b }, 'hi');
  const typing = [];
  bob.on('typing', (e) => typing.push(e));

  proxy.freeze(); // alice's frames stop on the way: her typing is in flight
  const inFlight = alice.typing(conversation, 'start');
  await waitFor(() => wire.some((w) => w.dir === 'out' && w.frame.type === 'typing'), 'the typing on the wire');
  const waiting = alice.history(conversation); // a request that does wait for the next connection
  proxy.cut();
  await assert.rejects(inFlight, (e) => e.code === 'disconnected');
  assert.notEqual(alice.state, 'open');
  await assert.rejects(alice.typing(conversation, 'start'), (e) => e.code === 'disconnected' && /not kept/.test(e.message),
    'made while disconnected: rejected at once');
  await waitFor(() => alice.state === 'open', 'alice back');
  assert.deepEqual((await waiting).map((m) => m.body), ['hi'], 'the history request went on the new connection');
  await alice.ping();
  await bob.ping();
  await sleep(200);
  const after = connections(wire).at(-1).frames.filter((w) => w.dir === 'out').map((w) => w.frame.type);
  assert.ok(!after.includes('typing'), `nothing typing on the new connection: ${after}`);
  assert.deepEqual(typing, [], 'bob never saw alice typing');

  // Once open, typing goes as before.
  await alice.typing(conversation, 'start');
  await waitFor(() => typing.length === 1, 'a fresh typing reaches bob');
  alice.close();
  bob.close();
});
