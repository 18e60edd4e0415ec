-- pgbench's rows for the pgchat ceiling: 200 pairs of users with a direct conversation
-- each, made through pgchat's own write function. Run once on a database pgchat created:
--   psql "$DATABASE_URL" -f bench/pgbench/setup.sql
SELECT pgchat.ensure_user('pgbench-s' || g) FROM generate_series(1, 200) g;
SELECT pgchat.ensure_user('pgbench-r' || g) FROM generate_series(1, 200) g;
SELECT count(*) FROM pgchat.apply_batch('pgbench', 1000,
    ARRAY(SELECT 'send' FROM generate_series(1, 200)),
    ARRAY(SELECT 'pgbench-s' || g FROM generate_series(1, 200) g),
    ARRAY(SELECT NULL::text FROM generate_series(1, 200)),
    ARRAY(SELECT 'pgbench-r' || g FROM generate_series(1, 200) g),
    ARRAY(SELECT 'hello' FROM generate_series(1, 200)),
    ARRAY(SELECT 'pgbench-setup-' || g FROM generate_series(1, 200) g),
    ARRAY(SELECT NULL::bigint FROM generate_series(1, 200)),
    '{}', '{}');
DROP TABLE IF EXISTS pgbench_pairs;
CREATE TABLE pgbench_pairs AS
SELECT g AS n, 'pgbench-s' || g AS s, 'pgbench-r' || g AS r,
       (SELECT id FROM pgchat.conversations
        WHERE direct_key = 'pgbench-r' || g || E'\n' || 'pgbench-s' || g) AS conv
FROM generate_series(1, 200) g;
ALTER TABLE pgbench_pairs ADD PRIMARY KEY (n);
CREATE SEQUENCE IF NOT EXISTS pgbench_keys;
