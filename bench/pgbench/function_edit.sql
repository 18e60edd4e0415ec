-- pgchat's own write function, one edit per call (a new body each time), without the
-- server. After setup.sql and changes_setup.sql.
\set p random(1, 200)
\set c random(2, 501)
SELECT o_code[1] FROM pgchat.apply_batch('pgbench', 1000,
    ARRAY['edit'], ARRAY['pgbench-s' || :p],
    ARRAY[(SELECT conv FROM pgbench_pairs WHERE n = :p)], ARRAY[NULL::text],
    ARRAY['hello there, an edited benchmark message ' || nextval('pgbench_keys')], ARRAY[NULL::text],
    ARRAY[:c::bigint], '{}', '{}');
