//! Every statement pgchat runs, in one place: plain, parameterised, prepared once per
//! connection. The write path is one call of `pgchat.apply_batch` (schema.sql); the rest
//! reads, or writes presence.
//!
//! Rule for each of them: reach `event_queue`, `messages`, `conversations`, `members` and
//! `users` through an index, whatever the tables' sizes, statistics or the plan cache do.
//! So a lookup per key is a scalar subquery, or a lateral subquery fenced with `LIMIT 1` or
//! `OFFSET 0` (a plain join against an array of keys may be planned as a hash join over a
//! whole table once the planner expects enough keys). tests/plans.rs runs each of them on
//! a database of a million events and fails on any sequential scan.

/// The write path: a batch of commands in one statement (see `src/write/batch.rs`).
pub const APPLY_BATCH: &str = "SELECT * FROM pgchat.apply_batch(
    $1::text, $2::int4, $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::int8[], $10::int4[], $11::text[])";

/// What protocol v1.2 adds to a message row `$m` (a `pgchat.messages` row or one with its
/// columns), as seen by the user `$viewer`: `edited_at, deleted, reply, mentions,
/// reactions`. The reply's snippet is read from the message answered, as it is now; the
/// reactions from their kept counts, with `me` probed per emoji. Each a probe by key, and
/// none at all for a message that answers nothing and has no reactions.
macro_rules! message_extras {
    ($m:literal, $viewer:literal) => {
        concat!(
            $m,
            ".edited_at, ",
            $m,
            ".deleted,
             (SELECT jsonb_build_object('cseq', o.cseq, 'sender', o.sender_id,
                                        'snippet', left(o.body, 100))
              FROM pgchat.messages o
              WHERE ",
            $m,
            ".reply_to IS NOT NULL AND o.conversation_id = ",
            $m,
            ".conversation_id
                AND o.cseq = ",
            $m,
            ".reply_to) AS reply,
             ",
            $m,
            ".mentions,
             (SELECT jsonb_agg(jsonb_build_object(
                         'emoji', r.emoji, 'count', r.count,
                         'me', EXISTS (SELECT 1 FROM pgchat.reactions x
                                       WHERE x.conversation_id = r.conversation_id
                                         AND x.message_id = r.message_id AND x.user_id = ",
            $viewer,
            "
                                         AND x.emoji = r.emoji))
                     ORDER BY r.first_at, r.emoji)
              FROM pgchat.reaction_counts r WHERE r.conversation_id = ",
            $m,
            ".conversation_id AND r.message_id = ",
            $m,
            ".id) AS reactions"
        )
    };
}

/// The columns that render an event as a frame: from an `event_queue` row `e`, its
/// message `m`, its conversation `c` and its reaction change `rc` (see `event_joins!`).
macro_rules! event_columns {
    () => {
        "e.user_id, e.seq, e.kind, e.payload,
         m.id, m.conversation_id, m.cseq, m.sender_id, m.sender_name, m.body,
         m.client_msg_id, m.created_at, m.edited_at, m.deleted, m.reply, m.mentions,
         m.reactions,
         c.state, rc.user_id AS rc_user, rc.emoji AS rc_emoji, rc.added AS rc_added"
    };
}

/// The message, conversation or reaction change an event shows, one primary-key probe
/// each. A message event (and message_edited) shows the message as it is now: edited, or
/// a tombstone once deleted, so no event keeps a deleted text. A conversation event shows
/// the state it was written with (`conversation_states`), never the current one: a member
/// who left must not learn who joined later. Events written before schema version 3 have
/// no state: they show the conversation now to its members, and without its members to
/// those who left. A reaction event whose change is gone (its message was deleted) shows
/// that deletion instead.
macro_rules! event_joins {
    () => {
        concat!(
            "LEFT JOIN LATERAL (
             SELECT m.id, m.conversation_id, m.cseq, m.sender_id,
                    (SELECT u.name FROM pgchat.users u WHERE u.id = m.sender_id) AS sender_name,
                    m.body, m.client_msg_id, m.created_at, ",
            message_extras!("m", "e.user_id"),
            "
             FROM pgchat.messages m WHERE m.id = e.message_id LIMIT 1) m ON true
         LEFT JOIN LATERAL (
             SELECT rc.user_id, rc.emoji, rc.added FROM pgchat.reaction_changes rc
             WHERE e.kind = 'reaction' AND rc.conversation_id = e.conversation_id
               AND rc.message_id = e.message_id
               AND rc.change_id = e.change_id LIMIT 1) rc ON true
         LEFT JOIN LATERAL (
             SELECT coalesce(
                 (SELECT s.state FROM pgchat.conversation_states s
                  WHERE s.conversation_id = e.conversation_id
                    AND s.version = e.conversation_version),
                 CASE WHEN EXISTS (SELECT 1 FROM pgchat.members x
                                   WHERE x.conversation_id = e.conversation_id
                                     AND x.user_id = e.user_id)
                      THEN pgchat.conversation_json(e.conversation_id)
                      ELSE (SELECT jsonb_build_object('id', c.id, 'kind', c.kind,
                                                      'name', c.name, 'members', '[]'::jsonb)
                            FROM pgchat.conversations c WHERE c.id = e.conversation_id)
                 END) AS state
             WHERE e.kind = 'conversation') c ON true"
        )
    };
}

/// One user's events after a seq, oldest first, at most $3, and only as many as fit in $4
/// bytes of message bodies and states (at least one): `(user, after, limit, bytes)`. The
/// bound is what a session's page of events was charged (resume, and a session behind its
/// feed; see `foundation::budget`), so that a page of long messages cannot be larger.
pub const EVENTS_AFTER: &str = concat!(
    "SELECT * FROM (SELECT ",
    event_columns!(),
    ", sum(x.bytes) OVER (ORDER BY e.seq) - x.bytes AS before_it
     FROM (SELECT * FROM pgchat.event_queue
           WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) e ",
    event_joins!(),
    " CROSS JOIN LATERAL (SELECT coalesce(octet_length(m.body), octet_length(c.state::text),
                                          octet_length(e.payload::text), 0) + 256 AS bytes) x
     ) page
     WHERE before_it < $4::int8
     ORDER BY seq"
);

/// Several users' ranges `(after, upto]` at once (what a notification announced), as far
/// as $4 bytes of bodies and states go (at least one row): `(users[], after[], upto[],
/// bytes)`. One range scan of the primary key per user. What the bound leaves out, the
/// users' sessions read themselves (each page charged, see `foundation::budget`).
pub const EVENTS_IN: &str = concat!(
    "SELECT * FROM (SELECT ",
    event_columns!(),
    ", e.created_at AS event_at,
       sum(x.bytes) OVER (ORDER BY e.user_id, e.seq) - x.bytes AS before_it
     FROM unnest($1::text[], $2::int8[], $3::int8[]) AS k(u, a, b)
      CROSS JOIN LATERAL (SELECT * FROM pgchat.event_queue
                          WHERE user_id = k.u AND seq > k.a AND seq <= k.b
                          ORDER BY seq OFFSET 0) e ",
    event_joins!(),
    " CROSS JOIN LATERAL (SELECT coalesce(octet_length(m.body), octet_length(c.state::text),
                                          octet_length(e.payload::text), 0) + 256 AS bytes) x
     ) fetched
     WHERE before_it < $4::int8
     ORDER BY user_id, seq"
);

/// The stream heads of users (catch-up after a reconnect or a pointer notification):
/// `(users[])`.
pub const HEADS: &str = "SELECT k.u, (SELECT head FROM pgchat.users WHERE id = k.u)
     FROM unnest($1::text[]) AS k(u)";

/// Where a resume may start: the user's head and how far retention pruned the stream.
pub const STREAM_BOUNDS: &str = "SELECT u.head,
            coalesce((SELECT p.through FROM pgchat.stream_pruned p WHERE p.user_id = u.id), 0)
     FROM pgchat.users u WHERE u.id = $1";

/// A user at connect: `(id)` → head, name.
pub const USER: &str = "SELECT head, name FROM pgchat.users WHERE id = $1";

/// Records a user or their new display name: `(id, name)` → head.
pub const UPSERT_USER: &str = "INSERT INTO pgchat.users AS u (id, name) VALUES ($1, $2)
     ON CONFLICT (id) DO UPDATE SET name = COALESCE(EXCLUDED.name, u.name)
     RETURNING head";

/// History's access check and total: `(conversation, user)` → last_cseq, is a member.
pub const HISTORY_ACCESS: &str = "SELECT c.last_cseq,
            EXISTS (SELECT 1 FROM pgchat.members m
                    WHERE m.conversation_id = c.id AND m.user_id = $2)
     FROM pgchat.conversations c WHERE c.id = $1";

/// A page of history, oldest first, as `$4` sees it: `(conversation, before_cseq, limit,
/// reader)`. Sender names are read once per sender of the page.
pub const HISTORY_PAGE: &str = concat!(
    "WITH page AS (
         SELECT id, conversation_id, cseq, sender_id, body, client_msg_id, created_at,
                edited_at, deleted, reply_to, mentions
         FROM pgchat.messages
         WHERE conversation_id = $1 AND cseq < $2
         ORDER BY cseq DESC
         LIMIT $3
     ), names AS (
         SELECT s.sender_id,
                (SELECT u.name FROM pgchat.users u WHERE u.id = s.sender_id) AS name
         FROM (SELECT DISTINCT sender_id FROM page) s
     )
     SELECT p.id, p.conversation_id, p.cseq, p.sender_id, n.name, p.body,
            p.client_msg_id, p.created_at, ",
    message_extras!("p", "$4"),
    "
     FROM page p LEFT JOIN names n ON n.sender_id = p.sender_id
     ORDER BY p.cseq"
);

/// Search: messages of `$1`'s conversations (or only `$2`) whose words match the query
/// `$3` (websearch syntax: words, "quoted phrases", or, -not), newest first, from id `$4`
/// down, at most `$5`: `(user, conversation or null, query, before_id, limit)`. Only
/// messages from while the user has been a member (cseq above joined_cseq), never
/// deleted ones (a tombstone has no words). One scan of the search index, which holds
/// the conversation beside the words (btree_gin), for the user's conversations at once;
/// then a sort of the matches by id.
pub const SEARCH: &str = concat!(
    "WITH mine AS (
         SELECT me.conversation_id, me.joined_cseq FROM pgchat.members me
         WHERE me.user_id = $1 AND ($2::text IS NULL OR me.conversation_id = $2) OFFSET 0
     ), hits AS (
         SELECT m.id, m.conversation_id, m.cseq, m.sender_id, m.body, m.client_msg_id,
                m.created_at, m.edited_at, m.deleted, m.reply_to, m.mentions
         FROM pgchat.messages m
         WHERE m.conversation_id = ANY (ARRAY(SELECT conversation_id FROM mine))
           AND to_tsvector('simple'::regconfig, m.body) @@ websearch_to_tsquery('simple'::regconfig, $3)
           AND m.id < $4 AND NOT m.deleted
           AND m.cseq > (SELECT x.joined_cseq FROM mine x WHERE x.conversation_id = m.conversation_id)
         ORDER BY m.id DESC
         LIMIT $5
     )
     SELECT p.id, p.conversation_id, p.cseq, p.sender_id,
            (SELECT u.name FROM pgchat.users u WHERE u.id = p.sender_id) AS name, p.body,
            p.client_msg_id, p.created_at, ",
    message_extras!("p", "$1"),
    "
     FROM hits p
     ORDER BY p.id DESC"
);

/// A conversation's members, sorted, or no row: `(conversation)`.
pub const MEMBERS: &str = "SELECT ARRAY(SELECT user_id FROM pgchat.members
                  WHERE conversation_id = c.id ORDER BY user_id)
     FROM pgchat.conversations c WHERE c.id = $1";

/// A page of a user's conversations, most recently active first, with (the first `$2`
/// of their) members, the member count, the last message and the unread count:
/// `(user, members listed, page size, before: active_at, before: id)`. The page is chosen
/// first, from each membership's conversation row and its last message's time (one
/// primary-key probe each); only the page's rows are then filled in, so a user in 10,000
/// groups costs 20,000 probes and a sort, never 10,000 member lists. The count is taken
/// only where the list was cut short. `unread` counts nothing: a member's read marker also
/// moves to every message they send, so the unread messages are exactly those after it.
pub const CONVERSATIONS: &str = concat!(
    "WITH mine AS (
         SELECT c.id, c.kind, c.name, c.last_cseq, me.read_cseq, me.mentions_unread,
                coalesce(lm.created_at, c.created_at) AS active_at
         FROM (SELECT conversation_id, read_cseq, mentions_unread FROM pgchat.members
               WHERE user_id = $1 OFFSET 0) me
         CROSS JOIN LATERAL (
             SELECT c.id, c.kind, c.name, c.last_cseq, c.created_at
             FROM pgchat.conversations c WHERE c.id = me.conversation_id LIMIT 1) c
         LEFT JOIN LATERAL (
             SELECT m.created_at FROM pgchat.messages m
             WHERE m.conversation_id = c.id AND m.cseq = c.last_cseq LIMIT 1) lm ON true
     ), page AS (
         SELECT * FROM mine
         WHERE $4::timestamptz IS NULL OR active_at < $4 OR (active_at = $4 AND id > $5)
         ORDER BY active_at DESC, id
         LIMIT $3
     )
     SELECT p.id, p.kind, p.name,
            mm.members[1:$2] AS members,
            CASE WHEN p.kind = 'group' THEN
                ARRAY(SELECT x.user_id FROM pgchat.members x
                      WHERE x.conversation_id = p.id AND x.admin ORDER BY x.user_id LIMIT $2)
            END AS admins,
            p.last_cseq - p.read_cseq AS unread,
            lm.id, lm.conversation_id, lm.cseq, lm.sender_id, lm.sender_name, lm.body,
            lm.client_msg_id, lm.created_at, lm.edited_at, lm.deleted, lm.reply, lm.mentions,
            lm.reactions,
            CASE WHEN cardinality(mm.members) > $2
                 THEN (SELECT count(*) FROM pgchat.members x WHERE x.conversation_id = p.id)
                 ELSE cardinality(mm.members) END AS member_count,
            p.active_at, p.mentions_unread
     FROM page p
     CROSS JOIN LATERAL (
         SELECT ARRAY(SELECT x.user_id FROM pgchat.members x
                      WHERE x.conversation_id = p.id ORDER BY x.user_id
                      LIMIT $2::int + 1) AS members) mm
     LEFT JOIN LATERAL (
         SELECT m.id, m.conversation_id, m.cseq, m.sender_id,
                (SELECT u.name FROM pgchat.users u WHERE u.id = m.sender_id) AS sender_name,
                m.body, m.client_msg_id, m.created_at, ",
    message_extras!("m", "$1"),
    "
         FROM pgchat.messages m
         WHERE m.conversation_id = p.id AND m.cseq = p.last_cseq LIMIT 1) lm ON true
     ORDER BY p.active_at DESC, p.id"
);

/// Read receipts, a page: every member's read position, by user id, after `$2`:
/// `(conversation, after, limit)`. One range of the members' primary key.
pub const RECEIPTS: &str = "SELECT user_id, read_cseq FROM pgchat.members
     WHERE conversation_id = $1 AND user_id > $2
     ORDER BY user_id LIMIT $3";

/// Retention, one bounded batch: `(older than, seconds; rows)` → deleted, -1 if busy.
pub const PRUNE_EVENTS: &str = "SELECT pgchat.prune_events(make_interval(secs => $1), $2)";

/// What workers tell each other: `(channel, payload)`.
pub(crate) const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// The key that seals notices (see `cluster::notify`), read once at start.
pub(crate) const NOTICE_KEY: &str = "SELECT key FROM pgchat.notice_key";

/// Presence: which of the users share a conversation with the subscriber (or are the
/// subscriber): `(subscriber, users[])`. Per user, its memberships by the user index, each
/// probed for the subscriber by primary key, stopping at the first shared one.
pub const SHARING: &str = "SELECT k.u FROM unnest($2::text[]) AS k(u)
     CROSS JOIN LATERAL (
         SELECT 1 FROM pgchat.members mu
         WHERE mu.user_id = k.u
           AND (SELECT 1 FROM pgchat.members me
                WHERE me.conversation_id = mu.conversation_id AND me.user_id = $1
                LIMIT 1) IS NOT NULL
         LIMIT 1) shared
     UNION
     SELECT $1 WHERE $1 = ANY ($2::text[])";

/// Presence: when users were last seen: `(users[])`.
pub const LAST_SEEN: &str = "SELECT k.u, (SELECT last_seen FROM pgchat.users WHERE id = k.u)
     FROM unnest($1::text[]) AS k(u)";

/// Presence: users went offline everywhere at $2: `(users[], at)`. The keys pass through
/// a sub-select so that the planner cannot count them: given 500 literal keys it would
/// rather scan 20k users than probe 500 times; an array it cannot see is costed as a few
/// keys, which an index serves whatever the table's size.
pub const STORE_LAST_SEEN: &str =
    "UPDATE pgchat.users SET last_seen = $2 WHERE id = ANY (ARRAY(SELECT unnest($1::text[])))";

/// Presence: who is online on the other workers: `(this worker)`.
pub(crate) const REMOTE_PRESENCE: &str =
    "SELECT user_id, worker_id FROM pgchat.presence WHERE worker_id <> $1";

/// Presence: users now held by this worker: `(users[], worker)`.
pub const PRESENCE_ON: &str = "INSERT INTO pgchat.presence (user_id, worker_id)
     SELECT u, $2 FROM unnest($1::text[]) AS u ORDER BY u
     ON CONFLICT DO NOTHING";

/// Presence: the users a worker holds, by its rows: `(worker)`.
pub(crate) const WORKER_USERS: &str =
    "SELECT user_id FROM pgchat.presence WHERE worker_id = $1 ORDER BY user_id";

/// Presence: users this worker no longer holds: `(users[], worker)`.
pub const PRESENCE_OFF: &str =
    "DELETE FROM pgchat.presence WHERE worker_id = $2 AND user_id = ANY($1)";

/// A worker's heartbeat: `(id, host, pid)` → whether its row had to be made (at start,
/// or again after the others reaped it).
pub(crate) const HEARTBEAT: &str = "INSERT INTO pgchat.workers (id, host, pid) VALUES ($1, $2, $3)
     ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
     RETURNING xmax = 0";

/// The other workers in the table: `(this worker, dead after seconds)` → id, alive.
pub(crate) const PEERS: &str = "SELECT id, heartbeat_at >= now() - make_interval(secs => $2)
     FROM pgchat.workers WHERE id <> $1";

/// Which of these workers are in the table (alive, or not yet reaped): `(workers[])`.
pub(crate) const KNOWN_WORKERS: &str = "SELECT w.id FROM unnest($1::text[]) AS k(id)
     CROSS JOIN LATERAL (SELECT id FROM pgchat.workers WHERE id = k.id) w";

/// Workers silent too long: `(dead after seconds)` → their ids, deleted.
pub(crate) const REAP_WORKERS: &str =
    "DELETE FROM pgchat.workers WHERE heartbeat_at < now() - make_interval(secs => $1)
     RETURNING id";

/// The presence rows of gone workers, and last_seen for their users now online nowhere:
/// `(workers[])`.
pub const FORGET_WORKERS: &str = "WITH gone AS (
         DELETE FROM pgchat.presence WHERE worker_id = ANY($1) RETURNING user_id
     )
     UPDATE pgchat.users u SET last_seen = now()
     WHERE u.id = ANY (ARRAY(SELECT user_id FROM gone))
       AND NOT EXISTS (SELECT 1 FROM pgchat.presence p
                       WHERE p.user_id = u.id AND NOT p.worker_id = ANY($1))";

/// A worker that leaves: `(id)`.
pub(crate) const DELETE_WORKER: &str = "DELETE FROM pgchat.workers WHERE id = $1";
