-- The ceiling, 100 DMs per transaction: the same rows as rows_1.sql for 100 pairs at once
-- (client n takes pairs 100n+1..100n+100, so two clients never wait on each other's rows), and one NOTIFY.
WITH p AS (SELECT b.n, b.s, b.r, b.conv FROM generate_series(0, 99) k
           JOIN pgbench_pairs b ON b.n = (:client_id * 100 + k) % 200 + 1),
c AS (UPDATE pgchat.conversations c SET last_cseq = c.last_cseq + 1, version = c.version + 1
      FROM p WHERE c.id = p.conv RETURNING c.id, c.last_cseq),
m AS (INSERT INTO pgchat.messages (conversation_id, cseq, sender_id, body, client_msg_id)
      SELECT c.id, c.last_cseq, p.s, 'hello there, a benchmark message', 'pgb' || nextval('pgbench_keys')
      FROM p JOIN c ON c.id = p.conv RETURNING id, conversation_id),
h AS (UPDATE pgchat.users u SET head = u.head + 1 FROM p WHERE u.id IN (p.s, p.r)
      RETURNING u.id, u.head),
e AS (INSERT INTO pgchat.event_queue (user_id, seq, kind, message_id)
      SELECT h.id, h.head, 'message', m.id FROM p JOIN m ON m.conversation_id = p.conv
      JOIN h ON h.id IN (p.s, p.r)),
r AS (UPDATE pgchat.members mb SET read_cseq = c.last_cseq FROM p JOIN c ON c.id = p.conv
      WHERE mb.conversation_id = c.id AND mb.user_id = p.s)
SELECT pg_notify('pgchat', '{"k":"e","w":"pgbench"}');
