// Tokens: refreshed in place (`auth` with getToken()) when the server sends
// `token_expiring`, so the socket outlives many short tokens; a 1008 close (expired)
// reconnects with a fresh token; a refused refresh is reported and tried again.
// Tokens here live 4-6 s, the notice comes 3 s ahead, and the leeway is 0.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { PgChat } from '../pgchat.js';
import { Server, client, messages, mintToken, record, sleep, track, uniqueUser, waitFor } from './helpers.mjs';

const server = new Server({ PGCHAT_TOKEN_EXPIRING_NOTICE_MS: '3000', PGCHAT_JWT_LEEWAY_SECS: '0' });
before(() => server.start());
after(() => server.stop());

/** The `exp` claim of a JWT, in ms. */
const expOf = (token) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url')).exp * 1000;

describe('tokens', { concurrency: true }, () => {
  test('short tokens are refreshed in place: one session outlives several of them', async () => {
    const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
    const issued = [];
    const bob = client(server, b, {
      getToken: () => {
        const t = mintToken(b, { ttlSecs: 5 });
        issued.push(t);
        return t;
      },
    });
    const log = record(bob, ['state', 'token_expiring', 'token_refreshed', 'hello', 'error']);
    const seen = messages(bob);
    await bob.connect();
    const session = bob.hello.session;
    const firstExpiry = expOf(issued[0]);
    const alice = client(server, a);
    await alice.connect();
    const { conversation } = await alice.send({ to: b }, 'hi');
    // Past the first token's expiry, and well past the second's notice.
    await waitFor(() => Date.now() > firstExpiry + 2500, 'time to pass', 20000);
    await alice.send({ conversation }, 'still here?');
    await waitFor(() => seen.length === 2, 'both messages');

    const kinds = log.map(([e]) => e);
    assert.equal(kinds.filter((k) => k === 'hello').length, 1, 'one connection all along');
    assert.equal(bob.hello.session, session);
    assert.ok(!log.some(([e, s]) => e === 'state' && s.state === 'reconnecting'), 'never reconnected');
    assert.ok(kinds.filter((k) => k === 'token_refreshed').length >= 2, 'refreshed at least twice');
    const notice = log.find(([e]) => e === 'token_expiring')[1];
    assert.ok(notice.expiresInMs > 0 && notice.expiresInMs <= 3000, `expiresInMs ${notice.expiresInMs}`);
    assert.deepEqual(log.filter(([e]) => e === 'error'), []);
    assert.equal(bob.state, 'open');
    alice.close();
    bob.close();
  });

  test('a token that cannot be refreshed in place: 1008 at expiry, then a reconnect with a fresh token, nothing lost', async () => {
    const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
    // getToken() keeps answering the first token until it has expired (an application
    // whose token source had not renewed yet): the refresh sends nothing.
    let first = null;
    let calls = 0;
    const bob = client(server, b, {
      getToken: () => {
        calls++;
        if (first === null) first = mintToken(b, { ttlSecs: 4 });
        return Date.now() < expOf(first) ? first : mintToken(b, { ttlSecs: 60 });
      },
    });
    const states = [];
    bob.on('state', (s) => states.push(s));
    const errors = [];
    bob.on('error', (e) => errors.push(e));
    const seen = messages(bob);
    await bob.connect();
    const session = bob.hello.session;
    const alice = client(server, a);
    await alice.connect();
    const { conversation } = await alice.send({ to: b }, 'before');
    await waitFor(() => states.some((s) => s.state === 'reconnecting'), 'the 1008 close', 20000);
    // Sent while bob is between sockets.
    await alice.send({ conversation }, 'during');
    await waitFor(() => bob.state === 'open', 'open again');
    await alice.send({ conversation }, 'after');
    await waitFor(() => seen.length === 3, 'three messages');
    const drop = states.find((s) => s.state === 'reconnecting');
    assert.equal(drop.code, 1008, `closed for expiry: ${drop.reason}`);
    assert.notEqual(bob.hello.session, session);
    assert.ok(calls >= 2);
    assert.deepEqual(seen.map((m) => m.body), ['before', 'during', 'after']);
    assert.deepEqual(errors, []);
    alice.close();
    bob.close();
  });

  test('a refused refresh is reported as an error and tried again before expiry', async () => {
    const b = uniqueUser('bob');
    let n = 0;
    const bob = client(server, b, {
      getToken: () => {
        n++;
        // The first refresh brings a token signed with another secret.
        return mintToken(b, { ttlSecs: 6, ...(n === 2 ? { secret: 'not-the-secret' } : {}) });
      },
    });
    const log = record(bob, ['state', 'token_refreshed', 'error']);
    await bob.connect();
    await waitFor(() => log.some(([e]) => e === 'token_refreshed'), 'a refresh', 20000);
    const errors = log.filter(([e]) => e === 'error').map(([, err]) => err);
    assert.equal(errors.length, 1);
    assert.equal(errors[0].code, 'unauthorized');
    assert.ok(!log.some(([e, s]) => e === 'state' && s.state === 'reconnecting'), 'the session stayed open');
    assert.equal(n, 3);
    bob.close();
  });

  test('a fixed token (no getToken) that expires: closed for good, sends rejected', async () => {
    const b = uniqueUser('bob');
    const bob = track(new PgChat({ url: server.url, token: mintToken(b, { ttlSecs: 3 }), backoff: { initialMs: 50, maxMs: 400 } }));
    const log = record(bob, ['state', 'token_expiring', 'error']);
    await bob.connect();
    await waitFor(() => bob.state === 'closed', 'closed', 20000);
    // Less than the notice was left at hello: the notice came at once.
    assert.ok(log.some(([e]) => e === 'token_expiring'));
    const errors = log.filter(([e]) => e === 'error').map(([, err]) => err);
    assert.equal(errors.length, 1);
    assert.equal(errors[0].code, 'unauthorized');
    await assert.rejects(bob.send({ to: 'anyone' }, 'late'), (e) => e.code === 'closed');
    await sleep(0);
  });
});
