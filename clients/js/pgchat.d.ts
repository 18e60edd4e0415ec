// TypeScript declarations for pgchat.js, the JavaScript client of pgchat.
// Field names follow the wire (docs/PROTOCOL.md): snake_case, as the server sends them.

// ---- Wire objects -----------------------------------------------------------------------

/** A user as a message's sender shows them. */
export interface Sender {
  id: string;
  /** The display name from the sender's token, or null. */
  name: string | null;
}

/** The message a reply answers. */
export interface ReplyTo {
  cseq: number;
  /** The answered message's sender (a user id). */
  sender: string;
  /** Its first 100 characters as they are now (after its edits); `""` once it is deleted. */
  snippet: string;
}

/** One emoji's reactions on a message. */
export interface Reaction {
  emoji: string;
  count: number;
  /** Whether the user who reads the message is among those who reacted so. */
  me: boolean;
}

/**
 * A stored message. `cseq` numbers messages within their conversation, 1, 2, 3, …
 * A deleted message is a tombstone: `deleted` true, `body` "", no mentions, reply or
 * reactions, `edited_at` null; its id, cseq, sender and created_at stay.
 */
export interface Message {
  id: number;
  conversation: string;
  cseq: number;
  sender: Sender;
  body: string;
  client_msg_id: string;
  /** RFC 3339, UTC, stamped by the database when stored. */
  created_at: string;
  /** When the body was last edited (RFC 3339, UTC), or null. */
  edited_at: string | null;
  deleted: boolean;
  /** The message this one answers, or null. */
  reply_to: ReplyTo | null;
  /** The user ids it mentions. */
  mentions: string[];
  /** In the order the emoji were first reacted with. */
  reactions: Reaction[];
}

export type ConversationKind = 'direct' | 'group';

/** What every view of a conversation holds. */
export interface ConversationBase {
  id: string;
  kind: ConversationKind;
  /** A group's name; null for direct conversations. */
  name: string | null;
  /**
   * The first 100 member ids by id (`conversation_members_listed`): the whole list only
   * when `member_count` says there are no more. Page through all of them with `members()`.
   */
  members: string[];
  /** Groups only: the members who may remove others (the first 100 by id). */
  admins?: string[];
}

/** A conversation as `conversation` events and group replies show it: the state a change left. */
export interface Conversation extends ConversationBase {
  /** How many members it has (every conversation; states stored before schema version 4 lack it). */
  member_count?: number;
  /** After `group_add`: who it added (at most 100 of them). */
  added?: string[];
  /** After `group_remove` or `group_leave`: who it removed (at most 100 of them). */
  removed?: string[];
}

/** An entry of `conversations()` and `conversationsPage()`. */
export interface ConversationSummary extends ConversationBase {
  /** All members (`members` lists at most the first 100; page with `members()`). */
  member_count: number;
  last_message: Message | null;
  /** Messages after the user's read marker. */
  unread: number;
  /** Of those, the messages that mention the user. */
  mentions_unread: number;
}

/** One page of `conversations`: most recently active first. */
export interface ConversationsPage {
  /** At most `limit` (1..100, default 100). */
  conversations: ConversationSummary[];
  has_more: boolean;
  /** The cursor of the next page (pass it as `before`), null on the last. Opaque. */
  next: string | null;
}

/** A member's read position: the last `cseq` they have read (0 for nothing). */
export interface Receipt {
  user: string;
  cseq: number;
}

/** One page of `receipts`: members by user id, after `after`. */
export interface ReceiptsPage {
  /** At most `limit` (1..1000, default 100). */
  receipts: Receipt[];
  /** More members follow: ask again with `after` = the last receipt's `user`. */
  has_more: boolean;
}

export interface HistoryPage {
  /** Oldest first. */
  messages: Message[];
  has_more: boolean;
  total: number;
}

/** One page of `search`: newest first. */
export interface SearchPage {
  /** At most `limit` (1..50, default 20); never deleted ones. */
  messages: Message[];
  /** More match: ask again with `beforeId` = the last message's `id`. */
  has_more: boolean;
}

export interface MembersPage {
  members: string[];
  member_count: number;
  has_more: boolean;
}

export type PresenceStatus = 'online' | 'offline' | 'unknown';

export interface PresenceEntry {
  user: string;
  status: PresenceStatus;
  /** When the user last went offline (null if never); absent for `unknown`. */
  last_seen?: string | null;
}

// ---- Frames -----------------------------------------------------------------------------

export interface HelloFrame {
  type: 'hello';
  user: string;
  session: string;
  worker: string;
  /** The user's latest event seq when the socket opened. */
  head: number;
  server_time: string;
  /**
   * The seq the session starts from, when it was asked for with `?after=` (the same number)
   * and honoured: every event after it follows, replayed then live, in order, without a
   * `resume`. Absent from servers that predate it (shared PROTOCOL.md v1.2).
   */
  after?: number;
}

export interface MessageEvent {
  type: 'message';
  seq: number;
  message: Message;
}

export interface ConversationEvent {
  type: 'conversation';
  seq: number;
  conversation: Conversation;
}

export interface RemovedEvent {
  type: 'removed';
  seq: number;
  conversation: string;
}

export interface ReadEvent {
  type: 'read';
  seq: number;
  conversation: string;
  user: string;
  cseq: number;
}

/** A message's body changed: the whole message as it is now (`reactions[].me` is the reader's). */
export interface MessageEditedEvent {
  type: 'message_edited';
  seq: number;
  message: Message;
}

/**
 * A message was deleted: show it as a tombstone. Comes more than once for one message
 * when a `reaction` to it is replayed after its deletion (the emoji was erased with it).
 */
export interface MessageDeletedEvent {
  type: 'message_deleted';
  seq: number;
  conversation: string;
  cseq: number;
  /** The message's id. */
  id: number;
}

/** `user` put the reaction `emoji` on the message (`on` true) or took it off. */
export interface ReactionEvent {
  type: 'reaction';
  seq: number;
  conversation: string;
  cseq: number;
  user: string;
  emoji: string;
  on: boolean;
}

/** A durable event of a type this client does not know yet (from a newer server). */
export interface OtherDurableEvent {
  type: string;
  seq: number;
  [field: string]: unknown;
}

/** Every event with a `seq`: the user's ordered, gap-free, replayable stream. */
export type DurableEvent =
  | MessageEvent | ConversationEvent | RemovedEvent | ReadEvent
  | MessageEditedEvent | MessageDeletedEvent | ReactionEvent | OtherDurableEvent;

export interface TypingEvent {
  type: 'typing';
  conversation: string;
  user: string;
  state: TypingState;
}

export interface PresenceEvent {
  type: 'presence';
  user: string;
  status: PresenceStatus;
  last_seen?: string | null;
}

export type TypingState = 'start' | 'stop';

// ---- The client -------------------------------------------------------------------------

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

/** Where the last seen seq is kept between instances (page reloads, process restarts). */
export interface SeqStore {
  get(key: string): string | null | undefined | Promise<string | null | undefined>;
  set(key: string, value: string): void | Promise<void>;
}

/** The default store: lives as long as the page or process. */
export class MemoryStore implements SeqStore {
  get(key: string): string | null;
  set(key: string, value: string): void;
}

/** A store over Web Storage (`localStorage` by default): survives page reloads. */
export class WebStorageStore implements SeqStore {
  constructor(storage?: Pick<Storage, 'getItem' | 'setItem'>);
  get(key: string): string | null;
  set(key: string, value: string): void;
}

/** Protocol error codes (docs/PROTOCOL.md). */
export type ProtocolErrorCode =
  | 'bad_request' | 'unknown_type' | 'not_found' | 'forbidden' | 'too_large' | 'rate_limited'
  | 'unavailable' | 'resync_required' | 'internal' | 'unauthorized';

/** This client's own codes. */
export type ClientErrorCode =
  /** close() was called (or the client closed for good). */
  | 'closed'
  /** A frame from the server that is not what the protocol says; it was skipped. */
  | 'bad_frame'
  /** No reply within requestTimeoutMs. */
  | 'timeout'
  /**
   * The socket dropped before a non-idempotent request was answered (outcome unknown), or
   * a `typing` found no connection or lost it (typing never waits for the next one).
   */
  | 'disconnected'
  /** maxOutbox sends wait already. */
  | 'outbox_full'
  /** maxWaiting requests wait for a connection already; this one was not queued. */
  | 'queue_full'
  /** The store's get or set failed. */
  | 'store'
  /** An event listener threw. */
  | 'listener'
  /** getToken() failed or returned no token. */
  | 'token';

export class PgChatError extends Error {
  constructor(code: string, message: string, extra?: { frame?: unknown; retryAfterMs?: number; cause?: unknown });
  readonly name: 'PgChatError';
  code: ProtocolErrorCode | ClientErrorCode | (string & {});
  /** The offending or error frame, when there is one. */
  frame?: unknown;
  /** The server's retry_after_ms, for rate_limited. */
  retryAfterMs?: number;
}

export interface BackoffOptions {
  /** The first retry waits up to this (default 500). */
  initialMs?: number;
  /** No retry waits longer (default 30000). */
  maxMs?: number;
}

export interface PgChatOptions {
  /** ws(s)://host/ws; the client adds ?after= (its position) and, with tokenIn 'query', ?token=. */
  url: string;
  /** A fixed token: when it expires (close 1008) the client closes for good. */
  token?: string;
  /** Called at each (re)connect and to refresh the token in place before it expires. */
  getToken?: () => string | Promise<string>;
  /** Where the last seq is kept (key: storeKeyPrefix + user id). Default: a MemoryStore. */
  store?: SeqStore;
  /** Key prefix in the store (default 'pgchat:lastSeq:'). */
  storeKeyPrefix?: string;
  /** With nothing stored: 'head' (default: only events after the hello) or a seq to replay from. */
  startAt?: 'head' | number;
  /**
   * Where the token goes: 'header' (`Authorization: Bearer`, as `new WebSocket(url, { headers })`,
   * which Node.js's own WebSocket and the `ws` package take), 'query' (`?token=`, the only way
   * in a browser) or 'auto' (default): 'header' in Node.js and Bun, 'query' anywhere else. Out
   * of the URL, a token stays out of proxies' access logs. A WebSocket given in options that
   * ignores `{ headers }` connects without a token (refused, 401): use 'query' for it.
   */
  tokenIn?: 'auto' | 'header' | 'query';
  /**
   * A WebSocket constructor; default globalThis.WebSocket. With the token in a header it is
   * called as `new WebSocket(url, { headers: { Authorization } })`.
   */
  WebSocket?: new (url: string) => WebSocket;
  /** Full jitter: delay = random(0, min(maxMs, initialMs * 2^attempt)). */
  backoff?: BackoffOptions;
  /** How long non-send requests wait for a connection and their reply (default 15000; 0: no limit). */
  requestTimeoutMs?: number;
  /**
   * Non-send requests waiting for a connection at most, whatever requestTimeoutMs is (default
   * 1000); past it a request rejects at once with 'queue_full'. Those in flight when the
   * socket drops count too: one that finds the queue full rejects with 'queue_full'.
   */
  maxWaiting?: number;
  /** How long a connection may take to open, say hello and resume (default 15000). */
  connectTimeoutMs?: number;
  /** A ping after this long without frames; no answer in half the time reconnects (default 30000; 0: off). */
  heartbeatMs?: number;
  /** Sends waiting at most (default 1000); send() rejects with 'outbox_full' past it. */
  maxOutbox?: number;
  /** Frames larger than this are refused locally with 'too_large' (default 65536, the server's). */
  maxFrameBytes?: number;
}

export interface StateChange {
  state: ConnectionState;
  /** 'connecting', 'reconnecting': consecutive failures so far (0 after a connection that worked). */
  attempt?: number;
  /** 'reconnecting': how long until the next try. */
  delayMs?: number;
  /** 'reconnecting', 'closed': why. */
  reason?: string;
  /** 'reconnecting' after a close: the close code (1001 shutdown, 1006 dropped, 1008 expired, …). */
  code?: number;
  /** 'open': the stream's head: the resume's answer, or the hello's when the session started from ?after=. */
  head?: number;
}

export interface ResyncInfo {
  /** The seq the client resumes from; events after it follow. */
  head: number;
  reason: string;
}

export interface ClientStats {
  /** Durable events dropped because their seq was already seen. */
  duplicates: number;
  /** Events held back because an earlier one had not arrived (replayed in order after). */
  heldBack: number;
  reconnects: number;
  badFrames: number;
  resyncs: number;
  /** Sends put on the wire again (after a drop, unavailable or rate_limited). */
  retriedSends: number;
}

export interface PgChatEvents {
  /** A new message (also the user's own, from any of their sessions). */
  message: (message: Message, event: MessageEvent) => void;
  /** A conversation the user joined, or whose name or members changed. */
  conversation: (conversation: Conversation, event: ConversationEvent) => void;
  /**
   * A message's body was edited (by its sender, on any of their sessions): replace it.
   * A replay after its deletion shows the tombstone.
   */
  message_edited: (message: Message, event: MessageEditedEvent) => void;
  /**
   * A message was deleted: show its tombstone, and `""` as the snippet of replies to it.
   * May come twice for one message (a reaction replayed after the deletion comes as this).
   */
  message_deleted: (event: MessageDeletedEvent) => void;
  /** A member put on or took off a reaction. */
  reaction: (event: ReactionEvent) => void;
  /** The user left or was removed from a conversation. */
  removed: (event: RemovedEvent) => void;
  /**
   * Another member's read marker moved (in conversations of at most 101 members); in larger
   * groups only the user's own, on each of their sessions (`receipts()` tells the others').
   */
  read: (event: ReadEvent) => void;
  /** Ephemeral: lost while offline. */
  typing: (event: TypingEvent) => void;
  /** Ephemeral; after a reconnect the snapshot of watched users comes as presence events too. */
  presence: (event: PresenceEvent) => void;
  /** Every durable event, raw, in seq order, once (before its typed event). */
  event: (event: DurableEvent) => void;
  state: (change: StateChange) => void;
  hello: (hello: HelloFrame) => void;
  token_expiring: (info: { expiresInMs: number }) => void;
  /** The token was replaced in place (`auth`). */
  token_refreshed: (info: Record<string, never>) => void;
  /**
   * The server can no longer replay what this client missed: reload conversations and
   * history. Events after `head` follow (they may already be in what you reload: merge
   * messages by id).
   */
  resync: (info: ResyncInfo) => void;
  /** Malformed frames ('bad_frame') and failures no promise reports. */
  error: (error: PgChatError) => void;
}

export type PgChatEventName = keyof PgChatEvents;

export type SendTarget = { conversation: string; to?: never } | { to: string; conversation?: never };

export interface SendOptions {
  /** 1..64 characters; generated when absent. The same id never stores a second message. */
  clientMsgId?: string;
  /** The cseq of the message of the same conversation this one answers (bad_request else). */
  replyTo?: number;
  /** Members of the conversation it mentions (bad_request for others; at most 50). */
  mentions?: string[];
}

/**
 * A pgchat connection that reconnects, resumes, deduplicates and retries by itself.
 * Nothing happens until connect(); sends and requests made before then wait.
 */
export class PgChat {
  constructor(options: PgChatOptions);

  readonly state: ConnectionState;
  /** The user id from the hello (null before the first). */
  readonly user: string | null;
  /** The last durable seq handed to the application (-1 before the first hello). */
  readonly lastSeq: number;
  /** The current connection's hello, or null. */
  readonly hello: HelloFrame | null;
  /** Sends not yet acknowledged. */
  readonly pendingSends: number;
  readonly stats: ClientStats;
  /** The store key of this user's position (null before the first hello). */
  readonly storeKey: string | null;

  /** Resolves once connected and resumed the first time; rejects if closed first. */
  connect(): Promise<void>;
  /** Final: pending sends and requests reject with code 'closed'. */
  close(): void;

  on<E extends PgChatEventName>(event: E, listener: PgChatEvents[E]): () => void;
  off<E extends PgChatEventName>(event: E, listener: PgChatEvents[E]): void;

  /**
   * Resolves with the stored message exactly once, after any number of reconnects (the
   * same client_msg_id is reused). Sends go out one at a time in the order made. Rejects on
   * a permanent error (bad_request, forbidden, not_found, too_large), 'outbox_full' or
   * close().
   */
  send(target: SendTarget, body: string, opts?: SendOptions): Promise<Message>;
  /**
   * Replaces the body of one of the user's own messages; resolves with the message as it
   * is now. Every member gets `message_edited`; the same body again resolves without one.
   * Rejects with forbidden (another's message), not_found (no such or a deleted message).
   */
  edit(conversation: string, cseq: number, body: string): Promise<Message>;
  /**
   * Deletes a message: the sender's own, or any in a group the user is an admin of. It
   * stays as a tombstone; every member gets `message_deleted`. Deleting it again resolves.
   */
  deleteMessage(conversation: string, cseq: number): Promise<void>;
  /**
   * Puts the user's reaction on (`on`, default true) or off; every member gets a
   * `reaction` event, none when it already was so. At most 20 distinct emoji a message
   * (too_large); a deleted message is not_found.
   */
  react(conversation: string, cseq: number, emoji: string, on?: boolean): Promise<void>;
  /**
   * Messages whose words match `query` (PostgreSQL websearch syntax: words, "a phrase",
   * or, -word), newest first, in the user's conversations or in `conversation`, only from
   * while the user was a member, never deleted ones. `limit` 1..50 (default 20); the next
   * page is `beforeId` the last message's id.
   */
  search(query: string, opts?: { conversation?: string; beforeId?: number; limit?: number }): Promise<SearchPage>;
  history(conversation: string, opts?: { beforeCseq?: number; limit?: number }): Promise<Message[]>;
  historyPage(conversation: string, opts?: { beforeCseq?: number; limit?: number }): Promise<HistoryPage>;
  /**
   * Every conversation of the user, most recently active first, each once: every page
   * followed, and the front read again after a walk of several pages, so that one that
   * became active meanwhile (moving ahead of the cursor) is not missed. Costs one request
   * per 100 conversations, and one more or so after a walk of several pages.
   */
  conversations(): Promise<ConversationSummary[]>;
  /**
   * One page of `conversations`. `limit`: 1..100 (default 100); `before`: the `next` of an
   * earlier page (null or undefined: the first page). A conversation that becomes active
   * while pages are read moves to the first page: `conversations()` accounts for that.
   */
  conversationsPage(opts?: { limit?: number; before?: string | null }): Promise<ConversationsPage>;
  members(conversation: string, opts?: { after?: string; limit?: number }): Promise<MembersPage>;
  /**
   * One page of the members' read positions, by user id (`after`: the last user of the
   * previous page; `limit` 1..1000, default 100). In groups of more than 101 members (more
   * than `read_receipts_fanout_max`, 100, besides the reader) no `read` events reach the
   * other members: this is how they learn read positions there.
   */
  receipts(conversation: string, opts?: { after?: string; limit?: number }): Promise<ReceiptsPage>;
  /**
   * Every member's read position, by user id: the pages of `receipts`, 1000 a request. Each
   * member of the whole call comes once, at a position at least as new as at its start.
   */
  allReceipts(conversation: string): Promise<Receipt[]>;
  /** Idempotent: a clientOpId is generated when none is given, so retries create one group. */
  createGroup(name: string, members: string[], opts?: { clientOpId?: string }): Promise<Conversation>;
  addToGroup(conversation: string, users: string[], opts?: { admin?: boolean }): Promise<Conversation>;
  removeFromGroup(conversation: string, users: string[]): Promise<Conversation>;
  leaveGroup(conversation: string): Promise<void>;
  markRead(conversation: string, cseq: number): Promise<void>;
  /**
   * Sent on the current connection only: without one, or if it drops before the answer,
   * rejects with 'disconnected' and is never sent later (a typing start would be stale by
   * then; the server ends a closed session's typing itself). rate_limited rejects too.
   */
  typing(conversation: string, state: TypingState): Promise<void>;
  /** Watches these users now and on every later connection; returns the snapshot. */
  subscribePresence(users: string[]): Promise<PresenceEntry[]>;
  ping(): Promise<void>;
  /** Any request; resolves with the ok frame's fields (without type and ref). */
  request(type: string, fields?: Record<string, unknown>): Promise<Record<string, any>>;
}

/** The reconnect delay after `attempt` consecutive failures (full jitter). */
export function backoffDelay(attempt: number, options?: BackoffOptions, random?: () => number): number;

/** A random 32-hex-digit id (for client_msg_id / client_op_id). */
export function randomId(): string;

export default PgChat;
