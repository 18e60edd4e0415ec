-- Migration 4: trust nothing that did not come from pgchat.
--
-- - Every NOTIFY payload is sealed with a key only pgchat's role can read
--   (pgchat.notice_key; pgchat.sign_notice), and the workers drop notices without a
--   valid seal: any role that can connect may NOTIFY on any channel.

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

-- The batch's notice, sealed.
DROP FUNCTION pgchat.events_notice(text, text[], bigint[], text[], bigint[]);
-- What the other workers are told after a batch (see src/cluster/notify.rs), sealed: the
-- streams that grew (user, newest seq) and the conversations that changed (id, version),
-- or, when a list would not fit in NOTIFY's 8000 bytes with its 32-digit seal, a pointer
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
    IF octet_length(head) + octet_length(users) + octet_length(convs) + 14 <= 7967 THEN
        RETURN pgchat.sign_notice(head || ',"u":' || users || ',"c":' || convs || '}');
    ELSIF octet_length(head) + octet_length(convs) + 19 <= 7967 THEN
        RETURN pgchat.sign_notice(head || ',"all":true,"c":' || convs || '}');
    END IF;
    RETURN pgchat.sign_notice(head || ',"all":true,"all_c":true}');
END
$$;


INSERT INTO public.pgchat_schema (version) VALUES (4);
