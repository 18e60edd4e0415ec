// resync_required: the server can no longer replay what a client missed (retention pruned
// it). The client emits 'resync' so that the application reloads conversations and
// history, then resumes from the head and goes on live.
//
// Provoked honestly: the missed events are aged in the database and pruned by pgchat's own
// pruning function (what the server's hourly pruner calls), through psql. Not provoked
// here: the in-session variant (a live session whose next event is pruned before it is
// sent, closed with 1013); it needs a session to fall a whole retention period behind.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { MemoryStore } from '../pgchat.js';
import { Server, client, fullHistory, messages, psql, uniqueUser, waitFor } from './helpers.mjs';

const server = new Server();
before(() => server.start());
after(() => server.stop());

/** Ages every stored event of `user` two days and prunes events older than one. */
async function pruneStreamOf(user) {
  await psql(`UPDATE pgchat.event_queue SET created_at = now() - interval '2 days' WHERE user_id = '${user}'`);
  for (;;) {
    // -1: another pruner (the server's) holds the lock; 0: nothing left to prune.
    const n = Number(await psql('SELECT pgchat.prune_events(interval \'1 day\', 100000)'));
    if (n === 0) return;
  }
}

test('a resume from before the pruned point: resync, the application reloads, live events follow once', async () => {
  const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
  const store = new MemoryStore();
  const alice = client(server, a);
  const bob1 = client(server, b, { store });
  const seen1 = messages(bob1);
  await Promise.all([alice.connect(), bob1.connect()]);
  const { conversation } = await alice.send({ to: b }, 'one');
  await alice.send({ conversation }, 'two');
  await waitFor(() => seen1.length === 2, 'two messages');
  const stoppedAt = bob1.lastSeq;
  bob1.close();

  for (const body of ['three', 'four', 'five']) await alice.send({ conversation }, body);
  await pruneStreamOf(b);
  assert.equal(await psql(`SELECT count(*) FROM pgchat.event_queue WHERE user_id = '${b}'`), '0');

  const bob2 = client(server, b, { store });
  const log = [];
  bob2.on('resync', (r) => log.push(['resync', r]));
  bob2.on('state', (s) => log.push(['state', s.state]));
  const seen2 = messages(bob2);
  // The application's reaction to 'resync': reload what it shows.
  let reloaded = null;
  bob2.on('resync', async () => {
    const list = await bob2.conversations();
    reloaded = { list, history: await fullHistory(bob2, list[0].id) };
  });
  await bob2.connect();
  const resync = log.find(([e]) => e === 'resync');
  assert.ok(resync, 'resync emitted');
  assert.ok(resync[1].head > stoppedAt, `head ${resync[1].head} after the stored ${stoppedAt}`);
  assert.ok(log.findIndex(([e]) => e === 'resync') < log.findIndex(([e, s]) => e === 'state' && s === 'open'),
    'resync before the connection counts as open');
  assert.equal(bob2.lastSeq, resync[1].head);
  await waitFor(() => reloaded, 'the reload');
  assert.deepEqual(reloaded.history.map((m) => m.body), ['one', 'two', 'three', 'four', 'five']);
  assert.equal(reloaded.list[0].unread, 5);

  await alice.send({ conversation }, 'six');
  await waitFor(() => seen2.length === 1, "'six'");
  assert.deepEqual(seen2.map((m) => m.body), ['six'], 'only what came after the resync, once');
  assert.equal(bob2.lastSeq, resync[1].head + 1);
  assert.equal(bob2.stats.resyncs, 1);
  alice.close();
  bob2.close();
});

test('a stored position beyond the server\'s head (another database) is a resync too', async () => {
  const b = uniqueUser('bob');
  const store = new MemoryStore();
  store.set(`pgchat:lastSeq:${b}`, '1000000');
  const bob = client(server, b, { store });
  const resyncs = [];
  bob.on('resync', (r) => resyncs.push(r));
  const errors = [];
  bob.on('error', (e) => errors.push(e));
  await bob.connect();
  assert.equal(resyncs.length, 1);
  assert.equal(resyncs[0].head, bob.hello.head);
  assert.equal(bob.lastSeq, bob.hello.head);
  assert.equal(store.get(bob.storeKey), String(bob.hello.head));
  assert.deepEqual(errors, []);
  bob.close();
});
