// The last seq is kept in a pluggable store, keyed by user: a second client instance with
// the same store (a reloaded page, a restarted process) resumes where the first stopped.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { MemoryStore } from '../pgchat.js';
import { Server, client, messages, sleep, uniqueUser, waitFor } from './helpers.mjs';

const server = new Server();
before(() => server.start());
after(() => server.stop());

/** A store whose reads and writes take a while, as IndexedDB or a remote store would. */
class SlowStore {
  constructor() { this.map = new Map(); this.writes = 0; }
  async get(key) { await sleep(30); return this.map.get(key); }
  async set(key, value) { await sleep(5); this.writes++; this.map.set(key, value); }
}

for (const [name, makeStore] of [['MemoryStore', () => new MemoryStore()], ['an asynchronous store', () => new SlowStore()]]) {
  test(`a second instance with the same store (${name}) gets only what the first had not seen`, async () => {
    const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
    const store = makeStore();
    const alice = client(server, a);
    await alice.connect();
    const bob1 = client(server, b, { store });
    const seen1 = messages(bob1);
    await bob1.connect();
    const { conversation } = await alice.send({ to: b }, 'one');
    await alice.send({ conversation }, 'two');
    await waitFor(() => seen1.length === 2, 'the first instance gets two');
    const key = bob1.storeKey;
    assert.ok(key.includes(b), `the key names the user: ${key}`);
    await waitFor(async () => (await store.get(key)) === String(bob1.lastSeq), 'the position stored');
    bob1.close();

    for (const body of ['three', 'four', 'five']) await alice.send({ conversation }, body);

    const bob2 = client(server, b, { store });
    const seen2 = messages(bob2);
    const resyncs = [];
    bob2.on('resync', (r) => resyncs.push(r));
    // Events arriving while the store is read wait for it, then come in order.
    const racing = alice.send({ conversation }, 'six');
    await bob2.connect();
    await racing;
    await alice.send({ conversation }, 'seven');
    await waitFor(() => seen2.at(-1)?.body === 'seven', "'seven'");
    assert.deepEqual(seen2.map((m) => m.body), ['three', 'four', 'five', 'six', 'seven']);
    assert.deepEqual(resyncs, []);
    await waitFor(async () => (await store.get(key)) === String(bob2.lastSeq), 'the position stored');
    alice.close();
    bob2.close();
  });
}

test('the store key includes the user: another user on the same store starts afresh', async () => {
  const [a, b, c] = [uniqueUser('alice'), uniqueUser('bob'), uniqueUser('carol')];
  const store = new MemoryStore();
  const alice = client(server, a);
  const bob = client(server, b, { store });
  await Promise.all([alice.connect(), bob.connect()]);
  const seenBob = messages(bob);
  await alice.send({ to: b }, 'for bob');
  await alice.send({ to: c }, 'for carol, before she connects');
  await waitFor(() => seenBob.length === 1, "bob's message");
  bob.close();

  // carol has nothing stored: 'head' (the default) starts after what she already has.
  const carol = client(server, c, { store });
  const seenCarol = messages(carol);
  await carol.connect();
  assert.ok(carol.lastSeq > 0, 'her stream has events already');
  await alice.send({ to: c }, 'for carol, live');
  await waitFor(() => seenCarol.length === 1, "carol's live message");
  assert.deepEqual(seenCarol.map((m) => m.body), ['for carol, live']);
  assert.notEqual(store.get(carol.storeKey), store.get(bob.storeKey));
  carol.close();

  // startAt: 0 with nothing stored replays the whole stream.
  const fresh = client(server, c, { store: new MemoryStore(), startAt: 0 });
  const all = messages(fresh);
  const conversations = [];
  fresh.on('conversation', (conv) => conversations.push(conv.id));
  await fresh.connect();
  assert.deepEqual(all.map((m) => m.body), ['for carol, before she connects', 'for carol, live']);
  assert.equal(conversations.length, 1);
  alice.close();
  fresh.close();
});
