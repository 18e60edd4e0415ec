-- pgchat schema: the whole of what pgchat stores, at the current version (5).
--
-- A new database is built from this file; an existing one is brought here by the
-- migrations in migrations/ (each run once, in order, under an advisory lock). A test
-- checks that both ways build the same database, so a change goes in both places: a new
-- migration, and here.
--
-- Everything lives in schema `pgchat`, apart from public.pgchat_schema, which pgchat 0.1
-- read: it records the version, so that an older pgchat refuses a newer database.

CREATE SCHEMA IF NOT EXISTS pgchat;

-- btree_gin lets one GIN index hold a message's conversation beside its words, so that
-- search reads only the matches in the user's conversations (messages_search below). A
-- trusted extension: the database's owner, or any role with CREATE on it, may add it.
CREATE EXTENSION IF NOT EXISTS btree_gin SCHEMA pgchat;

CREATE TABLE public.pgchat_schema (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per user id seen in a token or named as a recipient.
-- head: the last seq allocated in this user's event stream. It is the per-user counter
--   that makes seq gap-free and commit-ordered: a writer locks the row (FOR NO KEY UPDATE,
--   in user-id order), bumps it and inserts the events in the same transaction.
CREATE TABLE pgchat.users (
    id         text PRIMARY KEY,
    name       text,
    head       bigint NOT NULL DEFAULT 0,
    last_seen  timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE pgchat.conversation_ids;

-- kind 'direct': exactly the two users of direct_key ('a' || E'\n' || 'b', sorted), or one
-- user writing to themself. kind 'group': named, members managed by its members.
-- last_cseq: the conversation's message counter, locked and bumped like users.head; since
-- messages are never deleted it is also the conversation's message count.
-- version: bumped by every commit that changes the conversation (a message, members, its
-- name), so in-memory copies can tell they are stale.
CREATE TABLE pgchat.conversations (
    id         text PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('direct', 'group')),
    name       text,
    direct_key text UNIQUE,
    last_cseq  bigint NOT NULL DEFAULT 0,
    version    bigint NOT NULL DEFAULT 0,
    created_by text REFERENCES pgchat.users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    client_op_id text,
    CHECK ((kind = 'direct') = (direct_key IS NOT NULL))
);
-- group_create's idempotency key: the same creator and client_op_id find the same group.
CREATE UNIQUE INDEX conversations_by_op ON pgchat.conversations (created_by, client_op_id)
    WHERE client_op_id IS NOT NULL;

-- Membership, and each member's read marker: it never moves backwards, and moves to every
-- message the member sends, so that a conversation's unread count is last_cseq - read_cseq.
-- admin: may remove other members (a group's creator is one, and names the others).
CREATE TABLE pgchat.members (
    conversation_id text NOT NULL REFERENCES pgchat.conversations (id),
    user_id         text NOT NULL REFERENCES pgchat.users (id),
    read_cseq       bigint NOT NULL DEFAULT 0,
    joined_at       timestamptz NOT NULL DEFAULT now(),
    admin           boolean NOT NULL DEFAULT false,
    -- Messages above read_cseq that mention this member: exactly their rows in
    -- pgchat.mentions, kept beside the marker so that listing conversations counts nothing.
    mentions_unread integer NOT NULL DEFAULT 0,
    -- The conversation's last_cseq when this member joined: search finds only messages
    -- after it (from while they were a member). 0 for members from before schema 5.
    joined_cseq     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_by_user ON pgchat.members (user_id, conversation_id);

-- Messages, numbered per conversation by cseq (1, 2, 3, … without gaps). id is a plain
-- bigserial: it identifies a message but orders nothing clients resume from (search pages
-- by it, newest first).
-- A message is never removed: a deleted one stays as a tombstone (deleted, body '', no
-- mentions, no reply, no reactions), so that cseq stays gap-free and every event that
-- points at it still shows something. An edit replaces the body in place and sets
-- edited_at; earlier bodies are not kept anywhere.
-- reply_to: the cseq of the message answered, in the same conversation; its snippet is
-- read from that message whenever shown, so it follows the original's edits and deletion.
-- mentions: the members it mentions (NULL for none).
CREATE TABLE pgchat.messages (
    id              bigserial PRIMARY KEY,
    conversation_id text NOT NULL REFERENCES pgchat.conversations (id),
    cseq            bigint NOT NULL,
    sender_id       text NOT NULL REFERENCES pgchat.users (id),
    body            text NOT NULL,
    client_msg_id   text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    edited_at       timestamptz,
    deleted         boolean NOT NULL DEFAULT false,
    reply_to        bigint,
    mentions        text[],
    UNIQUE (conversation_id, cseq),
    UNIQUE (sender_id, client_msg_id)
);
-- Full-text search (PostgreSQL's 'simple' configuration: words lower-cased, no stemming,
-- no stop words, so it works alike for every language), with the conversation in the same
-- index (btree_gin) so that a search reads only matches in the searcher's conversations.
-- An edit re-indexes the message; a deletion (body '') leaves it no words.
CREATE INDEX messages_search ON pgchat.messages
    USING gin (conversation_id, to_tsvector('simple'::regconfig, body));

-- The unread mentions: one row per (conversation, member, cseq) for each message above
-- the member's read marker that mentions them. A row goes when the marker passes it (or
-- the message is deleted, or the member leaves), and members.mentions_unread counts the
-- member's rows.
CREATE TABLE pgchat.mentions (
    conversation_id text NOT NULL,
    user_id         text NOT NULL,
    cseq            bigint NOT NULL,
    PRIMARY KEY (conversation_id, user_id, cseq)
);

-- Reactions: one row per (message, user, emoji); reaction_counts keeps each emoji's count
-- (and when it first appeared: the order `reactions` lists them in), so that showing a
-- message never counts rows. At most 20 emoji per message. Keyed by the conversation
-- first, like messages and members, so that a distributed PostgreSQL (ROADMAP.md) can
-- place a conversation's reactions beside its messages.
CREATE TABLE pgchat.reactions (
    conversation_id text NOT NULL,
    message_id      bigint NOT NULL,
    user_id         text NOT NULL,
    emoji           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, message_id, user_id, emoji)
);
CREATE TABLE pgchat.reaction_counts (
    conversation_id text NOT NULL,
    message_id      bigint NOT NULL,
    emoji           text NOT NULL,
    count           integer NOT NULL CHECK (count > 0),
    first_at        timestamptz NOT NULL,
    PRIMARY KEY (conversation_id, message_id, emoji)
);

-- Each change of a reaction, once, however many members its `reaction` events reach (they
-- point at it by (message_id, change_id)). Deleting the message deletes its changes, so no
-- event keeps an emoji of a deleted message: such an event then shows `message_deleted`.
-- Retention deletes a change once no event can point at it (older than every event left).
CREATE SEQUENCE pgchat.reaction_change_ids;
CREATE TABLE pgchat.reaction_changes (
    conversation_id text NOT NULL,
    message_id      bigint NOT NULL,
    change_id       bigint NOT NULL,
    user_id         text NOT NULL,
    emoji           text NOT NULL,
    added           boolean NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, message_id, change_id)
);
CREATE INDEX reaction_changes_by_age ON pgchat.reaction_changes (created_at);

-- The durable per-user event stream (the seed's event_queue). A message event points at
-- its message instead of copying it, so a group message is stored once however many
-- members it reaches. A conversation event points at the conversation's state right after
-- the change (conversation_states, by conversation_version), stored once per change
-- however many members it reaches, so that a replay shows what the member saw then and
-- never who joined after they left; removed and read events carry their few fields in
-- payload. message_edited and message_deleted events point at their message too, and show
-- it as it is now (so a deleted message's text is in no event); a reaction event points at
-- its change (reaction_changes, by message_id and change_id). message_id has no foreign
-- key on purpose: the writer inserts both in one transaction, messages are never removed,
-- and a key would cost an index lookup per fanned-out row. created_at is indexed for
-- retention, which deletes the oldest rows in bounded batches (pgchat.prune_events).
CREATE TABLE pgchat.event_queue (
    user_id         text NOT NULL,
    seq             bigint NOT NULL,
    kind            text NOT NULL,
    message_id      bigint,
    conversation_id text,
    payload         jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    conversation_version bigint,
    change_id       bigint,
    PRIMARY KEY (user_id, seq)
);
-- Added as NOT VALID and validated apart (see src/db/schema.rs): on a grown database,
-- validating takes a scan that must not hold the migration's locks.
ALTER TABLE pgchat.event_queue ADD CONSTRAINT event_queue_kind_check
    CHECK (kind IN ('message', 'conversation', 'removed', 'read', 'message_edited',
                    'message_deleted', 'reaction')) NOT VALID;
ALTER TABLE pgchat.event_queue VALIDATE CONSTRAINT event_queue_kind_check;
CREATE INDEX event_queue_by_age ON pgchat.event_queue (created_at);

-- A conversation as the wire showed it right after each change of its name or members
-- (conversation_json), what its `conversation` events show when replayed. Written in the
-- transaction of its events, with the same created_at; retention deletes a state once no
-- event can point at it (older than every event left).
CREATE TABLE pgchat.conversation_states (
    conversation_id text NOT NULL,
    version         bigint NOT NULL,
    state           jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, version)
);
CREATE INDEX conversation_states_by_age ON pgchat.conversation_states (created_at);

-- How far retention pruned each stream: a resume from before `through` gets
-- resync_required. Kept apart from users so that pruning never locks a row writers lock.
CREATE TABLE pgchat.stream_pruned (
    user_id text PRIMARY KEY,
    through bigint NOT NULL
);

-- The workers of the cluster (every process serving clients, on any host), each
-- heartbeating; a worker silent for 8 s is taken for dead by the others, which then
-- delete its presence rows.
CREATE TABLE pgchat.workers (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Which worker holds sessions of which user: a user is online while any row exists. A
-- starting worker reads it to know the presence of users on the others.
CREATE TABLE pgchat.presence (
    user_id   text NOT NULL,
    worker_id text NOT NULL,
    since     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, worker_id)
);
CREATE INDEX presence_by_worker ON pgchat.presence (worker_id);

-- The limits pgchat enforces, recorded by the server at start so that pgchat.send applies
-- the same ones to the application's backend.
CREATE TABLE pgchat.settings (
    id                boolean PRIMARY KEY DEFAULT true CHECK (id),
    max_message_chars integer NOT NULL DEFAULT 4000,
    max_group_members integer NOT NULL DEFAULT 1000,
    -- conversation_members_listed: members (and admins) a conversation's state lists.
    members_listed    integer NOT NULL DEFAULT 100,
    -- read_receipts_fanout_max: above this many members, a read marker is not sent to
    -- every member as an event (members ask with `receipts`).
    read_fanout_max   integer NOT NULL DEFAULT 100,
    -- new_users_per_hour: users one user's commands may create for others in an hour.
    new_users_per_hour integer NOT NULL DEFAULT 2000
);
INSERT INTO pgchat.settings DEFAULT VALUES;

-- How many users each user's commands created for others (named in group_create,
-- group_add or a direct message before pgchat knew them) in the current hour, against
-- settings.new_users_per_hour. One row per user; the hour starts afresh when it turns.
CREATE TABLE pgchat.user_quota (
    user_id text PRIMARY KEY,
    hour    timestamptz NOT NULL,
    created integer NOT NULL
);

-- The key that seals every NOTIFY payload pgchat sends (HMAC-SHA256, see
-- src/cluster/notify.rs): any role that can connect may NOTIFY on pgchat's channel, so the
-- workers act only on notices sealed with this key. Readable by pgchat's own role alone
-- (and by the SQL API's SECURITY DEFINER functions, which seal what they send). inner_pad
-- and outer_pad are the key XOR 0x36 and XOR 0x5c, padded to SHA-256's 64-byte block, as
-- HMAC needs them. Made once, from gen_random_uuid() (PostgreSQL's strong random source).
CREATE TABLE pgchat.notice_key (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    key       bytea NOT NULL CHECK (octet_length(key) = 32),
    inner_pad bytea NOT NULL,
    outer_pad bytea NOT NULL
);
REVOKE ALL ON pgchat.notice_key FROM PUBLIC;

-- p_key XOR p_byte, padded with p_byte to 64 bytes: HMAC's inner or outer key block.
CREATE FUNCTION pgchat.hmac_pad(p_key bytea, p_byte integer) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
DECLARE
    pad bytea := decode(repeat('00', 64), 'hex');
BEGIN
    FOR i IN 0..63 LOOP
        pad := set_byte(pad, i, CASE WHEN i < octet_length(p_key) THEN get_byte(p_key, i)
                                     ELSE 0 END # p_byte);
    END LOOP;
    RETURN pad;
END
$$;

WITH k AS (SELECT decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
                         'hex') AS key)
INSERT INTO pgchat.notice_key (key, inner_pad, outer_pad)
SELECT key, pgchat.hmac_pad(key, 54), pgchat.hmac_pad(key, 92) FROM k;

-- p_notice (a JSON object) with its seal as its last field "s": the first 16 bytes of
-- HMAC-SHA256(key, p_notice), in hex. What every NOTIFY pgchat sends from SQL carries (the
-- workers seal theirs in Rust, src/cluster/notify.rs).
CREATE FUNCTION pgchat.sign_notice(p_notice text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
DECLARE
    k pgchat.notice_key;
BEGIN
    SELECT * INTO STRICT k FROM pgchat.notice_key WHERE id;
    -- The seal is the notice's last field, so that readers of the version before it (which
    -- ignore fields they do not know) still read the notice.
    RETURN left(p_notice, -1) || ',"s":"'
        || encode(substr(sha256(k.outer_pad || sha256(k.inner_pad || convert_to(p_notice, 'UTF8'))),
                         1, 16), 'hex')
        || '"}';
END
$$;

-- A conversation as the wire shows it: {"id","kind","name","members","member_count"}, and
-- for a group "admins". At most settings.members_listed members and admins are listed
-- (the first by id; `members` pages through the rest), so that a large group's state,
-- sent to every member at every change, stays small. With the change that made this
-- state, also "added" and "removed" (as many at most).
CREATE FUNCTION pgchat.conversation_json(p_id text, p_added text[] DEFAULT NULL,
                                         p_removed text[] DEFAULT NULL) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
    SELECT jsonb_build_object(
        'id', c.id, 'kind', c.kind, 'name', c.name,
        'members', coalesce((SELECT jsonb_agg(x.user_id ORDER BY x.user_id)
                             FROM (SELECT m.user_id FROM pgchat.members m
                                   WHERE m.conversation_id = c.id
                                   ORDER BY m.user_id LIMIT s.members_listed) x), '[]'),
        'member_count', (SELECT count(*) FROM pgchat.members m WHERE m.conversation_id = c.id))
        || CASE WHEN c.kind = 'group' THEN jsonb_build_object(
               'admins', coalesce((SELECT jsonb_agg(x.user_id ORDER BY x.user_id)
                                   FROM (SELECT m.user_id FROM pgchat.members m
                                         WHERE m.conversation_id = c.id AND m.admin
                                         ORDER BY m.user_id LIMIT s.members_listed) x), '[]'))
           ELSE '{}' END
        || CASE WHEN cardinality(p_added) > 0
                THEN jsonb_build_object('added', to_jsonb(p_added[1:s.members_listed]))
                ELSE '{}' END
        || CASE WHEN cardinality(p_removed) > 0
                THEN jsonb_build_object('removed', to_jsonb(p_removed[1:s.members_listed]))
                ELSE '{}' END
    FROM pgchat.conversations c, pgchat.settings s WHERE c.id = p_id AND s.id
$$;

-- A message as the wire shows it (the order of its fields aside: jsonb keeps its own),
-- with `me` in its reactions for p_viewer: what edit returns, and a retried send.
-- A deleted message is its tombstone.
CREATE FUNCTION pgchat.message_json(p_id bigint, p_viewer text) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
    SELECT jsonb_build_object(
        'id', m.id, 'conversation', m.conversation_id, 'cseq', m.cseq,
        'sender', jsonb_build_object('id', m.sender_id,
                                     'name', (SELECT u.name FROM pgchat.users u WHERE u.id = m.sender_id)),
        'body', m.body, 'client_msg_id', m.client_msg_id,
        'created_at', to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'edited_at', to_char(m.edited_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'deleted', m.deleted,
        'reply_to', (SELECT jsonb_build_object('cseq', o.cseq, 'sender', o.sender_id,
                                               'snippet', left(o.body, 100))
                     FROM pgchat.messages o
                     WHERE o.conversation_id = m.conversation_id AND o.cseq = m.reply_to),
        'mentions', to_jsonb(coalesce(m.mentions, '{}')),
        'reactions', coalesce((SELECT jsonb_agg(jsonb_build_object(
                                   'emoji', r.emoji, 'count', r.count,
                                   'me', EXISTS (SELECT 1 FROM pgchat.reactions x
                                                 WHERE x.conversation_id = r.conversation_id
                                                   AND x.message_id = r.message_id
                                                   AND x.user_id = p_viewer AND x.emoji = r.emoji))
                                   ORDER BY r.first_at, r.emoji)
                               FROM pgchat.reaction_counts r
                               WHERE r.conversation_id = m.conversation_id AND r.message_id = m.id),
                              '[]'))
    FROM pgchat.messages m WHERE m.id = p_id
$$;

-- Appends one event to each of p_users' streams (their rows are locked by the caller,
-- seq = head + 1) and to the caller's lists of events (e_*), which it returns extended.
-- p_version: the conversation_states version a conversation event shows; p_message and
-- p_change: the message (and reaction change) a message_edited, message_deleted or
-- reaction event shows.
CREATE FUNCTION pgchat.append_events(
    INOUT e_user text[], INOUT e_seq bigint[], INOUT e_cmd integer[], INOUT e_kind text[],
    INOUT e_fields jsonb[],
    p_users text[], p_kind text, p_conversation text, p_payload jsonb, p_fields jsonb,
    p_cmd integer, p_version bigint DEFAULT NULL, p_message bigint DEFAULT NULL,
    p_change bigint DEFAULT NULL)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
DECLARE
    users text[];
    seqs bigint[];
BEGIN
    WITH up AS (
        UPDATE pgchat.users u SET head = u.head + 1
        WHERE u.id = ANY (p_users)
        RETURNING u.id, u.head
    ), ins AS (
        INSERT INTO pgchat.event_queue (user_id, seq, kind, conversation_id, payload,
                                        conversation_version, message_id, change_id)
        SELECT id, head, p_kind, p_conversation, p_payload, p_version, p_message, p_change
        FROM up
    )
    SELECT coalesce(array_agg(id ORDER BY id), '{}'), coalesce(array_agg(head ORDER BY id), '{}')
    INTO users, seqs FROM up;
    e_user := e_user || users;
    e_seq := e_seq || seqs;
    e_cmd := e_cmd || array_fill(p_cmd, ARRAY[cardinality(users)]);
    e_kind := e_kind || array_fill(p_kind, ARRAY[cardinality(users)]);
    e_fields := e_fields || array_fill(p_fields, ARRAY[cardinality(users)]);
END
$$;

-- Tells every member of conversation p_id its state now (a `conversation` event each,
-- with the change p_added / p_removed), records that state once for replays
-- (conversation_states, at the conversation's version, which the caller has just
-- bumped); returns that state.
CREATE FUNCTION pgchat.announce(
    INOUT e_user text[], INOUT e_seq bigint[], INOUT e_cmd integer[], INOUT e_kind text[],
    INOUT e_fields jsonb[], p_id text, p_cmd integer, OUT conversation jsonb,
    p_added text[] DEFAULT NULL, p_removed text[] DEFAULT NULL)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
DECLARE
    v bigint;
BEGIN
    conversation := pgchat.conversation_json(p_id, p_added, p_removed);
    SELECT c.version INTO v FROM pgchat.conversations c WHERE c.id = p_id;
    INSERT INTO pgchat.conversation_states (conversation_id, version, state)
    VALUES (p_id, v, conversation);
    SELECT * INTO e_user, e_seq, e_cmd, e_kind, e_fields
    FROM pgchat.append_events(e_user, e_seq, e_cmd, e_kind, e_fields,
                              ARRAY(SELECT m.user_id FROM pgchat.members m
                                    WHERE m.conversation_id = p_id ORDER BY m.user_id),
                              'conversation', p_id, NULL,
                              jsonb_build_object('conversation', conversation), p_cmd, v);
END
$$;

-- What the other workers are told after a batch (see src/cluster/notify.rs), sealed: the
-- streams that grew (user, newest seq) and the conversations that changed (id, version),
-- or, when a list would not fit in NOTIFY's 8000 bytes with its seal (39 bytes), a pointer
-- ("all") that makes them check everything.
CREATE FUNCTION pgchat.events_notice(p_worker text, p_users text[], p_seqs bigint[],
                                     p_convs text[], p_versions bigint[]) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
DECLARE
    head text := '{"k":"e","w":' || to_json(p_worker)::text;
    users text;
    convs text;
BEGIN
    users := (SELECT '[' || coalesce(string_agg('[' || to_json(x.u)::text || ',' || x.s || ']', ','
                                                ORDER BY x.u), '') || ']'
              FROM (SELECT t.u, max(t.s) AS s FROM unnest(p_users, p_seqs) AS t(u, s)
                    GROUP BY t.u) x);
    convs := (SELECT '[' || coalesce(string_agg('[' || to_json(x.c)::text || ',' || x.v || ']', ','
                                                ORDER BY x.c), '') || ']'
              FROM (SELECT t.c, max(t.v) AS v FROM unnest(p_convs, p_versions) AS t(c, v)
                    GROUP BY t.c) x);
    IF octet_length(head) + octet_length(users) + octet_length(convs) + 14 <= 7960 THEN
        RETURN pgchat.sign_notice(head || ',"u":' || users || ',"c":' || convs || '}');
    ELSIF octet_length(head) + octet_length(convs) + 19 <= 7960 THEN
        RETURN pgchat.sign_notice(head || ',"all":true,"c":' || convs || '}');
    END IF;
    RETURN pgchat.sign_notice(head || ',"all":true,"all_c":true}');
END
$$;

-- Members' unread mentions after their read markers moved or mentions came or went
-- (p_conv[i], p_user[i] a member): the mentions at or below each marker go, and each
-- counter is set to the rows left. Both by key: the rows of one member of one
-- conversation are a range of the primary key, bounded by their unread mentions.
CREATE FUNCTION pgchat.recount_mentions(p_conv text[], p_user text[]) RETURNS void
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan SET jit = off
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
BEGIN
    DELETE FROM pgchat.mentions x
    WHERE x.ctid = ANY (ARRAY(
        SELECT y.ctid
        FROM (SELECT DISTINCT c, u FROM unnest(p_conv, p_user) AS t(c, u)) t
        CROSS JOIN LATERAL (SELECT m.read_cseq FROM pgchat.members m
                            WHERE m.conversation_id = t.c AND m.user_id = t.u LIMIT 1) m
        CROSS JOIN LATERAL (SELECT y.ctid FROM pgchat.mentions y
                            WHERE y.conversation_id = t.c AND y.user_id = t.u
                              AND y.cseq <= m.read_cseq OFFSET 0) y));
    UPDATE pgchat.members m SET mentions_unread = n.n
    FROM (SELECT t.c, t.u, (SELECT count(*) FROM pgchat.mentions y
                            WHERE y.conversation_id = t.c AND y.user_id = t.u) AS n
          FROM (SELECT DISTINCT c, u FROM unnest(p_conv, p_user) AS t(c, u)) t) n
    WHERE m.conversation_id = n.c AND m.user_id = n.u AND m.mentions_unread <> n.n;
END
$$;

-- The write path: applies a batch of commands in order, in the caller's transaction, and
-- notifies the other workers once. Called by pgchat's batcher as a single statement (so
-- the statement, its transaction and its commit are one round trip), and by pgchat.send.
--
-- Commands are parallel arrays, one element per command, in order:
--   c_kind   'send' | 'group_create' | 'group_add' | 'group_remove' | 'group_leave' | 'read'
--            | 'edit' | 'delete' | 'react'
--   c_actor  the user acting
--   c_conv   the conversation (send, group_add/remove/leave, read, edit, delete, react)
--   c_to     the recipient of a direct send (instead of c_conv)
--   c_text   the body (send, edit), the name (group_create) or the emoji (react)
--   c_key    the client_msg_id (send), the optional client_op_id (group_create), or 'on'
--            or 'off' (react)
--   c_num    the cseq (read, edit, delete, react), the cseq answered (send's reply_to);
--            1 for a group_add that also makes the users admins
--   u_cmd, u_user: the user lists of group_create/add/remove, and the mentions of sends,
--            as (command index, user).
-- Inputs are validated by the caller (ids, lengths), which also never puts two sends with
-- the same (sender, client_msg_id) in one batch; what needs the database (existence,
-- membership, admin rights, sizes, a key already stored) is checked here. A refused command
-- gets o_code/o_detail and changes nothing, not even the users rows its ids would have
-- created; the others still commit.
--
-- Who may do what in a group: any member may add members and leave; only an admin (the
-- creator, and those the creator names with group_add's admin flag) may remove others;
-- only the creator names admins; nobody but the creator can take the creator out.
--
-- Lock order, the same in every transaction that allocates seq or cseq (so concurrent
-- batches never deadlock): new users rows (by id), new direct conversations (by key), the
-- touched conversations (by id), the users rows whose streams may grow (by id). Rows are
-- locked FOR NO KEY UPDATE, which does not conflict with the KEY SHARE locks that foreign
-- keys take.
--
-- Every statement reaches rows by key. Hash and merge joins and sequential scans are
-- switched off for this function: it touches a few hundred rows by key per call, so index
-- probes are always right, and no statistics can make the planner think otherwise (an
-- UPDATE ... FROM of a few hundred keys is otherwise planned as a hash join over a full
-- scan once the table is large enough). Plans are generic: the statements' shapes never
-- change, and planning the statement of sends anew costs more than running it for one
-- send.
--
-- Who may change a message: its sender edits it; its sender, or an admin of its group,
-- deletes it; any member reacts. An edit that changes nothing, a deletion of a deleted
-- message and a reaction already so are answered as done, with no event: a retry writes
-- nothing twice.
--
-- Outputs: per command (o_*): an error code and message, or the message the send resolved
-- to (o_msg_body only for a send that returned an earlier message, whose whole current
-- state, pgchat.message_json, is then in o_conv; for a new reply, o_conv holds its
-- reply_to), or the conversation of a group command, or the edited message (o_conv). Per event (e_*): who got which seq, from which command, of which kind,
-- with the live fields for non-message events. Per changed conversation (v_*): its state
-- after each change, for the caller's cache (members: null after sends, which change no
-- membership and whose events name every member).
CREATE FUNCTION pgchat.apply_batch(
    p_worker text,
    p_max_members integer,
    c_kind text[], c_actor text[], c_conv text[], c_to text[], c_text text[], c_key text[],
    c_num bigint[], u_cmd integer[], u_user text[],
    OUT o_code text[], OUT o_detail text[],
    OUT o_msg_id bigint[], OUT o_msg_conv text[], OUT o_msg_cseq bigint[],
    OUT o_msg_at timestamptz[], OUT o_msg_name text[], OUT o_msg_body text[],
    OUT o_conv jsonb[],
    OUT e_user text[], OUT e_seq bigint[], OUT e_cmd integer[], OUT e_kind text[],
    OUT e_fields jsonb[],
    OUT v_id text[], OUT v_version bigint[], OUT v_last_cseq bigint[], OUT v_members jsonb[]
)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan SET jit = off
SET search_path = pg_catalog, pgchat, pg_temp
AS $fn$
DECLARE
    ncmds integer := coalesce(array_length(c_kind, 1), 0);
    conv_of text[] := c_conv;
    named text[] := '{}';
    keys text[];
    missing text[] := '{}';
    new_directs text[] := '{}';
    fresh_users text[] := '{}';
    lockset text[];
    pos integer;
    upto integer;
    crow record;
    actor text;
    cid text;
    listed text[];
    members_now text[];
    gone text[];
    promoted text[];
    retried boolean;
    cj jsonb;
    payload jsonb;
    stamp timestamptz;
    s_i integer[]; s_code text[]; s_detail text[]; s_id bigint[]; s_conv text[]; s_cseq bigint[];
    s_at timestamptz[]; s_name text[]; s_body text[];
    s_e_user text[]; s_e_seq bigint[]; s_e_cmd integer[];
    s_v_id text[]; s_v_version bigint[]; s_v_last_cseq bigint[]; s_v_members jsonb[];
    limits pgchat.settings;
    msg record;
    mine jsonb[];
    changed boolean;
    change bigint;
    s_extra jsonb[]; s_touch_conv text[]; s_touch_user text[];
    n_ci integer[] := '{}';
    n_u text[] := '{}';
    quota_refused integer[] := '{}';
    qi integer;
BEGIN
    o_code := array_fill(NULL::text, ARRAY[ncmds]);
    o_detail := o_code;
    o_msg_id := array_fill(NULL::bigint, ARRAY[ncmds]);
    o_msg_conv := o_code;
    o_msg_cseq := o_msg_id;
    o_msg_at := array_fill(NULL::timestamptz, ARRAY[ncmds]);
    o_msg_name := o_code;
    o_msg_body := o_code;
    o_conv := array_fill(NULL::jsonb, ARRAY[ncmds]);
    e_user := '{}'; e_seq := '{}'; e_cmd := '{}'; e_kind := '{}'; e_fields := '{}';
    v_id := '{}'; v_version := '{}'; v_last_cseq := '{}'; v_members := '{}';
    IF ncmds = 0 THEN
        RETURN;
    END IF;

    -- 1. Direct sends find their conversation by key (the two users, sorted). Reading
    -- takes no lock; what is missing is created below, in lock order.
    IF cardinality(array_remove(c_to, NULL)) > 0 THEN
        SELECT array_agg(coalesce(z.c, d.id) ORDER BY z.k),
               array_agg(DISTINCT z.key) FILTER (WHERE z.key IS NOT NULL AND z.c IS NULL
                                                 AND d.id IS NULL AND p.id IS NULL
                                                 AND z.r IS NULL
                                                 AND NOT EXISTS (
                                                     SELECT 1 FROM unnest(u_cmd, u_user) AS t(ci, u)
                                                     WHERE t.ci = z.k AND t.u <> z.a AND t.u <> z.t)),
               array_agg(z.key ORDER BY z.k)
        INTO conv_of, missing, keys
        -- (A reply, z.r, answers a message of a conversation that exists, and only the two
        -- can be mentioned in a direct one: a send to a direct conversation not made yet
        -- that does otherwise makes none, and is refused below.)
        FROM (SELECT z.c, z.k, z.a, z.t, z.ck, z.r, CASE WHEN z.t IS NULL THEN NULL
                                    WHEN z.a <= z.t THEN z.a || E'\n' || z.t
                                    ELSE z.t || E'\n' || z.a END AS key
              FROM unnest(c_conv, c_actor, c_to, c_key, c_num) WITH ORDINALITY AS z(c, a, t, ck, r, k)) z
        LEFT JOIN LATERAL (SELECT c.id FROM pgchat.conversations c
                           WHERE z.key IS NOT NULL AND c.direct_key = z.key LIMIT 1) d ON true
        -- A retried send (its key is stored) returns its first message: it creates nothing.
        LEFT JOIN LATERAL (SELECT m.id FROM pgchat.messages m
                           WHERE z.key IS NOT NULL AND d.id IS NULL
                             AND m.sender_id = z.a AND m.client_msg_id = z.ck LIMIT 1) p ON true;
    END IF;

    -- 2. New users get a stream (lock order 1): the two of a new direct conversation, and
    -- those named by group commands. Those that no command ends up using (a refused
    -- group_add, a group_create retried) are deleted again before the end (step 8).
    -- What one user may create for others is bounded (settings.new_users_per_hour, counted
    -- in user_quota): the commands of a user past it that would create anyone are
    -- refused (rate_limited) before anything is made for them.
    IF cardinality(missing) > 0 OR array_position(c_kind, 'group_create') IS NOT NULL
       OR array_position(c_kind, 'group_add') IS NOT NULL THEN
        SELECT * INTO limits FROM pgchat.settings WHERE id;
        -- Who names whom: (command, user) for everyone a command would make a user of.
        SELECT coalesce(array_agg(n.ci ORDER BY n.u, n.ci), '{}'),
               coalesce(array_agg(n.u ORDER BY n.u, n.ci), '{}')
        INTO n_ci, n_u
        FROM (
            SELECT z.k::integer AS ci, x AS u
            FROM unnest(keys) WITH ORDINALITY AS z(key, k)
            CROSS JOIN LATERAL unnest(string_to_array(z.key, E'\n')) AS x
            WHERE z.key = ANY (missing)
            UNION ALL
            SELECT t.ci, t.u FROM unnest(u_cmd, u_user) AS t(ci, u)
            WHERE c_kind[t.ci] IN ('group_create', 'group_add')
            UNION ALL
            SELECT t.k::integer, t.a FROM unnest(c_kind, c_actor) WITH ORDINALITY AS t(kind, a, k)
            WHERE t.kind = 'group_create'
        ) n;
        quota_refused := ARRAY(
            SELECT DISTINCT ci FROM (
                SELECT f.who, unnest(f.cis) AS ci, f.n
                FROM (SELECT c_actor[t.ci] AS who, count(DISTINCT t.u) AS n,
                             array_agg(t.ci) AS cis
                      FROM unnest(n_ci, n_u) AS t(ci, u)
                      WHERE t.u <> c_actor[t.ci]
                        AND NOT EXISTS (SELECT 1 FROM pgchat.users u WHERE u.id = t.u)
                      GROUP BY 1) f
            ) r
            WHERE r.n + coalesce((SELECT q.created FROM pgchat.user_quota q
                                  WHERE q.user_id = r.who
                                    AND q.hour = (date_trunc('hour', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')), 0)
                  > limits.new_users_per_hour
            ORDER BY ci);
        IF cardinality(quota_refused) > 0 THEN
            -- Their direct messages to new users make nothing: no users, no conversation
            -- (the send then finds none, and is answered rate_limited below).
            missing := ARRAY(SELECT m FROM unnest(missing) AS m
                             WHERE m <> ALL (ARRAY(SELECT keys[qr] FROM unnest(quota_refused) AS qr
                                                   WHERE keys[qr] IS NOT NULL)));
        END IF;
        named := ARRAY(SELECT DISTINCT t.u FROM unnest(n_ci, n_u) AS t(ci, u)
                       WHERE t.ci <> ALL (quota_refused) ORDER BY t.u);
        WITH ins AS (
            INSERT INTO pgchat.users (id) SELECT x FROM unnest(named) AS x ORDER BY x
            ON CONFLICT (id) DO NOTHING
            RETURNING id
        )
        SELECT coalesce(array_agg(id), '{}') INTO fresh_users FROM ins;
    END IF;

    -- 3. New direct conversations, created in key order (lock order 2), with their members
    -- at once; they are announced to them once their streams are locked.
    IF cardinality(missing) > 0 THEN
        WITH made AS (
            INSERT INTO pgchat.conversations (id, kind, direct_key, version)
            SELECT 'd' || nextval('pgchat.conversation_ids'), 'direct', w.key, 1
            FROM unnest(missing) AS w(key)
            ORDER BY w.key
            ON CONFLICT (direct_key) DO NOTHING
            RETURNING id, direct_key
        ), pairs AS (
            INSERT INTO pgchat.members (conversation_id, user_id)
            SELECT DISTINCT made.id, x FROM made
            CROSS JOIN LATERAL unnest(string_to_array(made.direct_key, E'\n')) AS x
        )
        SELECT coalesce(array_agg(id ORDER BY id), '{}') INTO new_directs FROM made;
        -- Created here, or by another batch that committed first.
        conv_of := ARRAY(
            SELECT coalesce(z.c, d.id)
            FROM unnest(conv_of, keys) WITH ORDINALITY AS z(c, key, k)
            LEFT JOIN LATERAL (SELECT c.id FROM pgchat.conversations c
                               WHERE z.c IS NULL AND c.direct_key = z.key LIMIT 1) d ON true
            ORDER BY z.k);
    END IF;

    -- Sends refused for the users they would create find no conversation, even one another
    -- batch made meanwhile: they store nothing.
    FOREACH qi IN ARRAY quota_refused LOOP
        conv_of[qi] := NULL;
    END LOOP;

    -- 4. Lock the conversations the commands name, by id (lock order 3).
    PERFORM 1 FROM (SELECT DISTINCT x FROM unnest(conv_of) AS x WHERE x IS NOT NULL
                    ORDER BY x) t
    CROSS JOIN LATERAL (SELECT 1 FROM pgchat.conversations c WHERE c.id = t.x
                        FOR NO KEY UPDATE) l;

    -- 5. Lock every stream that may grow, by id (lock order 4): the members of those
    -- conversations and the users named. Membership cannot change meanwhile: it changes
    -- only under the conversation's lock. A batch of sends to existing conversations skips
    -- this: its one statement of sends locks the streams it grows itself, in the same
    -- order; other commands, and announcements of new conversations, grow streams one
    -- command at a time, so their rows are all locked here first.
    IF cardinality(new_directs) > 0 OR cardinality(array_remove(c_kind, 'send')) > 0 THEN
        lockset := ARRAY(
            SELECT DISTINCT x FROM (
                SELECT m.user_id AS x
                FROM (SELECT DISTINCT c FROM unnest(conv_of) AS c WHERE c IS NOT NULL) t
                CROSS JOIN LATERAL (SELECT user_id FROM pgchat.members
                                    WHERE conversation_id = t.c OFFSET 0) m
                UNION ALL SELECT unnest(named)
            ) s ORDER BY x);
        PERFORM 1 FROM unnest(lockset) AS t(id)
        CROSS JOIN LATERAL (SELECT 1 FROM pgchat.users u WHERE u.id = t.id FOR NO KEY UPDATE) l;
    END IF;

    -- 6. New direct conversations are announced to their members before any message.
    FOREACH cid IN ARRAY new_directs LOOP
        SELECT * INTO e_user, e_seq, e_cmd, e_kind, e_fields, cj
        FROM pgchat.announce(e_user, e_seq, e_cmd, e_kind, e_fields, cid, 0);
    END LOOP;

    -- 7. The commands, in order: each run of sends at once, other commands one by one.
    pos := 1;
    WHILE pos <= ncmds LOOP
        IF c_kind[pos] = 'send' THEN
            upto := pos;
            WHILE upto < ncmds AND c_kind[upto + 1] = 'send' LOOP
                upto := upto + 1;
            END LOOP;
            -- The messages' time: the database's clock now, under the conversations' locks,
            -- so that created_at follows cseq in each conversation (now() is when the
            -- transaction began, which may be before an earlier message's commit).
            stamp := clock_timestamp();
            -- The run pos..upto, in one statement: each send is checked (the conversation
            -- exists, the sender is a member), deduplicated by (sender, client_msg_id)
            -- against what is stored, numbered (cseq per
            -- conversation, seq per recipient, in command order) and stored with an event
            -- per member; the counters and the senders' read markers move once per row.
            WITH cmd AS (
                SELECT k AS i, c_actor[k] AS sender, conv_of[k] AS conv, c_text[k] AS body,
                       c_key[k] AS ckey, c_num[k] AS reply
                FROM generate_series(pos, upto) AS k
            ), chk AS (
                SELECT cmd.*, cv.id IS NOT NULL AS conv_found, cv.last_cseq, cv.version,
                       mb.ok IS NOT NULL AS member, sn.name AS sender_name,
                       pr.id AS p_id, pr.conversation_id AS p_conv, pr.cseq AS p_cseq,
                       pr.body AS p_body, pr.created_at AS p_at,
                       rp.reply_json, mn.mentioned, mn.stranger
                FROM cmd
                LEFT JOIN LATERAL (SELECT c.id, c.last_cseq, c.version FROM pgchat.conversations c
                                   WHERE c.id = cmd.conv LIMIT 1) cv ON true
                LEFT JOIN LATERAL (SELECT 1 AS ok FROM pgchat.members m
                                   WHERE m.conversation_id = cmd.conv AND m.user_id = cmd.sender
                                   LIMIT 1) mb ON true
                LEFT JOIN LATERAL (SELECT m.id, m.conversation_id, m.cseq, m.body, m.created_at
                                   FROM pgchat.messages m
                                   WHERE m.sender_id = cmd.sender AND m.client_msg_id = cmd.ckey
                                   LIMIT 1) pr ON true
                LEFT JOIN LATERAL (SELECT u.name FROM pgchat.users u WHERE u.id = cmd.sender
                                   LIMIT 1) sn ON true
                -- The message it answers: one of the same conversation.
                LEFT JOIN LATERAL (SELECT jsonb_build_object('cseq', o.cseq, 'sender', o.sender_id,
                                                             'snippet', left(o.body, 100)) AS reply_json
                                   FROM pgchat.messages o
                                   WHERE cmd.reply IS NOT NULL AND o.conversation_id = cmd.conv
                                     AND o.cseq = cmd.reply LIMIT 1) rp ON true
                -- Whom it mentions (in the order given), and the first who is not a member.
                LEFT JOIN LATERAL (SELECT array_agg(t.u ORDER BY t.o) AS mentioned,
                                          min(t.u) FILTER (WHERE NOT EXISTS (
                                              SELECT 1 FROM pgchat.members x
                                              WHERE x.conversation_id = cmd.conv
                                                AND x.user_id = t.u)) AS stranger
                                   FROM unnest(u_cmd, u_user) WITH ORDINALITY AS t(ci, u, o)
                                   WHERE t.ci = cmd.i) mn ON true
            ), ids AS (
                -- A send stores a message when its conversation exists, its sender is a
                -- member and its (sender, client_msg_id) is new: numbered in command order
                -- within its conversation. (The writer never puts two sends with one key in
                -- a batch: the later waits for the next.)
                SELECT chk.*, fresh,
                       CASE WHEN fresh THEN chk.last_cseq + row_number() OVER (
                           PARTITION BY chk.conv, fresh ORDER BY chk.i) END AS cseq,
                       CASE WHEN fresh THEN nextval('pgchat.messages_id_seq') END AS id
                FROM chk, LATERAL (SELECT chk.p_id IS NULL AND chk.conv_found AND chk.member
                                          AND (chk.reply IS NULL OR chk.reply_json IS NOT NULL)
                                          AND chk.stranger IS NULL AS fresh) f
            ), stored AS (
                INSERT INTO pgchat.messages (id, conversation_id, cseq, sender_id, body, client_msg_id,
                                             created_at, reply_to, mentions)
                SELECT id, conv, cseq, sender, body, ckey, stamp, reply, mentioned FROM ids WHERE fresh
            ), mentioned AS (
                -- The members it mentions (not its sender) have it among their unread
                -- mentions; their counters are set from these rows below.
                INSERT INTO pgchat.mentions (conversation_id, user_id, cseq)
                SELECT f.conv, t.u, f.cseq FROM ids f CROSS JOIN LATERAL unnest(f.mentioned) AS t(u)
                WHERE f.fresh AND t.u <> f.sender
                RETURNING conversation_id, user_id
            ), recipients AS (
                SELECT f.i, f.id, f.conv, m.user_id FROM ids f
                CROSS JOIN LATERAL (SELECT user_id FROM pgchat.members
                                    WHERE conversation_id = f.conv OFFSET 0) m
                WHERE f.fresh
            ), streams AS (
                -- Each recipient's stream grows by one event per message, in command order
                -- (the arrays keep the order of their sorted input). Sorted by user, so that
                -- the update below locks the rows in the global order.
                SELECT user_id, count(*) AS n, array_agg(id) AS msgs, array_agg(i) AS cmds
                FROM (SELECT * FROM recipients ORDER BY user_id, i) r
                GROUP BY user_id ORDER BY user_id
            ), heads AS (
                -- Locks each stream's counter and moves it on; the events take the seqs between.
                UPDATE pgchat.users u SET head = u.head + s.n FROM streams s
                WHERE u.id = s.user_id
                RETURNING u.id, u.head - s.n AS base, s.msgs, s.cmds
            ), numbered AS (
                SELECT h.id AS user_id, h.base + t.k AS seq, t.m AS id, t.c AS i
                FROM heads h, unnest(h.msgs, h.cmds) WITH ORDINALITY AS t(m, c, k)
            ), events AS (
                INSERT INTO pgchat.event_queue (user_id, seq, kind, message_id)
                SELECT user_id, seq, 'message', id FROM numbered
            ), counters AS (
                UPDATE pgchat.conversations c SET last_cseq = x.cseq, version = c.version + 1
                FROM (SELECT conv, max(cseq) AS cseq FROM ids WHERE fresh GROUP BY conv) x
                WHERE c.id = x.conv
                RETURNING c.id, c.version, c.last_cseq
            ), markers AS (
                UPDATE pgchat.members m SET read_cseq = x.cseq
                FROM (SELECT conv, sender, max(cseq) AS cseq FROM ids WHERE fresh
                      GROUP BY conv, sender) x
                WHERE m.conversation_id = x.conv AND m.user_id = x.sender AND m.read_cseq < x.cseq
                RETURNING m.conversation_id, m.user_id, m.mentions_unread
            )
            SELECT r.*, e.*, v.*, t.*
            INTO s_i, s_code, s_detail, s_id, s_conv, s_cseq, s_at, s_name, s_body, s_extra,
                 s_e_user, s_e_seq, s_e_cmd, s_v_id, s_v_version, s_v_last_cseq,
                 s_touch_conv, s_touch_user
            FROM (
                -- One sorted input, so that the arrays keep its order (checked below).
                SELECT
                    array_agg(i),
                    array_agg(CASE WHEN p_id IS NOT NULL OR fresh THEN NULL
                                   WHEN conv IS NULL AND (reply IS NOT NULL OR stranger IS NOT NULL)
                                   THEN 'bad_request'
                                   WHEN NOT conv_found THEN 'not_found'
                                   WHEN NOT member THEN 'forbidden'
                                   ELSE 'bad_request' END),
                    array_agg(CASE WHEN p_id IS NOT NULL OR fresh THEN NULL
                                   WHEN conv IS NULL AND reply IS NOT NULL
                                   THEN format('send: reply_to %s: your direct conversation with '
                                               '%s has no messages yet', reply, to_json(c_to[i]))
                                   WHEN conv IS NULL AND stranger IS NOT NULL
                                   THEN format('send: mentions: %s is not a member of your direct '
                                               'conversation with %s', to_json(stranger),
                                               to_json(c_to[i]))
                                   WHEN NOT conv_found
                                   THEN format('conversation %s does not exist', to_json(conv))
                                   WHEN NOT member
                                   THEN format('you are not a member of conversation %s',
                                               to_json(conv))
                                   WHEN reply IS NOT NULL AND reply_json IS NULL
                                   THEN format('send: reply_to %s is not a message of conversation %s',
                                               reply, to_json(conv))
                                   ELSE format('send: mentions: %s is not a member of conversation %s',
                                               to_json(stranger), to_json(conv))
                              END),
                    array_agg(coalesce(p_id, id)),
                    array_agg(CASE WHEN p_id IS NOT NULL THEN p_conv WHEN fresh THEN conv END),
                    array_agg(coalesce(p_cseq, cseq)),
                    array_agg(CASE WHEN p_id IS NOT NULL THEN p_at WHEN fresh THEN stamp END),
                    array_agg(sender_name),
                    array_agg(p_body),
                    array_agg(CASE WHEN p_id IS NOT NULL THEN pgchat.message_json(p_id, sender)
                                   WHEN fresh AND reply_json IS NOT NULL
                                   THEN jsonb_build_object('reply_to', reply_json) END)
                FROM (SELECT * FROM ids ORDER BY i) x
            ) r, (
                SELECT coalesce(array_agg(user_id), '{}'), coalesce(array_agg(seq), '{}'),
                       coalesce(array_agg(i), '{}')
                FROM (SELECT * FROM numbered ORDER BY i, user_id) x
            ) e, (
                SELECT coalesce(array_agg(id), '{}'), coalesce(array_agg(version), '{}'),
                       coalesce(array_agg(last_cseq), '{}')
                FROM counters
            ) v, (
                -- Whose unread mentions changed: those mentioned, and senders whose marker
                -- moved past mentions of theirs. (UNION ALL: recount_mentions removes
                -- repeats itself, and a UNION would build a hash table sized by the
                -- planner's guess, thousands of groups, on every batch.)
                SELECT coalesce(array_agg(c), '{}'), coalesce(array_agg(u), '{}')
                FROM (SELECT conversation_id AS c, user_id AS u FROM mentioned
                      UNION ALL
                      SELECT conversation_id, user_id FROM markers WHERE mentions_unread > 0) x
            ) t;
            IF cardinality(s_i) <> upto - pos + 1 OR s_i[1] <> pos
               OR s_i[cardinality(s_i)] <> upto THEN
                RAISE EXCEPTION 'pgchat.apply_batch: the sends came back out of order';
            END IF;
            -- A send changes no conversation's members: the caller reads them off the
            -- events (every member gets each message).
            s_v_members := array_fill(NULL::jsonb, ARRAY[cardinality(s_v_id)]);
            o_code[pos:upto] := s_code;
            o_detail[pos:upto] := s_detail;
            o_msg_id[pos:upto] := s_id;
            o_msg_conv[pos:upto] := s_conv;
            o_msg_cseq[pos:upto] := s_cseq;
            o_msg_at[pos:upto] := s_at;
            o_msg_name[pos:upto] := s_name;
            o_msg_body[pos:upto] := s_body;
            o_conv[pos:upto] := s_extra;
            IF cardinality(s_touch_user) > 0 THEN
                PERFORM pgchat.recount_mentions(s_touch_conv, s_touch_user);
            END IF;
            e_user := e_user || s_e_user;
            e_seq := e_seq || s_e_seq;
            e_cmd := e_cmd || s_e_cmd;
            e_kind := e_kind || array_fill('message'::text, ARRAY[cardinality(s_e_user)]);
            e_fields := e_fields || array_fill(NULL::jsonb, ARRAY[cardinality(s_e_user)]);
            v_id := v_id || s_v_id;
            v_version := v_version || s_v_version;
            v_last_cseq := v_last_cseq || s_v_last_cseq;
            v_members := v_members || s_v_members;
            pos := upto + 1;
            CONTINUE;
        END IF;

        IF pos = ANY (quota_refused) THEN
            pos := pos + 1; -- answered rate_limited below
            CONTINUE;
        END IF;
        actor := c_actor[pos];
        cid := conv_of[pos];
        listed := ARRAY(SELECT DISTINCT t.u FROM unnest(u_cmd, u_user) AS t(ci, u)
                        WHERE t.ci = pos ORDER BY t.u);
        cid := CASE WHEN c_kind[pos] = 'group_create' AND c_key[pos] IS NOT NULL THEN
                   (SELECT c.id FROM pgchat.conversations c
                    WHERE c.created_by = actor AND c.client_op_id = c_key[pos])
               ELSE cid END;
        retried := c_kind[pos] = 'group_create' AND cid IS NOT NULL;
        IF retried THEN
            -- A retry (the same creator and client_op_id): the group as the first reply
            -- showed it, with nothing created; once that state is past retention, the group
            -- now, if the creator still belongs to it.
            o_conv[pos] := (SELECT s.state FROM pgchat.conversation_states s
                            WHERE s.conversation_id = cid AND s.version = 1);
            IF o_conv[pos] IS NULL THEN
                IF EXISTS (SELECT 1 FROM pgchat.members m
                           WHERE m.conversation_id = cid AND m.user_id = actor) THEN
                    o_conv[pos] := pgchat.conversation_json(cid);
                ELSE
                    o_code[pos] := 'forbidden';
                    o_detail[pos] := format('group_create: client_op_id %s made group %s, which you have left',
                                          to_json(c_key[pos]), to_json(cid));
                END IF;
            END IF;
        ELSIF c_kind[pos] = 'group_create' THEN
            cid := 'g' || nextval('pgchat.conversation_ids');
            INSERT INTO pgchat.conversations (id, kind, name, created_by, version, client_op_id)
            VALUES (cid, 'group', c_text[pos], actor, 1, c_key[pos]);
            INSERT INTO pgchat.members (conversation_id, user_id, admin)
            SELECT DISTINCT cid, x, x = actor FROM unnest(listed || actor) AS x;
            SELECT * INTO e_user, e_seq, e_cmd, e_kind, e_fields, cj
            FROM pgchat.announce(e_user, e_seq, e_cmd, e_kind, e_fields, cid, pos);
            o_conv[pos] := cj;
        ELSE
            SELECT c.kind, c.last_cseq, c.version, c.created_by, m.read_cseq AS marker,
                   m.admin, m.mentions_unread
            INTO crow
            FROM pgchat.conversations c
            LEFT JOIN LATERAL (SELECT m.read_cseq, m.admin, m.mentions_unread FROM pgchat.members m
                               WHERE m.conversation_id = c.id AND m.user_id = actor LIMIT 1) m ON true
            WHERE c.id = cid;
            IF NOT FOUND THEN
                o_code[pos] := 'not_found';
                o_detail[pos] := format('conversation %s does not exist', to_json(cid));
            ELSIF crow.marker IS NULL THEN
                o_code[pos] := 'forbidden';
                o_detail[pos] := format('you are not a member of conversation %s', to_json(cid));
            ELSIF c_kind[pos] = 'read' THEN
                IF c_num[pos] > crow.last_cseq THEN
                    o_code[pos] := 'bad_request';
                    o_detail[pos] := format('read: cseq %s does not exist in %s (its last is %s)',
                                          c_num[pos], to_json(cid), crow.last_cseq);
                ELSIF c_num[pos] > crow.marker THEN
                    -- Markers never move backwards; the other members are told, unless
                    -- the group is larger than settings.read_fanout_max: then only the
                    -- reader's own stream gets the event (their other devices), and the
                    -- members ask for receipts when they want them (`receipts`).
                    UPDATE pgchat.members SET read_cseq = c_num[pos]
                    WHERE conversation_id = cid AND user_id = actor;
                    IF crow.mentions_unread > 0 THEN
                        PERFORM pgchat.recount_mentions(ARRAY[cid], ARRAY[actor]);
                    END IF;
                    IF limits IS NULL THEN
                        SELECT * INTO limits FROM pgchat.settings WHERE id;
                    END IF;
                    listed := ARRAY(SELECT m.user_id FROM pgchat.members m
                                    WHERE m.conversation_id = cid AND m.user_id <> actor
                                    ORDER BY m.user_id LIMIT limits.read_fanout_max + 1);
                    IF cardinality(listed) > limits.read_fanout_max THEN
                        listed := ARRAY[actor];
                    END IF;
                    payload := jsonb_build_object('conversation', cid, 'user', actor, 'cseq', c_num[pos]);
                    SELECT * INTO e_user, e_seq, e_cmd, e_kind, e_fields
                    FROM pgchat.append_events(e_user, e_seq, e_cmd, e_kind, e_fields,
                        listed, 'read', cid, payload, payload, pos);
                END IF;
            ELSIF c_kind[pos] IN ('edit', 'delete', 'react') THEN
                SELECT m.id, m.sender_id, m.body, m.deleted, m.mentions INTO msg
                FROM pgchat.messages m WHERE m.conversation_id = cid AND m.cseq = c_num[pos];
                IF msg.id IS NULL OR (msg.deleted AND c_kind[pos] <> 'delete') THEN
                    o_code[pos] := 'not_found';
                    o_detail[pos] := format('%s: conversation %s has no message %s%s', c_kind[pos],
                                          to_json(cid), c_num[pos],
                                          CASE WHEN msg.id IS NOT NULL THEN ' (it was deleted)'
                                               ELSE '' END);
                ELSIF c_kind[pos] = 'edit' AND msg.sender_id <> actor THEN
                    o_code[pos] := 'forbidden';
                    o_detail[pos] := format('edit: only its sender (%s) may edit message %s of %s',
                                          to_json(msg.sender_id), c_num[pos], to_json(cid));
                ELSIF c_kind[pos] = 'delete' AND msg.sender_id <> actor
                      AND NOT (crow.kind = 'group' AND crow.admin) THEN
                    o_code[pos] := 'forbidden';
                    o_detail[pos] := format('delete: only its sender (%s)%s may delete message %s of %s',
                                          to_json(msg.sender_id),
                                          CASE WHEN crow.kind = 'group' THEN ' or an admin of the group'
                                               ELSE '' END,
                                          c_num[pos], to_json(cid));
                ELSIF c_kind[pos] = 'edit' THEN
                    IF msg.body IS DISTINCT FROM c_text[pos] THEN
                        UPDATE pgchat.messages SET body = c_text[pos], edited_at = clock_timestamp()
                        WHERE id = msg.id;
                        UPDATE pgchat.conversations SET version = version + 1 WHERE id = cid;
                        -- Every member is told, each with the emoji they reacted with (`me`).
                        WITH up AS (
                            UPDATE pgchat.users u SET head = u.head + 1
                            WHERE u.id = ANY (ARRAY(SELECT m.user_id FROM pgchat.members m
                                                    WHERE m.conversation_id = cid))
                            RETURNING u.id, u.head
                        ), ins AS (
                            INSERT INTO pgchat.event_queue (user_id, seq, kind, conversation_id,
                                                            message_id)
                            SELECT id, head, 'message_edited', cid, msg.id FROM up
                        )
                        SELECT coalesce(array_agg(up.id ORDER BY up.id), '{}'),
                               coalesce(array_agg(up.head ORDER BY up.id), '{}'),
                               coalesce(array_agg(r.mine ORDER BY up.id), '{}')
                        INTO s_e_user, s_e_seq, mine
                        FROM up
                        LEFT JOIN LATERAL (SELECT to_jsonb(array_agg(x.emoji)) AS mine
                                           FROM pgchat.reactions x
                                           WHERE x.conversation_id = cid AND x.message_id = msg.id
                                             AND x.user_id = up.id) r ON true;
                        e_user := e_user || s_e_user;
                        e_seq := e_seq || s_e_seq;
                        e_cmd := e_cmd || array_fill(pos, ARRAY[cardinality(s_e_user)]);
                        e_kind := e_kind || array_fill('message_edited'::text, ARRAY[cardinality(s_e_user)]);
                        e_fields := e_fields || mine;
                    END IF;
                    o_conv[pos] := pgchat.message_json(msg.id, actor);
                ELSIF c_kind[pos] = 'delete' THEN
                    IF NOT msg.deleted THEN
                        -- A tombstone: the text, whom it mentioned, what it answered and its
                        -- reactions are erased, not hidden (no event holds any of them).
                        UPDATE pgchat.messages
                        SET body = '', deleted = true, edited_at = NULL, reply_to = NULL,
                            mentions = NULL
                        WHERE id = msg.id;
                        DELETE FROM pgchat.reactions WHERE conversation_id = cid AND message_id = msg.id;
                        DELETE FROM pgchat.reaction_counts
                        WHERE conversation_id = cid AND message_id = msg.id;
                        DELETE FROM pgchat.reaction_changes
                        WHERE conversation_id = cid AND message_id = msg.id;
                        IF cardinality(msg.mentions) > 0 THEN
                            DELETE FROM pgchat.mentions x
                            WHERE x.conversation_id = cid AND x.user_id = ANY (msg.mentions)
                              AND x.cseq = c_num[pos];
                            PERFORM pgchat.recount_mentions(
                                array_fill(cid, ARRAY[cardinality(msg.mentions)]), msg.mentions);
                        END IF;
                        UPDATE pgchat.conversations SET version = version + 1 WHERE id = cid;
                        payload := jsonb_build_object('conversation', cid, 'cseq', c_num[pos],
                                                      'id', msg.id);
                        SELECT * INTO e_user, e_seq, e_cmd, e_kind, e_fields
                        FROM pgchat.append_events(e_user, e_seq, e_cmd, e_kind, e_fields,
                            ARRAY(SELECT m.user_id FROM pgchat.members m
                                  WHERE m.conversation_id = cid ORDER BY m.user_id),
                            'message_deleted', cid, NULL, payload, pos, p_message => msg.id);
                    END IF;
                ELSE
                    -- react: c_text the emoji, c_key 'on' or 'off'.
                    changed := false;
                    IF c_key[pos] = 'on' THEN
                        IF NOT EXISTS (SELECT 1 FROM pgchat.reactions x
                                       WHERE x.conversation_id = cid AND x.message_id = msg.id
                                         AND x.user_id = actor AND x.emoji = c_text[pos]) THEN
                            IF NOT EXISTS (SELECT 1 FROM pgchat.reaction_counts x
                                           WHERE x.conversation_id = cid AND x.message_id = msg.id
                                             AND x.emoji = c_text[pos])
                               AND (SELECT count(*) FROM pgchat.reaction_counts x
                                    WHERE x.conversation_id = cid AND x.message_id = msg.id) >= 20 THEN
                                o_code[pos] := 'too_large';
                                o_detail[pos] := format('react: message %s of %s has 20 different emoji, '
                                                      'the most a message may have: react with one of them',
                                                      c_num[pos], to_json(cid));
                            ELSE
                                INSERT INTO pgchat.reactions (conversation_id, message_id, user_id, emoji)
                                VALUES (cid, msg.id, actor, c_text[pos]);
                                INSERT INTO pgchat.reaction_counts AS r
                                    (conversation_id, message_id, emoji, count, first_at)
                                VALUES (cid, msg.id, c_text[pos], 1, clock_timestamp())
                                ON CONFLICT (conversation_id, message_id, emoji)
                                DO UPDATE SET count = r.count + 1;
                                changed := true;
                            END IF;
                        END IF;
                    ELSE
                        DELETE FROM pgchat.reactions x
                        WHERE x.conversation_id = cid AND x.message_id = msg.id
                          AND x.user_id = actor AND x.emoji = c_text[pos];
                        IF FOUND THEN
                            DELETE FROM pgchat.reaction_counts x
                            WHERE x.conversation_id = cid AND x.message_id = msg.id
                              AND x.emoji = c_text[pos] AND x.count = 1;
                            IF NOT FOUND THEN
                                UPDATE pgchat.reaction_counts x SET count = x.count - 1
                                WHERE x.conversation_id = cid AND x.message_id = msg.id
                                  AND x.emoji = c_text[pos];
                            END IF;
                            changed := true;
                        END IF;
                    END IF;
                    IF changed THEN
                        change := nextval('pgchat.reaction_change_ids');
                        INSERT INTO pgchat.reaction_changes
                            (conversation_id, message_id, change_id, user_id, emoji, added)
                        VALUES (cid, msg.id, change, actor, c_text[pos], c_key[pos] = 'on');
                        UPDATE pgchat.conversations SET version = version + 1 WHERE id = cid;
                        payload := jsonb_build_object('conversation', cid, 'cseq', c_num[pos],
                                                      'user', actor, 'emoji', c_text[pos],
                                                      'on', c_key[pos] = 'on');
                        SELECT * INTO e_user, e_seq, e_cmd, e_kind, e_fields
                        FROM pgchat.append_events(e_user, e_seq, e_cmd, e_kind, e_fields,
                            ARRAY(SELECT m.user_id FROM pgchat.members m
                                  WHERE m.conversation_id = cid ORDER BY m.user_id),
                            'reaction', cid, NULL, payload, pos, p_message => msg.id,
                            p_change => change);
                    END IF;
                END IF;
            ELSIF crow.kind <> 'group' THEN
                o_code[pos] := 'bad_request';
                o_detail[pos] := format('%s: %s is a direct conversation; its members are fixed',
                                      c_kind[pos], to_json(cid));
            ELSIF c_kind[pos] = 'group_add' AND c_num[pos] = 1 AND crow.created_by IS DISTINCT FROM actor THEN
                o_code[pos] := 'forbidden';
                o_detail[pos] := format('group_add: only the creator of %s may name admins', to_json(cid));
            ELSIF c_kind[pos] = 'group_add' THEN
                members_now := ARRAY(SELECT m.user_id FROM pgchat.members m
                                     WHERE m.conversation_id = cid);
                -- With the admin flag, members not yet admins become admins.
                promoted := CASE WHEN c_num[pos] = 1 THEN
                            ARRAY(SELECT m.user_id FROM pgchat.members m
                                  WHERE m.conversation_id = cid AND m.user_id = ANY (listed)
                                    AND NOT m.admin)
                        ELSE '{}' END;
                listed := ARRAY(SELECT x FROM unnest(listed) AS x WHERE x <> ALL (members_now));
                IF cardinality(members_now) + cardinality(listed) > p_max_members THEN
                    o_code[pos] := 'too_large';
                    o_detail[pos] := format('group_add: the group would have %s members; the limit is %s',
                                          cardinality(members_now) + cardinality(listed), p_max_members);
                ELSIF cardinality(listed) + cardinality(promoted) > 0 THEN
                    INSERT INTO pgchat.members (conversation_id, user_id, admin, joined_cseq)
                    SELECT cid, x, coalesce(c_num[pos] = 1, false), crow.last_cseq
                    FROM unnest(listed) AS x;
                    UPDATE pgchat.members SET admin = true
                    WHERE conversation_id = cid AND user_id = ANY (promoted);
                    UPDATE pgchat.conversations SET version = version + 1 WHERE id = cid;
                    SELECT * INTO e_user, e_seq, e_cmd, e_kind, e_fields, cj
                    FROM pgchat.announce(e_user, e_seq, e_cmd, e_kind, e_fields, cid, pos,
                                         p_added => listed);
                    o_conv[pos] := cj;
                ELSE
                    o_conv[pos] := pgchat.conversation_json(cid);
                END IF;
            ELSE
                -- group_remove or group_leave: who leaves gets `removed`, the rest the new
                -- membership.
                IF c_kind[pos] = 'group_leave' THEN
                    gone := ARRAY[actor];
                ELSE
                    gone := ARRAY(SELECT m.user_id FROM pgchat.members m
                                  WHERE m.conversation_id = cid AND m.user_id = ANY (listed)
                                  ORDER BY m.user_id);
                END IF;
                IF gone <> ARRAY[actor] AND cardinality(gone) > 0 AND NOT crow.admin THEN
                    o_code[pos] := 'forbidden';
                    o_detail[pos] := format('group_remove: only an admin of %s may remove others; '
                                          'anyone may leave', to_json(cid));
                ELSIF crow.created_by = ANY (gone) AND crow.created_by <> actor THEN
                    o_code[pos] := 'forbidden';
                    o_detail[pos] := format('group_remove: %s created %s: only they can take '
                                          'themself out (group_leave)', to_json(crow.created_by),
                                          to_json(cid));
                ELSIF cardinality(gone) > 0 THEN
                    DELETE FROM pgchat.members
                    WHERE conversation_id = cid AND user_id = ANY (gone);
                    DELETE FROM pgchat.mentions x
                    WHERE x.conversation_id = cid AND x.user_id = ANY (gone);
                    UPDATE pgchat.conversations SET version = version + 1 WHERE id = cid;
                    payload := jsonb_build_object('conversation', cid);
                    SELECT * INTO e_user, e_seq, e_cmd, e_kind, e_fields
                    FROM pgchat.append_events(e_user, e_seq, e_cmd, e_kind, e_fields, gone,
                                              'removed', cid, payload, payload, pos);
                    SELECT * INTO e_user, e_seq, e_cmd, e_kind, e_fields, cj
                    FROM pgchat.announce(e_user, e_seq, e_cmd, e_kind, e_fields, cid, pos,
                                         p_removed => gone);
                    -- The reply shows the change as the members' events do.
                    IF c_kind[pos] = 'group_remove' THEN
                        o_conv[pos] := cj;
                    END IF;
                ELSIF c_kind[pos] = 'group_remove' THEN
                    o_conv[pos] := pgchat.conversation_json(cid);
                END IF;
            END IF;
        END IF;
        -- The conversation's state after a group command, for the caller's cache.
        IF o_code[pos] IS NULL AND c_kind[pos] <> 'read' AND NOT retried THEN
            SELECT c.version, c.last_cseq INTO crow FROM pgchat.conversations c WHERE c.id = cid;
            v_id := v_id || cid;
            v_version := v_version || crow.version;
            v_last_cseq := v_last_cseq || crow.last_cseq;
            -- Every member (the state above lists only the first few of a large group).
            v_members := v_members || to_jsonb(ARRAY(SELECT m.user_id FROM pgchat.members m
                                                     WHERE m.conversation_id = cid
                                                     ORDER BY m.user_id));
        END IF;
        pos := pos + 1;
    END LOOP;

    -- 8. Users this batch created for commands that were refused (no event reached them,
    -- so nothing refers to them) go again: a refused command stores nothing. Rows this
    -- transaction inserted: no one else has seen or locked them.
    IF cardinality(fresh_users) > 0 THEN
        DELETE FROM pgchat.users u WHERE u.id = ANY (fresh_users) AND u.head = 0;
    END IF;

    -- The commands refused for creating too many users: their answer, and nothing else.
    FOREACH qi IN ARRAY quota_refused LOOP
        o_code[qi] := 'rate_limited';
        o_detail[qi] := format('%s: it would make users of people pgchat does not know yet, '
                               'and your commands may do that for at most %s people an hour '
                               '(new_users_per_hour): try again next hour, or name people who '
                               'have connected', c_kind[qi], limits.new_users_per_hour);
        o_msg_id[qi] := NULL; o_msg_conv[qi] := NULL; o_msg_cseq[qi] := NULL;
        o_msg_at[qi] := NULL; o_msg_name[qi] := NULL; o_msg_body[qi] := NULL;
        o_conv[qi] := NULL;
    END LOOP;
    -- What each user's commands created for others this hour (last: after every other
    -- lock, in user order).
    IF cardinality(fresh_users) > 0 THEN
        INSERT INTO pgchat.user_quota AS q (user_id, hour, created)
        SELECT c_actor[t.ci], (date_trunc('hour', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'), count(DISTINCT t.u)
        FROM unnest(n_ci, n_u) AS t(ci, u)
        WHERE t.u = ANY (fresh_users) AND t.u <> c_actor[t.ci] AND t.ci <> ALL (quota_refused)
          AND EXISTS (SELECT 1 FROM pgchat.users u WHERE u.id = t.u)
        GROUP BY 1 ORDER BY 1
        ON CONFLICT (user_id) DO UPDATE
        SET created = CASE WHEN q.hour = EXCLUDED.hour THEN q.created + EXCLUDED.created
                           ELSE EXCLUDED.created END,
            hour = EXCLUDED.hour;
    END IF;

    -- 9. One notification for the whole batch, delivered at commit.
    IF cardinality(e_user) > 0 OR cardinality(v_id) > 0 THEN
        PERFORM pg_notify('pgchat', pgchat.events_notice(p_worker, e_user, e_seq, v_id, v_version));
    END IF;
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- The public SQL API: the application's backend sends from inside its own transaction.
-- The message is stored and numbered at once, delivered live when that transaction
-- commits, and never exists if it rolls back. Errors raise with a standard SQLSTATE:
-- 22023 invalid_parameter_value (a malformed id, an empty body), 22001
-- string_data_right_truncation (a body over max_message_chars), P0002 no_data_found (an
-- unknown user or conversation), 42501 insufficient_privilege (the sender is not a member).
-- ---------------------------------------------------------------------------------------

-- Raises unless p_id is a valid user id that pgchat knows.
CREATE FUNCTION pgchat.check_user(p_fn text, p_role text, p_id text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
BEGIN
    IF p_id IS NULL OR p_id !~ '^[A-Za-z0-9_.@:-]{1,64}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: %s %s is not a user id (1..64 of A-Z a-z 0-9 _ . @ : -)',
                             p_fn, p_role, coalesce(to_json(p_id)::text, 'NULL'));
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pgchat.users u WHERE u.id = p_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = format('%s: no user %s; pgchat knows a user once they have connected, '
                             'or once pgchat.ensure_user(id, name) has run', p_fn, to_json(p_id));
    END IF;
END
$$;

-- Records a user (and their display name, when given) so that messages can name them
-- before they ever connect.
CREATE FUNCTION pgchat.ensure_user(id text, name text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF ensure_user.id IS NULL OR ensure_user.id !~ '^[A-Za-z0-9_.@:-]{1,64}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('pgchat.ensure_user: %s is not a user id (1..64 of A-Z a-z 0-9 _ . @ : -)',
                             coalesce(to_json(ensure_user.id)::text, 'NULL'));
    END IF;
    IF char_length(ensure_user.name) > 100 THEN
        RAISE EXCEPTION USING ERRCODE = 'string_data_right_truncation',
            MESSAGE = format('pgchat.ensure_user: name has at most 100 characters, got %s',
                             char_length(ensure_user.name));
    END IF;
    INSERT INTO pgchat.users AS u (id, name) VALUES (ensure_user.id, ensure_user.name)
    ON CONFLICT (id) DO UPDATE SET name = coalesce(EXCLUDED.name, u.name)
    WHERE u.name IS DISTINCT FROM coalesce(EXCLUDED.name, u.name);
END
$$;

-- One send through the write path, with the socket's checks; the message as the wire
-- shows it.
CREATE FUNCTION pgchat.send_one(p_fn text, p_sender text, p_conversation text,
                                p_recipient text, p_body text, p_key text) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
DECLARE
    limits pgchat.settings;
    r record;
BEGIN
    SELECT * INTO limits FROM pgchat.settings;
    PERFORM pgchat.check_user(p_fn, 'sender', p_sender);
    IF p_recipient IS NOT NULL OR p_conversation IS NULL THEN
        PERFORM pgchat.check_user(p_fn, 'recipient', p_recipient);
    END IF;
    IF p_body IS NULL OR p_body = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: body must not be empty', p_fn);
    END IF;
    IF char_length(p_body) > limits.max_message_chars THEN
        RAISE EXCEPTION USING ERRCODE = 'string_data_right_truncation',
            MESSAGE = format('%s: body has at most %s characters, got %s', p_fn,
                             limits.max_message_chars, char_length(p_body));
    END IF;
    IF p_key IS NULL OR char_length(p_key) NOT BETWEEN 1 AND 64 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: client_msg_id has 1..64 characters, got %s', p_fn,
                             coalesce(char_length(p_key), 0));
    END IF;
    r := pgchat.apply_batch('sql', limits.max_group_members, ARRAY['send'], ARRAY[p_sender],
                            ARRAY[p_conversation], ARRAY[p_recipient], ARRAY[p_body],
                            ARRAY[p_key], ARRAY[NULL::bigint], '{}', '{}');
    IF r.o_code[1] = 'not_found' THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = format('%s: conversation %s does not exist', p_fn, to_json(p_conversation));
    ELSIF r.o_code[1] = 'forbidden' THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('%s: %s is not a member of conversation %s', p_fn,
                             to_json(p_sender), to_json(p_conversation));
    ELSIF r.o_code[1] IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = p_fn || ': ' || r.o_detail[1];
    END IF;
    -- The message as the wire shows it (a retried send's as it is now: edited, or deleted).
    RETURN pgchat.message_json(r.o_msg_id[1], p_sender);
END
$$;

-- Sends `body` from `sender` to a conversation the sender belongs to. Returns the message
-- ({"id","conversation","cseq","sender","body","client_msg_id","created_at", and protocol
-- v1.2's "edited_at","deleted","reply_to","mentions","reactions"}); the same
-- (sender, client_msg_id) again returns the first message (as it is now) and stores
-- nothing.
CREATE FUNCTION pgchat.send(sender text, conversation text, body text, client_msg_id text)
RETURNS jsonb LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
    SELECT pgchat.send_one('pgchat.send', sender, conversation, NULL, body, client_msg_id)
$$;

-- Sends `body` from `sender` to `recipient` in their direct conversation, created if new.
CREATE FUNCTION pgchat.send_direct(sender text, recipient text, body text, client_msg_id text)
RETURNS jsonb LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
    SELECT pgchat.send_one('pgchat.send_direct', sender, NULL, recipient, body, client_msg_id)
$$;

-- One edit or delete through the write path, with the socket's checks; raises as the
-- other functions of the API do, plus 42501 when the actor may not change the message.
CREATE FUNCTION pgchat.change_one(p_fn text, p_kind text, p_actor text, p_conversation text,
                                  p_cseq bigint, p_body text) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
DECLARE
    limits pgchat.settings;
    r record;
BEGIN
    SELECT * INTO limits FROM pgchat.settings;
    PERFORM pgchat.check_user(p_fn, 'actor', p_actor);
    IF p_conversation IS NULL OR p_cseq IS NULL OR p_cseq < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: give a conversation and the cseq (>= 1) of one of its messages', p_fn);
    END IF;
    IF p_kind = 'edit' THEN
        IF p_body IS NULL OR p_body = '' THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('%s: body must not be empty', p_fn);
        END IF;
        IF char_length(p_body) > limits.max_message_chars THEN
            RAISE EXCEPTION USING ERRCODE = 'string_data_right_truncation',
                MESSAGE = format('%s: body has at most %s characters, got %s', p_fn,
                                 limits.max_message_chars, char_length(p_body));
        END IF;
    END IF;
    r := pgchat.apply_batch('sql', limits.max_group_members, ARRAY[p_kind], ARRAY[p_actor],
                            ARRAY[p_conversation], ARRAY[NULL::text], ARRAY[p_body],
                            ARRAY[NULL::text], ARRAY[p_cseq], '{}', '{}');
    -- The write path's message names the request kind first ("edit: …"); this one names
    -- the function instead.
    r.o_detail[1] := p_fn || ': ' || regexp_replace(r.o_detail[1], '^' || p_kind || ': ', '');
    IF r.o_code[1] = 'not_found' THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found', MESSAGE = r.o_detail[1];
    ELSIF r.o_code[1] = 'forbidden' THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege', MESSAGE = r.o_detail[1];
    ELSIF r.o_code[1] IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = r.o_detail[1];
    END IF;
    RETURN r.o_conv[1];
END
$$;

-- Replaces the body of message `cseq` of `conversation`, which `actor` sent and did not
-- delete; every member gets `message_edited`. Returns the message as edit's reply shows it.
-- The same body again changes nothing and tells no one.
CREATE FUNCTION pgchat.edit(actor text, conversation text, cseq bigint, body text)
RETURNS jsonb LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
    SELECT pgchat.change_one('pgchat.edit', 'edit', actor, conversation, cseq, body)
$$;

-- Deletes message `cseq` of `conversation` (its sender, or an admin of its group): its
-- text, mentions, reply and reactions are erased and every member gets `message_deleted`.
-- Deleting a deleted message again does nothing.
CREATE FUNCTION pgchat.delete(actor text, conversation text, cseq bigint)
RETURNS void LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
    SELECT pgchat.change_one('pgchat.delete', 'delete', actor, conversation, cseq, NULL)
$$;

-- Retention: deletes about p_limit of the events older than p_older_than, each stream in
-- seq order, and records how far each stream was pruned; then up to p_limit conversation
-- states, and as many reaction changes, older than every event left (none can point at
-- them: a state or change and its events share their transaction's created_at). Returns how many rows it deleted, or -1 when
-- another process is pruning (one at a time, by an advisory lock held to commit).
--
-- The oldest events by time (the created_at index, at most p_limit) give each stream they
-- touch a bound, the highest seq among them; the stream is then pruned up to that bound,
-- and only as far as every event up to it is older than the cutoff. seq is commit order,
-- but created_at (its transaction's start) is not: seq 10 can be a moment newer than 11,
-- and pruning 11 while 10 stays would leave a hole inside the stream that a replay could
-- step over without knowing. So a stream is only ever cut at a prefix, and stream_pruned
-- says exactly where. Bounded and keyed (the created_at index, then each stream's primary
-- key), so it never scans a table, and it touches only rows that no writer touches, so it
-- never stalls one.
CREATE FUNCTION pgchat.prune_events(p_older_than interval, p_limit integer) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
DECLARE
    deleted bigint;
    cutoff timestamptz := now() - p_older_than;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('pgchat_prune')) THEN
        RETURN -1;
    END IF;
    WITH oldest AS (
        SELECT x.user_id, max(x.seq) AS upto
        FROM (SELECT e.user_id, e.seq FROM pgchat.event_queue e
              WHERE e.created_at < cutoff ORDER BY e.created_at LIMIT p_limit) x
        GROUP BY x.user_id
    ), bound AS (
        SELECT o.user_id,
               coalesce((SELECT min(e.seq) - 1 FROM pgchat.event_queue e
                         WHERE e.user_id = o.user_id AND e.seq <= o.upto
                           AND e.created_at >= cutoff), o.upto) AS through
        FROM oldest o
    ), gone AS (
        DELETE FROM pgchat.event_queue e
        WHERE e.ctid = ANY (ARRAY(
            SELECT q.ctid FROM bound b
            CROSS JOIN LATERAL (SELECT x.ctid FROM pgchat.event_queue x
                                WHERE x.user_id = b.user_id AND x.seq <= b.through
                                OFFSET 0) q))
        RETURNING e.user_id, e.seq
    ), marks AS (
        INSERT INTO pgchat.stream_pruned AS p (user_id, through)
        SELECT user_id, max(seq) FROM gone GROUP BY user_id ORDER BY user_id
        ON CONFLICT (user_id) DO UPDATE SET through = greatest(p.through, EXCLUDED.through)
    )
    SELECT count(*) INTO deleted FROM gone;
    WITH gone AS (
        DELETE FROM pgchat.conversation_states s
        WHERE s.ctid = ANY (ARRAY(
            SELECT x.ctid FROM pgchat.conversation_states x
            WHERE x.created_at < now() - p_older_than
              AND x.created_at < coalesce((SELECT min(e.created_at) FROM pgchat.event_queue e),
                                          'infinity')
            ORDER BY x.created_at LIMIT p_limit))
        RETURNING 1
    )
    SELECT deleted + count(*) INTO deleted FROM gone;
    -- Reaction changes, the same way: once older than every event left.
    WITH gone AS (
        DELETE FROM pgchat.reaction_changes r
        WHERE r.ctid = ANY (ARRAY(
            SELECT x.ctid FROM pgchat.reaction_changes x
            WHERE x.created_at < now() - p_older_than
              AND x.created_at < coalesce((SELECT min(e.created_at) FROM pgchat.event_queue e),
                                          'infinity')
            ORDER BY x.created_at LIMIT p_limit))
        RETURNING 1
    )
    SELECT deleted + count(*) INTO deleted FROM gone;
    RETURN deleted;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Who may call what. The public SQL API (pgchat.send, send_direct, ensure_user, edit, delete) runs with
-- its owner's rights (SECURITY DEFINER, with the fixed search_path every function here
-- has, pg_catalog first and pg_temp last, so that nothing a caller creates can stand in
-- for what it calls), so a backend can send without holding any right on pgchat's
-- tables. It may be called by pgchat's own role and by roles granted pgchat_sender (made
-- here when the role that applies the schema may create roles; otherwise grant EXECUTE
-- on the three functions, and USAGE on the schema, to your backend's role yourself). The
-- caller names the sender: whoever may call them can send as any user. See docs/SQL.md.
-- ---------------------------------------------------------------------------------------
REVOKE EXECUTE ON FUNCTION pgchat.send(text, text, text, text),
                           pgchat.send_direct(text, text, text, text),
                           pgchat.ensure_user(text, text),
                           pgchat.edit(text, text, bigint, text),
                           pgchat.delete(text, text, bigint) FROM PUBLIC;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pgchat_sender')
       AND (SELECT rolcreaterole OR rolsuper FROM pg_catalog.pg_roles
            WHERE rolname = current_user) THEN
        BEGIN
            CREATE ROLE pgchat_sender NOLOGIN;
        EXCEPTION WHEN duplicate_object THEN
            NULL; -- another database of this server made it meanwhile
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pgchat_sender') THEN
        GRANT USAGE ON SCHEMA pgchat TO pgchat_sender;
        GRANT EXECUTE ON FUNCTION pgchat.send(text, text, text, text),
                                  pgchat.send_direct(text, text, text, text),
                                  pgchat.ensure_user(text, text),
                                  pgchat.edit(text, text, bigint, text),
                                  pgchat.delete(text, text, bigint) TO pgchat_sender;
    END IF;
END
$$;

INSERT INTO public.pgchat_schema (version) VALUES (1), (2), (3), (4), (5);
