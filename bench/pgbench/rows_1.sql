-- The ceiling, one DM per transaction: the rows pgchat writes for a direct message (the
-- message, an event for each of the two members, both stream heads, the conversation's
-- counter, the sender's read marker) and a NOTIFY, in plain SQL, one statement, no checks.
\set p random(1, 200)
WITH p AS (SELECT s, r, conv FROM pgbench_pairs WHERE n = :p),
c AS (UPDATE pgchat.conversations c SET last_cseq = c.last_cseq + 1, version = c.version + 1
      FROM p WHERE c.id = p.conv RETURNING c.id, c.last_cseq),
m AS (INSERT INTO pgchat.messages (conversation_id, cseq, sender_id, body, client_msg_id)
      SELECT c.id, c.last_cseq, p.s, 'hello there, a benchmark message', 'pgb' || nextval('pgbench_keys')
      FROM p, c RETURNING id),
h AS (UPDATE pgchat.users u SET head = u.head + 1 FROM p WHERE u.id IN (p.s, p.r)
      RETURNING u.id, u.head),
e AS (INSERT INTO pgchat.event_queue (user_id, seq, kind, message_id)
      SELECT h.id, h.head, 'message', m.id FROM h, m),
r AS (UPDATE pgchat.members mb SET read_cseq = c.last_cseq FROM p, c
      WHERE mb.conversation_id = c.id AND mb.user_id = p.s)
SELECT pg_notify('pgchat', '{"k":"e","w":"pgbench"}');
