// The API surface against a real pgchat: every typed request and event does what
// docs/PROTOCOL.md says, with the wire's field names.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { PgChat, PgChatError } from '../pgchat.js';
import { Proxy, Server, client, mintToken, record, track, uniqueUser, waitFor } from './helpers.mjs';

const server = new Server({ PGCHAT_PRESENCE_GRACE_MS: '200' });
before(() => server.start());
after(() => server.stop());

test('connect, send a direct message, receive it, list, page history, read receipts', async () => {
  const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
  const alice = client(server, a);
  const bob = client(server, b);
  const states = record(alice, ['state']);
  await Promise.all([alice.connect(), bob.connect()]);
  assert.equal(alice.state, 'open');
  assert.equal(alice.user, a);
  assert.deepEqual(states.map(([, s]) => s.state), ['connecting', 'open']);

  const bobConversations = [];
  bob.on('conversation', (c, e) => bobConversations.push([c, e]));
  const bobMessages = [];
  bob.on('message', (m, e) => bobMessages.push([m, e]));

  const m = await alice.send({ to: b }, 'hello <b>bob</b>', { clientMsgId: 'first' });
  assert.equal(m.body, 'hello <b>bob</b>');
  assert.equal(m.client_msg_id, 'first');
  assert.equal(m.sender.id, a);
  assert.equal(m.cseq, 1);
  await waitFor(() => bobMessages.length === 1, 'bob gets the message');
  const [got, event] = bobMessages[0];
  assert.deepEqual(got, m);
  assert.equal(event.type, 'message');
  assert.equal(event.seq, bob.lastSeq);
  // The direct conversation's event comes before its first message.
  assert.equal(bobConversations.length, 1);
  assert.equal(bobConversations[0][0].id, m.conversation);
  assert.equal(bobConversations[0][0].kind, 'direct');
  assert.ok(bobConversations[0][1].seq < event.seq);

  // The same client_msg_id again returns the first message and stores nothing new.
  const again = await alice.send({ conversation: m.conversation }, 'other body', { clientMsgId: 'first' });
  assert.deepEqual(again, m);

  for (let i = 2; i <= 5; i++) await alice.send({ conversation: m.conversation }, `m${i}`);
  const list = await bob.conversations();
  assert.equal(list.length, 1);
  assert.equal(list[0].id, m.conversation);
  assert.equal(list[0].unread, 5);
  assert.equal(list[0].last_message.body, 'm5');
  assert.deepEqual(list[0].members.sort(), [a, b].sort());

  const last2 = await bob.history(m.conversation, { limit: 2 });
  assert.deepEqual(last2.map((x) => x.body), ['m4', 'm5']);
  const page = await bob.historyPage(m.conversation, { beforeCseq: 4, limit: 10 });
  assert.deepEqual(page.messages.map((x) => x.cseq), [1, 2, 3]);
  assert.equal(page.has_more, false);
  assert.equal(page.total, 5);

  const reads = [];
  alice.on('read', (e) => reads.push(e));
  await bob.markRead(m.conversation, 5);
  await waitFor(() => reads.length === 1, 'alice gets the read receipt');
  assert.equal(reads[0].user, b);
  assert.equal(reads[0].cseq, 5);
  assert.equal(reads[0].conversation, m.conversation);
  assert.equal((await bob.conversations())[0].unread, 0);

  // A permanent error rejects with the protocol's code.
  await assert.rejects(bob.markRead(m.conversation, 99), (e) => e instanceof PgChatError && e.code === 'bad_request');
  await assert.rejects(alice.history('d999999999'), (e) => e.code === 'not_found' || e.code === 'forbidden');
  alice.close();
  bob.close();
});

test('groups: create (idempotent by clientOpId), add, members, remove, leave, and their events', async () => {
  const [a, b, c] = [uniqueUser('ann'), uniqueUser('ben'), uniqueUser('cat')];
  const ann = client(server, a);
  const ben = client(server, b);
  await Promise.all([ann.connect(), ben.connect()]);
  const benEvents = record(ben, ['conversation', 'removed', 'message']);

  const g = await ann.createGroup('Team', [b], { clientOpId: 'team-1' });
  assert.equal(g.kind, 'group');
  assert.equal(g.name, 'Team');
  assert.deepEqual(g.admins, [a]);
  const same = await ann.createGroup('Other name', [], { clientOpId: 'team-1' });
  assert.equal(same.id, g.id);

  const added = await ann.addToGroup(g.id, [c], { admin: true });
  assert.deepEqual([...added.members].sort(), [a, b, c].sort());
  assert.ok(added.admins.includes(c));
  const page = await ann.members(g.id, { limit: 2 });
  assert.equal(page.member_count, 3);
  assert.equal(page.members.length, 2);
  assert.equal(page.has_more, true);
  const rest = await ann.members(g.id, { after: page.members[1] });
  assert.equal(rest.members.length, 1);

  await ann.send({ conversation: g.id }, 'welcome');
  await ann.removeFromGroup(g.id, [b]);
  await waitFor(() => benEvents.some(([e]) => e === 'removed'), 'ben is told he was removed');
  const kinds = benEvents.map(([e]) => e);
  assert.deepEqual(kinds, ['conversation', 'conversation', 'message', 'removed']);
  assert.equal(benEvents[3][1].conversation, g.id);
  await assert.rejects(ben.send({ conversation: g.id }, 'let me back'), (e) => e.code === 'forbidden');
  assert.equal(ben.pendingSends, 0, 'a permanent error leaves the outbox');

  await ann.leaveGroup(g.id);
  await assert.rejects(ann.history(g.id), (e) => e.code === 'forbidden');
  ann.close();
  ben.close();
});

test('typing and presence events, and a raw request', async () => {
  const [a, b] = [uniqueUser('tia'), uniqueUser('tom')];
  const tia = client(server, a);
  const tom = client(server, b);
  await Promise.all([tia.connect(), tom.connect()]);
  const m = await tia.send({ to: b }, 'hi');
  const typing = [];
  tom.on('typing', (e) => typing.push(e));
  await tia.typing(m.conversation, 'start');
  await tia.typing(m.conversation, 'stop');
  await waitFor(() => typing.length === 2, 'tom sees tia type');
  assert.deepEqual(typing.map((e) => [e.user, e.state, e.conversation]), [[a, 'start', m.conversation], [a, 'stop', m.conversation]]);

  const presence = [];
  tom.on('presence', (e) => presence.push(e));
  const snapshot = await tom.subscribePresence([a, uniqueUser('stranger')]);
  assert.equal(snapshot[0].user, a);
  assert.equal(snapshot[0].status, 'online');
  assert.equal(snapshot[1].status, 'unknown');
  tia.close();
  await waitFor(() => presence.some((e) => e.user === a && e.status === 'offline'), 'tom sees tia go offline');
  assert.ok('last_seen' in presence.at(-1));

  assert.deepEqual(await tom.request('ping'), {});
  await assert.rejects(tom.request('no_such_type'), (e) => e.code === 'unknown_type');
  tom.close();
});

test('the options are checked, and close() is final', async () => {
  assert.throws(() => new PgChat({ url: 'ws://x/ws' }), TypeError);
  assert.throws(() => new PgChat({ token: 't' }), TypeError);
  assert.throws(() => new PgChat({ url: 'not a url', token: 't' }), TypeError);
  assert.throws(() => new PgChat({ url: 'ws://x/ws', token: 't', startAt: -1 }), TypeError);
  const chat = track(new PgChat({ url: server.url, token: mintToken(uniqueUser('once')) }));
  await chat.connect();
  const waiting = chat.send({ to: 'nobody_at_all' }, 'x'.repeat(70000));
  await assert.rejects(waiting, (e) => e.code === 'too_large', 'a frame over max_frame_bytes is refused locally');
  chat.close();
  assert.equal(chat.state, 'closed');
  await assert.rejects(chat.send({ to: 'x' }, 'late'), (e) => e.code === 'closed');
  await assert.rejects(chat.connect(), (e) => e.code === 'closed');
  await assert.rejects(chat.conversations(), (e) => e.code === 'closed');
});

test('requests waiting for a connection are bounded (maxWaiting) even with no timeout; past it they reject with queue_full', async (t) => {
  const user = uniqueUser('queue');
  // Not connected yet, requestTimeoutMs 0: nothing would ever take these out but a connection.
  const chat = client(server, user, { requestTimeoutMs: 0, maxWaiting: 3 });
  const waiting = [chat.ping(), chat.ping(), chat.conversations()];
  await assert.rejects(chat.ping(), (e) => e instanceof PgChatError && e.code === 'queue_full' && /maxWaiting/.test(e.message));
  await assert.rejects(chat.typing('d1', 'stop'), (e) => e.code === 'disconnected', 'typing never waits (and takes no place)');
  await chat.connect();
  const [, , list] = await Promise.all(waiting);
  assert.deepEqual(list, []);
  chat.close();

  // The default is 1000.
  const lazy = track(new PgChat({ url: server.url, token: mintToken(uniqueUser('lazy')), requestTimeoutMs: 0 }));
  const thousand = Array.from({ length: 1000 }, () => lazy.ping());
  await assert.rejects(lazy.ping(), (e) => e.code === 'queue_full');
  lazy.close();
  const settled = await Promise.allSettled(thousand);
  assert.ok(settled.every((r) => r.status === 'rejected' && r.reason.code === 'closed'), 'close() rejects what waited');
  assert.throws(() => new PgChat({ url: server.url, token: 't', maxWaiting: -1 }), TypeError);

  // Requests in flight when the socket drops go back to the queue: the bound holds there too.
  const proxy = await new Proxy(server).start();
  t.after(() => proxy.close());
  const cut = client(proxy, uniqueUser('cut'), { requestTimeoutMs: 0, maxWaiting: 2 });
  await cut.connect();
  proxy.freeze();
  const inFlight = [cut.conversations(), cut.conversations(), cut.conversations()];
  proxy.cut();
  const outcomes = await Promise.allSettled(inFlight);
  assert.deepEqual(outcomes.map((r) => r.status === 'fulfilled' ? 'ok' : r.reason.code), ['ok', 'ok', 'queue_full']);
  cut.close();
});
