// pgchat's browser demo: a small chat application on the JavaScript client (/pgchat.js).
// No build step and no framework. Everything shown is built with textContent and
// createElement: nothing is ever parsed as HTML (tests/demo.rs checks that no HTML sink
// appears in this file), so a message body of `<img src=x onerror=alert(1)>` is text; the
// page's Content-Security-Policy forbids inline script besides.

import { PgChat } from '/pgchat.js';

const PAGE = 30; // messages per history page
const TYPING_REFRESH_MS = 3000; // a `start` is repeated this often while typing (server: 6 s)
const TYPING_IDLE_MS = 2500; // `stop` after this long without a keystroke
const USER_ID = /^[A-Za-z0-9_.@:-]{1,64}$/;
const MEMBERS_LISTED = 100; // a state lists this many members at most (conversation_members_listed)
// Read positions reach the other members as `read` events only while a conversation has
// at most this many members besides the reader (the server's read_receipts_fanout_max);
// in a larger group the page asks for them (`receipts`).
const READ_FANOUT_MAX = 100;
const RECEIPTS_EVERY_MS = 4000; // a large group's receipts are asked at most this often
const RECEIPTS_DELAY_MS = 1000; // after a message: a moment for those reading to mark it
const RECEIPTS_FOLLOW_UPS = 3; // after one's own message: asked again 8, 16 and 32 s later
const SESSION_KEY = 'pgchat.demo.session';
const QUICK_EMOJI = ['👍', '❤️', '😂', '😮', '🎉'];
const SNIPPET_CHARS = 100; // a reply quotes the first 100 characters of the original, as the server does
const MENTIONS_MAX = 50; // the server's max_mentions
const MEMBERS_LOADED_MAX = 5000; // @ completion in a large group pages `members` this far at most
const MENTION_TYPED = /(^|\s)@([A-Za-z0-9_.@:-]*)$/; // an @name being typed, up to the caret
const MENTION_TOKEN = /@([A-Za-z0-9_.@:-]+)/g; // an @name in a body
const FLASH_MS = 2500; // how long a message jumped to stays highlighted

const $ = (id) => document.getElementById(id);

/** An element: props are className/text/dataset/attributes/on* listeners; children are
 * nodes or strings (always text nodes). */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// ---------------------------------------------------------------------------------------
// State

const S = {
  client: null,
  me: null,
  myName: null,
  convs: new Map(), // id -> conversation (see blank())
  openId: null,
  draftTo: null, // a direct conversation not created yet: the user id it will go to
  presence: new Map(), // user -> {status, last_seen}
  watched: new Set(), // users whose presence this session subscribed to
  names: new Map(), // user -> display name, learnt from messages
  typingSent: null, // {conversation, at} while this user is typing
  typingIdle: null,
  everOpen: false,
  replyTo: null, // {conversation, cseq, sender, snippet}: the message the composer answers
  editing: null, // {conversation, cseq, draft}: the message the composer edits (draft: the text it replaced)
  mention: null, // {start, end, items, active}: the @ completion list while it is open
  reacting: new Map(), // "conversation cseq emoji" -> the state last asked for, until its event comes
  search: null, // {query, messages, hasMore, loading, error} while search results are shown
  flash: null, // {conversation, cseq, until}: the message a search result or quote jumped to
};

function blank(id) {
  return {
    id, kind: null, name: null, members: [], member_count: 0, admins: [],
    last: null, unread: 0, mentionsUnread: 0, msgs: new Map(), pending: new Map(), loaded: false,
    hasMore: false, loading: false, reads: new Map(), typing: new Map(), myRead: 0,
    notes: [], // {after: cseq, text}: membership changes seen live, shown in the timeline
    touchedAt: 0, // when an event last told of it (a reload that started before keeps it)
    receipts: { at: 0, timer: null, due: 0, busy: false, again: false, followUps: 0 },
    everyone: null, // every member id, paged in with `members` when the state's list is capped
    everyoneLoading: false,
  };
}

function conv(id) {
  if (!S.convs.has(id)) S.convs.set(id, blank(id));
  return S.convs.get(id);
}

function merge(c, wire) {
  if (wire.kind) c.kind = wire.kind;
  if ('name' in wire) c.name = wire.name;
  // Every state (events, group replies, `conversations`) lists at most the first 100
  // members by id beside member_count; states stored before schema version 4 list them
  // all without a count.
  if (Array.isArray(wire.members)) c.members = wire.members;
  c.member_count = wire.member_count ?? (Array.isArray(wire.members) ? wire.members.length : c.member_count);
  if (Array.isArray(wire.admins)) c.admins = wire.admins;
  if ('last_message' in wire) {
    const m = wire.last_message;
    if (m && (!c.last || m.cseq >= c.last.cseq)) c.last = m;
  }
  if (typeof wire.mentions_unread === 'number') c.mentionsUnread = S.openId === c.id && visible() ? 0 : wire.mentions_unread;
  if (typeof wire.unread === 'number') {
    c.unread = S.openId === c.id && visible() ? 0 : wire.unread;
    // Unread messages are those after this user's read marker.
    if (c.last) c.myRead = Math.max(c.myRead, c.last.cseq - wire.unread);
  }
  return c;
}

const visible = () => document.visibilityState === 'visible';
/** The other members the state lists: all of them only when `listsAll`. */
const others = (c) => c.members.filter((m) => m !== S.me);
const listsAll = (c) => c.members.length >= c.member_count;
const nameOf = (user) => (user === S.me ? 'You' : S.names.get(user) || user);

/** Whether the others' read positions come as `read` events (else ask `receipts`). */
const readsAsEvents = (c) => !(c.kind === 'group' && c.member_count - 1 > READ_FANOUT_MAX);

/** "Ann, Ben, Cat and 97 more": the first `max` of `ids`, out of `total`. */
function someNames(ids, total = ids.length, max = 3) {
  const names = ids.slice(0, max).map(nameOf);
  const rest = Math.max(0, total - names.length);
  return rest ? `${names.join(', ')} and ${rest} more` : names.join(', ');
}

function title(c) {
  if (c.kind !== 'direct') return c.name || 'Conversation';
  const peer = others(c)[0];
  return peer ? nameOf(peer) : `${S.myName || S.me} (you)`;
}

/** The name an avatar's initials come from: the title, or for notes to oneself one's name. */
function avatarLabel(c, label) {
  return c.kind === 'direct' && !peerOf(c) ? S.myName || S.me : label;
}

function peerOf(c) {
  return c.kind === 'direct' ? others(c)[0] ?? null : null;
}

function learnName(sender) {
  if (sender?.id && sender.name && S.names.get(sender.id) !== sender.name) {
    S.names.set(sender.id, sender.name);
    return true;
  }
  return false;
}

/** A deleted message as the server shows it: its id, cseq, sender and time, nothing else. */
function tombstone(m) {
  return { ...m, body: '', deleted: true, edited_at: null, reply_to: null, mentions: [], reactions: [] };
}

const snippetOf = (body) => Array.from(body).slice(0, SNIPPET_CHARS).join('');

/** Every member id the page knows of `c`: all of them once paged in, else the state's list. */
const knownMembers = (c) => c.everyone ?? c.members;

/** The longest start of `token` that is one of `ids`: "@bob." mentions bob. */
function mentionIn(token, ids) {
  for (let n = token.length; n > 0; n -= 1) if (ids.has(token.slice(0, n))) return token.slice(0, n);
  return null;
}

/** The members an outgoing body mentions (`@id`), each once. */
function mentionsIn(c, body) {
  const members = new Set(knownMembers(c));
  const found = new Set();
  for (const match of body.matchAll(MENTION_TOKEN)) {
    const id = mentionIn(match[1], members);
    if (id) found.add(id);
  }
  return [...found].slice(0, MENTIONS_MAX);
}

const mayDelete = (c, m) => m.sender.id === S.me || (c?.kind === 'group' && c.admins.includes(S.me));

// ---------------------------------------------------------------------------------------
// Formatting

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });
const shortDayFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });

function dayKey(d) {
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

function dayLabel(d) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (dayKey(d) === dayKey(today)) return 'Today';
  if (dayKey(d) === dayKey(yesterday)) return 'Yesterday';
  return dayFmt.format(d);
}

function listTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return dayKey(d) === dayKey(new Date()) ? timeFmt.format(d) : shortDayFmt.format(d);
}

function lastSeen(p) {
  if (!p) return '';
  if (p.status === 'online') return 'online';
  if (p.status === 'offline' && p.last_seen) {
    const d = new Date(p.last_seen);
    const day = dayLabel(d);
    return `last seen ${day === 'Today' ? 'today' : day === 'Yesterday' ? 'yesterday' : shortDayFmt.format(d)} at ${timeFmt.format(d)}`;
  }
  return p.status === 'offline' ? 'offline' : '';
}

const PALETTE = ['#e25b5b', '#e08a2c', '#c9a400', '#3fa34d', '#1f9e8f', '#2d8fd5', '#4f6bed', '#8a5cf5', '#c355c9', '#d6457b'];

function hue(s) {
  let x = 0;
  for (const ch of s) x = (x * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[x % PALETTE.length];
}

function initials(text) {
  // The first letter or digit of the first two words.
  const firsts = text.split(/[\s._@:()-]+/)
    .map((w) => Array.from(w).find((ch) => /[\p{L}\p{N}]/u.test(ch)))
    .filter(Boolean);
  return firsts.slice(0, 2).join('').toUpperCase() || '?';
}

/** A round avatar with initials; a presence dot for a user (`user` given). */
function avatar(label, key, { user = null, size = 'md', group = false } = {}) {
  const a = h('span', { class: `avatar ${size}${group ? ' group' : ''}`, 'aria-hidden': 'true' }, initials(label));
  a.style.backgroundColor = hue(key);
  if (user) {
    const p = S.presence.get(user);
    if (p && (p.status === 'online' || p.status === 'offline')) {
      a.append(h('span', { class: `dot ${p.status}`, dataset: { presence: user, status: p.status } }));
    }
  }
  return a;
}

// ---------------------------------------------------------------------------------------
// Signing in

async function mint(user, name) {
  const r = await fetch('/dev/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(name ? { user, name } : { user }),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body?.error?.message || `the server answered ${r.status}`);
  return body;
}

async function signIn(event) {
  event.preventDefault();
  const user = $('signin-user').value.trim();
  const name = $('signin-name').value.trim();
  const error = $('signin-error');
  error.textContent = '';
  if (!user) {
    error.textContent = 'Enter a user name.';
    return;
  }
  const button = event.target.querySelector('button[type=submit]');
  button.disabled = true;
  try {
    const minted = await mint(user, name || null);
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ user: minted.user, name: minted.name }));
    start(minted.user, minted.name, minted);
  } catch (e) {
    error.textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

function signOut() {
  sessionStorage.removeItem(SESSION_KEY);
  S.client?.close();
  location.reload();
}

function start(user, name, minted) {
  S.me = user;
  S.myName = name;
  if (name) S.names.set(user, name);
  $('signin').hidden = true;
  $('chat').hidden = false;
  renderMe();
  // A token is minted again when the client asks (each reconnect, and in place before
  // expiry); the one from the sign-in serves while it has most of its life left.
  let cached = minted ? { token: minted.token, until: Date.now() + (minted.expires_in * 1000) / 2 } : null;
  const getToken = async () => {
    if (cached && Date.now() < cached.until) return cached.token;
    const m = await mint(user, name);
    cached = { token: m.token, until: Date.now() + (m.expires_in * 1000) / 2 };
    return m.token;
  };
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const client = new PgChat({
    url: `${scheme}://${location.host}/ws`,
    getToken,
    backoff: { initialMs: 250, maxMs: 4000 },
  });
  S.client = client;
  window.pgchat = client; // for the console
  client.on('state', onState);
  client.on('message', onMessage);
  client.on('conversation', onConversation);
  client.on('read', onRead);
  client.on('message_edited', onEdited);
  client.on('message_deleted', onDeleted);
  client.on('reaction', onReaction);
  client.on('typing', onTyping);
  client.on('presence', onPresence);
  client.on('resync', () => reload(true));
  client.on('event', (e) => { if (e.type === 'removed') onRemoved(e.conversation); });
  client.on('error', (e) => console.warn('pgchat:', e));
  client.connect().catch((e) => banner('error', `Could not connect: ${e.message}`));
}

// ---------------------------------------------------------------------------------------
// Connection state

function onState({ state, attempt, delayMs }) {
  document.body.dataset.state = state;
  renderMyState();
  if (state === 'open') {
    const recovered = S.everOpen;
    S.everOpen = true;
    banner(recovered ? 'ok' : null, recovered ? 'Connected' : '');
    // Typing that was on when the socket went is stale; presence watching belongs to a
    // socket, so a new one watches again (and gets a fresh snapshot).
    for (const c of S.convs.values()) for (const t of c.typing.values()) clearTimeout(t);
    for (const c of S.convs.values()) c.typing.clear();
    S.watched.clear();
    reload(false);
  } else if (state === 'connecting') {
    banner('info', 'Connecting…');
  } else if (state === 'reconnecting') {
    const wait = delayMs != null ? ` · retrying in ${Math.max(1, Math.round(delayMs / 1000))} s` : '';
    banner('warn', `Connection lost. Reconnecting…${attempt ? ` (attempt ${attempt})` : ''}${wait}`);
  } else if (state === 'closed') {
    banner(null, '');
  }
  renderPane();
}

let bannerTimer = null;
function banner(kind, text) {
  const b = $('banner');
  clearTimeout(bannerTimer);
  if (!kind) {
    b.hidden = true;
    return;
  }
  b.className = `banner ${kind}`;
  b.textContent = text;
  b.hidden = false;
  if (kind === 'ok') bannerTimer = setTimeout(() => { b.hidden = true; }, 1500);
}

let toastTimer = null;
function toast(text) {
  const t = $('toast');
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 3500);
}

/** Loads the conversation list (and, after a resync, the open history again). */
async function reload(resync) {
  const client = S.client;
  const startedAt = performance.now();
  let list;
  try {
    // Every page of them: a user in hundreds of conversations gets them all.
    list = await client.conversations();
  } catch (e) {
    console.warn('conversations:', e);
    return;
  }
  const seen = new Set();
  for (const w of list) {
    seen.add(w.id);
    const c = merge(conv(w.id), w);
    if (w.last_message) learnName(w.last_message.sender);
    if (resync) {
      c.msgs.clear();
      c.loaded = false;
    }
  }
  // Gone unless an event told of it while the pages were read (a walk that started
  // before a conversation was joined does not list it).
  for (const [id, c] of [...S.convs]) if (!seen.has(id) && c.touchedAt < startedAt) S.convs.delete(id);
  if (S.openId && !S.convs.has(S.openId)) S.openId = null;
  await watchPresence();
  renderList();
  if (S.openId) {
    const c = S.convs.get(S.openId);
    if (!c.loaded) await loadOlder(c);
    markRead(c);
    // Read events missed while away are replayed; a large group's positions are not.
    if (!readsAsEvents(c)) receiptsSoon(c);
  }
  renderPane();
}

async function watchPresence() {
  const users = new Set();
  for (const c of S.convs.values()) for (const m of c.members) if (m !== S.me) users.add(m);
  if (S.draftTo && S.draftTo !== S.me) users.add(S.draftTo);
  const fresh = [...users].filter((u) => !S.watched.has(u)).slice(0, 1000 - S.watched.size);
  if (!fresh.length) return;
  for (const u of fresh) S.watched.add(u);
  try {
    const snapshot = await S.client.subscribePresence(fresh);
    for (const p of snapshot) {
      // `unknown`: someone this user shares no conversation with yet, so not watched;
      // asked again once a conversation is shared.
      if (p.status === 'unknown') S.watched.delete(p.user);
      else S.presence.set(p.user, p);
    }
  } catch (e) {
    for (const u of fresh) S.watched.delete(u);
    console.warn('presence:', e);
  }
  renderPresence();
}

// ---------------------------------------------------------------------------------------
// Events

function onMessage(m) {
  const named = learnName(m.sender);
  const c = conv(m.conversation);
  c.touchedAt = performance.now();
  if (!c.kind || !c.members.length) reloadSoon();
  c.msgs.set(m.cseq, m);
  c.pending.delete(m.client_msg_id);
  if (!c.last || m.cseq >= c.last.cseq) c.last = m;
  const mine = m.sender.id === S.me;
  if (mine) {
    c.myRead = Math.max(c.myRead, m.cseq);
  } else if (c.reads.get(m.sender.id) == null || c.reads.get(m.sender.id) < m.cseq) {
    // A sender has read everything up to what they send.
    c.reads.set(m.sender.id, m.cseq);
  }
  if (S.openId === c.id && visible()) {
    markRead(c);
  } else if (!mine && m.cseq > c.myRead) {
    c.unread += 1;
    if (m.mentions?.includes(S.me)) c.mentionsUnread += 1;
  }
  // Whoever sends has stopped typing.
  clearTyping(c, m.sender.id);
  if (!readsAsEvents(c)) receiptsSoon(c, { followUps: mine ? RECEIPTS_FOLLOW_UPS : null });
  renderList();
  if (S.openId === c.id) renderMessages();
  else if (named) renderPane();
}

function onConversation(w) {
  const fresh = !S.convs.has(w.id);
  const prev = fresh ? null : S.convs.get(w.id);
  // A conversation known only from a message so far has no state to compare with.
  const before = prev?.kind ? { members: new Set(prev.members), count: prev.member_count, all: listsAll(prev) } : null;
  const c = merge(conv(w.id), w);
  c.touchedAt = performance.now();
  c.everyone = null; // the members may have changed: paged in again when needed
  if (before && c.kind === 'group' && Array.isArray(w.members)) {
    const at = c.last?.cseq ?? 0;
    // A capped list (100 of a larger group) cannot be compared with the last one: the
    // state says who the change added or removed. Old states without it list everyone.
    const delta = c.member_count - before.count;
    const counted = (ids, n) => (ids.length >= MEMBERS_LISTED && n > ids.length ? n : ids.length);
    let joined = Array.isArray(w.added) ? w.added : [];
    let left = Array.isArray(w.removed) ? w.removed : [];
    let joinedCount = counted(joined, delta);
    let leftCount = counted(left, -delta);
    if (!('added' in w) && !('removed' in w) && before.all && listsAll(c)) {
      const after = new Set(w.members);
      joined = w.members.filter((u) => !before.members.has(u));
      left = [...before.members].filter((u) => !after.has(u));
      [joinedCount, leftCount] = [joined.length, left.length];
    }
    for (const u of left) c.reads.delete(u);
    if (joined.length) c.notes.push({ after: at, text: `${someNames(joined, joinedCount)} joined` });
    if (left.length) c.notes.push({ after: at, text: `${someNames(left, leftCount)} left` });
  }
  // The direct conversation a draft was waiting for: open it in the draft's place.
  const peer = c.members.length === 1 ? c.members[0] : others(c)[0];
  if (S.draftTo && !S.openId && c.kind === 'direct' && peer === S.draftTo) {
    S.openId = c.id;
    S.draftTo = null;
    S.draftPending = null;
  }
  if (fresh) c.loaded = false;
  watchPresence();
  renderList();
  if (S.openId === c.id) renderPane();
}

function onRemoved(id) {
  const c = S.convs.get(id);
  if (!c) return;
  S.convs.delete(id);
  if (S.openId === id) {
    S.openId = null;
    toast(`You left ${title(c)}`);
  }
  renderList();
  renderPane();
}

function onRead(e) {
  const c = S.convs.get(e.conversation);
  if (!c) return;
  if ((c.reads.get(e.user) ?? 0) < e.cseq) c.reads.set(e.user, e.cseq);
  if (S.openId === c.id) renderMessages();
}

/** The message `cseq` of `c` (in the history shown and as the last one) after `update`. */
function changed(c, cseq, update) {
  const m = c.msgs.get(cseq);
  if (m) c.msgs.set(cseq, update(m));
  if (c.last?.cseq === cseq) c.last = update(c.last);
  if (S.search) {
    // A result that is deleted is no result any more.
    S.search.messages = S.search.messages
      .map((x) => (x.conversation === c.id && x.cseq === cseq ? update(x) : x))
      .filter((x) => !x.deleted);
  }
}

/** Replies quote what the message they answer says now (`""` once it is deleted). */
function requote(c, cseq, snippet) {
  for (const [k, x] of c.msgs) {
    if (x.reply_to?.cseq === cseq && x.reply_to.snippet !== snippet) c.msgs.set(k, { ...x, reply_to: { ...x.reply_to, snippet } });
  }
  if (S.replyTo?.conversation === c.id && S.replyTo.cseq === cseq) S.replyTo.snippet = snippet;
}

function renderChanged(c) {
  renderList();
  if (S.search) renderSearch();
  if (S.openId === c.id) {
    renderMessages();
    renderComposerContext();
  }
}

/** A message's new body (a replay after its deletion shows the tombstone). */
function onEdited(m) {
  const c = S.convs.get(m.conversation);
  if (!c) return;
  learnName(m.sender);
  changed(c, m.cseq, () => m);
  requote(c, m.cseq, m.deleted ? '' : snippetOf(m.body));
  if (m.deleted) stopEditingDeleted(c, m.cseq);
  renderChanged(c);
}

function onDeleted(e) {
  const c = S.convs.get(e.conversation);
  if (!c) return;
  changed(c, e.cseq, (m) => (m.deleted ? m : tombstone(m)));
  requote(c, e.cseq, '');
  stopEditingDeleted(c, e.cseq);
  renderChanged(c);
}

function stopEditingDeleted(c, cseq) {
  if (S.editing?.conversation === c.id && S.editing.cseq === cseq) {
    cancelComposerMode();
    toast('The message you were editing was deleted');
  }
}

function onReaction(e) {
  const c = S.convs.get(e.conversation);
  if (!c) return;
  const key = `${e.conversation} ${e.cseq} ${e.emoji}`;
  if (e.user === S.me && S.reacting.get(key) === e.on) S.reacting.delete(key);
  changed(c, e.cseq, (m) => reacted(m, e));
  if (S.openId === c.id) renderMessages();
}

/**
 * `m` after the reaction event `e`. The user's own reactions are known exactly (`me`), so
 * one already shown is not counted again. Another member's is counted twice only if a
 * history page read after it committed arrived before its event; the next edit, or the
 * history after a reload, shows the count again as the server keeps it.
 */
function reacted(m, e) {
  if (m.deleted) return m;
  const mine = e.user === S.me;
  const reactions = (m.reactions || []).map((r) => ({ ...r }));
  let r = reactions.find((x) => x.emoji === e.emoji);
  if (mine && (r?.me ?? false) === e.on) return m;
  if (e.on) {
    if (!r) reactions.push((r = { emoji: e.emoji, count: 0, me: false }));
    r.count += 1;
    if (mine) r.me = true;
  } else if (r) {
    r.count -= 1;
    if (mine) r.me = false;
  }
  return { ...m, reactions: reactions.filter((x) => x.count > 0) };
}

function onTyping(e) {
  const c = S.convs.get(e.conversation);
  if (!c || e.user === S.me) return;
  clearTimeout(c.typing.get(e.user));
  c.typing.delete(e.user);
  // The server ends a typing it was not told to end after 6 s; this is a safety net.
  if (e.state === 'start') c.typing.set(e.user, setTimeout(() => clearTyping(c, e.user), 8000));
  renderTyping();
  renderList();
}

function clearTyping(c, user) {
  if (!c.typing.has(user)) return;
  clearTimeout(c.typing.get(user));
  c.typing.delete(user);
  renderTyping();
  renderList();
}

function onPresence(e) {
  S.presence.set(e.user, { user: e.user, status: e.status, last_seen: e.last_seen });
  renderPresence();
}

let reloadTimer = null;
function reloadSoon() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(() => reload(false), 200);
}

// ---------------------------------------------------------------------------------------
// Actions

function markRead(c) {
  if (!c?.last) return;
  c.unread = 0;
  c.mentionsUnread = 0;
  const top = c.last.cseq;
  if (top <= c.myRead) return;
  c.myRead = top;
  S.client.markRead(c.id, top).catch((e) => console.warn('read:', e));
}

async function openConversation(id) {
  stopTyping();
  if (S.openId !== id) {
    cancelComposerMode();
    delete $('message-list').dataset.jumped;
  }
  S.openId = id;
  S.draftTo = null;
  const c = S.convs.get(id);
  renderList();
  renderPane(true);
  $('composer-input').focus();
  // Every conversation once on opening: `read` events tell only of reads made while this
  // page listens, and in a large group not even those.
  loadReceipts(c);
  if (!c.loaded) await loadOlder(c);
  markRead(c);
  renderList();
}

/** Every member's read position, merged into `c.reads` (then shown). */
async function loadReceipts(c) {
  const r = c.receipts;
  if (r.busy) {
    r.again = true;
    return;
  }
  r.busy = true;
  r.at = Date.now();
  try {
    const all = await S.client.allReceipts(c.id);
    // Positions only move forward: keep a newer one that a message or event brought
    // meanwhile. Members the answer lacks have left.
    c.reads = new Map(all.map((x) => [x.user, Math.max(x.cseq, c.reads.get(x.user) ?? 0)]));
  } catch (e) {
    console.warn('receipts:', e);
  } finally {
    r.busy = false;
  }
  if (S.openId === c.id) renderMessages();
  if (r.again) {
    r.again = false;
    receiptsSoon(c);
  } else if (r.followUps > 0 && !ownLatestReadByAll(c)) {
    // Nobody may write again soon: ask a few more times, further apart each time.
    r.followUps -= 1;
    receiptsSoon(c, { waitMs: RECEIPTS_EVERY_MS * 2 ** (RECEIPTS_FOLLOW_UPS - r.followUps) });
  }
}

/**
 * Asks a large group's receipts while it is open: `RECEIPTS_DELAY_MS` after a message at
 * the soonest and `RECEIPTS_EVERY_MS` after the last time, whatever the number of
 * messages. `followUps`: after one's own message, how many times to ask again later while
 * not everyone has read it (null: leave it as it is).
 */
function receiptsSoon(c, { followUps = null, waitMs = 0 } = {}) {
  const r = c.receipts;
  if (followUps !== null) r.followUps = followUps;
  if (S.openId !== c.id) return;
  const due = Date.now() + Math.max(RECEIPTS_DELAY_MS, waitMs, r.at + RECEIPTS_EVERY_MS - Date.now());
  // One timer: a message brings a distant follow-up nearer, never the reverse.
  if (r.timer && r.due <= due) return;
  clearTimeout(r.timer);
  r.due = due;
  r.timer = setTimeout(() => {
    r.timer = null;
    if (S.openId === c.id && visible()) loadReceipts(c);
  }, due - Date.now());
}

function ownLatestReadByAll(c) {
  let latest = null;
  for (const m of c.msgs.values()) if (m.sender.id === S.me && (!latest || m.cseq > latest.cseq)) latest = m;
  return !latest || receipt(c, latest).all;
}

/** Loads the page of history before the oldest message shown (the newest page first). */
async function loadOlder(c) {
  if (c.loading || (c.loaded && !c.hasMore)) return;
  c.loading = true;
  renderHistoryStatus();
  const oldest = c.loaded ? Math.min(...c.msgs.keys()) : null;
  try {
    const opts = { limit: PAGE };
    if (oldest != null && Number.isFinite(oldest)) opts.beforeCseq = oldest;
    const page = await S.client.history(c.id, opts);
    for (const m of page) {
      learnName(m.sender);
      c.msgs.set(m.cseq, m);
      // Whoever sent a message had read everything before it.
      if (m.sender.id !== S.me && (c.reads.get(m.sender.id) ?? 0) < m.cseq) c.reads.set(m.sender.id, m.cseq);
      if (!c.last || m.cseq > c.last.cseq) c.last = m;
    }
    c.hasMore = page.length > 0 && Math.min(...page.map((m) => m.cseq)) > 1;
    c.loaded = true;
  } catch (e) {
    console.warn('history:', e);
  } finally {
    c.loading = false;
  }
  if (S.openId === c.id) renderMessages({ keepFromBottom: oldest != null });
}

function composerTarget() {
  if (S.openId) return { conversation: S.openId };
  if (S.draftTo) return { to: S.draftTo };
  return null;
}

async function submitMessage(event) {
  event.preventDefault();
  const input = $('composer-input');
  const body = input.value;
  const target = composerTarget();
  if (!body.trim() || !target) return;
  closeMentions();
  if (S.editing) {
    submitEdit(body);
    return;
  }
  input.value = '';
  autosize();
  stopTyping();
  const clientMsgId = `demo-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
  let c = S.openId ? S.convs.get(S.openId) : null;
  const reply = c && S.replyTo?.conversation === c.id ? S.replyTo : null;
  const mentions = c ? mentionsIn(c, body) : [];
  const opts = { clientMsgId };
  if (reply) opts.replyTo = reply.cseq;
  if (mentions.length) opts.mentions = mentions;
  S.replyTo = null;
  renderComposerContext();
  const pending = {
    client_msg_id: clientMsgId, body, created_at: new Date().toISOString(),
    reply_to: reply ? { cseq: reply.cseq, sender: reply.sender, snippet: reply.snippet } : null, mentions,
  };
  if (c) {
    c.pending.set(clientMsgId, pending);
    renderMessages({ toBottom: true });
  } else {
    S.draftPending = pending;
    renderDraft();
  }
  try {
    const m = await S.client.send(target, body, opts);
    c = conv(m.conversation);
    if (target.to) {
      S.draftTo = null;
      S.draftPending = null;
      if (!c.members.length) c.kind = 'direct';
      S.openId = m.conversation;
    }
    learnName(m.sender);
    c.pending.delete(clientMsgId);
    c.msgs.set(m.cseq, m);
    if (!c.last || m.cseq >= c.last.cseq) c.last = m;
    c.myRead = Math.max(c.myRead, m.cseq);
    if (!c.loaded && target.to) {
      c.loaded = true;
      c.hasMore = m.cseq > 1;
    }
    renderList();
    if (S.openId === c.id) renderPane();
  } catch (e) {
    if (c) c.pending.delete(clientMsgId);
    S.draftPending = null;
    toast(`Not sent: ${e.message}`);
    renderPane();
  }
}

/**
 * Saves the composer's text as the new body of the message being edited. What the page
 * shows comes from the `message_edited` event, in order with every other change; the
 * reply may come after a later change's event (a reaction), so it is not applied.
 */
async function submitEdit(body) {
  const { conversation, cseq, draft } = S.editing;
  const input = $('composer-input');
  S.editing = null;
  input.value = draft;
  autosize();
  renderComposerContext();
  try {
    await S.client.edit(conversation, cseq, body);
  } catch (e) {
    toast(`Not edited: ${e.message}`);
  }
}

function startReply(c, m) {
  if (S.editing) cancelComposerMode();
  S.replyTo = { conversation: c.id, cseq: m.cseq, sender: m.sender.id, snippet: snippetOf(m.body) };
  renderComposerContext();
  $('composer-input').focus();
}

function startEdit(c, m) {
  const input = $('composer-input');
  stopTyping();
  S.replyTo = null;
  S.editing = { conversation: c.id, cseq: m.cseq, draft: S.editing ? S.editing.draft : input.value };
  input.value = m.body;
  autosize();
  renderComposerContext();
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
}

/** Leaves replying or editing; an edit gives the composer back the text it held before. */
function cancelComposerMode() {
  if (S.editing) {
    $('composer-input').value = S.editing.draft;
    autosize();
  }
  S.editing = null;
  S.replyTo = null;
  closeMentions();
  renderComposerContext();
}

function renderComposerContext() {
  const el = $('composer-context');
  const editing = S.editing?.conversation === S.openId ? S.editing : null;
  const reply = !editing && S.replyTo?.conversation === S.openId ? S.replyTo : null;
  el.hidden = !editing && !reply;
  el.dataset.mode = editing ? 'edit' : reply ? 'reply' : '';
  $('context-title').textContent = editing ? 'Editing message' : reply ? `Replying to ${nameOf(reply.sender)}` : '';
  const snippet = $('context-snippet');
  snippet.textContent = editing ? 'Enter saves, Esc cancels' : reply ? reply.snippet || 'message deleted' : '';
  snippet.className = reply && !reply.snippet ? 'gone' : '';
}

/** Puts on the user's reaction `emoji`, or takes it back if it is on (or asked for). */
function react(c, m, emoji) {
  const key = `${c.id} ${m.cseq} ${emoji}`;
  const now = c.msgs.get(m.cseq) ?? m;
  const on = !(S.reacting.get(key) ?? (now.reactions || []).find((r) => r.emoji === emoji)?.me ?? false);
  S.reacting.set(key, on);
  S.client.react(c.id, m.cseq, emoji, on).catch((e) => {
    S.reacting.delete(key);
    toast(`Reaction not saved: ${e.message}`);
  });
}

function deleteMessage(c, m) {
  ask({
    title: 'Delete this message?',
    text: m.sender.id === S.me ? 'It is deleted for everyone in the conversation.' : `${nameOf(m.sender.id)}'s message is deleted for everyone in the group.`,
    fields: [],
    ok: 'Delete',
    danger: true,
    // The tombstone comes with the `message_deleted` event, on every page of every member.
    run: () => S.client.deleteMessage(c.id, m.cseq),
  });
}

/** Who has read `m`, from every member's read position now (`receipts`). */
async function showReaders(c, m) {
  let all;
  try {
    all = await S.client.allReceipts(c.id);
  } catch (e) {
    toast(`Could not ask who read it: ${e.message}`);
    return;
  }
  for (const r of all) c.reads.set(r.user, Math.max(r.cseq, c.reads.get(r.user) ?? 0));
  const others = all.filter((r) => r.user !== S.me);
  const read = others.filter((r) => r.cseq >= m.cseq).map((r) => r.user);
  const unread = others.filter((r) => r.cseq < m.cseq).map((r) => r.user);
  ask({
    title: 'Seen by',
    text: `“${snippetOf(m.body)}”`,
    fields: [],
    content: [
      h('p', { class: 'readers' }, h('strong', { text: 'Read by: ' }), h('span', { class: 'readers-read', text: read.length ? someNames(read, read.length, 20) : 'nobody yet' })),
      h('p', { class: 'readers' }, h('strong', { text: 'Not yet: ' }), h('span', { class: 'readers-unread', text: unread.length ? someNames(unread, unread.length, 20) : 'nobody' })),
    ],
    ok: 'Close',
    cancel: false,
    run: async () => {},
  });
  if (S.openId === c.id) renderMessages();
}

/** Shows message `cseq` of `c` (loading older history until it is there), highlighted. */
async function jumpTo(c, cseq) {
  for (let pages = 0; !c.msgs.has(cseq) && (!c.loaded || c.hasMore) && pages < 200; pages += 1) {
    if (c.loading) await new Promise((r) => setTimeout(r, 50));
    else await loadOlder(c);
  }
  if (S.openId !== c.id) return;
  if (!c.msgs.has(cseq)) {
    toast('That message is not in the history any more');
    return;
  }
  S.flash = { conversation: c.id, cseq, until: Date.now() + FLASH_MS };
  $('message-list').dataset.jumped = String(cseq); // the message last shown this way, until another
  renderMessages();
  document.querySelector(`#message-list .msg[data-cseq="${cseq}"]`)?.scrollIntoView({ block: 'center' });
  setTimeout(() => { if (S.openId === c.id) renderMessages(); }, FLASH_MS + 50);
}

// --- @ completion: the conversation's members, as one types @name --------------------------

function updateMentionList() {
  const input = $('composer-input');
  const c = S.openId ? S.convs.get(S.openId) : null;
  const caret = input.selectionStart;
  const match = c && caret === input.selectionEnd ? MENTION_TYPED.exec(input.value.slice(0, caret)) : null;
  if (!match) {
    closeMentions();
    return;
  }
  if (!listsAll(c)) loadEveryone(c);
  const query = match[2].toLowerCase();
  const fits = (u) => u.toLowerCase().startsWith(query)
    || (S.names.get(u) || '').toLowerCase().split(/\s+/).some((w) => w.startsWith(query));
  const items = knownMembers(c).filter((u) => u !== S.me && fits(u)).slice(0, 8);
  if (!items.length) {
    closeMentions();
    return;
  }
  const active = S.mention ? Math.min(S.mention.active, items.length - 1) : 0;
  S.mention = { start: caret - match[2].length - 1, end: caret, items, active };
  renderMentions();
}

function pickMention(user) {
  const input = $('composer-input');
  const { start, end } = S.mention;
  const text = `@${user} `;
  input.value = input.value.slice(0, start) + text + input.value.slice(end);
  input.setSelectionRange(start + text.length, start + text.length);
  closeMentions();
  autosize();
  input.focus();
}

function closeMentions() {
  if (!S.mention) return;
  S.mention = null;
  renderMentions();
}

function renderMentions() {
  const list = $('mention-list');
  const m = S.mention;
  list.hidden = !m;
  list.replaceChildren(...(m ? m.items.map((u, i) => h('li', {},
    h('button', {
      type: 'button',
      class: `mention-item${i === m.active ? ' active' : ''}`,
      role: 'option',
      'aria-selected': String(i === m.active),
      dataset: { user: u },
      // mousedown, not click: the composer keeps its focus and caret.
      onmousedown: (e) => { e.preventDefault(); pickMention(u); },
    }, avatar(nameOf(u), u, { size: 'sm' }), h('span', { class: 'mention-name', text: nameOf(u) }), h('span', { class: 'mention-id', text: `@${u}` })))) : []));
}

/** Every member of a group whose state lists only the first 100, for @ completion. */
async function loadEveryone(c) {
  if (c.everyone || c.everyoneLoading) return;
  c.everyoneLoading = true;
  try {
    const all = [];
    let after;
    for (;;) {
      const page = await S.client.members(c.id, after === undefined ? {} : { after });
      all.push(...page.members);
      if (!page.has_more || !page.members.length || all.length >= MEMBERS_LOADED_MAX) break;
      after = page.members.at(-1);
    }
    c.everyone = all;
  } catch (e) {
    console.warn('members:', e);
  } finally {
    c.everyoneLoading = false;
  }
  if (S.mention && S.openId === c.id) updateMentionList();
}

// --- search ----------------------------------------------------------------------------------

async function runSearch(event) {
  event.preventDefault();
  const query = $('search-input').value.trim();
  if (!query) {
    closeSearch();
    return;
  }
  S.search = { query, messages: [], hasMore: false, loading: false, error: null };
  await searchMore();
}

async function searchMore() {
  const s = S.search;
  if (!s || s.loading) return;
  s.loading = true;
  renderSearch();
  try {
    const beforeId = s.messages.at(-1)?.id;
    const page = await S.client.search(s.query, beforeId === undefined ? {} : { beforeId });
    for (const m of page.messages) learnName(m.sender);
    s.messages.push(...page.messages);
    s.hasMore = page.has_more;
  } catch (e) {
    s.error = e.message;
  } finally {
    s.loading = false;
  }
  if (S.search === s) renderSearch();
}

function closeSearch() {
  S.search = null;
  $('search-input').value = '';
  renderSearch();
}

/** A search result: opens its conversation at the message. */
async function showHit(m) {
  const c = S.convs.get(m.conversation);
  if (!c) {
    toast('You are no longer in that conversation');
    return;
  }
  await openConversation(c.id);
  await jumpTo(c, m.cseq);
}

function onComposerInput() {
  autosize();
  updateMentionList();
  if (!S.openId || S.editing) return; // an edit is not typing a message
  const now = Date.now();
  const typing = S.typingSent;
  if (!typing || typing.conversation !== S.openId || now - typing.at > TYPING_REFRESH_MS) {
    if (typing && typing.conversation !== S.openId) stopTyping();
    S.typingSent = { conversation: S.openId, at: now };
    S.client.typing(S.openId, 'start').catch(() => {});
  }
  clearTimeout(S.typingIdle);
  S.typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(S.typingIdle);
  const typing = S.typingSent;
  S.typingSent = null;
  if (typing && S.client?.state === 'open') S.client.typing(typing.conversation, 'stop').catch(() => {});
}

function autosize() {
  const input = $('composer-input');
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

function onComposerKey(e) {
  if (S.mention && !e.isComposing) {
    const n = S.mention.items.length;
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      e.preventDefault();
      S.mention.active = (S.mention.active + (e.key === 'ArrowDown' ? 1 : n - 1)) % n;
      renderMentions();
      return;
    }
    if (e.key === 'Enter' || e.key === 'Tab') {
      e.preventDefault();
      pickMention(S.mention.items[S.mention.active]);
      return;
    }
    if (e.key === 'Escape') {
      e.preventDefault();
      closeMentions();
      return;
    }
  }
  if (e.key === 'Escape' && (S.editing || S.replyTo)) {
    e.preventDefault();
    cancelComposerMode();
    return;
  }
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $('composer').requestSubmit();
  }
}

function parseUsers(text) {
  const users = text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
  const bad = users.find((u) => !USER_ID.test(u));
  if (bad) throw new Error(`“${bad}” is not a user name: 1–64 characters of A–Z a–z 0–9 _ . @ : -`);
  return [...new Set(users)];
}

function newDirect() {
  ask({
    title: 'New message',
    text: 'Start a direct conversation. The other person does not need to have signed in yet.',
    fields: [{ name: 'user', label: 'User name', placeholder: 'bob' }],
    ok: 'Start',
    run: async ({ user }) => {
      const peer = user.trim();
      if (!peer) throw new Error('Enter a user name.');
      if (!USER_ID.test(peer)) throw new Error(`“${peer}” is not a user name: 1–64 characters of A–Z a–z 0–9 _ . @ : -`);
      const existing = [...S.convs.values()].find((c) => c.kind === 'direct'
        && (peer === S.me ? c.members.length === 1 && c.members[0] === S.me : c.members.includes(peer)));
      if (existing) return openConversation(existing.id);
      stopTyping();
      S.openId = null;
      S.draftTo = peer;
      S.draftPending = null;
      watchPresence();
      renderList();
      renderPane(true);
      $('composer-input').focus();
    },
  });
}

function newGroup() {
  ask({
    title: 'New group',
    text: 'Name the group and add people by user name (separated by spaces or commas).',
    fields: [
      { name: 'name', label: 'Group name', placeholder: 'Weekend trip' },
      { name: 'members', label: 'Members', placeholder: 'bob, carol' },
    ],
    ok: 'Create group',
    run: async ({ name, members }) => {
      if (!name.trim()) throw new Error('Give the group a name.');
      const users = parseUsers(members).filter((u) => u !== S.me);
      const opId = `demo-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
      const g = await S.client.createGroup(name.trim(), users, { clientOpId: opId });
      merge(conv(g.id), g);
      await watchPresence();
      await openConversation(g.id);
    },
  });
}

function addPeople() {
  const c = S.convs.get(S.openId);
  if (!c) return;
  ask({
    title: `Add people to ${title(c)}`,
    text: 'User names, separated by spaces or commas.',
    fields: [{ name: 'users', label: 'People', placeholder: 'dave, erin' }],
    ok: 'Add',
    run: async ({ users }) => {
      const list = parseUsers(users);
      if (!list.length) throw new Error('Enter at least one user name.');
      // The `conversation` event shows the new state, in order with every other change;
      // the reply may come after a later change's event, so it is not applied.
      await S.client.addToGroup(c.id, list);
    },
  });
}

function leave() {
  const c = S.convs.get(S.openId);
  if (!c) return;
  ask({
    title: `Leave ${title(c)}?`,
    text: 'You will no longer receive its messages. Someone in the group can add you again.',
    fields: [],
    ok: 'Leave group',
    danger: true,
    run: async () => {
      await S.client.leaveGroup(c.id);
      onRemoved(c.id);
    },
  });
}

/**
 * A small form in the dialog; `run` gets the fields' values; its error is shown. `content`:
 * nodes shown after the fields; `cancel: false` for a dialog that only tells.
 */
function ask({ title: heading, text, fields, ok, run, danger = false, content = [], cancel = true }) {
  const dialog = $('dialog');
  $('dialog-title').textContent = heading;
  $('dialog-text').textContent = text;
  $('dialog-error').textContent = '';
  const box = $('dialog-fields');
  box.replaceChildren(...fields.map((f, i) => h('label', { class: 'field' },
    h('span', {}, f.label),
    h('input', { name: f.name, placeholder: f.placeholder, autocomplete: 'off', spellcheck: 'false', autofocus: i === 0 }))), ...content);
  const okButton = $('dialog-ok');
  okButton.textContent = ok;
  okButton.className = danger ? 'primary danger' : 'primary';
  const form = $('dialog-form');
  form.onsubmit = async (e) => {
    e.preventDefault();
    const values = Object.fromEntries(fields.map((f) => [f.name, form.elements[f.name].value]));
    okButton.disabled = true;
    try {
      await run(values);
      dialog.close();
    } catch (err) {
      $('dialog-error').textContent = err.message;
    } finally {
      okButton.disabled = false;
    }
  };
  $('dialog-cancel').onclick = () => dialog.close();
  $('dialog-cancel').hidden = !cancel;
  dialog.showModal();
  box.querySelector('input')?.focus();
}

// ---------------------------------------------------------------------------------------
// Rendering

function renderMe() {
  const label = S.myName || S.me;
  $('me').replaceChildren(
    avatar(label, S.me, { size: 'md' }),
    h('div', { class: 'me-text' },
      h('strong', { text: label, title: `@${S.me}` }),
      h('span', { id: 'me-status', class: 'muted me-status' })),
  );
  renderMyState();
}

const STATE_TEXT = { idle: 'offline', connecting: 'connecting…', open: 'online', reconnecting: 'reconnecting…', closed: 'offline' };

function renderMyState() {
  const el = $('me-status');
  if (!el) return;
  const state = S.client?.state || 'connecting';
  el.className = `muted me-status ${state}`;
  el.textContent = `${S.myName ? `@${S.me} · ` : ''}${STATE_TEXT[state] || state}`;
}

function sortedConversations() {
  const at = (c) => c.last?.created_at || '';
  return [...S.convs.values()].sort((a, b) => (at(b) > at(a) ? 1 : at(b) < at(a) ? -1 : a.id < b.id ? -1 : 1));
}

function preview(c) {
  const typers = [...c.typing.keys()];
  if (typers.length) {
    const who = c.kind === 'group' ? `${nameOf(typers[0])} is typing…` : 'typing…';
    return h('span', { class: 'preview typing-preview', text: who });
  }
  const m = c.last;
  if (!m) return h('span', { class: 'preview muted', text: c.kind === 'group' ? `${c.member_count} members` : 'No messages yet' });
  const who = m.sender.id === S.me ? 'You: ' : c.kind === 'group' ? `${nameOf(m.sender.id)}: ` : '';
  if (m.deleted) return h('span', { class: 'preview' }, h('span', { class: 'preview-who', text: who }), h('span', { class: 'gone', text: 'message deleted' }));
  return h('span', { class: 'preview' }, h('span', { class: 'preview-who', text: who }), m.body.replace(/\s+/g, ' '));
}

function renderList() {
  const list = $('conversations');
  const items = sortedConversations().map((c) => {
    const peer = peerOf(c);
    const label = title(c);
    return h('li', {},
      h('button', {
        type: 'button',
        class: `conv-item${c.id === S.openId ? ' active' : ''}${c.unread ? ' has-unread' : ''}`,
        dataset: { conversation: c.id, title: label, kind: c.kind || '', peer: peer || '' },
        onclick: () => openConversation(c.id),
      },
      avatar(avatarLabel(c, label), c.kind === 'group' ? c.id : peer || S.me, { user: peer, group: c.kind === 'group' }),
      h('span', { class: 'conv-text' },
        h('span', { class: 'conv-line' },
          h('span', { class: 'conv-title', text: label }),
          h('span', { class: 'conv-time', text: listTime(c.last?.created_at) })),
        h('span', { class: 'conv-line' },
          preview(c),
          c.mentionsUnread ? h('span', { class: 'badge mention-badge', 'aria-label': `${c.mentionsUnread} unread mentions of you`, text: '@' }) : null,
          c.unread ? h('span', { class: 'badge', 'aria-label': `${c.unread} unread`, text: c.unread > 99 ? '99+' : String(c.unread) }) : null))));
  });
  list.replaceChildren(...items);
  $('no-conversations').hidden = items.length > 0 || S.draftTo != null || S.search != null;
}

function renderPresence() {
  renderList();
  renderHeader();
}

function renderPane(scrollToEnd = false) {
  const c = S.openId ? S.convs.get(S.openId) : null;
  const open = !!c || S.draftTo != null;
  $('placeholder').hidden = open;
  $('conversation').hidden = !open;
  if (!open) return;
  renderHeader();
  if (c) renderMessages({ toBottom: scrollToEnd });
  else renderDraft();
  renderTyping();
  renderComposerContext();
}

function renderHeader() {
  const c = S.openId ? S.convs.get(S.openId) : null;
  if (!c && S.draftTo == null) return;
  const peer = c ? peerOf(c) : S.draftTo;
  const group = c?.kind === 'group';
  const label = c ? title(c) : nameOf(S.draftTo);
  $('conv-avatar').replaceChildren(avatar(c ? avatarLabel(c, label) : label, group ? c.id : peer || S.me, { user: peer, size: 'lg', group }));
  $('conv-title').textContent = label;
  const sub = $('conv-subtitle');
  sub.className = '';
  if (group) {
    // The first members the state lists (by id), and how many others the count says.
    sub.textContent = `${c.member_count} members · ${someNames(c.members, c.member_count, 6)}`;
  } else if (peer && peer !== S.me) {
    const typing = c && c.typing.size;
    const connected = S.client?.state === 'open';
    sub.textContent = typing ? 'typing…' : (connected && lastSeen(S.presence.get(peer))) || `@${peer}`;
    if (typing) sub.className = 'accent';
    else if (connected && S.presence.get(peer)?.status === 'online') sub.className = 'online';
  } else {
    sub.textContent = 'Notes to yourself';
  }
  $('conv-add').hidden = !group;
  $('conv-leave').hidden = !group;
}

function renderHistoryStatus() {
  const c = S.openId ? S.convs.get(S.openId) : null;
  const el = $('history-status');
  if (!c) {
    el.textContent = '';
    return;
  }
  if (c.loading) el.textContent = 'Loading earlier messages…';
  else if (c.loaded && !c.hasMore && c.msgs.size) el.textContent = c.kind === 'group' ? `${title(c)} was created` : 'This is the beginning of your conversation';
  else el.textContent = '';
}

function renderDraft() {
  const list = $('message-list');
  const p = S.draftPending;
  list.replaceChildren(p ? bubble({ body: p.body, created_at: p.created_at, sender: { id: S.me } }, { pending: true, first: true, last: true }) : h('li', { class: 'empty-conv', text: `Say hi to ${nameOf(S.draftTo)}.` }));
  $('history-status').textContent = '';
}

function receipt(c, m) {
  // Who of the others has read this message (their marker at or past it), by id. With the
  // whole member list at hand only members count; a large group's list is capped, but its
  // positions come from `receipts`, which lists members only.
  let readers = [...c.reads].filter(([u, at]) => u !== S.me && at >= m.cseq).map(([u]) => u);
  if (listsAll(c)) {
    const members = new Set(c.members);
    readers = readers.filter((u) => members.has(u));
  }
  const need = c.member_count - 1;
  return { readers, all: need > 0 && readers.length >= need };
}

function bubble(m, { pending = false, first = true, last = true, c = null, seenBy = null, showSender = false } = {}) {
  const mine = m.sender.id === S.me;
  const flash = !pending && S.flash && S.flash.conversation === c?.id && S.flash.cseq === m.cseq && Date.now() < S.flash.until;
  const li = h('li', {
    class: `msg ${mine ? 'mine' : 'theirs'}${first ? ' first' : ''}${last ? ' last' : ''}${pending ? ' pending' : ''}${m.deleted ? ' deleted' : ''}${(m.mentions || []).includes(S.me) && !mine ? ' mentions-me' : ''}${flash ? ' flash' : ''}`,
    dataset: pending ? { pending: m.client_msg_id || '' } : { cseq: String(m.cseq), sender: m.sender.id },
  });
  if (showSender && !mine) {
    li.append(h('div', { class: 'sender' }, h('span', { class: 'sender-name', text: nameOf(m.sender.id) })));
    li.querySelector('.sender-name').style.color = hue(m.sender.id);
  }
  const row = h('div', { class: 'row' });
  if (c?.kind === 'group' && !mine) {
    row.append(last ? avatar(nameOf(m.sender.id), m.sender.id, { size: 'sm' }) : h('span', { class: 'avatar-space' }));
  }
  const meta = h('span', { class: 'meta' }, h('time', { datetime: m.created_at, text: timeFmt.format(new Date(m.created_at)) }));
  if (m.edited_at && !m.deleted) {
    meta.prepend(h('span', { class: 'edited', title: `Edited ${timeFmt.format(new Date(m.edited_at))}`, text: 'edited' }));
  }
  if (mine && !m.deleted) {
    if (pending) {
      meta.append(h('span', { class: 'tick pending', title: 'Sending…', text: '◷' }));
    } else {
      const r = c ? receipt(c, m) : { all: false };
      meta.append(h('span', { class: `tick${r.all ? ' read' : ''}`, title: r.all ? 'Read' : 'Sent', text: r.all ? '✓✓' : '✓' }));
    }
  }
  // Focusable, so that a keyboard (or a tap) shows the message's actions too.
  const box = h('div', { class: 'bubble', tabindex: pending || m.deleted || !c ? null : '0' });
  if (m.reply_to && !m.deleted) box.append(quote(c, m.reply_to));
  box.append(m.deleted ? h('span', { class: 'body tombstone', text: 'message deleted' }) : bodyOf(m), meta);
  row.append(box);
  if (!pending && !m.deleted && c) row.append(actions(c, m));
  li.append(row);
  if (!m.deleted && m.reactions?.length) li.append(reactionChips(c, m, pending));
  if (seenBy) li.append(h('div', { class: 'seen', text: seenBy }));
  return li;
}

/** The body as text, with each `@id` of a member it mentions marked (text nodes only). */
function bodyOf(m) {
  const el = h('span', { class: 'body' });
  const ids = new Set(m.mentions || []);
  let at = 0;
  if (ids.size) {
    for (const match of m.body.matchAll(MENTION_TOKEN)) {
      const id = mentionIn(match[1], ids);
      if (!id) continue;
      el.append(m.body.slice(at, match.index));
      el.append(h('span', { class: `mention${id === S.me ? ' you' : ''}`, dataset: { user: id }, title: nameOf(id) }, `@${id}`));
      at = match.index + 1 + id.length;
    }
  }
  el.append(m.body.slice(at));
  return el;
}

/** The quoted start of the message a reply answers; a click shows that message. */
function quote(c, r) {
  return h('button', {
    type: 'button',
    class: 'quote',
    dataset: { replyTo: String(r.cseq) },
    title: 'Show the message this answers',
    onclick: () => { if (c) jumpTo(c, r.cseq); },
  }, h('span', { class: 'quote-who', text: nameOf(r.sender) }), h('span', { class: `quote-text${r.snippet ? '' : ' gone'}`, text: r.snippet || 'message deleted' }));
}

/** What can be done to a message: quick reactions, reply, and for one's own edit, delete, seen by. */
function actions(c, m) {
  const mine = m.sender.id === S.me;
  const act = (action, icon, title, run) => h('button', { type: 'button', class: 'act', dataset: { action }, title, 'aria-label': title, onclick: run }, icon);
  // Beside the bubble, flush with it: the pointer goes from one to the other without
  // leaving the message (the gap is the toolbar's own padding).
  const box = h('div', { class: 'msg-actions-box' });
  const bar = h('div', { class: 'msg-actions', role: 'toolbar', 'aria-label': 'Message actions' }, box);
  for (const emoji of QUICK_EMOJI) {
    const on = (m.reactions || []).some((r) => r.emoji === emoji && r.me);
    box.append(h('button', {
      type: 'button', class: `act emoji${on ? ' on' : ''}`, dataset: { emoji }, title: on ? `Take back ${emoji}` : `React ${emoji}`,
      onclick: () => react(c, m, emoji),
    }, emoji));
  }
  box.append(act('reply', '↩', 'Reply', () => startReply(c, m)));
  if (mine) box.append(act('edit', '✎', 'Edit', () => startEdit(c, m)));
  if (mayDelete(c, m)) box.append(act('delete', '🗑', 'Delete for everyone', () => deleteMessage(c, m)));
  if (mine) box.append(act('readers', '👁', 'Seen by', () => showReaders(c, m)));
  return bar;
}

/** The reactions under a message: each emoji with its count; one's own highlighted, a click takes it back. */
function reactionChips(c, m, pending) {
  return h('div', { class: 'reactions' }, ...m.reactions.map((r) => h('button', {
    type: 'button',
    class: `reaction${r.me ? ' own' : ''}`,
    dataset: { emoji: r.emoji },
    'aria-pressed': String(r.me),
    title: r.me ? 'Take back your reaction' : `React ${r.emoji} too`,
    disabled: pending || !c,
    onclick: () => react(c, m, r.emoji),
  }, h('span', { class: 'reaction-emoji', text: r.emoji }), h('span', { class: 'count', text: String(r.count) }))));
}

function renderMessages({ toBottom = false, keepFromBottom = false } = {}) {
  const c = S.openId ? S.convs.get(S.openId) : null;
  if (!c) return;
  const box = $('messages');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  const fromBottom = box.scrollHeight - box.scrollTop;
  const msgs = [...c.msgs.values()].sort((a, b) => a.cseq - b.cseq);
  const pend = [...c.pending.values()].map((p) => ({ ...p, sender: { id: S.me }, pending: true }));
  const all = [...msgs, ...pend];
  // The "seen" line goes under my latest message that someone has read (the ticks say
  // more: ✓✓ once every other member has read it).
  let seenAt = null;
  let seenText = null;
  for (let i = msgs.length - 1; i >= 0; i -= 1) {
    const m = msgs[i];
    if (m.sender.id !== S.me || m.deleted) continue;
    const r = receipt(c, m);
    if (r.readers.length) {
      seenAt = m.cseq;
      seenText = c.kind === 'direct' ? 'Seen' : `Seen by ${someNames(r.readers.sort())}`;
      break;
    }
  }
  const items = [];
  let prevDay = null;
  all.forEach((m, i) => {
    const d = new Date(m.created_at);
    if (dayKey(d) !== prevDay) {
      prevDay = dayKey(d);
      items.push(h('li', { class: 'day' }, h('span', { text: dayLabel(d) })));
    }
    const prev = all[i - 1];
    const next = all[i + 1];
    const near = (a, b) => a && b && a.sender.id === b.sender.id && Math.abs(new Date(a.created_at) - new Date(b.created_at)) < 5 * 60 * 1000
      && dayKey(new Date(a.created_at)) === dayKey(new Date(b.created_at));
    const first = !near(prev, m);
    const last = !near(m, next);
    items.push(bubble(m, {
      pending: !!m.pending, first, last, c,
      showSender: c.kind === 'group' && first,
      seenBy: !m.pending && m.cseq === seenAt ? seenText : null,
    }));
    if (!m.pending) for (const n of c.notes) if (n.after === m.cseq) items.push(note(n.text));
  });
  // A change before any message goes first.
  items.unshift(...c.notes.filter((n) => n.after === 0).map((n) => note(n.text)));
  if (!items.length && !c.loading) items.push(h('li', { class: 'empty-conv', text: c.loaded ? 'No messages yet. Say hi.' : '' }));
  $('message-list').replaceChildren(...items);
  renderHistoryStatus();
  if (toBottom || (atBottom && !keepFromBottom)) box.scrollTop = box.scrollHeight;
  else if (keepFromBottom) box.scrollTop = box.scrollHeight - fromBottom;
  // A first page that does not fill the pane: fetch more now, not on a scroll that cannot happen.
  if (c.loaded && c.hasMore && !c.loading && box.scrollHeight <= box.clientHeight + 10) loadOlder(c);
}

function note(text) {
  return h('li', { class: 'note' }, h('span', { text }));
}

function renderSearch() {
  const s = S.search;
  $('search-results').hidden = !s;
  $('conversations').hidden = !!s;
  if (!s) {
    renderList();
    return;
  }
  $('no-conversations').hidden = true;
  const n = s.messages.length;
  $('search-summary').textContent = s.error ? `Search failed: ${s.error}`
    : s.loading && !n ? 'Searching…'
      : `${n}${s.hasMore ? '+' : ''} ${n === 1 && !s.hasMore ? 'message' : 'messages'} for “${s.query}”`;
  $('search-list').replaceChildren(...s.messages.map((m) => {
    const c = S.convs.get(m.conversation);
    return h('li', {}, h('button', {
      type: 'button', class: 'search-hit', dataset: { conversation: m.conversation, cseq: String(m.cseq) },
      onclick: () => showHit(m),
    },
    h('span', { class: 'conv-line' },
      h('span', { class: 'hit-where', text: c ? title(c) : 'A conversation you left' }),
      h('span', { class: 'conv-time', text: listTime(m.created_at) })),
    h('span', { class: 'hit-body' }, h('span', { class: 'preview-who', text: `${nameOf(m.sender.id)}: ` }), ...marked(m.body, s.query))));
  }));
  $('search-more').hidden = !s.hasMore || s.loading;
}

/** `text` with the query's words marked, as text nodes and <mark> elements. */
function marked(text, query) {
  const words = query.replace(/"/g, ' ').split(/\s+/)
    .filter((w) => w && !w.startsWith('-') && w.toLowerCase() !== 'or')
    .map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  if (!words.length) return [text];
  return text.split(new RegExp(`(${words.join('|')})`, 'gi')).map((part, i) => (i % 2 ? h('mark', { text: part }) : part));
}

function renderTyping() {
  const c = S.openId ? S.convs.get(S.openId) : null;
  const el = $('typing');
  const typers = c ? [...c.typing.keys()].map(nameOf) : [];
  if (!typers.length) {
    el.replaceChildren();
    el.classList.remove('on');
  } else {
    const who = typers.length === 1 ? `${typers[0]} is typing` : typers.length === 2 ? `${typers[0]} and ${typers[1]} are typing` : 'Several people are typing';
    el.replaceChildren(h('span', { class: 'dots', 'aria-hidden': 'true' }, h('i'), h('i'), h('i')), h('span', { text: who }));
    el.classList.add('on');
  }
  renderHeader();
}

// ---------------------------------------------------------------------------------------
// Start

function init() {
  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', signOut);
  $('new-direct').addEventListener('click', newDirect);
  $('new-group').addEventListener('click', newGroup);
  $('conv-add').addEventListener('click', addPeople);
  $('conv-leave').addEventListener('click', leave);
  $('composer').addEventListener('submit', submitMessage);
  $('composer-input').addEventListener('input', onComposerInput);
  $('composer-input').addEventListener('keydown', onComposerKey);
  $('composer-input').addEventListener('blur', () => { stopTyping(); closeMentions(); });
  $('composer-input').addEventListener('click', updateMentionList);
  $('context-cancel').addEventListener('click', () => { cancelComposerMode(); $('composer-input').focus(); });
  $('search-form').addEventListener('submit', runSearch);
  $('search-input').addEventListener('keydown', (e) => { if (e.key === 'Escape') closeSearch(); });
  $('search-close').addEventListener('click', closeSearch);
  $('search-more').addEventListener('click', searchMore);
  $('messages').addEventListener('scroll', () => {
    const c = S.openId ? S.convs.get(S.openId) : null;
    if (c && $('messages').scrollTop < 120) loadOlder(c);
  });
  document.addEventListener('visibilitychange', () => {
    if (visible() && S.openId) {
      const c = S.convs.get(S.openId);
      markRead(c);
      if (!readsAsEvents(c)) receiptsSoon(c);
      renderList();
    }
  });
  // Minutes pass: "last seen" and day labels stay right.
  setInterval(() => { if (S.me) renderList(); }, 60_000);

  let saved = null;
  try { saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null'); } catch { saved = null; }
  if (saved?.user) {
    start(saved.user, saved.name || null, null);
  } else {
    $('signin').hidden = false;
    $('signin-user').focus();
  }
}

init();
