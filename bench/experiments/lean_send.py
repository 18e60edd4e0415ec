#!/usr/bin/env python3
"""An experiment, not pgchat's code: prints schema.sql's pgchat.apply_batch (schema 5) as a
CREATE OR REPLACE with two changes, to measure what they would save a plain send:

  1. the `t` subquery's UNION becomes UNION ALL (recount_mentions removes duplicates
     itself), so that no HashAggregate sized for ~5,000 groups is built per batch;
  2. a run of sends none of which has a reply_to or mentions takes a lean statement: the
     send statement without the reply and mention joins and the mentions CTE (the markers
     still return mentions_unread, so a sender's unread mentions are still recounted).

  python3 bench/experiments/lean_send.py schema.sql | psql <a scratch copy of a database>
  python3 bench/experiments/lean_send.py schema.sql --union-all-only | psql ...   # 1 alone

docs/BENCHMARKS.md (issue 18) gives what it measured. Run it only on a scratch database.
"""
import sys

args = [a for a in sys.argv[1:] if not a.startswith("--")]
s = open(args[0] if args else "schema.sql").read()
s = s[s.index("CREATE FUNCTION pgchat.apply_batch("):]
s = s[: s.index("$fn$;") + len("$fn$;")]
s = s.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
start = s.index("            WITH cmd AS (")
end = s.index("            ) t;", start) + len("            ) t;")
full = s[start:end].replace("                      UNION\n", "                      UNION ALL\n")
if "--union-all-only" in sys.argv:
    print(s[:start] + full + s[end:])
    sys.exit(0)
lean = full


def cut(a, b):
    global lean
    i, j = lean.index(a), lean.index(b)
    lean = lean[:i] + lean[j:]


def rep(a, b):
    global lean
    assert lean.count(a) == 1, (a, lean.count(a))
    lean = lean.replace(a, b)


rep(",\n                       rp.reply_json, mn.mentioned, mn.stranger", "")
cut("                -- The message it answers", "            ), ids AS (")
rep("""                                          AND (chk.reply IS NULL OR chk.reply_json IS NOT NULL)
                                          AND chk.stranger IS NULL AS fresh) f""",
    """                                          AS fresh) f""")
rep("""                                             created_at, reply_to, mentions)
                SELECT id, conv, cseq, sender, body, ckey, stamp, reply, mentioned FROM ids WHERE fresh""",
    """                                             created_at)
                SELECT id, conv, cseq, sender, body, ckey, stamp FROM ids WHERE fresh""")
cut("            ), mentioned AS (", "            ), recipients AS (")
i = lean.index("                    array_agg(CASE WHEN p_id IS NOT NULL OR fresh THEN NULL\n"
               "                                   WHEN conv IS NULL AND (reply")
j = lean.index("                    array_agg(coalesce(p_id, id)),")
lean = lean[:i] + """                    array_agg(CASE WHEN p_id IS NOT NULL OR fresh THEN NULL
                                   WHEN NOT conv_found THEN 'not_found' ELSE 'forbidden' END),
                    array_agg(CASE WHEN p_id IS NOT NULL OR fresh THEN NULL
                                   WHEN NOT conv_found
                                   THEN format('conversation %s does not exist', to_json(conv))
                                   ELSE format('you are not a member of conversation %s',
                                               to_json(conv)) END),
""" + lean[j:]
rep("""                    array_agg(CASE WHEN p_id IS NOT NULL THEN pgchat.message_json(p_id, sender)
                                   WHEN fresh AND reply_json IS NOT NULL
                                   THEN jsonb_build_object('reply_to', reply_json) END)""",
    """                    array_agg(CASE WHEN p_id IS NOT NULL THEN pgchat.message_json(p_id, sender) END)""")
rep("""                FROM (SELECT conversation_id AS c, user_id AS u FROM mentioned
                      UNION ALL
                      SELECT conversation_id, user_id FROM markers WHERE mentions_unread > 0) x""",
    """                FROM (SELECT conversation_id AS c, user_id AS u FROM markers
                      WHERE mentions_unread > 0) x""")
guard = ("            -- (experiment) a run of plain sends takes the lean statement.\n"
         "            IF cardinality(u_user) = 0 AND cardinality(array_remove(c_num[pos:upto], NULL)) = 0 THEN\n")
s = s[:start] + guard + lean + "\n            ELSE\n" + full + "\n            END IF;" + s[end:]
print(s)
