-- bench/search/build.sql: a database for measuring search (issue 18): 10 million messages
-- in 60,000 conversations of 100,000 users, bodies of words drawn from a Zipf-like
-- vocabulary of 50,000 words, and one user, `searcher`, in 200 conversations (150 direct,
-- 50 groups) that hold about 3 % of all messages (about 300,000, a busy user's share).
--
-- Run it on a database that pgchat (schema 5) has just created and that holds nothing yet
-- (bench/search/build.sh does both), as a superuser: it skips the foreign-key triggers
-- while loading (session_replication_role) and builds the search index once, after the
-- load, with the definition schema.sql gave it.
--
--   psql -v messages=10000000 -f bench/search/build.sql <database>
--
-- The vocabulary: ranks 1..128 are common English chat words in about their order of
-- frequency; ranks 129..50,000 are made-up words of two or three syllables (distinct, and
-- all lower case, as the 'simple' configuration indexes them). A word is drawn as rank
-- floor(50000 ^ u), u uniform in [0, 1): P(rank r) ~ 1 / (r ln 50000), Zipf's law with
-- exponent 1. So "the" is in about half of all messages, rank 100 in about 1 %, and the
-- rarest words in a few dozen of the 10 million. A body has 3..18 words (10 on average).
--
-- Messages come in time order (id order) from conversations drawn at random, so that a
-- conversation's messages are scattered over the table as they are in a real one; their
-- cseq counts 1, 2, 3, ... in each conversation. 0.5 % are tombstones (deleted). In 10 of
-- the searcher's groups they joined late (joined_cseq: half of the group's messages came
-- before), so that search has messages to leave out.
\set ON_ERROR_STOP on
\if :{?messages}
\else
  \set messages 10000000
\endif
SET client_min_messages = warning;
SET session_replication_role = replica;
SET maintenance_work_mem = '1GB';
SET work_mem = '256MB';
SET synchronous_commit = off;

DROP TABLE IF EXISTS s_vocab, s_conv, s_plan;
\set syllables 'ba be bi bo bu da de di do du fa fe fi fo ga ge go ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu pa pe pi po ra re ri ro ru sa se si so ta te ti to va ve vi vo za zo'

CREATE UNLOGGED TABLE s_vocab (rank int PRIMARY KEY, word text NOT NULL UNIQUE);
INSERT INTO s_vocab
SELECT r, w FROM unnest(string_to_array(
    'the i you to a and it is that in of for me on we my so have this be just not what are '
    'no yes ok do with but at was can get if know all like will lol up how now out go good '
    'there your they about when one time think see been too today then here from want going '
    'back did got need some really yeah thanks would an sure right tomorrow work call let '
    'them make she he meeting still more could because come why love well where day new last '
    'please oh sorry who said after nice people week tonight home night first great thing '
    'much way also morning should any feel lunch tell look hope only over hey again maybe done',
    ' ')) WITH ORDINALITY AS t(w, r);
-- Made-up words of two or three syllables (each syllable two letters, so every word is one
-- way of putting syllables together), distinct, in a shuffled but fixed order.
INSERT INTO s_vocab
SELECT (SELECT count(*) FROM s_vocab) + row_number() OVER (ORDER BY md5(w)), w
FROM (SELECT a.s || b.s || coalesce(c.s, '') AS w
      FROM unnest(string_to_array(:'syllables', ' ')) a(s)
      CROSS JOIN unnest(string_to_array(:'syllables', ' ')) b(s)
      CROSS JOIN (SELECT NULL::text AS s UNION ALL
                  SELECT unnest(string_to_array(:'syllables', ' '))) c) x
WHERE w NOT IN (SELECT word FROM s_vocab)
ORDER BY md5(w) LIMIT 50000 - (SELECT count(*) FROM s_vocab);
DO $$ BEGIN
    IF (SELECT count(*) FROM s_vocab) <> 50000 THEN
        RAISE EXCEPTION 'vocabulary: % words, expected 50000', (SELECT count(*) FROM s_vocab);
    END IF;
END $$;

-- Users u1..u100000, and the searcher.
INSERT INTO pgchat.users (id, name)
SELECT 'u' || g, 'User ' || g FROM generate_series(1, 100000) g
UNION ALL SELECT 'searcher', 'Searcher';

-- Conversations: n 1..200 are the searcher's (1..150 direct, 151..200 groups of 10..40),
-- n 201..60000 the others' (201..50000 direct, the rest groups of 5..30). members[1] is
-- a group's creator. Direct pairs are distinct by construction (their key is unique).
CREATE UNLOGGED TABLE s_conv (n int PRIMARY KEY, id text NOT NULL, kind text NOT NULL,
                              members text[] NOT NULL);
INSERT INTO s_conv
SELECT n,
       CASE WHEN direct THEN 'd' ELSE 'g' END || n,
       CASE WHEN direct THEN 'direct' ELSE 'group' END,
       CASE WHEN n <= 150 THEN ARRAY['searcher', 'u' || (n * 601)]
            WHEN direct THEN ARRAY['u' || (n - 200), 'u' || (50001 + (hashint4(n) & 2147483647) % 50000)]
            ELSE CASE WHEN n <= 200 THEN ARRAY['searcher'] ELSE '{}' END || ARRAY(
                SELECT DISTINCT 'u' || (1 + (hashint4(n * 64 + k) & 2147483647) % 100000)
                FROM generate_series(1, CASE WHEN n <= 200 THEN 9 + n % 31 ELSE 5 + n % 26 END) k)
       END
FROM generate_series(1, 60000) n,
     LATERAL (SELECT n <= 150 OR n BETWEEN 201 AND 50000 AS direct) d;

INSERT INTO pgchat.conversations (id, kind, name, direct_key, created_by, created_at)
SELECT id, kind,
       CASE WHEN kind = 'group' THEN 'group ' || n END,
       CASE WHEN kind = 'direct' THEN least(members[1], members[2]) || E'\n' || greatest(members[1], members[2]) END,
       CASE WHEN kind = 'group' THEN members[1] END,
       timestamptz '2026-01-01 00:00:00+00'
FROM s_conv;
SELECT setval('pgchat.conversation_ids', 60000);
INSERT INTO pgchat.members (conversation_id, user_id, admin, joined_at)
SELECT c.id, m.u, c.kind = 'group' AND m.o = 1, timestamptz '2026-01-01 00:00:00+00'
FROM s_conv c, unnest(c.members) WITH ORDINALITY AS m(u, o);

-- The plan: message i (in time order) goes to conversation n, 3 % of them to the searcher's
-- 200 (the lower-numbered ones busier), the rest evenly to the others'; its cseq counts
-- within n.
CREATE UNLOGGED TABLE s_plan AS
SELECT i, n, row_number() OVER (PARTITION BY n ORDER BY i) AS cseq
FROM (SELECT i, CASE WHEN random() < 0.03 THEN 1 + floor(200 * random() ^ 1.5)::int
                     ELSE 201 + floor(59800 * random())::int END AS n
      FROM generate_series(1, :messages) i) p;
CREATE INDEX ON s_plan (i);
ANALYZE s_plan;

-- The messages, a million at a time (the search index is built after).
CREATE TEMP TABLE s_index AS
SELECT pg_get_indexdef('pgchat.messages_search'::regclass) AS def;
DROP INDEX pgchat.messages_search;
SELECT set_config('bench.vocab', (SELECT array_agg(word ORDER BY rank)::text FROM s_vocab), false) IS NOT NULL AS vocabulary_set;
DO $$
DECLARE
    total bigint := (SELECT max(i) FROM s_plan);
    lo bigint := 1;
    vocab text[] := current_setting('bench.vocab')::text[];
BEGIN
    WHILE lo <= total LOOP
        INSERT INTO pgchat.messages (id, conversation_id, cseq, sender_id, body, client_msg_id,
                                     created_at, deleted)
        SELECT p.i, c.id, p.cseq, c.members[1 + floor(random() * cardinality(c.members))::int],
               CASE WHEN del THEN '' ELSE array_to_string(ARRAY(
                   SELECT vocab[floor(power(50000, random()))::int]
                   FROM generate_series(1, 3 + (p.i * 0 + floor(random() * 16))::int)), ' ') END,
               'c' || p.i,
               timestamptz '2026-01-01 00:00:00+00' + p.i * interval '1 second', del
        FROM s_plan p JOIN s_conv c ON c.n = p.n,
             LATERAL (SELECT (hashint8(p.i) & 1023) < 5 AS del) d
        WHERE p.i BETWEEN lo AND lo + 999999
        -- In id order, as a server writes them: a conversation's messages lie scattered
        -- over the table, among everyone else's of the same time.
        ORDER BY p.i;
        RAISE NOTICE '% messages', least(lo + 999999, total);
        COMMIT;
        lo := lo + 1000000;
    END LOOP;
END $$;
SELECT setval('pgchat.messages_id_seq', (SELECT max(id) FROM pgchat.messages));

-- Counters as the writer would have left them: each conversation's last cseq, every
-- marker at the end; in 10 of the searcher's groups they joined half way.
UPDATE pgchat.conversations c SET last_cseq = x.m, version = x.m + 1
FROM (SELECT n, max(cseq) AS m FROM s_plan GROUP BY n) x JOIN s_conv s ON s.n = x.n
WHERE c.id = s.id;
UPDATE pgchat.members m SET read_cseq = c.last_cseq
FROM pgchat.conversations c WHERE c.id = m.conversation_id;
UPDATE pgchat.members m SET joined_cseq = c.last_cseq / 2
FROM pgchat.conversations c
WHERE m.user_id = 'searcher' AND c.id = m.conversation_id
  AND c.id IN (SELECT id FROM s_conv WHERE n BETWEEN 151 AND 160);

\timing on
SELECT def FROM s_index \gset
:def;
\timing off
-- s_vocab stays (public.s_vocab): bench/search/measure.py picks words by rank from it.
DROP TABLE s_conv, s_plan;
RESET session_replication_role;
VACUUM ANALYZE;
SELECT (SELECT count(*) FROM pgchat.messages) AS messages,
       (SELECT count(*) FROM pgchat.conversations) AS conversations,
       (SELECT count(*) FROM pgchat.members WHERE user_id = 'searcher') AS searcher_in,
       (SELECT count(*) FROM pgchat.messages m JOIN pgchat.members me
          ON me.conversation_id = m.conversation_id AND me.user_id = 'searcher'
        WHERE m.cseq > me.joined_cseq AND NOT m.deleted) AS searcher_sees,
       pg_size_pretty(pg_total_relation_size('pgchat.messages')) AS messages_size,
       pg_size_pretty(pg_relation_size('pgchat.messages_search')) AS search_index_size;
