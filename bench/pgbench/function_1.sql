-- pgchat's own write function, one DM per call, without the server.
\set p random(1, 200)
SELECT o_code IS NOT NULL FROM pgchat.apply_batch('pgbench', 1000,
    ARRAY['send'], ARRAY['pgbench-s' || :p],
    ARRAY[(SELECT conv FROM pgbench_pairs WHERE n = :p)], ARRAY[NULL::text],
    ARRAY['hello there, a benchmark message'], ARRAY['pgf' || nextval('pgbench_keys')],
    ARRAY[NULL::bigint], '{}', '{}');
