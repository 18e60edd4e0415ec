-- Migration 1: the schema of pgchat 0.1 (schema.sql as it shipped, tables in public).
-- Frozen: refinery records a checksum of every applied migration, so a migration is never
-- edited once released; a change is a new migration. schema.sql at the top of the tree is
-- the whole current schema in one readable file.

CREATE TABLE IF NOT EXISTS pgchat_schema (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per user id seen in a token or named as a recipient.
-- head: the last seq allocated in this user's event stream. It is the per-user counter
--   that makes seq gap-free and commit-ordered: a writer locks the row (FOR UPDATE, in
--   user-id order), bumps it and inserts the events in the same transaction.
-- pruned_through: events with seq <= this may have been deleted by retention; a resume
--   from before it gets resync_required.
CREATE TABLE IF NOT EXISTS users (
    id             text PRIMARY KEY,
    name           text,
    head           bigint NOT NULL DEFAULT 0,
    pruned_through bigint NOT NULL DEFAULT 0,
    last_seen      timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE IF NOT EXISTS conversation_ids;

-- kind 'direct': exactly the two users of direct_key ('a' || E'\n' || 'b', sorted), or one
-- user writing to themself. kind 'group': named, members managed by its members.
-- last_cseq: the conversation's message counter, locked and bumped like users.head; since
-- messages are never deleted it is also the conversation's message count.
-- version: bumped by every commit that changes the conversation (a message, members, its
-- name), so in-memory copies can tell they are stale.
CREATE TABLE IF NOT EXISTS conversations (
    id         text PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('direct', 'group')),
    name       text,
    direct_key text UNIQUE,
    last_cseq  bigint NOT NULL DEFAULT 0,
    version    bigint NOT NULL DEFAULT 0,
    created_by text REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'direct') = (direct_key IS NOT NULL))
);

-- Membership, and each member's read marker (read_cseq never moves backwards).
CREATE TABLE IF NOT EXISTS members (
    conversation_id text NOT NULL REFERENCES conversations (id),
    user_id         text NOT NULL REFERENCES users (id),
    read_cseq       bigint NOT NULL DEFAULT 0,
    joined_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX IF NOT EXISTS members_by_user ON members (user_id, conversation_id);

-- Messages, numbered per conversation by cseq (1, 2, 3, … without gaps). id is a plain
-- bigserial: it identifies a message but orders nothing clients resume from.
CREATE TABLE IF NOT EXISTS messages (
    id              bigserial PRIMARY KEY,
    conversation_id text NOT NULL REFERENCES conversations (id),
    cseq            bigint NOT NULL,
    sender_id       text NOT NULL REFERENCES users (id),
    body            text NOT NULL,
    client_msg_id   text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (conversation_id, cseq),
    UNIQUE (sender_id, client_msg_id)
);

-- The durable per-user event stream (the seed's event_queue). A message event points at
-- its message instead of copying it, so a group message is stored once however many
-- members it reaches. A conversation event points at its conversation and is rendered
-- with the conversation's current name and members when replayed (a group of 1000 would
-- otherwise store 1000 copies of a 1000-member list); removed and read events carry their
-- few fields in payload. message_id has no foreign
-- key on purpose: the writer inserts both in one transaction, messages are never deleted,
-- and a key would cost an index lookup per fanned-out row.
CREATE TABLE IF NOT EXISTS event_queue (
    user_id    text NOT NULL,
    seq        bigint NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('message', 'conversation', 'removed', 'read')),
    message_id bigint,
    conversation_id text,
    payload    jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX IF NOT EXISTS event_queue_by_age ON event_queue (created_at);

-- The workers of the cluster (every process serving clients, on any host), each
-- heartbeating; a worker silent for 8 s is taken for dead by the others, which then
-- delete its presence rows.
CREATE TABLE IF NOT EXISTS workers (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Which worker holds sessions of which user: a user is online while any row exists. A
-- starting worker reads it to know the presence of users on the others.
CREATE TABLE IF NOT EXISTS presence (
    user_id   text NOT NULL,
    worker_id text NOT NULL,
    since     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, worker_id)
);
CREATE INDEX IF NOT EXISTS presence_by_worker ON presence (worker_id);

INSERT INTO pgchat_schema (version) VALUES (1) ON CONFLICT DO NOTHING;
