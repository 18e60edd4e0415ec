-- pgchat's own write function, 100 DMs per call (by conversation id), without the server:
-- what the database spends on a batch, to compare with rows_100.sql.
SELECT o_code IS NOT NULL FROM pgchat.apply_batch('pgbench', 1000,
    array_fill('send'::text, ARRAY[100]),
    ARRAY(SELECT 'pgbench-s' || ((:client_id * 100 + k) % 200 + 1) FROM generate_series(0, 99) k ORDER BY k),
    ARRAY(SELECT b.conv FROM generate_series(0, 99) k
          JOIN pgbench_pairs b ON b.n = (:client_id * 100 + k) % 200 + 1 ORDER BY k),
    array_fill(NULL::text, ARRAY[100]),
    array_fill('hello there, a benchmark message'::text, ARRAY[100]),
    ARRAY(SELECT 'pgf' || nextval('pgbench_keys') FROM generate_series(1, 100)),
    array_fill(NULL::bigint, ARRAY[100]), '{}', '{}');
