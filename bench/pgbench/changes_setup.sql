-- Messages for the change scripts (function_edit/react/delete.sql) to change: 500 more in
-- each of setup.sql's 200 direct conversations (cseq 2..501), through pgchat's own write
-- function. Run once, after setup.sql:
--   psql "$DATABASE_URL" -f bench/pgbench/changes_setup.sql
DO $$
BEGIN
    FOR round IN 1..500 LOOP
        PERFORM pgchat.apply_batch('pgbench', 1000,
            ARRAY(SELECT 'send' FROM generate_series(1, 200)),
            ARRAY(SELECT s FROM pgbench_pairs ORDER BY n),
            ARRAY(SELECT conv FROM pgbench_pairs ORDER BY n),
            ARRAY(SELECT NULL::text FROM generate_series(1, 200)),
            ARRAY(SELECT 'hello there, a benchmark message to change' FROM generate_series(1, 200)),
            ARRAY(SELECT 'pgchange-' || round || '-' || n FROM pgbench_pairs ORDER BY n),
            ARRAY(SELECT NULL::bigint FROM generate_series(1, 200)),
            '{}', '{}');
    END LOOP;
END $$;
-- Which message function_delete.sql deletes next (each once).
DROP SEQUENCE IF EXISTS pgbench_deletes;
CREATE SEQUENCE pgbench_deletes MINVALUE 0 START 0;
SELECT min(last_cseq), max(last_cseq) FROM pgchat.conversations
WHERE id IN (SELECT conv FROM pgbench_pairs);
