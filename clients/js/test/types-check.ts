// Compiled (never run) with `tsc --noEmit --strict`: the declarations type real usage, and
// wrong usage fails (the @ts-expect-error lines must stay errors).

import PgChatDefault, {
  MemoryStore, PgChat, PgChatError, WebStorageStore, backoffDelay, randomId,
  type Conversation, type ConversationSummary, type ConversationsPage, type DurableEvent, type Message,
  type PresenceEntry, type Reaction, type Receipt, type ReceiptsPage, type ReplyTo, type SearchPage,
  type SeqStore, type StateChange,
} from '../pgchat.js';

const asyncStore: SeqStore = {
  async get(key: string) { return key.length ? '5' : null; },
  async set(_key: string, _value: string) {},
};

const chat = new PgChat({
  url: 'wss://chat.example.com/ws',
  getToken: async () => 'jwt',
  store: asyncStore,
  startAt: 'head',
  backoff: { initialMs: 250, maxMs: 10_000 },
  requestTimeoutMs: 5000,
});
const other: PgChat = new PgChatDefault({ url: 'ws://localhost:3000/ws', token: 'jwt', store: new MemoryStore(), startAt: 0 });
new PgChat({ url: 'ws://localhost:3000/ws', token: 'jwt', tokenIn: 'query', maxWaiting: 100, WebSocket: globalThis.WebSocket });
// @ts-expect-error: the token goes in a header or the query, nowhere else
new PgChat({ url: 'ws://localhost:3000/ws', token: 'jwt', tokenIn: 'cookie' });
new WebStorageStore({ getItem: () => null, setItem: () => {} });

async function main(): Promise<void> {
  await chat.connect();
  const state: 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed' = chat.state;
  const seq: number = chat.lastSeq;
  const user: string | null = chat.user;
  void state; void seq; void user;

  const m: Message = await chat.send({ to: 'bob' }, 'hi', { clientMsgId: 'k1' });
  const cseq: number = m.cseq;
  const senderName: string | null = m.sender.name;
  await chat.send({ conversation: m.conversation }, 'again');
  const list: ConversationSummary[] = await chat.conversations();
  const unread: number = list[0].unread;
  const last: Message | null = list[0].last_message;
  const older: Message[] = await chat.history(m.conversation, { beforeCseq: cseq, limit: 50 });
  const page = await chat.historyPage(m.conversation);
  const more: boolean = page.has_more;
  const g: Conversation = await chat.createGroup('Team', ['bob', 'carol'], { clientOpId: 'op1' });
  const admins: string[] | undefined = g.admins;
  const grown: Conversation = await chat.addToGroup(g.id, ['dave'], { admin: true });
  const newcomers: string[] | undefined = grown.added;
  const memberCount: number | undefined = grown.member_count;
  const shrunk = await chat.removeFromGroup(g.id, ['dave']);
  const gone: string[] | undefined = shrunk.removed;
  // A summary is a conversation too (with member_count always there).
  const asState: Conversation = list[0];
  const total: number = list[0].member_count;
  void newcomers; void memberCount; void gone; void asState; void total;
  // @ts-expect-error: a state stored before schema version 4 has no member_count
  const surely: number = grown.member_count;
  // @ts-expect-error: summaries list members, they announce no change
  void list[0].added;

  const firstPage: ConversationsPage = await chat.conversationsPage({ limit: 20 });
  const cursor: string | null = firstPage.next;
  const secondPage = await chat.conversationsPage({ limit: 20, before: cursor });
  const moreConversations: boolean = secondPage.has_more;
  const firstOfPage: ConversationSummary | undefined = secondPage.conversations[0];
  await chat.conversationsPage();
  // @ts-expect-error: a cursor is the opaque string a page gave, not a number
  await chat.conversationsPage({ before: 5 });
  const receiptsPage: ReceiptsPage = await chat.receipts(g.id, { after: 'bob', limit: 500 });
  const position: Receipt | undefined = receiptsPage.receipts[0];
  const readUpTo: number | undefined = position?.cseq;
  const moreReceipts: boolean = receiptsPage.has_more;
  const everyone: Receipt[] = await chat.allReceipts(g.id);
  const reader: string | undefined = everyone[0]?.user;
  // @ts-expect-error: allReceipts takes no paging options: it follows every page
  await chat.allReceipts(g.id, { limit: 10 });
  void surely; void moreConversations; void firstOfPage; void readUpTo; void moreReceipts; void reader;
  // Replies, mentions, edits, deletions, reactions and search (shared PROTOCOL.md v1.2).
  const answer: Message = await chat.send({ conversation: m.conversation }, 'me too @bob', { replyTo: cseq, mentions: ['bob'] });
  const quoted: ReplyTo | null = answer.reply_to;
  const snippet: string | undefined = quoted?.snippet;
  const mentioned: string[] = answer.mentions;
  const edited: Message = await chat.edit(m.conversation, answer.cseq, 'me too, @bob');
  const editedAt: string | null = edited.edited_at;
  await chat.react(m.conversation, cseq, '👍');
  await chat.react(m.conversation, cseq, '👍', false);
  await chat.deleteMessage(m.conversation, answer.cseq);
  const tombstone: boolean = edited.deleted;
  const reactions: Reaction[] = edited.reactions;
  const mine: boolean | undefined = reactions[0]?.me;
  const found: SearchPage = await chat.search('cabin "this weekend"', { conversation: m.conversation, limit: 10 });
  const next = await chat.search('cabin', { beforeId: found.messages.at(-1)?.id });
  const moreFound: boolean = next.has_more;
  const mentionsUnread: number = list[0].mentions_unread;
  void snippet; void mentioned; void editedAt; void tombstone; void mine; void moreFound; void mentionsUnread;
  // @ts-expect-error: replyTo is a cseq, not a message
  await chat.send({ conversation: m.conversation }, 'x', { replyTo: answer });
  // @ts-expect-error: a reaction is on or off
  await chat.react(m.conversation, cseq, '👍', 'on');
  // @ts-expect-error: search pages go by message id
  await chat.search('cabin', { beforeCseq: 3 });
  const members = await chat.members(g.id, { after: 'bob', limit: 10 });
  const count: number = members.member_count;
  await chat.leaveGroup(g.id);
  await chat.markRead(m.conversation, cseq);
  await chat.typing(m.conversation, 'start');
  const presence: PresenceEntry[] = await chat.subscribePresence(['bob']);
  const raw = await chat.request('ping');
  void senderName; void unread; void last; void older; void more; void admins; void count; void presence; void raw;

  const offMessage = chat.on('message', (message, event) => {
    const body: string = message.body;
    const s: number = event.seq;
    void body; void s;
  });
  offMessage();
  chat.on('conversation', (c, e) => {
    const kind: 'direct' | 'group' = c.kind;
    const count: number = c.member_count ?? c.members.length;
    const capped: boolean = count > c.members.length;
    void kind; void e.seq; void capped; void (c.added ?? []).length; void (c.removed ?? []).length;
  });
  chat.on('read', (e) => { const who: string = e.user; void who; });
  chat.on('message_edited', (message, e) => { const body: string = message.body; void body; void e.seq; });
  chat.on('message_deleted', (e) => { const at: number = e.cseq; const id: number = e.id; void at; void id; void e.conversation; });
  chat.on('reaction', (e) => { const on: boolean = e.on; const emoji: string = e.emoji; void on; void emoji; void e.user; });
  chat.on('event', (e) => { if (e.type === 'reaction') void e.seq; });
  chat.on('removed', (e) => { void e.conversation; });
  chat.on('typing', (e) => { const st: 'start' | 'stop' = e.state; void st; });
  chat.on('presence', (e) => { void e.status; void e.last_seen; });
  chat.on('event', (e: DurableEvent) => { void e.seq; });
  chat.on('state', (s: StateChange) => { if (s.state === 'reconnecting') void (s.delayMs ?? 0); });
  chat.on('hello', (h) => { const from: number | undefined = h.after; void h.head; void from; });
  chat.on('token_expiring', ({ expiresInMs }) => { void expiresInMs; });
  chat.on('resync', ({ head }) => { void head; });
  const onError = (e: PgChatError) => { if (e.code === 'bad_frame') void e.frame; };
  chat.on('error', onError);
  chat.off('error', onError);

  try {
    await chat.send({ to: 'bob' }, 'x');
  } catch (e) {
    if (e instanceof PgChatError && e.code === 'rate_limited') void e.retryAfterMs;
    if (e instanceof PgChatError && e.code === 'queue_full') void e.message;
  }

  const d: number = backoffDelay(3, { initialMs: 100, maxMs: 1000 }, Math.random);
  const id: string = randomId();
  void d; void id;
  other.close();

  // @ts-expect-error: a target is a conversation or a user, not both
  await chat.send({ to: 'bob', conversation: 'd1' }, 'x');
  // @ts-expect-error: unknown event names are refused
  chat.on('mesage', () => {});
  // @ts-expect-error: a message listener gets a Message, not a string
  chat.on('message', (body: string) => body);
  // @ts-expect-error: typing states are start and stop
  await chat.typing('d1', 'paused');
  // @ts-expect-error: url is required
  new PgChat({ token: 'jwt' });
  // @ts-expect-error: state is read-only
  chat.state = 'open';
}

void main;
