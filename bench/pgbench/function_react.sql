-- pgchat's own write function, one reaction per call (an emoji the message does not have
-- yet, so that each is a change with its event), without the server. After setup.sql and
-- changes_setup.sql.
\set p random(1, 200)
\set c random(2, 501)
SELECT o_code[1] FROM pgchat.apply_batch('pgbench', 1000,
    ARRAY['react'], ARRAY['pgbench-r' || :p],
    ARRAY[(SELECT conv FROM pgbench_pairs WHERE n = :p)], ARRAY[NULL::text],
    ARRAY['e' || nextval('pgbench_keys')], ARRAY['on'],
    ARRAY[:c::bigint], '{}', '{}');
