// The key guarantee: a server restart in the middle of a burst of sends loses nothing and
// doubles nothing. The real pgchat process is killed (SIGKILL: no goodbye, sends in flight
// have an unknown outcome; SIGTERM: a graceful drain with close 1001) while 200 sends from
// alice to bob are under way, then started again on the same port.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Server, client, fullHistory, messages, uniqueUser, waitFor } from './helpers.mjs';

// The rate limit (20/s per user) would make 200 sends take 10 s; its handling has a test
// of its own (outbox.test.mjs).
const server = new Server({ PGCHAT_RATE_LIMIT_PER_SEC: '100000', PGCHAT_RATE_LIMIT_BURST: '100000' });
before(() => server.start());
after(() => server.stop());

const N = 200;

for (const signal of ['SIGKILL', 'SIGTERM']) {
  test(`a ${signal} of the server in the middle of ${N} sends: each send resolves once, bob sees each once, in order`, async (t) => {
    const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
    const alice = client(server, a);
    const bob = client(server, b);
    await Promise.all([alice.connect(), bob.connect()]);
    const seen = messages(bob);
    const first = await alice.send({ to: b }, 'start');
    const conversation = first.conversation;
    const aliceStates = [];
    alice.on('state', (s) => aliceStates.push(s));

    const settled = new Array(N).fill(0);
    const sends = [];
    for (let i = 0; i < N; i++) {
      sends.push(alice.send({ conversation }, String(i)).then(
        (m) => { settled[i]++; return m; },
        (e) => { settled[i]++; throw e; },
      ));
    }
    await waitFor(() => settled.filter(Boolean).length >= 40, '40 acknowledged sends');
    await server.stop(signal);
    const pendingAtStop = alice.pendingSends;
    t.diagnostic(`${pendingAtStop} of ${N} sends unacknowledged when the server stopped`);
    assert.ok(pendingAtStop > 0, 'the server stopped in the middle of the burst');
    await server.start();

    const sent = await Promise.all(sends);
    assert.deepEqual(settled, new Array(N).fill(1), 'every send promise settled exactly once');
    assert.deepEqual(sent.map((m) => m.body), Array.from({ length: N }, (_, i) => String(i)));
    assert.equal(new Set(sent.map((m) => m.id)).size, N, 'message ids are unique');
    assert.deepEqual(sent.map((m) => m.cseq), Array.from({ length: N }, (_, i) => i + 2), 'stored in send order');
    assert.ok(aliceStates.some((s) => s.state === 'reconnecting'), 'alice reconnected');
    if (signal === 'SIGKILL') {
      // A send was on the wire when the process died: it went again with its id.
      assert.ok(alice.stats.retriedSends >= 1, 'the send in flight was retried');
    }

    // A last message marks the end: anything doubled would come before it.
    await alice.send({ conversation }, 'end');
    await waitFor(() => seen.at(-1)?.body === 'end', "bob's 'end'");
    const bodies = seen.map((m) => m.body);
    assert.deepEqual(bodies, ['start', ...Array.from({ length: N }, (_, i) => String(i)), 'end'],
      'bob got every message once, in send order');
    assert.equal(new Set(seen.map((m) => m.id)).size, N + 2);

    const history = await fullHistory(bob, conversation);
    assert.deepEqual(history.map((m) => m.body), bodies, 'history holds each message once');
    assert.equal(new Set(history.map((m) => m.client_msg_id)).size, N + 2);
    assert.deepEqual(history.map((m) => m.cseq), Array.from({ length: N + 2 }, (_, i) => i + 1));
    t.diagnostic(`alice: ${JSON.stringify(alice.stats)}; bob: ${JSON.stringify(bob.stats)}`);
    alice.close();
    bob.close();
  });
}
