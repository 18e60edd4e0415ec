-- Migration 4: trust nothing that did not come from pgchat.
--
-- - Every NOTIFY payload is sealed with a key only pgchat's role can read
--   (pgchat.notice_key; pgchat.sign_notice), and the workers drop notices without a
--   valid seal: any role that can connect may NOTIFY on any channel.
-- - Every function has a fixed search_path (pg_catalog, pgchat, pg_temp); the public SQL
--   API runs as its owner (SECURITY DEFINER) and may be called by pgchat_sender.
-- - Retention prunes each stream in seq order, never leaving a hole inside it.

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

-- p_notice with its seal in front: the first 16 bytes of HMAC-SHA256(key, p_notice), in
-- hex. What every NOTIFY pgchat sends from SQL carries (the workers seal theirs in Rust).
CREATE FUNCTION pgchat.sign_notice(p_notice text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgchat, pg_temp
AS $$
DECLARE
    k pgchat.notice_key;
BEGIN
    SELECT * INTO STRICT k FROM pgchat.notice_key;
    RETURN encode(substr(sha256(k.outer_pad || sha256(k.inner_pad || convert_to(p_notice, 'UTF8'))),
                         1, 16), 'hex') || p_notice;
END
$$;

-- The batch's notice, sealed. Replaced in place (same signature, same oid), so that the
-- batches of older workers still running meanwhile go on calling it.
-- What the other workers are told after a batch (see src/cluster/notify.rs), sealed: the
-- streams that grew (user, newest seq) and the conversations that changed (id, version),
-- or, when a list would not fit in NOTIFY's 8000 bytes with its 32-digit seal, a pointer
-- ("all") that makes them check everything.
CREATE OR REPLACE FUNCTION pgchat.events_notice(p_worker text, p_users text[], p_seqs bigint[],
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
    IF octet_length(head) + octet_length(users) + octet_length(convs) + 14 <= 7967 THEN
        RETURN pgchat.sign_notice(head || ',"u":' || users || ',"c":' || convs || '}');
    ELSIF octet_length(head) + octet_length(convs) + 19 <= 7967 THEN
        RETURN pgchat.sign_notice(head || ',"all":true,"c":' || convs || '}');
    END IF;
    RETURN pgchat.sign_notice(head || ',"all":true,"all_c":true}');
END
$$;


-- Fixed search paths: nothing a caller creates (in pg_temp, or a schema first on its own
-- path) can stand in for what these functions call.
ALTER FUNCTION pgchat.conversation_json(text) SET search_path = pg_catalog, pgchat, pg_temp;
ALTER FUNCTION pgchat.append_events(text[], bigint[], integer[], text[], jsonb[], text[], text,
                                    text, jsonb, jsonb, integer, bigint)
    SET search_path = pg_catalog, pgchat, pg_temp;
ALTER FUNCTION pgchat.announce(text[], bigint[], integer[], text[], jsonb[], text, integer)
    SET search_path = pg_catalog, pgchat, pg_temp;
ALTER FUNCTION pgchat.apply_batch(text, integer, text[], text[], text[], text[], text[], text[],
                                  bigint[], integer[], text[])
    SET search_path = pg_catalog, pgchat, pg_temp;
ALTER FUNCTION pgchat.check_user(text, text, text) SET search_path = pg_catalog, pgchat, pg_temp;
ALTER FUNCTION pgchat.ensure_user(text, text) SECURITY DEFINER
    SET search_path = pg_catalog, pgchat, pg_temp;
ALTER FUNCTION pgchat.send_one(text, text, text, text, text, text)
    SET search_path = pg_catalog, pgchat, pg_temp;
ALTER FUNCTION pgchat.send(text, text, text, text) SECURITY DEFINER
    SET search_path = pg_catalog, pgchat, pg_temp;
ALTER FUNCTION pgchat.send_direct(text, text, text, text) SECURITY DEFINER
    SET search_path = pg_catalog, pgchat, pg_temp;

-- Retention: deletes about p_limit of the events older than p_older_than, each stream in
-- seq order, and records how far each stream was pruned; then up to p_limit conversation
-- states older than every event left (none can point at them: a state and its events
-- share their transaction's created_at). Returns how many rows it deleted, or -1 when
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
CREATE OR REPLACE FUNCTION pgchat.prune_events(p_older_than interval, p_limit integer) RETURNS bigint
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
    RETURN deleted;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Who may call what. The public SQL API (pgchat.send, send_direct, ensure_user) runs with
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
                           pgchat.ensure_user(text, text) FROM PUBLIC;
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
                                  pgchat.ensure_user(text, text) TO pgchat_sender;
    END IF;
END
$$;

INSERT INTO public.pgchat_schema (version) VALUES (4);
