-- pgchat's own write function, one deletion per call, each of a message not deleted yet
-- (100,000 of them: pgbench_deletes walks through cseq 2..501 of the 200 conversations),
-- without the server. After setup.sql and changes_setup.sql.
SELECT o_code[1] FROM (SELECT nextval('pgbench_deletes') AS k) d,
    LATERAL (SELECT 1 + d.k % 200 AS p, 2 + d.k / 200 AS c) t,
    LATERAL pgchat.apply_batch('pgbench', 1000,
        ARRAY['delete'], ARRAY['pgbench-s' || t.p],
        ARRAY[(SELECT conv FROM pgbench_pairs WHERE n = t.p)], ARRAY[NULL::text],
        ARRAY[NULL::text], ARRAY[NULL::text],
        ARRAY[t.c::bigint], '{}', '{}');
