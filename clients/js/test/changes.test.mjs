// Messages people change, answer and find (shared PROTOCOL.md v1.2) against a real pgchat:
// edit(), deleteMessage(), react(), send()'s replyTo and mentions, receipts(), search(),
// and the typed events message_edited, message_deleted and reaction, live and on resume.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { PgChatError } from '../pgchat.js';
import { Proxy, Server, client, uniqueUser, waitFor } from './helpers.mjs';

const server = new Server();
before(() => server.start());
after(() => server.stop());

/** Connected clients for fresh users named after `names`; their ids first. */
async function people(...names) {
  const ids = names.map(uniqueUser);
  const chats = ids.map((id) => client(server, id));
  await Promise.all(chats.map((c) => c.connect()));
  return [ids, chats];
}

/** Every durable event `chat` hands over, and the typed events, in order. */
function watch(chat) {
  const log = { events: [], edited: [], deleted: [], reactions: [] };
  chat.on('event', (e) => log.events.push(e));
  chat.on('message_edited', (m, e) => log.edited.push([m, e]));
  chat.on('message_deleted', (e) => log.deleted.push(e));
  chat.on('reaction', (e) => log.reactions.push(e));
  return log;
}

/**
 * Waits until `chat`'s stream has handed over the `message` event of a marker message
 * sent now: the stream is in commit order, so every event of what committed before is
 * in `log` by then, and one that is not there was never made.
 */
async function settled(chat, log, sender, conversation) {
  const marker = await sender.send({ conversation }, `marker ${Math.random()}`);
  await waitFor(() => log.events.some((e) => e.type === 'message' && e.message.id === marker.id), 'the marker message');
  return marker;
}

test('edit() replaces the body and every member, the editor\'s own sessions too, gets message_edited with the whole message', async () => {
  const [[a, b], [alice, bob]] = await people('alice', 'bob');
  const aliceLog = watch(alice);
  const bobLog = watch(bob);
  const m = await alice.send({ to: b }, 'see you at 7');
  const edited = await alice.edit(m.conversation, m.cseq, 'see you at 8');
  assert.equal(edited.id, m.id);
  assert.equal(edited.cseq, m.cseq);
  assert.equal(edited.body, 'see you at 8');
  assert.equal(edited.deleted, false);
  assert.equal(typeof edited.edited_at, 'string');
  assert.ok(Date.parse(edited.edited_at) >= Date.parse(m.created_at));
  assert.equal(m.edited_at, null, 'a new message is not edited');

  for (const [who, log] of [['bob', bobLog], ['alice', aliceLog]]) {
    await waitFor(() => log.edited.length === 1, `${who} gets message_edited`);
    const [message, event] = log.edited[0];
    assert.equal(event.type, 'message_edited');
    assert.equal(event.message, message);
    assert.deepEqual(message, edited, `${who}: the whole message, as the reply has it`);
    assert.ok(log.events.includes(event), 'the raw event comes too');
  }
  assert.equal((await bob.history(m.conversation)).at(-1).body, 'see you at 8');

  // The same body again: the message, and no second event.
  const again = await alice.edit(m.conversation, m.cseq, 'see you at 8');
  assert.equal(again.body, 'see you at 8');
  await settled(bob, bobLog, alice, m.conversation);
  assert.equal(bobLog.edited.length, 1, 'an edit that changes nothing makes no event');

  // Refusals: another's message, no such message, bad input.
  await assert.rejects(bob.edit(m.conversation, m.cseq, 'mine now'), (e) => e instanceof PgChatError && e.code === 'forbidden');
  await assert.rejects(alice.edit(m.conversation, 9999, 'x'), (e) => e.code === 'not_found');
  await assert.rejects(alice.edit(m.conversation, 0, 'x'), TypeError);
  await assert.rejects(alice.edit(m.conversation, m.cseq, 42), TypeError);
  await assert.rejects(alice.edit(m.conversation, m.cseq, ''), (e) => e.code === 'bad_request', 'an empty body, as in send');
  assert.equal(a, alice.user);
  alice.close();
  bob.close();
});

test('edits and reactions of one message made at once commit in the order made: the last one stays', async () => {
  const [[, b], [alice, bob]] = await people('alice', 'bob');
  const m = await alice.send({ to: b }, 'draft 0');
  const edits = await Promise.all(Array.from({ length: 8 }, (_, i) => alice.edit(m.conversation, m.cseq, `draft ${i + 1}`)));
  assert.deepEqual(edits.map((e) => e.body), Array.from({ length: 8 }, (_, i) => `draft ${i + 1}`), 'each answered with its own body');
  assert.equal((await bob.history(m.conversation)).at(-1).body, 'draft 8');

  const toggles = Array.from({ length: 9 }, (_, i) => bob.react(m.conversation, m.cseq, '👍', i % 2 === 0));
  await Promise.all(toggles);
  assert.deepEqual((await bob.history(m.conversation)).at(-1).reactions, [{ emoji: '👍', count: 1, me: true }], 'on, off, … on: on');
  alice.close();
  bob.close();
});

test('deleteMessage() leaves a tombstone; every member gets message_deleted; deleting again changes nothing', async () => {
  const [[, b], [alice, bob]] = await people('alice', 'bob');
  const bobLog = watch(bob);
  const aliceLog = watch(alice);
  const m = await alice.send({ to: b }, 'oops, wrong chat');
  await bob.react(m.conversation, m.cseq, '😮');
  assert.equal(await alice.deleteMessage(m.conversation, m.cseq), undefined);
  for (const [who, log] of [['bob', bobLog], ['alice', aliceLog]]) {
    await waitFor(() => log.deleted.length === 1, `${who} gets message_deleted`);
    const e = log.deleted[0];
    assert.deepEqual({ ...e, seq: 0 }, { type: 'message_deleted', seq: 0, conversation: m.conversation, cseq: m.cseq, id: m.id });
  }
  const [tombstone] = await bob.history(m.conversation);
  assert.deepEqual(
    [tombstone.id, tombstone.cseq, tombstone.sender.id, tombstone.created_at, tombstone.deleted, tombstone.body,
      tombstone.edited_at, tombstone.reply_to, tombstone.mentions, tombstone.reactions],
    [m.id, m.cseq, alice.user, m.created_at, true, '', null, null, [], []]);
  const summary = (await bob.conversations()).find((c) => c.id === m.conversation);
  assert.equal(summary.last_message.deleted, true, 'the conversation list shows the tombstone');

  await alice.deleteMessage(m.conversation, m.cseq);
  await settled(bob, bobLog, alice, m.conversation);
  assert.equal(bobLog.deleted.length, 1, 'a second delete makes no event');

  await assert.rejects(alice.edit(m.conversation, m.cseq, 'back'), (e) => e.code === 'not_found', 'a tombstone cannot be edited');
  await assert.rejects(bob.react(m.conversation, m.cseq, '👍'), (e) => e.code === 'not_found', 'nor reacted to');
  const mine = await bob.send({ conversation: m.conversation }, 'mine');
  await assert.rejects(alice.deleteMessage(m.conversation, mine.cseq), (e) => e.code === 'forbidden', 'not another\'s in a direct conversation');
  await assert.rejects(alice.deleteMessage(m.conversation, 0), TypeError);
  alice.close();
  bob.close();
});

test('a group admin deletes a member\'s message; a member who is no admin cannot', async () => {
  const [[, b, c], [alice, bob, carol]] = await people('alice', 'bob', 'carol');
  const g = await alice.createGroup('Team', [b, c]);
  const fromBob = await bob.send({ conversation: g.id }, 'something to take back');
  await assert.rejects(carol.deleteMessage(g.id, fromBob.cseq), (e) => e.code === 'forbidden');
  await alice.deleteMessage(g.id, fromBob.cseq);
  assert.equal((await carol.history(g.id)).at(-1).deleted, true);
  for (const x of [alice, bob, carol]) x.close();
});

test('react() puts a reaction on and off: reaction events to every member, counts in history with the reader\'s own marked', async () => {
  const [[a, b, c], [alice, bob, carol]] = await people('alice', 'bob', 'carol');
  const g = await alice.createGroup('Lunch', [b, c]);
  const aliceLog = watch(alice);
  const m = await alice.send({ conversation: g.id }, 'pizza?');
  await bob.react(g.id, m.cseq, '👍');
  await carol.react(g.id, m.cseq, '👍', true);
  await carol.react(g.id, m.cseq, '🍕');
  await waitFor(() => aliceLog.reactions.length === 3, 'alice gets three reaction events');
  assert.deepEqual(aliceLog.reactions.map(({ type, conversation, cseq, user, emoji, on }) => [type, conversation, cseq, user, emoji, on]), [
    ['reaction', g.id, m.cseq, b, '👍', true],
    ['reaction', g.id, m.cseq, c, '👍', true],
    ['reaction', g.id, m.cseq, c, '🍕', true],
  ]);
  assert.ok(aliceLog.reactions.every((e) => Number.isSafeInteger(e.seq)));
  const seen = async (chat) => (await chat.history(g.id)).find((x) => x.cseq === m.cseq).reactions;
  assert.deepEqual(await seen(alice), [{ emoji: '👍', count: 2, me: false }, { emoji: '🍕', count: 1, me: false }]);
  assert.deepEqual(await seen(carol), [{ emoji: '👍', count: 2, me: true }, { emoji: '🍕', count: 1, me: true }], 'first-reacted order');

  // On again is nothing; off is an event; off again is nothing.
  await bob.react(g.id, m.cseq, '👍', true);
  await bob.react(g.id, m.cseq, '👍', false);
  await bob.react(g.id, m.cseq, '👍', false);
  await settled(alice, aliceLog, carol, g.id);
  assert.deepEqual(aliceLog.reactions.slice(3).map((e) => [e.user, e.emoji, e.on]), [[b, '👍', false]]);
  assert.deepEqual(await seen(bob), [{ emoji: '👍', count: 1, me: false }, { emoji: '🍕', count: 1, me: false }]);

  await assert.rejects(bob.react(g.id, m.cseq, ''), (e) => e.code === 'bad_request');
  await assert.rejects(bob.react(g.id, m.cseq, 'x'.repeat(33)), (e) => e.code === 'too_large');
  await assert.rejects(bob.react(g.id, m.cseq, '👍', 'yes'), TypeError);
  await assert.rejects(bob.react(g.id, 999, '👍'), (e) => e.code === 'not_found');
  assert.equal(a, alice.user);
  for (const x of [alice, bob, carol]) x.close();
});

test('a reaction to a message deleted before a member came back arrives as message_deleted on resume, and no event holds the emoji', async (t) => {
  const [[, b], [alice]] = await people('alice', 'bob');
  const proxy = await new Proxy(server).start();
  t.after(() => proxy.close());
  const bob = client(proxy, b);
  await bob.connect();
  const log = watch(bob);
  const m = await alice.send({ to: b }, 'a secret');
  await waitFor(() => log.events.some((e) => e.type === 'message' && e.message.id === m.id), 'bob gets the message live');
  const states = [];
  bob.on('state', (s) => states.push(s.state));

  proxy.refuse(true); // bob is away
  await waitFor(() => states.includes('reconnecting'), 'bob\'s client notices');
  await alice.react(m.conversation, m.cseq, '🤫');
  await alice.edit(m.conversation, m.cseq, 'a bigger secret');
  await alice.deleteMessage(m.conversation, m.cseq);
  const lastSeqBefore = bob.lastSeq;
  proxy.refuse(false);
  await waitFor(() => log.deleted.length === 2, 'bob gets both message_deleted events on resume');

  // Three events happened while he was away: the reaction, the edit and the delete.
  const replayed = log.events.filter((e) => e.seq > lastSeqBefore);
  assert.deepEqual(replayed.map((e) => e.seq), [lastSeqBefore + 1, lastSeqBefore + 2, lastSeqBefore + 3], 'in order, without gaps');
  assert.deepEqual(replayed.map((e) => e.type), ['message_deleted', 'message_edited', 'message_deleted'],
    'the reaction replays as message_deleted (its emoji erased with the message)');
  assert.deepEqual(log.reactions, [], 'no reaction event');
  for (const e of log.deleted) assert.deepEqual([e.conversation, e.cseq, e.id], [m.conversation, m.cseq, m.id]);
  // The edit replays as the message is now: the tombstone, with no text.
  const [edited] = log.edited.at(-1);
  assert.deepEqual([edited.deleted, edited.body], [true, '']);
  assert.ok(!JSON.stringify(replayed).includes('secret'), 'no replayed event holds the text');
  assert.ok(!JSON.stringify(replayed).includes('🤫'), 'nor the emoji');
  alice.close();
  bob.close();
});

test('send() with replyTo and mentions: the reply quotes the original as it is now, and mentions_unread counts for the one mentioned', async () => {
  const [[a, b, c], [alice, bob, carol]] = await people('alice', 'bob', 'carol');
  const g = await alice.createGroup('Trip', [b, c]);
  const question = await alice.send({ conversation: g.id }, 'Who brings the tent?');
  const answer = await bob.send({ conversation: g.id }, `Me! @${a} @${c}`, { replyTo: question.cseq, mentions: [a, c, a] });
  assert.deepEqual(answer.reply_to, { cseq: question.cseq, sender: a, snippet: 'Who brings the tent?' });
  assert.deepEqual([...answer.mentions].sort(), [a, c].sort(), 'each mentioned once');
  assert.equal(question.reply_to, null);
  assert.deepEqual(question.mentions, []);

  const entry = async (chat) => (await chat.conversations()).find((x) => x.id === g.id);
  assert.deepEqual([(await entry(carol)).unread, (await entry(carol)).mentions_unread], [2, 1]);
  assert.equal((await entry(alice)).mentions_unread, 1);
  await carol.markRead(g.id, answer.cseq);
  assert.deepEqual([(await entry(carol)).unread, (await entry(carol)).mentions_unread], [0, 0]);

  // The snippet follows the original's edits, then its deletion.
  const long = `Who brings the tent? ${'and the stove '.repeat(10)}`;
  await alice.edit(g.id, question.cseq, long);
  const quoted = async () => (await carol.history(g.id)).find((x) => x.cseq === answer.cseq).reply_to;
  assert.deepEqual(await quoted(), { cseq: question.cseq, sender: a, snippet: [...long].slice(0, 100).join('') });
  await alice.deleteMessage(g.id, question.cseq);
  assert.deepEqual(await quoted(), { cseq: question.cseq, sender: a, snippet: '' });

  await assert.rejects(bob.send({ conversation: g.id }, 'x', { mentions: [uniqueUser('stranger')] }), (e) => e.code === 'bad_request');
  await assert.rejects(bob.send({ conversation: g.id }, 'x', { replyTo: 999 }), (e) => e.code === 'bad_request');
  await assert.rejects(bob.send({ conversation: g.id }, 'x', { replyTo: 0 }), TypeError);
  await assert.rejects(bob.send({ conversation: g.id }, 'x', { mentions: a }), TypeError);
  for (const x of [alice, bob, carol]) x.close();
});

test('receipts() tells every member\'s read position', async () => {
  const [[a, b], [alice, bob]] = await people('alice', 'bob');
  const m = await alice.send({ to: b }, 'one');
  await alice.send({ conversation: m.conversation }, 'two');
  await bob.markRead(m.conversation, 1);
  const page = await alice.receipts(m.conversation);
  assert.equal(page.has_more, false);
  assert.deepEqual(Object.fromEntries(page.receipts.map((r) => [r.user, r.cseq])), { [a]: 2, [b]: 1 });
  const first = await alice.receipts(m.conversation, { limit: 1 });
  assert.equal(first.receipts.length, 1);
  assert.equal(first.has_more, true);
  const rest = await alice.receipts(m.conversation, { after: first.receipts[0].user, limit: 1 });
  assert.equal(rest.has_more, false);
  assert.deepEqual([...first.receipts, ...rest.receipts], page.receipts);
  alice.close();
  bob.close();
});

test('search() finds words in the user\'s conversations, newest first, paged by beforeId, within one conversation, never deleted ones', async () => {
  const [[, b, c], [alice, bob, carol]] = await people('alice', 'bob', 'carol');
  const word = `kayak${Math.random().toString(36).slice(2, 8)}`;
  const d = await alice.send({ to: b }, `the ${word} is ready`);
  const g = await alice.createGroup('Paddlers', [b]);
  const sent = [d];
  for (let i = 1; i <= 4; i += 1) sent.push(await bob.send({ conversation: g.id }, `${word} trip ${i}`));
  const elsewhere = await carol.send({ to: b }, `carol's ${word} too`);

  const all = await bob.search(word);
  assert.deepEqual(all.messages.map((m) => m.id), [elsewhere, ...sent].map((m) => m.id).sort((x, y) => y - x), 'newest first, in every conversation of his');
  assert.equal(all.has_more, false);
  const aliceFinds = await alice.search(word);
  assert.ok(!aliceFinds.messages.some((m) => m.id === elsewhere.id), 'not in a conversation she is not in');

  const pages = [];
  let beforeId;
  for (;;) {
    const page = await bob.search(word, { limit: 2, ...(beforeId === undefined ? {} : { beforeId }) });
    pages.push(page.messages.map((m) => m.id));
    if (!page.has_more) break;
    beforeId = page.messages.at(-1).id;
  }
  assert.deepEqual(pages.flat(), all.messages.map((m) => m.id), 'the pages are the whole result, once each');
  assert.deepEqual(pages.map((p) => p.length), [2, 2, 2]);

  const inGroup = await bob.search(`"${word} trip"`, { conversation: g.id });
  assert.deepEqual(inGroup.messages.map((m) => m.cseq), [4, 3, 2, 1], 'a phrase, in one conversation');
  assert.ok(inGroup.messages.every((m) => m.conversation === g.id && m.sender.id === bob.user));
  assert.deepEqual((await bob.search(`${word} -trip`)).messages.map((m) => m.id).sort(), [d.id, elsewhere.id].sort(), '-word excludes');

  await bob.deleteMessage(g.id, 4);
  await alice.edit(d.conversation, d.cseq, 'renamed: the canoe is ready');
  const after = (await bob.search(word)).messages.map((m) => m.id);
  assert.ok(!after.includes(sent[4].id), 'a deleted message is not found');
  assert.ok(!after.includes(d.id), 'an edit re-indexes: the old word is gone');
  assert.deepEqual((await bob.search('canoe', { conversation: d.conversation })).messages.map((m) => m.id), [d.id]);

  await assert.rejects(bob.search(''), (e) => e.code === 'bad_request');
  await assert.rejects(bob.search('x', { limit: 51 }), (e) => e.code === 'bad_request');
  await assert.rejects(bob.search('x'.repeat(201)), (e) => e.code === 'too_large');
  await assert.rejects(bob.search(42), TypeError);
  assert.equal(c, carol.user);
  for (const x of [alice, bob, carol]) x.close();
});
