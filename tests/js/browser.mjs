// The end-to-end browser test of the demo (run by tests/browser.rs, which owns the pgchat
// process): two headless Chromium pages sign in through the UI as alice and bob and chat,
// and change what they said: an edit, reactions, a reply with an @ mention, who has read,
// a deletion, each checked on the OTHER page, and a search. The test waits for conditions
// on the pages, not for fixed times, so that a busy machine only makes it slower.
//
// Environment: PGCHAT_URL (http://127.0.0.1:PORT), CHROMIUM (the browser's path),
// SCREENSHOTS (paths to write the screenshot to, separated by ':'; the first one's folder
// also gets reconnecting.png, bob's page while it is cut off).
// Control: a line `@@control kill` / `@@control start` on stdout asks the Rust side to
// kill (SIGKILL) or start again the server; it answers `ok` on stdin.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import readline from 'node:readline';
import { chromium } from 'playwright-core';
import { PgChat } from '../../clients/js/pgchat.js';

const BASE = process.env.PGCHAT_URL;
const CHROMIUM = process.env.CHROMIUM;
const SCREENSHOTS = (process.env.SCREENSHOTS || '').split(':').filter(Boolean);
const WAIT = 20_000;
const XSS = '<img src=x onerror=alert(1)>';
assert.ok(BASE && CHROMIUM, 'PGCHAT_URL and CHROMIUM must be set');
for (const path of SCREENSHOTS) mkdirSync(dirname(path), { recursive: true });

const started = Date.now();
const step = (what) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${what}`);

// --- the control channel to the Rust side ------------------------------------------------
const answers = [];
const waiting = [];
const controlLines = readline.createInterface({ input: process.stdin });
controlLines.on('line', (line) => {
  const w = waiting.shift();
  if (w) w(line); else answers.push(line);
});
async function control(command) {
  process.stdout.write(`@@control ${command}\n`);
  const line = answers.length ? answers.shift() : await new Promise((r) => waiting.push(r));
  assert.equal(line, 'ok', `control ${command}: ${line}`);
}

// --- pages --------------------------------------------------------------------------------
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
const dialogs = [];
const pageErrors = [];

/** Bob's socket goes through this route, so that the test can cut it (and refuse new ones). */
const cut = { offline: false, sockets: new Set() };

async function openPage(user, { cuttable = false } = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1 });
  if (cuttable) {
    await context.routeWebSocket(/\/ws(\?|$)/, (ws) => {
      if (cut.offline) {
        ws.close({ code: 1006, reason: 'offline' });
        return;
      }
      const server = ws.connectToServer();
      const pair = { ws, server };
      cut.sockets.add(pair);
      ws.onClose(() => { cut.sockets.delete(pair); server.close(); });
      server.onClose(() => { cut.sockets.delete(pair); ws.close(); });
    });
  }
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('dialog', async (d) => {
    dialogs.push(`${user}: ${d.type()} ${d.message()}`);
    await d.dismiss().catch(() => {});
  });
  page.on('pageerror', (e) => pageErrors.push(`${user}: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') console.log(`  (${user} console) ${m.text()}`);
  });
  await page.goto(`${BASE}/`);
  return page;
}

async function signIn(page, user, name) {
  await page.fill('#signin-user', user);
  await page.fill('#signin-name', name);
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#chat:not([hidden])');
  await waitOpen(page);
}

const waitOpen = (page) => page.waitForSelector('body[data-state=open]');

/** The open conversation's messages, as the page shows them (delivered ones only). */
const shown = (page) => page.$$eval('#message-list .msg[data-cseq]', (els) => els.map((e) => ({
  cseq: Number(e.dataset.cseq), body: e.querySelector('.body').textContent,
})));

async function waitForBody(page, body) {
  await page.waitForFunction((b) => [...document.querySelectorAll('#message-list .msg[data-cseq] .body')]
    .some((e) => e.textContent === b), body);
}

async function send(page, text) {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
}

const noPending = (page) => page.waitForFunction(() => !document.querySelector('#message-list .msg.pending'));

/** A group by its title, or a direct conversation by the other member's id. */
const item = (key) => (key === key.toLowerCase() ? `.conv-item[data-peer="${key}"]` : `.conv-item[data-title="${key}"]`);

async function openConv(page, key) {
  await page.click(item(key));
  await page.waitForSelector(`${item(key)}.active`);
}

async function dialog(page, opener, values) {
  await page.click(opener);
  for (const [name, value] of Object.entries(values)) await page.fill(`#dialog input[name="${name}"]`, value);
  await page.click('#dialog-ok');
  await page.waitForSelector('#dialog', { state: 'hidden' });
}

const msg = (cseq) => `#message-list .msg[data-cseq="${cseq}"]`;

/** The cseq of the (last) message the page shows with this body. */
async function cseqOf(page, body) {
  const cseq = await page.$$eval('#message-list .msg[data-cseq]', (els, b) => els
    .filter((e) => e.querySelector('.body')?.textContent === b)
    .map((e) => Number(e.dataset.cseq)).at(-1), body);
  assert.ok(cseq, `the page shows ${JSON.stringify(body)}`);
  return cseq;
}

/**
 * Clicks one of a message's actions, which show while the pointer is over the message. A
 * page re-renders its messages on every event: if that happened between the hover and the
 * click, the pointer is over the message again before the click is tried again.
 */
async function messageAction(page, cseq, action) {
  for (let attempt = 1; ; attempt += 1) {
    await page.hover(`${msg(cseq)} .bubble`);
    try {
      await page.click(`${msg(cseq)} .msg-actions ${action}`, { timeout: 3000 });
      return;
    } catch (e) {
      if (attempt === 5) throw e;
    }
  }
}

function assertInOrderOnce(list, expected, who) {
  const bodies = list.map((m) => m.body);
  assert.deepEqual(bodies, expected, `${who} shows every message once, in order`);
  const cseqs = list.map((m) => m.cseq);
  assert.deepEqual(cseqs, cseqs.map((_, i) => i + 1), `${who}: cseq 1..n without gaps`);
}

/** A third user who is not a page: the JavaScript client in Node. */
async function nodeUser(user, name) {
  const getToken = async () => {
    const r = await fetch(`${BASE}/dev/token`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user, name }),
    });
    assert.equal(r.status, 200);
    return (await r.json()).token;
  };
  const client = new PgChat({ url: `${BASE.replace(/^http/, 'ws')}/ws`, getToken });
  await client.connect();
  return client;
}

try {
  // --- 1. sign-in: a bad name is refused with the server's words -----------------------
  const alice = await openPage('alice');
  await alice.fill('#signin-user', 'alice smith');
  await alice.click('#signin-form button[type=submit]');
  await alice.waitForFunction(() => document.querySelector('#signin-error').textContent.length > 0);
  assert.equal(await alice.textContent('#signin-error'),
    "user: a user id may hold only A-Z a-z 0-9 _ . @ : -, found ' '");
  await signIn(alice, 'alice', 'Alice');
  const bob = await openPage('bob', { cuttable: true });
  await signIn(bob, 'bob', 'Bob');
  step('alice and bob signed in through the form');

  // --- 2. a message, read receipt, typing and presence pass between them ---------------
  await dialog(alice, '#new-direct', { user: 'bob' });
  await send(alice, 'Hi Bob! Are you around?');
  await bob.waitForSelector(item('alice') + ' .badge:text-is("1")');
  assert.match(await bob.textContent(item('alice') + ' .preview'), /Hi Bob! Are you around\?/);
  await alice.waitForSelector(item('bob') + ' .dot.online');
  step('a direct message arrived with its unread count; bob shows online');
  await openConv(bob, 'alice');
  await waitForBody(bob, 'Hi Bob! Are you around?');
  await bob.waitForSelector(item('alice') + ':not(:has(.badge))');
  await alice.waitForSelector('#message-list .seen:text-is("Seen")');
  await alice.waitForSelector('#message-list .tick.read');
  step('bob read it: alice sees the receipt');
  await bob.click('#composer-input');
  await bob.keyboard.type('Yes, here', { delay: 30 });
  await alice.waitForSelector('#typing.on:has-text("Bob is typing")');
  await alice.waitForSelector(item('bob') + ' .typing-preview');
  await bob.keyboard.type(' - what is up?', { delay: 10 });
  await bob.press('#composer-input', 'Enter');
  await waitForBody(alice, 'Yes, here - what is up?');
  await alice.waitForSelector('#typing:not(.on)', { state: 'attached' });
  step('typing shown while bob typed, cleared when he sent');

  // --- 3. hostile text is text ---------------------------------------------------------
  await send(alice, XSS);
  await waitForBody(bob, XSS);
  await waitForBody(alice, XSS);
  for (const page of [alice, bob]) {
    assert.equal(await page.$$eval('#message-list img, img[src="x"]', (e) => e.length), 0, 'no img element');
    const last = await shown(page);
    assert.equal(last.at(-1).body, XSS);
  }
  assert.match(await bob.textContent(item('alice') + ' .preview'), /<img src=x onerror=alert\(1\)>/);
  step('the <img onerror> body shows as text on both pages');

  // --- 4. bob goes offline; alice sends; bob gets it all once, in order ----------------
  cut.offline = true;
  for (const { ws, server } of [...cut.sockets]) {
    server.close();
    ws.close({ code: 1006, reason: 'offline' });
  }
  await bob.waitForSelector('#banner.warn:has-text("Reconnecting")');
  if (SCREENSHOTS[0]) await bob.screenshot({ path: `${dirname(SCREENSHOTS[0])}/reconnecting.png` });
  await alice.waitForSelector(item('bob') + ' .dot.offline');
  step('bob is cut off: his page says it is reconnecting; alice sees him offline');
  for (const n of [1, 2, 3]) await send(alice, `While you were away ${n}`);
  await noPending(alice);
  assert.equal(await bob.$$eval('.msg .body', (e) => e.filter((x) => x.textContent.startsWith('While you were away')).length), 0);
  cut.offline = false;
  await waitOpen(bob);
  await waitForBody(bob, 'While you were away 3');
  await alice.waitForSelector(item('bob') + ' .dot.online');
  let expected = ['Hi Bob! Are you around?', 'Yes, here - what is up?', XSS,
    'While you were away 1', 'While you were away 2', 'While you were away 3'];
  assertInOrderOnce(await shown(bob), expected, 'bob after his reconnect');
  step('bob reconnected: the three messages arrived once, in order; alice sees him online');

  // --- 5. the server is killed; alice sends while it is down; it arrives after ---------
  await control('kill');
  await alice.waitForSelector('#banner.warn:has-text("Reconnecting")');
  await bob.waitForSelector('#banner.warn:has-text("Reconnecting")');
  await send(alice, 'Sent while the server was down');
  await alice.waitForSelector('#message-list .msg.pending');
  step('server killed: both pages reconnecting; alice\'s message waits in the outbox');
  await control('start');
  await waitOpen(alice);
  await waitOpen(bob);
  await noPending(alice);
  await waitForBody(bob, 'Sent while the server was down');
  expected = [...expected, 'Sent while the server was down'];
  assertInOrderOnce(await shown(bob), expected, 'bob after the restart');
  assertInOrderOnce(await shown(alice), expected, 'alice after the restart');
  await alice.waitForSelector('#banner', { state: 'hidden' });
  step('server back: the message was delivered once, in order, on both pages');

  // --- 6. edit, react, reply with a mention, receipts, delete: each shows on the other page
  await send(alice, 'Lunch at noon tomorrow?');
  await waitForBody(bob, 'Lunch at noon tomorrow?');
  const lunch = await cseqOf(alice, 'Lunch at noon tomorrow?');
  await messageAction(alice, lunch, '[data-action=edit]');
  await alice.waitForSelector('#composer-context[data-mode=edit]');
  assert.equal(await alice.inputValue('#composer-input'), 'Lunch at noon tomorrow?', 'the composer holds the text to edit');
  await alice.fill('#composer-input', 'Lunch at 1 pm tomorrow?');
  await alice.press('#composer-input', 'Enter');
  await bob.waitForSelector(`${msg(lunch)} .edited`);
  assert.equal(await bob.textContent(`${msg(lunch)} .body`), 'Lunch at 1 pm tomorrow?');
  await alice.waitForSelector(`${msg(lunch)} .edited`);
  assert.equal(await alice.inputValue('#composer-input'), '', 'the composer is empty again');
  await alice.waitForSelector('#composer-context', { state: 'hidden' });
  step('alice edited her message: bob\'s page shows the new text, marked edited');

  await messageAction(bob, lunch, '[data-emoji="👍"]');
  await alice.waitForSelector(`${msg(lunch)} .reaction:not(.own)[data-emoji="👍"] .count:text-is("1")`);
  await bob.waitForSelector(`${msg(lunch)} .reaction.own[data-emoji="👍"] .count:text-is("1")`);
  await alice.click(`${msg(lunch)} .reaction[data-emoji="👍"]`);
  await bob.waitForSelector(`${msg(lunch)} .reaction.own[data-emoji="👍"] .count:text-is("2")`);
  await alice.waitForSelector(`${msg(lunch)} .reaction.own[data-emoji="👍"] .count:text-is("2")`);
  await bob.click(`${msg(lunch)} .reaction.own[data-emoji="👍"]`);
  await alice.waitForSelector(`${msg(lunch)} .reaction.own[data-emoji="👍"] .count:text-is("1")`);
  await bob.waitForSelector(`${msg(lunch)} .reaction:not(.own)[data-emoji="👍"] .count:text-is("1")`);
  step('bob reacted 👍: alice\'s page counts it; a click on the count adds or takes back one\'s own');

  await messageAction(bob, lunch, '[data-action=reply]');
  await bob.waitForSelector('#composer-context[data-mode=reply]:has-text("Lunch at 1 pm tomorrow?")');
  await bob.keyboard.type('Perfect @al');
  await bob.waitForSelector('#mention-list .mention-item.active[data-user="alice"]');
  await bob.keyboard.press('Enter');
  assert.equal(await bob.inputValue('#composer-input'), 'Perfect @alice ', '@ completion put in the user id');
  await bob.keyboard.type('see you there');
  await bob.keyboard.press('Enter');
  const reply = 'Perfect @alice see you there';
  await waitForBody(alice, reply);
  const answer = await cseqOf(alice, reply);
  await alice.waitForSelector(`${msg(answer)} .quote:has-text("Lunch at 1 pm tomorrow?")`);
  // Marked only because the server stored alice among the message's `mentions`.
  await alice.waitForSelector(`${msg(answer)}.mentions-me .mention.you:text-is("@alice")`);
  await bob.waitForSelector('#composer-context', { state: 'hidden' });
  step('bob replied with @ completion: alice sees the quote, and her mention marked');

  const down = await cseqOf(alice, 'Sent while the server was down');
  await messageAction(alice, down, '[data-action=readers]');
  await alice.waitForSelector('#dialog[open] .readers-read:text-is("Bob")');
  await alice.click('#dialog-ok');
  await alice.waitForSelector('#dialog', { state: 'hidden' });
  step('"Seen by" on alice\'s message asks the receipts: Bob');

  await messageAction(alice, lunch, '[data-action=delete]');
  await alice.waitForSelector('#dialog[open]:has-text("Delete this message?")');
  await alice.click('#dialog-ok');
  await alice.waitForSelector('#dialog', { state: 'hidden' });
  await bob.waitForSelector(`${msg(lunch)}.deleted .body.tombstone:text-is("message deleted")`);
  await bob.waitForSelector(`${msg(answer)} .quote-text.gone:text-is("message deleted")`);
  await alice.waitForSelector(`${msg(lunch)}.deleted`);
  for (const page of [alice, bob]) {
    assert.equal(await page.$$eval(`${msg(lunch)} :is(.reaction, .edited, .msg-actions)`, (e) => e.length), 0, 'a tombstone has no reactions, edit mark or actions');
    assert.ok(!(await page.textContent('#message-list')).includes('Lunch at'), 'the text is gone from the page');
  }
  step('alice deleted it: bob\'s page shows the tombstone, and the reply quotes nothing');

  // --- 7. history loads on scroll ------------------------------------------------------
  const carol = await nodeUser('carol', 'Carol');
  const first = await carol.send({ to: 'bob' }, 'Old news 1');
  for (let i = 2; i <= 45; i += 1) await carol.send({ conversation: first.conversation }, `Old news ${i}`);
  await bob.waitForSelector(item('carol') + ' .badge:text-is("45")');
  // A reload forgets what arrived live: the tab signs in again by itself, and the
  // conversation's history now comes page by page.
  await bob.reload();
  await waitOpen(bob);
  await bob.waitForSelector(item('carol') + ' .badge:text-is("45")');
  await openConv(bob, 'carol');
  await waitForBody(bob, 'Old news 45');
  const firstPage = (await shown(bob)).length;
  assert.ok(firstPage < 45, `the first page holds part of the history (${firstPage})`);
  for (let i = 0; i < 10 && (await shown(bob)).length < 45; i += 1) {
    const before = (await shown(bob)).length;
    await bob.$eval('#messages', (e) => { e.scrollTop = 0; e.dispatchEvent(new Event('scroll')); });
    // A page loading already (a first page that does not fill the pane asks for more by
    // itself) ignores the scroll, and its page arrives all the same.
    await bob.waitForFunction((n) => document.querySelectorAll('#message-list .msg[data-cseq]').length > n, before);
  }
  assertInOrderOnce(await shown(bob), Array.from({ length: 45 }, (_, i) => `Old news ${i + 1}`), 'bob\'s history with carol');
  step(`history: ${firstPage} shown first, the rest loaded on scrolling up`);

  // --- 8. search: newest first; a click opens the conversation at the message ---------
  await bob.fill('#search-input', 'away');
  await bob.press('#search-input', 'Enter');
  await bob.waitForFunction(() => document.querySelectorAll('#search-list .search-hit').length === 3);
  assert.equal(await bob.textContent('#search-summary'), '3 messages for “away”');
  const hits = await bob.$$eval('#search-list .search-hit', (els) => els.map((e) => ({
    cseq: Number(e.dataset.cseq), text: e.querySelector('.hit-body').textContent, marked: e.querySelector('mark')?.textContent,
  })));
  assert.deepEqual(hits.map((x) => x.text), [3, 2, 1].map((n) => `Alice: While you were away ${n}`));
  assert.ok(hits.every((x) => x.marked === 'away'), 'the word found is marked');
  await bob.click('#search-list .search-hit >> nth=2');
  await bob.waitForSelector('#conv-title:text-is("Alice")');
  await bob.waitForSelector(`#message-list[data-jumped="${hits[2].cseq}"] .msg[data-cseq="${hits[2].cseq}"]`);
  assert.equal(await bob.textContent(`${msg(hits[2].cseq)} .body`), 'While you were away 1');
  await bob.click('#search-close');
  await bob.waitForSelector(`${item('alice')}.active`);
  step('bob searched "away": three results, newest first; a click opened the conversation at the oldest');

  // --- 9. groups: create, add, leave; a realistic conversation for the screenshot ------
  const club = await carol.createGroup('Book club', ['alice', 'bob']);
  await carol.send({ conversation: club.id }, 'Next book: The Left Hand of Darkness?');
  await bob.waitForSelector(item('Book club'));
  await openConv(bob, 'Book club');
  await dialog(bob, '#conv-leave', {});
  await bob.waitForSelector(item('Book club'), { state: 'detached' });
  await alice.waitForSelector(item('Book club'));
  await openConv(alice, 'Book club');
  await alice.waitForSelector('#conv-subtitle:has-text("2 members")');
  step('bob left a group through the UI; alice sees two members left');

  await dialog(alice, '#new-group', { name: 'Weekend trip', members: 'bob carol' });
  await alice.waitForSelector('#conv-title:text-is("Weekend trip")');
  await bob.waitForSelector(item('Weekend trip'));
  const trip = (await carol.conversations()).find((c) => c.name === 'Weekend trip');
  assert.ok(trip, 'carol is in the group alice created');
  await send(alice, 'Cabin is booked for Saturday and Sunday!');
  await waitForBody(alice, 'Cabin is booked for Saturday and Sunday!');
  await carol.send({ conversation: trip.id }, 'Amazing. I can bring the tent and the camping stove.');
  await openConv(bob, 'Weekend trip');
  await send(bob, 'I will drive. Leaving at 8 from the station, there is room for three.');
  await waitForBody(alice, 'I will drive. Leaving at 8 from the station, there is room for three.');
  const drive = await cseqOf(alice, 'I will drive. Leaving at 8 from the station, there is room for three.');
  await carol.send({ conversation: trip.id }, 'Perfect, save me a seat.', { replyTo: drive });
  await carol.react(trip.id, drive, '🙌');
  await send(alice, 'Great - I will bring snacks and the map. Dave wants to come too, adding him now.');
  await dialog(alice, '#conv-add', { users: 'dave' });
  await alice.waitForSelector('#conv-subtitle:has-text("4 members")');
  await bob.waitForSelector(item('Weekend trip'));
  await waitForBody(alice, 'Perfect, save me a seat.');
  await alice.waitForSelector(`${msg(drive)} .reaction[data-emoji="🙌"] .count:text-is("1")`);
  await waitForBody(bob, 'Great - I will bring snacks and the map. Dave wants to come too, adding him now.');
  await alice.waitForSelector('#message-list .seen:text-is("Seen by Bob")');
  // Bob writes to alice meanwhile: her list shows it unread.
  await openConv(bob, 'alice');
  await send(bob, 'Sounds good, see you Saturday!');
  await alice.waitForSelector(item('bob') + ' .badge:text-is("1")');
  await openConv(alice, 'Weekend trip');
  await carol.typing(trip.id, 'start');
  await alice.waitForSelector('#typing.on:has-text("Carol is typing")');
  step('a group created and grown through the UI, with three people talking');

  await alice.mouse.move(0, 0);
  for (const path of SCREENSHOTS) {
    await alice.screenshot({ path });
    step(`screenshot: ${path}`);
  }

  // --- 10. a group too large for read events: its count, a capped list, receipts --------
  // 103 members: 102 besides any reader, more than read_receipts_fanout_max (100), so
  // no read event reaches the others and the pages ask `receipts`.
  const crowd = Array.from({ length: 100 }, (_, i) => `fan${String(i).padStart(3, '0')}`);
  const fans = await carol.createGroup('Fan club', ['alice', 'bob', ...crowd]);
  assert.equal(fans.member_count, 103);
  assert.equal(fans.members.length, 100, 'the state lists the first 100');
  await openConv(alice, 'Fan club');
  assert.equal(await alice.textContent('#conv-subtitle'),
    '103 members · You, Bob, Carol, fan000, fan001, fan002 and 97 more');
  await send(alice, 'Welcome, everyone!');
  await noPending(alice);
  await openConv(bob, 'Fan club');
  await waitForBody(bob, 'Welcome, everyone!');
  // Bob's page marked it read; wait until the server has it, then let carol write.
  for (let i = 0; ; i += 1) {
    const position = (await carol.allReceipts(fans.id)).find((r) => r.user === 'bob')?.cseq ?? 0;
    if (position >= 1) break;
    assert.ok(i < 200, 'bob\'s page marks the group read');
    await alice.waitForTimeout(50);
  }
  await carol.send({ conversation: fans.id }, 'Thanks for having us');
  // Read events alone would say carol only (her message shows she read it); bob's read
  // reaches alice's page through `receipts`.
  await alice.waitForSelector('#message-list .seen:text-is("Seen by Bob, Carol")');
  assert.equal(await alice.$$eval('#message-list .tick.read', (e) => e.length), 0, 'not read by all 102 others');
  step('a group of 103: "and 97 more" in its header, and "Seen by" from receipts');
  carol.close();

  // No dialog ever opened (the XSS body did not run), and no page threw.
  await alice.waitForTimeout(200);
  assert.deepEqual(dialogs, [], 'no alert/confirm/prompt dialog fired');
  assert.deepEqual(pageErrors, [], 'no uncaught error on any page');
  console.log(`browser test passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
} catch (e) {
  // What each page showed when it failed, beside the screenshot.
  for (const [i, context] of browser.contexts().entries()) {
    for (const page of context.pages()) {
      const path = `${SCREENSHOTS[0] ? dirname(SCREENSHOTS[0]) : '.'}/failure-${i}.png`;
      await page.screenshot({ path }).then(() => console.log(`failure screenshot: ${path}`), () => {});
    }
  }
  throw e;
} finally {
  await browser.close();
  controlLines.close();
}
