// The outbox: sends wait until acknowledged, are retried after `rate_limited` no sooner
// than the server's retry_after_ms, go out in the order they were made (also those made
// before connecting or while offline), and the outbox is bounded. The server runs with its
// default rate limit (20 frames/s per user, bursts of 40).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { PgChatError } from '../pgchat.js';
import { Proxy, Server, client, fullHistory, messages, spyWebSocket, uniqueUser, waitFor } from './helpers.mjs';

const server = new Server();
before(() => server.start());
after(() => server.stop());

test('over the rate limit, sends are retried after retry_after_ms with the same client_msg_id, in order', async (t) => {
  const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
  const wire = [];
  const alice = client(server, a, { WebSocket: spyWebSocket(wire) });
  const bob = client(server, b);
  const seen = messages(bob);
  await Promise.all([alice.connect(), bob.connect()]);
  const N = 50;
  // 60 pings pipelined at once empty the user's bucket (40) whatever the machine's speed,
  // so sends are refused too; the pings are retried like any request.
  const pings = Array.from({ length: 60 }, () => alice.ping());
  const sent = await Promise.all(Array.from({ length: N }, (_, i) => alice.send({ to: b }, `n${i}`)));
  await Promise.all(pings);
  assert.deepEqual(sent.map((m) => m.body), Array.from({ length: N }, (_, i) => `n${i}`));
  assert.deepEqual(sent.map((m) => m.cseq), Array.from({ length: N }, (_, i) => i + 1));

  // What went over the wire: each rate_limited reply, then the same send again, later.
  const sentFrame = (ref) => wire.find((w) => w.dir === 'out' && w.frame.ref === ref);
  const limited = wire.filter((w) => w.dir === 'in' && w.frame.type === 'error' && w.frame.code === 'rate_limited' &&
    sentFrame(w.frame.ref).frame.type === 'send');
  t.diagnostic(`${limited.length} sends were refused rate_limited, e.g. retry_after_ms ${limited[0]?.frame.retry_after_ms}`);
  assert.ok(limited.length > 0, 'the burst went over the limit');
  for (const refusal of limited) {
    const original = sentFrame(refusal.frame.ref);
    const retry = wire.find((w) => w.dir === 'out' && w.t > refusal.t && w.frame.type === 'send' &&
      w.frame.client_msg_id === original.frame.client_msg_id);
    assert.ok(retry, 'retried');
    assert.ok(retry.t - refusal.t >= refusal.frame.retry_after_ms - 2, `waited ${retry.t - refusal.t} ms of ${refusal.frame.retry_after_ms}`);
  }
  // Never two sends on the wire at once: the next goes only after the last is answered.
  let open = 0;
  for (const w of wire) {
    if (w.dir === 'out' && w.frame.type === 'send') open++;
    if (w.dir === 'in' && (w.frame.type === 'ok' || w.frame.type === 'error') && sentFrame(w.frame.ref)?.frame.type === 'send') open--;
    assert.ok(open <= 1);
  }
  await waitFor(() => seen.length === N, 'bob gets them all');
  assert.deepEqual(seen.map((m) => m.body), sent.map((m) => m.body));
  assert.equal((await fullHistory(bob, sent[0].conversation)).length, N);
  alice.close();
  bob.close();
});

test('sends made before connecting and while offline go out in order; a full outbox refuses more', async () => {
  const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
  const proxy = await new Proxy(server).start();
  const alice = client(proxy, a, { maxOutbox: 5 });
  const bob = client(server, b);
  const seen = messages(bob);
  await bob.connect();

  const early = ['e0', 'e1', 'e2', 'e3', 'e4'].map((body) => alice.send({ to: b }, body));
  assert.equal(alice.pendingSends, 5);
  await assert.rejects(alice.send({ to: b }, 'e5'), (e) => e instanceof PgChatError && e.code === 'outbox_full');
  await alice.connect();
  await Promise.all(early);

  proxy.refuse(true);
  await waitFor(() => alice.state === 'reconnecting', 'alice offline');
  const offline = ['o0', 'o1', 'o2'].map((body) => alice.send({ to: b }, body));
  proxy.refuse(false);
  await Promise.all(offline);
  await waitFor(() => seen.length === 8, 'bob gets eight');
  assert.deepEqual(seen.map((m) => m.body), ['e0', 'e1', 'e2', 'e3', 'e4', 'o0', 'o1', 'o2']);
  alice.close();
  bob.close();
  proxy.close();
});

test('a permanent error rejects that send only; the ones behind it go on, in order', async () => {
  const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
  const alice = client(server, a);
  await alice.connect();
  const results = await Promise.allSettled([
    alice.send({ to: b }, 'first'),
    alice.send({ to: b }, ''), // empty body: bad_request
    alice.send({ to: 'not a valid id!' }, 'x'),
    alice.send({ conversation: 'g999999999' }, 'x'),
    alice.send({ to: b }, 'second'),
  ]);
  assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'rejected', 'rejected', 'rejected', 'fulfilled']);
  assert.deepEqual(results.slice(1, 4).map((r) => r.reason.code), ['bad_request', 'bad_request', 'not_found']);
  assert.equal(results[4].value.cseq, 2);
  assert.equal(alice.pendingSends, 0);
  await assert.rejects(alice.send({ to: b }, 'x', { clientMsgId: '' }), TypeError);
  await assert.rejects(alice.send({ to: b, conversation: 'd1' }, 'x'), TypeError);
  alice.close();
});
